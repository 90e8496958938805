//! The remote CLI: with SLEDGER_SERVER and a token, the README's tour runs against a
//! `sledger serve` with the same assertions as against a local ledger, and its outputs and
//! exit codes match what the CLI prints for the ledger file itself.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::serve::Server;
use common::Env;
use serde_json::Value;

/// A server on a fresh ledger, and an env whose commands go to it with the admin token.
fn remote() -> (Env, Server) {
    let mut env = Env::empty();
    let server = Server::start(&env, &[]);
    let token = server.admin.clone().expect("first run prints an admin token");
    env.remote = Some((server.base.clone(), token));
    (env, server)
}

/// The same env, but opening the ledger file directly (what the CLI prints without a server).
fn local_view(env: &Env) -> Env {
    Env {
        dir: tempfile::tempdir().unwrap(),
        ledger: env.ledger.clone(),
        key: env.key.clone(),
        remote: None,
    }
}

#[test]
fn the_tour_round_trip_through_the_server() {
    let (env, _server) = remote();
    common::tour::create_get_update_round_trip(&env);
}

#[test]
fn the_tour_rename_delete_undelete_purge_through_the_server() {
    let (env, _server) = remote();
    common::tour::rename_delete_undelete_purge(&env);
}

#[test]
fn the_tour_list_and_history_through_the_server() {
    let (env, _server) = remote();
    common::tour::list_filters_by_label_and_history_shows_changes(&env);
}

#[test]
fn remote_outputs_and_exit_codes_match_the_local_ones() {
    let (env, server) = remote();
    let local = local_view(&env);
    env.ok(&[
        "secret", "create", "app/db", "--value", "pw=one", "--label", "env=prod",
    ]);
    env.ok(&["secret", "update", "app/db", "--value", "pw=two"]);
    env.ok(&["secret", "create", "app/api", "--value", "key=k1"]);
    env.ok(&["secret", "delete", "app/api"]);
    // Every event the server appended is the principal's, never a claimed actor.
    let log = env.json_lines(&["log"]);
    assert!(log
        .iter()
        .filter(|e| e["event_type"].as_str().unwrap().starts_with("secret."))
        .all(|e| e["actor"] == "token:admin"));
    let backup = env.sqlite_url("backup.db");
    env.ok(&["sink", "add", "bk", &backup]);
    // The server's projector brings the new backup up to date by itself.
    let started = std::time::Instant::now();
    while env
        .json(&["sink", "status"])
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["lag"] != 0)
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the server did not project"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Same documents and tables, remote and local.
    for args in [
        vec!["log"],
        vec!["log", "--secret", "app/db", "--limit", "1"],
        vec!["log", "--type", "secret.deleted"],
        vec!["secret", "list"],
        vec!["secret", "list", "--deleted"],
        vec!["secret", "history", "app/db"],
        vec!["sink", "list"],
        vec!["sink", "status"],
        vec!["restore", "--dry-run", "--seq", "4"],
        vec!["backup", "--dry-run"],
        vec!["backup", "--dry-run", "--delete-secrets"],
        vec!["reconcile", "bk"],
        vec!["migrate", "--to", "bk", "--dry-run"],
    ] {
        for format in ["json", "human"] {
            let mut full = vec!["--format", format];
            full.extend(&args);
            assert_eq!(
                env.ok(&full),
                local.ok(&full),
                "sledger {full:?} differs through the server"
            );
        }
    }
    assert_eq!(env.ok(&["diff", "bk"]), local.ok(&["diff", "bk"]));
    let remote_verify: Value = env.json(&["verify"]);
    let local_verify: Value = local.json(&["verify"]);
    assert_eq!(remote_verify["head"], local_verify["head"]);
    assert_eq!(remote_verify["events"], local_verify["events"]);
    // Reading values: same document (the local view reads as another actor, same sources).
    assert_eq!(
        env.json(&["secret", "get", "app/db", "--from", "ledger"])["values"],
        local.json(&["secret", "get", "app/db", "--from", "ledger"])["values"]
    );
    assert_eq!(env.ok(&["secret", "get", "app/db", "--key", "pw"]), "two\n");
    // Errors: same exit codes as locally.
    for (args, code) in [
        (vec!["secret", "get", "nope"], 3),
        (vec!["secret", "create", "app/db", "--value", "k=v"], 4),
        (vec!["secret", "create", "bad name!", "--value", "k=v"], 2),
        (vec!["log", "--type", "secret.exploded"], 2),
        (vec!["sink", "promote", "nosuch"], 3),
        (vec!["secret", "undelete", "app/db"], 4),
        // A point before the first secret would delete them all: refused, not run.
        (vec!["restore", "--seq", "0"], 2),
    ] {
        let remote_err = env.fails(&args, code);
        let local_err = local.fails(&args, code);
        assert_eq!(remote_err, local_err, "{args:?}");
    }
    // A restore through the server, then the reads follow it.
    env.ok(&["restore", "--seq", "3"]);
    assert_eq!(env.ok(&["secret", "get", "app/db", "--key", "pw"]), "one\n");
    // A reader token: values yes, changes no (exit 12), and no token at all is exit 11.
    let issued = env.json(&[
        "token",
        "create",
        "--name",
        "ro",
        "--role",
        "reader",
        "--pattern",
        "app/*",
    ]);
    let token_file = env.path("ro.token");
    std::fs::write(&token_file, issued["token"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let reader = |args: &[&str]| {
        env.cmd()
            .env_remove("SLEDGER_TOKEN")
            .arg("--token-file")
            .arg(&token_file)
            .args(args)
            .output()
            .unwrap()
    };
    let loose = reader(&["secret", "list"]);
    assert_eq!(loose.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&loose.stderr).contains("chmod 600"));
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        reader(&["secret", "get", "app/db", "--key", "pw"]).stdout,
        b"one\n"
    );
    assert_eq!(
        reader(&["secret", "update", "app/db", "--value", "pw=x"])
            .status
            .code(),
        Some(12)
    );
    let anonymous = env
        .cmd()
        .env("SLEDGER_TOKEN", "sledger_wrong")
        .args(["secret", "list"])
        .output()
        .unwrap();
    assert_eq!(anonymous.status.code(), Some(11));
    // The access log saw all of it, through either front end.
    let access = env.json_lines(&["log", "--access"]);
    assert!(access
        .iter()
        .any(|r| r["principal"] == "token:ro" && r["outcome"] == "served"));
    assert!(access
        .iter()
        .any(|r| r["principal"] == "token:ro" && r["outcome"] == "denied"));
    assert!(access.iter().any(|r| r["outcome"] == "unauthenticated"));
    assert_eq!(access, local.json_lines(&["log", "--access"]));
    let seqs = |rows: Vec<Value>| {
        rows.iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let all = seqs(access.clone());
    assert!(all.len() >= 3, "{access:?}");
    for (args, want) in [
        (vec!["--tail", "2"], all[all.len() - 2..].to_vec()),
        (
            vec!["--after-seq", &all[0].to_string(), "--limit", "1"],
            vec![all[1]],
        ),
        (
            vec!["--after-seq", &all[0].to_string(), "--tail", "1"],
            vec![all[all.len() - 1]],
        ),
    ] {
        let mut full = vec!["log", "--access"];
        full.extend(&args);
        assert_eq!(seqs(env.json_lines(&full)), want, "{args:?}");
        assert_eq!(seqs(local.json_lines(&full)), want, "{args:?}");
    }
    // A migration through the server: the backup becomes the primary, with no downtime.
    let steps = env.ok(&["migrate", "--to", "bk"]);
    assert!(
        steps.contains("4/5 bk is the primary") && steps.contains("5/5 done"),
        "{steps}"
    );
    let sinks = env.json(&["sink", "list"]);
    assert!(
        sinks
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "bk" && s["role"] == "primary"),
        "{sinks}"
    );
    assert_eq!(env.ok(&["secret", "get", "app/db", "--key", "pw"]), "one\n");
    // A ledger named on the command line would be ignored by the server: refused.
    for flag in ["--ledger", "--key-file"] {
        let refused = env.fails(&[flag, "/tmp/elsewhere", "secret", "list"], 2);
        assert!(
            refused.contains(&format!("{flag} names a ledger on this host")),
            "{refused}"
        );
    }
    // Commands the server does not offer say so, and where to run them.
    let refused = env.fails(&["import", "--file", "x.jsonl"], 2);
    assert!(refused.contains("not available through --server"), "{refused}");
    assert!(server.stop().success());
}

