//! Master keys held by a KMS (issue: KMS keys), against real servers: Vault/OpenBao Transit on
//! the OpenBao dev server, AWS KMS on moto, Google Cloud KMS on drongo, Azure Key Vault keys on the
//! in-repo fake. Each goes through the same walk: init, use, rotate,
//! migrate out to a key file and back in, recovery of the lost ledger from its sqlite sink
//! with the KMS alone, refusals, and another ledger's wrapped key.

mod common;

use std::process::Output;

use common::servers::Server;
use common::{azure, drongo, moto, ok_with, openbao, Env};

const KEY: i32 = 6;
const UNAVAILABLE: i32 = 7;

fn run_with(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Output {
    env.cmd().envs(vars.iter().copied()).args(args).output().unwrap()
}

fn fails_with(env: &Env, vars: &[(&str, &str)], args: &[&str], code: i32) -> String {
    let out = run_with(env, vars, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "sledger {args:?}: {stderr}");
    stderr
}

fn key_files(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".key"))
        .collect()
}

fn get(env: &Env, vars: &[(&str, &str)], extra: &[&str]) -> serde_json::Value {
    let mut args = extra.to_vec();
    args.extend(["--format", "json", "secret", "get", "db", "--from", "ledger"]);
    serde_json::from_str(&ok_with(env, vars, &args)).unwrap()
}

