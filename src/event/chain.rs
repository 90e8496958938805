//! The blake3 hash chain over the `events` table.

use super::StoredEvent;

/// `prev_hash` of seq 1.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// blake3(prev_hash ‖ every other column, length-prefixed, in a fixed order).
///
/// Length prefixes make the encoding unambiguous, so no two different rows hash alike by
/// shifting bytes between adjacent columns.
pub fn event_hash(e: &StoredEvent) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&e.prev_hash);
    h.update(&e.seq.to_le_bytes());
    field(&mut h, e.event_id.as_bytes());
    h.update(&e.recorded_at.to_le_bytes());
    field(&mut h, e.actor.as_bytes());
    match &e.secret_id {
        Some(id) => {
            h.update(&[1]);
            field(&mut h, id.as_bytes());
        }
        None => {
            h.update(&[0]);
        }
    }
    field(&mut h, e.event_type.as_bytes());
    h.update(&e.event_version.to_le_bytes());
    field(&mut h, &e.payload);
    *h.finalize().as_bytes()
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}
