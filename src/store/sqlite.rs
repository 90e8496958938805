//! The SQLite store: one connection to a ledger file (WAL, `synchronous=FULL`), schema in
//! `schema/ledger/`. Write transactions are `BEGIN IMMEDIATE`, so the head read inside one is
//! the head the commit extends, across processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::{EventQuery, ListVisit, Parked, Rewrap, Setting, SinkProgress, Store, Visit};
use crate::access_log::AccessEntry;
use crate::catalog::{ListQuery, SecretMeta, SinkConfig};
use crate::error::{Error, Result};
use crate::event::{Millis, StoredEvent};
use crate::log::{sqlite as log, EventLog, Head};
use crate::SecretId;

/// A ledger's store in an SQLite file.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Sink write locks held: an exclusive lock on a file beside the ledger for each.
    sink_locks: std::cell::RefCell<std::collections::HashMap<String, std::fs::File>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

fn decode_meta(bytes: &[u8]) -> Result<SecretMeta> {
    SecretMeta::from_bytes(bytes)
}

fn secret_id(bytes: &[u8], what: &str) -> Result<SecretId> {
    SecretId::from_slice(bytes).map_err(|_| Error::Corrupt(format!("{what} is not a UUID")))
}

/// `?2, ?3, …` for the namespaces after the first parameter.
fn placeholders(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SqliteStore {
    /// Create a new ledger file (mode 0600) with the current schema. Refuses an existing file.
    pub fn create(path: &Path) -> Result<Self> {
        Ok(SqliteStore {
            conn: log::create(path)?,
            path: path.to_path_buf(),
            sink_locks: Default::default(),
        })
    }

    /// Open an existing ledger file, checking that it is one this build can read.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(SqliteStore {
            conn: log::open(path)?,
            path: path.to_path_buf(),
            sink_locks: Default::default(),
        })
    }

    /// Remove a ledger file and its WAL companions (undoing a creation that failed half-way).
    pub fn remove_files(path: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(file));
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn decode_all(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<SecretMeta>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|b| decode_meta(&b?)).collect()
    }
}

