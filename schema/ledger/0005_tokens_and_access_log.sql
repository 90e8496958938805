-- Tokens and the access log. Never edit this file once released.

-- The token registry is a fold of token.* events; this index makes it a short scan.
CREATE INDEX IF NOT EXISTS events_by_type ON events (event_type, seq);

-- The access log (ARCHITECTURE.md, server): every value read, denied request and failed
-- authentication, hash-chained like the events. Never holds a value or a token.
CREATE TABLE IF NOT EXISTS access_log (
    seq         INTEGER PRIMARY KEY,
    recorded_at INTEGER NOT NULL,
    record      TEXT    NOT NULL,   -- the AccessRecord as JSON, exactly as hashed
    prev_hash   BLOB    NOT NULL,
    hash        BLOB    NOT NULL
);

CREATE TRIGGER IF NOT EXISTS access_log_is_append_only_update BEFORE UPDATE ON access_log
BEGIN
    SELECT RAISE(ABORT, 'the sledger access log is append-only');
END;

CREATE TRIGGER IF NOT EXISTS access_log_is_append_only_delete BEFORE DELETE ON access_log
BEGIN
    SELECT RAISE(ABORT, 'the sledger access log is append-only');
END;
