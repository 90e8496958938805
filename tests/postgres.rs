//! A ledger in PostgreSQL (DESIGN §13), through the CLI as a user runs it, against a real
//! PostgreSQL cluster the test starts (tests/common/pg.rs).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::{Cut, CuttingProxy, Postgres};
use common::serve::Server;
use common::{tour, Env};
use reqwest::StatusCode;
use serde_json::json;
use sledger::store::Location;
use sledger::{keyfile, Command, Ledger, LedgerSettings, LogFilter, MasterKey, Scope, SecretValues};

/// An env whose ledger is database `db` of `server`, initialised with a sqlite primary.
fn pg_env(server: &Postgres, db: &str) -> Env {
    let mut env = Env::empty();
    env.ledger = PathBuf::from(server.database(db));
    env.ok(&["init", "--primary", &env.sqlite_url("ledger.sink.db")]);
    env
}

#[test]
fn the_cli_tour_passes_on_a_postgres_ledger() {
    let server = Postgres::start();
    for (db, part) in [
        ("tour1", tour::create_get_update_round_trip as fn(&Env)),
        ("tour2", tour::rename_delete_undelete_purge),
        ("tour3", tour::list_filters_by_label_and_history_shows_changes),
        ("tour4", tour::log_follow_prints_new_events),
    ] {
        let env = pg_env(&server, db);
        part(&env);
        let verified = env.json(&["verify"]);
        assert_eq!(verified["ok"], true, "{db}: {verified}");
    }
}

/// Load `count` creates into the file ledger of `env`, a thousand per append.
fn load(env: &Env, count: usize) -> u64 {
    let mut ledger = Ledger::open(&env.ledger).unwrap();
    keyfile::unlock(&mut ledger, &env.key).unwrap();
    let names: Vec<usize> = (0..count).collect();
    for batch in names.chunks(1000) {
        let commands = batch
            .iter()
            .map(|i| {
                let mut values = SecretValues::new();
                values.insert("v", format!("value-{i}"));
                Command::Create {
                    name: format!("s/{i:06}"),
                    scope: Scope::Workspace,
                    labels: BTreeMap::new(),
                    values,
                }
            })
            .collect();
        ledger.execute("alice", commands).unwrap();
    }
    ledger.head().unwrap().seq
}

/// `sledger ledger copy` moves a 100 000-event log from a file into PostgreSQL and back: every
/// copy ends at the same head hash, verifies with the master key, and serves the same values;
/// a second copy resumes where the first ended; a target holding another ledger is refused.
#[test]
fn ledger_copy_moves_a_log_to_postgres_and_back() {
    let server = Postgres::start();
    let env = Env::new();
    let head = load(&env, 100_000);
    let source = env.json(&["verify"]);

    let pg = server.database("copied");
    let there = env.json(&["ledger", "copy", "--to", &pg]);
    assert_eq!(there["copy"]["head"], head);
    assert_eq!(there["copy"]["events_copied"], head);
    assert_eq!(
        there["copy"]["head_hash"], source["head"]["hash"],
        "{there}\n{source}"
    );

    let key = env.key.to_str().unwrap();
    let verify_at = |ledger: &str| env.json(&["--ledger", ledger, "--key-file", key, "verify"]);
    let in_pg = verify_at(&pg);
    assert_eq!(in_pg["ok"], true, "{in_pg}");
    assert_eq!(in_pg["head"], source["head"]);
    let got = env.json(&[
        "--ledger",
        &pg,
        "--key-file",
        key,
        "secret",
        "get",
        "s/099999",
        "--from",
        "ledger",
    ]);
    assert_eq!(got["values"]["v"], "value-99999");

    // A backup of the database ledger at one instant, into a file, verified with the key.
    let snapshot = env.path("snapshot.db");
    let backed = env.json(&[
        "--ledger",
        &pg,
        "--key-file",
        key,
        "ledger",
        "backup",
        "--to",
        snapshot.to_str().unwrap(),
    ]);
    assert_eq!(
        (backed["seq"].as_u64(), backed["verified"].as_bool()),
        (Some(head), Some(true)),
        "{backed}"
    );

    let back = env.path("back.db");
    let back = back.to_str().unwrap();
    env.ok(&["ledger", "copy", "--from", &pg, "--to", back]);
    let round_trip = verify_at(back);
    assert_eq!(round_trip["ok"], true, "{round_trip}");
    assert_eq!(round_trip["head"], source["head"]);

    // Resumed: only what was appended since the last copy moves.
    env.ok(&["secret", "create", "later", "--value", "k=v"]);
    let resumed = env.json(&["ledger", "copy", "--to", &pg]);
    assert_eq!(resumed["copy"]["resumed_from"], head);
    assert_eq!(resumed["copy"]["events_copied"], 1);

    // Another ledger's copy is never mixed into this one.
    let other = Env::new();
    let refused = other.fails(&["ledger", "copy", "--to", &pg], 2);
    assert!(refused.contains("another ledger"), "{refused}");
    assert_eq!(verify_at(&pg)["head"]["seq"], head + 1);
}

