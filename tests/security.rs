//! The security hardening findings, each reproduced through the CLI a user runs.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::Env;

/// A plug-in that dumps its environment sees neither the master key nor any cloud credential:
/// only PATH, HOME, LANG and what its URL names.
#[test]
fn exec_plugins_get_a_cleared_environment() {
    let env = Env::new();
    let plugin = env.path("plugin.sh");
    let dump = env.path("plugin-env.txt");
    std::fs::write(
        &plugin,
        "#!/bin/sh\nenv > \"$1\"\nwhile IFS= read -r line; do echo '{\"ok\":true,\"entries\":[]}'; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let url = format!(
        "exec://{}?arg={}&env=PLUGIN_SETTING",
        plugin.display(),
        dump.display()
    );
    env.ok(&["sink", "add", "dump", &url, "--role", "replica"]);
    env.ok(&["secret", "create", "db", "--value", "pw=not-for-plugins"]);
    let master = std::fs::read_to_string(&env.key).unwrap();
    let vars = [
        ("SLEDGER_MASTER_KEY", master.trim()),
        ("VAULT_TOKEN", "vault-token-for-sledger-only"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-for-sledger-only"),
        ("AZURE_CLIENT_SECRET", "azure-secret-for-sledger-only"),
        ("PLUGIN_SETTING", "given-by-name"),
    ];
    common::ok_with(&env, &vars, &["project", "--sink", "dump"]);
    let seen = std::fs::read_to_string(&dump).expect("the plug-in ran");
    assert!(seen.contains("PLUGIN_SETTING=given-by-name"), "{seen}");
    assert!(seen.contains("PATH="), "{seen}");
    for (name, value) in &vars[..4] {
        assert!(!seen.contains(name), "the plug-in saw {name}:\n{seen}");
        assert!(!seen.contains(value), "the plug-in saw the value of {name}");
    }
    // Naming the master key does not pass it either: such a URL is refused.
    let refused = env.fails(
        &[
            "sink",
            "add",
            "leak",
            &format!("exec://{}?env=SLEDGER_MASTER_KEY", plugin.display()),
        ],
        2,
    );
    assert!(refused.contains("never passed"), "{refused}");
}

/// A credential cannot reach the ledger through a URL parameter's value either: an endpoint
/// with user info, or a plug-in argument naming a token or password. The refused URL is never
/// echoed, and nothing is appended.
#[test]
fn credentials_in_parameter_values_are_refused() {
    let env = Env::new();
    let before = env.json_lines(&["log"]).len();
    for url in [
        "aws-sm://us-east-1?endpoint=https://AKIAEXAMPLE:wJalrXUtnFEMIK@127.0.0.1:9",
        "vault://127.0.0.1:8200/secret?tls=off&namespace=x&endpoint=http://user:pw-in-url@h",
        "exec:///bin/cat?arg=--token=tok-in-args-4471",
        "exec:///bin/cat?arg=--password&arg=pw-after-flag",
        "exec:///bin/cat?arg=-api-key=k-in-args",
    ] {
        let err = env.fails(&["sink", "add", "leaky", url], 2);
        assert!(err.contains("credential"), "{url}: {err}");
        for secret in ["wJalrXUtnFEMIK", "pw-in-url", "tok-in-args-4471", "k-in-args"] {
            assert!(!err.contains(secret), "the error echoes a credential: {err}");
        }
    }
    // Names of where credentials live are fine.
    env.ok(&[
        "sink",
        "add",
        "ok",
        "exec:///bin/cat?arg=--token-file=/run/secrets/t",
        "--role",
        "standby",
    ]);
    let log = env.ok(&["log"]);
    for secret in ["wJalrXUtnFEMIK", "pw-in-url", "tok-in-args-4471", "k-in-args"] {
        assert!(!log.contains(secret));
    }
    assert_eq!(env.json_lines(&["log"]).len(), before + 1);
}

/// A key file or token file others can read is refused, as ssh refuses such a private key,
/// with the fix in the message.
#[test]
fn loose_key_files_are_refused() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=x"]);
    std::fs::set_permissions(&env.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = env.fails(&["secret", "get", "db"], 6);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&env.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.ok(&["secret", "get", "db"]);
}

/// The projector's lock file is never created through a symlink planted at its path.
#[test]
fn lock_files_do_not_follow_symlinks() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=x"]);
    let target = env.path("elsewhere");
    let lock = format!("{}.sink-local.lock", env.ledger.display());
    let _ = std::fs::remove_file(&lock);
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    env.ok(&["--wait", "0", "secret", "update", "db", "--value", "pw=y"]);
    let out = env.run(&["project"]);
    assert!(
        !out.status.success(),
        "projecting through a planted symlink succeeded"
    );
    assert!(!target.exists(), "the lock was created through the symlink");
}

/// Plain-text transports to a backend are refused anywhere but loopback: Vault's `tls=off`,
/// and an `endpoint=http://` for AWS or GCP. https, and loopback for dev servers and
/// emulators, stay allowed.
#[test]
fn plain_http_to_a_backend_is_refused_off_loopback() {
    let env = Env::new();
    for url in [
        "vault://vault.internal:8200/secret?tls=off",
        "vault://10.0.0.5:8200/secret?tls=off",
        "aws-sm://us-east-1?endpoint=http://vpce.example.com",
        "gcp-sm://project?endpoint=http://10.1.2.3:8080",
    ] {
        let err = env.fails(&["sink", "add", "x", url], 2);
        assert!(err.contains("loopback"), "{url}: {err}");
    }
    for url in [
        "vault://127.0.0.1:8200/secret?tls=off",
        "vault://[::1]:8200/other?tls=off",
        "aws-sm://us-east-1?endpoint=http://localhost:5000&prefix=a-",
        "aws-sm://us-east-1?endpoint=https://vpce.example.com&prefix=b-",
        "gcp-sm://project?endpoint=http://127.0.0.1:8080",
    ] {
        let name = format!("ok{}", url.len());
        env.ok(&["sink", "add", &name, url]);
    }
}

/// A plug-in that answers a read with more than a record's worth of bytes, or with the
/// record of another secret, gets an error, not unbounded memory or a wrong secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_reply_is_bounded_and_must_be_the_record_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("liar.py");
    std::fs::write(
        &plugin,
        r#"#!/usr/bin/env python3
import json, sys
mode = sys.argv[1]
for line in sys.stdin:
    op = json.loads(line)["op"]
    if op == "get" and mode == "huge":
        sys.stdout.write('{"ok": true, "error": "' + "x" * (40 << 20) + '"}\n')
    elif op == "get":
        record = {"id": "01a22fcf-5c3b-73b3-be01-0928f0bc3aae", "name": "x", "scope": "workspace",
                  "owner": "o", "labels": {}, "seq": 1, "version": 1, "values": {"k": "v"}}
        sys.stdout.write(json.dumps({"ok": True, "record": record}) + "\n")
    else:
        sys.stdout.write(json.dumps({"ok": True, "entries": []}) + "\n")
    sys.stdout.flush()
"#,
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = sledger::crypto::SinkSealKey::generate();
    let asked = sledger::SecretId::now_v7();
    for (mode, expected) in [("huge", "longer than"), ("other", "with the record of")] {
        let url = format!("exec://{}?arg={mode}", plugin.display());
        let sink = sledger::sink::SinkUrl::parse(&url).unwrap().open(&key).unwrap();
        let err = sink.get(asked).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{mode}: {err}");
        assert!(err.len() < 1000, "{mode}: the error quotes the reply");
    }
}
