//! The catalog: current metadata of every secret, as a pure, synchronous fold of events.
//!
//! Nothing here touches the database or a cipher. The ledger persists the catalog in tables
//! updated in the same transaction as each append, and rebuilds it with [`Catalog::fold`]
//! whenever those tables are missing or behind; snapshots are bincode of a [`Catalog`].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::crypto::Fingerprint;
use crate::error::{Error, Result};
use crate::event::{Event, Millis, Scope, StoredEvent};
use crate::SecretId;

/// Lifecycle of a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Live,
    /// Soft-deleted: recoverable with `undelete`.
    Deleted,
    /// Crypto-shredded: its data key is gone; values can never be read again.
    Purged,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Live => "live",
            Status::Deleted => "deleted",
            Status::Purged => "purged",
        }
    }
}

/// Current metadata of one secret (never its values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMeta {
    pub id: SecretId,
    pub name: String,
    pub scope: Scope,
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    /// 1 at creation, +1 per `secret.updated`.
    pub version: u32,
    pub status: Status,
    pub created_at: Millis,
    pub created_by: String,
    /// Time and seq of the last event of any kind for this secret.
    pub updated_at: Millis,
    pub updated_seq: u64,
    /// Seq of the event carrying the current values.
    pub value_seq: u64,
    /// Fingerprints of the current values, by key.
    pub fingerprints: BTreeMap<String, Fingerprint>,
}

impl SecretMeta {
    /// The uniqueness namespace of the name: workspace, or one per private owner.
    pub fn namespace(&self) -> String {
        namespace(self.scope, &self.owner)
    }
}

/// Names are unique among live secrets per namespace: the workspace, or each owner's private scope.
pub fn namespace(scope: Scope, owner: &str) -> String {
    match scope {
        Scope::Workspace => "workspace".to_owned(),
        Scope::Private => format!("private:{owner}"),
    }
}

/// Apply one event to one secret's state. Pure: the same inputs always give the same output.
///
/// Returns an error when the event cannot follow the state (an invariant the ledger enforces
/// before appending, so this only fires on a corrupt or hand-edited log).
pub fn apply(state: Option<SecretMeta>, stored: &StoredEvent, event: &Event) -> Result<Option<SecretMeta>> {
    let bad = |why: &str| {
        Err(Error::Corrupt(format!(
            "event {} at seq {} {why}",
            event.event_type(),
            stored.seq
        )))
    };
    let Some(id) = stored.secret_id else {
        return Ok(state);
    };
    let touch = |mut m: SecretMeta| {
        m.updated_at = stored.recorded_at;
        m.updated_seq = stored.seq;
        m
    };
    Ok(match (state, event) {
        (
            None,
            Event::SecretCreated {
                name,
                scope,
                owner,
                labels,
                values,
            },
        ) => Some(SecretMeta {
            id,
            name: name.clone(),
            scope: *scope,
            owner: owner.clone(),
            labels: labels.clone(),
            version: 1,
            status: Status::Live,
            created_at: stored.recorded_at,
            created_by: stored.actor.clone(),
            updated_at: stored.recorded_at,
            updated_seq: stored.seq,
            value_seq: stored.seq,
            fingerprints: values.fingerprints.clone(),
        }),
        (Some(_), Event::SecretCreated { .. }) => return bad("creates a secret that exists"),
        (None, _) => return bad("names a secret that does not exist"),
        (Some(m), _) if m.status == Status::Purged => return bad("follows a purge"),
        (Some(mut m), Event::SecretUpdated { labels, values }) => {
            m.labels = labels.clone();
            m.fingerprints = values.fingerprints.clone();
            m.version += 1;
            m.value_seq = stored.seq;
            Some(touch(m))
        }
        (Some(mut m), Event::SecretRenamed { to, .. }) => {
            m.name = to.clone();
            Some(touch(m))
        }
        (Some(mut m), Event::SecretDeleted) => {
            m.status = Status::Deleted;
            Some(touch(m))
        }
        (Some(mut m), Event::SecretRestored) => {
            m.status = Status::Live;
            Some(touch(m))
        }
        (Some(mut m), Event::SecretPurged) => {
            m.status = Status::Purged;
            m.fingerprints.clear();
            Some(touch(m))
        }
        (Some(m), Event::KeyRotated { .. }) => Some(m),
    })
}

/// The whole catalog at some seq.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// The seq of the last event folded in (0 for an empty log).
    pub seq: u64,
    pub secrets: HashMap<SecretId, SecretMeta>,
}

impl Catalog {
    /// Fold one event in. Events must come in seq order.
    pub fn apply(&mut self, stored: &StoredEvent, event: &Event) -> Result<()> {
        if let Some(id) = stored.secret_id {
            let before = self.secrets.remove(&id);
            if let Some(after) = apply(before, stored, event)? {
                self.secrets.insert(id, after);
            }
        }
        self.seq = stored.seq;
        Ok(())
    }

    /// Fold decoded events on top of this catalog.
    pub fn fold<'a>(
        mut self,
        events: impl IntoIterator<Item = (&'a StoredEvent, &'a Event)>,
    ) -> Result<Self> {
        for (stored, event) in events {
            self.apply(stored, event)?;
        }
        Ok(self)
    }

    /// Secrets sorted by name, for stable output.
    pub fn sorted(&self) -> Vec<&SecretMeta> {
        let mut v: Vec<_> = self.secrets.values().collect();
        v.sort_by(|a, b| (&a.name, a.scope, &a.owner).cmp(&(&b.name, b.scope, &b.owner)));
        v
    }

    /// Snapshot encoding (bincode).
    pub fn to_snapshot(&self) -> Vec<u8> {
        let secrets: BTreeMap<&SecretId, &SecretMeta> = self.secrets.iter().collect();
        bincode::serde::encode_to_vec((self.seq, secrets), bincode::config::standard())
            .expect("catalog always encodes")
    }

    /// Decode a snapshot written by [`Catalog::to_snapshot`].
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self> {
        let ((seq, secrets), _): ((u64, BTreeMap<SecretId, SecretMeta>), usize) =
            bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                .map_err(|e| Error::Corrupt(format!("snapshot does not decode: {e}")))?;
        Ok(Catalog {
            seq,
            secrets: secrets.into_iter().collect(),
        })
    }
}
