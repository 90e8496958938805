//! The azure-kv sink against the in-repo Key Vault fake (TLS, bearer challenge, a token
//! endpoint): the whole conformance suite, and the sink through the CLI as a backup, then as
//! the target of a migration while writes go on.

mod common;

use common::azure;
use common::Env;
use sledger::crypto::SinkSealKey;
use sledger::sink::{conformance, SinkUrl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_sink_conforms() {
    let vault = azure::start();
    for (k, v) in vault.env() {
        std::env::set_var(k, v);
    }
    let key = SinkSealKey::generate();
    let base = vault.url("");
    conformance::run_all("az", &|prefix| {
        SinkUrl::parse(&format!("{base}&prefix={prefix}"))?.open(&key)
    })
    .await;
}

#[test]
fn azure_as_backup_then_migration_target_under_writes() {
    let vault = azure::start();
    common::cloud_sink_walkthrough(vault.env(), "azure", &vault.url(""));
}

#[test]
fn a_value_over_the_azure_limit_is_refused_before_the_append() {
    let vault = azure::start();
    let env = Env::empty();
    env.cmd()
        .envs(vault.env().iter().copied())
        .args(["init", "--max-value-bytes", "200000"])
        .output()
        .unwrap();
    common::ok_with(&env, vault.env(), &["sink", "add", "azure", &vault.url("")]);
    let big = format!("k={}", "x".repeat(30_000));
    let out = env
        .cmd()
        .envs(vault.env().iter().copied())
        .args(["secret", "create", "big", "--value", &big])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("azure") && err.contains("25600"), "{err}");
    let head = env.json(&["verify"])["events"].clone();
    assert_eq!(head, 2, "nothing was appended (init's sink + the azure sink)");
}