/// The walk every provider goes through. `uri` is a usable key, `refusing` one the KMS refuses
/// (missing or disabled), `unreachable` one nobody answers for.
fn walkthrough(vars: &[(&str, &str)], uri: &str, refusing: &str, unreachable: &str) {
    let env = Env::empty();
    ok_with(&env, vars, &["--master-key", uri, "init"]);
    assert!(
        key_files(&env).is_empty(),
        "a KMS-held key is never on disk: {:?}",
        key_files(&env)
    );

    // Each command is a new process; the ledger records its KMS key.
    ok_with(
        &env,
        vars,
        &["secret", "create", "db", "--value", "password=s3cr3t"],
    );
    assert_eq!(get(&env, vars, &[])["values"]["password"], "s3cr3t");
    ok_with(&env, vars, &["key", "rotate"]);
    ok_with(&env, vars, &["secret", "update", "db", "--value", "password=n3w"]);
    assert_eq!(get(&env, vars, &[])["values"]["password"], "n3w");
    assert!(key_files(&env).is_empty());

    // Out into a key file, and back into the KMS.
    let file = env.path("moved.key");
    let file_uri = format!("file://{}", file.display());
    ok_with(&env, vars, &["key", "migrate", "--to", &file_uri]);
    assert!(file.exists());
    let with_file = ["--key-file", file.to_str().unwrap()];
    assert_eq!(get(&env, vars, &with_file)["values"]["password"], "n3w");
    // The sink file keeps the master key as the KMS wrapped it only while the KMS holds it.
    let escrowed = || -> bool {
        rusqlite::Connection::open(env.ledger.with_extension("sink.db"))
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sink_meta WHERE key = 'master_key_wrapped'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            > 0
    };
    let mut project = with_file.to_vec();
    project.push("project");
    ok_with(&env, vars, &project);
    assert!(!escrowed(), "a key file's holder has the key itself");
    let back: serde_json::Value = serde_json::from_str(&ok_with(
        &env,
        vars,
        &[
            "--key-file",
            file.to_str().unwrap(),
            "--format",
            "json",
            "key",
            "migrate",
            "--to",
            uri,
        ],
    ))
    .unwrap();
    assert_eq!(back["removed_key_file"], file.to_str().unwrap(), "{back}");
    assert!(
        key_files(&env).is_empty(),
        "the key file is gone once the KMS holds the key"
    );
    assert_eq!(get(&env, vars, &[])["values"]["password"], "n3w");
    let migrations = env.json_lines(&["log", "--type", "key.migrated"]);
    assert_eq!(
        migrations.len(),
        2,
        "each migration is in the log: {migrations:?}"
    );
    let verified: serde_json::Value =
        serde_json::from_str(&ok_with(&env, vars, &["--format", "json", "verify"])).unwrap();
    assert_eq!(verified["ok"], true, "{verified}");

    // The ledger lost: its sqlite sink keeps the master key as the KMS wrapped it (kept current
    // through the rotation and both migrations above), so the sink and the KMS alone recover
    // it, and the KMS holds the new ledger's key too.
    ok_with(&env, vars, &["project"]);
    assert!(escrowed());
    let sink = format!("sqlite://{}", env.ledger.with_extension("sink.db").display());
    let recovered = env.path("recovered.db");
    let at_recovered = ["--ledger", recovered.to_str().unwrap()];
    let mut recover = at_recovered.to_vec();
    recover.extend(["recover", "--from", &sink]);
    // The KMS is named by whoever recovers, not taken from the file: the error says which.
    let named = fails_with(&env, vars, &recover, KEY);
    assert!(named.contains(&format!("--master-key {uri}")), "{named}");
    assert!(!recovered.exists());
    recover.splice(0..0, ["--master-key", uri]);
    ok_with(&env, vars, &recover);
    assert!(key_files(&env).is_empty(), "{:?}", key_files(&env));
    assert_eq!(get(&env, vars, &at_recovered)["values"]["password"], "n3w");
    let mut migrated = at_recovered.to_vec();
    migrated.extend(["--format", "json", "log", "--type", "key.migrated"]);
    let migrated = ok_with(&env, vars, &migrated);
    assert_eq!(migrated.lines().count(), 1, "{migrated}");
    assert!(migrated.contains(uri.split('?').next().unwrap()), "{migrated}");

    // A key the KMS refuses: exit 6, naming it; the ledger is untouched.
    let head = env.json_lines(&["log", "--tail", "1"])[0]["seq"].clone();
    let refused = fails_with(
        &env,
        vars,
        &[
            "--master-key",
            refusing,
            "secret",
            "update",
            "db",
            "--value",
            "password=x",
        ],
        KEY,
    );
    assert!(refused.contains(refusing.split('?').next().unwrap()), "{refused}");
    assert!(!refused.contains("n3w"));
    let down = fails_with(
        &env,
        vars,
        &["--master-key", unreachable, "secret", "get", "db"],
        UNAVAILABLE,
    );
    assert!(
        down.contains("cannot be reached")
            && down.contains("127.0.0.1:1")
            && !down.contains(&format!("{} sink", unreachable.split("://").next().unwrap())),
        "a KMS is not a sink: {down}"
    );
    assert_eq!(env.json_lines(&["log", "--tail", "1"])[0]["seq"], head);

    // Another ledger's wrapped key (copied in by someone with write access) opens nothing.
    let other = Env::empty();
    ok_with(&other, vars, &["--master-key", uri, "init"]);
    ok_with(
        &other,
        vars,
        &["secret", "create", "db", "--value", "password=other"],
    );
    let stolen: (Vec<u8>, Vec<u8>) = env
        .raw()
        .query_row(
            "SELECT (SELECT value FROM ledger_meta WHERE key = 'master_key_provider'),
                    (SELECT value FROM ledger_meta WHERE key = 'master_key_wrapped')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    other
        .raw()
        .execute(
            "UPDATE ledger_meta SET value = ?1 WHERE key = 'master_key_wrapped'",
            [&stolen.1],
        )
        .unwrap();
    let refused = fails_with(&other, vars, &["secret", "get", "db", "--from", "ledger"], KEY);
    assert!(!refused.contains("other"), "{refused}");
}

/// An OpenBao dev server with Transit enabled and a derived key `sledger`; that key's URI.
fn transit() -> (Server, String) {
    let server: Server = openbao::start();
    openbao::admin(&server, &["secrets", "enable", "transit"], None);
    openbao::admin(
        &server,
        &["write", "-f", "transit/keys/sledger", "derived=true"],
        None,
    );
    let uri = format!(
        "vault-transit://127.0.0.1:{}/transit/sledger?tls=off",
        server.port
    );
    (server, uri)
}

#[test]
fn vault_transit_holds_the_master_key() {
    let (server, uri) = transit();
    let refusing = format!(
        "vault-transit://127.0.0.1:{}/transit/missing?tls=off",
        server.port
    );
    walkthrough(
        &openbao::VAULT_ENV,
        &uri,
        &refusing,
        "vault-transit://127.0.0.1:1/transit/sledger?tls=off",
    );

    // `keys::migrate` as an empty ledger's first event starts its MACs, as any first write
    // does (it did not, and the ledger then read as tampered with).
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, openbao::VAULT_ENV[0].1).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let with_token = format!("{uri}&token_file={}", token.display());
    let master = sledger::MasterKey::generate();
    let path = dir.path().join("ledger.db");
    let mut ledger = sledger::Ledger::init(&path, master, sledger::LedgerSettings::default()).unwrap();
    sledger::keys::migrate(&mut ledger, "ops", &with_token, &dir.path().join("ledger.key")).unwrap();
    let mut values = sledger::SecretValues::new();
    values.insert("password", "first");
    let create = sledger::Command::Create {
        name: "db".into(),
        scope: sledger::Scope::Workspace,
        labels: Default::default(),
        values,
    };
    ledger.execute("ops", vec![create]).unwrap();
    drop(ledger);
    let mut reopened = sledger::Ledger::open(&path).unwrap();
    sledger::keys::unlock(&mut reopened, &dir.path().join("ledger.key"), Some(&with_token)).unwrap();
    let read = reopened.read("ops", "db", sledger::ReadPoint::Latest).unwrap();
    assert_eq!(read.values.get("password"), Some("first"));
}

