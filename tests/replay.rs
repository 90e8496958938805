//! Replays through the CLI: point-in-time restore, replay into a standby, migration under
//! concurrent writes, backup with --delete-secrets then restore, drift found and reconciled.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::Env;
use serde_json::{json, Value};

const OUT_OF_SYNC: i32 = 10;
const USAGE: i32 = 2;

/// name → values of every live secret, as the ledger says.
fn state(env: &Env) -> BTreeMap<String, Value> {
    env.json(&["secret", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .map(|name| {
            let got = env.json(&["secret", "get", &name, "--from", "ledger"]);
            (name, got["values"].clone())
        })
        .collect()
}

fn now() -> String {
    std::thread::sleep(std::time::Duration::from_millis(20));
    let t = time::OffsetDateTime::now_utc();
    let s = t.format(&time::format_description::well_known::Rfc3339).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    s
}

#[test]
fn restore_at_t2_gives_exactly_the_state_at_t2() {
    let env = Env::new();
    env.ok(&[
        "secret", "create", "db", "--value", "pw=one", "--label", "env=prod",
    ]);
    env.ok(&["secret", "create", "api", "--value", "token=a"]);
    env.ok(&["secret", "create", "old", "--value", "k=v"]);
    let _t1 = now();
    env.ok(&[
        "secret",
        "update",
        "db",
        "--value",
        "pw=two",
        "--value",
        "user=app",
        "--remove-label",
        "env",
    ]);
    env.ok(&["secret", "delete", "old"]);
    env.ok(&["secret", "create", "tmp", "--value", "k=t"]);
    let t2 = now();
    let at_t2 = state(&env);
    // A bad change: overwrites, a rename, a delete, a new secret, and a name reused.
    env.ok(&[
        "secret",
        "update",
        "db",
        "--value",
        "pw=WRONG",
        "--remove-key",
        "user",
        "--label",
        "env=dev",
    ]);
    env.ok(&["secret", "rename", "api", "api-v2"]);
    env.ok(&["secret", "delete", "tmp"]);
    env.ok(&["secret", "create", "tmp", "--value", "k=impostor"]);
    env.ok(&["secret", "create", "new", "--value", "k=n"]);
    env.ok(&["secret", "undelete", "old"]);
    let _t3 = now();
    assert_ne!(state(&env), at_t2);

    let plan = env.json_lines(&["restore", "--at", &t2, "--dry-run"]);
    assert!(!plan.is_empty());
    assert_ne!(state(&env), at_t2, "--dry-run changed nothing");
    env.ok(&["restore", "--at", &t2]);
    assert_eq!(state(&env), at_t2);
    // The audit log says who restored, when, and to which point.
    let restored = env.json_lines(&["log", "--type", "ledger.restored"]);
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0]["actor"], "alice@test");
    assert!(
        restored[0]["detail"]
            .as_str()
            .unwrap()
            .contains("restore to the state after seq"),
        "{restored:?}"
    );
    assert_eq!(
        env.json(&["secret", "get", "db"])["labels"],
        json!({}),
        "labels restored too"
    );
    // History is kept: the bad change and its undoing are both in the log, by who did them.
    let history = env.json_lines(&["secret", "history", "db"]);
    assert!(history.len() >= 4, "{history:?}");
    env.ok(&["verify"]);
    // Restoring again changes nothing; the primary sink followed.
    let before = env.json(&["verify"])["events"].clone();
    env.ok(&["restore", "--at", &t2]);
    assert_eq!(env.json(&["verify"])["events"], before);
    assert_eq!(env.ok(&["diff", "local"]), "local: in sync\n");
    // Scripts get an answer too, not silence.
    assert_eq!(
        env.json(&["diff", "local"]),
        serde_json::json!({"sink": "local", "in_sync": true})
    );
}