#[test]
fn a_wrong_client_secret_is_reported_without_the_secret() {
    let vault = azure::start();
    let env = Env::new();
    let mut vars: Vec<(&str, &str)> = vault.env().to_vec();
    vars.retain(|(k, _)| *k != "AZURE_CLIENT_SECRET");
    vars.push(("AZURE_CLIENT_SECRET", "not-the-secret-xyzzy"));
    common::ok_with(&env, &vars, &["sink", "add", "azure", &vault.url("")]);
    common::ok_with(&env, &vars, &["secret", "create", "a", "--value", "k=1"]);
    let out = env
        .cmd()
        .envs(vars.iter().copied())
        .args(["project"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    let status = common::ok_with(&env, &vars, &["sink", "status"]);
    // The service's own refusal reaches the user.
    assert!(
        status.contains("AADSTS7000215: Invalid client secret"),
        "{status}"
    );
    assert!(
        !status.contains("xyzzy") && !err.contains("xyzzy"),
        "{status}\n{err}"
    );
}

#[test]
fn an_azure_outage_mid_projection_shows_in_status_and_heals() {
    let mut vault = azure::start();
    let (vars, url, port) = (vault.env(), vault.url(""), vault.port());
    common::outage_mid_projection(vars, &url, &format!("127.0.0.1:{port}"), &mut |up| {
        if up {
            vault.restart();
        } else {
            vault.kill();
        }
    });
}

/// `import --from` adopts an existing Key Vault estate, seeded with the Azure SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_azure_secrets_are_adopted() {
    use azure_core::http::{ClientOptions, Transport};
    use azure_security_keyvault_secrets::models::SetSecretParameters;
    use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
    let vault = azure::start();
    let var = |name: &str| vault.env().iter().find(|(k, _)| *k == name).unwrap().1;
    let ca = reqwest::Certificate::from_pem_bundle(&std::fs::read(&vault.ca).unwrap()).unwrap();
    let http = reqwest::Client::builder().tls_certs_merge(ca).build().unwrap();
    // Not through the environment: the conformance test in this process sets it for its own
    // fake.
    let mut cloud = azure_core::cloud::CustomConfiguration::default();
    cloud.authority_host = var("AZURE_AUTHORITY_HOST").to_owned();
    let options = ClientOptions {
        transport: Some(Transport::new(std::sync::Arc::new(http))),
        cloud: Some(std::sync::Arc::new(cloud.into())),
        ..Default::default()
    };
    let credential = azure_identity::ClientSecretCredential::new(
        var("AZURE_TENANT_ID"),
        var("AZURE_CLIENT_ID").to_owned(),
        var("AZURE_CLIENT_SECRET").to_owned().into(),
        Some(azure_identity::ClientSecretCredentialOptions {
            client_options: options.clone(),
        }),
    )
    .unwrap();
    let client = SecretClient::new(
        &format!("https://127.0.0.1:{}/", vault.port()),
        credential,
        Some(SecretClientOptions {
            client_options: options,
            verify_challenge_resource: Some(false),
            ..Default::default()
        }),
    )
    .unwrap();
    for (name, text) in [
        ("app-db", common::FOREIGN_DB),
        ("app-token", common::FOREIGN_TOKEN),
        ("other-x", common::FOREIGN_OTHER),
    ] {
        let parameters = SetSecretParameters {
            value: Some(text.to_owned()),
            ..Default::default()
        };
        client
            .set_secret(name, parameters.try_into().unwrap(), None)
            .await
            .unwrap();
    }
    let (vars, url) = (vault.env(), vault.url(""));
    tokio::task::spawn_blocking(move || common::adopt_walkthrough(vars, &url, "-"))
        .await
        .unwrap();
}

/// Two azure-kv sinks in one process, each signing in as its own service principal: the default
/// one from the environment, the other from the URL (`tenant_id=`, `client_id=`,
/// `client_secret_env=`). The fake's token endpoint checks each client id and secret; a sink
/// naming a variable that holds the wrong secret is refused with the service's answer, naming
/// where its secret came from and never the secret.
#[test]
fn azure_sinks_sign_in_as_their_own_service_principals() {
    let vault = azure::start();
    let env = Env::new();
    let mut vars: Vec<(&str, &str)> = vault.env().to_vec();
    vars.push(("BACKUP_SECRET", azure::OTHER_CLIENT_SECRET));
    vars.push(("WRONG_SECRET", "not-the-backup-secret-xyzzy"));
    let run = |args: &[&str]| common::ok_with(&env, &vars, args);
    let principal = |secret_var: &str, prefix: &str| {
        vault.url(&format!(
            "&prefix={prefix}&tenant_id={}&client_id={}&client_secret_env={secret_var}",
            azure::TENANT,
            azure::OTHER_CLIENT_ID
        ))
    };
    run(&["sink", "add", "main", &vault.url("&prefix=main-")]);
    run(&["sink", "add", "dr", &principal("BACKUP_SECRET", "dr-")]);
    for i in 0..3 {
        run(&["secret", "create", &format!("s{i}"), "--value", "k=v"]);
    }
    run(&["project"]);
    run(&["diff", "main"]);
    run(&["diff", "dr"]);
    // Each sink says whom Entra ID issued its token to: the default chain's principal (from
    // the environment) and the backup's own.
    let status: serde_json::Value =
        serde_json::from_str(&run(&["--format", "json", "sink", "status"])).unwrap();
    let identity = |name: &str| common::sink_identity(&status, name);
    let as_app = |client: &str| format!("application {client} (object ");
    assert!(identity("main").contains(&as_app(azure::CLIENT_ID)), "{status}");
    assert!(
        identity("dr").contains(&as_app(azure::OTHER_CLIENT_ID)),
        "{status}"
    );
    assert!(
        identity("dr").ends_with(&format!("in tenant {}", azure::TENANT)),
        "{status}"
    );
    let checked = run(&["sink", "check", "dr"]);
    assert!(checked.contains(&as_app(azure::OTHER_CLIENT_ID)), "{checked}");

    run(&["sink", "add", "wrong", &principal("WRONG_SECRET", "wrong-")]);
    let out = env
        .cmd()
        .envs(vars.iter().copied())
        .args(["sink", "check", "wrong"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("AADSTS7000215") && err.contains("$WRONG_SECRET"),
        "{err}"
    );
    assert!(!err.contains("xyzzy"), "the secret was echoed: {err}");
    let err = env.fails(
        &["sink", "add", "x", &vault.url("&client_id=c&client_secret_env=S")],
        2,
    );
    assert!(err.contains("tenant_id"), "{err}");
}

/// `client_certificate=`: a sink signs in as its own service principal with a certificate
/// (a client assertion signed with its key, which the fake checks against the registered
/// certificate). An unregistered certificate is refused by the token endpoint, naming the sink;
/// a key file others may read is refused before it is used.
#[test]
fn an_azure_sink_signs_in_with_a_client_certificate() {
    const CERT_CLIENT: &str = "sledger-cert-client";
    let vault = azure::start();
    let env = Env::new();
    let vars = vault.env();
    let run = |args: &[&str]| common::ok_with(&env, vars, args);
    let registered = azure::certificate(env.dir.path(), "registered");
    vault.register_certificate(CERT_CLIENT, &registered);
    let with_certificate = |path: &std::path::Path, prefix: &str| {
        vault.url(&format!(
            "&prefix={prefix}&tenant_id={}&client_id={CERT_CLIENT}&client_certificate={}",
            azure::TENANT,
            path.display()
        ))
    };
    run(&["sink", "add", "dr", &with_certificate(&registered, "dr-")]);
    for i in 0..3 {
        run(&["secret", "create", &format!("s{i}"), "--value", "k=v"]);
    }
    run(&["project"]);
    run(&["diff", "dr"]);
    let checked = run(&["sink", "check", "dr"]);
    assert!(
        checked.contains(&format!("application {CERT_CLIENT} (object ")),
        "{checked}"
    );

    // A certificate the app registration does not have.
    let stranger = azure::certificate(env.dir.path(), "stranger");
    run(&["sink", "add", "stranger", &with_certificate(&stranger, "st-")]);
    let out = env
        .cmd()
        .envs(vars.iter().copied())
        .args(["sink", "check", "stranger"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(r#"azure-kv sink "stranger""#)
            && err.contains("AADSTS700027")
            && err.contains("stranger.pem"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    // A key file others may read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&registered, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env
        .cmd()
        .envs(vars.iter().copied())
        .args(["sink", "check", "dr"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");

    // One credential per service principal, and an absolute path.
    let err = env.fails(
        &[
            "sink",
            "add",
            "x",
            &vault.url("&tenant_id=t&client_id=c&client_secret_env=S&client_certificate=/k.pem"),
        ],
        2,
    );
    assert!(err.contains("name one"), "{err}");
    let err = env.fails(
        &[
            "sink",
            "add",
            "x",
            &vault.url("&tenant_id=t&client_id=c&client_certificate=k.pem"),
        ],
        2,
    );
    assert!(err.contains("absolute path"), "{err}");
}

/// A squatter on the vault's (loopback) port cannot choose the audience of the token sledger
/// sends it: whatever resource the 401 challenge names, tokens are asked for the Key Vault
/// scope only, and the sink keeps working.
#[test]
fn the_challenge_cannot_choose_the_token_audience() {
    let vault = azure::start();
    vault.set_challenge_resource("https://management.azure.com");
    let env = Env::new();
    let vars = vault.env();
    common::ok_with(&env, vars, &["sink", "add", "azure", &vault.url("")]);
    common::ok_with(&env, vars, &["secret", "create", "a", "--value", "k=1"]);
    common::ok_with(&env, vars, &["project"]);
    let scopes = vault.token_scopes();
    assert!(!scopes.is_empty());
    assert!(
        scopes.iter().all(|s| s == "https://vault.azure.net/.default"),
        "{scopes:?}"
    );
    let status = common::ok_with(&env, vars, &["--format", "json", "sink", "status"]);
    assert!(!status.contains("\"error\""), "{status}");
}
