//! Sinks and projectors through the CLI, as a user drives them.

mod common;

use std::collections::BTreeMap;

use common::{exec_url, Env};
use serde_json::{json, Value};

const NOT_FOUND: i32 = 3;
const USAGE: i32 = 2;
const UNAVAILABLE: i32 = 7;

fn status(env: &Env) -> BTreeMap<String, Value> {
    let v = env.json(&["sink", "status"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

fn source(v: &Value) -> String {
    v["source"]["name"].as_str().unwrap_or("ledger").to_owned()
}

/// The acceptance walk-through: a backup takes over reads while the primary is down, writes
/// keep flowing, and the primary catches up with nothing lost.
#[test]
fn backup_serves_while_primary_is_down_and_primary_catches_up() {
    let env = Env::new();
    let backup = env.path("backup.db");
    env.ok(&["sink", "add", "bk", &format!("sqlite://{}", backup.display())]);
    env.ok(&["secret", "create", "db", "--value", "pw=one"]);
    env.ok(&["secret", "create", "api", "--value", "token=t1"]);
    env.ok(&["secret", "create", "gone", "--value", "k=v"]);
    env.ok(&["secret", "update", "db", "--value", "pw=two"]);
    env.ok(&["secret", "delete", "gone"]);
    env.ok(&["project"]);
    let s = status(&env);
    assert_eq!(s["local"]["lag"], 0);
    assert_eq!(s["bk"]["lag"], 0);
    assert_eq!(s["local"]["role"], "primary");
    assert_eq!(s["bk"]["role"], "backup");
    assert_eq!(source(&env.json(&["secret", "get", "db"])), "local");
    assert_eq!(
        env.json(&["secret", "get", "db", "--from", "backup"])["values"],
        json!({"pw": "two"})
    );
    env.fails(&["secret", "get", "gone", "--from", "backup"], NOT_FOUND);

    // The primary's file disappears (a lost disk, an unmounted volume).
    let primary = env.path("ledger.sink.db");
    let away = env.path("ledger.sink.db.away");
    std::fs::rename(&primary, &away).unwrap();
    for (name, key, want) in [("db", "pw", "two"), ("api", "token", "t1")] {
        let got = env.json(&["secret", "get", name]);
        assert_eq!(got["values"][key], want);
        assert_eq!(source(&got), "bk", "{name} must come from the backup");
        assert_eq!(got["source"]["role"], "backup");
        assert_eq!(got["skipped"][0]["sink"], "local");
    }
    env.fails(&["secret", "get", "db", "--from", "primary"], UNAVAILABLE);

    // Writes keep working: durable in the ledger, the primary's lag and error visible.
    let out = env.json(&[
        "--wait",
        "300ms",
        "secret",
        "create",
        "during",
        "--value",
        "k=written-while-down",
    ]);
    assert_eq!(out["result"], "created");
    assert!(out["primary"]["lag"].as_u64().unwrap() > 0, "{out}");
    env.ok(&["--wait", "0", "secret", "update", "api", "--value", "token=t2"]);
    let s = status(&env);
    assert!(s["local"]["lag"].as_u64().unwrap() >= 2, "{s:?}");
    assert!(
        s["local"]["last_error"].as_str().unwrap().contains("unavailable"),
        "{s:?}"
    );
    env.fails(&["project"], UNAVAILABLE);
    assert_eq!(status(&env)["bk"]["lag"], 0, "the backup kept up");
    assert_eq!(
        env.json(&["secret", "get", "during"])["values"]["k"],
        "written-while-down"
    );
    assert_eq!(env.json(&["secret", "get", "api"])["values"]["token"], "t2");

    // The primary comes back and catches up.
    std::fs::rename(&away, &primary).unwrap();
    env.ok(&["project"]);
    let s = status(&env);
    assert_eq!(s["local"]["lag"], 0);
    assert_eq!(s["local"]["last_error"], Value::Null);
    for (name, key, want) in [
        ("db", "pw", "two"),
        ("api", "token", "t2"),
        ("during", "k", "written-while-down"),
    ] {
        let got = env.json(&["secret", "get", name, "--from", "primary"]);
        assert_eq!(got["values"][key], want, "{name}");
        assert_eq!(got["lagging"], false);
    }
    env.fails(&["secret", "get", "gone", "--from", "primary"], NOT_FOUND);
    env.ok(&["verify"]);
}

#[test]
fn a_failing_exec_plugin_primary_falls_back_and_recovers() {
    let env = Env::new();
    let down = env.path("down");
    let files = env.path("files");
    env.ok(&[
        "sink",
        "add",
        "plug",
        &exec_url(&files, &["--fail-if-exists", down.to_str().unwrap()]),
    ]);
    env.ok(&["sink", "promote", "plug"]);
    let s = status(&env);
    assert_eq!(s["plug"]["role"], "primary");
    assert_eq!(s["local"]["role"], "backup");
    env.ok(&["secret", "create", "x", "--value", "k=1"]);
    env.ok(&["project"]);
    assert_eq!(source(&env.json(&["secret", "get", "x"])), "plug");
    // The plug-in writes the value as a JSON object workloads can read natively.
    let object: Value =
        serde_json::from_str(&std::fs::read_to_string(&common::plugin_secret_files(&files)[0]).unwrap())
            .unwrap();
    assert_eq!(object["record"]["values"], json!({"k": "1"}));
    assert_eq!(object["record"]["name"], "x");

    std::fs::write(&down, "").unwrap();
    assert_eq!(
        source(&env.json(&["secret", "get", "x"])),
        "local",
        "the backup serves"
    );
    // The write does not wait on the primary's anchor either: it goes on, and says what it
    // could not check.
    let out = env.run(&["--wait", "200ms", "secret", "update", "x", "--value", "k=2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the primary sink plug's anchor could not be read") && err.contains("was not checked"),
        "{err}"
    );
    assert!(status(&env)["plug"]["last_error"]
        .as_str()
        .unwrap()
        .contains("backend is down"));
    env.fails(&["sink", "check", "plug"], UNAVAILABLE);
    std::fs::remove_file(&down).unwrap();
    env.ok(&["sink", "check", "plug"]);
    env.ok(&["project"]);
    let got = env.json(&["secret", "get", "x"]);
    assert_eq!(
        (source(&got), got["values"]["k"].clone()),
        ("plug".into(), json!("2"))
    );
}

#[test]
fn a_secret_the_sink_refuses_is_parked_not_blocking() {
    let env = Env::new();
    let refuse = env.path("refuse");
    std::fs::write(&refuse, "").unwrap();
    env.ok(&[
        "sink",
        "add",
        "picky",
        &exec_url(
            &env.path("files"),
            &["--refuse-if-exists", refuse.to_str().unwrap()],
        ),
    ]);
    env.ok(&["secret", "create", "fine-1", "--value", "k=1"]);
    env.ok(&["secret", "create", "poison-pill", "--value", "k=1"]);
    env.ok(&["secret", "create", "poison-two", "--value", "k=1"]);
    env.ok(&["secret", "create", "fine-2", "--value", "k=1"]);
    env.ok(&["project"]);
    let s = &status(&env)["picky"];
    assert_eq!(s["lag"], 0, "a refused secret does not block the sink");
    assert_eq!(s["parked"], 2);
    assert_eq!(
        env.json(&["secret", "get", "fine-2", "--from", "backup"])["values"]["k"],
        "1"
    );
    env.fails(&["secret", "get", "poison-pill", "--from", "backup"], UNAVAILABLE);
    let retried = env.json(&["sink", "retry", "picky"]);
    assert_eq!(
        (retried["applied"].clone(), retried["still_parked"].clone()),
        (json!(0), json!(2))
    );
    std::fs::remove_file(&refuse).unwrap();
    // A later write of a parked secret that goes through unparks it.
    env.ok(&["secret", "update", "poison-two", "--value", "k=2"]);
    env.ok(&["project"]);
    assert_eq!(status(&env)["picky"]["parked"], 1);
    assert_eq!(
        env.json(&["secret", "get", "poison-two", "--from", "backup"])["values"]["k"],
        "2"
    );
    let retried = env.json(&["sink", "retry", "picky"]);
    assert_eq!(retried["applied"], 1);
    assert_eq!(status(&env)["picky"]["parked"], 0);
    assert_eq!(
        env.json(&["secret", "get", "poison-pill", "--from", "backup"])["values"]["k"],
        "1"
    );
}

#[test]
fn a_hung_primary_does_not_hold_writes_past_wait() {
    let env = Env::new();
    env.ok(&[
        "sink",
        "add",
        "slow",
        &exec_url(&env.path("files"), &["--sleep-ms", "5000"]),
    ]);
    env.ok(&["sink", "promote", "slow"]);
    let started = std::time::Instant::now();
    let out = env.json(&["--wait", "300ms", "secret", "create", "x", "--value", "k=1"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out["result"], "created");
    assert!(out["primary"]["lag"].as_u64().unwrap() >= 1, "{out}");
    assert!(
        out["primary"]["error"].as_str().unwrap().contains("deadline"),
        "{out}"
    );
    // Durable, and served by the backup meanwhile.
    assert_eq!(
        env.json(&["secret", "get", "x", "--from", "ledger"])["values"]["k"],
        "1"
    );
}

#[test]
fn sink_add_refuses_what_it_cannot_keep_and_leaves_nothing_behind() {
    let env = Env::new();
    let err = env.fails(&["sink", "add", "m", "memory://x"], USAGE);
    assert!(err.contains("inside one process"), "{err}");
    // An existing file that is not a sink file (here: the ledger itself) is refused.
    let err = env.fails(
        &["sink", "add", "l", &format!("sqlite://{}", env.ledger.display())],
        USAGE,
    );
    assert!(err.contains("not a sledger sqlite sink file"), "{err}");
    // A refused add (the name is taken) does not leave a new file behind.
    let fresh = env.path("fresh.db");
    env.fails(
        &["sink", "add", "local", &format!("sqlite://{}", fresh.display())],
        4,
    );
    assert!(!fresh.exists());
    env.ok(&["verify"]);
}

#[test]
fn sink_management_is_audited_and_guarded() {
    let env = Env::new();
    let url = env.sqlite_url("b.db");
    env.ok(&["sink", "add", "b", &url, "--role", "replica"]);
    env.fails(&["sink", "add", "b", &url], 4);
    let err = env.fails(&["sink", "add", "c", &url], USAGE);
    assert!(err.contains("already writes to"), "{err}");
    let err = env.fails(&["sink", "add", "Bad Name", &env.sqlite_url("bad.db")], USAGE);
    assert!(err.contains("invalid sink name"), "{err}");
    for (url, needle) in [
        ("vault://root:hunter2@127.0.0.1:8200/secret", "user:password@"),
        ("aws-sm://us-east-1?token=hunter2", "token="),
        ("aws-sm://us-east-1?token=hunter2%zz", "not a valid escape"),
        ("memory://x?password=abc", "password="),
        ("nonsense", "SCHEME://"),
        ("sqlite://relative/path.db", "absolute path"),
        ("ftp://x", "unknown scheme"),
        ("gcp-sm://", "expected gcp-sm://PROJECT_ID"),
        ("gcp-sm://p?prefix=a.b", "only letters, digits, - and _"),
        (
            "gcp-sm://p?old_versions=shred",
            "old_versions must be disable, destroy or keep",
        ),
        (
            "gcp-sm://p?endpoint=localhost:1",
            "endpoint must be an http:// or https:// URL",
        ),
        (
            "azure-kv://v.vault.azure.net?prefix=a_b",
            "only letters, digits and -",
        ),
        (
            "azure-kv://v.vault.azure.net/secrets",
            "expected azure-kv://VAULT_HOST",
        ),
        (
            "azure-kv://v.vault.azure.net?client_secret=hunter2",
            "unknown parameter",
        ),
        (
            "vault://h:1/secret?max_rps=0",
            "max_rps must be a number from 1 to 100000",
        ),
    ] {
        let err = env.fails(&["sink", "add", "c", url], USAGE);
        assert!(err.contains(needle), "{url}: {err}");
        assert!(!err.contains("hunter2"), "a credential was echoed: {err}");
    }
    let err = env.fails(&["sink", "remove", "local"], USAGE);
    assert!(err.contains("primary"), "{err}");
    let err = env.fails(&["sink", "set-role", "local", "backup"], USAGE);
    assert!(err.contains("promote another sink first"), "{err}");
    env.ok(&["sink", "set-role", "b", "standby"]);
    env.ok(&["sink", "promote", "b"]);
    env.ok(&["sink", "remove", "local"]);
    env.fails(&["sink", "check", "nope"], NOT_FOUND);
    let list = env.json(&["sink", "list"]);
    assert_eq!(list, json!([{"name": "b", "role": "primary", "url": url}]));
    let types: Vec<String> = env
        .json_lines(&["log", "--type", "sink.role_changed"])
        .iter()
        .map(|e| e["detail"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        types.len(),
        3,
        "standby, then the promotion's two changes: {types:?}"
    );
    assert_eq!(env.json_lines(&["log", "--type", "sink.removed"]).len(), 1);
    let human = env.ok(&["log", "--type", "sink.added"]);
    assert!(human.contains("local") && human.contains("alice@test"), "{human}");
}

#[test]
fn standby_sinks_are_not_projected() {
    let env = Env::new();
    env.ok(&[
        "sink",
        "add",
        "cold",
        &env.sqlite_url("cold.db"),
        "--role",
        "standby",
    ]);
    env.ok(&["secret", "create", "x", "--value", "k=1"]);
    env.ok(&["project"]);
    let s = &status(&env)["cold"];
    assert_eq!((s["checkpoint"].clone(), s["lag"].clone()), (json!(0), json!(0)));
    let err = env.fails(&["project", "--sink", "cold"], USAGE);
    assert!(err.contains("standby"), "{err}");
}

#[test]
fn project_follow_keeps_sinks_current_and_stops_on_sigterm() {
    let env = Env::new();
    env.ok(&["sink", "add", "bk", &env.sqlite_url("bk.db")]);
    let follower = std::process::Command::new(assert_cmd::cargo::cargo_bin("sledger"))
        .env("SLEDGER_LEDGER", &env.ledger)
        .args(["project", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    env.ok(&["--wait", "0", "secret", "create", "live", "--value", "k=1"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while status(&env)["bk"]["lag"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower did not catch the backup up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        env.json(&["secret", "get", "live", "--from", "backup"])["values"]["k"],
        "1"
    );
    // SIGTERM: a clean stop with exit 0.
    let pid = follower.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
}

/// A write waits for, and reports, its own event: with eight writers at once no write says the
/// primary is behind because of the others' events; `--wait 0` prints no note, and its JSON
/// says whether the primary has applied the write.
#[test]
fn no_false_lag_notes_under_concurrent_writes() {
    let env = Env::new();
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let env = &env;
                scope.spawn(move || {
                    let mut notes = Vec::new();
                    for i in 0..8 {
                        let out = env
                            .cmd()
                            .args(["secret", "create", &format!("w{w}/s{i}"), "--value", "k=v"])
                            .output()
                            .unwrap();
                        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                        if stderr.contains("behind") {
                            notes.push(stderr);
                        }
                    }
                    notes
                })
            })
            .collect();
        for writer in writers {
            let notes = writer.join().unwrap();
            assert!(notes.is_empty(), "false lag notes: {notes:?}");
        }
    });
    let out = env
        .cmd()
        .args(["--wait", "0", "secret", "create", "quiet", "--value", "k=v"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("note:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = env.json(&["--wait", "0", "secret", "create", "quiet2", "--value", "k=v"]);
    assert!(doc["primary"]["applied"].is_boolean(), "{doc}");
    assert_eq!(
        doc["primary"]["applied"] == true,
        doc["primary"]["lag"] == 0,
        "{doc}"
    );
}

/// A sink cannot lie: a value changed in the backend behind sledger's back, or a record
/// claiming a seq beyond the ledger's head, is not served; the read falls through to the next
/// source (here the backup) and says why.
#[test]
fn a_sink_that_lies_is_not_believed() {
    let env = Env::new();
    let dir = env.path("plugin-objects");
    std::fs::create_dir_all(&dir).unwrap();
    env.ok(&["sink", "add", "plug", &exec_url(&dir, &[])]);
    env.ok(&["secret", "create", "db", "--value", "pw=genuine"]);
    env.ok(&["project"]);
    env.ok(&["sink", "promote", "plug"]);
    let got = env.json(&["secret", "get", "db"]);
    assert_eq!(got["source"]["name"], "plug", "{got}");
    let object = common::plugin_secret_files(&dir).remove(0);
    let stored: Value = serde_json::from_slice(&std::fs::read(&object).unwrap()).unwrap();

    // A value planted in the backend.
    let mut planted = stored.clone();
    planted["record"]["values"]["pw"] = json!("planted");
    std::fs::write(&object, planted.to_string()).unwrap();
    let out = env
        .cmd()
        .args(["--format", "json", "secret", "get", "db"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["values"]["pw"], "genuine", "{got}");
    assert_eq!(
        got["source"],
        json!({"kind": "sink", "name": "local", "role": "backup"})
    );
    assert!(
        got["skipped"][0]["reason"].as_str().unwrap().contains("drifted"),
        "{got}"
    );
    env.fails(&["secret", "get", "db", "--from", "primary"], 7);

    // A record claiming a seq from the future.
    let mut ahead = stored.clone();
    ahead["seq"] = json!(1u64 << 62);
    ahead["record"]["seq"] = json!(1u64 << 62);
    std::fs::write(&object, ahead.to_string()).unwrap();
    let got = env.json(&["secret", "get", "db"]);
    assert_eq!(got["values"]["pw"], "genuine", "{got}");
    assert!(
        got["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("beyond the ledger's head"),
        "{got}"
    );
    // Human output says so too, and never shows the epoch as a time.
    let out = env.cmd().args(["secret", "get", "db"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("beyond the ledger's head"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("1970-01-01"));
}

/// `sink add` checks what it can without a network: an exec plug-in must be an executable
/// file, a sqlite sink's directory must exist; each refusal says what to fix.
#[test]
fn sink_add_refuses_a_missing_plugin_or_directory() {
    let env = Env::new();
    let err = env.fails(&["sink", "add", "x", "exec:///nonexistent/plugin"], 2);
    assert!(
        err.contains("/nonexistent/plugin") && err.contains("executable"),
        "{err}"
    );
    let not_executable = env.path("plain.txt");
    std::fs::write(&not_executable, "").unwrap();
    let err = env.fails(
        &[
            "sink",
            "add",
            "x",
            &format!("exec://{}", not_executable.display()),
        ],
        2,
    );
    assert!(err.contains("chmod +x"), "{err}");
    let missing_dir = env.path("no/such/dir/sink.db");
    let err = env.fails(
        &["sink", "add", "x", &format!("sqlite://{}", missing_dir.display())],
        2,
    );
    assert!(err.contains("does not exist") && err.contains("mkdir"), "{err}");
    assert_eq!(
        env.json(&["sink", "list"]).as_array().unwrap().len(),
        1,
        "nothing was added"
    );
}

/// A command that wrote to the default sqlite sink closes it before it exits: the sink's file
/// holds every write, and no WAL is left behind for the next process to read whole (before,
/// the process exited while the sink's thread was still closing the connection).
#[test]
fn a_sqlite_sink_is_closed_whole_when_a_command_exits() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=1"]);
    env.ok(&["secret", "get", "db"]);
    let sink = env.path("ledger.sink.db");
    let wal = env.path("ledger.sink.db-wal");
    assert!(sink.is_file(), "the default sink is {}", sink.display());
    assert!(!wal.exists(), "the sink's WAL was left behind");
    let copy = env.path("sink-copy.db");
    std::fs::copy(&sink, &copy).unwrap();
    let objects: i64 = rusqlite::Connection::open(&copy)
        .unwrap()
        .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        objects, 2,
        "the sink's file alone holds the secret and the ledger's anchor"
    );
}

/// One sqlite sink file serves one ledger: another ledger attaching it is refused before
/// anything is appended (it would overwrite the seal key the file keeps, and the first ledger
/// could no longer recover from it), while the owner can attach its file again, and a ledger
/// recovered from the file opens it too.
#[test]
fn a_sink_file_serves_one_ledger() {
    let a = Env::new();
    a.ok(&["secret", "create", "prod/db", "--value", "pw=APW"]);
    a.ok(&["project"]);
    let file = a.sqlite_url("ledger.sink.db");
    // As a file from before sinks recorded their ledger: the seal key it keeps and the objects
    // it holds still tell it apart.
    rusqlite::Connection::open(a.path("ledger.sink.db"))
        .unwrap()
        .execute("DELETE FROM sink_meta WHERE key = 'ledger_id'", [])
        .unwrap();
    // Its owner's key rotation seals it again, after the old key claimed it.
    a.ok(&["key", "rotate"]);
    let b = Env::new();
    let head = b.json_lines(&["log"]).len();
    let err = b.fails(&["sink", "add", "x", &file], USAGE);
    assert!(err.contains("the sink file of another ledger"), "{err}");
    assert_eq!(b.json_lines(&["log"]).len(), head, "nothing appended");
    // Through a migration too.
    let err = b.fails(&["migrate", "--to", &file, "--name", "x"], USAGE);
    assert!(err.contains("the sink file of another ledger"), "{err}");
    // Nor can the owner attach its attached file a second time through a link to it.
    std::os::unix::fs::symlink(a.path("ledger.sink.db"), a.path("link.db")).unwrap();
    let err = a.fails(&["sink", "add", "twice", &a.sqlite_url("link.db")], USAGE);
    assert!(err.contains("\"local\""), "{err}");
    // The owner attaches its own file again under another name.
    let backup = a.sqlite_url("bk.db");
    a.ok(&["sink", "add", "bk", &backup]);
    a.ok(&["project"]);
    a.ok(&["sink", "remove", "bk"]);
    a.ok(&["sink", "add", "again", &backup]);
    a.ok(&["project"]);
    a.ok(&["verify"]);
    // A ledger recovered from the file opens it as its standby source.
    let recovered = Env::empty();
    std::fs::copy(&a.key, &recovered.key).unwrap();
    recovered.ok(&["recover", "--from", &file]);
    recovered.ok(&["sink", "check", "recovered-from"]);
    assert_eq!(
        recovered.ok(&["secret", "get", "prod/db", "--key", "pw"]),
        "APW\n"
    );
}

/// A migration's dry run checks the new sink's name as the real run does, and a key removed
/// twice in one update is refused instead of called missing.
#[test]
fn a_dry_run_and_an_update_check_their_input_as_the_real_thing() {
    let env = Env::new();
    let url = env.sqlite_url("new.db");
    let err = env.fails(
        &["migrate", "--to", &url, "--name", "../../x", "--dry-run"],
        USAGE,
    );
    assert!(err.contains("invalid sink name"), "{err}");
    env.ok(&["secret", "create", "s", "--value", "a=1", "--value", "b=2"]);
    let err = env.fails(
        &["secret", "update", "s", "--remove-key", "a", "--remove-key", "a"],
        USAGE,
    );
    assert!(err.contains("removed twice"), "{err}");
    assert_eq!(env.ok(&["secret", "get", "s", "--key", "a"]), "1\n");
}

/// `migrate --format json` speaks JSON for scripts: the plan of a dry run as one document,
/// and each of the five steps as a JSON line.
#[test]
fn migrate_in_json_is_json() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=1"]);
    let url = format!("sqlite://{}", env.path("next.db").display());
    let plan = env.json(&["migrate", "--to", &url, "--name", "next", "--dry-run"]);
    assert_eq!(
        (&plan["plan"], &plan["name"]),
        (&"attach".into(), &"next".into()),
        "{plan}"
    );
    let steps = env.json_lines(&["migrate", "--to", &url, "--name", "next"]);
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert_eq!(
        (&steps[0]["step"], &steps[4]["step"]),
        (&"attached".into(), &"done".into()),
        "{steps:?}"
    );
}
