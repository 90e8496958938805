//! `sqlite:///path/sink.db`: the embedded default sink. Values are sealed at rest with the
//! ledger's sink seal key; metadata is plain JSON so the file can be inspected.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};

use super::{object_name, Capabilities, DeleteMode, RecordMeta, Sink, SinkEntry, SinkRecord};
use crate::crypto::SinkSealKey;
use crate::error::{Error, Result};
use crate::SecretId;

/// `PRAGMA application_id` of sqlite sink files ("SLSK").
const APPLICATION_ID: i32 = 0x534c_534b;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(include_str!(
        "../../schema/sink_sqlite/0001_objects.sql"
    ))])
}

/// A sink in a local SQLite file.
pub struct SqliteSink {
    conn: Arc<Mutex<Connection>>,
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

fn unavailable(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::sink("sqlite", format!("{} is unavailable: {e}", path.display()), true)
}

fn db_error(path: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::*;
    let temporary = matches!(
        e.sqlite_error_code(),
        Some(
            DatabaseBusy
                | DatabaseLocked
                | CannotOpen
                | SystemIoFailure
                | NotADatabase
                | PermissionDenied
                | ReadOnly
        )
    );
    Error::sink("sqlite", format!("{}: {e}", path.display()), temporary)
}

impl SqliteSink {
    /// Create a new sink file (mode 0600). Refuses an existing file.
    pub fn create(path: &Path) -> Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::WouldOverwrite {
                what: "sink file",
                path: path.to_path_buf(),
            },
            _ => Error::io(format!("cannot create sink file {}", path.display()), e),
        })?;
        let mut conn = Connection::open(path).map_err(|e| db_error(path, e))?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(|e| db_error(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| db_error(path, e))?;
        migrations().to_latest(&mut conn).map_err(Error::Migration)?;
        Ok(())
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
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| db_error(path, e))?;
        migrations().to_latest(&mut conn).map_err(Error::Migration)?;
        Ok(SqliteSink {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            prefix: prefix.to_owned(),
            key,
            max_concurrency,
        })
    }

    /// Run `f` on the connection on tokio's blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        let path2 = path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(|e| db_error(&path, e))
        })
        .await
        .map_err(|e| unavailable(&path2, e))?
    }
}

#[async_trait]
impl Sink for SqliteSink {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_bytes: usize::MAX,
            soft_delete: true,
            max_concurrency: self.max_concurrency,
        }
    }

    async fn put(&self, record: &SinkRecord) -> Result<()> {
        let name = object_name(&self.prefix, record.id);
        let meta = serde_json::to_string(&record.meta()).expect("record metadata serialises");
        let sealed = self.key.seal(&record.values, record.id, record.seq);
        let (id, seq) = (record.id, record.seq as i64);
        self.with(move |c| {
            // Never let an older record overwrite a newer one (two projectors racing).
            c.prepare_cached(
                "INSERT INTO objects (name, secret_id, seq, deleted, meta, sealed) VALUES (?1, ?2, ?3, 0, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, deleted = 0, meta = excluded.meta, sealed = excluded.sealed
                 WHERE excluded.seq >= objects.seq",
            )?
            .execute(params![name, id.as_bytes().as_slice(), seq, meta, sealed])
            .map(|_| ())
        })
        .await
    }

    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        let name = object_name(&self.prefix, id);
        let row: Option<(String, Vec<u8>)> = self
            .with(move |c| {
                c.prepare_cached("SELECT meta, sealed FROM objects WHERE name = ?1 AND deleted = 0")?
                    .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .await?;
        let Some((meta, sealed)) = row else {
            return Ok(None);
        };
        let meta: RecordMeta = serde_json::from_str(&meta).map_err(|e| {
            Error::sink(
                "sqlite",
                format!("object of {id} has unreadable metadata: {e}"),
                false,
            )
        })?;
        let values = self.key.open(&sealed, id, meta.seq).map_err(|_| {
            Error::sink(
                "sqlite",
                format!("object of {id} does not decrypt with this ledger's sink key"),
                false,
            )
        })?;
        Ok(Some(SinkRecord::from_meta(meta, values)))
    }

    async fn delete(&self, id: SecretId, how: DeleteMode) -> Result<()> {
        let name = object_name(&self.prefix, id);
        self.with(move |c| {
            let sql = match how {
                DeleteMode::Soft => "UPDATE objects SET deleted = 1 WHERE name = ?1",
                DeleteMode::Purge => "DELETE FROM objects WHERE name = ?1",
            };
            c.prepare_cached(sql)?.execute([name]).map(|_| ())
        })
        .await
    }

    async fn list(&self) -> Result<Vec<SinkEntry>> {
        let prefix = self.prefix.clone();
        let rows: Vec<(String, Vec<u8>, i64)> = self
            .with(move |c| {
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
        self.with(|c| {
            c.query_row("SELECT count(*) FROM objects", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
        })
        .await
    }
}
