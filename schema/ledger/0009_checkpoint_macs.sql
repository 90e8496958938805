-- A MAC over each sink's checkpoint. Never edit this file once released.
-- `sink_state` is outside the chain: a checkpoint raised by hand would make the projector skip
-- events. The MAC (under a key only master-key holders have) binds the checkpoint to its sink
-- and attachment; a checkpoint without a valid one is not believed (projection starts over
-- from the beginning, which sinks' idempotent writes make safe).
ALTER TABLE sink_state ADD COLUMN checkpoint_mac BLOB;
