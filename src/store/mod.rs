//! The storage seam (ARCHITECTURE.md): everything the ledger persists, behind one trait.
//!
//! [`Store`] covers the event log (append with its chain, ranges, head), the catalog rows,
//! wrapped data keys, the sink registry, projection state (checkpoints, parked secrets, last
//! errors), snapshots and settings. Its signatures carry no database types, so a second
//! implementation (PostgreSQL) can stand beside [`sqlite::SqliteStore`]; both must pass
//! [`conformance`]. The ledger's logic (validation, sealing, folding) stays above it.
//!
//! A store value is one connection: its calls run on the caller's thread, one at a time.
//! Writes happen inside a write transaction ([`Write`]), which is exclusive among every
//! connection and process using the same store, and sees the head as of its start.

pub mod copy;
mod location;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;

pub use location::Location;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::access_log::AccessEntry;
use crate::catalog::{ListQuery, SecretMeta, SinkConfig};
use crate::error::Result;
use crate::event::{Millis, StoredEvent};
use crate::log::Head;
use crate::SecretId;

/// Visits events in seq order until it returns false.
pub type Visit<'a> = &'a mut dyn FnMut(StoredEvent) -> Result<bool>;

/// Which events a filtered scan reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// The first and last seq, inclusive.
    pub from: u64,
    pub to: u64,
    pub secret: Option<SecretId>,
    pub actor: Option<String>,
    pub event_type: Option<String>,
    /// Read from `to` down to `from` (the log's tail without the rest).
    pub newest_first: bool,
}

impl EventQuery {
    /// Every event with `from <= seq <= to`, oldest first.
    pub fn range(from: u64, to: u64) -> Self {
        EventQuery {
            from,
            to,
            secret: None,
            actor: None,
            event_type: None,
            newest_first: false,
        }
    }
}

/// Visits secrets in list order until it returns false.
pub type ListVisit<'a> = &'a mut dyn FnMut(SecretMeta) -> Result<bool>;

/// Re-wraps one data key: (secret id, wrapped key) → the key wrapped anew.
pub type Rewrap<'a> = &'a mut dyn FnMut(SecretId, &[u8]) -> Result<Vec<u8>>;

/// A sink's projection state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkProgress {
    /// Every event at or before it has been applied to (or parked for) the sink.
    pub checkpoint: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    pub last_applied_at: Option<Millis>,
    /// The MAC the ledger stored with the checkpoint (see `Ledger::checkpoint`).
    #[serde(skip)]
    pub checkpoint_mac: Option<Vec<u8>>,
    /// The instance (host:pid) that applied the last batch.
    pub projected_by: Option<String>,
}

/// A setting's value: bytes or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Bytes(Vec<u8>),
    Int(i64),
}

/// A secret a sink refused permanently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parked {
    pub secret_id: SecretId,
    pub seq: u64,
    pub error: String,
    pub parked_at: Millis,
}

/// Everything the ledger persists. See the module documentation for the threading and
/// transaction contract; each method says what it guarantees.
pub trait Store: Send {
    // Transactions.

    /// Start the write transaction. Blocks (up to the store's busy timeout) while another
    /// connection writes; `Error::Busy` after that.
    fn begin_write(&self) -> Result<()>;
    /// Make the write transaction durable.
    fn commit(&self) -> Result<()>;
    /// Undo the write (or read) transaction; nothing if there is none.
    fn rollback(&self);
    /// Start a read transaction: the calls until [`Store::rollback`] see one consistent state.
    fn begin_read(&self) -> Result<()>;
    /// Open a nested unit inside the write transaction ...
    fn savepoint(&self) -> Result<()>;
    /// ... keep what it did ...
    fn release_savepoint(&self) -> Result<()>;
    /// ... or undo only what it did.
    fn rollback_savepoint(&self) -> Result<()>;

    // The event log: gap-free seqs from 1, append-only.

