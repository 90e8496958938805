//! Group commit through the concurrent ledger handle: creates/s and latency with 1, 4, 16 and
//! 64 concurrent writers, beside the single-writer baseline (one `Ledger::execute` per create,
//! one transaction and fsync each), all in one run on a fresh ledger each.
//!
//! `cargo bench --bench group_commit` prints a Markdown table for the README.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sledger::{Command, Ledger, LedgerHandle, LedgerSettings, MasterKey, Scope, SecretValues};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CREATES: usize = 20_000;

fn create(name: String) -> Command {
    let mut values = SecretValues::new();
    values.insert("password", "correct horse battery staple");
    values.insert("user", "svc");
    Command::Create {
        name,
        scope: Scope::Workspace,
        labels: BTreeMap::from([("env".to_owned(), "bench".to_owned())]),
        values,
    }
}

fn fresh() -> (tempfile::TempDir, std::path::PathBuf, MasterKey) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let master = MasterKey::generate();
    Ledger::init(&path, master.clone(), LedgerSettings::default()).unwrap();
    (dir, path, master)
}

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(elapsed: Duration, mut latencies: Vec<Duration>) -> Figures {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn single_writer(creates: usize) -> Figures {
    let (_dir, path, master) = fresh();
    let mut ledger = Ledger::open_with_key(&path, master).unwrap();
    let mut latencies = Vec::with_capacity(creates);
    let start = Instant::now();
    for i in 0..creates {
        let t = Instant::now();
        ledger.execute("bench", vec![create(format!("s/{i}"))]).unwrap();
        latencies.push(t.elapsed());
    }
    figures(start.elapsed(), latencies)
}

fn through_handle(writers: usize, creates: usize) -> Figures {
    let (_dir, path, master) = fresh();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let handle = LedgerHandle::open(&path, master).unwrap();
        let per_writer = creates / writers;
        let start = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per_writer);
                    for i in 0..per_writer {
                        let t = Instant::now();
                        handle
                            .execute("bench", vec![create(format!("w{w}/{i}"))])
                            .await
                            .unwrap();
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(creates);
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let elapsed = start.elapsed();
        let stats = handle.commit_stats();
        handle.close();
        eprintln!(
            "{writers} writers: {} requests in {} transactions ({:.1} per commit)",
            stats.requests,
            stats.groups,
            stats.requests as f64 / stats.groups as f64
        );
        figures(elapsed, latencies)
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep that a quick smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let creates = if quick { 256 } else { CREATES };
    let baseline = single_writer(if quick { 64 } else { 2_000 });
    println!("| writers | creates/s | p50 | p99 | vs single writer |");
    println!("|---|---|---|---|---|");
    println!(
        "| single writer, `Ledger::execute` per create (baseline) | {:.0} | {} | {} | 1.0× |",
        baseline.per_second,
        ms(baseline.p50),
        ms(baseline.p99)
    );
    // GROUP_COMMIT_WRITERS=16 runs one row alone (to profile it).
    let rows: Vec<usize> = match std::env::var("GROUP_COMMIT_WRITERS") {
        Ok(n) => vec![n.parse().expect("GROUP_COMMIT_WRITERS is a number")],
        Err(_) => vec![1, 4, 16, 64],
    };
    for writers in rows {
        let f = through_handle(writers, creates);
        println!(
            "| {writers} through `LedgerHandle` | {:.0} | {} | {} | {:.1}× |",
            f.per_second,
            ms(f.p50),
            ms(f.p99),
            f.per_second / baseline.per_second
        );
    }
}
