-- Which instance (host:pid) applied each sink's last batch: with several servers on one
-- ledger, `sink status` shows who projects each sink. Never edit this file once released.
ALTER TABLE sink_state ADD COLUMN projected_by TEXT;
