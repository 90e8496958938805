//! The README's tour as assertions, run against a local ledger (tests/cli.rs) and through
//! `sledger serve` by the remote CLI (tests/remote.rs): the same commands, outputs and exit
//! codes either way.

use serde_json::json;

use super::Env;

const USAGE: i32 = 2;
const NOT_FOUND: i32 = 3;
const EXISTS: i32 = 4;

pub fn create_get_update_round_trip(env: &Env) {
    env.ok(&[
        "secret",
        "create",
        "db",
        "--value",
        "user=admin",
        "--value",
        "password=s3cr3t-1",
        "--label",
        "env=prod",
    ]);
    let got = env.json(&["secret", "get", "db"]);
    assert_eq!(got["name"], "db");
    assert_eq!(got["version"], 1);
    assert_eq!(got["values"], json!({"user": "admin", "password": "s3cr3t-1"}));
    assert_eq!(got["labels"], json!({"env": "prod"}));
    // Served by the embedded default primary that `init` attached.
    assert_eq!(
        got["source"],
        json!({"kind": "sink", "name": "local", "role": "primary"})
    );
    assert_eq!(got["lagging"], false);
    assert_eq!(
        env.json(&["secret", "get", "db", "--from", "ledger"])["source"],
        json!({"kind": "ledger"})
    );

    assert_eq!(
        env.ok(&["secret", "get", "db", "--key", "password"]),
        "s3cr3t-1\n"
    );

    // Keys not named keep their values; labels can be added and removed.
    env.ok(&[
        "secret",
        "update",
        "db",
        "--value",
        "password=s3cr3t-2",
        "--label",
        "team=core",
        "--remove-label",
        "env",
    ]);
    let got = env.json(&["secret", "get", "db"]);
    assert_eq!(got["version"], 2);
    assert_eq!(got["values"], json!({"user": "admin", "password": "s3cr3t-2"}));
    assert_eq!(got["labels"], json!({"team": "core"}));

    env.ok(&["secret", "update", "db", "--remove-key", "user"]);
    assert_eq!(
        env.json(&["secret", "get", "db"])["values"],
        json!({"password": "s3cr3t-2"})
    );

    // An update that changes nothing records nothing.
    let out = env.json(&["secret", "update", "db", "--value", "password=s3cr3t-2"]);
    assert_eq!(out["result"], "unchanged");
    assert_eq!(env.json(&["secret", "get", "db"])["version"], 3);

    // Old versions stay readable.
    assert_eq!(
        env.json(&["secret", "get", "db", "--version", "1"])["values"]["password"],
        "s3cr3t-1"
    );
    let err = env.fails(&["secret", "get", "db", "--version", "9"], NOT_FOUND);
    assert!(err.contains("versions 1 to 3"), "{err}");
}

pub fn rename_delete_undelete_purge(env: &Env) {
    env.ok(&["secret", "create", "old", "--value", "k=v1"]);
    let said = env.ok(&["secret", "rename", "old", "new"]);
    assert!(
        said.starts_with("renamed old → new "),
        "a rename names both names: {said}"
    );
    env.fails(&["secret", "get", "old"], NOT_FOUND);
    assert_eq!(env.ok(&["secret", "get", "new", "--key", "k"]), "v1\n");

    env.ok(&["secret", "delete", "new"]);
    let err = env.fails(&["secret", "get", "new"], NOT_FOUND);
    assert!(err.contains("undelete"), "{err}");
    let deleted = env.json(&["secret", "list", "--deleted"]);
    assert_eq!(deleted.as_array().unwrap().len(), 1);
    assert_eq!(env.json(&["secret", "list"]), json!([]));

    // While deleted, the name is free; undelete refuses to clash with the new holder.
    env.ok(&["secret", "create", "new", "--value", "k=other"]);
    env.fails(&["secret", "undelete", "new"], EXISTS);
    env.ok(&["secret", "rename", "new", "newer"]);
    env.ok(&["secret", "undelete", "new"]);
    assert_eq!(env.ok(&["secret", "get", "new", "--key", "k"]), "v1\n");

    let err = env.fails(&["secret", "purge", "new"], USAGE);
    assert!(err.contains("--yes"), "{err}");
    env.ok(&["secret", "purge", "new", "--yes"]);
    let err = env.fails(&["secret", "get", "new", "--version", "1"], NOT_FOUND);
    assert!(err.contains("purged"), "{err}");
    // History and the chain survive the purge.
    let history = env.json_lines(&["secret", "history", "new"]);
    assert_eq!(history.last().unwrap()["event_type"], "secret.purged");
    env.ok(&["verify"]);
    // The other secret is untouched.
    assert_eq!(env.ok(&["secret", "get", "newer", "--key", "k"]), "other\n");
}

pub fn list_filters_by_label_and_history_shows_changes(env: &Env) {
    env.ok(&["secret", "create", "a", "--value", "k=1", "--label", "env=prod"]);
    env.ok(&["secret", "create", "b", "--value", "k=1", "--label", "env=dev"]);
    let names = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(env.json(&["secret", "list", "--label", "env=prod"])), ["a"]);
    assert_eq!(names(env.json(&["secret", "list"])), ["a", "b"]);
    let table = env.ok(&["secret", "list"]);
    assert!(table.contains("NAME") && table.contains("env=dev"), "{table}");

    env.ok(&["secret", "update", "a", "--value", "k=2", "--value", "extra=x"]);
    let h = env.json_lines(&["secret", "history", "a"]);
    assert_eq!(h.len(), 2);
    assert_eq!(h[0]["event_type"], "secret.created");
    let changes = &h[1]["changes"];
    let kinds: Vec<(String, String)> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap().to_owned(),
                c["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("extra".into(), "added".into()), ("k".into(), "changed".into())]
    );
    // Same value under another secret has the same fingerprint; a different value does not.
    let fp_a1 = &h[0]["changes"][0]["fingerprint"];
    let hb = env.json_lines(&["secret", "history", "b"]);
    assert_eq!(fp_a1, &hb[0]["changes"][0]["fingerprint"]);
    assert_ne!(fp_a1, &h[1]["changes"][1]["fingerprint"]);
}

/// `log --follow` prints what is there, then each new event as it is appended.
pub fn log_follow_prints_new_events(env: &Env) {
    use std::io::{BufRead, BufReader};
    env.ok(&["secret", "create", "first", "--value", "k=1"]);
    let mut child = env.spawn_piped(&["--format", "json", "log", "--follow"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert_eq!(next()["event_type"], "sink.added");
    assert_eq!(next()["name"], "first");
    env.ok(&["secret", "create", "second", "--value", "k=1"]);
    assert_eq!(next()["name"], "second");
    child.kill().unwrap();
    child.wait().unwrap();
}
