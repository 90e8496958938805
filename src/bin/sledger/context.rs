//! Resolving the global options: which ledger, which key, who is acting.

use std::path::PathBuf;

use anyhow::Result;
use sledger::crypto::MASTER_KEY_ENV;
use sledger::keys::KeySource;
use sledger::session::{Local, Session};
use sledger::store::Location;

use crate::cli::{Format, Global};
use sledger::client::{Client as Remote, TOKEN_ENV};

/// SLEDGER_MASTER_KEY and SLEDGER_TOKEN as they were at start-up (see [`Context::take_env_key`]).
static ENV_KEY: std::sync::OnceLock<Option<zeroize::Zeroizing<String>>> = std::sync::OnceLock::new();
static ENV_TOKEN: std::sync::OnceLock<Option<zeroize::Zeroizing<String>>> = std::sync::OnceLock::new();

pub struct Context {
    /// The local ledger, or the server every command goes to with `--server`.
    pub session: Session,
    /// Who acts (locally; through a server, the token says), and whom `log --actor` shows.
    pub actor: String,
    pub format: Format,
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
        let actor = global.actor.clone().unwrap_or_else(default_actor);
        if let Some(server) = &global.server {
            let client = Remote::new(
                server,
                global.token_file.as_deref(),
                ENV_TOKEN.get().cloned().flatten(),
                global.ca_file.as_deref(),
            )?;
            return Ok(Context {
                session: Session::Remote {
                    client,
                    wait: global.wait,
                },
                actor,
                format: global.format,
            });
        }
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
        let local = Local::new(
            ledger,
            key_file,
            kms,
            ENV_KEY.get().cloned().flatten(),
            actor.clone(),
            global.wait,
            |note| eprintln!("note: {note}"),
        );
        Ok(Context {
            session: Session::Local(local),
            actor,
            format: global.format,
        })
    }

    /// The local ledger; through `--server`, an error saying where to run `command` instead.
    pub fn local(&self, command: &str) -> Result<&Local> {
        Ok(self.session.local(command)?)
    }

    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// What brings a lagging sink up to date: here `sledger project`; a server's own
    /// projectors catch up by themselves (and it refuses `project`).
    pub fn catch_up_hint(&self) -> &'static str {
        if self.session.is_remote() {
            "the server's projector catches it up (`sledger sink status` shows how far)"
        } else {
            "`sledger project` catches it up"
        }
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
}
