//! Retries of temporary errors (network, throttling, 5xx, timeouts) with jittered exponential
//! backoff. Only writes are retried: sinks make them idempotent, and a read that fails falls
//! back to the next source at once instead of waiting out a backoff.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;

use crate::error::Result;

tokio::task_local! {
    static DEADLINE: std::time::Instant;
}

/// Run `work` with a deadline the [`Retry`] layer honours: no retry starts after it, and no
/// backoff sleeps past it (the projector's batches and `--wait` use this).
pub async fn within_deadline<F: std::future::Future>(
    deadline: Option<std::time::Instant>,
    work: F,
) -> F::Output {
    match deadline {
        Some(deadline) => DEADLINE.scope(deadline, work).await,
        None => work.await,
    }
}
use crate::sink::{Capabilities, DeleteMode, Sink, SinkEntry, SinkRecord};
use crate::SecretId;

/// How often and how patiently to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff);
        // Full jitter: concurrent retries spread out instead of hammering the backend in step.
        Duration::from_millis(rand::thread_rng().gen_range(0..=cap.as_millis() as u64))
    }
}

#[derive(Debug)]
pub struct Retry {
    inner: Arc<dyn Sink>,
    policy: RetryPolicy,
}

impl Retry {
    pub fn new(inner: Arc<dyn Sink>, policy: RetryPolicy) -> Self {
        Retry { inner, policy }
    }

    async fn retrying<F, Fut>(&self, call: F) -> Result<()>
    where
        F: Fn() -> Fut + Send + Sync,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        let deadline = DEADLINE.try_with(|d| *d).ok();
        let mut attempt = 0;
        loop {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(std::time::Instant::now())
            });
            match call().await {
                Err(e) if e.is_temporary() && attempt + 1 < self.policy.max_attempts && !left.is_zero() => {
                    tracing::debug!(sink = self.inner.kind(), attempt, error = %e, "temporary sink error; backing off");
                    tokio::time::sleep(self.policy.backoff(attempt).min(left)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl Sink for Retry {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(&self, record: &SinkRecord) -> Result<()> {
        self.retrying(|| self.inner.put(record)).await
    }
    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        self.inner.get(id).await
    }
    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        self.retrying(|| self.inner.delete(id, seq, how)).await
    }
    async fn erase(&self, id: SecretId) -> Result<()> {
        self.retrying(|| self.inner.erase(id)).await
    }
    async fn list(&self) -> Result<Vec<SinkEntry>> {
        self.inner.list().await
    }
    async fn health(&self) -> Result<()> {
        self.inner.health().await
    }
    async fn identity(&self) -> Result<Option<String>> {
        self.inner.identity().await
    }
}
