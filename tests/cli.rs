//! End-to-end tests of every command, through the real binary.

mod common;

use common::{contains, Env};
use serde_json::json;

const NOT_FOUND: i32 = 3;
const USAGE: i32 = 2;
const EXISTS: i32 = 4;
const KEY: i32 = 6;
const INCOMPATIBLE: i32 = 8;

#[test]
fn init_creates_private_files_and_refuses_to_overwrite() {
    let env = Env::empty();
    let out = env.ok(&["init"]);
    assert!(out.contains("created ledger"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [&env.ledger, &env.key] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", p.display());
        }
    }
    let before = std::fs::read(&env.key).unwrap();
    let err = env.fails(&["init"], EXISTS);
    assert!(err.contains("refusing to overwrite existing ledger"), "{err}");
    assert_eq!(
        std::fs::read(&env.key).unwrap(),
        before,
        "the key file must be untouched"
    );

    // A key file alone also blocks init: overwriting it would orphan some ledger.
    std::fs::remove_file(&env.ledger).unwrap();
    let err = env.fails(&["init"], EXISTS);
    assert!(err.contains("key file"), "{err}");
    assert!(!env.ledger.exists(), "nothing half-written");
}

#[test]
fn init_creates_missing_parent_directories() {
    let env = Env::empty();
    let nested = env.path("a/b/ledger.db");
    env.ok(&["--ledger", nested.to_str().unwrap(), "init"]);
    assert!(nested.exists());
    assert!(env.path("a/b/ledger.key").exists());
}

#[test]
fn create_get_update_round_trip() {
    common::tour::create_get_update_round_trip(&Env::new());
}

