//! The ledger in PostgreSQL (DESIGN §13), in one run on a PostgreSQL cluster of its own
//! (durable: `fsync` and `synchronous_commit` on, as installed):
//!
//! 1. creates through `LedgerHandle`'s group commit (1, 16 and 64 writers), each a durable
//!    append (event, catalog row, labels, data key under the write lock), beside raw batched
//!    INSERTs into the same server: of every row those creates wrote, in the transaction sizes
//!    the group commit used; of their event rows alone, in those sizes and in 1 000-row
//!    transactions;
//! 2. creates/s through two `sledger serve` on one database at 16 clients;
//! 3. failover: SIGKILL the server that applied the last batch; the time until the other has
//!    applied a write made after the kill.
//!
//! Each row of 1. is the median of three rounds, sledger and raw alternating.
//! `cargo bench --bench postgres` prints Markdown tables for the README;
//! `POSTGRES_BENCH_WRITERS=16` runs that row of the first alone (to profile it).

#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use sledger::store::Location;
use sledger::{Command, Ledger, LedgerHandle, LedgerSettings, MasterKey, Scope, SecretValues};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Creates/s through the handle with `writers` tasks, and the mean requests per commit.
fn through_handle(location: Location, master: MasterKey, writers: usize, creates: usize) -> (f64, f64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let handle = LedgerHandle::open(location, master).unwrap();
        let per_writer = creates / writers;
        let start = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    for i in 0..per_writer {
                        handle
                            .execute("bench", vec![create(format!("w{w}/{i}"))])
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = start.elapsed();
        let stats = handle.commit_stats();
        handle.close();
        (
            (per_writer * writers) as f64 / elapsed.as_secs_f64(),
            stats.requests as f64 / stats.groups.max(1) as f64,
        )
    })
}

/// One column of rows read back, as the array parameter that inserts it again.
fn column(rows: &[tokio_postgres::Row], i: usize) -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
    use tokio_postgres::types::{FromSqlOwned, ToSql, Type};
    fn array<T: FromSqlOwned + ToSql + Sync + Send + 'static>(
        rows: &[tokio_postgres::Row],
        i: usize,
    ) -> Box<dyn ToSql + Sync + Send> {
        Box::new(rows.iter().map(|r| r.get::<_, Option<T>>(i)).collect::<Vec<_>>())
    }
    match *rows.first().map_or(&Type::BYTEA, |r| r.columns()[i].type_()) {
        Type::INT8 => array::<i64>(rows, i),
        Type::INT4 => array::<i32>(rows, i),
        Type::TEXT => array::<String>(rows, i),
        Type::BYTEA => array::<Vec<u8>>(rows, i),
        ref other => panic!("no raw copy for a column of type {other}"),
    }
}

/// The tables a create writes rows into, each with the order its rows are read back in.
const EVENTS: (&str, &str) = ("events", "seq");
const CREATED_ROWS: [(&str, &str); 4] = [
    EVENTS,
    ("secret_keys", "secret_id"),
    ("catalog", "secret_id"),
    ("catalog_labels", "secret_id"),
];

