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
    let client = moto::secrets_manager(&moto).await;
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

/// A backup in another AWS account: the backup sink's URL names a role there
/// (`role_arn=`), assumed through STS on top of the default chain; moto keeps the accounts
/// apart. The objects land in that account only, `sink status` says which account each sink
/// writes to, and a migration onto the cross-account sink works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_in_another_account_through_an_assumed_role() {
    let moto = moto::start();
    for (k, v) in AWS_ENV {
        std::env::set_var(k, v);
    }
    const ROLE: &str = "arn:aws:iam::222222222222:role/sledger-backup";
    let primary = moto::url(&moto, "&prefix=main/");
    let backup = moto::url(
        &moto,
        &format!("&prefix=dr/&role_arn={ROLE}&session_name=sledger-dr"),
    );
    let status = tokio::task::spawn_blocking(move || {
        let env = Env::new();
        aws(&env, &["sink", "add", "main", &primary]);
        aws(&env, &["sink", "promote", "main"]);
        aws(&env, &["sink", "add", "dr", &backup]);
        for i in 0..3 {
            aws(
                &env,
                &["secret", "create", &format!("app/s{i}"), "--value", "k=v"],
            );
        }
        aws(&env, &["project"]);
        aws(&env, &["diff", "dr"]);
        let status: serde_json::Value =
            serde_json::from_str(&aws(&env, &["--format", "json", "sink", "status"])).unwrap();
        let checked = aws(&env, &["sink", "check", "dr"]);
        assert!(checked.contains("account 222222222222"), "{checked}");
        aws(&env, &["migrate", "--to", "dr"]);
        aws(&env, &["diff", "dr"]);
        status
    })
    .await
    .unwrap();
    let identity = |name: &str| common::sink_identity(&status, name);
    assert!(identity("dr").contains("account 222222222222"), "{status}");
    assert!(
        identity("dr").contains("assumed-role/sledger-backup/sledger-dr"),
        "{status}"
    );
    assert!(identity("main").contains("account 123456789012"), "{status}");

    // What each account holds, seen by another client (boto3): as the role in 222222222222,
    // and as the default identity.
    let listed: serde_json::Value = serde_json::from_str(&moto::boto3(
        &moto,
        &format!(
            r#"
import json, os, boto3
endpoint = "http://127.0.0.1:" + os.environ["MOTO_PORT"]
def names(**credentials):
    client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1", **credentials)
    return [s["Name"] for s in client.list_secrets(MaxResults=100)["SecretList"]]
role = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1").assume_role(RoleArn="{ROLE}", RoleSessionName="check")
c = role["Credentials"]
print(json.dumps({{
    "there": names(aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"]),
    "here": names(),
}}))
"#
        ),
    ))
    .unwrap();
    let names = |key: &str| -> Vec<String> { serde_json::from_value(listed[key].clone()).unwrap() };
    let (there, here) = (names("there"), names("here"));
    assert_eq!(
        there.iter().filter(|n| n.starts_with("dr/")).count(),
        4,
        "3 secrets and the anchor: {there:?}"
    );
    assert!(!there.iter().any(|n| n.starts_with("main/")), "{there:?}");
    assert!(!here.iter().any(|n| n.starts_with("dr/")), "{here:?}");
    assert_eq!(
        here.iter().filter(|n| n.starts_with("main/")).count(),
        4,
        "{here:?}"
    );
}