#[test]
fn values_from_files_and_json_stdin() {
    let env = Env::new();
    let f = env.path("pw.txt");
    std::fs::write(&f, "from-file\n").unwrap();
    env.ok(&[
        "secret",
        "create",
        "a",
        "--value-file",
        &format!("password={}", f.display()),
    ]);
    assert_eq!(
        env.ok(&["secret", "get", "a", "--key", "password"]),
        "from-file\n"
    );

    env.cmd()
        .args(["secret", "create", "b", "--values-json", "-"])
        .write_stdin(r#"{"token": "abc", "user": "svc"}"#)
        .assert()
        .success();
    assert_eq!(
        env.json(&["secret", "get", "b"])["values"],
        json!({"token": "abc", "user": "svc"})
    );

    let bad = env.path("bad.json");
    std::fs::write(&bad, r#"{"token": 42}"#).unwrap();
    let err = env.fails(
        &["secret", "create", "c", "--values-json", bad.to_str().unwrap()],
        USAGE,
    );
    assert!(err.contains("JSON object of string values"), "{err}");
    let out = env
        .cmd()
        .args([
            "secret",
            "create",
            "d",
            "--values-json",
            "-",
            "--value-file",
            "b=-",
        ])
        .write_stdin(r#"{"a": "1"}"#)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(USAGE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("can be read once"));
}

#[test]
fn get_at_time_returns_the_state_then() {
    let env = Env::new();
    env.ok(&["secret", "create", "api", "--value", "token=t1"]);
    let t1 = env.json_lines(&["log", "--secret", "api"])[0]["time"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(std::time::Duration::from_millis(20));
    env.ok(&["secret", "update", "api", "--value", "token=t2"]);
    env.ok(&["secret", "rename", "api", "api2"]);
    assert_eq!(
        env.ok(&["secret", "get", "api2", "--key", "token", "--at", &t1]),
        "t1\n"
    );
    // The name it had then works too.
    assert_eq!(
        env.ok(&["secret", "get", "api", "--key", "token", "--at", &t1]),
        "t1\n"
    );
    let err = env.fails(
        &["secret", "get", "api2", "--at", "2000-01-01T00:00:00Z"],
        NOT_FOUND,
    );
    assert!(err.contains("at that time"), "{err}");
    let err = env.fails(&["secret", "get", "api2", "--at", "yesterday"], USAGE);
    assert!(err.contains("RFC 3339"), "{err}");
}

#[test]
fn rename_delete_undelete_purge() {
    common::tour::rename_delete_undelete_purge(&Env::new());
}

#[test]
fn purge_destroys_the_data_key_of_every_version() {
    let env = Env::new();
    env.ok(&["secret", "create", "p", "--value", "k=one"]);
    env.ok(&["secret", "update", "p", "--value", "k=two"]);
    env.ok(&["secret", "delete", "p"]);
    env.ok(&["secret", "purge", "p", "--yes"]);
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    let keys: i64 = raw
        .query_row("SELECT count(*) FROM secret_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keys, 0);
    for v in ["1", "2"] {
        env.fails(&["secret", "get", "p", "--version", v], NOT_FOUND);
    }
    env.fails(&["secret", "purge", "p", "--yes"], NOT_FOUND);
}

#[test]
fn list_filters_by_label_and_history_shows_changes() {
    common::tour::list_filters_by_label_and_history_shows_changes(&Env::new());
}

#[test]
fn private_secrets_are_per_owner() {
    let env = Env::new();
    env.ok(&["secret", "create", "mine", "--private", "--value", "k=alice"]);
    env.ok(&["secret", "create", "shared", "--value", "k=all"]);
    let bob = |args: &[&str]| {
        env.cmd()
            .env("SLEDGER_ACTOR", "bob@test")
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(bob(&["secret", "get", "mine"]).status.code(), Some(NOT_FOUND));
    assert!(bob(&["secret", "get", "shared"]).status.success());
    // Bob may use the same name privately; alice's private one wins for alice.
    assert!(
        bob(&["secret", "create", "mine", "--private", "--value", "k=bob"])
            .status
            .success()
    );
    assert_eq!(env.ok(&["secret", "get", "mine", "--key", "k"]), "alice\n");
    // Names are unique per scope: a workspace "mine" may exist beside the private ones.
    env.ok(&["secret", "create", "mine", "--value", "k=ws"]);
    env.fails(
        &["secret", "create", "mine", "--private", "--value", "k=again"],
        EXISTS,
    );
}

#[test]
fn log_filters_limit_and_json() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=1"]);
    env.cmd()
        .env("SLEDGER_ACTOR", "bob@test")
        .args(["secret", "create", "b", "--value", "k=1"])
        .assert()
        .success();
    env.ok(&["secret", "update", "a", "--value", "k=2"]);
    env.ok(&["secret", "delete", "b"]);

    let all = env.json_lines(&["log"]);
    assert_eq!(all.len(), 5);
    assert_eq!(
        all[0]["event_type"], "sink.added",
        "init attached the local primary"
    );
    assert_eq!(
        all.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(env.json_lines(&["log", "--secret", "a"]).len(), 2);
    assert_eq!(env.json_lines(&["log", "--actor", "bob@test"]).len(), 1);
    assert_eq!(
        env.json_lines(&["log", "--type", "secret.deleted"])[0]["name"],
        "b"
    );
    let last = env.json_lines(&["log", "--limit", "2"]);
    assert_eq!(
        last.iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [4, 5]
    );
    let t4 = all[3]["time"].as_str().unwrap();
    let since = env.json_lines(&["log", "--since", t4]);
    assert!(since.iter().all(|e| e["seq"].as_u64().unwrap() >= 4));
    assert_eq!(
        env.json_lines(&["log", "--until", "2000-01-01T00:00:00Z"]).len(),
        0
    );
    env.fails(&["log", "--type", "secret.exploded"], USAGE);
    env.fails(&["log", "--secret", "nope"], NOT_FOUND);
    let human = env.ok(&["log"]);
    assert!(
        human.contains("SEQ") && human.contains("secret.updated") && human.contains("bob@test"),
        "{human}"
    );
}

#[test]
fn log_follow_prints_new_events() {
    common::tour::log_follow_prints_new_events(&Env::new());
}

#[test]
fn key_rotation_keeps_old_events_readable() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=v1"]);
    env.ok(&["secret", "update", "db", "--value", "pw=v2"]);
    let old_key = std::fs::read(&env.key).unwrap();
    let out = env.json(&["key", "rotate"]);
    assert_eq!(out["data_keys"], 1);
    assert_ne!(std::fs::read(&env.key).unwrap(), old_key);
    assert_eq!(
        env.ok(&["secret", "get", "db", "--version", "1", "--key", "pw"]),
        "v1\n"
    );
    env.ok(&["secret", "create", "after", "--value", "pw=v3"]);
    assert_eq!(env.json_lines(&["log", "--type", "key.rotated"]).len(), 1);
    env.ok(&["verify"]);

    // The old key no longer opens the ledger.
    let old = env.path("old.key");
    std::fs::write(&old, &old_key).unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let err = env.fails(&["--key-file", old.to_str().unwrap(), "secret", "get", "db"], KEY);
    assert!(err.contains("this key does not open this ledger"), "{err}");
}

#[test]
fn master_key_from_environment() {
    let env = Env::empty();
    let key = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
    let with_key = |args: &[&str]| {
        env.cmd()
            .env("SLEDGER_MASTER_KEY", key)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(with_key(&["init"]).status.success());
    assert!(
        !env.key.exists(),
        "no key file is written when the key comes from the environment"
    );
    assert!(with_key(&["secret", "create", "x", "--value", "k=v"])
        .status
        .success());
    assert_eq!(
        String::from_utf8(with_key(&["secret", "get", "x", "--key", "k"]).stdout).unwrap(),
        "v\n"
    );
    // Without any key, reads fail with a key error that says where keys come from.
    let err = env.fails(&["secret", "get", "x"], KEY);
    assert!(
        err.contains("SLEDGER_MASTER_KEY") || err.contains("--key-file"),
        "{err}"
    );
    // Audit and verify need no key.
    env.ok(&["log"]);
    env.ok(&["verify"]);
    // Rotation with an env key needs a place to put the new one.
    let out = with_key(&["key", "rotate"]);
    assert_eq!(out.status.code(), Some(USAGE));
    let new_key = env.path("new.key");
    assert!(
        with_key(&["key", "rotate", "--new-key-file", new_key.to_str().unwrap()])
            .status
            .success()
    );
    let out = env
        .cmd()
        .args([
            "--key-file",
            new_key.to_str().unwrap(),
            "secret",
            "get",
            "x",
            "--key",
            "k",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "v\n");
}

#[test]
fn invalid_input_is_rejected_with_clear_errors_and_nothing_appended() {
    let env = Env::new();
    let long_name = "n".repeat(256);
    let long_key = format!("{}=v", "k".repeat(129));
    let big = format!("k={}", "x".repeat(64 * 1024));
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["secret", "create", "has space", "--value", "k=v"],
            USAGE,
            "is not allowed",
        ),
        (
            &["secret", "create", "", "--value", "k=v"],
            USAGE,
            "at least one character",
        ),
        (
            &["secret", "create", &long_name, "--value", "k=v"],
            USAGE,
            "the limit is 255",
        ),
        (
            &["secret", "create", "x", "--value", "bad/key=v"],
            USAGE,
            "invalid value key",
        ),
        (
            &["secret", "create", "x", "--value", &long_key],
            USAGE,
            "the limit is 128",
        ),
        (
            &["secret", "create", "x", "--value", "novalue"],
            USAGE,
            "KEY=VALUE",
        ),
        (
            &["secret", "create", "x", "--value", "k=1", "--value", "k=2"],
            USAGE,
            "more than once",
        ),
        (&["secret", "create", "x"], USAGE, "at least one KEY=VALUE"),
        (
            &["secret", "create", "x", "--value", &big],
            USAGE,
            "over the limit of 65536 bytes",
        ),
        (
            &[
                "secret",
                "create",
                "x",
                "--value",
                "k=v",
                "--label",
                "bad label=v",
            ],
            USAGE,
            "invalid label",
        ),
        (
            &["secret", "get", "ghost"],
            NOT_FOUND,
            "no secret named \"ghost\"",
        ),
        (
            &["secret", "update", "ghost", "--value", "k=v"],
            NOT_FOUND,
            "no secret named",
        ),
        (&["secret", "delete", "ghost"], NOT_FOUND, "no secret named"),
        (&["secret", "rename", "ghost", "x"], NOT_FOUND, "no secret named"),
        (&["secret", "undelete", "ghost"], NOT_FOUND, "no secret named"),
        (&["secret", "history", "ghost"], NOT_FOUND, "no secret named"),
        (&["secret", "update", "ghost"], USAGE, "nothing to update"),
    ];
    for (args, code, needle) in cases {
        let err = env.fails(args, *code);
        assert!(
            err.contains(needle),
            "sledger {args:?}: {err:?} should mention {needle:?}"
        );
    }
    env.ok(&["secret", "create", "x", "--value", "k=v"]);
    let err = env.fails(&["secret", "create", "x", "--value", "k=w"], EXISTS);
    assert!(err.contains("already exists"), "{err}");
    env.ok(&["secret", "create", "y", "--value", "k=v"]);
    env.fails(&["secret", "rename", "y", "x"], EXISTS);
    let err = env.fails(&["secret", "undelete", "y"], EXISTS);
    assert!(err.contains("is live, not deleted"), "{err}");
    env.fails(&["secret", "create", "a/../b", "--value", "k=v"], USAGE);
    env.fails(&["secret", "update", "x", "--remove-key", "k"], USAGE);
    env.fails(&["secret", "update", "x", "--remove-key", "nope"], USAGE);
    env.ok(&["secret", "update", "x", "--label", "l=1"]);
    let err = env.fails(
        &["secret", "update", "x", "--label", "l=2", "--remove-label", "l"],
        USAGE,
    );
    assert!(err.contains("both set and removed"), "{err}");
    env.fails(&["secret", "update", "x", "--value", &big], USAGE);
    // Only the two good creates were appended (after init's sink.added).
    assert_eq!(env.json_lines(&["log", "--type", "secret.created"]).len(), 2);
    // …and the one good label update.
    assert_eq!(env.json_lines(&["log"]).len(), 4);
    env.ok(&["verify"]);
}

#[test]
fn max_value_bytes_is_a_ledger_setting() {
    let env = Env::empty();
    env.ok(&["init", "--max-value-bytes", "100"]);
    env.ok(&[
        "secret",
        "create",
        "small",
        "--value",
        &format!("k={}", "x".repeat(50)),
    ]);
    let err = env.fails(
        &[
            "secret",
            "create",
            "big",
            "--value",
            &format!("k={}", "x".repeat(100)),
        ],
        USAGE,
    );
    assert!(err.contains("limit of 100 bytes"), "{err}");
}

#[test]
fn wrong_key_and_missing_key_file() {
    let env = Env::new();
    env.ok(&["secret", "create", "x", "--value", "k=v"]);
    let other = Env::new();
    let err = env.fails(
        &["--key-file", other.key.to_str().unwrap(), "secret", "get", "x"],
        KEY,
    );
    assert!(err.contains("this key does not open this ledger"), "{err}");
    let err = env
        .cmd()
        .env("SLEDGER_MASTER_KEY", "not base64!!")
        .args(["secret", "get", "x"])
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(KEY));
    let err = env.fails(&["--key-file", "/nonexistent/k.key", "secret", "get", "x"], KEY);
    assert!(err.contains("no key file"), "{err}");
}

#[test]
fn foreign_corrupt_and_newer_files_are_refused() {
    let env = Env::empty();
    let missing = env.fails(&["secret", "list"], NOT_FOUND);
    assert!(missing.contains("sledger init"), "{missing}");

    std::fs::write(&env.ledger, b"just some text, not a database at all").unwrap();
    let err = env.fails(&["secret", "list"], INCOMPATIBLE);
    assert!(err.contains("not a sledger ledger"), "{err}");
    let before = std::fs::read(&env.ledger).unwrap();
    env.fails(&["verify"], INCOMPATIBLE);
    assert_eq!(
        std::fs::read(&env.ledger).unwrap(),
        before,
        "a foreign file is never modified"
    );

    std::fs::remove_file(&env.ledger).unwrap();
    let c = rusqlite::Connection::open(&env.ledger).unwrap();
    c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    let err = env.fails(&["secret", "list"], INCOMPATIBLE);
    assert!(err.contains("some other program"), "{err}");

    let env = Env::new();
    let c = rusqlite::Connection::open(&env.ledger).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let err = env.fails(&["secret", "list"], INCOMPATIBLE);
    assert!(err.contains("newer sledger"), "{err}");
}

#[test]
fn catalog_is_rebuilt_from_the_log_when_dropped() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=1", "--label", "x=y"]);
    env.ok(&["secret", "create", "b", "--value", "k=1"]);
    env.ok(&["secret", "rename", "b", "c"]);
    env.ok(&["secret", "delete", "a"]);
    let before = (
        env.json(&["secret", "list"]),
        env.json(&["secret", "list", "--deleted"]),
    );
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    raw.execute_batch("DROP TABLE catalog;").unwrap();
    drop(raw);
    let after = (
        env.json(&["secret", "list"]),
        env.json(&["secret", "list", "--deleted"]),
    );
    assert_eq!(before, after);
    assert_eq!(after.0[0]["name"], "c");
    env.ok(&["secret", "undelete", "a"]);
}

#[test]
fn import_loads_secrets_in_batches() {
    let env = Env::new();
    let file = env.path("in.jsonl");
    let mut text = String::new();
    for i in 0..25 {
        text.push_str(&format!(
            "{{\"name\":\"s{i}\",\"values\":{{\"k\":\"v{i}\"}},\"labels\":{{\"src\":\"import\"}}}}\n"
        ));
    }
    std::fs::write(&file, text).unwrap();
    let out = env.json(&["import", "--file", file.to_str().unwrap(), "--batch-size", "10"]);
    assert_eq!(out["appended"], 25);
    assert_eq!(env.ok(&["secret", "get", "s7", "--key", "k"]), "v7\n");
    // Re-importing the same data changes nothing.
    assert_eq!(
        env.json(&["import", "--file", file.to_str().unwrap()])["unchanged"],
        25
    );
    // A bad record names its line, and its batch is not half-applied.
    std::fs::write(
        &file,
        "{\"name\":\"ok1\",\"values\":{\"k\":\"v\"}}\n{\"name\":\"bad name\",\"values\":{\"k\":\"v\"}}\n",
    )
    .unwrap();
    env.fails(&["import", "--file", file.to_str().unwrap()], USAGE);
    env.fails(&["secret", "get", "ok1"], NOT_FOUND);
    std::fs::write(
        &file,
        "{\"name\":\"ok1\",\"values\":{\"k\":\"SECRETVALUE\"}, oops}\n",
    )
    .unwrap();
    let err = env.fails(&["import", "--file", file.to_str().unwrap()], USAGE);
    assert!(err.contains("line 1") && !err.contains("SECRETVALUE"), "{err}");
}

/// The plaintext of a value must not appear in the ledger's bytes, the audit outputs, error
/// messages, or tracing output at any level.
#[test]
fn plaintext_never_leaks() {
    let env = Env::new();
    const V1: &str = "PLAINTEXT-sentinel-7f3a9c";
    const V2: &str = "PLAINTEXT-sentinel-b81e42";
    let trace = |args: &[&str]| {
        let out = env.cmd().env("SLEDGER_LOG", "trace").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let mut logs = String::new();
    logs += &trace(&[
        "secret",
        "create",
        "leak",
        "--value",
        &format!("password={V1}"),
        "--label",
        "a=b",
    ]);
    logs += &trace(&["secret", "update", "leak", "--value", &format!("password={V2}")]);
    logs += &trace(&["secret", "rename", "leak", "leak2"]);
    logs += &trace(&["key", "rotate"]);
    logs += &trace(&["secret", "get", "leak2"]);
    logs += &trace(&["verify"]);
    // Force a catalog rebuild so that path is traced too.
    rusqlite::Connection::open(&env.ledger)
        .unwrap()
        .execute_batch("DROP TABLE catalog")
        .unwrap();
    logs += &trace(&["secret", "list"]);
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG") || logs.contains("INFO"),
        "tracing produced nothing: {logs}"
    );

    let mut outputs = logs;
    for args in [
        &["log"][..],
        &["--format", "json", "log"],
        &["secret", "history", "leak2"],
        &["--format", "json", "secret", "history", "leak2"],
        &["secret", "list"],
        &["--format", "json", "secret", "list"],
    ] {
        outputs += &env.ok(args);
    }
    // Errors about that secret, including a bad update.
    for args in [
        &["secret", "create", "leak2", "--value", &format!("password={V1}")][..],
        &["secret", "update", "leak2", "--value", &format!("bad/key={V1}")],
        &[
            "secret",
            "update",
            "leak2",
            "--remove-key",
            "password",
            "--value",
            &format!("password={V1}"),
        ],
    ] {
        outputs += &String::from_utf8_lossy(&env.run(args).stderr);
    }
    for v in [V1, V2] {
        assert!(!outputs.contains(v), "{v} leaked into output");
        assert!(
            !contains(&env.ledger_bytes(), v),
            "{v} is in the ledger file in plaintext"
        );
    }
    // ... while the read itself does return it.
    assert_eq!(
        env.ok(&["secret", "get", "leak2", "--key", "password"]),
        format!("{V2}\n")
    );
}

/// Writes by other processes reach a ledger held open, and closing them leaves its WAL alone
/// (a stray file handle once dropped SQLite's locks, so a closing writer deleted the WAL under
/// a live reader and the reader's own writes went nowhere).
#[test]
fn a_ledger_held_open_sees_other_processes_writes() {
    let env = Env::new();
    let held = sledger::Ledger::open(&env.ledger).unwrap();
    let start = held.head().unwrap().seq;
    for i in 1..=3u64 {
        env.ok(&[
            "--wait",
            "0",
            "secret",
            "create",
            &format!("s{i}"),
            "--value",
            "k=v",
        ]);
        assert_eq!(
            held.head().unwrap().seq,
            start + i,
            "the held ledger missed write {i}"
        );
        assert!(
            env.path("ledger.db-wal").exists(),
            "a closing writer deleted the WAL of a live reader"
        );
    }
}

#[test]
fn import_reads_a_dotenv_file_as_one_secret() {
    let env = Env::new();
    let file = env.path("app.env");
    std::fs::write(
        &file,
        "# app\nexport DB_URL=postgres://db\nPASSWORD=\"a\\\"b\\nc\"\nTOKEN='lit$x'\n\nEMPTY=\n",
    )
    .unwrap();
    env.ok(&["import", "--file", file.to_str().unwrap(), "--name", "app"]);
    let got = env.json(&["secret", "get", "app"]);
    assert_eq!(
        got["values"],
        json!({"DB_URL": "postgres://db", "PASSWORD": "a\"b\nc", "TOKEN": "lit$x", "EMPTY": ""})
    );
    let err = env.fails(&["import", "--file", file.to_str().unwrap()], 2);
    assert!(err.contains("--name"), "{err}");
    std::fs::write(&file, "A=1\nnot a pair with the secret s3cr3t\n").unwrap();
    let err = env.fails(&["import", "--file", file.to_str().unwrap(), "--name", "app"], 2);
    assert!(err.contains("line 2") && !err.contains("s3cr3t"), "{err}");
}

#[test]
fn import_from_needs_a_cloud_backend_and_a_choice() {
    let env = Env::new();
    let url = env.sqlite_url("other.db");
    let err = env.fails(&["import", "--from", &url, "--all"], USAGE);
    assert!(err.contains("import --from reads a vault://"), "{err}");
    let err = env.fails(&["import", "--from", "aws-sm://eu-west-1"], USAGE);
    assert!(err.contains("--all") && err.contains("--prefix"), "{err}");
    let err = env.fails(&["import"], USAGE);
    assert!(err.contains("--file") && err.contains("--from"), "{err}");
    let err = env.fails(&["import", "--all"], USAGE);
    assert!(err.contains("--from"), "{err}");
}

/// Control characters in a value, a key or a label (ESC sequences, NUL, newlines) are shown
/// escaped in tables, so they cannot recolour or clear a terminal or fake a row; JSON output
/// keeps them exact.
#[test]
fn control_characters_are_escaped_in_tables_and_exact_in_json() {
    let env = Env::new();
    env.ok(&[
        "secret",
        "create",
        "x",
        "--value",
        "k=a\u{1b}[2Jred\u{7}",
        "--label",
        "env=p\nfake row",
    ]);
    for args in [
        vec!["secret", "list"],
        vec!["secret", "get", "x"],
        vec!["secret", "history", "x"],
        vec!["log"],
    ] {
        let out = env.ok(&args);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains("\nfake row"),
            "{args:?} printed a raw control character:\n{out:?}"
        );
    }
    let shown = env.ok(&["secret", "get", "x"]);
    assert!(shown.contains("a\\u{1b}[2Jred"), "{shown}");
    assert!(shown.contains("labels: env=p\\nfake row"), "{shown}");
    let got = env.json(&["secret", "get", "x"]);
    assert_eq!(got["values"]["k"], "a\u{1b}[2Jred\u{7}");
    assert_eq!(got["labels"]["env"], "p\nfake row");
    // `--key` prints the value itself, for pipes and files.
    assert_eq!(
        env.ok(&["secret", "get", "x", "--key", "k"]),
        "a\u{1b}[2Jred\u{7}\n"
    );
}

/// With `--format json`, a failing command still prints one JSON document on stdout: the
/// error's code and message (and the same exit code as without it).
#[test]
fn json_errors_are_documents_on_stdout() {
    let env = Env::new();
    let out = env.run(&["--format", "json", "secret", "get", "missing"]);
    assert_eq!(out.status.code(), Some(3));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["code"], "not_found", "{doc}");
    assert!(
        doc["error"]["message"].as_str().unwrap().contains("missing"),
        "{doc}"
    );
    let out = env.run(&[
        "--format",
        "json",
        "secret",
        "create",
        "bad name!",
        "--value",
        "k=v",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["code"], "invalid", "{doc}");
    // Colour only on a terminal: none in captured stderr, even for log lines.
    let out = env
        .cmd()
        .env("SLEDGER_LOG", "debug")
        .args(["secret", "list"])
        .output()
        .unwrap();
    assert!(
        !out.stderr.contains(&0x1b),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_key_given_twice_in_values_json_and_an_unbounded_value_limit_are_refused() {
    let env = Env::new();
    let file = env.path("values.json");
    std::fs::write(&file, r#"{"a":"1","a":"2"}"#).unwrap();
    let err = env.fails(
        &["secret", "create", "dup", "--values-json", file.to_str().unwrap()],
        2,
    );
    assert!(err.contains("\"a\"") && err.contains("more than once"), "{err}");
    env.fails(&["secret", "get", "dup"], 3);
    for bad in ["0", "99999999999"] {
        let other = Env::empty();
        let err = other.fails(&["init", "--max-value-bytes", bad], 2);
        assert!(err.contains("16..=16777216"), "{err}");
        assert!(!other.ledger.exists());
    }
}

/// An import with bad records anywhere in it names every one (`file:LINE: reason`) and
/// imports nothing, however many batches come before them.
#[test]
fn an_import_with_bad_lines_names_them_all_and_imports_nothing() {
    let env = Env::empty();
    env.ok(&["init", "--max-value-bytes", "1000"]);
    let file = env.path("in.jsonl");
    let mut text = String::new();
    for i in 0..3000 {
        let line = match i {
            1500 => json!({"name": "bad name", "values": {"k": "v"}}),
            2200 => json!({"name": "big", "values": {"k": "x".repeat(2000)}}),
            _ => json!({"name": format!("svc/{i}"), "values": {"k": "v"}}),
        };
        text.push_str(&format!("{line}\n"));
    }
    std::fs::write(&file, text).unwrap();
    let err = env.fails(
        &["import", "--file", file.to_str().unwrap(), "--batch-size", "1000"],
        2,
    );
    let path = file.display().to_string();
    assert!(err.contains("2 of 3000 records"), "{err}");
    assert!(
        err.contains(&format!("{path}:1501: invalid secret name \"bad name\"")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:2201: ")) && err.contains("1000"),
        "{err}"
    );
    assert_eq!(env.json(&["secret", "list"]).as_array().unwrap().len(), 0);
}

/// `log --limit N` and `--tail N` read the log back from its head only as far as they need,
/// and show exactly the last N entries the whole log shows, for every filter; `--after-seq S
/// --limit N` shows the N entries after S, and `--since` starts where the time says.
#[test]
fn log_limit_tail_and_ranges_show_the_same_entries_as_the_whole_log() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=1", "--label", "env=p"]);
    env.ok(&["secret", "create", "b", "--value", "k=2"]);
    env.ok(&["secret", "update", "a", "--value", "k=3", "--remove-label", "env"]);
    env.ok(&["secret", "rename", "b", "c"]);
    env.ok(&["--actor", "bob@test", "secret", "delete", "c"]);
    env.ok(&["secret", "undelete", "c"]);
    env.ok(&["secret", "create", "p", "--value", "k=1", "--private"]);
    env.ok(&["secret", "purge", "a", "--yes"]);
    env.ok(&["key", "rotate"]);
    env.ok(&["secret", "create", "a", "--value", "k=new"]);
    let whole = env.json_lines(&["log"]);
    for filter in [
        vec![],
        vec!["--type", "secret.created"],
        vec!["--secret", "c"],
        vec!["--actor", "bob@test"],
    ] {
        let mut all = vec!["log"];
        all.extend(&filter);
        let expected = env.json_lines(&all);
        for n in [1usize, 3, 100] {
            let limit = n.to_string();
            let mut args = all.clone();
            args.extend(["--limit", limit.as_str()]);
            let got = env.json_lines(&args);
            assert_eq!(got, expected[expected.len().saturating_sub(n)..], "{args:?}");
            let mut args = all.clone();
            args.extend(["--tail", limit.as_str()]);
            assert_eq!(
                env.json_lines(&args),
                expected[expected.len().saturating_sub(n)..],
                "{args:?}"
            );
            // Forward pages from every entry's seq cover the rest of the log in order.
            for (i, entry) in expected.iter().enumerate() {
                let after = entry["seq"].to_string();
                let mut args = all.clone();
                args.extend(["--after-seq", after.as_str(), "--limit", limit.as_str()]);
                let rest = &expected[i + 1..];
                assert_eq!(env.json_lines(&args), rest[..n.min(rest.len())], "{args:?}");
            }
        }
        if let Some(entry) = expected.get(1) {
            let since = entry["time"].as_str().unwrap();
            let mut args = all.clone();
            args.extend(["--since", since]);
            let from_then: Vec<_> = expected
                .iter()
                .filter(|e| e["time"].as_str().unwrap() >= since)
                .cloned()
                .collect();
            assert_eq!(env.json_lines(&args), from_then, "{args:?}");
        }
    }
    assert_eq!(whole.len(), 11, "{whole:?}");
}

/// A ledger this user cannot use says why (the directory, or the file), instead of "not a
/// sledger ledger" or SQLite's "unable to open database file" repeated; and an error's causes
/// are each said once.
#[test]
fn a_ledger_in_a_read_only_directory_names_the_permission_problem() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    env.ok(&["secret", "create", "x", "--value", "k=v"]);
    let dir = env.dir.path().to_path_buf();
    let set = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.ledger.display()));
    }
    set(&env.ledger, 0o666);
    set(&dir, 0o555);
    // Root may write anywhere: run as nobody then, as a user hitting this would be.
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("sledger"));
    command
        .env("SLEDGER_LEDGER", &env.ledger)
        .env("SLEDGER_KEY_FILE", env.path("absent.key"))
        .args(["log"]);
    if unsafe { libc::geteuid() } == 0 {
        command.uid(65534).gid(65534);
    }
    let out = command.output().unwrap();
    set(&dir, 0o700);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is not writable by this user") && err.contains("-wal"),
        "{err}"
    );
    assert!(!err.contains("not a sledger ledger"), "{err}");
    assert_eq!(err.matches("permission denied").count(), 1, "{err}");
}

