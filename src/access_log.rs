//! The access log (ARCHITECTURE.md, server): who read which secret, and who was refused.
//!
//! A second hash-chained table beside the events. Each row is one [`AccessRecord`], stored as
//! the JSON that was hashed, so a reader without the master key can check the chain. It never
//! holds a value or a token.

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::SecretId;

/// What happened to one request, as the access log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessOutcome {
    /// A value was served.
    Served,
    /// The token's role or patterns did not allow it.
    Denied,
    /// No valid token was presented.
    Unauthenticated,
}

impl AccessOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessOutcome::Served => "served",
            AccessOutcome::Denied => "denied",
            AccessOutcome::Unauthenticated => "unauthenticated",
        }
    }
}

/// One access-log entry. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    pub at: Millis,
    /// The authenticated principal (`token:NAME`), or `anonymous`.
    pub principal: String,
    /// What was asked for: the route's operation (`secret.get`, `sink.add`, …).
    pub action: String,
    pub outcome: AccessOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<SecretId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The sink (or `ledger`) that served the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// Which access-log rows a query wants.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AccessOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// At most N matching rows: the first N after `after_seq` when it is given (a page to go
    /// on from), else the last N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Who is looking: reads of other owners' private secrets are left out, as in the audit
    /// log (the server sets it to the caller's principal; a local key holder sees everything).
    #[serde(skip)]
    pub viewer: Option<String>,
}

impl AccessFilter {
    pub fn keeps(&self, e: &AccessEntry) -> bool {
        self.principal.as_ref().is_none_or(|p| &e.record.principal == p)
            && self.outcome.is_none_or(|o| e.record.outcome == o)
    }
}

/// A stored access-log row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub record: AccessRecord,
    #[serde(skip)]
    pub json: String,
    #[serde(skip)]
    pub prev_hash: [u8; 32],
    #[serde(skip)]
    pub hash: [u8; 32],
}

/// The hash of the row at `seq` holding `json` after `prev_hash`.
pub fn access_hash(seq: u64, prev_hash: &[u8; 32], json: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("sledger 2026 access log chain");
    h.update(&seq.to_le_bytes());
    h.update(prev_hash);
    h.update(json.as_bytes());
    *h.finalize().as_bytes()
}

/// Chain `records` after the row (`head_seq`, `head_hash`).
pub fn chain(head_seq: u64, head_hash: [u8; 32], records: &[AccessRecord]) -> Vec<AccessEntry> {
    let mut prev = head_hash;
    records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let seq = head_seq + 1 + i as u64;
            let json = serde_json::to_string(record).expect("access records serialise");
            let hash = access_hash(seq, &prev, &json);
            let entry = AccessEntry {
                seq,
                record: record.clone(),
                json,
                prev_hash: prev,
                hash,
            };
            prev = hash;
            entry
        })
        .collect()
}

/// Check a run of rows from seq 1: gap-free, linked, each hash right, each record parseable.
/// Returns the number of rows, or the first bad seq and why.
pub fn verify_chain(entries: impl IntoIterator<Item = AccessEntry>) -> Result<u64, (u64, String)> {
    let mut prev = crate::event::GENESIS_HASH;
    let mut expected = 1;
    for e in entries {
        if e.seq != expected {
            return Err((expected, format!("row {expected} is missing (found {})", e.seq)));
        }
        if e.prev_hash != prev {
            return Err((e.seq, "does not link to the row before it".into()));
        }
        if access_hash(e.seq, &e.prev_hash, &e.json) != e.hash {
            return Err((e.seq, "its contents do not match its hash".into()));
        }
        prev = e.hash;
        expected += 1;
    }
    Ok(expected - 1)
}
