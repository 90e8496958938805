//! The in-repo fake of Azure Key Vault (tests/fake/azure_keyvault.py) for the azure-kv sink's
//! tests, served over TLS with a certificate made for it, signed by a CA made for it: no Key
//! Vault emulator exists. It also plays the Entra ID token endpoint.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::servers::{self, Server};

pub const TENANT: &str = "sledger-test-tenant";
pub const CLIENT_ID: &str = "sledger-test-client";
const CLIENT_SECRET: &str = "sledger-test-client-secret";
/// A second service principal the fake's token endpoint accepts, for a sink with its own.
pub const OTHER_CLIENT_ID: &str = "sledger-backup-client";
pub const OTHER_CLIENT_SECRET: &str = "sledger-backup-client-secret";

pub struct FakeVault {
    pub server: Server,
    /// The CA that signed the server's certificate: the sink's `ca-file`.
    pub ca: PathBuf,
    dir: tempfile::TempDir,
}

impl FakeVault {
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `azure-kv://` URL of the fake, trusting its CA.
    pub fn url(&self, extra: &str) -> String {
        format!(
            "azure-kv://127.0.0.1:{}?ca-file={}{extra}",
            self.port(),
            self.ca.display()
        )
    }

    /// The service principal sledger signs in with, at the fake's token endpoint.
    pub fn env(&self) -> &'static [(&'static str, &'static str)] {
        let authority: &'static str =
            Box::leak(format!("https://127.0.0.1:{}", self.port()).into_boxed_str());
        Box::leak(Box::new([
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
            ("AZURE_AUTHORITY_HOST", authority),
        ]))
    }

    /// Create a key in the fake (as `az keyvault key create` would), signed in as the test's
    /// service principal.
    pub fn create_key(&self, name: &str) {
        self.with_client(|http, base| async move {
            let token: serde_json::Value = http
                .post(format!("{base}/{TENANT}/oauth2/v2.0/token"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", CLIENT_ID),
                    ("client_secret", CLIENT_SECRET),
                    ("scope", "https://vault.azure.net/.default"),
                ])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let created = http
                .post(format!("{base}/keys/{name}/create?api-version=7.5"))
                .bearer_auth(token["access_token"].as_str().unwrap())
                .json(&serde_json::json!({"kty": "RSA", "key_size": 2048}))
                .send()
                .await
                .unwrap();
            assert!(created.status().is_success(), "{}", created.status());
        });
    }

    /// Make the fake's 401 challenge name `resource`, as a squatter on the vault's port would.
    pub fn set_challenge_resource(&self, resource: &str) {
        self.control(|http, base| {
            http.post(format!("{base}/fake/challenge"))
                .body(resource.to_owned())
        });
    }

    /// Record `certificate` (a PEM file from [`certificate`]) as the credential of service
    /// principal `client_id`, as uploading it to the app registration would.
    pub fn register_certificate(&self, client_id: &str, certificate: &Path) {
        let pem = std::fs::read_to_string(certificate).unwrap();
        let modulus = openssl_output(
            certificate.parent().unwrap(),
            &["x509", "-noout", "-modulus", "-in"],
            certificate,
        );
        let modulus = modulus.trim().strip_prefix("Modulus=").unwrap().to_owned();
        self.control(|http, base| {
            http.post(format!("{base}/fake/certificate"))
                .json(&serde_json::json!({
                    "client_id": client_id,
                    "certificate": pem,
                    "modulus": modulus,
                }))
        });
    }

    /// Every scope a token was asked for so far.
    pub fn token_scopes(&self) -> Vec<String> {
        serde_json::from_value(self.control(|http, base| http.get(format!("{base}/fake/scopes")))).unwrap()
    }

    /// One request to the fake's test-only control endpoints; the JSON it answers with.
    fn control(
        &self,
        request: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> serde_json::Value {
        self.with_client(|http, base| async move {
            let response = request(&http, &base).send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.json().await.unwrap_or_default()
        })
    }

    /// Run `calls` with an HTTP client that trusts the fake's CA, and the fake's base URL.
    fn with_client<F: std::future::Future>(
        &self,
        calls: impl FnOnce(reqwest::Client, String) -> F,
    ) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap();
        let http = runtime.block_on(async {
            reqwest::Client::builder()
                .add_root_certificate(ca)
                .build()
                .unwrap()
        });
        runtime.block_on(calls(http, format!("https://127.0.0.1:{}", self.port())))
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Start again on the same port with the same certificate (and no secrets).
    pub fn restart(&mut self) {
        self.server = serve(self.port(), self.dir.path());
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("the Key Vault fake needs `openssl` to make its certificate ({e}); install it (apt-get install openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `args` then `file`, run in `dir`; what openssl printed.
fn openssl_output(dir: &Path, args: &[&str], file: &Path) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .arg(file)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A service principal's credential as `az ad sp create-for-rbac --create-cert` makes it: an
/// RSA key and a self-signed certificate in one PEM file `dir/name.pem`, mode 0600.
pub fn certificate(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let (key, cert) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            "/CN=sledger test principal",
        ],
    );
    let path = dir.join(format!("{name}.pem"));
    let pem = [
        std::fs::read(dir.join(&cert)).unwrap(),
        std::fs::read(dir.join(&key)).unwrap(),
    ]
    .concat();
    std::fs::write(&path, pem).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A CA and a certificate for 127.0.0.1 signed by it.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sledger test CA",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn serve(port: u16, dir: &Path) -> Server {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake/azure_keyvault.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .arg(port.to_string())
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .args([
            TENANT,
            CLIENT_ID,
            CLIENT_SECRET,
            OTHER_CLIENT_ID,
            OTHER_CLIENT_SECRET,
        ]);
    servers::start_when("the Key Vault fake", command, port, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

pub fn start() -> FakeVault {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let port = servers::free_port_pair();
    FakeVault {
        server: serve(port, dir.path()),
        ca: dir.path().join("ca.pem"),
        dir,
    }
}
