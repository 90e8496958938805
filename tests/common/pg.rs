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
        postgres.run(false);
        postgres
    }

    /// Start the server; on a port another process took meanwhile, try another unless `keep_port`.
    fn run(&mut self, keep_port: bool) {
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
            if keep_port {
                std::thread::sleep(Duration::from_millis(500));
            } else {
                self.port = free_port();
            }
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
        self.run(true);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// Run the client program `program` (createdb, psql) as the superuser with `args`.
    fn client(&self, program: &str, args: &[&str]) {
        let out = Command::new(self.bin.join(program))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        self.client("createdb", &[name]);
        self.url(name)
    }

    /// Run `sql` as the superuser, in database postgres.
    pub fn sql(&self, sql: &str) {
        self.client("psql", &["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    }

    /// A login role that must give `password` (the rest of the cluster trusts its clients).
    pub fn role_with_password(&self, role: &str, password: &str) {
        self.sql(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"));
        let hba = self.dir.path().join("data").join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rules}"),
        )
        .unwrap();
        self.sql("SELECT pg_reload_conf()");
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

/// What a [`CuttingProxy`] does to the next COMMIT it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Pass everything.
    Nothing,
    /// Forward the COMMIT, then drop the connection before its reply comes back.
    AfterCommit,
    /// Drop the connection instead of forwarding the COMMIT.
    BeforeCommit,
}

/// A TCP proxy in front of a PostgreSQL that, when armed, cuts one connection at its next
/// COMMIT (a simple-protocol `Q` message ending in one): the "unknown commit outcome" a client must resolve.
pub struct CuttingProxy {
    pub port: u16,
    mode: std::sync::Arc<std::sync::Mutex<Cut>>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttingProxy {
    pub fn start(upstream: u16) -> CuttingProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = std::sync::Arc::new(std::sync::Mutex::new(Cut::Nothing));
        let cuts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (modes, counted) = (mode.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut client_reader, mut server_writer) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                // Set before a COMMIT is forwarded that must lose its reply.
                let replies_dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let dropping = replies_dropped.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if dropping.load(Ordering::SeqCst) => break,
                            Ok(n) => {
                                if client.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
                let (modes, counted) = (modes.clone(), counted.clone());
                std::thread::spawn(move || {
                    // The end of a simple-protocol query whose last statement is COMMIT (the
                    // store sends its NOTIFY in the same message).
                    const COMMIT: &[u8] = b"COMMIT\0";
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = match client_reader.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let is_commit = chunk.windows(COMMIT.len()).any(|w| w == COMMIT);
                        let cut = if is_commit {
                            std::mem::replace(&mut *modes.lock().unwrap(), Cut::Nothing)
                        } else {
                            Cut::Nothing
                        };
                        if cut != Cut::Nothing {
                            replies_dropped.store(true, Ordering::SeqCst);
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        if cut != Cut::BeforeCommit && server_writer.write_all(chunk).is_err() {
                            break;
                        }
                        if cut != Cut::Nothing {
                            // Let the server act on what it got, then cut both ways.
                            std::thread::sleep(Duration::from_millis(300));
                            let _ = server_writer.shutdown(std::net::Shutdown::Both);
                            let _ = client_reader.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                    }
                });
            }
        });
        CuttingProxy { port, mode, cuts }
    }

    /// Cut the next COMMIT this way.
    pub fn arm(&self, cut: Cut) {
        *self.mode.lock().unwrap() = cut;
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}
