//! The SQLite event log: schema migrations, opening checks, append and scan.
//!
//! All SQL lives in `schema/`; this file only names statements over those tables.

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use rusqlite_migration::{Migrations, M};

use super::{ChainCheck, EventLog, Head};
use crate::error::{Error, Result};
use crate::event::{Event, StoredEvent};
use crate::SecretId;

/// `PRAGMA application_id` of every sledger ledger ("SLDG").
pub const APPLICATION_ID: i32 = 0x534c_4447;

/// SQL of the catalog tables, re-run when the catalog is rebuilt.
pub(crate) const CATALOG_SQL: &str = include_str!("../../schema/ledger/0003_catalog.sql");
/// SQL of the sink tables (the derived `sinks` is re-created when the catalog is rebuilt).
pub(crate) const SINKS_SQL: &str = include_str!("../../schema/ledger/0004_sinks.sql");
/// SQL of the catalog's list indexes and label rows, re-run with [`CATALOG_SQL`].
pub(crate) const LISTS_SQL: &str = include_str!("../../schema/ledger/0007_catalog_lists.sql");
/// SQL dropping the catalog's name index, re-run after [`CATALOG_SQL`] (which creates it).
pub(crate) const NO_NAME_INDEX_SQL: &str =
    include_str!("../../schema/ledger/0011_catalog_without_name_index.sql");

/// The ledger's schema, one migration per numbered file of `schema/ledger/`, in order.
const SCHEMA: [&str; 11] = [
    include_str!("../../schema/ledger/0001_events.sql"),
    include_str!("../../schema/ledger/0002_keys_and_settings.sql"),
    CATALOG_SQL,
    SINKS_SQL,
    include_str!("../../schema/ledger/0005_tokens_and_access_log.sql"),
    include_str!("../../schema/ledger/0006_event_macs.sql"),
    LISTS_SQL,
    include_str!("../../schema/ledger/0008_event_filters.sql"),
    include_str!("../../schema/ledger/0009_checkpoint_macs.sql"),
    include_str!("../../schema/ledger/0010_projected_by.sql"),
    NO_NAME_INDEX_SQL,
];

fn migrations() -> Migrations<'static> {
    Migrations::new(SCHEMA.iter().map(|sql| M::up(sql)).collect())
}

