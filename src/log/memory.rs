//! An in-memory event log, for tests and property checks.

use super::{chain_next, EventLog, Head, NewEvent};
use crate::error::Result;
use crate::event::{Millis, StoredEvent};

/// A `Vec` of events with the same chaining rules as the SQLite log.
#[derive(Debug, Default, Clone)]
pub struct MemoryLog {
    events: Vec<StoredEvent>,
}

impl MemoryLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a batch at time `now`.
    pub fn append(&mut self, batch: Vec<NewEvent>, now: Millis) -> Vec<StoredEvent> {
        let mut head = self.head_now();
        let rows: Vec<_> = batch.iter().map(|n| chain_next(&mut head, n, now)).collect();
        self.events.extend(rows.iter().cloned());
        rows
    }

    pub fn events(&self) -> &[StoredEvent] {
        &self.events
    }

    fn head_now(&self) -> Head {
        self.events
            .last()
            .map(|e| Head {
                seq: e.seq,
                hash: e.hash,
                recorded_at: e.recorded_at,
            })
            .unwrap_or(Head::EMPTY)
    }
}

impl EventLog for MemoryLog {
    fn head(&self) -> Result<Head> {
        Ok(self.head_now())
    }

    fn scan(&self, from: u64, to: u64, visit: &mut dyn FnMut(StoredEvent) -> Result<bool>) -> Result<()> {
        for e in self.events.iter().filter(|e| e.seq >= from && e.seq <= to) {
            if !visit(e.clone())? {
                break;
            }
        }
        Ok(())
    }
}
