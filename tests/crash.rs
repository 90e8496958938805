//! Crash test: a real `sledger import` appending batches is SIGKILLed at random points. After
//! each kill the ledger opens, `verify` passes, and every batch is wholly present or absent.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Env;
use rand::{Rng, SeedableRng};

const RECORDS: usize = 2000;
const BATCH: usize = 100;

fn write_input(env: &Env, run: usize) -> std::path::PathBuf {
    let path = env.path(&format!("run{run}.jsonl"));
    let mut text = String::new();
    for i in 0..RECORDS {
        text.push_str(&format!(
            "{{\"name\":\"r{run}-{i:05}\",\"values\":{{\"password\":\"pw-{run}-{i}\",\"user\":\"u{i}\"}},\"labels\":{{\"run\":\"{run}\"}}}}\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn import(env: &Env, file: &std::path::Path) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("sledger"))
        .env("SLEDGER_LEDGER", &env.ledger)
        .env("SLEDGER_ACTOR", "crash@test")
        .args([
            "--format",
            "json",
            // This test is about the append; projection has its own crash test.
            "--wait",
            "0",
            "import",
            "--file",
            file.to_str().unwrap(),
            "--batch-size",
            &BATCH.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Indices of run `run`'s secrets present in the ledger.
fn present(env: &Env, run: usize) -> BTreeSet<usize> {
    let list = env.json(&["secret", "list", "--label", &format!("run={run}")]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["name"]
                .as_str()
                .unwrap()
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn sigkill_mid_append_never_leaves_a_partial_batch() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = Env::new();

    // Time one full run to spread the kills over its whole length.
    let file = write_input(&env, 0);
    let started = Instant::now();
    assert!(import(&env, &file).wait().unwrap().success());
    let full = started.elapsed();
    assert_eq!(present(&env, 0).len(), RECORDS);

    let runs = 24;
    let mut partial = 0;
    for run in 1..=runs {
        let file = write_input(&env, run);
        let mut child = import(&env, &file);
        let delay = rng.gen_range(0..=full.as_millis() as u64 + 20);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        env.ok(&["verify"]);
        let got = present(&env, run);
        let n = got.len();
        assert_eq!(
            n % BATCH,
            0,
            "run {run} (killed after {delay} ms): {n} secrets is not a whole number of batches"
        );
        assert_eq!(
            got,
            (0..n).collect::<BTreeSet<_>>(),
            "run {run}: batches must land in order, whole"
        );
        if n > 0 && n < RECORDS {
            partial += 1;
            let last = format!("r{run}-{:05}", n - 1);
            assert_eq!(
                env.ok(&["secret", "get", &last, "--key", "password"]),
                format!("pw-{run}-{}\n", n - 1)
            );
        }
    }
    eprintln!("{partial} of {runs} kills landed mid-import (full run took {full:?})");
    assert!(
        partial >= 3,
        "too few kills landed mid-import to mean anything ({partial}); full run took {full:?}"
    );

    // Re-running an interrupted import finishes the job.
    for run in 1..=3 {
        let file = env.path(&format!("run{run}.jsonl"));
        assert!(import(&env, &file).wait().unwrap().success());
        assert_eq!(present(&env, run).len(), RECORDS);
    }
    env.ok(&["verify"]);
}