/// The newest schema version this build knows.
pub fn schema_version() -> i64 {
    SCHEMA.len() as i64
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Purged data keys and keys wrapped under a retired master key must not survive in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Group commit puts each request in a savepoint, whose statement journal would otherwise
    // be a temp file created per request.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// Create a new ledger file (mode 0600) with the current schema. Refuses an existing file.
pub fn create(path: &Path) -> Result<Connection> {
    crate::private_file::create(path, "ledger")?;
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    migrations().to_latest(&mut conn).map_err(Error::Migration)?;
    Ok(conn)
}

/// Whether this user may use the ledger at `path` as SQLite needs to (checked by path, with
/// access(2): no descriptor of the ledger is opened, see `open`). Without this, SQLite's
/// refusal surfaces as "unable to open database file" or as a file that is "not a ledger".
fn check_access(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let may = |p: &Path, mode: libc::c_int| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), mode) } == 0)
    };
    let denied = |why: String| Error::io(why, std::io::Error::from(std::io::ErrorKind::PermissionDenied));
    if !may(path, libc::R_OK | libc::W_OK) {
        return Err(denied(format!(
            "cannot open ledger {}: this user may not read and write it; run sledger as the user that owns it, or fix its permissions",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !may(dir, libc::W_OK | libc::X_OK) {
        return Err(denied(format!(
            "cannot open ledger {}: its directory {} is not writable by this user, and SQLite keeps \
             the ledger's -wal and -shm files beside it; make the directory writable, or move the ledger",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Open an existing ledger, checking that it is one and that this build can read it;
/// older schemas are migrated forward.
pub fn open(path: &Path) -> Result<Connection> {
    let not_a_ledger = |reason: &str| Error::NotALedger {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    // No file descriptor of the ledger may be opened here outside SQLite: closing any
    // descriptor of a file drops every POSIX lock this process holds on it, those of the other
    // connections this process has open included (a server, the projector service), and a WAL
    // database whose locks vanish fails with I/O errors or is checkpointed under its readers.
    // So the checks use the file's metadata and SQLite itself.
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::LedgerNotFound {
            path: path.to_path_buf(),
        },
        _ => Error::io(format!("cannot open ledger {}", path.display()), e),
    })?;
    if meta.is_dir() {
        return Err(not_a_ledger("it is a directory"));
    }
    if meta.len() < 100 {
        return Err(not_a_ledger("it is too short to be a database"));
    }
    check_access(path)?;
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            // A file that starts like a database but is cut short or overwritten in places.
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => Error::Corrupt(format!(
                "{} is damaged (SQLite: {e}), for example cut short; put back a copy from \
                 `sledger ledger backup`, or rebuild it with `sledger recover --from` a sink",
                path.display()
            )),
            _ => not_a_ledger("it is not an SQLite database"),
        })?;
    if app_id != APPLICATION_ID {
        return Err(not_a_ledger("it is an SQLite database of some other program"));
    }
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > schema_version() {
        return Err(Error::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: schema_version(),
        });
    }
    configure(&conn)?;
    if found < schema_version() {
        migrations().to_latest(&mut conn).map_err(Error::Migration)?;
    }
    Ok(conn)
}

/// The last event's (seq, hash, recorded_at), or [`Head::EMPTY`].
pub fn head(conn: &Connection) -> Result<Head> {
    let row = conn
        .prepare_cached("SELECT seq, hash, recorded_at FROM events ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?))
        })
        .optional()?;
    Ok(match row {
        None => Head::EMPTY,
        Some((seq, hash, recorded_at)) => Head {
            seq: seq as u64,
            hash: hash.try_into().map_err(|_| Error::ChainBroken {
                seq: seq as u64,
                reason: "the stored hash is not 32 bytes".into(),
            })?,
            recorded_at,
        },
    })
}

/// Insert one chained row (inside the caller's write transaction).
pub fn insert(conn: &Connection, e: &StoredEvent) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (seq, event_id, recorded_at, actor, secret_id, event_type, event_version, payload, prev_hash, hash, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        e.seq as i64,
        e.event_id.as_bytes().as_slice(),
        e.recorded_at,
        e.actor,
        e.secret_id.as_ref().map(|id| id.as_bytes().as_slice()),
        e.event_type,
        e.event_version,
        e.payload,
        e.prev_hash.as_slice(),
        e.hash.as_slice(),
        e.mac.as_ref().map(|m| m.as_slice()),
    ])?;
    Ok(())
}

pub(crate) const SELECT_EVENTS: &str = "SELECT seq, event_id, recorded_at, actor, secret_id, event_type, event_version, payload, prev_hash, hash, mac FROM events";

/// Read a row without trusting its types: a tampered row is a broken chain, not a crash.
fn read_row(r: &Row<'_>) -> Result<StoredEvent> {
    let seq: i64 = r.get(0)?;
    let seq = seq as u64;
    let broken = |what: &str| Error::ChainBroken {
        seq,
        reason: format!("{what} is malformed"),
    };
    // Exact storage types: a BLOB rewritten as TEXT hashes the same, but hides from lookups.
    let bytes = |i: usize, what: &str| -> Result<Vec<u8>> {
        match r.get_ref(i)? {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            _ => Err(broken(what)),
        }
    };
    let text = |i: usize, what: &str| -> Result<String> {
        match r.get_ref(i)? {
            ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(|_| broken(what)),
            _ => Err(broken(what)),
        }
    };
    let int = |i: usize, what: &str| -> Result<i64> {
        match r.get_ref(i)? {
            ValueRef::Integer(v) => Ok(v),
            _ => Err(broken(what)),
        }
    };
    let fixed =
        |i: usize, what: &str| -> Result<[u8; 32]> { bytes(i, what)?.try_into().map_err(|_| broken(what)) };
    let event_id = uuid::Uuid::from_slice(&bytes(1, "event_id")?).map_err(|_| broken("event_id"))?;
    let secret_id = match r.get_ref(4)? {
        ValueRef::Null => None,
        _ => Some(SecretId::from_slice(&bytes(4, "secret_id")?).map_err(|_| broken("secret_id"))?),
    };
    Ok(StoredEvent {
        seq,
        event_id,
        recorded_at: int(2, "recorded_at")?,
        actor: text(3, "actor")?,
        secret_id,
        event_type: text(5, "event_type")?,
        event_version: u32::try_from(int(6, "event_version")?).map_err(|_| broken("event_version"))?,
        payload: bytes(7, "payload")?,
        prev_hash: fixed(8, "prev_hash")?,
        hash: fixed(9, "hash")?,
        mac: match r.get_ref(10)? {
            ValueRef::Null => None,
            _ => Some(fixed(10, "mac")?),
        },
    })
}

pub(crate) fn visit_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    visit: &mut dyn FnMut(StoredEvent) -> Result<bool>,
) -> Result<()> {
    let mut rows = stmt.query(params)?;
    while let Some(r) = rows.next()? {
        if !visit(read_row(r)?)? {
            break;
        }
    }
    Ok(())
}