    /// The last event, or [`Head::EMPTY`].
    fn head(&self) -> Result<Head>;
    /// Append the event after the head (inside the write transaction). Its seq must be
    /// head + 1; the store does not compute the chain, the caller did.
    fn append(&self, event: &StoredEvent) -> Result<()>;
    fn event(&self, seq: u64) -> Result<Option<StoredEvent>>;
    /// Events with `from <= seq <= to`, in seq order, exactly as stored.
    fn scan(&self, from: u64, to: u64, visit: Visit<'_>) -> Result<()>;
    /// The events `query` selects, in its direction, until `visit` returns false. Reads only
    /// what it hands over: a seq range, through an index when it names a secret, an actor or a
    /// type.
    fn scan_events(&self, query: &EventQuery, visit: Visit<'_>) -> Result<()>;
    /// One secret's events with seq <= `to`, in seq order.
    fn scan_secret(&self, id: SecretId, to: u64, visit: Visit<'_>) -> Result<()>;
    /// The seq of the last event recorded at or before `at` (0 if none).
    fn seq_at_time(&self, at: Millis) -> Result<u64>;
    /// Events whose type is one of `types`, with seq > `after`, in seq order.
    fn scan_types(&self, types: &[&str], after: u64, visit: Visit<'_>) -> Result<()>;
    /// The secrets that events `after+1 ..= through` touch, ordered by the seq of each one's
    /// last event there.
    fn secrets_touched(&self, after: u64, through: u64) -> Result<Vec<SecretId>>;

    // Settings: small named values fixed at init or changed by key rotation.

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>>;
    fn setting_int(&self, key: &str) -> Result<Option<i64>>;
    fn set_setting(&self, key: &str, value: &[u8]) -> Result<()>;
    fn set_setting_int(&self, key: &str, value: i64) -> Result<()>;
    /// Every setting, by key.
    fn settings(&self) -> Result<Vec<(String, Setting)>>;

    // The catalog: current metadata per secret, derived from the log.

    /// Insert or replace a secret's row.
    fn put_secret(&self, meta: &SecretMeta) -> Result<()>;
    /// Insert or replace many rows (a catalog rebuilt from the log); a store may do it in
    /// fewer round trips than one [`Store::put_secret`] each.
    fn put_secrets(&self, metas: &[SecretMeta]) -> Result<()> {
        metas.iter().try_for_each(|meta| self.put_secret(meta))
    }
    fn secret(&self, id: SecretId) -> Result<Option<SecretMeta>>;
    /// Secrets called `name` in any of `namespaces`, newest change first.
    fn secrets_named(&self, name: &str, namespaces: &[&str]) -> Result<Vec<SecretMeta>>;
    /// Secrets `query` admits (see [`ListQuery::admits`]) in any of `namespaces`, in (name,
    /// namespace) order from [`ListQuery::start`], until `visit` returns false. Reads only
    /// what it hands over, through indexes (a label filter reads only that label's secrets).
    fn list_secrets(&self, query: &ListQuery, namespaces: &[&str], visit: ListVisit<'_>) -> Result<()>;
    /// Whether a live secret holds `name` in `namespace`.
    fn name_taken(&self, namespace: &str, name: &str) -> Result<bool>;
    /// [`Store::name_taken`] for each (namespace, name), in order; a store may answer in fewer
    /// round trips than one each.
    fn names_taken(&self, names: &[(String, String)]) -> Result<Vec<bool>> {
        names.iter().map(|(ns, name)| self.name_taken(ns, name)).collect()
    }
    /// Every row with the id it is filed under, in ascending id order, until `visit` returns
    /// false; with whether the row's indexed columns (namespace, name, status, updated seq)
    /// are those its meta implies ([`columns_agree`]), since lookups by name trust them.
    fn scan_all_secrets(
        &self,
        visit: &mut dyn FnMut(SecretId, SecretMeta, bool) -> Result<bool>,
    ) -> Result<()>;
    fn secret_count(&self) -> Result<u64>;

    // Data keys, wrapped by the master key; mutable, outside the chain.

    fn wrapped_key(&self, id: SecretId) -> Result<Option<Vec<u8>>>;
    fn put_wrapped_key(&self, id: SecretId, wrapped: &[u8]) -> Result<()>;
    /// Insert many new wrapped keys (see [`Store::put_secrets`]).
    fn put_wrapped_keys(&self, keys: &[(SecretId, Vec<u8>)]) -> Result<()> {
        keys.iter()
            .try_for_each(|(id, wrapped)| self.put_wrapped_key(*id, wrapped))
    }
    /// Destroy a data key (purge). Absent is fine.
    fn delete_wrapped_key(&self, id: SecretId) -> Result<()>;
    /// Every wrapped key, in id order, until `visit` returns false.
    fn scan_wrapped_keys(&self, visit: &mut dyn FnMut(SecretId, Vec<u8>) -> Result<bool>) -> Result<()>;
    /// Replace every wrapped key by `rewrap(id, wrapped)`; returns how many.
    fn rewrap_keys(&self, rewrap: Rewrap<'_>) -> Result<u64>;

    // Sinks: the registry (derived from the log) and projection state.

    fn sinks(&self) -> Result<BTreeMap<String, SinkConfig>>;
    /// Replace the registry.
    fn put_sinks(&self, sinks: &BTreeMap<String, SinkConfig>) -> Result<()>;
    /// Forget a sink's checkpoint, errors and parked secrets (it was re-added).
    fn forget_sink_progress(&self, sink: &str) -> Result<()>;
    fn sink_progress(&self, sink: &str) -> Result<SinkProgress>;
    /// Move a sink's checkpoint forward to `seq` (never back) and clear its last error, if the
    /// sink is still the attachment added at `attached`; `mac` moves with it (kept beside the
    /// checkpoint it was made for), recording `by` as the instance that applied it. Returns
    /// whether it was.
    fn save_checkpoint(
        &self,
        sink: &str,
        attached: u64,
        seq: u64,
        mac: &[u8],
        at: Millis,
        by: &str,
    ) -> Result<bool>;
    fn record_sink_error(&self, sink: &str, error: &str, at: Millis) -> Result<()>;
    /// Park (or park again) a secret the sink refused at `seq`.
    fn park(&self, sink: &str, parked: &Parked) -> Result<()>;
    /// Forget a parked secret once a write at `seq` or later reached the sink.
    fn unpark(&self, sink: &str, id: SecretId, seq: u64) -> Result<()>;
    /// The sink's parked secrets, by seq.
    fn parked(&self, sink: &str) -> Result<Vec<Parked>>;

    // Sink writers: one at a time per sink, across connections, processes and servers.

    /// Take the right to write sink `name` if no other connection holds it; returns whether
    /// it did. Held until [`Store::unlock_sink_writes`], or until this connection ends: a
    /// process that dies releases it.
    fn try_lock_sink_writes(&self, name: &str) -> Result<bool>;
    fn unlock_sink_writes(&self, name: &str);

    // The access log: a second chain, gap-free from 1, append-only.

    /// The last row's (seq, hash), or (0, genesis) when empty.
    fn access_head(&self) -> Result<(u64, [u8; 32])>;
    /// Insert rows the caller chained after [`Store::access_head`] (inside the write
    /// transaction).
    fn append_access(&self, entries: &[AccessEntry]) -> Result<()>;
    /// Rows with seq > `after`, in seq order, until `visit` returns false.
    fn scan_access(&self, after: u64, visit: &mut dyn FnMut(AccessEntry) -> Result<bool>) -> Result<()>;

    // Snapshots of the catalog (opaque bytes), and derived-state upkeep.

    fn put_snapshot(&self, seq: u64, state: &[u8]) -> Result<()>;
    /// The newest snapshot at or before `seq`: (its seq, its bytes).
    fn snapshot_at_or_before(&self, seq: u64) -> Result<Option<(u64, Vec<u8>)>>;
    fn snapshot_seqs(&self) -> Result<Vec<u64>>;
    /// The blake3 digest of the snapshot stored at exactly `seq`, read a piece at a time (a
    /// snapshot of a million secrets is hundreds of megabytes).
    fn snapshot_digest(&self, seq: u64) -> Result<Option<[u8; 32]>>;
    /// Drop the catalog rows, the sink registry and the snapshots (inside the write
    /// transaction), to be folded again from the log.
    fn reset_derived(&self) -> Result<()>;
    /// Whether the derived rows exist at all (an older store may lack them).
    fn has_derived(&self) -> Result<bool>;
    /// After key material was destroyed: make sure no copy of it lingers in free space.
    /// Best effort.
    fn scrub(&self);

    /// Write a consistent copy of everything the store holds, as it is at one instant, into a
    /// new SQLite ledger file at `path` (mode 0600), while other connections keep writing.
    fn backup_to(&self, path: &Path) -> Result<()>;

    /// Read the whole log from seq 1, checking the hash chain, and hand each event, decoded,
    /// to `visit`; returns the verified head, or the first bad seq as `Error::ChainBroken`.
    /// (An implementation may read and hash on another connection and thread.)
    fn verified_scan(
        &self,
        visit: &mut dyn FnMut(StoredEvent, crate::event::Event) -> Result<()>,
    ) -> Result<Head>;
}

/// A write transaction that rolls back unless committed, like a database transaction object.
pub struct Write<'a> {
    store: &'a dyn Store,
    finished: bool,
}

impl<'a> Write<'a> {
    pub fn begin(store: &'a dyn Store) -> Result<Self> {
        store.begin_write()?;
        Ok(Write {
            store,
            finished: false,
        })
    }

    /// Commit; if that fails, the transaction is rolled back (a failed COMMIT can leave it open).
    pub fn commit(mut self) -> Result<()> {
        let committed = self.store.commit();
        self.finished = committed.is_ok();
        committed
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.store.rollback();
        }
    }
}

impl<'a> std::ops::Deref for Write<'a> {
    type Target = dyn Store + 'a;
    fn deref(&self) -> &Self::Target {
        self.store
    }
}

/// A read transaction: one consistent state for every call until it is dropped.
pub struct Read<'a> {
    store: &'a dyn Store,
}

impl<'a> Read<'a> {
    pub fn begin(store: &'a dyn Store) -> Result<Self> {
        store.begin_read()?;
        Ok(Read { store })
    }
}

impl Drop for Read<'_> {
    fn drop(&mut self) {
        self.store.rollback();
    }
}

impl<'a> std::ops::Deref for Read<'a> {
    type Target = dyn Store + 'a;
    fn deref(&self) -> &Self::Target {
        self.store
    }
}

/// A store's event log seen through [`EventLog`](crate::log::EventLog).
pub struct StoreLog<'a>(pub &'a dyn Store);

impl crate::log::EventLog for StoreLog<'_> {
    fn head(&self) -> Result<Head> {
        self.0.head()
    }

    fn scan(&self, from: u64, to: u64, visit: Visit<'_>) -> Result<()> {
        self.0.scan(from, to, visit)
    }
}

/// Whether a catalog row's indexed columns are the ones its `meta` implies (what a store writes
/// beside it): an edit of one of them alone would make lookups by name see another catalog.
pub(crate) fn columns_agree(
    meta: &SecretMeta,
    namespace: &str,
    name: &str,
    status: &str,
    updated_seq: i64,
) -> bool {
    meta.namespace() == namespace
        && meta.name == name
        && meta.status.as_str() == status
        && i64::try_from(meta.updated_seq).is_ok_and(|seq| seq == updated_seq)
}
