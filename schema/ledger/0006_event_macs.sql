-- Event MACs. Never edit this file once released.

-- A keyed MAC of each event's hash, under a key derived from the ledger's fingerprint key
-- (itself sealed by the master key). NULL on events written before a ledger was upgraded;
-- the `mac_from` setting (with its own MAC) says from which seq every event must carry one.
ALTER TABLE events ADD COLUMN mac BLOB;