#[test]
fn a_dry_run_replay_into_a_new_sqlite_file_creates_nothing() {
    let env = Env::new();
    env.ok(&["secret", "create", "x", "--value", "k=v"]);
    let target = env.path("replayed.db");
    let url = format!("sqlite://{}", target.display());
    let planned = env.ok(&["replay", "--into", &url, "--dry-run"]);
    assert!(planned.contains("missing") && planned.contains('x'), "{planned}");
    assert!(!target.exists(), "a dry run created {}", target.display());
    env.ok(&["replay", "--into", &url]);
    assert!(target.exists());
}

/// Dotenv values may span lines when quoted (a PEM block); a value fragment that looks like
/// `KEY=VALUE` (base64 padding) never becomes a key, and a quote left open is an error naming
/// the line and the key only.
#[test]
fn dotenv_multi_line_values_and_fragments_that_look_like_keys() {
    let env = Env::new();
    let file = env.path("tls.env");
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA==\nq83vEiGq==\n-----END PRIVATE KEY-----";
    std::fs::write(
        &file,
        format!("NAME=web\nKEY=\"{pem}\"\nCERT='line one\nline two' # a comment\nAFTER=1\n"),
    )
    .unwrap();
    env.ok(&["import", "--file", file.to_str().unwrap(), "--name", "tls"]);
    let got = env.json(&["secret", "get", "tls"]);
    assert_eq!(
        got["values"],
        json!({"NAME": "web", "KEY": pem, "CERT": "line one\nline two", "AFTER": "1"})
    );
    // An unquoted PEM: refused, so its base64 line with '=' padding is never taken for a key.
    std::fs::write(&file, format!("KEY={pem}\n")).unwrap();
    let err = env.fails(&["import", "--file", file.to_str().unwrap(), "--name", "bad"], 2);
    assert!(
        err.contains("line 1") && err.contains("quote it") && !err.contains("MIIB"),
        "{err}"
    );
    std::fs::write(&file, "A=1\nKEY=\"never closed\nMIIB==\n").unwrap();
    let err = env.fails(&["import", "--file", file.to_str().unwrap(), "--name", "bad"], 2);
    assert!(
        err.contains("line 2") && err.contains("KEY") && err.contains("never closed"),
        "{err}"
    );
    assert!(!err.contains("MIIB"), "{err}");
    env.fails(&["secret", "get", "bad"], 3);
}

