//! The aws-sm sink against a real moto server: the whole conformance suite, and the sink
//! through the CLI as a backup, then as the target of a migration while writes go on.

mod common;

use common::moto::{self, AWS_ENV};
use common::Env;
use sledger::crypto::SinkSealKey;
use sledger::sink::{conformance, SinkUrl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sink_conforms() {
    let moto = moto::start();
    for (k, v) in AWS_ENV {
        std::env::set_var(k, v);
    }
    let key = SinkSealKey::generate();
    let base = moto::url(&moto, "");
    conformance::run_all("aw", &|prefix| {
        SinkUrl::parse(&format!("{base}&prefix={prefix}"))?.open(&key)
    })
    .await;
}

fn aws(env: &Env, args: &[&str]) -> String {
    common::ok_with(env, &AWS_ENV, args)
}

#[test]
fn aws_as_backup_then_migration_target_under_writes() {
    let moto = moto::start();
    common::cloud_sink_walkthrough(&AWS_ENV, "aws", &moto::url(&moto, ""));
}

#[test]
fn a_value_over_the_aws_limit_is_refused_before_the_append() {
    let moto = moto::start();
    let env = Env::empty();
    env.cmd()
        .envs(AWS_ENV)
        .args(["init", "--max-value-bytes", "200000"])
        .output()
        .unwrap();
    aws(&env, &["sink", "add", "aws", &moto::url(&moto, "")]);
    let big = format!("k={}", "x".repeat(70_000));
    let out = env
        .cmd()
        .envs(AWS_ENV)
        .args(["secret", "create", "big", "--value", &big])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("aws") && err.contains("65536"), "{err}");
    let head = env.json(&["verify"])["events"].clone();
    assert_eq!(head, 2, "nothing was appended (init's sink + the aws sink)");
}

#[test]
fn an_aws_outage_mid_projection_shows_in_status_and_heals() {
    let mut moto = moto::start();
    let (url, port) = (moto::url(&moto, ""), moto.port);
    common::outage_mid_projection(&AWS_ENV, &url, &format!("127.0.0.1:{port}"), &mut |up| {
        if up {
            moto = moto::start_on(port);
        } else {
            moto.kill();
        }
    });
}

/// `import --from` adopts an existing AWS estate, seeded with the AWS SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_aws_secrets_are_adopted() {
    let moto = moto::start();
    for (k, v) in AWS_ENV {
        std::env::set_var(k, v);
    }
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{}", moto.port))
        .load()
        .await;
    let client = aws_sdk_secretsmanager::Client::new(&config);
    for (name, text) in [
        ("app/db", common::FOREIGN_DB),
        ("app/token", common::FOREIGN_TOKEN),
        ("other/x", common::FOREIGN_OTHER),
    ] {
        client
            .create_secret()
            .name(name)
            .secret_string(text)
            .send()
            .await
            .unwrap();
    }
    let url = moto::url(&moto, "");
    tokio::task::spawn_blocking(move || common::adopt_walkthrough(&AWS_ENV, &url, "/"))
        .await
        .unwrap();
}

/// `SLEDGER_LOG=trace` turns on sledger's own tracing only: the AWS SDK, which traces request
/// bodies (holding the SecretString) at trace level, stays quiet, so no value reaches stderr.
#[test]
fn trace_logging_never_shows_a_value_sent_to_aws() {
    let moto = moto::start();
    let env = Env::new();
    aws(&env, &["sink", "add", "aws", &moto::url(&moto, "&prefix=trace/")]);
    env.ok(&[
        "--wait",
        "0",
        "secret",
        "create",
        "db",
        "--value",
        "pw=TRACE-sentinel-5d1c",
    ]);
    let mut vars = AWS_ENV.to_vec();
    vars.push(("SLEDGER_LOG", "trace"));
    let out = env
        .cmd()
        .envs(vars.iter().copied())
        .args(["project"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sledger"),
        "sledger's own trace output is on:\n{stderr}"
    );
    assert!(!stderr.contains("TRACE-sentinel-5d1c"), "a value reached stderr");
    assert!(
        !stderr.contains("aws_smithy") && !stderr.contains("hyper"),
        "dependency tracing is on:\n{stderr}"
    );
}
