-- The catalog: current metadata per secret, derived from the log and updated in the same
-- transaction as each append. It can be dropped at any time; sledger re-runs this file and
-- rebuilds it from the log. Never edit this file once released.
CREATE TABLE IF NOT EXISTS catalog (
    secret_id   BLOB PRIMARY KEY,
    namespace   TEXT    NOT NULL,  -- 'workspace' or 'private:<owner>'
    name        TEXT    NOT NULL,
    status      TEXT    NOT NULL,  -- live | deleted | purged
    updated_seq INTEGER NOT NULL,
    meta        BLOB    NOT NULL   -- bincode of SecretMeta
);

CREATE UNIQUE INDEX IF NOT EXISTS catalog_live_names ON catalog (namespace, name) WHERE status = 'live';
CREATE INDEX IF NOT EXISTS catalog_by_name ON catalog (name);