/// `ledger backup` copies the ledger while another process keeps appending: the copy is one
/// consistent instant (it opens with the key and verifies, MACs included), is private to its
/// owner, and a path that exists is refused and left as it was.
#[test]
fn ledger_backup_copies_a_ledger_being_written_and_verifies_it() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let env = Env::new();
    env.ok(&["secret", "create", "seed", "--value", "k=v1"]);
    let copy = env.path("copy.db");
    let key = env.key.to_str().unwrap().to_owned();
    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    // Writes before and after the backup are counted, not timed: a loaded machine is slow.
    let writes_reach = |at_least: usize| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while done.load(Ordering::Relaxed) < at_least {
            assert!(std::time::Instant::now() < until, "the writer stalled");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                env.ok(&[
                    "secret",
                    "create",
                    &format!("w/{n}"),
                    "--value",
                    "k=v",
                    "--wait",
                    "0",
                ]);
                n += 1;
                done.store(n, Ordering::Relaxed);
            }
            n
        });
        writes_reach(3);
        let out = env.ok(&["ledger", "backup", "--to", copy.to_str().unwrap()]);
        assert!(out.contains("verified"), "{out}");
        writes_reach(done.load(Ordering::Relaxed) + 2);
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    assert!(written > 2, "the writer ran during the backup ({written} writes)");
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the copy holds wrapped keys: owner only");
    let on_copy = |args: &[&str]| {
        let mut all = vec!["--ledger", copy.to_str().unwrap(), "--key-file", key.as_str()];
        all.extend_from_slice(args);
        env.ok(&all)
    };
    on_copy(&["verify"]);
    assert_eq!(
        on_copy(&["secret", "get", "seed", "--key", "k", "--from", "ledger"]),
        "v1\n"
    );
    let copied = on_copy(&["--format", "json", "log", "--tail", "1"]);
    let copied_head: serde_json::Value = serde_json::from_str(copied.trim()).unwrap();
    let whole = env.json_lines(&["log"]);
    let at_copy = &whole[copied_head["seq"].as_u64().unwrap() as usize - 1];
    assert_eq!(
        at_copy["event_id"], copied_head["event_id"],
        "the copy is a prefix of the ledger"
    );
    assert!(
        whole.len() as u64 > copied_head["seq"].as_u64().unwrap(),
        "writes went on after the copy"
    );
    // A second backup onto the copy is refused, and the copy is untouched.
    let before = std::fs::read(&copy).unwrap();
    env.fails(&["ledger", "backup", "--to", copy.to_str().unwrap()], EXISTS);
    assert_eq!(std::fs::read(&copy).unwrap(), before);
}

