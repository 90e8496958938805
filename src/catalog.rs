//! The catalog: current metadata of every secret, as a pure, synchronous fold of events.
//!
//! Nothing here touches the database or a cipher. The ledger persists the catalog in tables
//! updated in the same transaction as each append, and rebuilds it with [`Catalog::fold`]
//! whenever those tables are missing or behind; snapshots are bincode of a [`Catalog`].

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::crypto::Fingerprint;
use crate::error::{Error, Result};
use crate::event::{Event, Millis, Scope, SinkRole, StoredEvent};
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

fn corrupt(stored: &StoredEvent, event_type: &str, why: &str) -> Error {
    Error::Corrupt(format!("event {event_type} at seq {} {why}", stored.seq))
}

/// The state a `secret.created` event starts.
fn created(stored: &StoredEvent, event: Event) -> Result<SecretMeta> {
    let (
        Some(id),
        Event::SecretCreated {
            name,
            scope,
            owner,
            labels,
            values,
        },
    ) = (stored.secret_id, event)
    else {
        return Err(corrupt(
            stored,
            stored.event_type.as_str(),
            "names a secret that does not exist",
        ));
    };
    Ok(SecretMeta {
        id,
        name,
        scope,
        owner,
        labels,
        version: 1,
        status: Status::Live,
        created_at: stored.recorded_at,
        created_by: stored.actor.clone(),
        updated_at: stored.recorded_at,
        updated_seq: stored.seq,
        value_seq: stored.seq,
        fingerprints: values.fingerprints,
    })
}

/// Apply an event to an existing secret's state, in place.
fn update(m: &mut SecretMeta, stored: &StoredEvent, event: Event) -> Result<()> {
    let event_type = event.event_type();
    if m.status == Status::Purged {
        return Err(corrupt(stored, event_type, "follows a purge"));
    }
    match event {
        Event::SecretCreated { .. } => {
            return Err(corrupt(stored, event_type, "creates a secret that exists"))
        }
        Event::KeyRotated { .. }
        | Event::KeyMigrated { .. }
        | Event::LedgerRestored { .. }
        | Event::SinkAdded { .. }
        | Event::SinkRoleChanged { .. }
        | Event::SinkRemoved { .. }
        | Event::TokenIssued { .. }
        | Event::TokenRevoked { .. }
        | Event::MacsStarted
        | Event::AnchorsReset
        | Event::LedgerRecovered { .. }
        | Event::SinkForced { .. } => {
            return Err(corrupt(
                stored,
                event_type,
                "is a ledger-level event with a secret id",
            ))
        }
        Event::SecretUpdated { labels, values } => {
            m.labels = labels;
            m.fingerprints = values.fingerprints;
            m.version += 1;
            m.value_seq = stored.seq;
        }
        Event::SecretRenamed { to, .. } => m.name = to,
        Event::SecretDeleted => m.status = Status::Deleted,
        Event::SecretRestored => m.status = Status::Live,
        Event::SecretPurged => {
            m.status = Status::Purged;
            m.fingerprints.clear();
        }
    }
    m.updated_at = stored.recorded_at;
    m.updated_seq = stored.seq;
    Ok(())
}

/// Apply one event to one secret's state. Pure: the same inputs always give the same output.
///
/// Returns an error when the event cannot follow the state (an invariant the ledger enforces
/// before appending, so this only fires on a corrupt or hand-edited log).
pub fn apply(state: Option<SecretMeta>, stored: &StoredEvent, event: Event) -> Result<Option<SecretMeta>> {
    if stored.secret_id.is_none() {
        return Ok(state);
    }
    match state {
        None => created(stored, event).map(Some),
        Some(mut m) => {
            update(&mut m, stored, event)?;
            Ok(Some(m))
        }
    }
}

impl SecretMeta {
    /// The metadata as the CLI's `--format json` and the API show it: value keys, never
    /// values or fingerprints.
    pub fn to_json(&self) -> serde_json::Value {
        use crate::event::format_millis;
        serde_json::json!({
            "name": self.name,
            "id": self.id,
            "scope": self.scope,
            "owner": self.owner,
            "version": self.version,
            "status": self.status,
            "labels": self.labels,
            "keys": self.fingerprints.keys().collect::<Vec<_>>(),
            "created_at": format_millis(self.created_at),
            "updated_at": format_millis(self.updated_at),
            "seq": self.updated_seq,
        })
    }
}

impl SecretMeta {
    /// The row encoding (bincode), as the catalog table and snapshots hold it.
    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).expect("metadata always encodes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        // Bounded like every decoder of stored bytes: a forged length prefix must not abort
        // the process on allocation.
        bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<{ 16 << 20 }>())
            .map(|(m, _)| m)
            .map_err(|e| Error::Corrupt(format!("catalog row does not decode: {e}")))
    }
}

