//! A real PostgreSQL for the PostgreSQL ledger's tests: a cluster of its own (`initdb`, then
//! `postgres`) in a temp dir on a free loopback port, run as the `postgres` user when the tests
//! run as root (PostgreSQL refuses root). Stopped (fast shutdown) on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The newest PostgreSQL server binaries on this machine (`SLEDGER_PG_BIN` overrides).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLEDGER_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "this test needs a real PostgreSQL server and found none under /usr/lib/postgresql: \
             install it with `apt-get install postgresql` (.ci/run does), or point SLEDGER_PG_BIN \
             at a directory holding initdb and postgres"
        )
    })
}

/// (uid, gid) to run the server as: the `postgres` user when we are root.
fn server_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "PostgreSQL refuses to run as root and there is no `postgres` user; install the postgresql package"
    );
    Some(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}

fn as_server_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// A new cluster, running.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let user = server_user();
        let dir = tempfile::Builder::new().prefix("sledger-pg").tempdir().unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let out = as_server_user(&mut Command::new(bin.join("initdb")), user)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut postgres = Postgres {
            child: None,
            port: free_port(),
            dir,
            bin,
        };
        postgres.run();
        postgres
    }

    fn run(&mut self) {
        let user = server_user();
        for _ in 0..5 {
            let child = as_server_user(&mut Command::new(self.bin.join("postgres")), user)
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-k",
                ])
                .arg(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("postgres starts");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if self.ready() {
                    return;
                }
                if let Ok(Some(_)) = self.child.as_mut().unwrap().try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            self.stop();
            self.port = free_port();
        }
        panic!("PostgreSQL did not come up (see {})", self.dir.path().display());
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Fast shutdown, then start again on the same port (clients must reconnect).
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// A new empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ])
            .output()
            .expect("createdb runs");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
