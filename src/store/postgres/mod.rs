//! The PostgreSQL store (DESIGN §13): the ledger's tables in a schema `sledger` of a database
//! named by a `postgres://` URL, schema in `schema/postgres/`.
//!
//! - Write transactions take one transaction-scoped advisory lock before anything else, so the
//!   head read inside one is the head its commit extends, across connections and servers:
//!   seqs stay gap-free and the chain linear, like SQLite's `BEGIN IMMEDIATE`.
//! - A commit whose reply is lost (the connection dropped at COMMIT) is resolved by looking up
//!   the event ids it appended on a new connection: it is reported as done if it landed, and
//!   as a temporary failure (safe to retry) if it did not.
//! - Scans read pages of rows and hand them over between queries, so a visitor may call the
//!   store again and no result set is held open.
//! - Credentials never come from the URL (a URL with a password is refused): `PGPASSWORD`, or
//!   the password file (`PGPASSFILE`, else `~/.pgpass`, ignored unless owner-only) as libpq
//!   reads them. TLS is rustls with the system's roots (`sslmode=require` insists on it).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement, ToStatement};

use super::{EventQuery, ListVisit, Parked, Rewrap, Setting, SinkProgress, Store, Visit};
use crate::access_log::AccessEntry;
use crate::catalog::{ListQuery, SecretMeta, SinkConfig};
use crate::error::{Error, Result};
use crate::event::{Millis, StoredEvent};
use crate::log::{ChainCheck, Head};
use crate::SecretId;

mod connection;
mod writes;

use connection::*;
pub use connection::{watch_appends, PgUrl};
use writes::{OwnedParams, Wire, Write};

const SCHEMA: &[&str] = &[include_str!("../../../schema/postgres/0001_ledger.sql")];

/// The advisory lock every write transaction holds ("SLDG" and "LOG!").
const WRITE_LOCK: i64 = 0x534c_4447_4c4f_4721;

/// The first key of the session advisory locks that make one writer per sink ("SLDH"); the
/// second is the hash of the sink's name.
const SINK_LOCKS: i32 = 0x534c_4448;

/// The channel every commit that appended notifies (LISTEN/NOTIFY).
const APPENDED_CHANNEL: &str = "sledger_appended";

/// How long a commit whose reply was lost waits for the database to say whether it landed.
const RESOLVE_COMMIT_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Rows read per query of a scan.
const PAGE: i64 = 1000;

const HEAD: &str = "SELECT seq, hash, recorded_at FROM events ORDER BY seq DESC LIMIT 1";

const SETTINGS: &str = "SELECT key, value, int_value FROM ledger_meta ORDER BY key";

const SINKS: &str = "SELECT name, url, role, added_seq FROM sinks ORDER BY name";

const SELECT_EVENTS: &str = "SELECT seq, event_id, recorded_at, actor, secret_id, event_type, \
     event_version, payload, prev_hash, hash, mac FROM events";

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// A held write prepared to go over the wire (see [`writes`]).
enum Deferred {
    /// Transaction control, in the simple protocol.
    Command(String),
    Statement(Statement, OwnedParams),
}

impl Deferred {
    async fn send(&self, client: &tokio_postgres::Client) -> PgResult<()> {
        match self {
            Deferred::Command(sql) => client.batch_execute(sql).await,
            Deferred::Statement(statement, params) => {
                let params: Params<'_> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
                client.execute(statement, &params).await.map(drop)
            }
        }
    }
}

/// Where the write transaction's savepoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Savepoint {
    None,
    /// Not sent yet: it stands before this many held writes. Undoing it drops them unsent.
    Held(usize),
    Sent,
}

/// What a write transaction reads once and keeps: while it holds the write lock nobody else
/// moves the head or changes a setting, so each costs one round trip per transaction, not one
/// per call.
#[derive(Clone, Default)]
struct Held {
    /// Loaded together on first use.
    loaded: Option<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    head: Head,
    settings: BTreeMap<String, Setting>,
    sinks: BTreeMap<String, SinkConfig>,
}

fn clamp(seq: u64) -> i64 {
    seq.min(i64::MAX as u64) as i64
}

fn secret_id(bytes: &[u8], what: &str) -> Result<SecretId> {
    SecretId::from_slice(bytes).map_err(|_| Error::Corrupt(format!("{what} is not a UUID")))
}

fn read_event(r: &Row) -> Result<StoredEvent> {
    let seq = r.try_get::<_, i64>(0)? as u64;
    let broken = |what: &str| Error::ChainBroken {
        seq,
        reason: format!("{what} is malformed"),
    };
    let fixed =
        |bytes: Vec<u8>, what: &str| -> Result<[u8; 32]> { bytes.try_into().map_err(|_| broken(what)) };
    let event_id: Vec<u8> = r.try_get(1)?;
    let secret: Option<Vec<u8>> = r.try_get(4)?;
    Ok(StoredEvent {
        seq,
        event_id: uuid::Uuid::from_slice(&event_id).map_err(|_| broken("event_id"))?,
        recorded_at: r.try_get(2)?,
        actor: r.try_get(3)?,
        secret_id: secret
            .map(|s| SecretId::from_slice(&s).map_err(|_| broken("secret_id")))
            .transpose()?,
        event_type: r.try_get(5)?,
        event_version: u32::try_from(r.try_get::<_, i32>(6)?).map_err(|_| broken("event_version"))?,
        payload: r.try_get(7)?,
        prev_hash: fixed(r.try_get(8)?, "prev_hash")?,
        hash: fixed(r.try_get(9)?, "hash")?,
        mac: r
            .try_get::<_, Option<Vec<u8>>>(10)?
            .map(|m| fixed(m, "mac"))
            .transpose()?,
    })
}