/// POST `body` to a local test server with `headers`; its JSON answer, which must be a success.
fn post(url: String, headers: &[(&str, String)], body: serde_json::Value) -> serde_json::Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new().post(&url).body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    })
}

/// A moto KMS API call (moto checks no signature); its JSON answer.
fn kms_call(server: &Server, target: &str, body: serde_json::Value) -> serde_json::Value {
    post(
        format!("http://127.0.0.1:{}/", server.port),
        &[
            ("Content-Type", "application/x-amz-json-1.1".into()),
            ("X-Amz-Target", format!("TrentService.{target}")),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0".into(),
            ),
        ],
        body,
    )
}

#[test]
fn aws_kms_holds_the_master_key() {
    let server = moto::start();
    let key = kms_call(&server, "CreateKey", serde_json::json!({}))["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let disabled = kms_call(&server, "CreateKey", serde_json::json!({}))["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    kms_call(&server, "DisableKey", serde_json::json!({"KeyId": disabled}));
    let endpoint = format!("?endpoint=http://127.0.0.1:{}", server.port);
    let uri = format!("aws-kms://us-east-1/{key}{endpoint}");
    let refusing = format!("aws-kms://us-east-1/{disabled}{endpoint}");
    walkthrough(
        &moto::AWS_ENV,
        &uri,
        &refusing,
        &format!("aws-kms://us-east-1/{key}?endpoint=http://127.0.0.1:1"),
    );

    // A ledger recovered from a cloud sink (whose values its own credentials open) gets a new
    // master key, held by the KMS key given: no key file is ever written.
    let env = Env::empty();
    let vars = &moto::AWS_ENV;
    let cloud = moto::url(&server, "&prefix=kms-recovery/");
    ok_with(&env, vars, &["init"]);
    ok_with(&env, vars, &["sink", "add", "cloud", &cloud, "--role", "backup"]);
    ok_with(
        &env,
        vars,
        &["secret", "create", "db", "--value", "password=in-the-cloud"],
    );
    ok_with(&env, vars, &["project"]);
    let recovered = env.path("recovered.db");
    let at_recovered = ["--ledger", recovered.to_str().unwrap(), "--master-key", &uri];
    let mut recover = at_recovered.to_vec();
    recover.extend(["recover", "--from", &cloud]);
    ok_with(&env, vars, &recover);
    assert!(!env.path("recovered.key").exists());
    assert_eq!(
        get(&env, vars, &at_recovered[..2])["values"]["password"],
        "in-the-cloud"
    );
}

/// SIGKILL at random moments of `key migrate`, ten times, back and forth between a key file
/// and Transit: afterwards the ledger always opens, with the old holder or the new one.
#[test]
fn a_killed_key_migration_always_leaves_a_ledger_that_opens() {
    use rand::Rng;
    let (_server, uri) = transit();
    let vars = openbao::VAULT_ENV;
    let env = Env::new();
    ok_with(
        &env,
        &vars,
        &["secret", "create", "db", "--value", "password=s3cr3t"],
    );
    let mut key_file = env.key.clone();
    let mut rng = rand::thread_rng();
    for round in 0..10 {
        let in_kms = sledger::Ledger::open(env.location())
            .unwrap()
            .key_provider()
            .unwrap()
            .is_some();
        let next_file = env.path(&format!("round{round}.key"));
        let to = if in_kms {
            format!("file://{}", next_file.display())
        } else {
            uri.clone()
        };
        let mut child = env.spawn(
            &vars,
            &[
                "--key-file",
                key_file.to_str().unwrap(),
                "key",
                "migrate",
                "--to",
                &to,
            ],
        );
        std::thread::sleep(std::time::Duration::from_millis(rng.gen_range(0..150)));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let now_in_kms = sledger::Ledger::open(env.location())
            .unwrap()
            .key_provider()
            .unwrap()
            .is_some();
        if in_kms && !now_in_kms {
            key_file = next_file;
        }
        let got = get(&env, &vars, &["--key-file", key_file.to_str().unwrap()]);
        assert_eq!(
            got["values"]["password"], "s3cr3t",
            "round {round}: the ledger opens"
        );
    }
}

/// A drongo REST call (drongo takes anonymous calls); its JSON answer.
fn drongo_call(server: &Server, path: &str, body: serde_json::Value) -> serde_json::Value {
    post(
        format!("http://127.0.0.1:{}/v1/{path}", server.port),
        &[("Content-Type", "application/json".into())],
        body,
    )
}

#[test]
fn gcp_kms_holds_the_master_key() {
    let server = drongo::start();
    let location = "projects/sledger-test/locations/global";
    drongo_call(
        &server,
        &format!("{location}/keyRings?keyRingId=ledgers"),
        serde_json::json!({}),
    );
    drongo_call(
        &server,
        &format!("{location}/keyRings/ledgers/cryptoKeys?cryptoKeyId=master"),
        serde_json::json!({"purpose": "ENCRYPT_DECRYPT"}),
    );
    let key = |name: &str, port: u16| {
        format!("gcp-kms://{location}/keyRings/ledgers/cryptoKeys/{name}?endpoint=http://127.0.0.1:{port}")
    };
    walkthrough(
        &[],
        &key("master", server.port),
        &key("missing", server.port),
        &key("master", 1),
    );

    // From one KMS key to another.
    drongo_call(
        &server,
        &format!("{location}/keyRings/ledgers/cryptoKeys?cryptoKeyId=second"),
        serde_json::json!({"purpose": "ENCRYPT_DECRYPT"}),
    );
    let env = Env::empty();
    ok_with(&env, &[], &["--master-key", &key("master", server.port), "init"]);
    ok_with(
        &env,
        &[],
        &["secret", "create", "db", "--value", "password=moved"],
    );
    ok_with(
        &env,
        &[],
        &["key", "migrate", "--to", &key("second", server.port)],
    );
    assert_eq!(get(&env, &[], &[])["values"]["password"], "moved");
    let recorded = ok_with(&env, &[], &["--format", "json", "log", "--type", "key.migrated"]);
    assert!(recorded.contains("cryptoKeys/second"), "{recorded}");
    assert!(key_files(&env).is_empty());
}

#[test]
fn azure_key_vault_holds_the_master_key() {
    let vault = azure::start();
    vault.create_key("master");
    let key = |name: &str, port: u16| {
        format!(
            "azure-kv-key://127.0.0.1:{port}/keys/{name}?ca-file={}",
            vault.ca.display()
        )
    };
    walkthrough(
        vault.env(),
        &key("master", vault.port()),
        &key("missing", vault.port()),
        &key("master", 1),
    );
}
