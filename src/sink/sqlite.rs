//! `sqlite:///path/sink.db`: the embedded default sink. Values are sealed at rest with the
//! ledger's sink seal key; metadata is plain JSON so the file can be inspected.
//!
//! One thread owns the connection. Writes queued while it commits are applied together in the
//! next transaction (group commit), so many writes in flight cost one fsync, not one each,
//! while every write still reports its own result only once it is durable.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};
use tokio::sync::oneshot;

use super::{object_name, Capabilities, DeleteMode, RecordMeta, Sink, SinkEntry, SinkRecord};
use crate::crypto::SinkSealKey;
use crate::error::{Error, Result};
use crate::SecretId;

/// `PRAGMA application_id` of sqlite sink files ("SLSK").
const APPLICATION_ID: i32 = 0x534c_534b;

/// Most writes committed in one transaction.
const MAX_GROUP: usize = 1000;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../schema/sink_sqlite/0001_objects.sql")),
        M::up(include_str!("../../schema/sink_sqlite/0002_sink_meta.sql")),
    ])
}

/// A sink in a local SQLite file.
pub struct SqliteSink {
    jobs: mpsc::Sender<Job>,
    /// Joined on drop (see `Drop`).
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
    prefix: String,
    key: SinkSealKey,
    max_concurrency: usize,
}

impl std::fmt::Debug for SqliteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSink")
            .field("path", &self.path)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Work for the connection's thread.
enum Job {
    Write(Write, oneshot::Sender<Result<()>>),
    Read(Box<dyn FnOnce(&Connection) + Send>),
}

/// One row change; values arrive already sealed.
enum Write {
    Put {
        name: String,
        id: SecretId,
        seq: u64,
        meta: String,
        sealed: Vec<u8>,
    },
    Delete {
        name: String,
        id: SecretId,
        seq: u64,
        how: DeleteMode,
    },
    Erase {
        name: String,
    },
}

impl Write {
    fn apply(&self, c: &Connection) -> rusqlite::Result<()> {
        match self {
            // Never let an older record overwrite a newer one or a later delete's tombstone.
            Write::Put { name, id, seq, meta, sealed } => c
                .prepare_cached(
                    "INSERT INTO objects (name, secret_id, seq, deleted, meta, sealed) VALUES (?1, ?2, ?3, 0, ?4, ?5)
                     ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, deleted = 0, meta = excluded.meta, sealed = excluded.sealed
                     WHERE excluded.seq >= objects.seq",
                )?
                .execute(params![name, id.as_bytes().as_slice(), *seq as i64, meta, sealed]),
            // A soft delete keeps the values (recoverable, like the backends' recovery windows).
            Write::Delete { name, id, seq, how: DeleteMode::Soft } => c
                .prepare_cached(
                    "INSERT INTO objects (name, secret_id, seq, deleted, meta, sealed) VALUES (?1, ?2, ?3, 1, '{}', x'')
                     ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, deleted = 1
                     WHERE excluded.seq >= objects.seq",
                )?
                .execute(params![name, id.as_bytes().as_slice(), *seq as i64]),
            // A purge wipes the values whatever the order: nothing may be read after it.
            Write::Delete { name, id, seq, how: DeleteMode::Purge } => c
                .prepare_cached(
                    "INSERT INTO objects (name, secret_id, seq, deleted, meta, sealed) VALUES (?1, ?2, ?3, 1, '{}', x'')
                     ON CONFLICT (name) DO UPDATE SET seq = max(objects.seq, excluded.seq), deleted = 1, meta = '{}', sealed = x''",
                )?
                .execute(params![name, id.as_bytes().as_slice(), *seq as i64]),
            Write::Erase { name } => c
                .prepare_cached("DELETE FROM objects WHERE name = ?1")?
                .execute([name]),
        }
        .map(|_| ())
    }
}

