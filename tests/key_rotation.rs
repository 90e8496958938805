//! Key rotation is crash-safe: whatever point a rotation stops at, a key file opens the ledger.

mod common;

use common::Env;
use sledger::{keyfile, Ledger, MasterKey};

fn pending(env: &Env) -> std::path::PathBuf {
    env.path("ledger.key.new")
}

#[test]
fn a_rotation_committed_but_not_renamed_is_finished_on_next_open() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=v1"]);
    let mut ledger = Ledger::open(&env.ledger).unwrap();
    keyfile::unlock(&mut ledger, &env.key).unwrap();
    // Stop right after the commit: the new key is only in <key>.new.
    let path = pending(&env);
    let mut persist = |new: &MasterKey| new.write_new_file(&path);
    ledger
        .rotate_key("alice@test", MasterKey::generate(), &mut persist)
        .unwrap();
    drop(ledger);
    assert!(pending(&env).exists());

    assert_eq!(env.ok(&["secret", "get", "db", "--key", "pw"]), "v1\n");
    assert!(!pending(&env).exists(), "the interrupted rotation was finished");
    assert_eq!(env.ok(&["secret", "get", "db", "--key", "pw"]), "v1\n");
}

#[test]
fn a_rotation_that_never_committed_changes_nothing() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=v1"]);
    let mut ledger = Ledger::open(&env.ledger).unwrap();
    keyfile::unlock(&mut ledger, &env.key).unwrap();
    let path = pending(&env);
    let mut fail_after_writing = |new: &MasterKey| {
        new.write_new_file(&path)?;
        Err(sledger::Error::InvalidInput(
            "simulated crash before commit".into(),
        ))
    };
    assert!(ledger
        .rotate_key("alice@test", MasterKey::generate(), &mut fail_after_writing)
        .is_err());
    drop(ledger);
    // The old key still opens everything; readers leave the stray file alone.
    assert_eq!(env.ok(&["secret", "get", "db", "--key", "pw"]), "v1\n");
    assert!(pending(&env).exists());
    // The next rotation replaces it and works.
    env.ok(&["key", "rotate"]);
    assert!(!pending(&env).exists());
    assert_eq!(env.ok(&["secret", "get", "db", "--key", "pw"]), "v1\n");
}

#[test]
fn a_process_holding_a_rotated_key_cannot_write() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=v1"]);
    let mut stale = Ledger::open(&env.ledger).unwrap();
    keyfile::unlock(&mut stale, &env.key).unwrap();
    env.ok(&["key", "rotate"]);
    let mut values = sledger::SecretValues::new();
    values.insert("pw", "v2");
    let err = stale
        .execute(
            "alice@test",
            vec![sledger::Command::Create {
                name: "new".into(),
                scope: sledger::Scope::Workspace,
                labels: Default::default(),
                values,
            }],
        )
        .unwrap_err();
    assert!(matches!(err, sledger::Error::KeyRotated), "{err}");
    env.ok(&["verify"]);
}