#[test]
fn restore_after_purge_restores_the_rest_and_says_so() {
    let env = Env::new();
    env.ok(&["secret", "create", "keep", "--value", "k=1"]);
    env.ok(&["secret", "create", "gone", "--value", "k=1"]);
    let t1 = now();
    env.ok(&["secret", "update", "keep", "--value", "k=2"]);
    env.ok(&["secret", "purge", "gone", "--yes"]);
    let out = env.cmd().args(["restore", "--at", &t1]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gone"), "{out:?}");
    assert_eq!(env.ok(&["secret", "get", "keep", "--key", "k"]), "1\n");
    env.fails(&["secret", "get", "gone"], 3);
    // A point before any secret existed would delete everything: refused.
    let err = env.fails(&["restore", "--seq", "0"], USAGE);
    assert!(err.contains("would delete every secret"), "{err}");
    assert_eq!(env.ok(&["secret", "get", "keep", "--key", "k"]), "1\n");
    // --secret picks secrets; a name nobody had is an error.
    env.fails(&["restore", "--at", &t1, "--secret", "never-existed"], 3);
}

/// A point before the first secret is refused only when a restore would delete something: when
/// the only secrets since are another owner's private ones, there is nothing to do, and it says so.
#[test]
fn restore_before_the_first_secret_with_only_others_private_secrets_is_a_no_op() {
    let env = Env::new();
    env.ok(&[
        "--actor",
        "bob@test",
        "secret",
        "create",
        "bobs",
        "--private",
        "--value",
        "k=1",
    ]);
    let out = env.cmd().args(["restore", "--seq", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to restore"),
        "{out:?}"
    );
    assert!(
        stderr.contains("1 private secret(s) of other owners left alone"),
        "{stderr}"
    );
    assert_eq!(
        env.ok(&["--actor", "bob@test", "secret", "get", "bobs", "--key", "k"]),
        "1\n"
    );
    // Scripts get an answer too.
    assert_eq!(
        env.json_lines(&["restore", "--seq", "0"]),
        vec![serde_json::json!({"target_seq": 0, "in_sync": true})]
    );
    // An actor that cannot be recorded is refused before anything is appended.
    for actor in ["", " ", "a\u{1b}[2Jb"] {
        let err = env.fails(
            &["--actor", actor, "secret", "create", "x", "--value", "k=1"],
            USAGE,
        );
        assert!(err.contains("cannot be recorded"), "{err}");
    }
    env.fails(&["secret", "get", "x"], 3);
}

#[test]
fn replay_into_a_standby_or_url_materialises_a_past_state() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=1"]);
    let t1 = now();
    env.ok(&["secret", "update", "a", "--value", "k=2"]);
    env.ok(&["secret", "create", "b", "--value", "k=1"]);
    let url = env.sqlite_url("pit.db");
    env.ok(&["replay", "--into", &url, "--at", &t1]);
    env.ok(&["sink", "add", "pit", &url, "--role", "standby"]);
    env.ok(&["diff", "pit", "--at", &t1]);
    env.fails(&["diff", "pit"], OUT_OF_SYNC);
    // A standby by name, at a seq, then to the head; twice is a no-op.
    env.ok(&["replay", "--into", "pit"]);
    env.ok(&["diff", "pit"]);
    assert!(env.ok(&["replay", "--into", "pit"]).contains("in sync"));
    // A replay can not go back in place: the sink holds newer states, and nothing is touched.
    env.fails(&["replay", "--into", "pit", "--at", &t1], OUT_OF_SYNC);
    env.ok(&["diff", "pit"]);
    // Projected sinks are refused, however their URL is spelled.
    let err = env.fails(&["replay", "--into", "local"], USAGE);
    assert!(err.contains("projector"), "{err}");
    let respelled = format!(
        "sqlite://{}/./ledger.sink.db?max_concurrency=3",
        env.dir.path().display()
    );
    let err = env.fails(&["replay", "--into", &respelled], USAGE);
    assert!(err.contains("\"local\""), "{err}");
}

#[test]
fn restore_swaps_names_back_and_repairs_only_what_is_named() {
    let env = Env::new();
    env.ok(&["secret", "create", "blue", "--value", "k=B"]);
    env.ok(&["secret", "create", "green", "--value", "k=G"]);
    env.ok(&["secret", "create", "other", "--value", "k=O"]);
    let t1 = now();
    // Swap the names of blue and green.
    env.ok(&["secret", "rename", "blue", "tmp"]);
    env.ok(&["secret", "rename", "green", "blue"]);
    env.ok(&["secret", "rename", "tmp", "green"]);
    assert_eq!(env.ok(&["secret", "get", "blue", "--key", "k"]), "G\n");
    env.ok(&["restore", "--at", &t1]);
    assert_eq!(env.ok(&["secret", "get", "blue", "--key", "k"]), "B\n");
    assert_eq!(env.ok(&["secret", "get", "green", "--key", "k"]), "G\n");
    env.ok(&["diff", "local"]);

    // Repairing one secret in the primary leaves every other object alone.
    let sink = rusqlite::Connection::open(env.path("ledger.sink.db")).unwrap();
    // Every secret's object (the primary's anchor stays: it is not a secret).
    let secrets = "DELETE FROM objects WHERE secret_id != x'ffffffffffffffffffffffffffffffff'";
    assert_eq!(sink.execute(secrets, []).unwrap(), 3);
    drop(sink);
    env.ok(&["restore", "--secret", "blue"]);
    let missing = env.differences("local");
    let names: Vec<&str> = missing.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["green", "other"], "only blue was repaired");
    env.ok(&["restore"]);
    env.ok(&["diff", "local"]);
}

