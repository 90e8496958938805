-- Sinks. Never edit this file once released.

-- Derived from sink.* events (rebuilt with the catalog): the attached sinks.
CREATE TABLE IF NOT EXISTS sinks (
    name      TEXT PRIMARY KEY,
    url       TEXT    NOT NULL,
    role      TEXT    NOT NULL,   -- primary | backup | replica | standby
    added_seq INTEGER NOT NULL
);

-- Projector state, outside the chain: how far each sink has been brought, and its last error.
CREATE TABLE IF NOT EXISTS sink_state (
    name            TEXT PRIMARY KEY,
    checkpoint      INTEGER NOT NULL DEFAULT 0,  -- every event <= checkpoint is applied (or parked)
    last_error      TEXT,
    last_error_at   INTEGER,
    last_applied_at INTEGER
);

-- Events a sink refused permanently: visible in `sink status`, re-applied by `sink retry`.
CREATE TABLE IF NOT EXISTS parked (
    sink      TEXT    NOT NULL,
    secret_id BLOB    NOT NULL,
    seq       INTEGER NOT NULL,
    error     TEXT    NOT NULL,
    parked_at INTEGER NOT NULL,
    PRIMARY KEY (sink, secret_id)
);
