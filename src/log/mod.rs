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
        mac: None,
    };
    row.hash = row.computed_hash();
    *head = Head {
        seq: row.seq,
        hash: row.hash,
        recorded_at: row.recorded_at,
    };
    row
}

/// Checks events one by one, in seq order, against the chain rules.
#[derive(Debug, Clone, Copy)]
pub struct ChainCheck {
    head: Head,
}

/// The event at `seq` no longer hashes to its stored hash: its columns were changed.
pub(crate) fn altered(seq: u64) -> Error {
    Error::ChainBroken {
        seq,
        reason: "the stored hash does not match the event's contents (it was altered)".into(),
    }
}

impl Default for ChainCheck {
    fn default() -> Self {
        ChainCheck { head: Head::EMPTY }
    }
}

impl ChainCheck {
    /// A check that continues a log already checked up to `head`.
    pub fn after(head: Head) -> Self {
        ChainCheck { head }
    }

    /// Check the next event: no gap, linked to its predecessor, hash matching its contents.
    pub fn check(&mut self, e: &StoredEvent) -> Result<()> {
        let broken = |seq: u64, reason: String| Err(Error::ChainBroken { seq, reason });
        let expected = self.head.seq + 1;
        if e.seq != expected {
            return broken(
                expected,
                format!("event {expected} is missing (the next stored event is {})", e.seq),
            );
        }
        if e.prev_hash != self.head.hash {
            return broken(
                e.seq,
                "prev_hash does not match the hash of the event before it".into(),
            );
        }
        if e.computed_hash() != e.hash {
            return Err(altered(e.seq));
        }
        if e.recorded_at < self.head.recorded_at {
            return broken(e.seq, "recorded_at goes backwards".into());
        }
        self.head = Head {
            seq: e.seq,
            hash: e.hash,
            recorded_at: e.recorded_at,
        };
        Ok(())
    }

    /// The last checked event, which must be the log's head as read at the start.
    pub fn finish(self, expected_head: u64) -> Result<Head> {
        if self.head.seq != expected_head {
            return Err(Error::ChainBroken {
                seq: self.head.seq + 1,
                reason: format!(
                    "the log claims {expected_head} events but only {} could be read in order",
                    self.head.seq
                ),
            });
        }
        Ok(self.head)
    }
}

/// How often verification reports progress, in events.
pub const PROGRESS_EVERY: u64 = 65_536;

/// Check the chain from seq 1 to the head and decode every payload; returns the head, or the
/// first bad seq. `progress` is called now and then with (events checked, total).
pub fn verify(log: &dyn EventLog, progress: &mut dyn FnMut(u64, u64)) -> Result<Head> {
    let total = log.head()?.seq;
    let mut chain = ChainCheck::default();
    log.scan(1, u64::MAX, &mut |e| {
        chain.check(&e)?;
        e.decode_in_chain()?;
        if e.seq % PROGRESS_EVERY == 0 {
            progress(e.seq, total);
        }
        Ok(true)
    })?;
    let head = chain.finish(total)?;
    progress(head.seq, total);
    Ok(head)
}