/// A server answers at most 1 000 secrets a request; `list --limit` past that is still the
/// page asked for, as it is locally.
#[test]
fn a_list_limit_past_one_server_page_is_one_listing() {
    let (env, _server) = remote();
    let local = local_view(&env);
    let file = env.path("many.jsonl");
    let records: String = (0..1_005)
        .map(|i| format!("{{\"name\":\"s{i:04}\",\"values\":{{\"k\":\"v\"}}}}\n"))
        .collect();
    std::fs::write(&file, records).unwrap();
    local.ok(&["import", "--file", file.to_str().unwrap()]);
    for limit in ["1002", "1005", "2000"] {
        let args = ["--format", "json", "secret", "list", "--limit", limit];
        let listed = env.json(&args[2..]);
        let listed = listed.as_array().unwrap();
        let wanted = limit.parse::<usize>().unwrap().min(1_005);
        assert_eq!(listed.len(), wanted, "--limit {limit}");
        assert_eq!(listed.last().unwrap()["name"], format!("s{:04}", wanted - 1));
        assert_eq!(env.ok(&args), local.ok(&args), "--limit {limit}");
    }
}

#[test]
fn remote_cli_over_tls_needs_the_ca() {
    let mut env = Env::empty();
    let dir = env.dir.path().to_owned();
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sledger test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
    ] {
        let made = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("openssl is needed for this test (apt-get install openssl)");
        assert!(
            made.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let server = Server::start(
        &env,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    env.remote = Some((server.base.clone(), server.admin.clone().unwrap()));
    let ca = dir.join("ca.pem");
    env.ok(&[
        "--ca-file",
        ca.to_str().unwrap(),
        "secret",
        "create",
        "tls/one",
        "--value",
        "k=v",
    ]);
    assert_eq!(
        env.ok(&[
            "--ca-file",
            ca.to_str().unwrap(),
            "secret",
            "get",
            "tls/one",
            "--key",
            "k"
        ]),
        "v\n"
    );
    let untrusted = env.fails(&["secret", "list"], 7);
    assert!(untrusted.to_lowercase().contains("certificate"), "{untrusted}");
    assert!(server.stop().success());
}