fn read_head(rows: &[Row]) -> Result<Head> {
    let Some(row) = rows.first() else {
        return Ok(Head::EMPTY);
    };
    let seq = row.try_get::<_, i64>(0)? as u64;
    Ok(Head {
        seq,
        hash: row
            .try_get::<_, Vec<u8>>(1)?
            .try_into()
            .map_err(|_| Error::ChainBroken {
                seq,
                reason: "the stored hash is not 32 bytes".into(),
            })?,
        recorded_at: row.try_get(2)?,
    })
}

fn read_sinks(rows: &[Row]) -> Result<BTreeMap<String, SinkConfig>> {
    let mut sinks = BTreeMap::new();
    for r in rows {
        let name: String = r.try_get(0)?;
        let role: String = r.try_get(2)?;
        sinks.insert(
            name.clone(),
            SinkConfig {
                name,
                url: r.try_get(1)?,
                role: role.parse().map_err(Error::Corrupt)?,
                added_seq: r.try_get::<_, i64>(3)? as u64,
            },
        );
    }
    Ok(sinks)
}

fn read_settings(rows: &[Row]) -> Result<Vec<(String, Setting)>> {
    rows.iter()
        .map(|r| {
            let value = match (
                r.try_get::<_, Option<Vec<u8>>>(1)?,
                r.try_get::<_, Option<i64>>(2)?,
            ) {
                (Some(bytes), _) => Setting::Bytes(bytes),
                (None, Some(number)) => Setting::Int(number),
                (None, None) => return Err(Error::Corrupt("a ledger setting has no value".into())),
            };
            Ok((r.try_get(0)?, value))
        })
        .collect()
}

/// A ledger's store in a PostgreSQL database: one connection, reconnected when it was lost
/// (between transactions; a transaction in flight fails with a temporary error).
pub struct PgStore {
    url: PgUrl,
    client: RefCell<Client>,
    statements: RefCell<HashMap<String, Statement>>,
    /// Event ids appended in the open write transaction, to resolve a lost COMMIT.
    appended: RefCell<Vec<uuid::Uuid>>,
    /// Writes of the open write transaction not sent yet. They go, merged (see [`writes`]), in
    /// one pipeline with the next statement whose answer is needed or with the COMMIT, so a
    /// request's writes cost no round trips of their own.
    unsent: RefCell<Vec<Write>>,
    savepoint: Cell<Savepoint>,
    /// A held write failed when sent: the transaction can only roll back.
    failed: Cell<bool>,
    /// Set for the length of a write transaction; with its copy (and how many events were
    /// appended) at the savepoint.
    held: RefCell<Option<Held>>,
    held_at_savepoint: RefCell<Option<(Held, usize)>>,
    in_transaction: Cell<bool>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.url).finish()
    }
}

impl PgStore {
    /// Create the ledger's schema in the database; refuses a database that already holds one.
    pub fn create(url: &PgUrl) -> Result<PgStore> {
        let client = url.connect()?;
        if client.has_ledger()? {
            return Err(Error::WouldOverwrite {
                what: "ledger",
                path: PathBuf::from(url.as_str()),
            });
        }
        let created = (|| {
            client.batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"))?;
            SCHEMA.iter().try_for_each(|step| client.batch_execute(step))?;
            client.batch_execute("COMMIT")
        })();
        if let Err(e) = created {
            let _ = client.batch_execute("ROLLBACK");
            return Err(url.failure("cannot create the ledger schema in", e));
        }
        PgStore::with_client(url, client)
    }

    /// Open the ledger in the database, checking that there is one this build can read.
    pub fn open(url: &PgUrl) -> Result<PgStore> {
        let client = url.connect()?;
        if !client.has_ledger()? {
            return Err(Error::LedgerNotFound {
                path: PathBuf::from(url.as_str()),
            });
        }
        let found: i32 = client
            .query_one("SELECT max(version) FROM sledger.schema_version", &[])
            .map_err(|e| match e.code() {
                Some(&SqlState::UNDEFINED_TABLE) => Error::NotALedger {
                    path: PathBuf::from(url.as_str()),
                    reason: "its schema `sledger` has no schema_version table".into(),
                },
                _ => url.failure("cannot read the ledger schema in", e),
            })?
            .try_get::<_, Option<i32>>(0)?
            .unwrap_or(0);
        if found as usize > SCHEMA.len() {
            return Err(Error::NewerSchema {
                path: PathBuf::from(url.as_str()),
                found: found.into(),
                supported: SCHEMA.len() as i64,
            });
        }
        PgStore::with_client(url, client)
    }

    fn with_client(url: &PgUrl, client: Client) -> Result<PgStore> {
        configure(&client)?;
        Ok(PgStore {
            url: url.clone(),
            client: RefCell::new(client),
            statements: RefCell::new(HashMap::new()),
            appended: RefCell::new(Vec::new()),
            unsent: RefCell::new(Vec::new()),
            savepoint: Cell::new(Savepoint::None),
            failed: Cell::new(false),
            held: RefCell::new(None),
            held_at_savepoint: RefCell::new(None),
            in_transaction: Cell::new(false),
        })
    }

    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// Drop the ledger's schema (undoing a creation that failed half-way).
    pub fn remove(url: &PgUrl) {
        if let Ok(client) = url.connect() {
            let _ = client.batch_execute("DROP SCHEMA IF EXISTS sledger CASCADE");
        }
    }

    /// A fresh connection where the old one was lost; only between transactions.
    fn ensure_connected(&self) -> Result<()> {
        if self.client.borrow().is_closed() && !self.in_transaction.get() {
            let client = self.url.connect()?;
            configure(&client)?;
            *self.client.borrow_mut() = client;
            self.statements.borrow_mut().clear();
        }
        Ok(())
    }

    fn statement(&self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.borrow().prepare(sql)?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        if !self.in_transaction.get() {
            self.ensure_connected()?;
        }
        let statement = self.statement(sql)?;
        self.pipelined(async |client| client.query(&statement, params).await)
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        if !self.in_transaction.get() {
            self.ensure_connected()?;
        }
        let statement = self.statement(sql)?;
        self.pipelined(async |client| client.execute(&statement, params).await)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.pipelined(async |client| client.batch_execute(sql).await)
    }

