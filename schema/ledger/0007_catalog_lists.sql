-- Indexed, paged lists of the catalog. Never edit this file once released.
-- Derived like the catalog (0003): re-run when the catalog is rebuilt from the log.

-- `secret list` in name order, a page at a time, for one status.
CREATE INDEX IF NOT EXISTS catalog_listing ON catalog (status, name, namespace);

-- One row per label of each secret, carrying the columns a list orders and filters by, so
-- `secret list --label K=V` reads its matches in order and stops at the page's end.
CREATE TABLE IF NOT EXISTS catalog_labels (
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    status    TEXT NOT NULL,
    name      TEXT NOT NULL,
    namespace TEXT NOT NULL,
    secret_id BLOB NOT NULL,
    PRIMARY KEY (key, value, status, name, namespace, secret_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS catalog_labels_of ON catalog_labels (secret_id);

-- The labels of secrets already in the catalog live only in its encoded rows: forget the
-- catalog's position so the next open folds it (and this table) again from the log.
DELETE FROM ledger_meta WHERE key = 'catalog_seq';
