//! `memory://NAME`: a sink in this process's memory. Sinks opened with the same NAME share one
//! store (each under its own prefix), which is how prefix isolation is tested.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;

use super::{object_name, Capabilities, DeleteMode, Sink, SinkEntry, SinkRecord};
use crate::error::Result;
use crate::SecretId;

/// An object, or the tombstone a delete leaves (`record` is `None` after a purge).
#[derive(Clone)]
struct Object {
    seq: u64,
    record: Option<SinkRecord>,
    deleted: bool,
}

type Store = Arc<Mutex<BTreeMap<String, Object>>>;

/// An in-memory sink.
#[derive(Clone)]
pub struct MemorySink {
    store: Store,
    prefix: String,
    max_concurrency: usize,
}

impl std::fmt::Debug for MemorySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySink")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn registry() -> &'static Mutex<BTreeMap<String, Store>> {
    static STORES: OnceLock<Mutex<BTreeMap<String, Store>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

impl MemorySink {
    /// A sink on a fresh, private store.
    pub fn new(prefix: &str) -> Self {
        MemorySink {
            store: Store::default(),
            prefix: prefix.to_owned(),
            max_concurrency: 16,
        }
    }

    /// A sink on the process-wide store called `name` (an empty name gets a private store).
    pub fn named(name: &str, prefix: &str, max_concurrency: usize) -> Self {
        let store = if name.is_empty() {
            Store::default()
        } else {
            registry()
                .lock()
                .expect("memory sink registry")
                .entry(name.to_owned())
                .or_default()
                .clone()
        };
        MemorySink {
            store,
            prefix: prefix.to_owned(),
            max_concurrency,
        }
    }

    /// Another sink on the same store under a different prefix.
    pub fn with_prefix(&self, prefix: &str) -> Self {
        MemorySink {
            store: self.store.clone(),
            prefix: prefix.to_owned(),
            max_concurrency: self.max_concurrency,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Object>> {
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::unlimited(self.max_concurrency)
    }

    async fn put(&self, record: &SinkRecord) -> Result<()> {
        let mut store = self.lock();
        let name = object_name(&self.prefix, record.id);
        if store.get(&name).is_none_or(|existing| existing.seq <= record.seq) {
            store.insert(
                name,
                Object {
                    seq: record.seq,
                    record: Some(record.clone()),
                    deleted: false,
                },
            );
        }
        Ok(())
    }

    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        Ok(self
            .lock()
            .get(&object_name(&self.prefix, id))
            .filter(|o| !o.deleted)
            .and_then(|o| o.record.clone()))
    }

    async fn erase(&self, id: SecretId) -> Result<()> {
        self.lock().remove(&object_name(&self.prefix, id));
        Ok(())
    }

    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        let mut store = self.lock();
        let object = store.entry(object_name(&self.prefix, id)).or_insert(Object {
            seq,
            record: None,
            deleted: true,
        });
        if how == DeleteMode::Purge {
            object.record = None;
        }
        if object.seq <= seq {
            object.seq = seq;
            object.deleted = true;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<SinkEntry>> {
        Ok(self
            .lock()
            .range(self.prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&self.prefix))
            // "sledger-x-<id>" starts with "sledger-" too, but belongs to another prefix.
            .filter(|(_, o)| !o.deleted)
            .filter_map(|(name, o)| {
                o.record
                    .as_ref()
                    .filter(|r| *name == object_name(&self.prefix, r.id))
            })
            .map(|r| SinkEntry { id: r.id, seq: r.seq })
            .collect())
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

/// `memory://STORE`: an in-process store shared by the sinks named after it.
pub(super) fn from_url(parts: &mut super::url::UrlParts<'_>) -> crate::Result<super::Backend> {
    Ok(super::Backend::Memory {
        store: parts.location.to_owned(),
        prefix: parts.prefix.clone(),
        max_concurrency: parts.concurrency(16),
    })
}