    /// A statement whose answer nobody needs: held inside a write transaction, sent now outside.
    fn write(&self, sql: &'static str, params: OwnedParams) -> Result<()> {
        self.hold(vec![Write::Statement(sql, params)])
    }

    /// Hold writes of the write transaction (or send them now outside one).
    fn hold(&self, writes: Vec<Write>) -> Result<()> {
        if self.held.borrow().is_none() {
            self.ensure_connected()?;
            self.unsent.borrow_mut().extend(writes);
            return self.pipelined(async |_| Ok(()));
        }
        self.usable()?;
        self.unsent.borrow_mut().extend(writes);
        Ok(())
    }

    /// Refuse to go on in a transaction one of whose held writes failed.
    fn usable(&self) -> Result<()> {
        if self.failed.get() {
            return Err(Error::LedgerDatabase {
                message: "an earlier write of this transaction failed; it was rolled back".into(),
                temporary: false,
            });
        }
        Ok(())
    }

    /// Send the held writes and then `request` in one pipeline: one round trip for all.
    /// A held write that failed is the error, and fails the transaction (see `usable`).
    fn pipelined<T>(&self, request: impl AsyncFnOnce(&tokio_postgres::Client) -> PgResult<T>) -> Result<T> {
        self.usable()?;
        let held = self.prepare_unsent()?;
        let client = self.client.borrow();
        let (written, answer) = wait(async {
            // Each request is sent when first polled, and these are polled in order.
            let writes = futures::future::join_all(held.iter().map(|d| d.send(&client.0)));
            futures::join!(writes, request(&client.0))
        });
        if let Some(e) = written.into_iter().find_map(PgResult::err) {
            self.failed.set(true);
            return Err(e.into());
        }
        Ok(answer?)
    }

    /// The held writes, merged and prepared, in order. A savepoint not sent yet goes out in its
    /// place, since what follows it may still be undone.
    fn prepare_unsent(&self) -> Result<Vec<Deferred>> {
        let mut unsent = std::mem::take(&mut *self.unsent.borrow_mut());
        if unsent.is_empty() {
            return Ok(Vec::new());
        }
        if let Savepoint::Held(at) = self.savepoint.get() {
            unsent.insert(at, Write::Command("SAVEPOINT unit".into()));
            self.savepoint.set(Savepoint::Sent);
        }
        writes::merge(unsent)
            .into_iter()
            .map(|wire| {
                Ok(match wire {
                    Wire::Command(sql) => Deferred::Command(sql),
                    Wire::Statement(sql, params) => Deferred::Statement(self.statement(sql)?, params),
                })
            })
            .collect()
    }

    /// The write transaction's head and settings, read once (see [`Held`]); `None` outside one.
    fn held<T>(&self, read: impl FnOnce(&mut Loaded) -> T) -> Result<Option<T>> {
        if self.held_unloaded() {
            self.load_held_with(async |_| Ok(()))?;
        }
        Ok(self
            .held
            .borrow_mut()
            .as_mut()
            .and_then(|h| h.loaded.as_mut())
            .map(read))
    }

    /// In a write transaction that has not read its head and settings yet.
    fn held_unloaded(&self) -> bool {
        self.held.borrow().as_ref().is_some_and(|h| h.loaded.is_none())
    }

    /// Read the write transaction's head, settings and sinks, and `also`, in one round trip.
    fn load_held_with<T>(&self, also: impl AsyncFnOnce(&tokio_postgres::Client) -> PgResult<T>) -> Result<T> {
        let (head, settings, sinks) = (
            self.statement(HEAD)?,
            self.statement(SETTINGS)?,
            self.statement(SINKS)?,
        );
        let (head, settings, sinks, answer) = self.pipelined(async |client| {
            futures::try_join!(
                client.query(&head, &[]),
                client.query(&settings, &[]),
                client.query(&sinks, &[]),
                also(client)
            )
        })?;
        let loaded = Loaded {
            head: read_head(&head)?,
            settings: read_settings(&settings)?.into_iter().collect(),
            sinks: read_sinks(&sinks)?,
        };
        if let Some(held) = self.held.borrow_mut().as_mut() {
            held.loaded = Some(loaded);
        }
        Ok(answer)
    }

    /// Keep what the write transaction read in step with a write of its own (nothing to do if
    /// it has not read it yet: it will read the write).
    fn update_loaded(&self, update: impl FnOnce(&mut Loaded)) {
        if let Some(loaded) = self.held.borrow_mut().as_mut().and_then(|h| h.loaded.as_mut()) {
            update(loaded);
        }
    }

    /// Events a query selects, a page at a time, in its direction. `filter` adds conditions
    /// on parameters from `$3` on.
    fn scan_pages(
        &self,
        (mut from, mut to): (u64, u64),
        filter: &str,
        extra: &[&(dyn ToSql + Sync)],
        newest_first: bool,
        visit: Visit<'_>,
    ) -> Result<()> {
        let order = if newest_first { "DESC" } else { "ASC" };
        let sql = format!(
            "{SELECT_EVENTS} WHERE seq >= $1 AND seq <= $2{filter} ORDER BY seq {order} LIMIT {PAGE}"
        );
        while from <= to {
            let (lo, hi) = (clamp(from), clamp(to));
            let mut params: Params<'_> = vec![&lo, &hi];
            params.extend_from_slice(extra);
            let rows = self.query(&sql, &params)?;
            let full = rows.len() as i64 == PAGE;
            for row in &rows {
                let event = read_event(row)?;
                let seq = event.seq;
                if !visit(event)? {
                    return Ok(());
                }
                if newest_first {
                    to = seq.saturating_sub(1);
                } else {
                    from = seq + 1;
                }
            }
            if !full || (newest_first && to == 0) {
                break;
            }
        }
        Ok(())
    }