/// A lost ledger rebuilt from its own sqlite sink, which opens with the master key alone.
#[test]
fn a_lost_ledger_is_recovered_from_its_sqlite_sink() {
    common::recover_walkthrough(&[], None);
}

/// `recover` refuses to overwrite a ledger, and a sink file whose seal key this master key
/// does not open, changing nothing.
#[test]
fn recover_refuses_an_existing_ledger_and_a_foreign_key() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=v"]);
    let sink = env.sqlite_url("ledger.sink.db");
    env.fails(&["recover", "--from", &sink], EXISTS);
    let other = Env::empty();
    std::fs::write(&other.key, std::fs::read(&env.key).unwrap()).unwrap();
    let foreign = Env::new();
    let out = other
        .cmd()
        .args([
            "--key-file",
            foreign.key.to_str().unwrap(),
            "recover",
            "--from",
            &sink,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!other.ledger.exists(), "nothing was created");
}

/// Delete `r/c`, create a new `r/c`, then want the old one back: `undelete` says how, and
/// `undelete --as NEW` brings it back under another name in one transaction.
#[test]
fn a_deleted_secret_whose_name_was_reused_comes_back_under_another() {
    let env = Env::new();
    env.ok(&["secret", "create", "r/c", "--value", "k=old"]);
    env.ok(&["secret", "delete", "r/c"]);
    env.ok(&["secret", "create", "r/c", "--value", "k=new"]);
    let err = env.fails(&["secret", "undelete", "r/c"], EXISTS);
    assert!(err.contains("undelete r/c --as NEW"), "{err}");
    let said = env.ok(&["secret", "undelete", "r/c", "--as", "r/c-old"]);
    assert!(said.starts_with("undeleted r/c as r/c-old "), "{said}");
    assert_eq!(env.ok(&["secret", "get", "r/c-old", "--key", "k"]), "old\n");
    assert_eq!(env.ok(&["secret", "get", "r/c", "--key", "k"]), "new\n");
    env.fails(&["secret", "undelete", "nothing", "--as", "x"], NOT_FOUND);
    // The log shows the rename and the undelete of the old secret.
    let history = env.json_lines(&["secret", "history", "r/c-old"]);
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "secret.created",
            "secret.deleted",
            "secret.renamed",
            "secret.restored"
        ]
    );
}

