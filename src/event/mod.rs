//! Events: the typed payloads, the stored envelope, the codec and the hash chain.

mod chain;
mod codec;

pub use chain::{event_hash, GENESIS_HASH};
pub use codec::{decode, encode};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::Fingerprint;
use crate::SecretId;

/// Unix milliseconds.
pub type Millis = i64;

/// Unix ms → RFC 3339 (UTC, always three fractional digits, so columns line up).
pub fn format_millis(ms: Millis) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// RFC 3339 → unix ms; `None` if `text` is not an RFC 3339 time (each caller says how to write
/// one, in its own terms).
pub fn parse_millis(text: &str) -> Option<Millis> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as Millis)
}

/// Who may see a secret: everyone using the ledger, or only its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Workspace,
    Private,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Workspace => "workspace",
            Scope::Private => "private",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret's values as they travel inside an event: sealed, plus a fingerprint per key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedValues {
    /// nonce ‖ XChaCha20-Poly1305 ciphertext of the value map (AAD = secret_id ‖ seq).
    pub ciphertext: Vec<u8>,
    /// Keyed blake3 fingerprint of every value, by key.
    pub fingerprints: BTreeMap<String, Fingerprint>,
}

impl std::fmt::Debug for SealedValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedValues")
            .field("keys", &self.fingerprints.keys().collect::<Vec<_>>())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// A typed event payload (the current version of each event type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    SecretCreated {
        name: String,
        scope: Scope,
        owner: String,
        labels: BTreeMap<String, String>,
        values: SealedValues,
    },
    /// The full new value map and labels, never a patch.
    SecretUpdated {
        labels: BTreeMap<String, String>,
        values: SealedValues,
    },
    SecretRenamed {
        from: String,
        to: String,
    },
    SecretDeleted,
    SecretRestored,
    SecretPurged,
    KeyRotated {
        key_id: String,
    },
    /// The master key moved to another provider (a file or a KMS key, by URI: no secret).
    KeyMigrated {
        provider: String,
    },
    /// A sink was attached. Its URL never carries credentials (refused at parse time).
    SinkAdded {
        name: String,
        url: String,
        role: SinkRole,
    },
    SinkRoleChanged {
        name: String,
        role: SinkRole,
    },
    SinkRemoved {
        name: String,
    },
    /// A `restore` rolled the ledger back to the state after `target_seq`; the compensating
    /// events follow it in the same transaction.
    LedgerRestored {
        target_seq: u64,
    },
    /// An API token was issued. Only its keyed hash is recorded, never the token.
    TokenIssued {
        name: String,
        role: crate::identity::Role,
        patterns: Vec<String>,
        expires_at: Option<Millis>,
        hash: [u8; 32],
    },
    TokenRevoked {
        name: String,
    },
    /// From this event on, every event carries a MAC under a key only master-key holders have
    /// (the upgrade of a ledger written before MACs existed).
    MacsStarted,
    /// A key holder accepted this ledger as it is, though sinks witnessed a head it no longer
    /// has (a rollback to an older copy): anchors written before this event are not believed.
    AnchorsReset,
    /// This ledger was rebuilt from the current state a sink held (`sledger recover`) after
    /// the ledger it projected was lost: the history before this event is not available, and
    /// heads that sinks witnessed before it are not believed.
    LedgerRecovered {
        /// The sink URL it was rebuilt from (credentials never appear in sink URLs).
        source: String,
    },
    /// A key holder made the ledger the truth for sink `name` (`reconcile --force-ledger`):
    /// what it held beyond the ledger's head is erased and written again from the ledger.
    SinkForced {
        name: String,
    },
}

/// What a sink is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkRole {
    /// Serves reads; write commands wait for it.
    Primary,
    /// Serves reads when the primary cannot.
    Backup,
    /// Written by its projector, never read.
    Replica,
    /// Attached but written by no projector: a target for explicit replays.
    Standby,
}

impl SinkRole {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkRole::Primary => "primary",
            SinkRole::Backup => "backup",
            SinkRole::Replica => "replica",
            SinkRole::Standby => "standby",
        }
    }

    /// Whether a projector keeps this sink up to date.
    pub fn is_projected(self) -> bool {
        self != SinkRole::Standby
    }
}

impl std::fmt::Display for SinkRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SinkRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "primary" => SinkRole::Primary,
            "backup" => SinkRole::Backup,
            "replica" => SinkRole::Replica,
            "standby" => SinkRole::Standby,
            other => {
                return Err(format!(
                    "unknown role {other:?}; roles: primary, backup, replica, standby"
                ))
            }
        })
    }
}

impl Event {
    /// The `event_type` column value.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::SecretCreated { .. } => "secret.created",
            Event::SecretUpdated { .. } => "secret.updated",
            Event::SecretRenamed { .. } => "secret.renamed",
            Event::SecretDeleted => "secret.deleted",
            Event::SecretRestored => "secret.restored",
            Event::SecretPurged => "secret.purged",
            Event::KeyRotated { .. } => "key.rotated",
            Event::KeyMigrated { .. } => "key.migrated",
            Event::SinkAdded { .. } => "sink.added",
            Event::SinkRoleChanged { .. } => "sink.role_changed",
            Event::SinkRemoved { .. } => "sink.removed",
            Event::LedgerRestored { .. } => "ledger.restored",
            Event::TokenIssued { .. } => "token.issued",
            Event::TokenRevoked { .. } => "token.revoked",
            Event::MacsStarted => "ledger.macs_started",
            Event::AnchorsReset => "anchors.reset",
            Event::LedgerRecovered { .. } => "ledger.recovered",
            Event::SinkForced { .. } => "sink.forced",
        }
    }

    /// The sealed values this event carries, if any.
    pub fn values(&self) -> Option<&SealedValues> {
        match self {
            Event::SecretCreated { values, .. } | Event::SecretUpdated { values, .. } => Some(values),
            _ => None,
        }
    }
}

/// Every event type this build knows, for `--type` validation and docs.
pub const EVENT_TYPES: &[&str] = &[
    "secret.created",
    "secret.updated",
    "secret.renamed",
    "secret.deleted",
    "secret.restored",
    "secret.purged",
    "key.rotated",
    "key.migrated",
    "sink.added",
    "sink.role_changed",
    "sink.removed",
    "ledger.restored",
    "token.issued",
    "token.revoked",
    "ledger.macs_started",
    "anchors.reset",
    "ledger.recovered",
    "sink.forced",
];

/// One row of the `events` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub event_id: uuid::Uuid,
    pub recorded_at: Millis,
    pub actor: String,
    pub secret_id: Option<SecretId>,
    pub event_type: String,
    pub event_version: u32,
    pub payload: Vec<u8>,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    /// The keyed MAC of `hash` (see `Ledger::verify`); `None` before a ledger's MACs started.
    pub mac: Option<[u8; 32]>,
}

impl StoredEvent {
    /// Decode the payload through its type and version (upcasting older versions).
    pub fn decode(&self) -> crate::Result<Event> {
        decode(&self.event_type, self.event_version, &self.payload).map_err(|reason| {
            crate::Error::Corrupt(format!("event at seq {} does not decode: {reason}", self.seq))
        })
    }

    /// [`StoredEvent::decode`] for a reader checking the chain: an event that does not decode
    /// breaks the log at its seq.
    pub fn decode_in_chain(&self) -> crate::Result<Event> {
        self.decode().map_err(|err| crate::Error::ChainBroken {
            seq: self.seq,
            reason: err.to_string(),
        })
    }

    /// The hash this row should have, given its own columns.
    pub fn computed_hash(&self) -> [u8; 32] {
        event_hash(self)
    }
}