/// The connection is closed before the sink is gone. A process that exits right after (every
/// CLI command) would otherwise kill its thread mid-close: the WAL would stay behind, never
/// checkpointed into the file, and every later open would read all of it (up to the 4 MB
/// autocheckpoint) to rebuild its index.
impl Drop for SqliteSink {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop, which drops (closes) the connection.
        drop(std::mem::replace(&mut self.jobs, mpsc::channel().0));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The connection's thread: reads run as they come; consecutive writes share a transaction.
fn serve(conn: Connection, path: PathBuf, jobs: mpsc::Receiver<Job>) {
    let mut pending = None;
    loop {
        let job = match pending.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return, // the sink was dropped
            },
        };
        match job {
            Job::Read(read) => read(&conn),
            Job::Write(write, reply) => {
                let mut group = vec![(write, reply)];
                while group.len() < MAX_GROUP {
                    match jobs.try_recv() {
                        Ok(Job::Write(write, reply)) => group.push((write, reply)),
                        Ok(read) => {
                            pending = Some(read);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(&conn, &path, group);
            }
        }
    }
}

fn commit_group(conn: &Connection, path: &Path, group: Vec<(Write, oneshot::Sender<Result<()>>)>) {
    let purged = group.iter().any(|(w, _)| {
        matches!(
            w,
            Write::Delete {
                how: DeleteMode::Purge,
                ..
            } | Write::Erase { .. }
        )
    });
    let applied = (|| {
        let tx = conn.unchecked_transaction()?;
        let results: Vec<rusqlite::Result<()>> = group.iter().map(|(w, _)| w.apply(&tx)).collect();
        tx.commit()?;
        Ok::<_, rusqlite::Error>(results)
    })();
    match applied {
        Ok(results) => {
            for ((_, reply), result) in group.into_iter().zip(results) {
                let _ = reply.send(result.map_err(|e| db_error(path, e)));
            }
        }
        Err(e) => {
            let (message, temporary) = classify(path, &e);
            for (_, reply) in group {
                let _ = reply.send(Err(Error::sink("sqlite", message.clone(), temporary)));
            }
        }
    }
    if purged {
        // Purged ciphertext must not linger in WAL frames (secure_delete clears the pages).
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            tracing::debug!(error = %e, "sink checkpoint after a purge did not complete");
        }
    }
}

/// One sink file serves one ledger: opened with the key of `key.ledgers()` (its own id
/// first), the file records that ledger the first time and refuses any other from then on,
/// which would overwrite the seal key it keeps and mix two ledgers' objects. A file from
/// before this record is claimed only by a key that opens what it holds (or the seal key it
/// keeps, unchanged).
fn claim(conn: &Connection, path: &Path, key: &SinkSealKey) -> Result<()> {
    let Some(own) = key.ledgers().first() else {
        return Ok(());
    };
    let setting = |name: &str| -> Result<Option<Vec<u8>>> {
        conn.query_row("SELECT value FROM sink_meta WHERE key = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(|e| db_error(path, e))
    };
    let foreign = |whose: &str| {
        Error::invalid(format!(
            "{} is the sink file of another ledger{whose}: a sqlite sink file serves one ledger, \
             whose seal key it keeps; give this sink a file of its own",
            path.display()
        ))
    };
    match setting("ledger_id")? {
        Some(id) if key.ledgers().iter().any(|l| l.as_bytes() == id.as_slice()) => return Ok(()),
        Some(id) => return Err(foreign(&format!(" ({})", String::from_utf8_lossy(&id)))),
        None => {}
    }
    if setting("seal_key")?.is_some_and(|kept| Some(kept.as_slice()) != key.wrapped()) {
        let sample: Option<(Vec<u8>, i64, Vec<u8>)> = conn
            .query_row(
                "SELECT secret_id, seq, sealed FROM objects WHERE deleted = 0 AND length(sealed) > 0 LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| db_error(path, e))?;
        if let Some((id, seq, sealed)) = sample {
            let opens =
                crate::SecretId::from_slice(&id).is_ok_and(|id| key.open(&sealed, id, seq as u64).is_ok());
            if !opens {
                return Err(foreign(""));
            }
        }
    }
    conn.execute(
        "INSERT INTO sink_meta (key, value) VALUES ('ledger_id', ?1)",
        [own.as_bytes()],
    )
    .map_err(|e| db_error(path, e))?;
    Ok(())
}

/// Where a sink file keeps its ledger's master key as a KMS wrapped it ([`KeyEscrow`]).
///
/// [`KeyEscrow`]: crate::crypto::KeyEscrow
const ESCROW_KMS: &str = "master_key_kms";
const ESCROW_WRAPPED: &str = "master_key_wrapped";
const ESCROW_LEDGER: &str = "master_key_ledger_id";

fn unavailable(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::sink("sqlite", format!("{} is unavailable: {e}", path.display()), true)
}

fn classify(path: &Path, e: &rusqlite::Error) -> (String, bool) {
    use rusqlite::ErrorCode::*;
    let temporary = matches!(
        e.sqlite_error_code(),
        Some(
            DatabaseBusy
                | DatabaseLocked
                | CannotOpen
                | SystemIoFailure
                | DiskFull
                | NotADatabase
                | PermissionDenied
                | ReadOnly
        )
    );
    (format!("{}: {e}", path.display()), temporary)
}

fn db_error(path: &Path, e: rusqlite::Error) -> Error {
    let (message, temporary) = classify(path, &e);
    Error::sink("sqlite", message, temporary)
}

impl SqliteSink {
    /// Create a new sink file (mode 0600). Refuses an existing file.
    pub fn create(path: &Path) -> Result<()> {
        crate::private_file::create(path, "sink file")?;
        let mut conn = Connection::open(path).map_err(|e| db_error(path, e))?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(|e| db_error(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| db_error(path, e))?;
        migrations().to_latest(&mut conn).map_err(Error::Migration)?;
        Ok(())
    }

    /// Check that a file is a sledger sqlite sink file, without changing it.
    pub fn check_file(path: &Path) -> Result<()> {
        if !path.exists() {
            return Err(unavailable(path, "the file is missing"));
        }
        let foreign = || {
            Error::InvalidInput(format!(
                "{} exists and is not a sledger sqlite sink file",
                path.display()
            ))
        };
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|_| foreign())?;
        let app_id: i32 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|_| foreign())?;
        if app_id != APPLICATION_ID {
            return Err(foreign());
        }
        Ok(())
    }

    /// One of a sink file's own settings (`sink_meta`), read without changing the file.
    fn kept(path: &Path, setting: &str) -> Result<Option<Vec<u8>>> {
        Self::check_file(path)?;
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| db_error(path, e))?;
        Ok(conn
            .query_row("SELECT value FROM sink_meta WHERE key = ?1", [setting], |r| {
                r.get(0)
            })
            .optional()
            .ok()
            .flatten())
    }

    /// The ledger a sink file serves (the first that opened it with its own key), if recorded.
    pub fn owner(path: &Path) -> Result<Option<String>> {
        Ok(Self::kept(path, "ledger_id")?.map(|id| String::from_utf8_lossy(&id).into_owned()))
    }

    /// The master key a sink file keeps as its ledger's KMS wrapped it, unwrapped by `kms`,
    /// with that KMS; `None` when the file keeps none (its ledger's key was in a file, or an
    /// older sledger wrote it). The KMS is the caller's to name, never taken from the file:
    /// whoever could write the file could otherwise send the caller's KMS credentials (a
    /// Vault token) to a server of theirs. The file's own record of it is only named, when
    /// `kms` is `None`, in the error that asks for it.
    pub fn escrowed_master(
        path: &Path,
        kms: Option<&str>,
    ) -> Result<Option<(crate::crypto::MasterKey, Box<dyn crate::keys::KeyWrapper>)>> {
        let text = |setting: &str| -> Result<Option<String>> {
            Self::kept(path, setting)?
                .map(|bytes| {
                    String::from_utf8(bytes)
                        .map_err(|_| Error::Corrupt(format!("{}: its {setting} is not text", path.display())))
                })
                .transpose()
        };
        let (Some(uri), Some(wrapped), Some(ledger_id)) = (
            text(ESCROW_KMS)?,
            Self::kept(path, ESCROW_WRAPPED)?,
            text(ESCROW_LEDGER)?,
        ) else {
            return Ok(None);
        };
        let Some(kms) = kms else {
            return Err(Error::KeyUnavailable(format!(
                "{} keeps its lost ledger's master key as the KMS key {uri:?} wrapped it: once you have \
                 checked that this is your KMS key, recover with --master-key {uri}",
                path.display()
            )));
        };
        let kms = crate::keys::kms(kms)?;
        let master = kms.unwrap(&wrapped, &ledger_id)?;
        Ok(Some((master, kms)))
    }

    /// The seal key a sink file keeps, unwrapped with `master`: a sink whose ledger is lost
    /// opens with the master key alone.
    pub fn seal_key(path: &Path, master: &crate::crypto::MasterKey) -> Result<SinkSealKey> {
        let wrapped = Self::kept(path, "seal_key")?.ok_or_else(|| {
            Error::invalid(format!(
                "{} does not keep its seal key (it was last written by an older sledger): its values \
                 open only with the ledger's copy of that key",
                path.display()
            ))
        })?;
        master.unwrap_sink_seal_key(&wrapped).map_err(|_| Error::WrongKey)
    }

    /// Open an existing sink file. A missing file is an unavailable sink, never silently a new
    /// empty one (that would look like a sink that lost everything).
    pub fn open(path: &Path, prefix: &str, key: SinkSealKey, max_concurrency: usize) -> Result<Self> {
        if !path.is_file() {
            return Err(unavailable(path, "the file is missing"));
        }
        let mut conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| db_error(path, e))?;
        let app_id: i32 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|e| db_error(path, e))?;
        if app_id != APPLICATION_ID {
            return Err(unavailable(path, "it is not a sledger sqlite sink file"));
        }
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| db_error(path, e))?;
        for (pragma, value) in [("synchronous", "FULL"), ("secure_delete", "ON")] {
            conn.pragma_update(None, pragma, value)
                .map_err(|e| db_error(path, e))?;
        }
        migrations().to_latest(&mut conn).map_err(Error::Migration)?;
        claim(&conn, path, &key)?;
        if let Some(wrapped) = key.wrapped() {
            // Kept current (a key rotation re-wraps it) without a write when it already is.
            let keep = |setting: &str, value: &[u8]| {
                conn.execute(
                    "INSERT INTO sink_meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value != excluded.value",
                    rusqlite::params![setting, value],
                )
                .map_err(|e| db_error(path, e))
            };
            keep("seal_key", wrapped)?;
            match key.escrow() {
                Some(escrow) => {
                    keep(ESCROW_KMS, escrow.kms.as_bytes())?;
                    keep(ESCROW_WRAPPED, &escrow.wrapped_master)?;
                    keep(ESCROW_LEDGER, escrow.ledger_id.as_bytes())?;
                }
                // The ledger's key left its KMS (`key migrate --to file://`).
                None => {
                    conn.execute(
                        "DELETE FROM sink_meta WHERE key IN (?1, ?2, ?3)",
                        [ESCROW_KMS, ESCROW_WRAPPED, ESCROW_LEDGER],
                    )
                    .map_err(|e| db_error(path, e))?;
                }
            }
        }
        let (jobs, queue) = mpsc::channel();
        let thread_path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("sqlite-sink".into())
            .spawn(move || serve(conn, thread_path, queue))
            .map_err(|e| unavailable(path, e))?;
        Ok(SqliteSink {
            jobs,
            thread: Some(thread),
            path: path.to_path_buf(),
            prefix: prefix.to_owned(),
            key,
            max_concurrency,
        })
    }

    /// Run a query on the connection's thread.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let path = self.path.clone();
        let job = Job::Read(Box::new(move |c| {
            let _ = reply.send(query(c).map_err(|e| db_error(&path, e)));
        }));
        self.jobs
            .send(job)
            .map_err(|_| unavailable(&self.path, "its connection thread stopped"))?;
        answer
            .await
            .map_err(|_| unavailable(&self.path, "its connection thread stopped"))?
    }

    /// Queue a write; it resolves once its transaction is committed.
    async fn write(&self, write: Write) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Write(write, reply))
            .map_err(|_| unavailable(&self.path, "its connection thread stopped"))?;
        answer
            .await
            .map_err(|_| unavailable(&self.path, "its connection thread stopped"))?
    }
}

