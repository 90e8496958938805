//! Resolving the global options: which ledger, which key, who is acting.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use sledger::crypto::MASTER_KEY_ENV;
use sledger::keys::KeySource;
use sledger::project::PrimaryWait;
use sledger::store::Location;
use sledger::{Ledger, MasterKey};

use crate::cli::{Format, Global};
use sledger::client::{Client as Remote, TOKEN_ENV};

/// SLEDGER_MASTER_KEY and SLEDGER_TOKEN as they were at start-up (see [`Context::take_env_key`]).
static ENV_KEY: std::sync::OnceLock<Option<zeroize::Zeroizing<String>>> = std::sync::OnceLock::new();
static ENV_TOKEN: std::sync::OnceLock<Option<zeroize::Zeroizing<String>>> = std::sync::OnceLock::new();

pub struct Context {
    pub ledger: Location,
    pub key_file: PathBuf,
    /// `--master-key` naming a KMS key (a file or variable there sets `key_file` or the key).
    pub kms: Option<String>,
    pub actor: String,
    pub format: Format,
    pub wait: std::time::Duration,
    /// The server every command goes to, with `--server` / `SLEDGER_SERVER`.
    pub remote: Option<Remote>,
}

/// Run a future to completion on the process's single-threaded runtime (the ledger's
/// connection stays on this thread; sinks do their blocking work on tokio's blocking pool).
/// One runtime for every call: a ledger keeps the sinks it opened, and their plug-in processes
/// and connection pools belong to the runtime they were opened on.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime can be built")
        })
        .block_on(future)
}

/// Resolves when the process is asked to stop: Ctrl-C or SIGTERM.
pub async fn terminated() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn default_ledger_path() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("sledger")
        .join("ledger.db")
}

/// `ledger.db` → `ledger.key`, beside it; a ledger in PostgreSQL has its key in the data
/// directory, named after the server and database.
fn default_key_file(ledger: &Location) -> PathBuf {
    match ledger.as_path() {
        Some(path) => path.with_extension("key"),
        None => {
            let name: String = ledger
                .to_string()
                .split("://")
                .nth(1)
                .unwrap_or_default()
                .split('?')
                .next()
                .unwrap_or_default()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            default_ledger_path().with_file_name(format!("postgres-{name}.key"))
        }
    }
}

fn default_actor() -> String {
    let host = whoami::fallible::hostname().unwrap_or_else(|_| "localhost".into());
    format!("{}@{host}", whoami::username())
}

impl Context {
    pub fn new(global: &Global) -> Result<Self> {
        let ledger = match &global.ledger {
            Some(text) => Location::parse(text)?,
            None => Location::File(default_ledger_path()),
        };
        let mut key_file = global
            .key_file
            .clone()
            .unwrap_or_else(|| default_key_file(&ledger));
        let mut kms = None;
        match global.master_key.as_deref().map(KeySource::parse).transpose()? {
            Some(KeySource::File(path)) => key_file = path,
            // Read (and removed from the environment) at start-up, before any thread exists.
            Some(KeySource::Env(var)) if var == MASTER_KEY_ENV => {}
            Some(KeySource::Env(var)) => {
                return Err(crate::exit::usage(format!(
                    "--master-key env:{var}: the key is read from {MASTER_KEY_ENV} only (taken out of the environment before anything starts); set that instead"
                )))
            }
            Some(KeySource::Kms(_)) => kms = global.master_key.clone(),
            None => {}
        }
        let remote = match &global.server {
            Some(server) => Some(Remote::new(
                server,
                global.token_file.as_deref(),
                ENV_TOKEN.get().cloned().flatten(),
                global.ca_file.as_deref(),
            )?),
            None => None,
        };
        Ok(Context {
            key_file,
            kms,
            ledger,
            actor: global.actor.clone().unwrap_or_else(default_actor),
            format: global.format,
            wait: global.wait,
            remote,
        })
    }

    /// Refuse a command the server does not offer yet, saying where to run it.
    pub fn local_only(&self, command: &str) -> Result<()> {
        if self.remote.is_some() {
            return Err(crate::exit::usage(format!(
                "`sledger {command}` is not available through --server yet; run it on the server's host against the ledger file"
            )));
        }
        Ok(())
    }

