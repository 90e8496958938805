-- The sqlite sink: one row per object. Never edit this file once released.
CREATE TABLE objects (
    name      TEXT PRIMARY KEY,          -- prefix + secret id
    secret_id BLOB    NOT NULL,
    seq       INTEGER NOT NULL,          -- the ledger seq this object reflects
    deleted   INTEGER NOT NULL DEFAULT 0,
    meta      TEXT    NOT NULL,          -- JSON: name, scope, owner, labels, seq, version
    sealed    BLOB    NOT NULL           -- the values, sealed with the ledger's sink seal key
);
