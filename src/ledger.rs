//! The façade: commands are validated against the catalog, sealed, chained and appended in one
//! write transaction together with the catalog rows they change; reads come from the log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::catalog::{self, namespace, Catalog, SecretMeta, SinkConfig, Status};
use crate::crypto::{DataKey, FingerprintKey, MasterKey, SecretValues, SinkSealKey};
use crate::error::{Error, Result};
use crate::event::{Event, Millis, Scope, SealedValues, SinkRole, StoredEvent};
use crate::log::{self, chain_next, sqlite, EventLog, Head, NewEvent};
use crate::sink::SinkUrl;
use crate::{validate, SecretId};

/// Per-ledger settings, fixed at `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerSettings {
    /// Largest allowed value map, as the JSON object sinks store.
    pub max_value_bytes: usize,
    /// A catalog snapshot is stored every this many events.
    pub snapshot_interval: u64,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            max_value_bytes: validate::DEFAULT_MAX_VALUE_BYTES,
            snapshot_interval: 10_000,
        }
    }
}

/// A mutation request. Each successful command becomes exactly one event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Command {
    Create {
        name: String,
        scope: Scope,
        labels: BTreeMap<String, String>,
        values: SecretValues,
    },
    /// Keys and labels not named keep their current values.
    Update {
        name: String,
        set_values: SecretValues,
        remove_keys: Vec<String>,
        set_labels: BTreeMap<String, String>,
        remove_labels: Vec<String>,
    },
    /// Create the secret, or replace all its values and labels if a live one has that name.
    Put {
        name: String,
        scope: Scope,
        labels: BTreeMap<String, String>,
        values: SecretValues,
    },
    Rename {
        name: String,
        new_name: String,
    },
    /// Soft delete: recoverable with `Undelete`.
    Delete {
        name: String,
    },
    Undelete {
        name: String,
    },
    /// Crypto-shred: destroy the data key; no version can be read again.
    Purge {
        name: String,
    },
    /// Attach a sink. Its URL must not carry credentials.
    AddSink {
        name: String,
        url: String,
        role: SinkRole,
    },
    /// Change a sink's role (not to or from primary: see `PromoteSink`).
    SetSinkRole {
        name: String,
        role: SinkRole,
    },
    /// Make a sink the primary; the old primary becomes a backup.
    PromoteSink {
        name: String,
    },
    /// Detach a sink (never the primary). Its backend is left as it is.
    RemoveSink {
        name: String,
    },
    /// Record that the commands after it restore the state after `target_seq` (so the audit
    /// log says what a burst of compensating events was for).
    RecordRestore {
        target_seq: u64,
        /// The head the restore was planned against: if the log moved on since, the plan is
        /// stale and the whole transaction is refused.
        planned_at: u64,
    },
}

/// What a command did.
#[derive(Debug, Clone)]
pub enum Outcome {
    Appended {
        seq: u64,
        event_type: &'static str,
        secret: SecretMeta,
    },
    /// An update that changed nothing appends nothing.
    Unchanged { secret: SecretMeta },
    /// A sink was added, changed role, or removed.
    SinkChanged {
        seq: u64,
        event_type: &'static str,
        name: String,
    },
    /// Another ledger-level event (a restore's record).
    Recorded { seq: u64, event_type: &'static str },
}

/// Which version of a secret to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPoint {
    Latest,
    Version(u32),
    /// The state as of this time (unix ms).
    At(Millis),
}

/// A secret's values at some point, with the metadata as of that point.
#[derive(Debug, Clone)]
pub struct SecretRead {
    pub meta: SecretMeta,
    pub version: u32,
    /// Seq of the event that wrote these values.
    pub seq: u64,
    pub recorded_at: Millis,
    pub values: SecretValues,
}

/// One line of the audit log: what happened, never a value.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub event_id: uuid::Uuid,
    pub recorded_at: Millis,
    pub actor: String,
    pub event_type: String,
    pub secret_id: Option<SecretId>,
    pub name: Option<String>,
    pub scope: Option<Scope>,
    pub version: Option<u32>,
    pub changes: Vec<KeyChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How one value key changed, with the new value's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyChange {
    pub key: String,
    pub change: &'static str,
    pub fingerprint: Option<String>,
}

/// A saved chain head; checking it later catches a truncated or rewritten tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub ledger_id: String,
    pub seq: u64,
    pub hash: String,
}

struct Keys {
    master: MasterKey,
    fingerprint: FingerprintKey,
    sink_seal: SinkSealKey,
}

/// Refuse to write with a master key another process has since rotated away: data keys
/// wrapped under it would be unreadable with the ledger's real key.
fn ensure_current_key(tx: &Connection, keys: &Keys) -> Result<()> {
    if meta_get_blob(tx, "key_check")?.as_slice() != keys.master.key_check().as_slice() {
        return Err(Error::KeyRotated);
    }
    Ok(())
}

/// After destroying key material (purge, rotation), move WAL frames into the database, whose
/// freed pages `secure_delete` zeroes, so old wrapped keys do not linger on disk. Best effort:
/// a concurrent reader can keep frames alive until it finishes.
fn scrub_freed_pages(conn: &Connection) {
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::debug!(error = %e, "checkpoint after key destruction did not complete");
    }
}

/// An open ledger.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    settings: LedgerSettings,
    keys: Option<Keys>,
    /// Why the catalog could not be rebuilt (a damaged log); audit and verify still work.
    catalog_unusable: Option<String>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("unlocked", &self.keys.is_some())
            .finish()
    }
}

/// Current time in unix milliseconds.
pub fn now_ms() -> Millis {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as Millis
}

fn meta_get_i64(conn: &Connection, key: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT value FROM ledger_meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

fn meta_get_blob(conn: &Connection, key: &str) -> Result<Vec<u8>> {
    conn.prepare_cached("SELECT CAST(value AS BLOB) FROM ledger_meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::Corrupt(format!("ledger_meta lacks {key}")))
}

fn meta_set(conn: &Connection, key: &str, value: impl rusqlite::ToSql) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO ledger_meta (key, value) VALUES (?1, ?2)")?
        .execute(params![key, value])?;
    Ok(())
}

fn decode_meta(bytes: &[u8]) -> Result<SecretMeta> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(m, _)| m)
        .map_err(|e| Error::Corrupt(format!("catalog row does not decode: {e}")))
}

fn store_meta(conn: &Connection, m: &SecretMeta) -> Result<()> {
    let blob =
        bincode::serde::encode_to_vec(m, bincode::config::standard()).expect("metadata always encodes");
    conn.prepare_cached(
        "INSERT OR REPLACE INTO catalog (secret_id, namespace, name, status, updated_seq, meta) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![m.id.as_bytes().as_slice(), m.namespace(), m.name, m.status.as_str(), m.updated_seq as i64, blob])?;
    Ok(())
}

pub(crate) fn load_meta(conn: &Connection, id: SecretId) -> Result<Option<SecretMeta>> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT meta FROM catalog WHERE secret_id = ?1")?
        .query_row([id.as_bytes().as_slice()], |r| r.get(0))
        .optional()?;
    blob.map(|b| decode_meta(&b)).transpose()
}