/// Rows/s of `tables[counted]` inserting the rows `database` holds in `tables` again, raw, into
/// copies of those tables with the same indexes: `batch` rows of `tables[counted]` a
/// transaction (the other tables' rows in the same proportion), each table one multi-row
/// INSERT, as sledger's store sends them. With `setting`, each transaction also upserts the
/// ledger's `catalog_seq`, as sledger's appends do. A transaction of several statements goes in
/// one pipeline; a lone INSERT is its own transaction.
fn raw_insert(url: &str, tables: &[(&str, &str)], counted: usize, setting: bool, batch: usize) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let mut copies = Vec::new();
        for (table, order) in tables {
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS raw_{table}; CREATE TABLE raw_{table} (LIKE sledger.{table} INCLUDING ALL)"
                ))
                .await
                .unwrap();
            let rows = client
                .query(&format!("SELECT * FROM sledger.{table} ORDER BY {order}"), &[])
                .await
                .unwrap();
            let unnest: Vec<String> = rows[0]
                .columns()
                .iter()
                .enumerate()
                .map(|(i, c)| format!("${}::{}[]", i + 1, c.type_()))
                .collect();
            let insert = client
                .prepare(&format!("INSERT INTO raw_{table} SELECT * FROM unnest({})", unnest.join(", ")))
                .await
                .unwrap();
            copies.push((insert, rows));
        }
        client
            .batch_execute("DROP TABLE IF EXISTS raw_ledger_meta; CREATE TABLE raw_ledger_meta (LIKE sledger.ledger_meta INCLUDING ALL)")
            .await
            .unwrap();
        let upsert_setting = client
            .prepare(
                "INSERT INTO raw_ledger_meta (key, int_value) VALUES ('catalog_seq', $1)
                 ON CONFLICT (key) DO UPDATE SET int_value = excluded.int_value",
            )
            .await
            .unwrap();
        let rows = copies[counted].1.len();
        let transactions = rows.div_ceil(batch.max(1));
        let start = Instant::now();
        for t in 0..transactions {
            let params: Vec<_> = copies
                .iter()
                .map(|(insert, rows)| {
                    let per = rows.len().div_ceil(transactions);
                    let chunk = &rows[(t * per).min(rows.len())..((t + 1) * per).min(rows.len())];
                    let columns: Vec<_> = (0..chunk.first().map_or(0, |r| r.len())).map(|i| column(chunk, i)).collect();
                    (insert, columns)
                })
                .filter(|(_, columns)| !columns.is_empty())
                .collect();
            let inserts = params.iter().map(|(insert, columns)| {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    columns.iter().map(|c| c.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
                let client = &client;
                async move { client.execute(*insert, &refs).await }
            });
            if params.len() == 1 && !setting {
                futures::future::join_all(inserts).await.into_iter().for_each(|w| {
                    w.unwrap();
                });
                continue;
            }
            let seq = t as i64;
            let seq: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&seq];
            let settings = setting.then(|| client.execute(&upsert_setting, &seq));
            // Sent in one pipeline: each request goes out when first polled, in this order.
            let (begin, written, set, commit) = futures::join!(
                client.batch_execute("BEGIN"),
                futures::future::join_all(inserts),
                futures::future::OptionFuture::from(settings),
                client.batch_execute("COMMIT"),
            );
            begin.unwrap();
            written.into_iter().for_each(|w| {
                w.unwrap();
            });
            set.transpose().unwrap();
            commit.unwrap();
        }
        rows as f64 / start.elapsed().as_secs_f64()
    })
}

fn sledger(url: &str, key: &std::path::Path) -> Process {
    let mut command = Process::new(env!("CARGO_BIN_EXE_sledger"));
    command
        .env("SLEDGER_LEDGER", url)
        .env("SLEDGER_KEY_FILE", key)
        .env_remove("SLEDGER_MASTER_KEY")
        .env("SLEDGER_ACTOR", "bench");
    command
}

