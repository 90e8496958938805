//! The vault sink against a real OpenBao dev server: the whole conformance suite, and the
//! sink through the CLI as a backup, then as the target of a migration while writes go on.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::openbao::{self, ROOT_TOKEN};
use common::Env;
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

fn with_token(env: &Env, args: &[&str]) -> String {
    let out = env
        .cmd()
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sledger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn vault_as_backup_then_migration_target_under_writes() {
    let bao = openbao::start();
    let env = Arc::new(Env::new());
    let url = openbao::url(&bao, "&prefix=sledger-");
    with_token(&env, &["sink", "add", "vault", &url]);
    for i in 0..10 {
        with_token(
            &env,
            &[
                "secret",
                "create",
                &format!("app/s{i}"),
                "--value",
                &format!("pw=v{i}"),
            ],
        );
    }
    with_token(&env, &["secret", "update", "app/s1", "--value", "pw=changed"]);
    with_token(&env, &["secret", "delete", "app/s2"]);
    with_token(&env, &["project"]);
    let status: serde_json::Value =
        serde_json::from_str(&with_token(&env, &["--format", "json", "sink", "status"])).unwrap();
    let vault = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "vault")
        .unwrap()
        .clone();
    assert_eq!(vault["lag"], 0, "{vault}");
    with_token(&env, &["diff", "vault"]);
    let got: serde_json::Value = serde_json::from_str(&with_token(
        &env,
        &["--format", "json", "secret", "get", "app/s1", "--from", "backup"],
    ))
    .unwrap();
    assert_eq!(
        (got["values"]["pw"].as_str(), got["source"]["name"].as_str()),
        (Some("changed"), Some("vault"))
    );

    // Migrate the primary to vault while another process keeps writing.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (env, stop) = (env.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                with_token(
                    &env,
                    &["secret", "create", &format!("during/{n}"), "--value", "k=v"],
                );
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    with_token(&env, &["migrate", "--to", "vault"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    with_token(&env, &["project"]);
    with_token(&env, &["diff", "vault"]);
    let last: serde_json::Value = serde_json::from_str(&with_token(
        &env,
        &[
            "--format",
            "json",
            "secret",
            "get",
            &format!("during/{}", written - 1),
        ],
    ))
    .unwrap();
    assert_eq!(last["source"]["name"], "vault", "{last}");
}

#[test]
fn a_vault_outage_shows_in_status_and_heals() {
    let mut bao = openbao::start();
    let env = Env::new();
    with_token(&env, &["sink", "add", "vault", &openbao::url(&bao, "")]);
    with_token(&env, &["secret", "create", "a", "--value", "k=1"]);
    with_token(&env, &["project"]);
    // The server goes away; writes stay durable and the status says what is wrong.
    bao.kill();
    with_token(&env, &["secret", "update", "a", "--value", "k=2"]);
    let out = env
        .cmd()
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .args(["project"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = with_token(&env, &["sink", "status"]);
    assert!(
        status.contains("vault") && status.contains("127.0.0.1"),
        "{status}"
    );
    // It comes back (a dev server starts empty): the replay fills it, the projector follows.
    let _bao = openbao::start_on(bao.port);
    with_token(&env, &["reconcile", "vault"]);
    with_token(&env, &["project"]);
    with_token(&env, &["diff", "vault"]);
}