/// Prefix of a reference to a secret by id (`id:<uuid>`), which no name can start with (`:` is
/// not allowed in names): it picks one secret exactly, whatever it is called now.
pub const ID_REF_PREFIX: &str = "id:";

/// Secrets named `name` (or the one `id:<uuid>` refers to) visible to `actor`: the workspace
/// and the actor's private scope.
fn named(conn: &Connection, actor: &str, name: &str) -> Result<Vec<SecretMeta>> {
    if let Some(id) = name.strip_prefix(ID_REF_PREFIX) {
        let id = SecretId::parse_str(id).map_err(|_| {
            Error::InvalidInput(format!(
                "{name:?} is not id:<uuid> (see `sledger secret history`)"
            ))
        })?;
        let visible = |m: &SecretMeta| m.scope == Scope::Workspace || m.owner == actor;
        return Ok(load_meta(conn, id)?.filter(visible).into_iter().collect());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT meta FROM catalog WHERE name = ?1 AND namespace IN ('workspace', ?2) ORDER BY updated_seq DESC",
    )?;
    let rows = stmt.query_map(params![name, namespace(Scope::Private, actor)], |r| {
        r.get::<_, Vec<u8>>(0)
    })?;
    rows.map(|b| decode_meta(&b?)).collect()
}

/// Which lifecycle states a lookup accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Live,
    Deleted,
    /// Live first, then the most recently deleted, then purged.
    Any,
}

/// Resolve a name for `actor`: the actor's private secret wins over a workspace one.
fn resolve(conn: &Connection, actor: &str, name: &str, want: Want) -> Result<SecretMeta> {
    let mut found = named(conn, actor, name)?;
    let rank = |m: &SecretMeta| {
        let status = match m.status {
            Status::Live => 0,
            Status::Deleted => 1,
            Status::Purged => 2,
        };
        (
            status,
            m.scope != Scope::Private,
            std::cmp::Reverse(m.updated_seq),
        )
    };
    found.sort_by_key(rank);
    let accepts = |m: &&SecretMeta| match want {
        Want::Live => m.status == Status::Live,
        Want::Deleted => m.status == Status::Deleted,
        Want::Any => true,
    };
    if let Some(m) = found.iter().find(accepts) {
        return Ok(m.clone());
    }
    let hint = match (want, found.first().map(|m| m.status)) {
        (Want::Live, Some(Status::Deleted)) => {
            format!("; it was deleted, and `sledger secret undelete {name}` brings it back")
        }
        (_, Some(Status::Purged)) => "; it was purged and cannot come back".to_owned(),
        (Want::Deleted, Some(Status::Live)) => "; it is not deleted".to_owned(),
        _ => "; `sledger secret list` shows the secrets there are".to_owned(),
    };
    Err(Error::SecretNotFound {
        name: name.to_owned(),
        hint,
    })
}

fn ensure_name_free(conn: &Connection, ns: &str, scope: Scope, name: &str) -> Result<()> {
    let taken: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM catalog WHERE namespace = ?1 AND name = ?2 AND status = 'live'")?
        .query_row(params![ns, name], |r| r.get(0))
        .optional()?;
    match taken {
        Some(_) => Err(Error::AlreadyExists {
            name: name.to_owned(),
            scope: scope.to_string(),
        }),
        None => Ok(()),
    }
}

fn load_dek(conn: &Connection, master: &MasterKey, meta: &SecretMeta) -> Result<DataKey> {
    let wrapped: Option<Vec<u8>> = conn
        .prepare_cached("SELECT wrapped FROM secret_keys WHERE secret_id = ?1")?
        .query_row([meta.id.as_bytes().as_slice()], |r| r.get(0))
        .optional()?;
    let wrapped = wrapped.ok_or_else(|| Error::Purged {
        name: meta.name.clone(),
    })?;
    master.unwrap_data_key(&wrapped, meta.id)
}

/// Decrypt the values carried by the event at `seq` for `meta`'s secret.
pub(crate) fn open_values_at(
    conn: &Connection,
    master: &MasterKey,
    meta: &SecretMeta,
    seq: u64,
) -> Result<(SecretValues, Millis)> {
    let dek = load_dek(conn, master, meta)?;
    let stored = sqlite::get(conn, seq)?.ok_or_else(|| Error::Corrupt(format!("event {seq} is missing")))?;
    let event = stored.decode()?;
    let sealed = event
        .values()
        .ok_or_else(|| Error::Corrupt(format!("event {seq} carries no values")))?;
    Ok((dek.open(&sealed.ciphertext, meta.id, seq)?, stored.recorded_at))
}

fn sink_event_name(event: &Event) -> String {
    match event {
        Event::SinkAdded { name, .. } | Event::SinkRoleChanged { name, .. } | Event::SinkRemoved { name } => {
            name.clone()
        }
        _ => String::new(),
    }
}

/// The attached sinks, as the derived `sinks` table holds them.
pub(crate) fn load_sinks(conn: &Connection) -> Result<BTreeMap<String, SinkConfig>> {
    let mut stmt = conn.prepare_cached("SELECT name, url, role, added_seq FROM sinks ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut sinks = BTreeMap::new();
    for row in rows {
        let (name, url, role, added_seq) = row?;
        let role = role.parse().map_err(Error::Corrupt)?;
        sinks.insert(
            name.clone(),
            SinkConfig {
                name,
                url,
                role,
                added_seq: added_seq as u64,
            },
        );
    }
    Ok(sinks)
}

fn store_sinks(conn: &Connection, sinks: &BTreeMap<String, SinkConfig>) -> Result<()> {
    conn.execute("DELETE FROM sinks", [])?;
    for s in sinks.values() {
        conn.prepare_cached("INSERT INTO sinks (name, url, role, added_seq) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![s.name, s.url, s.role.as_str(), s.added_seq as i64])?;
    }
    Ok(())
}

/// Values must fit the ledger's limit and every attached sink's, checked before the append so
/// that nothing is recorded that some sink cannot hold.
fn check_size(tx: &Connection, settings: LedgerSettings, name: &str, values: &SecretValues) -> Result<()> {
    validate::values(name, values, settings.max_value_bytes)?;
    let size = values.json_size();
    for sink in load_sinks(tx)?.values() {
        let limit = SinkUrl::parse(&sink.url)?.capabilities().max_value_bytes;
        if size > limit {
            return Err(Error::TooLargeForSink {
                name: name.to_owned(),
                size,
                limit,
                sink: sink.name.clone(),
            });
        }
    }
    Ok(())
}

/// The metadata of `meta` must fit every attached sink's tags, labels or description, checked
/// before the append like the values' size: a secret some sink cannot hold is refused, never
/// appended and then parked where the primary would not serve it.
fn check_metadata_fits(tx: &Connection, meta: &SecretMeta) -> Result<()> {
    let sinks = load_sinks(tx)?;
    if sinks.is_empty() || meta.status != Status::Live {
        return Ok(());
    }
    let record = crate::sink::RecordMeta {
        id: meta.id,
        name: meta.name.clone(),
        scope: meta.scope,
        owner: meta.owner.clone(),
        labels: meta.labels.clone(),
        seq: meta.updated_seq,
        version: meta.version,
    };
    for sink in sinks.values() {
        // Values were checked (with the error that says so) before they were sealed.
        if let Err(limit) = SinkUrl::parse(&sink.url)?.capabilities().check_fits(&record, 0) {
            return Err(Error::SinkLimit {
                name: meta.name.clone(),
                sink: sink.name.clone(),
                what: limit.what,
                size: limit.size,
                limit: limit.limit,
            });
        }
    }
    Ok(())
}

fn validate_sink_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid sink name {name:?}: use 1-64 lowercase letters, digits, - and _, starting with a letter or digit"
        )))
    }
}