/// `profile=NAME` is the sink's credentials even when the environment holds keys (as
/// `aws --profile` is): the default chain would take the environment's first, which may be
/// another sink's account. The profile here gets its keys from a `credential_process`, which
/// leaves a mark when it runs.
#[test]
fn a_profile_named_in_the_url_wins_over_the_environment() {
    use std::os::unix::fs::PermissionsExt;
    let moto = moto::start();
    let env = Env::new();
    let marker = env.path("profile-used");
    let process = env.path("credentials.sh");
    std::fs::write(
        &process,
        format!(
            "#!/bin/sh\ntouch {}\necho '{{\"Version\": 1, \"AccessKeyId\": \"AKIDPROFILE\", \"SecretAccessKey\": \"from-the-profile\"}}'\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&process, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = env.path("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile backup]\nregion = us-east-1\ncredential_process = {}\n",
            process.display()
        ),
    )
    .unwrap();
    let no_credentials_file = env.path("aws-credentials");
    std::fs::write(&no_credentials_file, "").unwrap();
    let (config, no_credentials_file) = (
        config.display().to_string(),
        no_credentials_file.display().to_string(),
    );
    let mut vars = AWS_ENV.to_vec();
    vars.push(("AWS_CONFIG_FILE", &config));
    vars.push(("AWS_SHARED_CREDENTIALS_FILE", &no_credentials_file));
    let run = |args: &[&str]| common::ok_with(&env, &vars, args);

    run(&[
        "sink",
        "add",
        "dr",
        &moto::url(&moto, "&prefix=dr/&profile=backup"),
    ]);
    run(&["secret", "create", "a", "--value", "k=v"]);
    run(&["project"]);
    run(&["diff", "dr"]);
    assert!(
        marker.exists(),
        "the profile's credential_process never ran: the environment's keys were used"
    );

    run(&[
        "sink",
        "add",
        "nowhere",
        &moto::url(&moto, "&prefix=nw/&profile=missing"),
    ]);
    let out = env
        .cmd()
        .envs(vars.iter().copied())
        .args(["sink", "check", "nowhere"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(r#"aws-sm sink "nowhere""#),
        "{err}"
    );
}

#[test]
fn credential_parameters_name_sources_never_hold_secrets() {
    let env = Env::new();
    for (url, why) in [
        ("aws-sm://us-east-1?secret_key=abc", "credential"),
        (
            "aws-sm://us-east-1?access_key_env=AKIAEXAMPLE%2Fx&secret_key_env=S",
            "name of an environment variable",
        ),
        ("aws-sm://us-east-1?access_key_env=K", "go together"),
        ("aws-sm://us-east-1?role_arn=222222222222", "IAM role ARN"),
        ("aws-sm://us-east-1?external_id=x", "role_arn"),
        (
            "aws-sm://us-east-1?profile=p&access_key_env=K&secret_key_env=S",
            "name one",
        ),
    ] {
        let err = env.fails(&["sink", "add", "x", url], 2);
        assert!(err.contains(why), "{url}: {err}");
    }
    // A pair named but not set: the sink says which variable, never a value.
    env.ok(&[
        "sink",
        "add",
        "x",
        "aws-sm://us-east-1?endpoint=http://127.0.0.1:9&access_key_env=NOPE_KEY&secret_key_env=NOPE_SECRET",
    ]);
    let err = env.fails(&["sink", "check", "x"], 9);
    assert!(err.contains("$NOPE_KEY") && err.contains("not set"), "{err}");
}

/// A lost ledger rebuilt from its AWS backup (moto).
#[test]
fn a_lost_ledger_is_recovered_from_its_aws_backup() {
    let moto = moto::start();
    common::recover_walkthrough(&AWS_ENV, Some(&moto::url(&moto, "")));
}

/// Objects under the sink's prefix that sledger never wrote are drifted, never read as `{}` or
/// as absent: a secret whose value was replaced by a binary one, and one whose Description
/// (sledger's metadata) was overwritten. Reads skip them and say why, `diff` reports both as
/// drifted, and `reconcile` rewrites them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_value_or_foreign_description_in_aws_is_drifted() {
    let moto = moto::start();
    for (k, v) in AWS_ENV {
        std::env::set_var(k, v);
    }
    let env = Env::new();
    env.ok(&["sink", "add", "aws", &moto::url(&moto, "&prefix=drift/")]);
    env.ok(&["secret", "create", "bin", "--value", "pw=genuine-1"]);
    env.ok(&["secret", "create", "desc", "--value", "pw=genuine-2"]);
    env.ok(&["project"]);
    env.ok(&["sink", "promote", "aws"]);

    let client = moto::secrets_manager(&moto).await;
    let object = |name: &str| {
        let id = env.json(&["secret", "get", name])["id"]
            .as_str()
            .unwrap()
            .to_owned();
        format!("drift/{id}")
    };
    let (bin, desc) = (object("bin"), object("desc"));
    let listed = client.list_secrets().send().await.unwrap();
    let names: Vec<_> = listed.secret_list().iter().filter_map(|s| s.name()).collect();
    assert!(
        names.contains(&bin.as_str()) && names.contains(&desc.as_str()),
        "{names:?}"
    );
    client
        .put_secret_value()
        .secret_id(&bin)
        .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(
            b"\x00\x01".to_vec(),
        ))
        .send()
        .await
        .unwrap();
    client
        .update_secret()
        .secret_id(&desc)
        .description("edited by hand")
        .send()
        .await
        .unwrap();

    for (name, value, why) in [
        ("bin", "genuine-1", "binary value"),
        ("desc", "genuine-2", "Description"),
    ] {
        let got = env.json(&["secret", "get", name]);
        assert_eq!(got["values"]["pw"], value, "{got}");
        assert_eq!(got["source"]["name"], "local", "{got}");
        let reason = got["skipped"][0]["reason"].as_str().unwrap();
        assert!(reason.contains("drifted") && reason.contains(why), "{got}");
        let err = env.fails(&["secret", "get", name, "--from", "primary"], 7);
        assert!(err.contains("drifted"), "{err}");
    }
    let kinds: Vec<_> = env
        .differences("aws")
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("bin".to_owned(), "drifted".to_owned()),
            ("desc".to_owned(), "drifted".to_owned())
        ]
    );
    env.ok(&["reconcile", "aws"]);
    let left = env.differences("aws");
    assert!(left.is_empty(), "{left:?}");
    for (name, value) in [("bin", "genuine-1"), ("desc", "genuine-2")] {
        let got = env.json(&["secret", "get", name, "--from", "primary"]);
        assert_eq!(got["values"]["pw"], value, "{got}");
    }
}