#[test]
fn migration_under_concurrent_writes_loses_nothing() {
    let env = Arc::new(Env::new());
    // Enough secrets that catching the new sink up takes a while.
    let lines: String = (0..2000)
        .map(|i| format!("{{\"name\": \"before-{i}\", \"values\": {{\"k\": \"v{i}\"}}}}\n"))
        .collect();
    std::fs::write(env.path("before.jsonl"), lines).unwrap();
    env.ok(&["import", "--file", env.path("before.jsonl").to_str().unwrap()]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (env, stop) = (env.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                env.ok(&["secret", "create", &format!("during-{n}"), "--value", "k=v"]);
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let new = env.sqlite_url("new.db");
    let out = env.ok(&["migrate", "--to", &new, "--name", "new"]);
    assert!(out.contains("4/5 new is the primary"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(written > 0);
    env.ok(&["project"]);
    let status: Vec<Value> = env.json(&["sink", "status"]).as_array().unwrap().clone();
    let role = |n: &str| status.iter().find(|s| s["name"] == n).unwrap()["role"].clone();
    assert_eq!((role("new"), role("local")), (json!("primary"), json!("backup")));
    env.ok(&["diff", "new"]);
    let listed = env.json(&["secret", "list"]).as_array().unwrap().len();
    assert_eq!(listed, 2000 + written);
    // Some writes landed between attaching the new sink and promoting it.
    let seq_of = |t: &str| {
        env.json_lines(&["log", "--type", t]).last().unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    let (attached, promoted) = (seq_of("sink.added"), seq_of("sink.role_changed"));
    let during = env
        .json_lines(&["log", "--type", "secret.created"])
        .iter()
        .filter(|e| (attached..promoted).contains(&e["seq"].as_u64().unwrap()))
        .count();
    assert!(
        during > 0,
        "no write landed during the migration (attached {attached}, promoted {promoted})"
    );
    for i in [0, written - 1] {
        let got = env.json(&["secret", "get", &format!("during-{i}")]);
        assert_eq!(got["source"]["name"], "new", "{got}");
    }
    // Re-running is a no-op; role changes are in the log.
    assert!(env.ok(&["migrate", "--to", "new"]).contains("already"));
    assert_eq!(env.json_lines(&["log", "--type", "sink.role_changed"]).len(), 2);
}

#[test]
fn backup_with_delete_secrets_then_restore() {
    let env = Env::new();
    env.ok(&["sink", "add", "bk", &env.sqlite_url("bk.db")]);
    for i in 0..5 {
        env.ok(&["secret", "create", &format!("s{i}"), "--value", "k=v"]);
    }
    env.fails(&["diff", "bk"], OUT_OF_SYNC);
    // A dry run says what would leave the primary, and changes nothing.
    let planned = env.json_lines(&["backup", "--dry-run", "--delete-secrets"]);
    let emptied = planned.iter().find(|d| d.get("would_delete").is_some());
    assert_eq!(
        emptied,
        Some(&json!({"sink": "local", "would_delete": 5})),
        "{planned:?}"
    );
    let said = env.ok(&["backup", "--dry-run", "--delete-secrets"]);
    assert!(said.contains("local: would delete 5 secret(s)"), "{said}");
    env.fails(&["diff", "bk"], OUT_OF_SYNC);
    env.ok(&["diff", "local"]);
    env.ok(&["backup", "--delete-secrets"]);
    env.ok(&["diff", "bk"]);
    env.fails(&["diff", "local"], OUT_OF_SYNC);
    assert_eq!(env.json(&["secret", "get", "s3"])["source"]["name"], "bk");
    env.ok(&["restore"]);
    env.ok(&["diff", "local"]);
    assert_eq!(env.json(&["secret", "get", "s3"])["source"]["name"], "local");
    // A primary whose file is lost altogether is rebuilt by the same repair.
    std::fs::remove_file(env.path("ledger.sink.db")).unwrap();
    env.fails(&["diff", "local"], 7);
    env.ok(&["restore"]);
    env.ok(&["diff", "local"]);
}

#[test]
fn migrate_with_delete_secrets_empties_the_old_primary() {
    let env = Env::new();
    for i in 0..5 {
        env.ok(&["secret", "create", &format!("s{i}"), "--value", "k=v"]);
    }
    let new = env.sqlite_url("new.db");
    assert!(env
        .ok(&["migrate", "--to", &new, "--name", "new", "--dry-run"])
        .contains("would attach"));
    assert_eq!(
        env.json(&["sink", "list"]).as_array().unwrap().len(),
        1,
        "--dry-run attached nothing"
    );
    env.ok(&["migrate", "--to", &new, "--name", "new", "--delete-secrets"]);
    env.ok(&["diff", "new"]);
    assert_eq!(env.differences("local").len(), 5, "the old primary was emptied");
    assert_eq!(env.json(&["secret", "get", "s4"])["source"]["name"], "new");
    let role = |name: &str| {
        let status = env.json(&["sink", "status"]);
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["role"]
            .clone()
    };
    assert_eq!(
        role("local"),
        "standby",
        "no projector refills the emptied old primary"
    );

    // Interrupted right after a promotion: the re-run finishes emptying the old primary.
    env.ok(&["sink", "add", "third", &env.sqlite_url("third.db")]);
    env.ok(&["project"]);
    env.ok(&["sink", "promote", "third"]);
    assert_eq!(role("new"), "backup");
    env.ok(&["migrate", "--to", "third", "--delete-secrets"]);
    assert_eq!(role("new"), "standby");
    assert_eq!(env.differences("new").len(), 5);
    env.ok(&["diff", "third"]);
}

#[test]
fn drift_behind_the_ledgers_back_is_found_and_reconciled() {
    let env = Env::new();
    for i in 0..4 {
        env.ok(&[
            "secret",
            "create",
            &format!("s{i}"),
            "--value",
            &format!("k=v{i}"),
        ]);
    }
    env.ok(&["diff", "local"]);
    let sink = rusqlite::Connection::open(env.path("ledger.sink.db")).unwrap();
    let rows: Vec<(String, Vec<u8>)> = sink
        .prepare("SELECT name, sealed FROM objects ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // One object removed, one with another object's ciphertext, one at an older seq, and a
    // stray object under the prefix.
    sink.execute("DELETE FROM objects WHERE name = ?1", [&rows[0].0])
        .unwrap();
    sink.execute(
        "UPDATE objects SET sealed = ?1 WHERE name = ?2",
        rusqlite::params![rows[2].1, rows[1].0],
    )
    .unwrap();
    sink.execute("UPDATE objects SET seq = seq - 1 WHERE name = ?1", [&rows[3].0])
        .unwrap();
    sink.execute(
        "INSERT INTO objects SELECT 'sledger-01a2254e-33e5-76af-9c86-7dc33fb6dfbe', x'01a2254e33e576af9c867dc33fb6dfbe', 1, 0, meta, sealed FROM objects LIMIT 1",
        [],
    )
    .unwrap();
    drop(sink);
    let mut kinds: Vec<String> = env
        .differences("local")
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["drifted", "extra", "missing", "stale"]);
    env.ok(&["reconcile", "local"]);
    env.ok(&["diff", "local"]);
    for i in 0..4 {
        let got = env.json(&["secret", "get", &format!("s{i}"), "--from", "primary"]);
        assert_eq!(got["values"]["k"], format!("v{i}"));
    }

    // A value changed in place, properly sealed and at the same seq (a tool with the sink key
    // writing behind the ledger's back), is drift too.
    let mut ledger = sledger::Ledger::open(&env.ledger).unwrap();
    sledger::keyfile::unlock(&mut ledger, &env.key).unwrap();
    let (_, sink) = ledger.open_sink("local").unwrap();
    let id = ledger.find("alice@test", "s2").unwrap().id;
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut record = sink.get(id).await.unwrap().unwrap();
        record.values.insert("k", "tampered");
        sink.put(&record).await.unwrap();
    });
    drop((sink, ledger));
    // Reads do not believe it: the primary's record fails the fingerprint check.
    let err = env.fails(&["secret", "get", "s2", "--from", "primary"], 7);
    assert!(err.contains("drifted"), "{err}");
    assert_eq!(env.json(&["secret", "get", "s2"])["values"]["k"], "v2");
    let found = &env.differences("local")[..];
    assert_eq!(found.len(), 1, "{found:?}");
    let found = &found[0];
    assert_eq!(
        (found["kind"].as_str(), found["name"].as_str()),
        (Some("drifted"), Some("s2"))
    );
    env.ok(&["reconcile", "local"]);
    assert_eq!(
        env.json(&["secret", "get", "s2", "--from", "primary"])["values"]["k"],
        "v2"
    );
}

/// A replay into an attached sink waits for the sink's write lock, the one its projectors take
/// per batch, so the two never write at once.
#[test]
fn reconcile_waits_for_the_sinks_write_lock() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=1"]);
    env.ok(&["sink", "add", "b", &env.sqlite_url("b.db"), "--role", "standby"]);
    let lock = std::fs::File::create(format!("{}.sink-b.lock", env.ledger.display())).unwrap();
    lock.lock().unwrap();
    let mut reconcile = env.spawn(&[], &["reconcile", "b"]);
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(
        reconcile.try_wait().unwrap().is_none(),
        "reconcile wrote while another process held the lock"
    );
    assert_eq!(env.differences("b").len(), 1, "nothing written yet");
    drop(lock);
    assert!(reconcile.wait().unwrap().success());
    assert!(env.differences("b").is_empty());
}