fn serve(url: &str, key: &std::path::Path) -> (Child, String) {
    let mut child = sledger(url, key)
        .args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("serve exited").unwrap();
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, base)
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep that a quick smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let creates = if quick { 256 } else { 20_000 };
    let server = pg::Postgres::start();
    let dir = tempfile::tempdir().unwrap();

    println!("| writers | sledger creates/s (durable, group commit) | requests per commit | raw INSERT of every row those creates wrote, same transactions | sledger ÷ that | raw INSERT of their event rows alone, same transactions | sledger ÷ that | event rows alone, 1 000-row transactions |");
    println!("|---|---|---|---|---|---|---|---|");
    // POSTGRES_BENCH_WRITERS=16 runs that row alone (to profile it), without the servers.
    let only: Option<usize> = std::env::var("POSTGRES_BENCH_WRITERS")
        .ok()
        .map(|n| n.parse().expect("POSTGRES_BENCH_WRITERS is a number"));
    let rows = only.map_or(vec![1, 16, 64], |n| vec![n]);
    // The disk's fsync times drift by tens of percent over seconds: each row alternates sledger
    // and the raw INSERTs over fresh databases and reports medians, each ratio the median of its
    // rounds' ratios.
    let rounds = if quick { 1 } else { 3 };
    for writers in rows {
        let mut measured = Vec::new();
        let mut raw_1000 = 0.0;
        for round in 0..rounds {
            let url = server.database(&format!("handle{writers}_{round}"));
            let location = Location::parse(&url).unwrap();
            let master = MasterKey::generate();
            Ledger::init(location.clone(), master.clone(), LedgerSettings::default()).unwrap();
            let (per_second, per_commit) = through_handle(location, master, writers, creates);
            let batch = per_commit.round() as usize;
            // Counted by catalog rows: one per create.
            let every_row = raw_insert(&url, &CREATED_ROWS, 2, true, batch);
            let events = raw_insert(&url, &[EVENTS], 0, false, batch);
            if round == 0 {
                raw_1000 = raw_insert(&url, &[EVENTS], 0, false, 1000);
            }
            measured.push([
                per_second,
                per_commit,
                every_row,
                events,
                per_second / every_row,
                per_second / events,
            ]);
        }
        let median = |i: usize| {
            let mut values: Vec<f64> = measured.iter().map(|m| m[i]).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        println!(
            "| {writers} | {:.0} | {:.1} | {:.0} creates/s | {:.0} % | {:.0} rows/s | {:.0} % | {raw_1000:.0} rows/s |",
            median(0),
            median(1),
            median(2),
            median(4) * 100.0,
            median(3),
            median(5) * 100.0
        );
    }

    if only.is_some() {
        return;
    }

    // Two servers, one database.
    let url = server.database("servers");
    let key = dir.path().join("ledger.key");
    let primary = format!("sqlite://{}", dir.path().join("primary.db").display());
    let ok = |command: &mut Process| {
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    ok(sledger(&url, &key).args(["init", "--primary", &primary]));
    let token: serde_json::Value = serde_json::from_str(&ok(sledger(&url, &key).args([
        "--format",
        "json",
        "token",
        "create",
        "--name",
        "bench",
        "--role",
        "admin",
        "--pattern",
        "*",
    ])))
    .unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let mut servers = [serve(&url, &key), serve(&url, &key)];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let run_for = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(20)
    };
    let bases: Vec<String> = servers.iter().map(|(_, base)| base.clone()).collect();
    let created = runtime.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..16)
            .map(|c| {
                let (client, token, bases) = (client.clone(), token.clone(), bases.clone());
                tokio::spawn(async move {
                    let mut done = 0u64;
                    while start.elapsed() < run_for {
                        let response = client
                            .post(format!("{}/v1/secrets", bases[c % 2]))
                            .bearer_auth(&token)
                            .json(&serde_json::json!({"name": format!("c{c}/{done}"), "values": {"password": "correct horse battery staple", "user": "svc"}}))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        total as f64 / start.elapsed().as_secs_f64()
    });

    // Failover: kill whoever applied the primary's last batch, write through the other, and
    // time until that write is in the primary sink.
    let location = Location::parse(&url).unwrap();
    let master = MasterKey::read_file(&key).unwrap();
    let status = |ledger: &Ledger| {
        ledger
            .sink_status()
            .unwrap()
            .into_iter()
            .find(|s| s.name == "local")
            .unwrap()
    };
    let settle = |ledger: &Ledger| {
        let until = Instant::now() + Duration::from_secs(120);
        while status(ledger).lag > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let ledger = Ledger::open_with_key(location, master).unwrap();
    settle(&ledger);
    let leader = status(&ledger).projected_by.unwrap_or_default();
    let killed = servers
        .iter()
        .position(|(child, _)| leader.ends_with(&format!(":{}", child.id())))
        .unwrap_or(0);
    unsafe { libc::kill(servers[killed].0.id() as i32, libc::SIGKILL) };
    let killed_at = Instant::now();
    let survivor = &servers[1 - killed].1;
    runtime.block_on(async {
        let response = client
            .post(format!("{survivor}/v1/secrets"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"name": "after-failover", "values": {"k": "v"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    });
    settle(&ledger);
    let failover = killed_at.elapsed();
    for (child, _) in &mut servers {
        let _ = child.kill();
        let _ = child.wait();
    }
    println!();
    println!("| two `sledger serve` on one PostgreSQL, 16 clients | figure |");
    println!("|---|---|");
    println!("| creates/s through both (each acknowledged after its durable commit) | {created:.0} |");
    println!(
        "| failover: SIGKILL of the server that applied the last batch → a write through the other is in the primary sink | {:.0} ms |",
        failover.as_secs_f64() * 1000.0
    );
}