/// Plan a sink command against the current sink registry.
fn plan_sink(tx: &Connection, command: Command) -> Result<Planned> {
    let sinks = load_sinks(tx)?;
    let get = |name: &str| {
        sinks.get(name).ok_or_else(|| Error::SinkNotFound {
            name: name.to_owned(),
        })
    };
    let primary = sinks
        .values()
        .find(|s| s.role == SinkRole::Primary)
        .map(|s| s.name.clone());
    let role_change = |name: &str, role| Event::SinkRoleChanged {
        name: name.to_owned(),
        role,
    };
    Ok(match command {
        Command::AddSink { name, url, role } => {
            validate_sink_name(&name)?;
            let parsed = SinkUrl::parse(&url)?;
            if sinks.contains_key(&name) {
                return Err(Error::AlreadyExists {
                    name,
                    scope: "sink".into(),
                });
            }
            if let Some(same) = sinks
                .values()
                .find(|s| SinkUrl::parse(&s.url).is_ok_and(|u| u.same_objects(&parsed)))
            {
                return Err(Error::invalid(format!(
                    "sink {:?} already writes to {url}; two sinks on one backend and prefix would fight",
                    same.name
                )));
            }
            if let (SinkRole::Primary, Some(p)) = (role, &primary) {
                return Err(Error::invalid(format!(
                    "sink {p:?} is the primary; add this one as a backup, then `sledger sink promote {name}`"
                )));
            }
            Planned::Ledger(vec![Event::SinkAdded { name, url, role }])
        }
        Command::SetSinkRole { name, role } => {
            let current = get(&name)?;
            if current.role == role {
                Planned::Ledger(vec![])
            } else if role == SinkRole::Primary && primary.is_some() {
                return Err(Error::invalid(format!(
                    "to make {name:?} the primary, use `sledger sink promote {name}`"
                )));
            } else if current.role == SinkRole::Primary {
                return Err(Error::invalid(format!(
                    "{name:?} is the primary; promote another sink first (`sledger sink promote OTHER`)"
                )));
            } else {
                Planned::Ledger(vec![role_change(&name, role)])
            }
        }
        Command::PromoteSink { name } => {
            get(&name)?;
            match primary {
                Some(p) if p == name => Planned::Ledger(vec![]),
                Some(p) => Planned::Ledger(vec![
                    role_change(&p, SinkRole::Backup),
                    role_change(&name, SinkRole::Primary),
                ]),
                None => Planned::Ledger(vec![role_change(&name, SinkRole::Primary)]),
            }
        }
        Command::RemoveSink { name } => {
            if get(&name)?.role == SinkRole::Primary {
                return Err(Error::invalid(format!(
                    "{name:?} is the primary and serves reads; promote another sink before removing it"
                )));
            }
            Planned::Ledger(vec![Event::SinkRemoved { name }])
        }
        _ => unreachable!("plan_sink is only called with sink commands"),
    })
}

/// The result of planning one command inside the write transaction.
enum Planned {
    /// Ledger-level events (sinks); empty when nothing changes.
    Ledger(Vec<Event>),
    Append {
        secret_id: SecretId,
        event: Event,
        before: Option<SecretMeta>,
    },
    Nothing(SecretMeta),
}