/// The events `query` selects (see [`crate::store::Store::scan_events`]).
pub fn scan_events(
    conn: &Connection,
    query: &crate::store::EventQuery,
    visit: &mut dyn FnMut(StoredEvent) -> Result<bool>,
) -> Result<()> {
    let clamp = |seq: u64| seq.min(i64::MAX as u64) as i64;
    let (from, to) = (clamp(query.from), clamp(query.to));
    let secret = query.secret.as_ref().map(|id| id.as_bytes().as_slice());
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&from, &to];
    let mut sql = format!("{SELECT_EVENTS} WHERE seq >= ?1 AND seq <= ?2");
    for (column, value) in [
        ("secret_id", secret.as_ref().map(|s| s as &dyn rusqlite::ToSql)),
        ("actor", query.actor.as_ref().map(|a| a as &dyn rusqlite::ToSql)),
        (
            "event_type",
            query.event_type.as_ref().map(|t| t as &dyn rusqlite::ToSql),
        ),
    ] {
        if let Some(value) = value {
            values.push(value);
            sql.push_str(&format!(" AND {column} = ?{}", values.len()));
        }
    }
    sql.push_str(if query.newest_first {
        " ORDER BY seq DESC"
    } else {
        " ORDER BY seq"
    });
    let mut stmt = conn.prepare_cached(&sql)?;
    visit_rows(&mut stmt, values.as_slice(), visit)
}

/// Events of one secret, in seq order, up to `to`.
pub fn scan_secret(
    conn: &Connection,
    secret: SecretId,
    to: u64,
    visit: &mut dyn FnMut(StoredEvent) -> Result<bool>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT_EVENTS} WHERE secret_id = ?1 AND seq >= 1 AND seq <= ?2 ORDER BY seq"
    ))?;
    visit_rows(
        &mut stmt,
        params![secret.as_bytes().as_slice(), to.min(i64::MAX as u64) as i64],
        visit,
    )
}

/// One event by seq.
pub fn get(conn: &Connection, seq: u64) -> Result<Option<StoredEvent>> {
    let mut found = None;
    let mut stmt = conn.prepare_cached(&format!("{SELECT_EVENTS} WHERE seq = ?1"))?;
    visit_rows(&mut stmt, params![seq as i64], &mut |e| {
        found = Some(e);
        Ok(false)
    })?;
    Ok(found)
}