    /// After a write: give the primary sink up to `--wait` to apply the write's own last
    /// event (nothing to wait for when it appended none).
    pub fn wait_for_primary(
        &self,
        ledger: &Ledger,
        outcomes: &[sledger::Outcome],
    ) -> Result<Option<PrimaryWait>> {
        let Some(seq) = outcomes.iter().filter_map(sledger::Outcome::seq).max() else {
            return Ok(None);
        };
        Ok(block_on(sledger::project::wait_for_primary(
            ledger, self.wait, seq, outcomes,
        ))?)
    }

    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// Take SLEDGER_MASTER_KEY out of the process environment, so that no child process of
    /// any kind (plug-ins, credential helpers) inherits it. Called first thing in `main`, while
    /// the process has one thread.
    pub fn take_env_key() {
        let text = std::env::var(MASTER_KEY_ENV).ok().map(zeroize::Zeroizing::new);
        let token = std::env::var(TOKEN_ENV).ok().map(zeroize::Zeroizing::new);
        // No other thread exists yet, so changing the environment is sound.
        std::env::remove_var(MASTER_KEY_ENV);
        std::env::remove_var(TOKEN_ENV);
        let _ = ENV_KEY.set(text);
        let _ = ENV_TOKEN.set(token);
    }

    /// The master key from SLEDGER_MASTER_KEY, if it was set.
    pub fn env_key() -> Result<Option<MasterKey>> {
        match ENV_KEY.get().and_then(Option::as_ref) {
            Some(text) => Ok(Some(
                MasterKey::from_base64(text).context(format!("{MASTER_KEY_ENV} is unusable"))?,
            )),
            None => Ok(None),
        }
    }

    /// Open the ledger without its key (audit and verify need none).
    pub fn open(&self) -> Result<Ledger> {
        Ok(Ledger::open(self.ledger.clone())?)
    }

    /// Open the ledger and unlock it with the master key.
    pub fn open_unlocked(&self) -> Result<Ledger> {
        let mut ledger = self.open()?;
        match Self::env_key()? {
            Some(key) => ledger.unlock(key)?,
            None => sledger::keys::unlock(&mut ledger, &self.key_file, self.kms.as_deref())?,
        }
        Ok(ledger)
    }

    /// Open the ledger to write: unlocked, and refused if it lost events its primary sink
    /// witnessed (a truncated tail, an older copy put back). A primary that does not answer
    /// within `--wait` (at least a second, at most five) is noted, not waited for.
    pub fn open_to_write(&self) -> Result<Ledger> {
        let ledger = self.open_unlocked()?;
        let limit = self.wait.clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(5),
        );
        if let Some(note) = block_on(sledger::witness::check_primary(&ledger, limit))? {
            eprintln!("note: {note}");
        }
        Ok(ledger)
    }

    /// Open to write and apply `commands` as the actor. A key rotation by another process in
    /// the meantime is waited out rather than failed: the write is tried again with the
    /// rotated key once its key file is in place (a rotation renames it over the old one just
    /// after committing).
    pub fn execute(&self, commands: Vec<sledger::Command>) -> Result<(Ledger, Vec<sledger::Outcome>)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut rotated = false;
        loop {
            let attempt = self.open_to_write().and_then(|mut ledger| {
                let outcomes = ledger.execute(&self.actor, commands.clone())?;
                Ok((ledger, outcomes))
            });
            let cause = attempt
                .as_ref()
                .err()
                .and_then(|e| e.downcast_ref::<sledger::Error>());
            let waiting = match cause {
                Some(sledger::Error::KeyRotated) => true,
                // The rotation committed, and its key file is not renamed into place yet.
                Some(sledger::Error::WrongKey) => rotated,
                _ => false,
            };
            if !waiting || std::time::Instant::now() >= deadline {
                return attempt;
            }
            rotated = true;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The master key from SLEDGER_MASTER_KEY or the key file, if there is one (not checked
    /// against the ledger).
    pub fn master_key_if_any(&self) -> Result<Option<MasterKey>> {
        if let Some(key) = Self::env_key()? {
            return Ok(Some(key));
        }
        Ok(MasterKey::read_file_if_present(&self.key_file)?)
    }

    /// How a server finds the master key again after `key rotate` replaced it: as
    /// [`Context::open_unlocked`] does.
    pub fn key_reloader(&self) -> sledger::keys::KeyReloader {
        let (ledger, key_file, kms) = (self.ledger.clone(), self.key_file.clone(), self.kms.clone());
        sledger::keys::KeyReloader::new(move || {
            let mut opened = Ledger::open(ledger.clone())?;
            match Self::env_key().ok().flatten() {
                Some(key) => opened.unlock(key).map_err(|e| match e {
                    sledger::Error::WrongKey => sledger::Error::KeyUnavailable(format!(
                        "{MASTER_KEY_ENV} holds the key the ledger was rotated away from; \
                         start this command again with the new one"
                    )),
                    // A database that cannot be read is that, not a stale key.
                    other => other,
                })?,
                None => sledger::keys::unlock(&mut opened, &key_file, kms.as_deref())?,
            }
            Ok(opened.master_key()?.clone())
        })
    }

    /// The master key that opens this ledger (checked), for library calls that open their own
    /// connections.
    pub fn master_key(&self) -> Result<MasterKey> {
        Ok(self.open_unlocked()?.master_key()?.clone())
    }
}
