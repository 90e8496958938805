-- The sqlite sink's own settings. Never edit this file once released.
-- `seal_key`: the key sealing `objects.sealed`, wrapped by the ledger's master key, so the
-- sink opens with the master key alone once its ledger is lost (`sledger recover`).
CREATE TABLE sink_meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
