//! Replay at scale, as a user runs it: a ledger of 1 000 000 events over 100 000 secrets (an
//! `import` of 100 000 secrets, then nine rounds of updates), a point-in-time restore of its
//! middle into a fresh sqlite sink (`sledger replay --into sqlite:///… --seq N`, timed, with the
//! process's peak memory), the fold rate, and `sledger diff` of the 100 000-secret sink.
//!
//! `cargo bench --bench replay` (SLEDGER_BENCH_SECRETS to change 100 000; always 10 events
//! per secret). Prints a table; not criterion, because each figure is one large end-to-end run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sledger::{keyfile, Ledger, SecretValues};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS_PER_SECRET: u64 = 10;
const RUNS: usize = 3;

fn sledger(ledger: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sledger"));
    c.env("SLEDGER_LEDGER", ledger).env_remove("SLEDGER_MASTER_KEY");
    c
}

/// Run to completion; wall time and peak resident memory (bytes) of the process.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also reports its peak memory
fn measured(mut cmd: Command) -> (Duration, u64) {
    let start = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sledger runs");
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for the child we spawned.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    (elapsed, usage.ru_maxrss as u64 * 1024)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` probes benches with --list
    }
    let secrets: u64 = std::env::var("SLEDGER_BENCH_SECRETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger.db");
    assert!(sledger(&ledger_path)
        .arg("init")
        .output()
        .unwrap()
        .status
        .success());

    let seed = dir.path().join("seed.jsonl");
    let lines: String = (0..secrets)
        .map(|i| format!("{{\"name\": \"svc/{i}\", \"values\": {{\"user\": \"app\", \"password\": \"p0-{i:08}\"}}, \"labels\": {{\"env\": \"prod\"}}}}\n"))
        .collect();
    std::fs::write(&seed, lines).unwrap();
    let mut import = sledger(&ledger_path);
    import.args(["--wait", "0", "import", "--file"]).arg(&seed);
    let (import_time, _) = measured(import);

    let mut ledger = Ledger::open(&ledger_path).unwrap();
    keyfile::unlock(&mut ledger, &dir.path().join("ledger.key")).unwrap();
    let start = Instant::now();
    for round in 1..EVENTS_PER_SECRET {
        for chunk in (0..secrets).collect::<Vec<_>>().chunks(1000) {
            let updates = chunk
                .iter()
                .map(|i| {
                    let mut values = SecretValues::new();
                    values.insert("password", format!("p{round}-{i:08}"));
                    sledger::Command::Update {
                        name: format!("svc/{i}"),
                        set_values: values,
                        remove_keys: vec![],
                        set_labels: Default::default(),
                        remove_labels: vec![],
                    }
                })
                .collect();
            ledger.execute("bench", updates).unwrap();
        }
    }
    let update_time = start.elapsed();
    let head = ledger.head().unwrap().seq;
    let target = head / 2;

    let time_it = |f: &mut dyn FnMut()| {
        median(
            (0..RUNS)
                .map(|_| {
                    let start = Instant::now();
                    f();
                    start.elapsed()
                })
                .collect(),
        )
    };
    let fold_full = time_it(&mut || {
        ledger.verify(&mut |_, _| {}).unwrap();
    });
    let fold_target =
        time_it(&mut || assert_eq!(ledger.catalog_at(target).unwrap().secrets.len() as u64, secrets));
    drop(ledger);

    let mut restore_times = Vec::new();
    let mut peak = 0;
    let mut last_sink = String::new();
    for run in 0..RUNS {
        last_sink = format!("sqlite://{}", dir.path().join(format!("pit-{run}.db")).display());
        let mut replay = sledger(&ledger_path);
        replay.args(["replay", "--into", &last_sink, "--seq", &target.to_string()]);
        let (elapsed, rss) = measured(replay);
        restore_times.push(elapsed);
        peak = peak.max(rss);
    }
    assert!(sledger(&ledger_path)
        .args(["sink", "add", "pit", &last_sink, "--role", "standby"])
        .output()
        .unwrap()
        .status
        .success());
    let diff_times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let mut diff = sledger(&ledger_path);
            diff.args(["diff", "pit", "--seq", &target.to_string()]);
            measured(diff).0
        })
        .collect();

    let restore = median(restore_times);
    println!(
        "ledger: {head} events over {secrets} secrets (import {import_time:.1?}, updates {update_time:.1?})"
    );
    println!("| figure | result |");
    println!("|---|---|");
    println!(
        "| point-in-time restore of seq {target} into a fresh sqlite sink (`sledger replay`, median of {RUNS}) | {restore:.2?}, peak RSS {} MiB |",
        peak / (1024 * 1024)
    );
    println!(
        "| fold of the whole log: decode + verify chain + fold (`verify`, median of {RUNS}) | {fold_full:.2?} ({:.0} events/s) |",
        head as f64 / fold_full.as_secs_f64()
    );
    println!("| fold to seq {target} from the nearest snapshot (`catalog_at`, what the restore starts with) | {fold_target:.2?} |");
    println!(
        "| `sledger diff` of the {secrets}-secret sink (list + read back + compare, median of {RUNS}) | {:.2?} |",
        median(diff_times)
    );
}