/// A record planted in AWS with a seq from the future (someone with write access to the
/// account) is not served, `diff` calls it `ahead`, the next write it would shadow fails with
/// exit 5 instead of reporting success, and `reconcile --force-ledger` overwrites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_planted_ahead_in_aws_shadows_no_write_silently() {
    let moto = moto::start();
    for (k, v) in AWS_ENV {
        std::env::set_var(k, v);
    }
    let env = Env::new();
    env.ok(&["sink", "add", "aws", &moto::url(&moto, "&prefix=ahead/")]);
    env.ok(&["secret", "create", "db", "--value", "pw=genuine"]);
    env.ok(&["project"]);
    env.ok(&["sink", "promote", "aws"]);
    let id = env.json(&["secret", "get", "db"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let object = format!("ahead/{id}");

    let client = moto::secrets_manager(&moto).await;
    let described = client.describe_secret().secret_id(&object).send().await.unwrap();
    let mut description: serde_json::Value = serde_json::from_str(described.description().unwrap()).unwrap();
    description["seq"] = serde_json::json!(1u64 << 62);
    client
        .put_secret_value()
        .secret_id(&object)
        .secret_string(r#"{"pw":"planted"}"#)
        .send()
        .await
        .unwrap();
    client
        .update_secret()
        .secret_id(&object)
        .description(description.to_string())
        .send()
        .await
        .unwrap();

    let got = env.json(&["secret", "get", "db"]);
    assert_eq!(got["values"]["pw"], "genuine", "{got}");
    assert_eq!(got["source"]["name"], "local", "{got}");
    let kinds: Vec<_> = env.differences("aws").iter().map(|d| d["kind"].clone()).collect();
    assert_eq!(kinds, ["ahead"]);
    let err = env.fails(&["secret", "update", "db", "--value", "pw=rotated"], 5);
    assert!(
        err.contains("did not take the write")
            && err.contains(&format!("{}", 1u64 << 62))
            && err.contains("reconcile aws --force-ledger")
            && !err.contains("planted"),
        "{err}"
    );
    env.fails(&["reconcile", "aws"], 10);
    env.ok(&["reconcile", "aws", "--force-ledger"]);
    assert!(env.differences("aws").is_empty());
    let got = env.json(&["secret", "get", "db", "--from", "primary"]);
    assert_eq!(got["values"]["pw"], "rotated", "{got}");
}