/// `--value-file` drops one trailing newline (documented); `--value-file-raw` keeps the file
/// exactly.
#[test]
fn value_file_raw_keeps_the_trailing_newline() {
    let env = Env::new();
    let file = env.path("pw.txt");
    std::fs::write(&file, "pw\n").unwrap();
    let raw = format!("raw={}", file.display());
    let trimmed = format!("trimmed={}", file.display());
    env.ok(&[
        "secret",
        "create",
        "f",
        "--value-file-raw",
        &raw,
        "--value-file",
        &trimmed,
    ]);
    let values = &env.json(&["secret", "get", "f"])["values"];
    assert_eq!(values["raw"], "pw\n");
    assert_eq!(values["trimmed"], "pw");
}

/// Shell completions and a man page, generated from the same command definitions; neither
/// needs a ledger.
#[test]
fn completions_and_the_man_page_are_generated() {
    let env = Env::empty();
    for shell in ["bash", "zsh", "fish"] {
        let script = env.ok(&["completions", shell]);
        assert!(
            script.contains("recover") && script.contains("secret"),
            "{shell}: {script}"
        );
    }
    let man = env.ok(&["man"]);
    assert!(man.contains(".TH sledger"), "{man}");
    assert!(!env.ledger.exists());
}

/// `verify --save-anchor` replaces this ledger's older anchor, but not another ledger's
/// anchor or a file that is not an anchor, unless --force.
#[test]
fn save_anchor_refuses_to_overwrite_what_is_not_this_ledgers_anchor() {
    let env = Env::new();
    let anchor = env.path("anchor.json");
    let path = anchor.to_str().unwrap();
    env.ok(&["verify", "--save-anchor", path]);
    env.ok(&["secret", "create", "a", "--value", "k=v"]);
    env.ok(&["verify", "--save-anchor", path]);
    env.ok(&["verify", "--anchor", path]);
    let other = Env::new();
    let err = other.fails(&["verify", "--save-anchor", path], EXISTS);
    assert!(err.contains("--force"), "{err}");
    env.ok(&["verify", "--anchor", path]);
    let notes = env.path("notes.txt");
    std::fs::write(&notes, "keep me").unwrap();
    env.fails(&["verify", "--save-anchor", notes.to_str().unwrap()], EXISTS);
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me");
    other.ok(&["verify", "--save-anchor", path, "--force"]);
}

