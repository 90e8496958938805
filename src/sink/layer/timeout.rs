//! A deadline on every sink operation: a backend that hangs fails as temporary (retryable)
//! instead of holding its caller forever.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::sink::{Capabilities, DeleteMode, Sink, SinkEntry, SinkRecord};
use crate::SecretId;

/// The default per-request deadline.
pub const DEFAULT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Timeout {
    inner: Arc<dyn Sink>,
    limit: Duration,
}

impl Timeout {
    pub fn new(inner: Arc<dyn Sink>, limit: Duration) -> Self {
        Timeout { inner, limit }
    }

    async fn within<T>(&self, op: &str, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.limit, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::sink(
                self.inner.kind(),
                format!("{op} did not answer within {:?}", self.limit),
                true,
            )),
        }
    }
}

#[async_trait]
impl Sink for Timeout {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(&self, record: &SinkRecord) -> Result<()> {
        self.within("a write", self.inner.put(record)).await
    }
    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        self.within("a read", self.inner.get(id)).await
    }
    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        self.within("a delete", self.inner.delete(id, seq, how)).await
    }
    async fn erase(&self, id: SecretId) -> Result<()> {
        self.within("an erase", self.inner.erase(id)).await
    }
    async fn list(&self) -> Result<Vec<SinkEntry>> {
        // A listing pages through every object: it gets ten requests' time.
        match tokio::time::timeout(self.limit * 10, self.inner.list()).await {
            Ok(result) => result,
            Err(_) => Err(Error::sink(
                self.inner.kind(),
                format!("a listing did not finish within {:?}", self.limit * 10),
                true,
            )),
        }
    }
    async fn health(&self) -> Result<()> {
        self.within("a health check", self.inner.health()).await
    }
    async fn identity(&self) -> Result<Option<String>> {
        self.within("an identity check", self.inner.identity()).await
    }
}
