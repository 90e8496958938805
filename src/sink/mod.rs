//! Sinks: the places workloads read secrets from, written only by projectors and replays.
//!
//! A sink stores each secret as one object named `prefix + secret id` (never its human name),
//! with name, scope, labels and the ledger seq it reflects as metadata, and the values as the
//! JSON object of the secret's key/values. A sink touches only objects under its prefix.
//!
//! Sinks are named by URL; [`SinkUrl::parse`] is the one place URLs are read, and it refuses
//! URLs that carry credentials: those come from the backend's own credential chain.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
mod exec;
mod foreign;
#[cfg(test)]
mod fuzz;
#[cfg(feature = "gcp")]
pub mod gcp;
pub mod layer;
mod memory;
mod sqlite;
#[cfg(any(feature = "gcp", feature = "azure"))]
mod tagged;
pub(crate) mod url;
#[cfg(feature = "vault")]
pub mod vault;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use exec::ExecSink;
pub use foreign::{values_from_text, ForeignSecrets};
pub use memory::MemorySink;
pub use sqlite::SqliteSink;
pub use url::{redacted, Backend, SinkUrl};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::crypto::SecretValues;
use crate::error::{Error, Result};
use crate::event::Scope;
use crate::SecretId;

/// Default object-name prefix.
pub const DEFAULT_PREFIX: &str = "sledger-";

/// What a sink can hold and how hard it may be driven. The ledger checks every write against
/// the capabilities of every attached sink *before* appending it, so nothing is recorded that
/// some sink would have to park.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Largest value map, as the JSON object stored.
    pub max_value_bytes: usize,
    /// Largest record metadata (name, scope, owner, labels, version, seq as the JSON of
    /// [`RecordMeta`]) the backend's tags, labels or description can carry.
    pub max_meta_bytes: usize,
    /// Largest single metadata field: the name, the owner, or the labels as one JSON object
    /// (Vault caps each custom-metadata value).
    pub max_field_bytes: usize,
    /// Whether a soft delete can be undone in the backend itself.
    pub soft_delete: bool,
    /// Whether the backend refuses a write conditioned on what it holds (check-and-set, a
    /// transaction): without one, two writers can interleave, and one process at a time
    /// applies the sink's batches.
    pub conditional_write: bool,
    /// How many requests a projector may have in flight against this sink.
    pub max_concurrency: usize,
}

impl Capabilities {
    /// A sink that holds whatever the ledger allows (sqlite, exec, memory).
    pub fn unlimited(max_concurrency: usize) -> Self {
        Capabilities {
            max_value_bytes: usize::MAX,
            max_meta_bytes: usize::MAX,
            max_field_bytes: usize::MAX,
            soft_delete: true,
            conditional_write: true,
            max_concurrency,
        }
    }

    /// Check that a secret with this metadata fits the backend's tags, labels or description
    /// (values are checked against `max_value_bytes` before they are sealed); the error names
    /// the limit (the caller adds which sink).
    pub fn check_metadata(&self, meta: &RecordMeta) -> std::result::Result<(), LimitExceeded> {
        if self.max_meta_bytes == usize::MAX && self.max_field_bytes == usize::MAX {
            return Ok(());
        }
        let meta_bytes = serde_json::to_vec(meta).expect("metadata serialises").len();
        if meta_bytes > self.max_meta_bytes {
            return Err(LimitExceeded {
                what: "its name, owner and labels as metadata",
                size: meta_bytes,
                limit: self.max_meta_bytes,
            });
        }
        let labels = serde_json::to_vec(&meta.labels).expect("labels serialise").len();
        let field = labels.max(meta.name.len()).max(meta.owner.len());
        if field > self.max_field_bytes {
            return Err(LimitExceeded {
                what: "its largest metadata field (the labels as JSON, the name or the owner)",
                size: field,
                limit: self.max_field_bytes,
            });
        }
        Ok(())
    }
}

/// Which limit of [`Capabilities`] a secret exceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    pub what: &'static str,
    pub size: usize,
    pub limit: usize,
}

/// How to delete an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// Recoverable where the backend supports it.
    Soft,
    /// Gone for good.
    Purge,
}

/// One secret as a sink holds it. Debug never shows values.
#[derive(Clone, PartialEq, Eq)]
pub struct SinkRecord {
    pub id: SecretId,
    pub name: String,
    pub scope: Scope,
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    /// The ledger seq this record reflects.
    pub seq: u64,
    pub version: u32,
    pub values: SecretValues,
}

impl fmt::Debug for SinkRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("seq", &self.seq)
            .field("version", &self.version)
            .field("values", &self.values)
            .finish()
    }
}

/// Metadata of a record, as it travels beside the values (JSON in every backend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    pub id: SecretId,
    pub name: String,
    pub scope: Scope,
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    pub seq: u64,
    pub version: u32,
}

impl SinkRecord {
    pub fn meta(&self) -> RecordMeta {
        RecordMeta {
            id: self.id,
            name: self.name.clone(),
            scope: self.scope,
            owner: self.owner.clone(),
            labels: self.labels.clone(),
            seq: self.seq,
            version: self.version,
        }
    }

    #[cfg_attr(
        not(any(feature = "aws", feature = "gcp", feature = "azure")),
        allow(dead_code)
    )]
    /// The record a backend object holds: `meta` from its metadata, at `seq`, and the values
    /// from its stored JSON. An object holding anything else is an error naming `object`
    /// (never quoting its text).
    pub(crate) fn from_stored(
        kind: &str,
        object: &str,
        meta: RecordMeta,
        seq: u64,
        json: &[u8],
    ) -> Result<Self> {
        let values = SecretValues::from_json(json).ok_or_else(|| {
            Error::sink(
                kind,
                format!("{object} does not hold a JSON object of strings"),
                false,
            )
        })?;
        Ok(Self::from_meta(RecordMeta { seq, ..meta }, values))
    }

    pub fn from_meta(meta: RecordMeta, values: SecretValues) -> Self {
        SinkRecord {
            id: meta.id,
            name: meta.name,
            scope: meta.scope,
            owner: meta.owner,
            labels: meta.labels,
            seq: meta.seq,
            version: meta.version,
            values,
        }
    }
}