    fn meta_rows(&self, rows: &[Row]) -> Result<Vec<SecretMeta>> {
        rows.iter()
            .map(|r| SecretMeta::from_bytes(&r.try_get::<_, Vec<u8>>(0)?))
            .collect()
    }

    fn setting_value(&self, key: &str) -> Result<Option<Setting>> {
        if let Some(value) = self.held(|loaded| loaded.settings.get(key).cloned())? {
            return Ok(value);
        }
        let rows = self.query(
            "SELECT key, value, int_value FROM ledger_meta WHERE key = $1",
            &[&key],
        )?;
        Ok(read_settings(&rows)?.pop().map(|(_, value)| value))
    }

    fn upsert_setting(&self, key: &str, value: Setting) -> Result<()> {
        self.hold(vec![Write::Setting(key.to_owned(), value.clone())])?;
        self.update_loaded(|loaded| {
            loaded.settings.insert(key.to_owned(), value);
        });
        Ok(())
    }
}

fn configure(client: &Client) -> Result<()> {
    // Lock waits end like SQLite's busy timeout; the schema is sledger's own. Each statement is
    // planned for its parameters: a generic plan made while a table was nearly empty (a new
    // ledger) would scan it whole for ever after, since the plan is kept until the next ANALYZE.
    client.batch_execute(
        "SET search_path TO sledger; SET lock_timeout = '10s'; SET plan_cache_mode = force_custom_plan",
    )?;
    Ok(())
}

/// Which of the (namespace, name) pairs a live secret holds. One index probe per name,
/// whatever the statistics say: as an EXISTS, the planner may make this a hash join over every
/// live row when the catalog grew faster than autovacuum analyzes it (2–3 ms a group at 20 000
/// secrets, against 0.1 ms).
const NAMES_TAKEN: &str = "SELECT n.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS n(ns, name, i)
     WHERE (SELECT true FROM catalog c WHERE c.namespace = n.ns AND c.name = n.name AND c.status = 'live')";