impl Store for SqliteStore {
    fn begin_write(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::debug!(error = %e, "rollback failed");
            }
        }
    }

    fn begin_read(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        Ok(())
    }

    fn savepoint(&self) -> Result<()> {
        self.conn.execute_batch("SAVEPOINT unit")?;
        Ok(())
    }

    fn release_savepoint(&self) -> Result<()> {
        self.conn.execute_batch("RELEASE unit")?;
        Ok(())
    }

    fn rollback_savepoint(&self) -> Result<()> {
        self.conn.execute_batch("ROLLBACK TO unit; RELEASE unit")?;
        Ok(())
    }

    fn head(&self) -> Result<Head> {
        log::head(&self.conn)
    }

    fn append(&self, event: &StoredEvent) -> Result<()> {
        log::insert(&self.conn, event)
    }

    fn event(&self, seq: u64) -> Result<Option<StoredEvent>> {
        log::get(&self.conn, seq)
    }

    fn scan(&self, from: u64, to: u64, visit: Visit<'_>) -> Result<()> {
        log::SqliteLog(&self.conn).scan(from, to, visit)
    }

    fn scan_events(&self, query: &EventQuery, visit: Visit<'_>) -> Result<()> {
        log::scan_events(&self.conn, query, visit)
    }

    fn scan_secret(&self, id: SecretId, to: u64, visit: Visit<'_>) -> Result<()> {
        log::scan_secret(&self.conn, id, to, visit)
    }

    fn seq_at_time(&self, at: Millis) -> Result<u64> {
        log::seq_at_time(&self.conn, at)
    }

    fn scan_types(&self, types: &[&str], after: u64, visit: Visit<'_>) -> Result<()> {
        if types.is_empty() {
            return Ok(());
        }
        let mut stmt = self.conn.prepare_cached(&format!(
            "{} WHERE event_type IN ({}) AND seq > ?1 ORDER BY seq",
            log::SELECT_EVENTS,
            placeholders(2, types.len())
        ))?;
        let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(types.len() + 1);
        let after = after.min(i64::MAX as u64) as i64;
        args.push(&after);
        args.extend(types.iter().map(|t| t as &dyn rusqlite::ToSql));
        log::visit_rows(&mut stmt, args.as_slice(), visit)
    }

    fn access_head(&self) -> Result<(u64, [u8; 32])> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT seq, hash FROM access_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            None => Ok((0, crate::event::GENESIS_HASH)),
            Some((seq, hash)) => Ok((
                seq as u64,
                hash.try_into()
                    .map_err(|_| Error::Corrupt(format!("access log row {seq} has a malformed hash")))?,
            )),
        }
    }

    fn append_access(&self, entries: &[AccessEntry]) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO access_log (seq, recorded_at, record, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for e in entries {
            stmt.execute(params![
                e.seq as i64,
                e.record.at,
                e.json,
                e.prev_hash.as_slice(),
                e.hash.as_slice()
            ])?;
        }
        Ok(())
    }

    fn scan_access(&self, after: u64, visit: &mut dyn FnMut(AccessEntry) -> Result<bool>) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, record, prev_hash, hash FROM access_log WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![after.min(i64::MAX as u64) as i64])?;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let json: String = r.get(1)?;
            let bad = |what: &str| Error::Corrupt(format!("access log row {seq}: {what}"));
            let record = serde_json::from_str(&json).map_err(|_| bad("the record does not parse"))?;
            let hash = |i| -> Result<[u8; 32]> {
                r.get::<_, Vec<u8>>(i)?
                    .try_into()
                    .map_err(|_| bad("a malformed hash"))
            };
            let entry = AccessEntry {
                seq: seq as u64,
                record,
                prev_hash: hash(2)?,
                hash: hash(3)?,
                json,
            };
            if !visit(entry)? {
                break;
            }
        }
        Ok(())
    }

    fn secrets_touched(&self, after: u64, through: u64) -> Result<Vec<SecretId>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT secret_id, max(seq) AS last FROM events WHERE seq > ?1 AND seq <= ?2 AND secret_id IS NOT NULL
             GROUP BY secret_id ORDER BY last",
        )?;
        let ids: Vec<Vec<u8>> = stmt
            .query_map(params![after as i64, through.min(i64::MAX as u64) as i64], |r| {
                r.get(0)
            })?
            .collect::<rusqlite::Result<_>>()?;
        ids.iter()
            .map(|id| secret_id(id, "an event's secret id"))
            .collect()
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT CAST(value AS BLOB) FROM ledger_meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    fn setting_int(&self, key: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM ledger_meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    fn set_setting(&self, key: &str, value: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO ledger_meta (key, value) VALUES (?1, ?2)")?
            .execute(params![key, value])?;
        Ok(())
    }

    fn set_setting_int(&self, key: &str, value: i64) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO ledger_meta (key, value) VALUES (?1, ?2)")?
            .execute(params![key, value])?;
        Ok(())
    }

    fn settings(&self) -> Result<Vec<(String, Setting)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM ledger_meta ORDER BY key")?;
        let mut rows = stmt.query([])?;
        let mut settings = Vec::new();
        while let Some(r) = rows.next()? {
            let value = match r.get_ref(1)? {
                rusqlite::types::ValueRef::Integer(n) => Setting::Int(n),
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                    Setting::Bytes(b.to_vec())
                }
                _ => {
                    return Err(Error::Corrupt(
                        "a ledger setting is neither bytes nor a number".into(),
                    ))
                }
            };
            settings.push((r.get(0)?, value));
        }
        Ok(settings)
    }

    fn put_secret(&self, m: &SecretMeta) -> Result<()> {
        let blob = m.to_bytes();
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO catalog (secret_id, namespace, name, status, updated_seq, meta) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![m.id.as_bytes().as_slice(), m.namespace(), m.name, m.status.as_str(), m.updated_seq as i64, blob])?;
        let id = m.id.as_bytes().as_slice();
        self.conn
            .prepare_cached("DELETE FROM catalog_labels WHERE secret_id = ?1")?
            .execute([id])?;
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO catalog_labels (key, value, status, name, namespace, secret_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (key, value) in &m.labels {
            insert.execute(params![key, value, m.status.as_str(), m.name, m.namespace(), id])?;
        }
        Ok(())
    }

    fn list_secrets(&self, query: &ListQuery, namespaces: &[&str], visit: ListVisit<'_>) -> Result<()> {
        let (start, exclusive) = query.start();
        let after = if exclusive { ">" } else { ">=" };
        let status = query.status.as_str();
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&status, &start];
        // One label narrows the scan through its index; the others are checked per row.
        let label = query.labels.iter().next();
        let sql = match &label {
            None => format!(
                "SELECT meta FROM catalog WHERE status = ?1 AND name {after} ?2 AND namespace IN ({}) \
                 ORDER BY name, namespace",
                placeholders(3, namespaces.len())
            ),
            Some((key, value)) => {
                values.push(key);
                values.push(value);
                format!(
                    "SELECT c.meta FROM catalog_labels l JOIN catalog c ON c.secret_id = l.secret_id \
                     WHERE l.status = ?1 AND l.name {after} ?2 AND l.key = ?3 AND l.value = ?4 \
                     AND l.namespace IN ({}) ORDER BY l.name, l.namespace",
                    placeholders(5, namespaces.len())
                )
            }
        };
        values.extend(namespaces.iter().map(|n| n as &dyn rusqlite::ToSql));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(values.as_slice())?;
        while let Some(row) = rows.next()? {
            let meta = decode_meta(&row.get::<_, Vec<u8>>(0)?)?;
            match query.admits(&meta) {
                None => break,
                Some(false) => continue,
                Some(true) => {
                    if !visit(meta)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn secret(&self, id: SecretId) -> Result<Option<SecretMeta>> {
        let blob: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT meta FROM catalog WHERE secret_id = ?1")?
            .query_row([id.as_bytes().as_slice()], |r| r.get(0))
            .optional()?;
        blob.map(|b| decode_meta(&b)).transpose()
    }

    fn secrets_named(&self, name: &str, namespaces: &[&str]) -> Result<Vec<SecretMeta>> {
        // Every status named, so that catalog_listing (status, name, namespace) answers it.
        let sql = format!(
            "SELECT meta FROM catalog WHERE status IN ('live', 'deleted', 'purged') AND name = ?1 \
             AND namespace IN ({}) ORDER BY updated_seq DESC",
            placeholders(2, namespaces.len())
        );
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&name];
        values.extend(namespaces.iter().map(|n| n as &dyn rusqlite::ToSql));
        self.decode_all(&sql, values.as_slice())
    }

    fn name_taken(&self, namespace: &str, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM catalog WHERE namespace = ?1 AND name = ?2 AND status = 'live'")?
            .query_row(params![namespace, name], |r| r.get::<_, i64>(0))
            .optional()?
            .is_some())
    }

    fn scan_all_secrets(
        &self,
        visit: &mut dyn FnMut(SecretId, SecretMeta, bool) -> Result<bool>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT secret_id, meta, namespace, name, status, updated_seq FROM catalog ORDER BY secret_id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let id = secret_id(&row.get::<_, Vec<u8>>(0)?, "a catalog row's id")?;
            let meta = decode_meta(&row.get::<_, Vec<u8>>(1)?)?;
            let agree = super::columns_agree(
                &meta,
                &row.get::<_, String>(2)?,
                &row.get::<_, String>(3)?,
                &row.get::<_, String>(4)?,
                row.get(5)?,
            );
            if !visit(id, meta, agree)? {
                break;
            }
        }
        Ok(())
    }

    fn secret_count(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM catalog", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn wrapped_key(&self, id: SecretId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT wrapped FROM secret_keys WHERE secret_id = ?1")?
            .query_row([id.as_bytes().as_slice()], |r| r.get(0))
            .optional()?)
    }

    fn put_wrapped_key(&self, id: SecretId, wrapped: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("INSERT INTO secret_keys (secret_id, wrapped) VALUES (?1, ?2)")?
            .execute(params![id.as_bytes().as_slice(), wrapped])?;
        Ok(())
    }

    fn delete_wrapped_key(&self, id: SecretId) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM secret_keys WHERE secret_id = ?1")?
            .execute([id.as_bytes().as_slice()])?;
        Ok(())
    }

    fn scan_wrapped_keys(&self, visit: &mut dyn FnMut(SecretId, Vec<u8>) -> Result<bool>) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT secret_id, wrapped FROM secret_keys ORDER BY secret_id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            if !visit(
                secret_id(&r.get::<_, Vec<u8>>(0)?, "a secret_keys id")?,
                r.get(1)?,
            )? {
                break;
            }
        }
        Ok(())
    }

    fn rewrap_keys(&self, rewrap: Rewrap<'_>) -> Result<u64> {
        let mut read = self.conn.prepare("SELECT secret_id, wrapped FROM secret_keys")?;
        let mut write = self
            .conn
            .prepare("UPDATE secret_keys SET wrapped = ?2 WHERE secret_id = ?1")?;
        let mut rows = read.query([])?;
        let mut count = 0;
        while let Some(r) = rows.next()? {
            let id = secret_id(&r.get::<_, Vec<u8>>(0)?, "a secret_keys id")?;
            let wrapped = rewrap(id, &r.get::<_, Vec<u8>>(1)?)?;
            write.execute(params![id.as_bytes().as_slice(), wrapped])?;
            count += 1;
        }
        Ok(count)
    }

    fn sinks(&self) -> Result<BTreeMap<String, SinkConfig>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, url, role, added_seq FROM sinks ORDER BY name")?;
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

    fn put_sinks(&self, sinks: &BTreeMap<String, SinkConfig>) -> Result<()> {
        self.conn.execute("DELETE FROM sinks", [])?;
        for s in sinks.values() {
            self.conn
                .prepare_cached("INSERT INTO sinks (name, url, role, added_seq) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![s.name, s.url, s.role.as_str(), s.added_seq as i64])?;
        }
        Ok(())
    }

    fn forget_sink_progress(&self, sink: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM sink_state WHERE name = ?1", [sink])?;
        self.conn.execute("DELETE FROM parked WHERE sink = ?1", [sink])?;
        Ok(())
    }

    fn sink_progress(&self, sink: &str) -> Result<SinkProgress> {
        type Row = (
            i64,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<Vec<u8>>,
            Option<String>,
        );
        let row: Option<Row> = self
            .conn
            .prepare_cached(
                "SELECT checkpoint, last_error, last_error_at, last_applied_at, checkpoint_mac, projected_by FROM sink_state WHERE name = ?1",
            )?
            .query_row([sink], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .optional()?;
        Ok(row.map_or_else(
            SinkProgress::default,
            |(checkpoint, last_error, last_error_at, last_applied_at, checkpoint_mac, projected_by)| {
                SinkProgress {
                    checkpoint: checkpoint as u64,
                    last_error,
                    last_error_at,
                    last_applied_at,
                    checkpoint_mac,
                    projected_by,
                }
            },
        ))
    }

    fn save_checkpoint(
        &self,
        sink: &str,
        attached: u64,
        seq: u64,
        mac: &[u8],
        at: Millis,
        by: &str,
    ) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "INSERT INTO sink_state (name, checkpoint, checkpoint_mac, last_applied_at, projected_by)
                 SELECT ?1, ?2, ?5, ?3, ?6 WHERE EXISTS (SELECT 1 FROM sinks WHERE name = ?1 AND added_seq = ?4)
                 ON CONFLICT (name) DO UPDATE SET
                 checkpoint_mac = CASE WHEN excluded.checkpoint >= checkpoint THEN excluded.checkpoint_mac ELSE checkpoint_mac END,
                 checkpoint = max(checkpoint, excluded.checkpoint),
                 last_applied_at = excluded.last_applied_at, projected_by = excluded.projected_by,
                 last_error = NULL, last_error_at = NULL",
            )?
            .execute(params![sink, seq as i64, at, attached as i64, mac, by])?;
        Ok(changed > 0)
    }

    fn record_sink_error(&self, sink: &str, error: &str, at: Millis) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO sink_state (name, last_error, last_error_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error, last_error_at = excluded.last_error_at",
            )?
            .execute(params![sink, error, at])?;
        Ok(())
    }

    fn park(&self, sink: &str, parked: &Parked) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO parked (sink, secret_id, seq, error, parked_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![
                sink,
                parked.secret_id.as_bytes().as_slice(),
                parked.seq as i64,
                parked.error,
                parked.parked_at
            ])?;
        Ok(())
    }

    fn unpark(&self, sink: &str, id: SecretId, seq: u64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM parked WHERE sink = ?1 AND secret_id = ?2 AND seq <= ?3")?
            .execute(params![
                sink,
                id.as_bytes().as_slice(),
                seq.min(i64::MAX as u64) as i64
            ])?;
        Ok(())
    }

    fn parked(&self, sink: &str) -> Result<Vec<Parked>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT secret_id, seq, error, parked_at FROM parked WHERE sink = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([sink], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (id, seq, error, parked_at) = row?;
            Ok(Parked {
                secret_id: secret_id(&id, "a parked secret id")?,
                seq: seq as u64,
                error,
                parked_at,
            })
        })
        .collect()
    }

    fn try_lock_sink_writes(&self, name: &str) -> Result<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = format!("{}.sink-{name}.lock", self.path.display());
        // O_NOFOLLOW: a symlink planted at the lock's path must not make sledger open (and
        // create) a file elsewhere.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {path}"), e))?;
        match file.try_lock() {
            Ok(()) => {
                self.sink_locks.borrow_mut().insert(name.to_owned(), file);
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(format!("cannot lock {path}"), e)),
        }
    }

    fn unlock_sink_writes(&self, name: &str) {
        self.sink_locks.borrow_mut().remove(name);
    }

    fn put_snapshot(&self, seq: u64, state: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("INSERT INTO snapshots (seq, state) VALUES (?1, ?2)")?
            .execute(params![seq as i64, state])?;
        Ok(())
    }

    fn snapshot_at_or_before(&self, seq: u64) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self
            .conn
            .prepare_cached("SELECT seq, state FROM snapshots WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1")?
            .query_row([seq.min(i64::MAX as u64) as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
    }

    fn snapshot_digest(&self, seq: u64) -> Result<Option<[u8; 32]>> {
        // `seq` is the table's rowid: the blob is read in place, never copied whole.
        let blob = match self
            .conn
            .blob_open(rusqlite::MAIN_DB, "snapshots", "state", seq as i64, true)
        {
            Ok(blob) => blob,
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::Unknown => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let mut hasher = blake3::Hasher::new();
        let mut blob = std::io::BufReader::with_capacity(1 << 20, blob);
        std::io::copy(&mut blob, &mut hasher)
            .map_err(|e| Error::io("cannot read a snapshot".to_owned(), e))?;
        Ok(Some(*hasher.finalize().as_bytes()))
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq FROM snapshots ORDER BY seq")?;
        let seqs = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        Ok(seqs
            .map(|s| s.map(|s| s as u64))
            .collect::<rusqlite::Result<_>>()?)
    }

    fn reset_derived(&self) -> Result<()> {
        self.conn.execute_batch(
            "DROP TABLE IF EXISTS catalog; DROP TABLE IF EXISTS catalog_labels; DROP TABLE IF EXISTS sinks; \
             DELETE FROM snapshots;",
        )?;
        self.conn.execute_batch(log::CATALOG_SQL)?;
        self.conn.execute_batch(log::LISTS_SQL)?;
        self.conn.execute_batch(log::NO_NAME_INDEX_SQL)?;
        self.conn.execute_batch(log::SINKS_SQL)?;
        Ok(())
    }

    fn has_derived(&self) -> Result<bool> {
        let tables: i64 = self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('catalog', 'catalog_labels', 'sinks')",
            [],
            |r| r.get(0),
        )?;
        Ok(tables == 3)
    }

    fn verified_scan(
        &self,
        visit: &mut dyn FnMut(StoredEvent, crate::event::Event) -> Result<()>,
    ) -> Result<Head> {
        log::verified_scan(&self.path, visit)
    }

    /// `VACUUM INTO` reads inside one transaction (WAL readers never block writers), so the
    /// copy is the store at one instant; it must go into an empty file, created here 0600.
    fn backup_to(&self, path: &Path) -> Result<()> {
        crate::private_file::create(path, "ledger backup")?;
        let target = path
            .to_str()
            .ok_or_else(|| Error::invalid(format!("{} is not a UTF-8 path", path.display())))?;
        if let Err(e) = self.conn.execute("VACUUM INTO ?1", [target]) {
            Self::remove_files(path);
            return Err(e.into());
        }
        Ok(())
    }

    /// Move WAL frames into the database, whose freed pages `secure_delete` zeroes, so old
    /// wrapped keys do not linger on disk. Best effort: a concurrent reader can keep frames
    /// alive until it finishes.
    fn scrub(&self) {
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            tracing::debug!(error = %e, "checkpoint after key destruction did not complete");
        }
    }
}
