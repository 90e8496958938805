//! `max_rps`: a sink whose operations start at most `per_second` times a second, spaced
//! evenly, across every task of this process using it (projector batches, replays, reads).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::sink::{Capabilities, DeleteMode, Sink, SinkEntry, SinkRecord};
use crate::SecretId;

/// A sink whose operations start at most `per_second` times a second, spaced evenly, across
/// every task of this process using it (projector batches, replays, reads).
pub struct Pace {
    inner: Arc<dyn Sink>,
    interval: std::time::Duration,
    next_slot: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl fmt::Debug for Pace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pace")
            .field("inner", &self.inner)
            .field("interval", &self.interval)
            .finish()
    }
}

impl Pace {
    pub fn new(inner: Arc<dyn Sink>, per_second: u32) -> Self {
        Pace {
            inner,
            interval: std::time::Duration::from_secs(1) / per_second.max(1),
            next_slot: Default::default(),
        }
    }

    /// Wait for this caller's slot.
    async fn pace(&self) {
        let slot = {
            let mut next = self.next_slot.lock().await;
            let now = tokio::time::Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[async_trait]
impl Sink for Pace {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(&self, record: &SinkRecord) -> Result<()> {
        self.pace().await;
        self.inner.put(record).await
    }
    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        self.pace().await;
        self.inner.get(id).await
    }
    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        self.pace().await;
        self.inner.delete(id, seq, how).await
    }
    async fn erase(&self, id: SecretId) -> Result<()> {
        self.pace().await;
        self.inner.erase(id).await
    }
    async fn list(&self) -> Result<Vec<SinkEntry>> {
        self.pace().await;
        self.inner.list().await
    }
    async fn health(&self) -> Result<()> {
        self.pace().await;
        self.inner.health().await
    }
    async fn identity(&self) -> Result<Option<String>> {
        self.pace().await;
        self.inner.identity().await
    }
}
