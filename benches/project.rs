//! Projection throughput: the whole log into a fresh sqlite sink, with and without the anchor
//! each batch leaves in it (beside a raw rusqlite insert of the same number of rows), and into the exec plug-in with 1, 8 and 16 writes in flight
//! (beside a one-at-a-time loop of puts), the plug-in sleeping per call to stand in for network
//! latency.
//!
//! `cargo build --release --examples && cargo bench --bench project`
//! (SLEDGER_BENCH_SECRETS sets the sqlite run's size, default 100 000 events).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sledger::event::SinkRole;
use sledger::project::{self, Op, ProjectOptions};
use sledger::sink::SqliteSink;
use sledger::{Command, Ledger, LedgerSettings, MasterKey, Scope, SecretValues};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Per-call latency of the plug-in, standing in for a network round trip.
const PLUGIN_SLEEP_MS: u64 = 5;
const EXEC_SECRETS: u64 = 400;

fn sqlite_events() -> u64 {
    std::env::var("SLEDGER_BENCH_SECRETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

/// A ledger of `n` secrets, one create event each (no compaction: every event is a write).
fn ledger_with(dir: &Path, n: u64) -> Ledger {
    let mut ledger = Ledger::init(
        dir.join("ledger.db"),
        MasterKey::generate(),
        LedgerSettings::default(),
    )
    .unwrap();
    let mut i = 0;
    while i < n {
        let batch: Vec<Command> = (i..(i + 1000).min(n))
            .map(|k| {
                let mut values = SecretValues::new();
                values.insert("user", "app");
                values.insert("password", format!("password-{k:08}"));
                Command::Create {
                    name: format!("svc/{k}"),
                    scope: Scope::Workspace,
                    labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
                    values,
                }
            })
            .collect();
        i += batch.len() as u64;
        ledger.execute("bench", batch).unwrap();
    }
    ledger
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn add_sink(ledger: &mut Ledger, name: &str, url: &str) {
    let cmd = Command::AddSink {
        name: name.into(),
        url: url.into(),
        role: SinkRole::Replica,
    };
    ledger.execute("bench", vec![cmd]).unwrap();
}

fn sqlite_projection(c: &mut Criterion) {
    let n = sqlite_events();
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = ledger_with(dir.path(), n);
    let rt = runtime();
    let mut g = c.benchmark_group("project_sqlite");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .throughput(Throughput::Elements(n));
    let mut run = 0;
    // With the anchors each batch leaves in the sink (the default), and without: what they cost.
    for (label, anchors) in [
        ("sledger_project_into_fresh_sqlite_sink", true),
        ("sledger_project_into_fresh_sqlite_sink_no_anchors", false),
    ] {
        let opts = ProjectOptions {
            anchors,
            ..Default::default()
        };
        g.bench_function(BenchmarkId::new(label, n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    run += 1;
                    let path = dir.path().join(format!("sink-{run}.db"));
                    SqliteSink::create(&path).unwrap();
                    let name = format!("s{run}");
                    add_sink(&mut ledger, &name, &format!("sqlite://{}", path.display()));
                    let start = Instant::now();
                    let report = rt
                        .block_on(project::project_named(&ledger, &name, &opts))
                        .unwrap();
                    total += start.elapsed();
                    assert_eq!(report.writes, n);
                    std::fs::remove_file(&path).unwrap();
                }
                total
            })
        });
    }
    // Baseline: the same number of rows of about the same size, inserted by plain rusqlite in
    // 1 000-row transactions with the sink's pragmas.
    g.bench_function(BenchmarkId::new("raw_rusqlite_insert_batched", n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let path = dir.path().join(format!("raw-{i}.db"));
                let mut conn = rusqlite::Connection::open(&path).unwrap();
                conn.pragma_update(None, "journal_mode", "WAL").unwrap();
                conn.pragma_update(None, "synchronous", "FULL").unwrap();
                conn.execute_batch(
                    "CREATE TABLE objects (name TEXT PRIMARY KEY, seq INTEGER, meta BLOB, sealed BLOB)",
                )
                .unwrap();
                let start = Instant::now();
                for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
                    let tx = conn.transaction().unwrap();
                    {
                        let mut stmt = tx
                            .prepare_cached("INSERT INTO objects VALUES (?1, ?2, ?3, ?4)")
                            .unwrap();
                        for k in chunk {
                            stmt.execute(rusqlite::params![
                                format!("sledger-{k:036}"),
                                *k as i64,
                                [7u8; 120],
                                [9u8; 90]
                            ])
                            .unwrap();
                        }
                    }
                    tx.commit().unwrap();
                }
                total += start.elapsed();
                drop(conn);
                std::fs::remove_file(&path).unwrap();
            }
            total
        })
    });
    g.finish();
}

