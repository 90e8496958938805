//! Append, fold and verify throughput, each next to a raw-SQLite baseline on the same rows,
//! and the end-to-end latency of `sledger secret create` as a process.
//!
//! `cargo bench --bench log` (set SLEDGER_BENCH_EVENTS to change the 1 000 000-event log size).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::RngCore;
use sledger::event::{Event, Scope, SealedValues, StoredEvent};
use sledger::log::{chain_next, sqlite, Head, NewEvent};
use sledger::{Command, Ledger, LedgerSettings, MasterKey, SecretValues};

// The allocator the `sledger` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 1000;

fn log_size() -> u64 {
    std::env::var("SLEDGER_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

/// A realistic event: a secret with a user and a password (sealed blob + two fingerprints).
fn synthetic(secret: uuid::Uuid, n: u64, create: bool) -> NewEvent {
    let mut ciphertext = vec![0u8; 24 + 48 + 16];
    rand::thread_rng().fill_bytes(&mut ciphertext);
    let fingerprints = BTreeMap::from([("password".into(), [n as u8; 16]), ("user".into(), [1u8; 16])]);
    let values = SealedValues {
        ciphertext,
        fingerprints,
    };
    let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
    let event = if create {
        Event::SecretCreated {
            name: format!("app/secret-{n}"),
            scope: Scope::Workspace,
            owner: "bench".into(),
            labels,
            values,
        }
    } else {
        Event::SecretUpdated { labels, values }
    };
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        actor: "bench@host".into(),
        secret_id: Some(secret),
        event,
    }
}

/// `events` rows over `events / 10` secrets: a create each, then updates round-robin.
fn rows(events: u64) -> Vec<StoredEvent> {
    let secrets: Vec<_> = (0..(events / 10).max(1)).map(|_| uuid::Uuid::now_v7()).collect();
    let mut head = Head::EMPTY;
    (0..events)
        .map(|n| {
            let s = secrets[(n % secrets.len() as u64) as usize];
            chain_next(
                &mut head,
                &synthetic(s, n, n < secrets.len() as u64),
                1_700_000_000_000 + n as i64,
            )
        })
        .collect()
}

/// A bare table with the `events` columns and nothing else.
const BARE_TABLE: &str = "CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id BLOB NOT NULL UNIQUE,
    recorded_at INTEGER NOT NULL, actor TEXT NOT NULL, secret_id BLOB, event_type TEXT NOT NULL,
    event_version INTEGER NOT NULL, payload BLOB NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL)";

/// sledger's own `events` DDL (with the per-secret index and the append-only triggers).
const SLEDGER_TABLE: &str = include_str!("../schema/ledger/0001_events.sql");