/// Writes racing key rotations by another process wait them out instead of failing (issue:
/// 3 of 160 writes used to fail with exit 6 and "run the command again").
#[test]
fn writes_during_key_rotations_all_succeed() {
    let env = std::sync::Arc::new(Env::new());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let env = env.clone();
            std::thread::spawn(move || {
                for i in 0..15 {
                    let out = env.run(&[
                        "--wait",
                        "0",
                        "secret",
                        "create",
                        &format!("w{w}/{i}"),
                        "--value",
                        "k=v",
                    ]);
                    assert!(
                        out.status.success(),
                        "write w{w}/{i} failed ({:?}): {}",
                        out.status.code(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            })
        })
        .collect();
    for _ in 0..3 {
        env.ok(&["key", "rotate"]);
    }
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(env.json(&["secret", "list"]).as_array().unwrap().len(), 60);
    env.ok(&["verify"]);
}

/// What a leaked old master key still opens after `key rotate`: the history sealed before the
/// rotation, never a version written after it. The attacker here has the old key, a copy of
/// the ledger from before the rotation (which holds every data key wrapped by that key) and
/// the current ledger file: they graft the old copy's key material onto the current file and
/// open it with the old key. Version 1 opens; version 2, written after the rotation, does not.
#[test]
fn a_leaked_old_key_opens_only_the_history_before_the_rotation() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=before"]);
    let old_copy = env.path("before-rotation.db");
    env.ok(&["ledger", "backup", "--to", old_copy.to_str().unwrap()]);
    let old_key = env.path("old.key");
    std::fs::copy(&env.key, &old_key).unwrap();
    env.ok(&["key", "rotate"]);
    env.ok(&["secret", "update", "db", "--value", "pw=after"]);
    assert_eq!(env.ok(&["secret", "get", "db", "--key", "pw"]), "after\n");

    let grafted = env.path("grafted.db");
    env.ok(&["ledger", "backup", "--to", grafted.to_str().unwrap()]);
    let raw = rusqlite::Connection::open(&grafted).unwrap();
    raw.execute("ATTACH ?1 AS old", [old_copy.to_str().unwrap()])
        .unwrap();
    raw.execute_batch(
        "DELETE FROM main.secret_keys;
         INSERT INTO main.secret_keys SELECT * FROM old.secret_keys;
         DELETE FROM main.ledger_meta WHERE key IN ('key_check', 'fingerprint_key', 'sink_seal_key', 'value_epochs');
         INSERT INTO main.ledger_meta SELECT * FROM old.ledger_meta
             WHERE key IN ('key_check', 'fingerprint_key', 'sink_seal_key');",
    )
    .unwrap();
    drop(raw);
    let with_old_key = |args: &[&str]| {
        let mut all = vec![
            "--ledger",
            grafted.to_str().unwrap(),
            "--key-file",
            old_key.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        env.cmd().args(&all).output().unwrap()
    };
    let before = with_old_key(&["secret", "get", "db", "--version", "1", "--key", "pw"]);
    assert_eq!(
        String::from_utf8_lossy(&before.stdout),
        "before\n",
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    let after = with_old_key(&["secret", "get", "db", "--version", "2", "--key", "pw"]);
    assert!(
        !after.status.success(),
        "the old key opened a version written after the rotation"
    );
    assert!(!String::from_utf8_lossy(&after.stdout).contains("after"));
}

/// The record of the rotations' value epochs cannot be removed to have later values sealed
/// again under keys an old master key opens: the ledger then refuses to open (exit 5).
#[test]
fn removing_the_value_epochs_is_caught() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=v1"]);
    env.ok(&["key", "rotate"]);
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    assert_eq!(
        raw.execute("DELETE FROM ledger_meta WHERE key = 'value_epochs'", [])
            .unwrap(),
        1
    );
    drop(raw);
    let err = env.fails(&["secret", "update", "db", "--value", "pw=v2"], 5);
    assert!(err.contains("value epochs"), "{err}");
}

/// `key rotate` also replaces the sqlite sinks' seal key and seals what they hold again: the
/// old key, with a copy of a sink file from before (whose recorded seal key it opens), opens
/// nothing the sink holds after the rotation, not even values written before it. The sink
/// goes on serving, in sync, under the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_seals_the_sqlite_sinks_again() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=before"]);
    let sink_file = env.path("ledger.sink.db");
    let old_sink_copy = env.path("sink-before-rotation.db");
    std::fs::copy(&sink_file, &old_sink_copy).unwrap();
    let wal = |path: &std::path::Path| std::path::PathBuf::from(format!("{}-wal", path.display()));
    if wal(&sink_file).exists() {
        std::fs::copy(wal(&sink_file), wal(&old_sink_copy)).unwrap();
    }
    let old_key = MasterKey::read_file(&env.key).unwrap();
    let id: sledger::SecretId = env.json(&["secret", "get", "db"])["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let out = env.json(&["key", "rotate"]);
    assert!(out["sink_objects_resealed"].as_u64().unwrap() >= 1, "{out}");
    let got = env.json(&["secret", "get", "db", "--from", "primary"]);
    assert_eq!(got["values"]["pw"], "before", "{got}");
    env.ok(&["diff", "local"]);
    env.ok(&["secret", "update", "db", "--value", "pw=after"]);

    // The sink file records the new seal key, wrapped by the new master key only.
    assert!(matches!(
        sledger::sink::SqliteSink::seal_key(&sink_file, &old_key),
        Err(sledger::Error::WrongKey)
    ));
    let old_seal = sledger::sink::SqliteSink::seal_key(&old_sink_copy, &old_key).unwrap();
    let url = sledger::sink::SinkUrl::parse(&format!("sqlite://{}", sink_file.display())).unwrap();
    let sink = url.open(&old_seal).unwrap();
    let read = sink.get(id).await;
    assert!(
        read.is_err(),
        "the old key opened what the sink holds after the rotation: {read:?}"
    );
}

/// Event MACs move to a new epoch at each rotation too: an event forged with a leaked old key
/// (through a ledger whose key material was grafted back from a copy made before the rotation)
/// is refused by `verify` with the current key, and never projected.
#[test]
fn an_event_forged_with_a_leaked_old_key_after_the_rotation_is_refused() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=v1"]);
    let old_copy = env.path("before-rotation.db");
    env.ok(&["ledger", "backup", "--to", old_copy.to_str().unwrap()]);
    let old_key = env.path("old.key");
    std::fs::copy(&env.key, &old_key).unwrap();
    env.ok(&["key", "rotate"]);
    env.ok(&["secret", "update", "db", "--value", "pw=v2"]);

    // The attacker: old key material in, a forged write with the old key, genuine material back.
    let key_material = "('key_check', 'fingerprint_key', 'sink_seal_key', 'value_epochs')";
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    raw.execute_batch(&format!(
        "CREATE TABLE saved_meta AS SELECT * FROM ledger_meta WHERE key IN {key_material};
         CREATE TABLE saved_keys AS SELECT * FROM secret_keys;"
    ))
    .unwrap();
    raw.execute("ATTACH ?1 AS old", [old_copy.to_str().unwrap()])
        .unwrap();
    raw.execute_batch(&format!(
        "DELETE FROM main.ledger_meta WHERE key IN {key_material};
         INSERT INTO main.ledger_meta SELECT * FROM old.ledger_meta WHERE key IN {key_material};
         DELETE FROM main.secret_keys;
         INSERT INTO main.secret_keys SELECT * FROM old.secret_keys;
         DETACH old;"
    ))
    .unwrap();
    drop(raw);
    let forged = env
        .cmd()
        .args(["--key-file", old_key.to_str().unwrap(), "--wait", "0"])
        .args(["secret", "create", "forged", "--value", "k=1"])
        .output()
        .unwrap();
    assert!(
        forged.status.success(),
        "{}",
        String::from_utf8_lossy(&forged.stderr)
    );
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    raw.execute_batch(&format!(
        "DELETE FROM ledger_meta WHERE key IN {key_material};
         INSERT INTO ledger_meta SELECT * FROM saved_meta;
         INSERT OR REPLACE INTO secret_keys SELECT * FROM saved_keys;
         DROP TABLE saved_meta; DROP TABLE saved_keys;"
    ))
    .unwrap();
    drop(raw);

    let err = env.fails(&["verify"], 5);
    assert!(err.contains("MAC"), "{err}");
    let err = env.fails(&["project"], 5);
    assert!(err.contains("MAC"), "{err}");
    env.fails(&["secret", "get", "forged", "--from", "primary"], 7);
}

