//! A `sledger serve` a test starts on a loopback port (port 0: the OS picks one).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::Env;

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT` (or https).
    pub base: String,
    /// The admin token printed on first run (when the server created the ledger).
    pub admin: Option<String>,
}

impl Server {
    pub fn start(env: &Env, args: &[&str]) -> Server {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("sledger"))
            .env("SLEDGER_LEDGER", &env.ledger)
            .env("SLEDGER_ACTOR", "alice@test")
            .env_remove("SLEDGER_MASTER_KEY")
            .env_remove("SLEDGER_KEY_FILE")
            .env_remove("SLEDGER_LOG")
            .env_remove("SLEDGER_SERVER")
            .env_remove("SLEDGER_TOKEN")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut admin = None;
        let base = loop {
            let line = lines
                .next()
                .expect("sledger serve exited before it listened")
                .unwrap();
            if line.starts_with("sledger_") {
                admin = Some(line);
            } else if let Some(url) = line.strip_prefix("listening on ") {
                break url.to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, base, admin }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then wait (at most 10 s) for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "serve did not exit within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
