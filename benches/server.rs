//! `sledger serve` under load, through its HTTP API from a Rust client (reqwest), the way the
//! ZenML peer harness (../shared/peers/zenml) drives ZenML's server: N secrets of 3 keys × 32
//! hex characters, created, read back by name, then updated, with 1 and with 16 concurrent
//! clients, each phase timed per request. The server is the release `sledger` binary on the
//! embedded default (ledger + local sqlite primary, projector running), so every read also
//! appends its access-log record durably before the value is returned.
//!
//! `cargo bench --bench server` prints `figure value unit` lines (the peer harness's format);
//! `benches/vs_zenml.sh` runs both and prints the README table. `SLEDGER_BENCH_N` sets N
//! (default 1000).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

fn rss_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap()
}

fn start(dir: &std::path::Path) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sledger"))
        .env("SLEDGER_LEDGER", dir.join("ledger.db"))
        .env_remove("SLEDGER_MASTER_KEY")
        .args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut token = String::new();
    let base = loop {
        let line = lines.next().expect("serve exited").unwrap();
        if line.starts_with("sledger_") {
            token = line;
        } else if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, base, token)
}

fn values() -> serde_json::Value {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let hex = |rng: &mut rand::rngs::ThreadRng| {
        (0..32)
            .map(|_| format!("{:x}", rng.gen_range(0..16)))
            .collect::<String>()
    };
    json!({"user": hex(&mut rng), "password": hex(&mut rng), "token": hex(&mut rng)})
}

#[derive(Clone, Copy)]
enum Phase {
    Create,
    Read,
    Update,
}

/// Run `n` requests of `phase` from `clients` concurrent clients; returns (rate/s, p50 ms, p99 ms).
async fn phase(
    base: &str,
    token: &str,
    run: &str,
    phase: Phase,
    n: usize,
    clients: usize,
) -> (f64, f64, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            let (base, token, run) = (base.to_owned(), token.to_owned(), run.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return latencies;
                    }
                    let name = format!("{run}/peer-{i}");
                    let t = Instant::now();
                    let request = match phase {
                        Phase::Create => client
                            .post(format!("{base}/v1/secrets"))
                            .json(&json!({"name": name, "values": values()})),
                        Phase::Read => client.get(format!("{base}/v1/secrets/{name}")),
                        Phase::Update => client
                            .patch(format!("{base}/v1/secrets/{name}"))
                            .json(&json!({"values": values()})),
                    };
                    let response = request.bearer_auth(&token).send().await.unwrap();
                    let status = response.status();
                    let body = response.bytes().await.unwrap();
                    assert!(
                        status.is_success(),
                        "{status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let total = started.elapsed();
    latencies.sort();
    let ms = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    (n as f64 / total.as_secs_f64(), ms(0.5), ms(0.99))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks what to run
    }
    let n: usize = std::env::var("SLEDGER_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (mut child, base, token) = start(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Ready when /readyz says so (ledger open, primary reachable).
        loop {
            if reqwest::get(format!("{base}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("sledger_server_startup {:.3} s", started.elapsed().as_secs_f64());
        println!("sledger_server_idle_rss {:.1} MiB", rss_mib(child.id(), "VmRSS"));
        for clients in [1, 16] {
            let run = format!("c{clients}");
            for (name, p) in [
                ("create", Phase::Create),
                ("read_by_name", Phase::Read),
                ("update", Phase::Update),
            ] {
                let (rate, p50, p99) = phase(&base, &token, &run, p, n, clients).await;
                println!("sledger_{name}_rate_c{clients} {rate:.1} secrets/s");
                println!("sledger_{name}_p50_c{clients} {p50:.3} ms");
                println!("sledger_{name}_p99_c{clients} {p99:.3} ms");
            }
        }
    });
    println!("sledger_server_peak_rss {:.1} MiB", rss_mib(child.id(), "VmHWM"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}