/// A snapshot's bytes, written a secret at a time in id order, so storing or checking one
/// never needs the whole catalog decoded: bincode of `(seq, secrets by id, sinks)`, which
/// [`Catalog::from_snapshot`] reads. It writes into a buffer, or straight into a hasher.
pub struct SnapshotEncoder<W = Vec<u8>> {
    out: W,
}

impl SnapshotEncoder<Vec<u8>> {
    /// A snapshot at `seq` of `secrets` secrets (exactly that many must be pushed).
    pub fn new(seq: u64, secrets: usize) -> Self {
        Self::writing_to(Vec::new(), seq, secrets)
    }
}

impl<W: std::io::Write> SnapshotEncoder<W> {
    /// [`SnapshotEncoder::new`], writing into `out`.
    pub fn writing_to(out: W, seq: u64, secrets: usize) -> Self {
        let mut snapshot = SnapshotEncoder { out };
        snapshot.encode(&seq);
        snapshot.encode(&(secrets as u64));
        snapshot
    }

    /// The next secret (ids in ascending order), its metadata as [`SecretMeta::to_bytes`].
    pub fn push(&mut self, id: &SecretId, meta: &[u8]) {
        self.encode(id);
        self.out.write_all(meta).expect("a snapshot's sink never fails");
    }

    pub fn finish(mut self, sinks: &BTreeMap<String, SinkConfig>) -> W {
        self.encode(sinks);
        self.out
    }

    fn encode<T: Serialize + ?Sized>(&mut self, value: &T) {
        bincode::serde::encode_into_std_write(value, &mut self.out, bincode::config::standard())
            .expect("a snapshot always encodes");
    }
}

/// Where each secret's metadata lies in a snapshot's encoding ([`SnapshotEncoder`]), in the
/// order written (by id), read one entry at a time: a snapshot of a million secrets is never
/// decoded whole.
pub fn snapshot_entries(encoding: &[u8]) -> Result<Vec<(SecretId, std::ops::Range<usize>)>> {
    /// The next value at `*at`, and where its bytes lie.
    fn take<T: serde::de::DeserializeOwned>(
        encoding: &[u8],
        at: &mut usize,
    ) -> Result<(T, std::ops::Range<usize>)> {
        let config = bincode::config::standard().with_limit::<{ 16 << 20 }>();
        let (value, used) =
            bincode::serde::decode_from_slice::<T, _>(encoding.get(*at..).unwrap_or_default(), config)
                .map_err(|_| Error::Corrupt("a snapshot does not decode".into()))?;
        let start = *at;
        *at += used;
        Ok((value, start..*at))
    }
    let mut at = 0;
    let _seq: u64 = take(encoding, &mut at)?.0;
    let count: u64 = take(encoding, &mut at)?.0;
    let mut entries = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let id: SecretId = take(encoding, &mut at)?.0;
        let meta = take::<SecretMeta>(encoding, &mut at)?.1;
        entries.push((id, meta));
    }
    Ok(entries)
}

/// Which secrets a list wants, and where its page starts. Lists run in (name, namespace)
/// order, so a page ends at a name and the next one starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Status,
    /// Every label here must be on the secret with this value.
    pub labels: BTreeMap<String, String>,
    /// Only names starting with this.
    pub prefix: Option<String>,
    /// Only names after this one (the previous page's last name).
    pub after: Option<String>,
}

impl ListQuery {
    pub fn new(status: Status) -> Self {
        ListQuery {
            status,
            labels: BTreeMap::new(),
            prefix: None,
            after: None,
        }
    }

    /// Whether a secret found in name order from the query's start belongs to it: `None` once
    /// names are past the prefix (nothing later can match), else whether its labels match.
    pub fn admits(&self, meta: &SecretMeta) -> Option<bool> {
        if self
            .prefix
            .as_ref()
            .is_some_and(|p| !meta.name.starts_with(p.as_str()))
        {
            return None;
        }
        Some(
            meta.status == self.status
                && self.after.as_ref().is_none_or(|a| meta.name > *a)
                && self.labels.iter().all(|(k, v)| meta.labels.get(k) == Some(v)),
        )
    }

    /// The first name a scan must look at: the prefix or the name after `after`, whichever
    /// is later, and whether that bound is exclusive.
    pub fn start(&self) -> (&str, bool) {
        match (&self.prefix, &self.after) {
            (Some(p), Some(a)) if p.as_str() > a.as_str() => (p, false),
            (_, Some(a)) => (a, true),
            (Some(p), None) => (p, false),
            (None, None) => ("", false),
        }
    }
}

/// An attached sink, as the log describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkConfig {
    pub name: String,
    pub url: String,
    pub role: SinkRole,
    pub added_seq: u64,
}

