-- A sledger ledger in PostgreSQL: the same tables as the SQLite ledger (schema/ledger/), in
-- their own schema `sledger`. Never edit this file once released.
-- Text columns that lists order by use the "C" collation: byte order, as SQLite compares.

CREATE SCHEMA sledger;
SET search_path TO sledger;

CREATE TABLE schema_version (version integer NOT NULL);
INSERT INTO schema_version (version) VALUES (1);

-- The event log: append-only, gap-free, hash-chained.
CREATE TABLE events (
    seq           bigint  PRIMARY KEY CHECK (seq >= 1),
    event_id      bytea   NOT NULL UNIQUE,
    recorded_at   bigint  NOT NULL,
    actor         text    NOT NULL,
    secret_id     bytea   NULL,
    event_type    text    NOT NULL,
    event_version integer NOT NULL,
    payload       bytea   NOT NULL,
    prev_hash     bytea   NOT NULL,
    hash          bytea   NOT NULL,
    mac           bytea   NULL
);
CREATE INDEX events_by_secret ON events (secret_id, seq) WHERE secret_id IS NOT NULL;
CREATE INDEX events_by_type ON events (event_type, seq);
CREATE INDEX events_by_actor ON events (actor, seq);

CREATE FUNCTION append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'sledger % rows are append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER events_are_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER events_are_never_truncated BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();

-- Ledger identity, settings, the master-key check value and wrapped keys of the ledger.
-- A setting is bytes or an integer.
CREATE TABLE ledger_meta (
    key       text PRIMARY KEY,
    value     bytea  NULL,
    int_value bigint NULL,
    CHECK ((value IS NULL) <> (int_value IS NULL))
);

-- One data key per secret, wrapped by the master key. Purge deletes the row.
CREATE TABLE secret_keys (
    secret_id bytea PRIMARY KEY,
    wrapped   bytea NOT NULL
);

-- Catalog snapshots; stored uncompressed so a digest can read one a piece at a time.
CREATE TABLE snapshots (
    seq   bigint PRIMARY KEY,
    state bytea  NOT NULL
);
ALTER TABLE snapshots ALTER COLUMN state SET STORAGE EXTERNAL;

-- The catalog, derived from the log in the same transaction as each append.
CREATE TABLE catalog (
    secret_id   bytea  PRIMARY KEY,
    namespace   text   COLLATE "C" NOT NULL,
    name        text   COLLATE "C" NOT NULL,
    status      text   NOT NULL,
    updated_seq bigint NOT NULL,
    meta        bytea  NOT NULL
);
CREATE UNIQUE INDEX catalog_live_names ON catalog (namespace, name) WHERE status = 'live';
CREATE INDEX catalog_by_name ON catalog (name);
CREATE INDEX catalog_listing ON catalog (status, name, namespace);

CREATE TABLE catalog_labels (
    key       text  NOT NULL,
    value     text  NOT NULL,
    status    text  NOT NULL,
    name      text  COLLATE "C" NOT NULL,
    namespace text  COLLATE "C" NOT NULL,
    secret_id bytea NOT NULL,
    PRIMARY KEY (key, value, status, name, namespace, secret_id)
);
CREATE INDEX catalog_labels_of ON catalog_labels (secret_id);

-- The attached sinks (derived from sink.* events) and their projection state.
CREATE TABLE sinks (
    name      text   PRIMARY KEY,
    url       text   NOT NULL,
    role      text   NOT NULL,
    added_seq bigint NOT NULL
);

CREATE TABLE sink_state (
    name            text   PRIMARY KEY,
    checkpoint      bigint NOT NULL DEFAULT 0,
    checkpoint_mac  bytea  NULL,
    last_error      text   NULL,
    last_error_at   bigint NULL,
    last_applied_at bigint NULL,
    projected_by    text   NULL   -- the instance (host:pid) that applied the last batch
);

CREATE TABLE parked (
    sink      text   NOT NULL,
    secret_id bytea  NOT NULL,
    seq       bigint NOT NULL,
    error     text   NOT NULL,
    parked_at bigint NOT NULL,
    PRIMARY KEY (sink, secret_id)
);

-- The access log: every value read, denial and failed authentication, hash-chained.
CREATE TABLE access_log (
    seq         bigint PRIMARY KEY,
    recorded_at bigint NOT NULL,
    record      text   NOT NULL,
    prev_hash   bytea  NOT NULL,
    hash        bytea  NOT NULL
);
CREATE TRIGGER access_log_is_append_only BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER access_log_is_never_truncated BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
