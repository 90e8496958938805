//! `list` names secrets only: the anchor a projector keeps in the sink
//! ([`crate::sink::ANCHOR_ID`]) is read and written by id, and never reaches `diff`, `reconcile`,
//! a replay or a migration as if it were a secret.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::sink::{Capabilities, DeleteMode, Sink, SinkEntry, SinkRecord, ANCHOR_ID};
use crate::SecretId;

#[derive(Debug)]
pub struct SecretsOnly(pub Arc<dyn Sink>);

#[async_trait]
impl Sink for SecretsOnly {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn put(&self, record: &SinkRecord) -> Result<()> {
        self.0.put(record).await
    }
    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        self.0.get(id).await
    }
    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        self.0.delete(id, seq, how).await
    }
    async fn erase(&self, id: SecretId) -> Result<()> {
        self.0.erase(id).await
    }
    async fn list(&self) -> Result<Vec<SinkEntry>> {
        let mut entries = self.0.list().await?;
        entries.retain(|e| e.id != ANCHOR_ID);
        Ok(entries)
    }
    async fn health(&self) -> Result<()> {
        self.0.health().await
    }
    async fn identity(&self) -> Result<Option<String>> {
        self.0.identity().await
    }
}