/// Baseline: the same pre-built rows, same pragmas, same batching, inserted with plain rusqlite.
fn raw_insert(path: &Path, ddl: &str, rows: &[StoredEvent]) {
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch(ddl).unwrap();
    for chunk in rows.chunks(BATCH) {
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO events VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)")
                .unwrap();
            for e in chunk {
                st.execute(rusqlite::params![
                    e.seq as i64,
                    e.event_id.as_bytes().as_slice(),
                    e.recorded_at,
                    e.actor,
                    e.secret_id.as_ref().map(|s| s.as_bytes().as_slice()),
                    e.event_type,
                    e.event_version,
                    e.payload,
                    e.prev_hash.as_slice(),
                    e.hash.as_slice()
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

/// sledger's log append: encode + chain + insert into the real schema (triggers, indexes), batched.
fn log_append(path: &Path, events: &[NewEvent]) {
    let mut c = sqlite::create(path).unwrap();
    for chunk in events.chunks(BATCH) {
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        let mut head = sqlite::head(&tx).unwrap();
        for e in chunk {
            sqlite::insert(&tx, &chain_next(&mut head, e, 1_700_000_000_000)).unwrap();
        }
        tx.commit().unwrap();
    }
}

fn append(c: &mut Criterion) {
    let n = 100_000u64;
    let mut g = c.benchmark_group("append");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(n));
    let rows = rows(n);
    let news: Vec<NewEvent> = {
        let secrets: Vec<_> = (0..n / 10).map(|_| uuid::Uuid::now_v7()).collect();
        (0..n)
            .map(|i| synthetic(secrets[(i % (n / 10)) as usize], i, i < n / 10))
            .collect()
    };
    g.bench_function(BenchmarkId::new("raw_rusqlite_insert_bare_table", n), |b| {
        b.iter_custom(|iters| timed(iters, |dir| raw_insert(&dir.join("raw.db"), BARE_TABLE, &rows)))
    });
    g.bench_function(BenchmarkId::new("raw_rusqlite_insert_sledger_schema", n), |b| {
        b.iter_custom(|iters| timed(iters, |dir| raw_insert(&dir.join("raw.db"), SLEDGER_TABLE, &rows)))
    });
    g.bench_function(BenchmarkId::new("sledger_log_append", n), |b| {
        b.iter_custom(|iters| timed(iters, |dir| log_append(&dir.join("log.db"), &news)))
    });
    // The whole write path: validate, seal (XChaCha20-Poly1305), fingerprint, catalog, chain.
    let creates = 20_000u64;
    g.throughput(Throughput::Elements(creates));
    g.bench_function(BenchmarkId::new("sledger_ledger_create", creates), |b| {
        b.iter_custom(|iters| {
            timed(iters, |dir| {
                let mut ledger =
                    Ledger::init(dir.join("l.db"), MasterKey::generate(), LedgerSettings::default()).unwrap();
                for chunk in (0..creates).collect::<Vec<_>>().chunks(BATCH) {
                    let batch = chunk
                        .iter()
                        .map(|i| {
                            let mut values = SecretValues::new();
                            values.insert("user", "svc");
                            values.insert("password", format!("pw-{i}-xxxxxxxxxxxxxxxx"));
                            Command::Create {
                                name: format!("s{i}"),
                                scope: Scope::Workspace,
                                labels: BTreeMap::new(),
                                values,
                            }
                        })
                        .collect();
                    ledger.execute("bench", batch).unwrap();
                }
            })
        })
    });
    g.finish();
}

/// Run `f` in a fresh temp dir `iters` times, timing only `f`.
fn timed(iters: u64, f: impl Fn(&Path)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        f(dir.path());
        total += t.elapsed();
    }
    total
}

fn fold_and_verify(c: &mut Criterion) {
    let n = log_size();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    {
        let secrets: Vec<_> = (0..n / 10).map(|_| uuid::Uuid::now_v7()).collect();
        let news: Vec<NewEvent> = (0..n)
            .map(|i| synthetic(secrets[(i % (n / 10)) as usize], i, i < n / 10))
            .collect();
        log_append(&path, &news);
        // A real ledger around the log: settings, keys, catalog.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "INSERT INTO ledger_meta VALUES ('max_value_bytes', 65536), ('snapshot_interval', 10000000), ('ledger_id', 'bench');",
        )
        .unwrap();
    }
    let mut ledger = Ledger::open(&path).unwrap();
    let mut g = c.benchmark_group("read");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::new("raw_sqlite_scan", n), |b| {
        let conn = rusqlite::Connection::open(&path).unwrap();
        b.iter(|| {
            let mut st = conn.prepare_cached("SELECT * FROM events ORDER BY seq").unwrap();
            let mut rows = st.query([]).unwrap();
            let mut bytes = 0usize;
            while let Some(r) = rows.next().unwrap() {
                for i in 0..10 {
                    bytes += match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b.len(),
                        _ => 8,
                    };
                }
            }
            bytes
        })
    });
    g.bench_function(BenchmarkId::new("sledger_verify_chain_decode_fold", n), |b| {
        b.iter(|| ledger.verify(&mut |_, _| {}).unwrap())
    });
    g.bench_function(BenchmarkId::new("sledger_catalog_at_head_one_thread", n), |b| {
        b.iter(|| ledger.catalog_at(n).unwrap().secrets.len())
    });
    g.finish();
}

/// `sledger secret create` as a user runs it: a new process, open, unlock, append (fsync), exit.
fn cli_create(c: &mut Criterion) {
    let bin = env!("CARGO_BIN_EXE_sledger");
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("cli.db");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .env("SLEDGER_LEDGER", &ledger)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["init"]);
    let mut g = c.benchmark_group("cli");
    g.sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let mut i = 0u64;
    g.bench_function("secret_create_process", |b| {
        b.iter(|| {
            i += 1;
            run(&[
                "secret",
                "create",
                &format!("s{i}"),
                "--value",
                "password=hunter2",
            ]);
        })
    });
    g.finish();
}

criterion_group!(benches, append, fold_and_verify, cli_create);
criterion_main!(benches);
