//! The gcp-sm sink against a real drongo server: the whole conformance suite, and the sink
//! through the CLI as a backup, then as the target of a migration while writes go on.

mod common;

use common::drongo::{self, GCP_ENV};
use common::Env;
use sledger::crypto::SinkSealKey;
use sledger::sink::{conformance, SinkUrl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_sink_conforms() {
    let drongo = drongo::start();
    for (k, v) in GCP_ENV {
        std::env::set_var(k, v);
    }
    let key = SinkSealKey::generate();
    let base = drongo::url(&drongo, "");
    conformance::run_all("gc", &|prefix| {
        SinkUrl::parse(&format!("{base}&prefix={prefix}"))?.open(&key)
    })
    .await;
}

fn gcp(env: &Env, args: &[&str]) -> String {
    common::ok_with(env, &GCP_ENV, args)
}

#[test]
fn gcp_as_backup_then_migration_target_under_writes() {
    let drongo = drongo::start();
    common::cloud_sink_walkthrough(&GCP_ENV, "gcp", &drongo::url(&drongo, ""));
}

#[test]
fn a_value_over_the_gcp_limit_is_refused_before_the_append() {
    let drongo = drongo::start();
    let env = Env::empty();
    env.cmd()
        .envs(GCP_ENV)
        .args(["init", "--max-value-bytes", "200000"])
        .output()
        .unwrap();
    gcp(&env, &["sink", "add", "gcp", &drongo::url(&drongo, "")]);
    let big = format!("k={}", "x".repeat(70_000));
    let out = env
        .cmd()
        .envs(GCP_ENV)
        .args(["secret", "create", "big", "--value", &big])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("gcp") && err.contains("65536"), "{err}");
    let head = env.json(&["verify"])["events"].clone();
    assert_eq!(head, 2, "nothing was appended (init's sink + the gcp sink)");
}

#[test]
fn a_gcp_outage_mid_projection_shows_in_status_and_heals() {
    let mut drongo = drongo::start();
    let (url, port) = (drongo::url(&drongo, ""), drongo.port);
    common::outage_mid_projection(&GCP_ENV, &url, &format!("127.0.0.1:{port}"), &mut |up| {
        if up {
            drongo = drongo::start_on(port);
        } else {
            drongo.kill();
        }
    });
}

/// `import --from` adopts an existing Secret Manager estate, seeded with the Google client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_gcp_secrets_are_adopted() {
    use google_cloud_secretmanager_v1::client::SecretManagerService;
    use google_cloud_secretmanager_v1::model::{replication, Replication, Secret, SecretPayload};
    let drongo = drongo::start();
    let client = SecretManagerService::builder()
        .with_endpoint(format!("http://127.0.0.1:{}", drongo.port))
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await
        .unwrap();
    // GCP secret ids allow no `/`: these are the names sledger adopts.
    for (name, text) in [
        ("app-db", common::FOREIGN_DB),
        ("app-token", common::FOREIGN_TOKEN),
        ("other-x", common::FOREIGN_OTHER),
    ] {
        client
            .create_secret()
            .set_parent("projects/sledger-test")
            .set_secret_id(name)
            .set_secret(
                Secret::new()
                    .set_replication(Replication::new().set_automatic(replication::Automatic::new())),
            )
            .send()
            .await
            .unwrap();
        client
            .add_secret_version()
            .set_parent(format!("projects/sledger-test/secrets/{name}"))
            .set_payload(SecretPayload::new().set_data(text.as_bytes().to_vec()))
            .send()
            .await
            .unwrap();
    }
    let url = drongo::url(&drongo, "");
    tokio::task::spawn_blocking(move || common::adopt_walkthrough(&GCP_ENV, &url, "-"))
        .await
        .unwrap();
}

/// A service-account key file made for this test: a real RSA key, so the credentials the
/// sink builds from it can sign their self-signed JWTs (drongo takes any bearer).
fn service_account_file(dir: &std::path::Path) -> std::path::PathBuf {
    let key = dir.join("sa-key.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .expect("openssl makes the test's service-account key (apt-get install openssl)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "backup-project",
        "private_key_id": "0123456789abcdef",
        "private_key": std::fs::read_to_string(&key).unwrap(),
        "client_email": "sledger-backup@backup-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let path = dir.join("sa.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// `credentials_file=` is read and used by that sink alone; a file that is not a credentials
/// JSON is refused, naming the file and never quoting it.
#[test]
fn a_sink_with_its_own_credentials_file() {
    let drongo = drongo::start();
    let env = Env::new();
    let file = service_account_file(env.dir.path());
    let url = drongo::url(
        &drongo,
        &format!("&prefix=dr-&credentials_file={}", file.display()),
    );
    gcp(&env, &["sink", "add", "dr", &url]);
    gcp(&env, &["secret", "create", "s", "--value", "k=v"]);
    gcp(&env, &["project"]);
    gcp(&env, &["diff", "dr"]);
    let checked = gcp(&env, &["sink", "check", "dr"]);
    assert!(
        checked.contains("sledger-backup@backup-project.iam.gserviceaccount.com"),
        "{checked}"
    );

    let bad = env.path("bad.json");
    std::fs::write(
        &bad,
        r#"{"type": "service_account", "private_key": "SECRET-KEY-TEXT"}"#,
    )
    .unwrap();
    let url = drongo::url(
        &drongo,
        &format!("&prefix=bad-&credentials_file={}", bad.display()),
    );
    gcp(&env, &["sink", "add", "bad", &url]);
    let out = env
        .cmd()
        .envs(GCP_ENV)
        .args(["sink", "check", "bad"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("bad.json") && err.contains("credentials"), "{err}");
    assert!(!err.contains("SECRET-KEY-TEXT"), "the file was quoted: {err}");
    let err = env.fails(
        &[
            "sink",
            "add",
            "rel",
            &drongo::url(&drongo, "&credentials_file=sa.json"),
        ],
        2,
    );
    assert!(err.contains("absolute"), "{err}");
}