/// A label-only update shows in `log` and `history` (people and scripts), not as an empty
/// CHANGES column.
#[test]
fn label_changes_show_in_the_log() {
    let env = Env::new();
    env.ok(&[
        "secret", "create", "s", "--value", "k=v", "--label", "team=a", "--label", "env=p",
    ]);
    env.ok(&[
        "secret",
        "update",
        "s",
        "--label",
        "team=b",
        "--label",
        "zone=eu",
        "--remove-label",
        "env",
    ]);
    let history = env.ok(&["secret", "history", "s"]);
    let last = history.lines().last().unwrap();
    for part in ["~label team=b", "+label zone=eu", "-label env"] {
        assert!(last.contains(part), "{part} missing: {last}");
    }
    let entry = env.json_lines(&["log", "--tail", "1"]).pop().unwrap();
    let changes = entry["label_changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3, "{entry}");
    assert!(changes.contains(&serde_json::json!({"key": "env", "change": "removed", "value": null})));
}

/// `replay --at` a point before a purge says that the purged secret cannot come back (as
/// `restore` does), instead of leaving it out silently.
#[test]
fn replay_before_a_purge_names_what_cannot_come_back() {
    let env = Env::new();
    env.ok(&["secret", "create", "kept", "--value", "k=1"]);
    env.ok(&["secret", "create", "shredded", "--value", "k=2"]);
    let before = env.json_lines(&["log", "--tail", "1"])[0]["seq"].to_string();
    env.ok(&["secret", "purge", "shredded", "--yes"]);
    let out = env
        .cmd()
        .args(["replay", "--into", &env.sqlite_url("then.db"), "--seq", &before])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("purged since") && err.contains("shredded"), "{err}");
}