impl Store for PgStore {
    fn begin_write(&self) -> Result<()> {
        self.ensure_connected()?;
        self.appended.borrow_mut().clear();
        self.failed.set(false);
        self.in_transaction.set(true);
        self.savepoint.set(Savepoint::None);
        *self.held.borrow_mut() = Some(Held::default());
        // Sent with the transaction's first read: the head and settings (see `held`).
        self.hold(vec![Write::Command(format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
        ))])
    }

    fn commit(&self) -> Result<()> {
        if let Err(e) = self.usable() {
            self.rollback();
            return Err(e);
        }
        self.held.take();
        self.held_at_savepoint.take();
        self.savepoint.set(Savepoint::None);
        self.in_transaction.set(false);
        let appended = std::mem::take(&mut *self.appended.borrow_mut());
        // The notice reaches every listener when (and only if) the transaction commits.
        let committed = if appended.is_empty() {
            self.batch("COMMIT")
        } else {
            self.batch(&format!("NOTIFY {APPENDED_CHANNEL}; COMMIT"))
        };
        let Err(e) = committed else { return Ok(()) };
        self.failed.set(false);
        self.unsent.borrow_mut().clear();
        if !e.is_temporary() {
            return Err(e);
        }
        // The reply to COMMIT was lost: whether it landed is in the database, once it answers
        // again (a restart takes a few seconds).
        let Some(first) = appended.first() else {
            return Err(e);
        };
        let give_up = std::time::Instant::now() + RESOLVE_COMMIT_FOR;
        let found = loop {
            let looked = self.url.connect().and_then(|client| {
                configure(&client)?;
                let found = client
                    .query(
                        "SELECT seq FROM events WHERE event_id = $1",
                        &[&first.as_bytes().as_slice()],
                    )?
                    .pop();
                *self.client.borrow_mut() = client;
                self.statements.borrow_mut().clear();
                Ok(found.is_some())
            });
            match looked {
                Ok(found) => break found,
                Err(_) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(std::time::Duration::from_millis(250))
                }
                Err(_) => {
                    return Err(Error::LedgerDatabase {
                        message: format!(
                            "the reply to a commit was lost and the database did not answer for {}s: whether the write landed is unknown; `sledger log --tail 5` shows it if it did",
                            RESOLVE_COMMIT_FOR.as_secs()
                        ),
                        temporary: false,
                    })
                }
            }
        };
        if found {
            tracing::info!("the reply to a commit was lost, but its events are in the log");
            Ok(())
        } else {
            Err(e)
        }
    }

    fn rollback(&self) {
        self.in_transaction.set(false);
        self.appended.borrow_mut().clear();
        self.unsent.borrow_mut().clear();
        self.savepoint.set(Savepoint::None);
        self.failed.set(false);
        self.held.take();
        self.held_at_savepoint.take();
        if !self.client.borrow().is_closed() {
            if let Err(e) = self.batch("ROLLBACK") {
                tracing::debug!(error = %e, "rollback failed");
            }
        }
    }

    fn begin_read(&self) -> Result<()> {
        self.ensure_connected()?;
        self.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        self.in_transaction.set(true);
        Ok(())
    }

    fn savepoint(&self) -> Result<()> {
        self.usable()?;
        let held = self.held.borrow().clone().unwrap_or_default();
        *self.held_at_savepoint.borrow_mut() = Some((held, self.appended.borrow().len()));
        self.savepoint.set(Savepoint::Held(self.unsent.borrow().len()));
        Ok(())
    }

    fn release_savepoint(&self) -> Result<()> {
        self.held_at_savepoint.take();
        match self.savepoint.replace(Savepoint::None) {
            // Never sent: its writes simply stay held.
            Savepoint::Held(_) | Savepoint::None => Ok(()),
            Savepoint::Sent => self.hold(vec![Write::Command("RELEASE SAVEPOINT unit".into())]),
        }
    }

    fn rollback_savepoint(&self) -> Result<()> {
        self.usable()?;
        if let Some((held, appended)) = self.held_at_savepoint.take() {
            if let Some(now) = self.held.borrow_mut().as_mut() {
                *now = held;
            }
            self.appended.borrow_mut().truncate(appended);
        }
        match self.savepoint.replace(Savepoint::None) {
            // The database never saw what it undoes.
            Savepoint::Held(at) => {
                self.unsent.borrow_mut().truncate(at);
                Ok(())
            }
            Savepoint::None => Ok(()),
            Savepoint::Sent => self.hold(vec![Write::Command(
                "ROLLBACK TO SAVEPOINT unit; RELEASE SAVEPOINT unit".into(),
            )]),
        }
    }

    fn head(&self) -> Result<Head> {
        if let Some(head) = self.held(|loaded| loaded.head)? {
            return Ok(head);
        }
        read_head(&self.query(HEAD, &[])?)
    }

    fn append(&self, e: &StoredEvent) -> Result<()> {
        self.update_loaded(|loaded| {
            loaded.head = Head {
                seq: e.seq,
                hash: e.hash,
                recorded_at: e.recorded_at,
            }
        });
        self.appended.borrow_mut().push(e.event_id);
        self.hold(vec![Write::Event(e.clone())])
    }

    fn event(&self, seq: u64) -> Result<Option<StoredEvent>> {
        let rows = self.query(&format!("{SELECT_EVENTS} WHERE seq = $1"), &[&clamp(seq)])?;
        rows.first().map(read_event).transpose()
    }

    fn scan(&self, from: u64, to: u64, visit: Visit<'_>) -> Result<()> {
        self.scan_pages((from, to), "", &[], false, visit)
    }

    fn scan_events(&self, query: &EventQuery, visit: Visit<'_>) -> Result<()> {
        let secret = query.secret.as_ref().map(|id| id.as_bytes().to_vec());
        let mut filter = String::new();
        let mut extra: Params<'_> = Vec::new();
        for (column, value) in [
            ("secret_id", secret.as_ref().map(|s| s as &(dyn ToSql + Sync))),
            ("actor", query.actor.as_ref().map(|a| a as &(dyn ToSql + Sync))),
            (
                "event_type",
                query.event_type.as_ref().map(|t| t as &(dyn ToSql + Sync)),
            ),
        ] {
            if let Some(value) = value {
                extra.push(value);
                filter.push_str(&format!(" AND {column} = ${}", extra.len() + 2));
            }
        }
        self.scan_pages((query.from, query.to), &filter, &extra, query.newest_first, visit)
    }

    fn scan_secret(&self, id: SecretId, to: u64, visit: Visit<'_>) -> Result<()> {
        let id = id.as_bytes().as_slice();
        self.scan_pages((1, to), " AND secret_id = $3", &[&id], false, visit)
    }

    fn seq_at_time(&self, at: Millis) -> Result<u64> {
        // recorded_at never decreases along seq, so the last event at or before `at` is the
        // one with the greatest seq among them: found through the primary key.
        let rows = self.query(
            "SELECT seq FROM events WHERE recorded_at <= $1 ORDER BY seq DESC LIMIT 1",
            &[&at],
        )?;
        Ok(rows
            .first()
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()?
            .unwrap_or(0) as u64)
    }

    fn scan_types(&self, types: &[&str], after: u64, visit: Visit<'_>) -> Result<()> {
        if types.is_empty() {
            return Ok(());
        }
        self.scan_pages(
            (after.saturating_add(1), u64::MAX),
            " AND event_type = ANY($3)",
            &[&types],
            false,
            visit,
        )
    }

    fn secrets_touched(&self, after: u64, through: u64) -> Result<Vec<SecretId>> {
        let rows = self.query(
            "SELECT secret_id, max(seq) AS last FROM events WHERE seq > $1 AND seq <= $2 AND secret_id IS NOT NULL
             GROUP BY secret_id ORDER BY last",
            &[&clamp(after), &clamp(through)],
        )?;
        rows.iter()
            .map(|r| secret_id(&r.try_get::<_, Vec<u8>>(0)?, "an event's secret id"))
            .collect()
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.setting_value(key)?.map(|value| match value {
            Setting::Bytes(bytes) => bytes,
            Setting::Int(number) => number.to_string().into_bytes(),
        }))
    }

    fn setting_int(&self, key: &str) -> Result<Option<i64>> {
        self.setting_value(key)?
            .map(|value| match value {
                Setting::Int(number) => Ok(number),
                Setting::Bytes(_) => Err(Error::Corrupt(format!("setting {key} is not a number"))),
            })
            .transpose()
    }

    fn set_setting(&self, key: &str, value: &[u8]) -> Result<()> {
        self.upsert_setting(key, Setting::Bytes(value.to_vec()))
    }

    fn set_setting_int(&self, key: &str, value: i64) -> Result<()> {
        self.upsert_setting(key, Setting::Int(value))
    }

    fn settings(&self) -> Result<Vec<(String, Setting)>> {
        if let Some(settings) = self.held(|loaded| loaded.settings.clone().into_iter().collect())? {
            return Ok(settings);
        }
        read_settings(&self.query(SETTINGS, &[])?)
    }

    fn put_secret(&self, m: &SecretMeta) -> Result<()> {
        self.put_secrets(std::slice::from_ref(m))
    }

    fn put_secrets(&self, metas: &[SecretMeta]) -> Result<()> {
        self.hold(metas.iter().cloned().map(Write::Secret).collect())
    }

    fn secret(&self, id: SecretId) -> Result<Option<SecretMeta>> {
        let rows = self.query(
            "SELECT meta FROM catalog WHERE secret_id = $1",
            &[&id.as_bytes().as_slice()],
        )?;
        Ok(self.meta_rows(&rows)?.pop())
    }

    fn secrets_named(&self, name: &str, namespaces: &[&str]) -> Result<Vec<SecretMeta>> {
        let rows = self.query(
            "SELECT meta FROM catalog WHERE name = $1 AND namespace = ANY($2) ORDER BY updated_seq DESC",
            &[&name, &namespaces],
        )?;
        self.meta_rows(&rows)
    }

    fn list_secrets(&self, query: &ListQuery, namespaces: &[&str], visit: ListVisit<'_>) -> Result<()> {
        let (start, exclusive) = query.start();
        let status = query.status.as_str();
        // One label narrows the scan through its rows; the others are checked per row.
        let label = query.labels.iter().next();
        let page = |after_name: &str, after_namespace: Option<&str>| -> Result<Vec<Row>> {
            let mut params: Params<'_> = vec![&status, &namespaces];
            let (table, join) = match &label {
                None => ("c", ""),
                Some((key, value)) => {
                    params.push(key);
                    params.push(value);
                    (
                        "l",
                        "JOIN catalog_labels l ON l.secret_id = c.secret_id AND l.key = $3 AND l.value = $4",
                    )
                }
            };
            params.push(&after_name);
            let name = params.len();
            let position = match &after_namespace {
                Some(namespace) => {
                    params.push(namespace);
                    format!("({table}.name, {table}.namespace) > (${name}, ${})", name + 1)
                }
                None if exclusive => format!("{table}.name > ${name}"),
                None => format!("{table}.name >= ${name}"),
            };
            let sql = format!(
                "SELECT c.meta, {table}.name, {table}.namespace FROM catalog c {join} \
                 WHERE {table}.status = $1 AND {table}.namespace = ANY($2) AND {position} \
                 ORDER BY {table}.name, {table}.namespace LIMIT {PAGE}"
            );
            self.query(&sql, &params)
        };
        let (mut name, mut namespace) = (start.to_owned(), None::<String>);
        loop {
            let rows = page(&name, namespace.as_deref())?;
            for row in &rows {
                let meta = SecretMeta::from_bytes(&row.try_get::<_, Vec<u8>>(0)?)?;
                match query.admits(&meta) {
                    None => return Ok(()),
                    Some(false) => {}
                    Some(true) => {
                        if !visit(meta)? {
                            return Ok(());
                        }
                    }
                }
                name = row.try_get(1)?;
                namespace = Some(row.try_get(2)?);
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    fn name_taken(&self, namespace: &str, name: &str) -> Result<bool> {
        Ok(!self
            .query(
                "SELECT 1 FROM catalog WHERE namespace = $1 AND name = $2 AND status = 'live'",
                &[&namespace, &name],
            )?
            .is_empty())
    }

    fn names_taken(&self, names: &[(String, String)]) -> Result<Vec<bool>> {
        let (namespaces, names): (Vec<&str>, Vec<&str>) = names
            .iter()
            .map(|(ns, name)| (ns.as_str(), name.as_str()))
            .unzip();
        let mut taken = vec![false; names.len()];
        let params: Params<'_> = vec![&namespaces, &names];
        let rows = if self.held_unloaded() {
            // A write transaction's first read (the ledger asks it first): sent with its head
            // and settings, one round trip for all.
            let statement = self.statement(NAMES_TAKEN)?;
            self.load_held_with(async |client| client.query(&statement, &params).await)?
        } else {
            self.query(NAMES_TAKEN, &params)?
        };
        for row in &rows {
            taken[row.try_get::<_, i64>(0)? as usize - 1] = true;
        }
        Ok(taken)
    }

    fn scan_all_secrets(
        &self,
        visit: &mut dyn FnMut(SecretId, SecretMeta, bool) -> Result<bool>,
    ) -> Result<()> {
        let mut after: Vec<u8> = Vec::new();
        loop {
            let rows = self.query(
                &format!(
                    "SELECT secret_id, meta, namespace, name, status, updated_seq FROM catalog \
                     WHERE secret_id > $1 ORDER BY secret_id LIMIT {PAGE}"
                ),
                &[&after],
            )?;
            for row in &rows {
                after = row.try_get(0)?;
                let id = secret_id(&after, "a catalog row's id")?;
                let meta = SecretMeta::from_bytes(&row.try_get::<_, Vec<u8>>(1)?)?;
                let agree = crate::store::columns_agree(
                    &meta,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                    row.try_get(5)?,
                );
                if !visit(id, meta, agree)? {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    fn secret_count(&self) -> Result<u64> {
        let rows = self.query("SELECT count(*) FROM catalog", &[])?;
        Ok(rows[0].try_get::<_, i64>(0)? as u64)
    }

    fn wrapped_key(&self, id: SecretId) -> Result<Option<Vec<u8>>> {
        let rows = self.query(
            "SELECT wrapped FROM secret_keys WHERE secret_id = $1",
            &[&id.as_bytes().as_slice()],
        )?;
        Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
    }

    fn put_wrapped_key(&self, id: SecretId, wrapped: &[u8]) -> Result<()> {
        self.put_wrapped_keys(&[(id, wrapped.to_vec())])
    }

    fn put_wrapped_keys(&self, keys: &[(SecretId, Vec<u8>)]) -> Result<()> {
        self.hold(
            keys.iter()
                .map(|(id, wrapped)| Write::PutKey(*id, wrapped.clone()))
                .collect(),
        )
    }

    fn delete_wrapped_key(&self, id: SecretId) -> Result<()> {
        self.hold(vec![Write::DeleteKey(id)])
    }

    fn scan_wrapped_keys(&self, visit: &mut dyn FnMut(SecretId, Vec<u8>) -> Result<bool>) -> Result<()> {
        let mut after: Vec<u8> = Vec::new();
        loop {
            let rows = self.query(
                &format!("SELECT secret_id, wrapped FROM secret_keys WHERE secret_id > $1 ORDER BY secret_id LIMIT {PAGE}"),
                &[&after],
            )?;
            for row in &rows {
                after = row.try_get(0)?;
                if !visit(secret_id(&after, "a secret_keys id")?, row.try_get(1)?)? {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    fn rewrap_keys(&self, rewrap: Rewrap<'_>) -> Result<u64> {
        let mut count = 0;
        self.scan_wrapped_keys(&mut |id, wrapped| {
            let wrapped = rewrap(id, &wrapped)?;
            self.write(
                "UPDATE secret_keys SET wrapped = $2 WHERE secret_id = $1",
                vec![Box::new(id.as_bytes().to_vec()), Box::new(wrapped)],
            )?;
            count += 1;
            Ok(true)
        })?;
        Ok(count)
    }

    fn sinks(&self) -> Result<BTreeMap<String, SinkConfig>> {
        if let Some(sinks) = self.held(|loaded| loaded.sinks.clone())? {
            return Ok(sinks);
        }
        read_sinks(&self.query(SINKS, &[])?)
    }

    fn put_sinks(&self, sinks: &BTreeMap<String, SinkConfig>) -> Result<()> {
        self.update_loaded(|loaded| loaded.sinks = sinks.clone());
        self.write("DELETE FROM sinks", vec![])?;
        for s in sinks.values() {
            self.write(
                "INSERT INTO sinks (name, url, role, added_seq) VALUES ($1, $2, $3, $4)",
                vec![
                    Box::new(s.name.clone()),
                    Box::new(s.url.clone()),
                    Box::new(s.role.as_str()),
                    Box::new(s.added_seq as i64),
                ],
            )?;
        }
        Ok(())
    }

    fn forget_sink_progress(&self, sink: &str) -> Result<()> {
        self.write(
            "DELETE FROM sink_state WHERE name = $1",
            vec![Box::new(sink.to_owned())],
        )?;
        self.write(
            "DELETE FROM parked WHERE sink = $1",
            vec![Box::new(sink.to_owned())],
        )
    }

    fn sink_progress(&self, sink: &str) -> Result<SinkProgress> {
        let rows = self.query(
            "SELECT checkpoint, last_error, last_error_at, last_applied_at, checkpoint_mac, projected_by FROM sink_state WHERE name = $1",
            &[&sink],
        )?;
        let Some(r) = rows.first() else {
            return Ok(SinkProgress::default());
        };
        Ok(SinkProgress {
            checkpoint: r.try_get::<_, i64>(0)? as u64,
            last_error: r.try_get(1)?,
            last_error_at: r.try_get(2)?,
            last_applied_at: r.try_get(3)?,
            checkpoint_mac: r.try_get(4)?,
            projected_by: r.try_get(5)?,
        })
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
        let changed = self.execute(
            "INSERT INTO sink_state AS s (name, checkpoint, checkpoint_mac, last_applied_at, projected_by)
             SELECT $1, $2, $5, $3, $6 WHERE EXISTS (SELECT 1 FROM sinks WHERE name = $1 AND added_seq = $4)
             ON CONFLICT (name) DO UPDATE SET
             checkpoint_mac = CASE WHEN excluded.checkpoint >= s.checkpoint THEN excluded.checkpoint_mac ELSE s.checkpoint_mac END,
             checkpoint = greatest(s.checkpoint, excluded.checkpoint),
             last_applied_at = excluded.last_applied_at, projected_by = excluded.projected_by,
             last_error = NULL, last_error_at = NULL",
            &[&sink, &clamp(seq), &at, &clamp(attached), &mac, &by],
        )?;
        Ok(changed > 0)
    }

    fn record_sink_error(&self, sink: &str, error: &str, at: Millis) -> Result<()> {
        self.execute(
            "INSERT INTO sink_state (name, last_error, last_error_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error, last_error_at = excluded.last_error_at",
            &[&sink, &error, &at],
        )?;
        Ok(())
    }

    fn park(&self, sink: &str, parked: &Parked) -> Result<()> {
        self.execute(
            "INSERT INTO parked (sink, secret_id, seq, error, parked_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (sink, secret_id) DO UPDATE SET seq = excluded.seq, error = excluded.error, parked_at = excluded.parked_at",
            &[
                &sink,
                &parked.secret_id.as_bytes().as_slice(),
                &clamp(parked.seq),
                &parked.error,
                &parked.parked_at,
            ],
        )?;
        Ok(())
    }

    fn unpark(&self, sink: &str, id: SecretId, seq: u64) -> Result<()> {
        self.execute(
            "DELETE FROM parked WHERE sink = $1 AND secret_id = $2 AND seq <= $3",
            &[&sink, &id.as_bytes().as_slice(), &clamp(seq)],
        )?;
        Ok(())
    }

    fn parked(&self, sink: &str) -> Result<Vec<Parked>> {
        let rows = self.query(
            "SELECT secret_id, seq, error, parked_at FROM parked WHERE sink = $1 ORDER BY seq",
            &[&sink],
        )?;
        rows.iter()
            .map(|r| {
                Ok(Parked {
                    secret_id: secret_id(&r.try_get::<_, Vec<u8>>(0)?, "a parked secret id")?,
                    seq: r.try_get::<_, i64>(1)? as u64,
                    error: r.try_get(2)?,
                    parked_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    fn access_head(&self) -> Result<(u64, [u8; 32])> {
        let rows = self.query("SELECT seq, hash FROM access_log ORDER BY seq DESC LIMIT 1", &[])?;
        let Some(r) = rows.first() else {
            return Ok((0, crate::event::GENESIS_HASH));
        };
        let seq = r.try_get::<_, i64>(0)?;
        Ok((
            seq as u64,
            r.try_get::<_, Vec<u8>>(1)?
                .try_into()
                .map_err(|_| Error::Corrupt(format!("access log row {seq} has a malformed hash")))?,
        ))
    }

    fn append_access(&self, entries: &[AccessEntry]) -> Result<()> {
        for e in entries {
            self.execute(
                "INSERT INTO access_log (seq, recorded_at, record, prev_hash, hash) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &(e.seq as i64),
                    &e.record.at,
                    &e.json,
                    &e.prev_hash.as_slice(),
                    &e.hash.as_slice(),
                ],
            )?;
        }
        Ok(())
    }

    fn scan_access(&self, mut after: u64, visit: &mut dyn FnMut(AccessEntry) -> Result<bool>) -> Result<()> {
        loop {
            let rows = self.query(
                &format!("SELECT seq, record, prev_hash, hash FROM access_log WHERE seq > $1 ORDER BY seq LIMIT {PAGE}"),
                &[&clamp(after)],
            )?;
            for r in &rows {
                let seq: i64 = r.try_get(0)?;
                let json: String = r.try_get(1)?;
                let bad = |what: &str| Error::Corrupt(format!("access log row {seq}: {what}"));
                let hash = |i| -> Result<[u8; 32]> {
                    r.try_get::<_, Vec<u8>>(i)?
                        .try_into()
                        .map_err(|_| bad("a malformed hash"))
                };
                let entry = AccessEntry {
                    seq: seq as u64,
                    record: serde_json::from_str(&json).map_err(|_| bad("the record does not parse"))?,
                    prev_hash: hash(2)?,
                    hash: hash(3)?,
                    json,
                };
                after = seq as u64;
                if !visit(entry)? {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// A session advisory lock: when the process holding it dies, PostgreSQL ends its session
    /// and another server's projector takes the sink over.
    fn try_lock_sink_writes(&self, name: &str) -> Result<bool> {
        let rows = self.query(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&SINK_LOCKS, &name],
        )?;
        Ok(rows[0].try_get(0)?)
    }

    fn unlock_sink_writes(&self, name: &str) {
        if let Err(e) = self.query(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&SINK_LOCKS, &name],
        ) {
            tracing::debug!(error = %e, "releasing a sink's write lock failed (the session's end releases it)");
        }
    }

    fn put_snapshot(&self, seq: u64, state: &[u8]) -> Result<()> {
        self.execute(
            "INSERT INTO snapshots (seq, state) VALUES ($1, $2)",
            &[&clamp(seq), &state],
        )?;
        Ok(())
    }

    fn snapshot_at_or_before(&self, seq: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let rows = self.query(
            "SELECT seq, state FROM snapshots WHERE seq <= $1 ORDER BY seq DESC LIMIT 1",
            &[&clamp(seq)],
        )?;
        rows.first()
            .map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?)))
            .transpose()
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>> {
        let rows = self.query("SELECT seq FROM snapshots ORDER BY seq", &[])?;
        rows.iter().map(|r| Ok(r.try_get::<_, i64>(0)? as u64)).collect()
    }

    fn snapshot_digest(&self, seq: u64) -> Result<Option<[u8; 32]>> {
        // Stored uncompressed (schema), so each piece is read without the whole value.
        const PIECE: i32 = 4 << 20;
        let seq = clamp(seq);
        let rows = self.query("SELECT length(state) FROM snapshots WHERE seq = $1", &[&seq])?;
        let Some(length) = rows.first().map(|r| r.try_get::<_, i32>(0)).transpose()? else {
            return Ok(None);
        };
        let mut hasher = blake3::Hasher::new();
        let mut offset = 1;
        while offset <= length {
            let rows = self.query(
                "SELECT substring(state FROM $2 FOR $3) FROM snapshots WHERE seq = $1",
                &[&seq, &offset, &PIECE],
            )?;
            let piece: Vec<u8> = rows
                .first()
                .ok_or_else(|| Error::Corrupt(format!("snapshot {seq} vanished while read")))?
                .try_get(0)?;
            hasher.update(&piece);
            offset += PIECE;
        }
        Ok(Some(*hasher.finalize().as_bytes()))
    }

    fn reset_derived(&self) -> Result<()> {
        if let Some(held) = self.held.borrow_mut().as_mut() {
            held.loaded = None;
        }
        self.batch("TRUNCATE catalog, catalog_labels, sinks, snapshots")
    }

    fn has_derived(&self) -> Result<bool> {
        // The first schema has every derived table.
        Ok(true)
    }

    /// PostgreSQL reuses the space of deleted rows after its own vacuum; nothing to force here
    /// (VACUUM cannot run inside the caller's transaction).
    fn scrub(&self) {}

    fn backup_to(&self, path: &Path) -> Result<()> {
        super::copy::backup(self, path)
    }

    /// One repeatable-read transaction on a second connection: the head it checks against and
    /// the rows it reads are the same snapshot, whatever this connection is doing.
    fn verified_scan(
        &self,
        visit: &mut dyn FnMut(StoredEvent, crate::event::Event) -> Result<()>,
    ) -> Result<Head> {
        let reader = PgStore::open(&self.url)?;
        reader.begin_read()?;
        let total = reader.head()?.seq;
        let rows = reader.query("SELECT count(*) FROM events", &[])?;
        let stored = rows[0].try_get::<_, i64>(0)? as u64;
        let mut chain = ChainCheck::default();
        let mut failed = Ok(());
        reader.scan(1, u64::MAX, &mut |stored| {
            let checked = chain.check(&stored).and_then(|()| {
                let event = stored.decode_in_chain()?;
                visit(stored, event)
            });
            let go_on = checked.is_ok();
            failed = checked;
            Ok(go_on)
        })?;
        reader.rollback();
        failed?;
        let head = chain.finish(total)?;
        if stored != total {
            return Err(Error::ChainBroken {
                seq: 1,
                reason: format!(
                    "{stored} events are stored but the chain from 1 to {total} holds only {total}"
                ),
            });
        }
        Ok(head)
    }
}