impl Ledger {
    /// Create a new ledger at `path`, sealed under `master`. Refuses an existing file; on any
    /// failure after creating it, removes it again, so nothing half-made is left behind.
    pub fn init(path: &Path, master: MasterKey, settings: LedgerSettings) -> Result<Ledger> {
        let mut conn = sqlite::create(path)?;
        let settings = LedgerSettings {
            snapshot_interval: settings.snapshot_interval.max(1),
            ..settings
        };
        let keys = Keys {
            master,
            fingerprint: FingerprintKey::generate(),
            sink_seal: SinkSealKey::generate(),
        };
        let written = (|| -> Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            meta_set(&tx, "ledger_id", uuid::Uuid::now_v7().to_string())?;
            meta_set(&tx, "created_at", now_ms())?;
            meta_set(&tx, "key_check", keys.master.key_check().as_slice())?;
            meta_set(
                &tx,
                "fingerprint_key",
                keys.master.wrap_fingerprint_key(&keys.fingerprint),
            )?;
            meta_set(
                &tx,
                "sink_seal_key",
                keys.master.wrap_sink_seal_key(&keys.sink_seal),
            )?;
            meta_set(&tx, "max_value_bytes", settings.max_value_bytes as i64)?;
            meta_set(&tx, "snapshot_interval", settings.snapshot_interval as i64)?;
            meta_set(&tx, "catalog_seq", 0i64)?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = written {
            drop(conn);
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(p));
            }
            return Err(e);
        }
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
            settings,
            keys: Some(keys),
            catalog_unusable: None,
        })
    }

    /// Open an existing ledger without a key: enough for `verify`, `log` and `history`.
    /// Call [`Ledger::unlock`] before reading values or writing.
    pub fn open(path: &Path) -> Result<Ledger> {
        let conn = sqlite::open(path)?;
        let settings = LedgerSettings {
            max_value_bytes: meta_get_i64(&conn, "max_value_bytes")?
                .ok_or_else(|| Error::Corrupt("ledger settings are missing".into()))?
                as usize,
            snapshot_interval: meta_get_i64(&conn, "snapshot_interval")?.unwrap_or(10_000).max(1) as u64,
        };
        let mut ledger = Ledger {
            conn,
            path: path.to_path_buf(),
            settings,
            keys: None,
            catalog_unusable: None,
        };
        if let Err(e) = ledger.ensure_catalog() {
            if e.class() != crate::ErrorClass::Integrity {
                return Err(e);
            }
            tracing::warn!(error = %e, "the catalog cannot be rebuilt from this log");
            ledger.catalog_unusable = Some(e.to_string());
        }
        Ok(ledger)
    }

    /// Open and unlock in one step.
    pub fn open_with_key(path: &Path, master: MasterKey) -> Result<Ledger> {
        let mut ledger = Ledger::open(path)?;
        ledger.unlock(master)?;
        Ok(ledger)
    }

    /// Check that `master` is this ledger's key and keep it for reads and writes.
    pub fn unlock(&mut self, master: MasterKey) -> Result<()> {
        let stored = meta_get_blob(&self.conn, "key_check")?;
        if stored.as_slice() != master.key_check().as_slice() {
            return Err(Error::WrongKey);
        }
        let fingerprint = master.unwrap_fingerprint_key(&meta_get_blob(&self.conn, "fingerprint_key")?)?;
        let sink_seal = match meta_get_blob(&self.conn, "sink_seal_key") {
            Ok(wrapped) => master.unwrap_sink_seal_key(&wrapped)?,
            // Ledgers made before sinks existed get their sink key on first unlock.
            Err(Error::Corrupt(_)) => {
                let key = SinkSealKey::generate();
                let tx = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                meta_set(&tx, "sink_seal_key", master.wrap_sink_seal_key(&key))?;
                tx.commit()?;
                key
            }
            Err(e) => return Err(e),
        };
        self.keys = Some(Keys {
            master,
            fingerprint,
            sink_seal,
        });
        Ok(())
    }

    /// Does `master` open this ledger? (Without keeping it.)
    pub fn key_matches(&self, master: &MasterKey) -> Result<bool> {
        Ok(meta_get_blob(&self.conn, "key_check")?.as_slice() == master.key_check().as_slice())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn settings(&self) -> LedgerSettings {
        self.settings
    }

    pub fn ledger_id(&self) -> Result<String> {
        String::from_utf8(meta_get_blob(&self.conn, "ledger_id")?)
            .map_err(|_| Error::Corrupt("ledger_id is not text".into()))
    }

    fn keys(&self) -> Result<&Keys> {
        need_keys(self.keys.as_ref())
    }

    /// The connection, for the projector and read modules of this crate.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The key this ledger was unlocked with, for opening further connections to it in this
    /// process (a [`LedgerHandle`](crate::LedgerHandle), the projector service).
    pub fn master_key(&self) -> Result<&MasterKey> {
        Ok(&self.keys()?.master)
    }

    /// Connect to an attached sink by name (needs the key: local sinks seal values with it).
    pub fn open_sink(&self, name: &str) -> Result<(SinkConfig, std::sync::Arc<dyn crate::sink::Sink>)> {
        let config = self.sink_config(name)?;
        let sink = SinkUrl::parse(&config.url)?.open(&self.keys()?.sink_seal)?;
        Ok((config, sink))
    }

    /// Open a sink by URL with this ledger's sink key (for replays into unattached sinks).
    pub fn open_sink_url(&self, url: &str) -> Result<std::sync::Arc<dyn crate::sink::Sink>> {
        SinkUrl::parse(url)?.open(&self.keys()?.sink_seal)
    }

    /// The attached sinks, by name.
    pub fn sinks(&self) -> Result<BTreeMap<String, SinkConfig>> {
        load_sinks(self.catalog()?)
    }

    pub fn sink_config(&self, name: &str) -> Result<SinkConfig> {
        self.sinks()?.remove(name).ok_or_else(|| Error::SinkNotFound {
            name: name.to_owned(),
        })
    }

    /// The last event of the log.
    pub fn head(&self) -> Result<Head> {
        sqlite::head(&self.conn)
    }

    /// The log seen through [`EventLog`].
    pub fn log(&self) -> sqlite::SqliteLog<'_> {
        sqlite::SqliteLog(&self.conn)
    }

    /// The connection, for catalog queries; refused when the log could not be folded.
    fn catalog(&self) -> Result<&Connection> {
        match &self.catalog_unusable {
            None => Ok(&self.conn),
            Some(why) => Err(Error::Corrupt(format!(
                "{why}; run `sledger verify` to find the damage"
            ))),
        }
    }

    /// Rebuild the catalog from the log when its tables are missing or not at the head.
    fn ensure_catalog(&mut self) -> Result<()> {
        let current = {
            let tx = self.conn.transaction()?;
            let has_table: i64 = tx.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'catalog'",
                [],
                |r| r.get(0),
            )?;
            has_table == 1 && meta_get_i64(&tx, "catalog_seq")? == Some(sqlite::head(&tx)?.seq as i64)
        };
        if !current {
            self.rebuild_catalog()?;
        }
        Ok(())
    }

    /// Drop the catalog and its snapshots and fold it again from the whole log. Returns the
    /// number of secrets.
    pub fn rebuild_catalog(&mut self) -> Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch("DROP TABLE IF EXISTS catalog; DROP TABLE IF EXISTS sinks; DELETE FROM snapshots;")?;
        tx.execute_batch(sqlite::CATALOG_SQL)?;
        tx.execute_batch(sqlite::SINKS_SQL)?;
        let head = sqlite::head(&tx)?;
        let catalog = fold_log(&sqlite::SqliteLog(&tx), Catalog::default(), head.seq)?;
        for meta in catalog.secrets.values() {
            store_meta(&tx, meta)?;
        }
        store_sinks(&tx, &catalog.sinks)?;
        meta_set(&tx, "catalog_seq", head.seq as i64)?;
        tx.commit()?;
        tracing::info!(
            secrets = catalog.secrets.len(),
            seq = head.seq,
            "catalog rebuilt from the log"
        );
        Ok(catalog.secrets.len())
    }

    /// Apply commands as one all-or-nothing batch: either every event is appended, or none.
    pub fn execute(&mut self, actor: &str, commands: Vec<Command>) -> Result<Vec<Outcome>> {
        let request = Request {
            actor: actor.to_owned(),
            commands,
        };
        self.execute_request(request)
    }

    /// Group commit: apply several independent requests in one transaction and one fsync.
    /// Each request is all-or-nothing on its own and is validated against the state the
    /// requests before it left; one that fails is rolled back alone and gets its own error,
    /// while the others are appended. Results come back in request order.
    ///
    /// If the transaction as a whole fails (the database is busy or broken), each request is
    /// tried again on its own, so every caller still gets its own result.
    pub fn execute_group(&mut self, requests: Vec<Request>) -> Vec<Result<Vec<Outcome>>> {
        if requests.len() == 1 {
            return requests.into_iter().map(|r| self.execute_request(r)).collect();
        }
        match self.append_group(&requests) {
            Ok(results) => results,
            Err(e) => {
                tracing::debug!(error = %e, requests = requests.len(), "group commit failed; applying its requests one by one");
                requests.into_iter().map(|r| self.execute_request(r)).collect()
            }
        }
    }

    fn execute_request(&mut self, request: Request) -> Result<Vec<Outcome>> {
        self.append_group(std::slice::from_ref(&request))?
            .pop()
            .expect("one result per request")
    }

    /// One write transaction for `requests`; with more than one, each runs in its own
    /// savepoint. `Err` only when the transaction itself fails.
    fn append_group(&mut self, requests: &[Request]) -> Result<Vec<Result<Vec<Outcome>>>> {
        self.catalog()?;
        let keys = self.keys.as_ref();
        let settings = self.settings;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(keys) = keys {
            ensure_current_key(&tx, keys)?;
        }
        let mut head = sqlite::head(&tx)?;
        let first_seq = head.seq;
        let now = now_ms();
        let alone = requests.len() == 1;
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            if alone {
                // The transaction is the unit: a failure rolls it back as a whole.
                results.push(Ok(append_request(&tx, keys, settings, request, &mut head, now)?));
                continue;
            }
            tx.execute_batch("SAVEPOINT request")?;
            let before = head;
            match append_request(&tx, keys, settings, request, &mut head, now) {
                Ok(outcomes) => {
                    tx.execute_batch("RELEASE request")?;
                    results.push(Ok(outcomes));
                }
                Err(e) => {
                    tx.execute_batch("ROLLBACK TO request; RELEASE request")?;
                    head = before;
                    results.push(Err(e));
                }
            }
        }
        finish_append(&tx, self.settings, first_seq, head)?;
        tx.commit()?;
        let purged = results.iter().flatten().flatten().any(|o| {
            matches!(
                o,
                Outcome::Appended {
                    event_type: "secret.purged",
                    ..
                }
            )
        });
        if purged {
            scrub_freed_pages(&self.conn);
        }
        Ok(results)
    }
}

