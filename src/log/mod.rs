//! The event log: an append-only, gap-free, hash-chained sequence of [`StoredEvent`]s.

pub mod memory;
pub mod sqlite;

use crate::error::{Error, Result};
use crate::event::{encode, Event, Millis, StoredEvent, GENESIS_HASH};
use crate::SecretId;

/// The last event of a log: what the next append chains onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
    pub recorded_at: Millis,
}

impl Head {
    /// The head of an empty log.
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: GENESIS_HASH,
        recorded_at: 0,
    };
}

/// An event about to be appended; the log gives it its seq, time and hashes.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: uuid::Uuid,
    pub actor: String,
    pub secret_id: Option<SecretId>,
    pub event: Event,
}

/// Read access to an event log.
///
/// Contract: `scan` yields events in increasing seq order, with nothing skipped or reordered
/// by the log itself, so a verifier sees exactly what is stored.
pub trait EventLog {
    /// The last event, or [`Head::EMPTY`].
    fn head(&self) -> Result<Head>;

    /// Visit the events with `from <= seq <= to`, in seq order, until `visit` returns false.
    fn scan(&self, from: u64, to: u64, visit: &mut dyn FnMut(StoredEvent) -> Result<bool>) -> Result<()>;
}

/// Turn a new event into the row that follows `head`; advances `head`.
///
/// `recorded_at` is max(previous, now), so time queries survive a clock stepping back.
pub fn chain_next(head: &mut Head, new: &NewEvent, now: Millis) -> StoredEvent {
    let (event_type, event_version, payload) = encode(&new.event);
    let mut row = StoredEvent {
        seq: head.seq + 1,
        event_id: new.event_id,
        recorded_at: now.max(head.recorded_at),
        actor: new.actor.clone(),
        secret_id: new.secret_id,
        event_type: event_type.to_owned(),
        event_version,
        payload,
        prev_hash: head.hash,
        hash: [0; 32],
    };
    row.hash = row.computed_hash();
    *head = Head {
        seq: row.seq,
        hash: row.hash,
        recorded_at: row.recorded_at,
    };
    row
}

/// Check the chain from seq 1 to the head; returns the head, or the first bad seq.
///
/// `progress` is called now and then with (events checked, total).
pub fn verify(log: &dyn EventLog, progress: &mut dyn FnMut(u64, u64)) -> Result<Head> {
    let total = log.head()?.seq;
    let mut head = Head::EMPTY;
    log.scan(1, u64::MAX, &mut |e| {
        let expected = head.seq + 1;
        if e.seq != expected {
            return Err(Error::ChainBroken {
                seq: expected,
                reason: format!("event {expected} is missing (the next stored event is {})", e.seq),
            });
        }
        if e.prev_hash != head.hash {
            return Err(Error::ChainBroken {
                seq: e.seq,
                reason: "prev_hash does not match the hash of the event before it".into(),
            });
        }
        if e.computed_hash() != e.hash {
            return Err(Error::ChainBroken {
                seq: e.seq,
                reason: "the stored hash does not match the event's contents (it was altered)".into(),
            });
        }
        if e.recorded_at < head.recorded_at {
            return Err(Error::ChainBroken {
                seq: e.seq,
                reason: "recorded_at goes backwards".into(),
            });
        }
        e.decode().map_err(|err| Error::ChainBroken {
            seq: e.seq,
            reason: err.to_string(),
        })?;
        head = Head {
            seq: e.seq,
            hash: e.hash,
            recorded_at: e.recorded_at,
        };
        if head.seq % 65_536 == 0 {
            progress(head.seq, total);
        }
        Ok(true)
    })?;
    if head.seq != total {
        return Err(Error::ChainBroken {
            seq: head.seq + 1,
            reason: format!(
                "the log claims {total} events but only {} could be read in order",
                head.seq
            ),
        });
    }
    progress(head.seq, total);
    Ok(head)
}