/// What `list` reports: which secret, at which seq. Seq 0 (never an event's) stands for an
/// object whose metadata is unreadable: it is listed so that `diff` reports it as drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SinkEntry {
    pub id: SecretId,
    pub seq: u64,
}

/// A backend holding the current values of secrets.
///
/// Contract (checked for every implementation by [`conformance`]):
/// - `put` stores the record under `prefix + id`; putting the same record twice leaves the same
///   state, and a record with a lower seq than the stored one must not overwrite it.
/// - `get` returns what `put` stored, or `None` for an absent or deleted object.
/// - `delete` carries the seq of the deleting event and leaves a tombstone at that seq, so a
///   `put` with a lower seq arriving late (another projector still applying an older batch)
///   cannot bring a deleted or purged secret back. Deleting an absent object is `Ok`. After a
///   soft delete `get` returns `None` and a `put` with a higher seq brings the object back;
///   after a purge nothing of its values remains, only the tombstone.
/// - `list` returns every live object under this sink's prefix, and nothing else.
/// - Nothing outside the prefix is ever listed, changed or deleted.
/// - Errors are [`Error::Sink`]; `temporary` ones (network, throttling, 5xx) may be retried.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug + 'static {
    /// Short kind name: "memory", "sqlite", "exec", …
    fn kind(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    async fn put(&self, record: &SinkRecord) -> Result<()>;
    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>>;
    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()>;
    /// Remove the object and any tombstone of it, whatever seq it holds, so that the next
    /// `put` lands whatever its seq: the one write that may lower a seq. Only
    /// `reconcile --force-ledger` calls it, for an object claiming a seq beyond the ledger's
    /// head (planted behind sledger's back, or written by a ledger since lost). Erasing an
    /// absent object is `Ok`.
    async fn erase(&self, id: SecretId) -> Result<()>;
    async fn list(&self) -> Result<Vec<SinkEntry>>;
    async fn health(&self) -> Result<()>;
    /// Who the backend sees this sink as (an AWS account and ARN, a Vault token's name), for
    /// "which account does my backup really go to?"; `None` where there is no such notion.
    async fn identity(&self) -> Result<Option<String>> {
        Ok(None)
    }
}

/// The id under which every sink keeps its anchor: the ledger head it witnessed
/// ([`crate::witness`]). No secret can have it (secret ids are v4 or v7 UUIDs, whose version
/// bits this id does not have), so the anchor shares the secrets' naming, storage and seq rules
/// in every backend; the layers every opened sink is wrapped in leave it out of `list`.
pub const ANCHOR_ID: SecretId = uuid::Uuid::max();

/// The object name of a secret under a prefix.
pub fn object_name(prefix: &str, id: SecretId) -> String {
    format!("{prefix}{id}")
}

#[cfg_attr(
    not(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault")),
    allow(dead_code)
)]
/// The secret whose object `name` is, if it is one of sledger's objects under `prefix`
/// (exactly as [`object_name`] spells it).
pub(crate) fn object_id(prefix: &str, name: &str) -> Option<SecretId> {
    let id = SecretId::parse_str(name.strip_prefix(prefix)?).ok()?;
    (object_name(prefix, id) == name).then_some(id)
}

#[cfg_attr(
    not(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault")),
    allow(dead_code)
)]
/// One async lock per object, for sinks whose write is more than one request (the values,
/// then the metadata carrying the seq): writes to one object from this process take turns.
#[derive(Default)]
pub(crate) struct ObjectLocks(
    std::sync::Mutex<std::collections::HashMap<SecretId, Arc<tokio::sync::Mutex<()>>>>,
);

#[cfg_attr(
    not(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault")),
    allow(dead_code)
)]
impl ObjectLocks {
    pub(crate) async fn lock(&self, id: SecretId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}

impl Error {
    /// A sink failure; `temporary` says whether retrying may help.
    pub fn sink(kind: &str, message: impl Into<String>, temporary: bool) -> Error {
        Error::Sink {
            kind: kind.to_owned(),
            sink: None,
            message: message.into(),
            temporary,
        }
    }

    /// The message without the sink's name, for where the sink is already named around it
    /// (a status row, "sink X could not serve this read: …").
    pub fn without_sink_name(&self) -> String {
        match self {
            Error::Sink { kind, message, .. } => format!("{kind} sink: {message}"),
            other => other.to_string(),
        }
    }

    /// This error with the name of the attached sink it came from, if it is a sink's.
    pub(crate) fn in_sink(self, name: &str) -> Error {
        match self {
            Error::Sink {
                kind,
                sink: None,
                message,
                temporary,
            } => Error::Sink {
                kind,
                sink: Some(name.to_owned()),
                message,
                temporary,
            },
            other => other,
        }
    }

    /// An object under the sink's prefix whose value or metadata sledger never wrote (a binary
    /// value, unreadable metadata, a scope sledger does not know): it was changed behind
    /// sledger's back. Reads skip it and `diff` reports it as drifted; it is never read as an
    /// empty or default record.
    pub(crate) fn drifted(kind: &str, object: &str, what: &str) -> Error {
        Error::sink(
            kind,
            format!(
                "{object} is drifted: {what}, which sledger never writes (changed behind its back); \
                 `sledger reconcile` rewrites it from the ledger"
            ),
            false,
        )
    }
}
