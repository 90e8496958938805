-- Mutable state outside the chain. Never edit this file once released.

-- Ledger identity, settings, the master-key check value and the wrapped fingerprint key.
CREATE TABLE ledger_meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

-- One data key per secret, wrapped by the master key. Purge deletes the row (crypto-shredding).
CREATE TABLE secret_keys (
    secret_id BLOB PRIMARY KEY,
    wrapped   BLOB NOT NULL
);

-- Catalog snapshots: bincode of the whole catalog after the event at `seq`.
CREATE TABLE snapshots (
    seq   INTEGER PRIMARY KEY,
    state BLOB NOT NULL
);