/// The event-MAC key someone with a leaked old master key has: that of a copy of the ledger
/// made before the rotation (its fingerprint key, unwrapped with the old key).
fn leaked_event_mac(old_copy: &std::path::Path, old_key: &MasterKey) -> sledger::crypto::EventMac {
    let old = rusqlite::Connection::open(old_copy).unwrap();
    let setting = |key: &str| -> Vec<u8> {
        old.query_row("SELECT value FROM ledger_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let mac_from = u64::from_le_bytes(setting("mac_from")[..8].try_into().unwrap());
    old_key
        .unwrap_fingerprint_key(&setting("fingerprint_key"), Some(mac_from), &[])
        .unwrap()
        .event_mac()
}

/// A sink's checkpoint carries a MAC under the key of its seq's epoch. Someone with a leaked
/// old key (which, with a copy of the ledger from before the rotation, derives the old MAC
/// keys) and write access to the file cannot raise a checkpoint past the rotation, which
/// would make the projector skip the values written since: it is not believed.
#[test]
fn a_checkpoint_raised_with_a_leaked_old_key_after_the_rotation_is_not_believed() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=v1"]);
    let old_copy = env.path("before-rotation.db");
    env.ok(&["ledger", "backup", "--to", old_copy.to_str().unwrap()]);
    let old_key = MasterKey::read_file(&env.key).unwrap();
    env.ok(&["key", "rotate"]);
    env.ok(&["secret", "update", "db", "--value", "pw=v2", "--wait", "0"]);

    let mac = leaked_event_mac(&old_copy, &old_key);
    let attached = env.json_lines(&["log", "--type", "sink.added"])[0]["seq"]
        .as_u64()
        .unwrap();
    let head = env.json_lines(&["log"]).last().unwrap()["seq"].as_u64().unwrap();
    let forged = mac.setting("sink checkpoint", format!("local\0{attached}\0{head}").as_bytes());
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    let raised = raw
        .execute(
            "UPDATE sink_state SET checkpoint = ?1, checkpoint_mac = ?2 WHERE name = 'local'",
            rusqlite::params![head as i64, forged.as_slice()],
        )
        .unwrap();
    assert_eq!(raised, 1);
    drop(raw);

    env.ok(&["project"]);
    assert_eq!(
        env.ok(&["secret", "get", "db", "--key", "pw", "--from", "primary"]),
        "v2\n"
    );
}

/// A replay starts only from a snapshot of its own key epoch. Someone with a leaked old key (and
/// so, with a copy from before the rotation, the old MAC key) and write access to the file can
/// MAC a snapshot from before the rotation, without a secret, and remove the snapshots taken
/// since. The replay at the head does not start from it: `s0` is still put.
#[test]
fn a_snapshot_forged_with_a_leaked_old_key_is_not_used_after_the_rotation() {
    use sledger::{Command, LedgerSettings, Scope, SecretValues};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let old_key = MasterKey::generate();
    let settings = LedgerSettings {
        snapshot_interval: 2,
        ..Default::default()
    };
    Ledger::init(&path, old_key.clone(), settings).unwrap();
    let create = |ledger: &mut Ledger, i: usize| {
        let mut values = SecretValues::new();
        values.insert("k", "v");
        let create = Command::Create {
            name: format!("s{i}"),
            scope: Scope::Workspace,
            labels: Default::default(),
            values,
        };
        ledger.execute("alice", vec![create]).unwrap();
    };
    let mut ledger = Ledger::open_with_key(&path, old_key.clone()).unwrap();
    (0..8).for_each(|i| create(&mut ledger, i));
    drop(ledger);
    let old_copy = dir.path().join("before-rotation.db");
    std::fs::copy(&path, &old_copy).unwrap();
    let mut ledger = Ledger::open_with_key(&path, old_key.clone()).unwrap();
    ledger
        .rotate_key("alice", MasterKey::generate(), &mut |_| Ok(()))
        .unwrap();
    common::update_rounds(&mut ledger, "s1", 20);
    let head = ledger.head().unwrap().seq;

    // The attacker: the old MAC key, a snapshot from before the rotation without s0, MAC'd.
    let old_mac = leaked_event_mac(&old_copy, &old_key);
    let old = rusqlite::Connection::open(&old_copy).unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    let before: i64 = raw
        .query_row("SELECT max(seq) FROM snapshots", [], |r| r.get(0))
        .unwrap();
    let rotated: i64 = old
        .query_row("SELECT max(seq) FROM events", [], |r| r.get(0))
        .unwrap();
    let at: i64 = raw
        .query_row("SELECT max(seq) FROM snapshots WHERE seq <= ?1", [rotated], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        before > rotated,
        "snapshots were taken after the rotation: {before} {rotated} {head}"
    );
    let mut forged = ledger.catalog_at(at as u64).unwrap();
    let s0 = forged.secrets.values().find(|m| m.name == "s0").unwrap().id;
    forged.secrets.remove(&s0);
    let mut state = forged.to_snapshot();
    let tag = old_mac.snapshot(at as u64, blake3::hash(&state).as_bytes());
    state.extend_from_slice(&tag);
    state.extend_from_slice(b"sledgMAC");
    raw.execute_batch(
        "DROP TRIGGER IF EXISTS snapshots_are_append_only_update;
         DROP TRIGGER IF EXISTS snapshots_are_append_only_delete;",
    )
    .unwrap();
    raw.execute("DELETE FROM snapshots WHERE seq > ?1", [at]).unwrap();
    raw.execute(
        "UPDATE snapshots SET state = ?1 WHERE seq = ?2",
        rusqlite::params![state, at],
    )
    .unwrap();
    drop(raw);

    let desired = ledger.desired_at(head).unwrap();
    assert!(
        matches!(desired.objects.get(&s0), Some(sledger::project::Op::Put(_))),
        "s0 must be put"
    );
}

/// A sink that cannot be sealed again (its file is gone) does not stop the rotation half-way:
/// the primary is sealed first and serves on, and the lost sink is named for a reconcile.
#[test]
fn a_missing_sink_file_does_not_stop_the_others_being_sealed_again() {
    let env = Env::new();
    env.ok(&["secret", "create", "a/b", "--value", "k=v"]);
    // Named to come before the primary ("local") in name order.
    env.ok(&["sink", "add", "aa", &env.sqlite_url("aa.db"), "--role", "backup"]);
    env.ok(&["project"]);
    std::fs::remove_file(env.path("aa.db")).unwrap();
    let out = env
        .cmd()
        .args(["--format", "json", "key", "rotate"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rotated["sinks_to_reconcile"],
        serde_json::json!(["aa"]),
        "{rotated}"
    );
    assert!(stderr.contains("sledger reconcile aa"), "{stderr}");
    let read = env.json(&["secret", "get", "a/b", "--from", "primary"]);
    assert_eq!(read["values"]["k"], "v", "{read}");
}