/// One caller's commands, applied all-or-nothing (see [`Ledger::execute_group`]).
#[derive(Debug, Clone)]
pub struct Request {
    /// Who is acting: recorded in every event, and the owner of private secrets.
    pub actor: String,
    pub commands: Vec<Command>,
}

/// Plan, chain and insert one request's commands inside the write transaction; advances `head`.
fn append_request(
    tx: &Connection,
    keys: Option<&Keys>,
    settings: LedgerSettings,
    request: &Request,
    head: &mut Head,
    now: Millis,
) -> Result<Vec<Outcome>> {
    let actor = request.actor.as_str();
    let mut outcomes = Vec::with_capacity(request.commands.len());
    for command in request.commands.iter().cloned() {
        let seq = head.seq + 1;
        match plan(tx, keys, settings, actor, command, seq)? {
            Planned::Nothing(meta) => outcomes.push(Outcome::Unchanged { secret: meta }),
            Planned::Append {
                secret_id,
                event,
                before,
            } => {
                let new = NewEvent {
                    event_id: uuid::Uuid::now_v7(),
                    actor: actor.to_owned(),
                    secret_id: Some(secret_id),
                    event,
                };
                let row = chain_next(head, &new, now);
                sqlite::insert(tx, &row)?;
                let event_type = new.event.event_type();
                let after = catalog::apply(before, &row, new.event)?
                    .expect("a secret event always leaves the secret in the catalog");
                check_metadata_fits(tx, &after)?;
                store_meta(tx, &after)?;
                tracing::debug!(seq = row.seq, event_type = %row.event_type, secret = %secret_id, "appended");
                outcomes.push(Outcome::Appended {
                    seq: row.seq,
                    event_type,
                    secret: after,
                });
            }
            Planned::Ledger(events) => {
                for event in events {
                    let new = NewEvent {
                        event_id: uuid::Uuid::now_v7(),
                        actor: actor.to_owned(),
                        secret_id: None,
                        event,
                    };
                    let row = chain_next(head, &new, now);
                    sqlite::insert(tx, &row)?;
                    let event_type = new.event.event_type();
                    if !event_type.starts_with("sink.") {
                        tracing::debug!(seq = row.seq, event_type, "appended");
                        outcomes.push(Outcome::Recorded {
                            seq: row.seq,
                            event_type,
                        });
                        continue;
                    }
                    let name = sink_event_name(&new.event);
                    let mut sinks = load_sinks(tx)?;
                    catalog::apply_sink_event(&mut sinks, &row, new.event)?;
                    store_sinks(tx, &sinks)?;
                    if event_type == "sink.added" {
                        // A sink re-added under an old name starts from scratch.
                        tx.execute("DELETE FROM sink_state WHERE name = ?1", [&name])?;
                        tx.execute("DELETE FROM parked WHERE sink = ?1", [&name])?;
                    }
                    tracing::debug!(seq = row.seq, event_type, sink = %name, "appended");
                    outcomes.push(Outcome::SinkChanged {
                        seq: row.seq,
                        event_type,
                        name,
                    });
                }
            }
        }
    }
    Ok(outcomes)
}