/// Help a newcomer can use: global options under their own heading, positional arguments
/// described, examples in the long help, and a secret's many keys abbreviated in tables.
#[test]
fn help_and_tables_stay_readable() {
    let env = Env::new();
    let help = env.ok(&["--help"]);
    assert!(help.contains("Global options"), "{help}");
    let get = env.ok(&["secret", "get", "--help"]);
    assert!(
        get.contains("The secret's name") && get.contains("Examples:"),
        "{get}"
    );
    let values: Vec<String> = (0..60).map(|i| format!("key{i:02}=v")).collect();
    let mut args = vec!["secret", "create", "wide"];
    for v in &values {
        args.extend(["--value", v.as_str()]);
    }
    env.ok(&args);
    let table = env.ok(&["secret", "list"]);
    let row = table.lines().find(|l| l.starts_with("wide")).unwrap();
    assert!(row.contains("… +") && row.chars().count() < 160, "{row}");
    let doc = &env.json(&["secret", "list"])[0];
    assert_eq!(doc["keys"].as_array().unwrap().len(), 60, "JSON keeps every key");
}

/// Tables fit the terminal (`COLUMNS` here, which is what `ls` reads too): long labels and
/// changes are cut with `…`, names never are, and piped output is never cut. Columns line up
/// by display width, so a label with wide characters does not shift the next column.
#[test]
fn tables_fit_the_terminal_and_line_up_by_display_width() {
    use unicode_width::UnicodeWidthStr;
    let env = Env::new();
    let long = format!("note={}", "x".repeat(200));
    for (name, label) in [
        ("svc/wide", "team=開発チーム"),
        ("svc/narrow", "team=ops"),
        ("svc/long-labelled-secret", long.as_str()),
    ] {
        env.ok(&["secret", "create", name, "--value", "k=v", "--label", label]);
    }
    let in_columns = |columns: &str, args: &[&str]| {
        let out = env.cmd().env("COLUMNS", columns).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };

    let table = in_columns("100", &["secret", "list"]);
    assert!(table.lines().all(|l| l.width() <= 100), "{table}");
    assert!(
        table.contains("svc/long-labelled-secret") && table.contains("note=xxx"),
        "{table}"
    );
    assert!(table.contains('…') && !table.contains(&long), "{table}");
    let header = table.lines().next().unwrap();
    let updated = header[..header.find("UPDATED").unwrap()].width();
    for row in table.lines().skip(1) {
        let (mut column, mut rest) = (0, row);
        while column < updated {
            let c = rest.chars().next().unwrap_or_else(|| panic!("short row {row:?}"));
            column += unicode_width::UnicodeWidthChar::width(c).unwrap();
            rest = &rest[c.len_utf8()..];
        }
        assert!(
            column == updated && rest.starts_with(|c: char| c.is_ascii_digit()),
            "UPDATED is not at display column {updated} in {row:?}\n{table}"
        );
    }

    let log = in_columns("120", &["log"]);
    assert!(log.lines().all(|l| l.width() <= 120), "{log}");
    assert!(log.contains("svc/long-labelled-secret"), "{log}");

    let piped = env.ok(&["secret", "list"]);
    assert!(piped.contains(&long), "piped output is never cut: {piped}");
}

/// A standby sink is written by replays only: `project --sink` refuses it, saying so, and a
/// sink that is not attached is not found.
#[test]
fn project_refuses_a_standby_sink_by_name() {
    let env = Env::new();
    let standby = format!("sqlite://{}", env.path("standby.db").display());
    env.ok(&["sink", "add", "sb", &standby, "--role", "standby"]);
    env.ok(&["secret", "create", "a", "--value", "k=v"]);
    let err = env.fails(&["project", "--sink", "sb"], USAGE);
    assert!(err.contains(r#"sink "sb" is a standby"#), "{err}");
    env.fails(&["project", "--sink", "nosuch"], NOT_FOUND);
}

/// A `ledger copy` stopped before its last step leaves a target that holds part of the log:
/// it is refused (naming the command that finishes it) until the copy is run again.
#[test]
fn a_copy_cut_short_is_refused_until_it_is_finished() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=1"]);
    let target = env.path("copy.db");
    let to = sledger::store::Location::parse(target.to_str().unwrap()).unwrap();
    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sledger::store::copy::copy_ledger(&env.location(), &to, &mut |_, _| panic!("the copy is stopped"))
    }));
    assert!(cut.is_err(), "the copy was meant to stop after its first batch");
    let key = env.key.to_str().unwrap();
    let copy_args = ["--ledger", target.to_str().unwrap(), "--key-file", key];
    let err = env.fails(&[&copy_args[..], &["secret", "list"]].concat(), 5);
    assert!(
        err.contains("not finished") && err.contains("sledger ledger copy"),
        "{err}"
    );
    // Nor is a copy of it taken for a whole ledger.
    let onward = env.path("onward.db");
    let (from, to) = (target.to_str().unwrap(), onward.to_str().unwrap());
    let err = env.fails(&["ledger", "copy", "--from", from, "--to", to], 5);
    assert!(err.contains("not finished"), "{err}");
    env.ok(&["ledger", "copy", "--to", target.to_str().unwrap()]);
    let got = env.ok(&[
        &copy_args[..],
        &["secret", "get", "a", "--key", "k", "--from", "ledger"],
    ]
    .concat());
    assert_eq!(got, "1\n");
}
