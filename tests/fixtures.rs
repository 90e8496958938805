//! Ledgers written by older sledger versions (replay/fixtures/) must keep opening, verifying,
//! decoding and decrypting, forever.

mod common;

use common::Env;
use serde_json::Value;

fn load(version: &str) -> (Env, Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("replay/fixtures")
        .join(version);
    let env = Env::empty();
    std::fs::copy(dir.join("ledger.db"), &env.ledger).unwrap();
    std::fs::copy(dir.join("ledger.key"), &env.key).unwrap();
    // git keeps no 0600 mode, and sledger refuses a key file others can read.
    std::fs::set_permissions(&env.key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    (env, expected)
}

#[test]
fn v1_ledger_still_verifies_decodes_and_decrypts() {
    let (env, expected) = load("v1");
    let actor = expected["actor"].as_str().unwrap();
    let as_owner = |args: &[&str]| -> Value {
        let out = env
            .cmd()
            .env("SLEDGER_ACTOR", actor)
            .arg("--format")
            .arg("json")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let verified = env.json(&["verify"]);
    assert_eq!(verified["head"]["seq"], expected["head"]["seq"]);
    assert_eq!(verified["head"]["hash"], expected["head"]["hash"]);

    let types: Vec<Value> = env
        .json_lines(&["log"])
        .into_iter()
        .map(|e| e["event_type"].clone())
        .collect();
    assert_eq!(Value::Array(types), expected["event_types"]);

    for (name, want) in expected["live"].as_object().unwrap() {
        let got = as_owner(&["secret", "get", name]);
        assert_eq!(got["version"], want["version"], "{name}");
        assert_eq!(got["values"], want["values"], "{name}");
        assert_eq!(got["labels"], want["labels"], "{name}");
    }
    for (name, versions) in expected["versions"].as_object().unwrap() {
        for (v, values) in versions.as_object().unwrap() {
            assert_eq!(
                as_owner(&["secret", "get", name, "--version", v])["values"],
                *values,
                "{name} v{v}"
            );
        }
    }
    let deleted: Vec<Value> = as_owner(&["secret", "list", "--deleted"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert_eq!(Value::Array(deleted), expected["deleted"]);
    for name in expected["purged"].as_array().unwrap() {
        let out = env
            .cmd()
            .args(["secret", "get", name.as_str().unwrap(), "--version", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
    }

    // Writing to an old ledger appends to the same chain: the event that starts MACs, then
    // the write.
    env.ok(&["secret", "create", "new-in-old", "--value", "k=v"]);
    assert_eq!(
        env.json(&["verify"])["events"],
        expected["head"]["seq"].as_u64().unwrap() + 2
    );
}

/// A ledger from before event MACs: its first write by a key holder records where MACs start
/// (`ledger.macs_started`), and `verify` says which seqs they cover.
#[test]
fn an_older_ledger_starts_macs_with_a_recorded_event() {
    let (env, _) = load("v1");
    let before = env.json(&["verify"]);
    assert_eq!(before["macs"]["checked"], true);
    assert_eq!(before["macs"]["from_seq"], Value::Null);
    let head = before["events"].as_u64().unwrap();
    env.ok(&["secret", "create", "after-upgrade", "--value", "k=v"]);
    let started = env.json_lines(&["log", "--type", "ledger.macs_started"]);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["seq"], head + 1);
    let after = env.json(&["verify"]);
    assert_eq!(after["macs"]["from_seq"], head + 1);
    assert!(env.ok(&["verify"]).contains(&format!("from seq {}", head + 1)));
}