/// A snapshot costs O(secrets) bytes, so snapshots are at least as many events apart as there
/// are secrets: with 100 000 secrets, one every 10 000 events would store far more snapshot
/// than log. Replaying from the nearest snapshot then costs at most max(interval, secrets) events.
fn snapshot_due(tx: &Connection, every: u64, head: u64) -> Result<bool> {
    let (last, secrets): (i64, i64) = tx.query_row(
        "SELECT (SELECT coalesce(max(seq), 0) FROM snapshots), (SELECT count(*) FROM catalog)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(head - last as u64 >= every.max(secrets as u64))
}

/// Bookkeeping shared by every append transaction: catalog position and snapshots.
fn finish_append(tx: &Connection, settings: LedgerSettings, first_seq: u64, head: Head) -> Result<()> {
    if head.seq == first_seq {
        return Ok(());
    }
    meta_set(tx, "catalog_seq", head.seq as i64)?;
    let every = settings.snapshot_interval;
    if first_seq / every != head.seq / every && snapshot_due(tx, every, head.seq)? {
        let mut stmt = tx.prepare_cached("SELECT meta FROM catalog")?;
        let secrets = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .map(|b| decode_meta(&b?).map(|m| (m.id, m)))
            .collect::<Result<_>>()?;
        let snapshot = Catalog {
            sinks: load_sinks(tx)?,
            seq: head.seq,
            secrets,
        };
        tx.prepare_cached("INSERT INTO snapshots (seq, state) VALUES (?1, ?2)")?
            .execute(params![head.seq as i64, snapshot.to_snapshot()])?;
        tracing::debug!(seq = head.seq, "catalog snapshot stored");
    }
    Ok(())
}

impl Ledger {
    /// Look a secret up by name: live ones only.
    pub fn find(&self, actor: &str, name: &str) -> Result<SecretMeta> {
        resolve(self.catalog()?, actor, name, Want::Live)
    }

    /// Secrets visible to `actor` with the given status, sorted by name.
    pub fn list(&self, actor: &str, status: Status) -> Result<Vec<SecretMeta>> {
        let mut stmt = self.catalog()?.prepare_cached(
            "SELECT meta FROM catalog WHERE status = ?1 AND namespace IN ('workspace', ?2) ORDER BY name, namespace",
        )?;
        let rows = stmt.query_map(params![status.as_str(), namespace(Scope::Private, actor)], |r| {
            r.get::<_, Vec<u8>>(0)
        })?;
        rows.map(|b| decode_meta(&b?)).collect()
    }

    /// A secret's values: the latest, a version, or as of a time. Needs the key.
    pub fn read(&self, actor: &str, name: &str, at: ReadPoint) -> Result<SecretRead> {
        let master = &self.keys()?.master;
        let (meta, version, seq) = match at {
            ReadPoint::Latest => {
                let meta = resolve(self.catalog()?, actor, name, Want::Live)?;
                (meta.clone(), meta.version, meta.value_seq)
            }
            ReadPoint::Version(wanted) => {
                let current = resolve(self.catalog()?, actor, name, Want::Any)?;
                let mut state: Option<SecretMeta> = None;
                let mut hit = None;
                sqlite::scan_secret(&self.conn, current.id, u64::MAX, &mut |e| {
                    state = catalog::apply(state.take(), &e, e.decode()?)?;
                    if let Some(m) = &state {
                        if m.version == wanted && m.value_seq == e.seq {
                            hit = Some(m.clone());
                            return Ok(false);
                        }
                    }
                    Ok(true)
                })?;
                let meta = hit.ok_or_else(|| {
                    Error::NotFound(format!(
                        "secret {name:?} has versions 1 to {}; there is no version {wanted}",
                        current.version
                    ))
                })?;
                (meta.clone(), wanted, meta.value_seq)
            }
            ReadPoint::At(time) => {
                let meta = self.resolve_at(actor, name, time)?;
                (meta.clone(), meta.version, meta.value_seq)
            }
        };
        if meta.status == Status::Purged {
            return Err(Error::Purged {
                name: name.to_owned(),
            });
        }
        let (values, recorded_at) = open_values_at(&self.conn, master, &meta, seq)?;
        Ok(SecretRead {
            meta,
            version,
            seq,
            recorded_at,
            values,
        })
    }

    /// The live secret called `name` at `time`: by its name then, else by its current name.
    fn resolve_at(&self, actor: &str, name: &str, time: Millis) -> Result<SecretMeta> {
        let seq = sqlite::seq_at_time(&self.conn, time)?;
        let not_then = || Error::SecretNotFound {
            name: name.to_owned(),
            hint: " at that time".into(),
        };
        if seq == 0 {
            return Err(not_then());
        }
        let then = self.catalog_at(seq)?;
        let private = namespace(Scope::Private, actor);
        let visible = |m: &&SecretMeta| {
            m.status == Status::Live && (m.scope == Scope::Workspace || m.namespace() == private)
        };
        let by_old_name = then
            .secrets
            .values()
            .filter(visible)
            .filter(|m| m.name == name)
            .min_by_key(|m| m.scope != Scope::Private);
        if let Some(m) = by_old_name {
            return Ok(m.clone());
        }
        let current = resolve(self.catalog()?, actor, name, Want::Any)?;
        then.secrets
            .get(&current.id)
            .filter(|m| visible(m))
            .cloned()
            .ok_or_else(not_then)
    }

    /// The whole catalog as of `seq`: the nearest snapshot plus the events after it.
    pub fn catalog_at(&self, seq: u64) -> Result<Catalog> {
        let snapshot: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT state FROM snapshots WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1")?
            .query_row([seq.min(i64::MAX as u64) as i64], |r| r.get(0))
            .optional()?;
        let start = match snapshot {
            Some(bytes) => Catalog::from_snapshot(&bytes)?,
            None => Catalog::default(),
        };
        fold_log(&self.log(), start, seq)
    }

    /// Visit audit entries for events after `catalog.seq`, folding them into `catalog` as it goes
    /// (so a follower can call it again with the same catalog to get only new events).
    pub fn audit(
        &self,
        catalog: &mut Catalog,
        visit: &mut dyn FnMut(AuditEntry) -> Result<bool>,
    ) -> Result<()> {
        self.log().scan(catalog.seq + 1, u64::MAX, &mut |stored| {
            let event = stored.decode()?;
            let before = stored.secret_id.and_then(|id| catalog.secrets.get(&id).cloned());
            catalog.apply(&stored, event.clone())?;
            let after = stored.secret_id.and_then(|id| catalog.secrets.get(&id));
            visit(describe(&stored, &event, before.as_ref(), after))
        })
    }

    /// Every event of one secret (live, deleted or purged), as audit entries.
    pub fn history(&self, actor: &str, name: &str) -> Result<Vec<AuditEntry>> {
        let meta = resolve(self.catalog()?, actor, name, Want::Any)?;
        let mut state: Option<SecretMeta> = None;
        let mut entries = Vec::new();
        sqlite::scan_secret(&self.conn, meta.id, u64::MAX, &mut |stored| {
            let event = stored.decode()?;
            let before = state.take();
            state = catalog::apply(before.clone(), &stored, event.clone())?;
            entries.push(describe(&stored, &event, before.as_ref(), state.as_ref()));
            Ok(true)
        })?;
        Ok(entries)
    }

    /// Recompute the chain from seq 1, decode every event and fold them all; returns the head
    /// or names the first bad seq. Reading and hashing run on a second thread.
    pub fn verify(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<Head> {
        let total = self.head()?.seq;
        let snapshot_seqs: std::collections::BTreeSet<u64> = {
            let mut stmt = self.conn.prepare("SELECT seq FROM snapshots")?;
            let seqs = stmt.query_map([], |r| r.get::<_, i64>(0))?;
            seqs.map(|s| s.map(|s| s as u64))
                .collect::<rusqlite::Result<_>>()?
        };
        let mut catalog = Catalog::default();
        let head = sqlite::verified_scan(&self.path, &mut |e, event| {
            let seq = e.seq;
            catalog.apply(&e, event).map_err(|err| Error::ChainBroken {
                seq,
                reason: err.to_string(),
            })?;
            if snapshot_seqs.contains(&seq) && !self.snapshot_matches(seq, &catalog)? {
                return Err(derived_mismatch(format!("the snapshot at seq {seq}")));
            }
            if seq % log::PROGRESS_EVERY == 0 {
                progress(seq, total.max(seq));
            }
            Ok(())
        })?;
        progress(head.seq, head.seq);
        self.check_catalog_rows(&catalog)?;
        Ok(head)
    }

    /// The catalog tables must hold exactly the fold of the log (when they are at the same seq).
    fn check_catalog_rows(&mut self, folded: &Catalog) -> Result<()> {
        let tx = self.conn.transaction()?;
        if meta_get_i64(&tx, "catalog_seq")? != Some(folded.seq as i64) {
            return Ok(()); // appended to since the scan; the next verify compares again
        }
        let mut stmt = tx.prepare("SELECT secret_id, meta FROM catalog")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut seen = 0usize;
        for row in rows {
            let (id, meta) = row?;
            let meta = decode_meta(&meta)?;
            if id != meta.id.as_bytes() || folded.secrets.get(&meta.id) != Some(&meta) {
                return Err(derived_mismatch(format!(
                    "the catalog row of secret {:?}",
                    meta.name
                )));
            }
            seen += 1;
        }
        if seen != folded.secrets.len() {
            return Err(derived_mismatch("the catalog (rows are missing)".into()));
        }
        drop(stmt);
        // Projectors and reads trust the sinks table: a URL edited there would send values to
        // whatever it names, so it must match the chain exactly.
        if load_sinks(&tx)? != folded.sinks {
            return Err(derived_mismatch(
                "the sinks table (an attached sink's URL or role)".into(),
            ));
        }
        Ok(())
    }

    /// Whether the stored snapshot at `seq` holds `folded`. Encoding the fold and comparing
    /// bytes is several times cheaper than decoding the snapshot; a snapshot in an older
    /// encoding is decoded and compared instead.
    fn snapshot_matches(&self, seq: u64, folded: &Catalog) -> Result<bool> {
        let stored: Vec<u8> = self
            .conn
            .prepare_cached("SELECT state FROM snapshots WHERE seq = ?1")?
            .query_row([seq as i64], |r| r.get(0))?;
        Ok(stored == folded.to_snapshot() || Catalog::from_snapshot(&stored)? == *folded)
    }

    /// An anchor for `head`, to save and check later.
    pub fn anchor(&self, head: Head) -> Result<Anchor> {
        Ok(Anchor {
            ledger_id: self.ledger_id()?,
            seq: head.seq,
            hash: hex::encode(head.hash),
        })
    }

    /// Check a saved anchor: the event at its seq must still exist with the same hash.
    pub fn check_anchor(&self, anchor: &Anchor) -> Result<()> {
        let mismatch = |reason: String| Err(Error::AnchorMismatch { reason });
        if anchor.ledger_id != self.ledger_id()? {
            return mismatch(format!("it was saved from another ledger ({})", anchor.ledger_id));
        }
        let head = self.head()?;
        if head.seq < anchor.seq {
            return mismatch(format!(
                "the log ends at seq {} but the anchor saw seq {}: the tail was truncated",
                head.seq, anchor.seq
            ));
        }
        let stored = sqlite::get(&self.conn, anchor.seq)?.ok_or_else(|| Error::AnchorMismatch {
            reason: format!("event {} is gone", anchor.seq),
        })?;
        if hex::encode(stored.hash) != anchor.hash.to_ascii_lowercase() {
            return mismatch(format!(
                "event {} differs from the anchor: the log was rewritten",
                anchor.seq
            ));
        }
        Ok(())
    }

    /// Re-wrap every data key and the ledger's own keys under `new`, and record `key.rotated`.
    /// Old events stay readable: their values are sealed by data keys, which do not change.
    ///
    /// `persist` is called with the new key while the write lock is held and before the commit:
    /// it must store the key durably (see [`crate::keyfile::rotate`]); if it fails, nothing changes.
    pub fn rotate_key(
        &mut self,
        actor: &str,
        new: MasterKey,
        persist: &mut dyn FnMut(&MasterKey) -> Result<()>,
    ) -> Result<u64> {
        let keys = need_keys(self.keys.as_ref())?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        ensure_current_key(&tx, keys)?;
        let mut rewrapped = 0u64;
        {
            let mut read = tx.prepare("SELECT secret_id, wrapped FROM secret_keys")?;
            let mut write = tx.prepare("UPDATE secret_keys SET wrapped = ?2 WHERE secret_id = ?1")?;
            let mut rows = read.query([])?;
            while let Some(r) = rows.next()? {
                let id = SecretId::from_slice(&r.get::<_, Vec<u8>>(0)?)
                    .map_err(|_| Error::Corrupt("a secret_keys id is not a UUID".into()))?;
                let dek = keys.master.unwrap_data_key(&r.get::<_, Vec<u8>>(1)?, id)?;
                write.execute(params![id.as_bytes().as_slice(), new.wrap_data_key(&dek, id)])?;
                rewrapped += 1;
            }
        }
        meta_set(
            &tx,
            "fingerprint_key",
            new.wrap_fingerprint_key(&keys.fingerprint),
        )?;
        meta_set(&tx, "sink_seal_key", new.wrap_sink_seal_key(&keys.sink_seal))?;
        meta_set(&tx, "key_check", new.key_check().as_slice())?;
        let mut head = sqlite::head(&tx)?;
        let first_seq = head.seq;
        let row = chain_next(
            &mut head,
            &NewEvent {
                event_id: uuid::Uuid::now_v7(),
                actor: actor.to_owned(),
                secret_id: None,
                event: Event::KeyRotated { key_id: new.key_id() },
            },
            now_ms(),
        );
        sqlite::insert(&tx, &row)?;
        finish_append(&tx, self.settings, first_seq, head)?;
        persist(&new)?;
        tx.commit()?;
        scrub_freed_pages(&self.conn);
        if let Some(keys) = self.keys.as_mut() {
            keys.master = new;
        }
        Ok(rewrapped)
    }
}

fn derived_mismatch(what: String) -> Error {
    Error::Corrupt(format!(
        "{what} differs from the fold of the log, though the log itself verifies: the database was \
         edited outside sledger. That data is derived: `sledger verify --rebuild-catalog` rebuilds it from the log"
    ))
}

/// Fold `log` from `start` up to `to`.
fn fold_log(log: &dyn EventLog, mut catalog: Catalog, to: u64) -> Result<Catalog> {
    if to > catalog.seq {
        log.scan(catalog.seq + 1, to, &mut |e| {
            catalog.apply(&e, e.decode()?)?;
            Ok(true)
        })?;
    }
    Ok(catalog)
}

fn fingerprint_hex(fp: &crate::crypto::Fingerprint) -> String {
    hex::encode(fp)
}

fn describe(
    stored: &StoredEvent,
    event: &Event,
    before: Option<&SecretMeta>,
    after: Option<&SecretMeta>,
) -> AuditEntry {
    let mut changes = Vec::new();
    if let Some(values) = event.values() {
        let old = before.map(|m| &m.fingerprints);
        for (key, fp) in &values.fingerprints {
            let change = match old.and_then(|o| o.get(key)) {
                None => "added",
                Some(prev) if prev != fp => "changed",
                Some(_) => continue,
            };
            changes.push(KeyChange {
                key: key.clone(),
                change,
                fingerprint: Some(fingerprint_hex(fp)),
            });
        }
        for key in old.into_iter().flat_map(|o| o.keys()) {
            if !values.fingerprints.contains_key(key) {
                changes.push(KeyChange {
                    key: key.clone(),
                    change: "removed",
                    fingerprint: None,
                });
            }
        }
    }
    let detail = match event {
        Event::SecretRenamed { from, to } => Some(format!("renamed {from} → {to}")),
        Event::KeyRotated { key_id } => Some(format!("master key is now {key_id}")),
        Event::SecretPurged => Some("data key destroyed; every version is unreadable".into()),
        Event::SinkAdded { name, url, role } => Some(format!("sink {name} added as {role}: {url}")),
        Event::SinkRoleChanged { name, role } => Some(format!("sink {name} is now {role}")),
        Event::SinkRemoved { name } => Some(format!("sink {name} removed")),
        Event::LedgerRestored { target_seq } => Some(format!(
            "restore to the state after seq {target_seq}; the compensating events follow"
        )),
        _ => None,
    };
    let labels = match event {
        Event::SecretCreated { labels, .. } | Event::SecretUpdated { labels, .. } => Some(labels.clone()),
        _ => None,
    };
    let meta = after.or(before);
    AuditEntry {
        seq: stored.seq,
        event_id: stored.event_id,
        recorded_at: stored.recorded_at,
        actor: stored.actor.clone(),
        event_type: stored.event_type.clone(),
        secret_id: stored.secret_id,
        name: meta.map(|m| m.name.clone()),
        scope: meta.map(|m| m.scope),
        version: meta.map(|m| m.version),
        changes,
        labels,
        detail,
    }
}

fn need_keys(keys: Option<&Keys>) -> Result<&Keys> {
    keys.ok_or_else(|| {
        Error::KeyUnavailable(
            "this command needs the master key; pass --key-file or set SLEDGER_MASTER_KEY".into(),
        )
    })
}

fn seal(keys: &Keys, values: &SecretValues, id: SecretId, seq: u64, dek: &DataKey) -> SealedValues {
    SealedValues {
        ciphertext: dek.seal(values, id, seq),
        fingerprints: keys.fingerprint.fingerprints(values),
    }
}

/// The `secret.updated` event giving `meta` these full values and labels, or nothing if
/// neither changed (compared by fingerprint, so no plaintext comparison is kept around).
fn replace_values(
    tx: &Connection,
    keys: Option<&Keys>,
    settings: LedgerSettings,
    meta: SecretMeta,
    labels: BTreeMap<String, String>,
    values: SecretValues,
    seq: u64,
) -> Result<Planned> {
    check_size(tx, settings, &meta.name, &values)?;
    let keys = need_keys(keys)?;
    if labels == meta.labels && keys.fingerprint.fingerprints(&values) == meta.fingerprints {
        return Ok(Planned::Nothing(meta));
    }
    let dek = load_dek(tx, &keys.master, &meta)?;
    Ok(Planned::Append {
        secret_id: meta.id,
        event: Event::SecretUpdated {
            labels,
            values: seal(keys, &values, meta.id, seq, &dek),
        },
        before: Some(meta),
    })
}

/// Validate one command against the catalog (inside the write transaction) and build its event.
fn plan(
    tx: &Connection,
    keys: Option<&Keys>,
    settings: LedgerSettings,
    actor: &str,
    command: Command,
    seq: u64,
) -> Result<Planned> {
    Ok(match command {
        Command::AddSink { .. }
        | Command::SetSinkRole { .. }
        | Command::PromoteSink { .. }
        | Command::RemoveSink { .. } => plan_sink(tx, command)?,
        Command::RecordRestore {
            target_seq,
            planned_at,
        } => {
            // `seq` is the seq this event gets, so the head is the one before it.
            if planned_at + 1 != seq {
                return Err(Error::ChangedMeanwhile { what: "restore" });
            }
            Planned::Ledger(vec![Event::LedgerRestored { target_seq }])
        }
        Command::Create {
            name,
            scope,
            labels,
            values,
        } => {
            validate::secret_name(&name)?;
            validate::labels(&labels)?;
            check_size(tx, settings, &name, &values)?;
            let master = &need_keys(keys)?.master;
            ensure_name_free(tx, &namespace(scope, actor), scope, &name)?;
            let id = SecretId::now_v7();
            let dek = DataKey::generate();
            tx.prepare_cached("INSERT INTO secret_keys (secret_id, wrapped) VALUES (?1, ?2)")?
                .execute(params![id.as_bytes().as_slice(), master.wrap_data_key(&dek, id)])?;
            let sealed = seal(need_keys(keys)?, &values, id, seq, &dek);
            Planned::Append {
                secret_id: id,
                event: Event::SecretCreated {
                    name,
                    scope,
                    owner: actor.to_owned(),
                    labels,
                    values: sealed,
                },
                before: None,
            }
        }
        Command::Update {
            name,
            set_values,
            remove_keys,
            set_labels,
            remove_labels,
        } => {
            let meta = resolve(tx, actor, &name, Want::Live)?;
            let master = &need_keys(keys)?.master;
            for key in set_values.keys() {
                validate::value_key(key)?;
            }
            validate::labels(&set_labels)?;
            let (mut values, _) = open_values_at(tx, master, &meta, meta.value_seq)?;
            for key in &remove_keys {
                if set_values.contains_key(key) {
                    return Err(Error::invalid(format!(
                        "key {key:?} is both set and removed; do one or the other"
                    )));
                }
                if !values.remove(key) {
                    return Err(Error::invalid(format!(
                        "secret {name:?} has no key {key:?} to remove"
                    )));
                }
            }
            for (k, v) in set_values.iter() {
                values.insert(k, v);
            }
            let mut labels = meta.labels.clone();
            for key in &remove_labels {
                if labels.remove(key).is_none() {
                    return Err(Error::invalid(format!(
                        "secret {name:?} has no label {key:?} to remove"
                    )));
                }
            }
            labels.extend(set_labels);
            replace_values(tx, keys, settings, meta, labels, values, seq)?
        }
        Command::Put {
            name,
            scope,
            labels,
            values,
        } => {
            let ns = namespace(scope, actor);
            let existing = named(tx, actor, &name)?
                .into_iter()
                .find(|m| m.status == Status::Live && m.namespace() == ns);
            match existing {
                None => plan(
                    tx,
                    keys,
                    settings,
                    actor,
                    Command::Create {
                        name,
                        scope,
                        labels,
                        values,
                    },
                    seq,
                )?,
                Some(meta) => {
                    validate::labels(&labels)?;
                    replace_values(tx, keys, settings, meta, labels, values, seq)?
                }
            }
        }
        Command::Rename { name, new_name } => {
            validate::secret_name(&new_name)?;
            let meta = resolve(tx, actor, &name, Want::Live)?;
            if new_name == meta.name {
                return Ok(Planned::Nothing(meta));
            }
            ensure_name_free(tx, &meta.namespace(), meta.scope, &new_name)?;
            Planned::Append {
                secret_id: meta.id,
                event: Event::SecretRenamed {
                    from: meta.name.clone(),
                    to: new_name,
                },
                before: Some(meta),
            }
        }
        Command::Delete { name } => {
            let meta = resolve(tx, actor, &name, Want::Live)?;
            Planned::Append {
                secret_id: meta.id,
                event: Event::SecretDeleted,
                before: Some(meta),
            }
        }
        Command::Undelete { name } => {
            let meta = resolve(tx, actor, &name, Want::Deleted)?;
            ensure_name_free(tx, &meta.namespace(), meta.scope, &meta.name)?;
            Planned::Append {
                secret_id: meta.id,
                event: Event::SecretRestored,
                before: Some(meta),
            }
        }
        Command::Purge { name } => {
            let meta = resolve(tx, actor, &name, Want::Any)?;
            if meta.status == Status::Purged {
                return Err(Error::Purged { name });
            }
            tx.prepare_cached("DELETE FROM secret_keys WHERE secret_id = ?1")?
                .execute([meta.id.as_bytes().as_slice()])?;
            Planned::Append {
                secret_id: meta.id,
                event: Event::SecretPurged,
                before: Some(meta),
            }
        }
    })
}