/// The seq of the last event recorded at or before `at` (0 if none).
///
/// `recorded_at` never decreases along seq (appends use max(previous, now) and `verify` checks
/// it), so this is a binary search over seq: about 20 point reads for a million events.
pub fn seq_at_time(conn: &Connection, at: crate::event::Millis) -> Result<u64> {
    let mut stmt = conn.prepare_cached("SELECT recorded_at FROM events WHERE seq = ?1")?;
    let mut time_of = |seq: u64| -> Result<crate::event::Millis> {
        stmt.query_row([seq as i64], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::ChainBroken {
                seq,
                reason: "event is missing".into(),
            })
    };
    let (mut lo, mut hi) = (0u64, head(conn)?.seq); // invariant: time_of(lo) <= at < time_of(hi + 1)
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if time_of(mid)? <= at {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// The SQLite event log seen through [`EventLog`].
pub struct SqliteLog<'c>(pub &'c Connection);

impl EventLog for SqliteLog<'_> {
    fn head(&self) -> Result<Head> {
        head(self.0)
    }

    fn scan(&self, from: u64, to: u64, visit: &mut dyn FnMut(StoredEvent) -> Result<bool>) -> Result<()> {
        let mut stmt = self.0.prepare_cached(&format!(
            "{SELECT_EVENTS} WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq"
        ))?;
        visit_rows(
            &mut stmt,
            params![from.min(i64::MAX as u64) as i64, to.min(i64::MAX as u64) as i64],
            visit,
        )
    }
}

/// Read the whole log on a second thread, checking the chain there, and hand each verified
/// event, decoded, to `visit` on this thread: reading and hashing overlap with decoding and
/// folding. (Decoding stays on this thread: memory freed on another thread than the one that
/// allocated it costs more than the decode itself.)
/// Returns the verified head. The reader uses its own connection and one read transaction,
/// so the head it checks against and the rows it reads are the same snapshot.
pub fn verified_scan(path: &Path, visit: &mut dyn FnMut(StoredEvent, Event) -> Result<()>) -> Result<Head> {
    const BATCH: usize = 4096;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<StoredEvent>>(4);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<Head> {
            let mut conn = open(path)?;
            let snapshot = conn.transaction()?;
            let total = head(&snapshot)?.seq;
            // Rows outside 1..=head (seq 0, negative) are invisible to a scan from 1: count them.
            let (rows, first): (i64, Option<i64>) =
                snapshot.query_row("SELECT count(*), min(seq) FROM events", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            if let Some(first) = first.filter(|&f| f < 1) {
                return Err(Error::ChainBroken {
                    seq: first.max(0) as u64,
                    reason: format!("an event has seq {first}"),
                });
            }

            let mut chain = ChainCheck::default();
            let mut batch = Vec::with_capacity(BATCH);
            let scanned = SqliteLog(&snapshot).scan(1, u64::MAX, &mut |e| {
                chain.check(&e)?;
                batch.push(e);
                if batch.len() == BATCH {
                    // A closed channel means the consumer stopped on an error of its own.
                    return Ok(tx
                        .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .is_ok());
                }
                Ok(true)
            });
            // Events before a break are still handed over: they are verified, and the consumer
            // may find an earlier problem in them.
            let _ = tx.send(batch);
            let head = scanned.and_then(|_| chain.finish(total))?;
            if rows as u64 != total {
                return Err(Error::ChainBroken {
                    seq: 1,
                    reason: format!(
                        "{rows} events are stored but the chain from 1 to {total} holds only {total}"
                    ),
                });
            }
            Ok(head)
        });
        let mut consumed: Result<()> = Ok(());
        for batch in rx.iter() {
            let decoded = batch.into_iter().try_for_each(|stored| {
                let event = stored.decode_in_chain()?;
                visit(stored, event)
            });
            if let Err(e) = decoded {
                consumed = Err(e);
                break;
            }
        }
        drop(rx);
        let read = reader.join().expect("the log reader thread does not panic");
        // The consumer only ever sees events before any break the reader found, so its error
        // (if any) is the first one.
        consumed?;
        read
    })
}
