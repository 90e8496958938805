//! The name a sink is attached under, in every error it returns: with two sinks of one kind
//! (a primary and a cross-account backup, both `aws-sm`), "aws-sm sink: AccessDenied" would not
//! say which of them refused.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::sink::{Capabilities, DeleteMode, Sink, SinkEntry, SinkRecord};
use crate::SecretId;

#[derive(Debug)]
pub struct Named {
    inner: Arc<dyn Sink>,
    name: String,
}

impl Named {
    pub fn new(inner: Arc<dyn Sink>, name: &str) -> Self {
        Named {
            inner,
            name: name.to_owned(),
        }
    }

    fn named<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|e| e.in_sink(&self.name))
    }
}

#[async_trait]
impl Sink for Named {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(&self, record: &SinkRecord) -> Result<()> {
        self.named(self.inner.put(record).await)
    }
    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        self.named(self.inner.get(id).await)
    }
    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        self.named(self.inner.delete(id, seq, how).await)
    }
    async fn erase(&self, id: SecretId) -> Result<()> {
        self.named(self.inner.erase(id).await)
    }
    async fn list(&self) -> Result<Vec<SinkEntry>> {
        self.named(self.inner.list().await)
    }
    async fn health(&self) -> Result<()> {
        self.named(self.inner.health().await)
    }
    async fn identity(&self) -> Result<Option<String>> {
        self.named(self.inner.identity().await)
    }
}