fn example_plugin() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/exec_sink_dir");
    assert!(
        path.exists(),
        "build the example plug-in first: cargo build --release --examples"
    );
    path
}

fn exec_projection(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = ledger_with(dir.path(), EXEC_SECRETS);
    let rt = runtime();
    let plugin = example_plugin();
    let url = |run: u64, concurrency: usize| {
        format!(
            "exec://{}?arg=--dir&arg={}&arg=--sleep-ms&arg={PLUGIN_SLEEP_MS}&max_concurrency={concurrency}",
            plugin.display(),
            dir.path().join(format!("objects-{run}")).display()
        )
    };
    let mut g = c.benchmark_group("project_exec");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .throughput(Throughput::Elements(EXEC_SECRETS));
    let mut run = 0;
    for concurrency in [1usize, 8, 16] {
        g.bench_function(
            BenchmarkId::new("sledger_project_concurrency", concurrency),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        run += 1;
                        let name = format!("x{run}");
                        add_sink(&mut ledger, &name, &url(run, concurrency));
                        let start = Instant::now();
                        let report = rt
                            .block_on(project::project_named(&ledger, &name, &ProjectOptions::default()))
                            .unwrap();
                        total += start.elapsed();
                        assert_eq!(report.writes, EXEC_SECRETS);
                    }
                    total
                })
            },
        );
    }
    // Baseline: the plain loop a script would write, one put after another.
    let head = ledger.head().unwrap().seq;
    let records: Vec<_> = ledger
        .compacted_ops(0, head)
        .unwrap()
        .into_iter()
        .filter_map(|op| match op {
            Op::Put(r) => Some(r),
            Op::Delete { .. } => None,
        })
        .collect();
    g.bench_function("one_at_a_time_put_loop", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                run += 1;
                let sink = ledger.open_sink_url(&url(run, 1)).unwrap();
                let start = Instant::now();
                rt.block_on(async {
                    for r in &records {
                        sink.put(r).await.unwrap();
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// `moto_server` from the tests' cached venv (or PATH): `cargo test --test aws` installs it.
fn moto_server() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-servers/venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("moto_server")).find(|p| p.is_file()))
        .expect("moto_server is needed: run `cargo test --test aws` once (it installs it), or `pip install 'moto[server]'`")
}

/// A moto server on a free loopback port, up and answering.
fn start_moto() -> (std::process::Child, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let child = std::process::Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, port)
}

/// A backup of 1 000 secrets into AWS Secrets Manager (a fresh moto server on loopback for
/// each run, so runs do not slow each other down), one write at a time vs 16 in flight.
fn aws_projection(c: &mut Criterion) {
    const SECRETS: u64 = 1000;
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ] {
        std::env::set_var(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = ledger_with(dir.path(), SECRETS);
    let rt = runtime();
    let mut g = c.benchmark_group("project_aws_moto");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .throughput(Throughput::Elements(SECRETS));
    let mut run = 0;
    for concurrency in [1usize, 16] {
        g.bench_function(BenchmarkId::new("sledger_backup_concurrency", concurrency), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    run += 1;
                    let (mut moto, port) = start_moto();
                    let name = format!("aws{run}");
                    let url = format!(
                        "aws-sm://us-east-1?endpoint=http://127.0.0.1:{port}&max_concurrency={concurrency}"
                    );
                    add_sink(&mut ledger, &name, &url);
                    let start = Instant::now();
                    let report = rt
                        .block_on(project::project_named(&ledger, &name, &ProjectOptions::default()))
                        .unwrap();
                    total += start.elapsed();
                    assert_eq!(report.writes, SECRETS);
                    let _ = moto.kill();
                    let _ = moto.wait();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, sqlite_projection, exec_projection, aws_projection);
criterion_main!(benches);