/// Credentials never ride in the ledger URL, and a missing or unreachable database says what
/// to do; nothing is created by a refused command.
#[test]
fn bad_postgres_ledger_urls_are_refused_clearly() {
    let server = Postgres::start();
    let env = Env::empty();
    let with_password = format!("postgres://postgres:hunter2@127.0.0.1:{}/postgres", server.port);
    let refused = env.fails(&["--ledger", &with_password, "secret", "list"], 2);
    assert!(refused.contains("PGPASSWORD"), "{refused}");
    assert!(!refused.contains("hunter2"), "the password is echoed: {refused}");

    let url = server.database("noprimary");
    let refused = env.fails(
        &["--ledger", &url, "--key-file", env.key.to_str().unwrap(), "init"],
        2,
    );
    assert!(refused.contains("--primary"), "{refused}");
    assert!(!env.key.exists(), "a refused init leaves no key file");

    let missing = env.fails(&["--ledger", &url, "secret", "list"], 3);
    assert!(missing.contains("sledger init"), "{missing}");

    let unreachable = "postgres://postgres@127.0.0.1:1/sledger";
    let down = env.fails(&["--ledger", unreachable, "secret", "list"], 7);
    assert!(
        down.contains("cannot connect to postgres://postgres@127.0.0.1:1/sledger"),
        "{down}"
    );

    // A parameter may not send the connection elsewhere than the URL shows.
    for query in ["dbname=postgres", "db%6Eame=postgres"] {
        let elsewhere = format!("{url}?{query}");
        let refused = env.fails(&["--ledger", &elsewhere, "secret", "list"], 2);
        assert!(refused.contains("not with ?dbname="), "{refused}");
    }

    // A server that takes the connection and never answers: given up after connect_timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = format!(
        "postgres://postgres@{}/sledger?connect_timeout=1",
        silent.local_addr().unwrap()
    );
    let started = Instant::now();
    let down = env.fails(&["--ledger", &hung, "secret", "list"], 7);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(down.contains("no answer within"), "{down}");
    drop(silent);

    // A server that wants a password: none found, and a wrong one, each say where it comes from.
    server.role_with_password("secured", "s3cret-pw");
    let secured = format!("postgres://secured@127.0.0.1:{}/postgres", server.port);
    for (password, said) in [(None, "none was found"), (Some("wrong"), "refused the password")] {
        let mut command = env.cmd();
        command
            .env("PGPASSFILE", env.path("no-such-pgpass"))
            .env_remove("PGPASSWORD");
        if let Some(password) = password {
            command.env("PGPASSWORD", password);
        }
        let out = command
            .args(["--ledger", &secured, "secret", "list"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(said) && stderr.contains("PGPASSWORD"), "{stderr}");
    }
}