/// Apply a ledger-level event to the sink registry.
pub(crate) fn apply_sink_event(
    sinks: &mut BTreeMap<String, SinkConfig>,
    stored: &StoredEvent,
    event: Event,
) -> Result<()> {
    let event_type = event.event_type();
    match event {
        Event::SinkAdded { name, url, role } => {
            if sinks.contains_key(&name) {
                return Err(corrupt(stored, event_type, "adds a sink that exists"));
            }
            sinks.insert(
                name.clone(),
                SinkConfig {
                    name,
                    url,
                    role,
                    added_seq: stored.seq,
                },
            );
        }
        Event::SinkRoleChanged { name, role } => match sinks.get_mut(&name) {
            Some(s) => s.role = role,
            None => return Err(corrupt(stored, event_type, "names a sink that does not exist")),
        },
        Event::SinkRemoved { name } => {
            if sinks.remove(&name).is_none() {
                return Err(corrupt(stored, event_type, "names a sink that does not exist"));
            }
        }
        Event::KeyRotated { .. }
        | Event::KeyMigrated { .. }
        | Event::LedgerRestored { .. }
        | Event::TokenIssued { .. }
        | Event::TokenRevoked { .. }
        | Event::MacsStarted
        | Event::AnchorsReset
        | Event::LedgerRecovered { .. }
        | Event::SinkForced { .. } => {}
        _ => return Err(corrupt(stored, event_type, "has no secret id")),
    }
    Ok(())
}

/// The whole catalog at some seq.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// The seq of the last event folded in (0 for an empty log).
    pub seq: u64,
    pub secrets: HashMap<SecretId, SecretMeta>,
    /// Attached sinks by name.
    pub sinks: BTreeMap<String, SinkConfig>,
}

impl Catalog {
    /// Fold one event in. Events must come in seq order.
    pub fn apply(&mut self, stored: &StoredEvent, event: Event) -> Result<()> {
        match stored.secret_id {
            Some(id) => match self.secrets.entry(id) {
                Entry::Occupied(mut known) => update(known.get_mut(), stored, event)?,
                Entry::Vacant(new) => {
                    new.insert(created(stored, event)?);
                }
            },
            None => apply_sink_event(&mut self.sinks, stored, event)?,
        }
        self.seq = stored.seq;
        Ok(())
    }

    /// Fold decoded events on top of this catalog.
    pub fn fold<'a>(mut self, events: impl IntoIterator<Item = (&'a StoredEvent, Event)>) -> Result<Self> {
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

    /// Snapshot encoding (see [`SnapshotEncoder`]).
    pub fn to_snapshot(&self) -> Vec<u8> {
        let secrets: BTreeMap<&SecretId, &SecretMeta> = self.secrets.iter().collect();
        let mut snapshot = SnapshotEncoder::new(self.seq, secrets.len());
        for (id, meta) in secrets {
            snapshot.push(id, &meta.to_bytes());
        }
        snapshot.finish(&self.sinks)
    }

    /// Decode a snapshot written by [`Catalog::to_snapshot`], or by sledger 0.1 before sinks
    /// existed (`(seq, secrets)`: no sink could be attached then, so its sinks are none).
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self> {
        // Decoded straight into the catalog's map: no intermediate sorted map to build and drop.
        type Snapshot = (u64, HashMap<SecretId, SecretMeta>, BTreeMap<String, SinkConfig>);
        type SnapshotBeforeSinks = (u64, HashMap<SecretId, SecretMeta>);
        fn whole<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
            // A million secrets decode in well under this; a forged length prefix claiming
            // more fails instead of aborting the process on allocation.
            let bounded = bincode::config::standard().with_limit::<{ 16 << 30 }>();
            bincode::serde::decode_from_slice::<T, _>(bytes, bounded)
                .ok()
                .and_then(|(value, used)| (used == bytes.len()).then_some(value))
        }
        let decoded = whole::<Snapshot>(bytes).or_else(|| {
            whole::<SnapshotBeforeSinks>(bytes).map(|(seq, secrets)| (seq, secrets, BTreeMap::new()))
        });
        let (seq, secrets, sinks) =
            decoded.ok_or_else(|| Error::Corrupt("a snapshot does not decode".into()))?;
        Ok(Catalog { seq, secrets, sinks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_from_before_sinks_still_decode() {
        let mut catalog = Catalog {
            seq: 7,
            ..Default::default()
        };
        let id = SecretId::now_v7();
        let meta = SecretMeta {
            id,
            name: "db".into(),
            scope: crate::event::Scope::Workspace,
            owner: String::new(),
            labels: BTreeMap::new(),
            version: 2,
            status: Status::Live,
            created_at: 1,
            created_by: "a".into(),
            updated_at: 2,
            updated_seq: 7,
            value_seq: 7,
            fingerprints: BTreeMap::new(),
        };
        catalog.secrets.insert(id, meta.clone());
        let old_format =
            bincode::serde::encode_to_vec((7u64, BTreeMap::from([(id, meta)])), bincode::config::standard())
                .unwrap();
        assert_eq!(Catalog::from_snapshot(&old_format).unwrap(), catalog);
        assert_eq!(Catalog::from_snapshot(&catalog.to_snapshot()).unwrap(), catalog);
        assert!(Catalog::from_snapshot(&old_format[..old_format.len() - 1]).is_err());
    }
}
