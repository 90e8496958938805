-- The event log: append-only, gap-free, hash-chained. Never edit this file once released.
CREATE TABLE events (
    seq           INTEGER PRIMARY KEY,
    event_id      BLOB    NOT NULL UNIQUE,
    recorded_at   INTEGER NOT NULL,
    actor         TEXT    NOT NULL,
    secret_id     BLOB    NULL,
    event_type    TEXT    NOT NULL,
    event_version INTEGER NOT NULL,
    payload       BLOB    NOT NULL,
    prev_hash     BLOB    NOT NULL,
    hash          BLOB    NOT NULL
);

-- History and old versions of one secret. No index on recorded_at: it never decreases along
-- seq, so time lookups binary-search seq instead of paying an index on every append.
CREATE INDEX events_by_secret ON events (secret_id, seq) WHERE secret_id IS NOT NULL;

CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'sledger events are append-only');
END;

CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'sledger events are append-only');
END;