#[async_trait]
impl Sink for SqliteSink {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::unlimited(self.max_concurrency)
    }

    async fn put(&self, record: &SinkRecord) -> Result<()> {
        self.write(Write::Put {
            name: object_name(&self.prefix, record.id),
            id: record.id,
            seq: record.seq,
            meta: serde_json::to_string(&record.meta()).expect("record metadata serialises"),
            sealed: self.key.seal(&record.values, record.id, record.seq),
        })
        .await
    }

    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        let name = object_name(&self.prefix, id);
        let row: Option<(i64, String, Vec<u8>)> = self
            .read(move |c| {
                c.prepare_cached("SELECT seq, meta, sealed FROM objects WHERE name = ?1 AND deleted = 0")?
                    .query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .await?;
        let Some((seq, meta, sealed)) = row else {
            return Ok(None);
        };
        let meta: RecordMeta = serde_json::from_str(&meta).map_err(|e| {
            Error::sink(
                "sqlite",
                format!("object of {id} has unreadable metadata: {e}"),
                false,
            )
        })?;
        if seq as u64 != meta.seq {
            // The column writes compare against: raised, it shadows every later write.
            return Err(Error::drifted(
                "sqlite",
                &format!("object of {id}"),
                &format!("its seq column says {seq}, its record {}", meta.seq),
            ));
        }
        let values = self.key.open(&sealed, id, meta.seq).map_err(|_| {
            Error::sink(
                "sqlite",
                format!("object of {id} does not decrypt with this ledger's sink key"),
                false,
            )
        })?;
        Ok(Some(SinkRecord::from_meta(meta, values)))
    }

    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        self.write(Write::Delete {
            name: object_name(&self.prefix, id),
            id,
            seq,
            how,
        })
        .await
    }

    async fn erase(&self, id: SecretId) -> Result<()> {
        self.write(Write::Erase {
            name: object_name(&self.prefix, id),
        })
        .await
    }

    async fn list(&self) -> Result<Vec<SinkEntry>> {
        let prefix = self.prefix.clone();
        let rows: Vec<(String, Vec<u8>, i64)> = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT name, secret_id, seq FROM objects WHERE deleted = 0 AND substr(name, 1, length(?1)) = ?1",
                )?;
                let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, id, seq)| {
                let id = SecretId::from_slice(&id).ok()?;
                (name == object_name(&self.prefix, id)).then_some(SinkEntry { id, seq: seq as u64 })
            })
            .collect())
    }

    async fn health(&self) -> Result<()> {
        if !self.path.is_file() {
            return Err(unavailable(&self.path, "the file is missing"));
        }
        self.read(|c| {
            c.query_row("SELECT count(*) FROM objects", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
        })
        .await
    }
}

/// `sqlite:///absolute/path/sink.db`.
pub(super) fn from_url(parts: &mut super::url::UrlParts<'_>) -> crate::Result<super::Backend> {
    Ok(super::Backend::Sqlite {
        path: parts.absolute_path("sqlite")?,
        prefix: parts.prefix.clone(),
        max_concurrency: parts.concurrency(64),
    })
}