/// A new admin token for every secret (the servers under test take writes with it).
fn admin_token(env: &Env) -> String {
    let issued = env.json(&[
        "token",
        "create",
        "--name",
        "writer",
        "--role",
        "admin",
        "--pattern",
        "*",
    ]);
    issued["token"].as_str().unwrap().to_owned()
}

/// Checkpoints of every sink, per `sledger sink status`.
fn checkpoints(env: &Env) -> BTreeMap<String, u64> {
    let status = env.json(&["sink", "status"]);
    status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["checkpoint"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Two `sledger serve` on one database, 16 clients writing through both, a sqlite and an exec
/// sink attached. The server that holds a sink's write lock is SIGKILLed mid-projection: the
/// other takes the sinks over, every acknowledged write is in the log and in both sinks, the
/// log verifies, and no checkpoint ever moved back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_share_one_database_and_survive_losing_one() {
    let pg = Postgres::start();
    let env = pg_env(&pg, "shared");
    env.ok(&[
        "sink",
        "add",
        "plugin",
        &common::exec_url(&env.path("plugin"), &[]),
        "--role",
        "backup",
    ]);
    let token = admin_token(&env);
    let key = env.key.to_str().unwrap().to_owned();
    let mut first = Some(Server::start(&env, &["--key-file", &key]));
    let second = Server::start(&env, &["--key-file", &key]);
    let bases = [first.as_ref().unwrap().base.clone(), second.base.clone()];

    // Checkpoints sampled all along.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (env_ledger, env_key, sampling) = (env.ledger.clone(), env.key.clone(), sampling.clone());
        std::thread::spawn(move || {
            let watcher = Env {
                ledger: env_ledger,
                key: env_key,
                ..Env::empty()
            };
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            while sampling.load(Ordering::Relaxed) {
                for (sink, checkpoint) in checkpoints(&watcher) {
                    let before = seen.insert(sink.clone(), checkpoint).unwrap_or(0);
                    assert!(
                        checkpoint >= before,
                        "{sink}'s checkpoint moved back: {before} → {checkpoint}"
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (client, token, bases, acknowledged) =
                (client.clone(), token.clone(), bases.clone(), acknowledged.clone());
            tokio::spawn(async move {
                for i in 0..30 {
                    let name = format!("w{w:02}/s{i:02}");
                    // Alternate servers; one that is gone refuses, and the client moves on.
                    for attempt in 0..4 {
                        let base = &bases[(w + i + attempt) % 2];
                        let sent = client
                            .post(format!("{base}/v1/secrets"))
                            .bearer_auth(&token)
                            .json(&json!({"name": name, "values": {"k": format!("v{i}")}}))
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == StatusCode::CREATED => {
                                acknowledged.lock().unwrap().push(name.clone());
                                break;
                            }
                            // Created by a request whose reply was lost with its server.
                            Ok(r) if r.status() == StatusCode::CONFLICT => break,
                            Ok(r) => assert!(r.status().is_server_error(), "{name}: {}", r.status()),
                            Err(_) => {}
                        }
                    }
                }
            })
        })
        .collect();

    // Let projection get going, then kill the server that is writing a sink.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = first.take().unwrap();
    let pid = killed.child.id();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let killed_at = Instant::now();
    drop(killed);
    for writer in writers {
        writer.await.unwrap();
    }
    let last = client
        .post(second.url("/v1/secrets"))
        .bearer_auth(&token)
        .json(&json!({"name": "last", "values": {"k": "v"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), StatusCode::CREATED);
    acknowledged.lock().unwrap().push("last".into());

    // The survivor brings both sinks to the head within 10 s of the last write.
    let written = Instant::now();
    loop {
        let status = env.json(&["sink", "status"]);
        let settled = status.as_array().unwrap().iter().all(|s| s["lag"] == 0);
        if settled {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(10),
            "sinks did not converge within 10 s ({:?} after the kill): {status}",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    // The survivor projects every sink now, and says so.
    let survivor = format!(":{}", second.child.id());
    for status in env.json(&["sink", "status"]).as_array().unwrap() {
        let by = status["projected_by"].as_str().unwrap_or_default();
        assert!(
            by.ends_with(&survivor),
            "{} projected by {by:?}, not the survivor",
            status["name"]
        );
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 300,
        "too few writes succeeded: {}",
        acknowledged.len()
    );
    let listed: std::collections::BTreeSet<String> = env
        .json(&["secret", "list", "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    for name in &acknowledged {
        assert!(
            listed.contains(name),
            "acknowledged write {name} is not in the log"
        );
    }
    let log = env.json_lines(&["log", "--type", "secret.created", "--limit", "1000"]);
    assert_eq!(log.len(), listed.len(), "one event per secret, none twice");
    for sink in ["local", "plugin"] {
        assert!(env.differences(sink).is_empty(), "{sink} differs from the ledger");
    }
    assert_eq!(env.json(&["verify"])["ok"], true);
    second.stop();
}

fn create(name: &str) -> Command {
    let mut values = SecretValues::new();
    values.insert("k", "v");
    Command::Create {
        name: name.into(),
        scope: Scope::Workspace,
        labels: BTreeMap::new(),
        values,
    }
}

/// The connection is cut between COMMIT and its reply: the ledger looks the append up by its
/// event id on a new connection and reports it done, once. Cut before the COMMIT reaches the
/// server, the write is reported as a temporary failure and is not in the log.
#[test]
fn a_commit_whose_reply_is_lost_is_resolved_by_event_id() {
    let server = Postgres::start();
    let direct = Location::parse(&server.database("lost")).unwrap();
    let proxy = CuttingProxy::start(server.port);
    let proxied = Location::parse(&format!("postgres://postgres@127.0.0.1:{}/lost", proxy.port)).unwrap();
    let master = MasterKey::generate();
    let mut ledger = Ledger::init(proxied, master.clone(), LedgerSettings::default()).unwrap();

    proxy.arm(Cut::AfterCommit);
    let outcomes = ledger.execute("alice", vec![create("landed")]).unwrap();
    assert_eq!(proxy.cuts(), 1, "the proxy cut the connection at COMMIT");
    assert!(outcomes[0].seq().is_some(), "reported as done: {outcomes:?}");

    proxy.arm(Cut::BeforeCommit);
    let lost = ledger.execute("alice", vec![create("never")]).unwrap_err();
    assert_eq!(proxy.cuts(), 2);
    assert!(lost.is_temporary(), "{lost}");

    // The connection was replaced: the same handle writes again.
    ledger.execute("alice", vec![create("after")]).unwrap();
    let check = Ledger::open_with_key(direct, master).unwrap();
    let created: Vec<String> = check
        .log_entries("alice", LogFilter::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "secret.created")
        .map(|e| e.name.unwrap_or_default())
        .collect();
    assert_eq!(
        created,
        ["landed", "after"],
        "each landed write once, the lost one never"
    );
}

/// PostgreSQL restarts (fast shutdown) while clients write through two servers: the servers
/// reconnect by themselves, clients see only 503s (temporary) which they retry, and every
/// acknowledged write is in the log once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_survive_a_database_restart() {
    let mut pg = Postgres::start();
    let env = pg_env(&pg, "restarted");
    let token = admin_token(&env);
    let key = env.key.to_str().unwrap().to_owned();
    let servers = [
        Server::start(&env, &["--key-file", &key]),
        Server::start(&env, &["--key-file", &key]),
    ];
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let unavailable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (client, token, bases, unavailable) =
                (client.clone(), token.clone(), bases.clone(), unavailable.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0..25 {
                    let name = format!("w{w}/s{i:02}");
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let status = client
                            .post(format!("{}/v1/secrets", bases[(w + i) % 2]))
                            .bearer_auth(&token)
                            .json(&json!({"name": name, "values": {"k": "v"}}))
                            .send()
                            .await
                            .unwrap()
                            .status();
                        if status == StatusCode::CREATED {
                            acknowledged.push(name.clone());
                            break;
                        }
                        assert_eq!(
                            status,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "{name}: only temporary errors"
                        );
                        unavailable.fetch_add(1, Ordering::Relaxed);
                        assert!(Instant::now() < deadline, "{name} never got through");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::block_in_place(|| pg.restart());
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert_eq!(acknowledged.len(), 200);
    assert!(
        unavailable.load(Ordering::Relaxed) > 0,
        "the restart went unnoticed: the test did not test anything"
    );
    let log = env.json_lines(&["log", "--type", "secret.created", "--limit", "1000"]);
    let mut created: Vec<String> = log
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    created.sort();
    acknowledged.sort();
    assert_eq!(
        created, acknowledged,
        "every acknowledged write once, nothing else"
    );
    assert_eq!(env.json(&["verify"])["ok"], true);
}

/// A projector that would poll only every ten minutes applies a write made by another process
/// at once: PostgreSQL's LISTEN/NOTIFY wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_by_other_processes_wake_projectors() {
    use sledger::project::service::{self, FollowOptions, ProjectorEvent};
    let pg = Postgres::start();
    let env = pg_env(&pg, "woken");
    let (location, master) = (env.location(), sledger::MasterKey::read_file(&env.key).unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (projected, mut checkpoints) = tokio::sync::mpsc::unbounded_channel();
    let options = FollowOptions {
        poll: Duration::from_secs(600),
        ..Default::default()
    };
    let follower = tokio::spawn(async move {
        service::follow(&location, &master, options, None, stopped, move |event| {
            if let ProjectorEvent::Projected { report, .. } = event {
                let _ = projected.send(report.checkpoint);
            }
        })
        .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = Instant::now();
    tokio::task::block_in_place(|| env.ok(&["secret", "create", "woken", "--value", "k=v", "--wait", "0"]));
    let head = env.json(&["log", "--tail", "1"])["seq"].as_u64().unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(checkpoint) = checkpoints.recv().await {
            if checkpoint >= head {
                return;
            }
        }
    })
    .await
    .expect("the write was not projected within 10 s though the projector polls every 600 s");
    eprintln!("projected {:?} after the write", written.elapsed());
    stop.send(true).unwrap();
    follower.await.unwrap().unwrap();
}

/// Names freed and taken again inside one write (a delete then a create of the same name, two
/// secrets swapping names by three renames) land in PostgreSQL as in SQLite. The PostgreSQL
/// store merges a write's catalog rows into a few statements while the unique index on live
/// names checks each row as it goes in; this holds because each name change reaches the store
/// before another row takes that name (the unit tests in `writes.rs` check the merge's order).
#[test]
fn names_freed_and_taken_in_one_write_land_as_in_sqlite() {
    let server = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let locations = [
        Location::parse(dir.path().join("ledger.db").to_str().unwrap()).unwrap(),
        Location::parse(&server.database("names")).unwrap(),
    ];
    let rename = |name: &str, new_name: &str| Command::Rename {
        name: name.into(),
        new_name: new_name.into(),
    };
    for location in locations {
        let mut ledger =
            Ledger::init(location.clone(), MasterKey::generate(), LedgerSettings::default()).unwrap();
        ledger
            .execute("alice", vec![create("a"), create("b"), create("x")])
            .unwrap();
        let (a, b, x) = ["a", "b", "x"]
            .map(|n| ledger.find("alice", n).unwrap().id)
            .into();
        ledger
            .execute(
                "alice",
                vec![
                    Command::Delete { name: "x".into() },
                    create("x"),
                    rename("a", "tmp"),
                    rename("b", "a"),
                    rename("tmp", "b"),
                ],
            )
            .unwrap_or_else(|e| panic!("{location:?}: {e}"));
        assert_eq!(ledger.find("alice", "a").unwrap().id, b, "{location:?}");
        assert_eq!(ledger.find("alice", "b").unwrap().id, a, "{location:?}");
        assert_ne!(ledger.find("alice", "x").unwrap().id, x, "{location:?}");
        assert!(ledger.find("alice", "tmp").is_err(), "{location:?}");
    }
}
