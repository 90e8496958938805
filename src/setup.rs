//! Setting a ledger up on the embedded default: the ledger file, its master key file (mode
//! 0600) unless the key comes from elsewhere, and a local sqlite sink beside the ledger as the
//! primary. `sledger init` and a server's first run both start here.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::event::SinkRole;
use crate::ledger::{Command, Ledger, LedgerSettings};
use crate::sink::SinkUrl;
use crate::store::Location;
use crate::MasterKey;

/// The name of the embedded default's primary sink.
pub const DEFAULT_SINK: &str = "local";

/// Where the master key of a new ledger comes from.
#[derive(Debug)]
pub enum NewKey {
    /// Generate one and write it to this file (mode 0600); it must not exist yet.
    File(PathBuf),
    /// Use this one (from the environment); nothing is written.
    Given(MasterKey),
    /// Generate one and keep it only as this KMS key wraps it, in the ledger.
    Kms(Box<dyn crate::keys::KeyWrapper>),
}

/// What [`init`] made.
#[derive(Debug)]
pub struct Initialized {
    pub ledger: Ledger,
    /// The primary sink's URL.
    pub primary: String,
    /// The primary sink's file, when `init` made one.
    pub sink_file: Option<PathBuf>,
}

/// The primary sink file of the ledger file `ledger`: `ledger.db` → `ledger.sink.db`. A
/// ledger in a database has no file to put one beside: it needs `primary` named.
pub fn default_sink_file(ledger: &Location) -> Result<PathBuf> {
    let path = ledger.as_path().ok_or_else(|| {
        Error::invalid(
            "a ledger in PostgreSQL has no directory to keep its primary sink in: name one with --primary URL \
             (sqlite:///srv/sledger/primary.db, or a cloud secret store)",
        )
    })?;
    std::path::absolute(path.with_extension("sink.db"))
        .map_err(|e| Error::io(format!("cannot resolve {}", path.display()), e))
}

/// Create the directory `path` goes in (owner-only), if it is missing.
fn make_parent_dir(path: &Path) -> Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) else {
        return Ok(());
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))
}

fn refuse_existing(path: &Path, what: &'static str) -> Result<()> {
    if path.exists() {
        return Err(Error::WouldOverwrite {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Create a ledger at `location` with `primary` as its primary sink, or, without one, a local
/// sqlite sink beside the ledger file (the embedded default). Refuses to overwrite a ledger,
/// key file or sink file; on any failure removes what it made, so nothing half-made is left
/// behind. Adding the primary is an event like any other, so "who set up the primary" is in
/// the audit log.
pub fn init(
    location: &Location,
    key: NewKey,
    actor: &str,
    settings: LedgerSettings,
    primary: Option<&str>,
) -> Result<Initialized> {
    if let Some(path) = location.as_path() {
        refuse_existing(path, "ledger")?;
    }
    if let NewKey::File(file) = &key {
        refuse_existing(file, "key file")?;
    }
    let (primary, sink_file) = match primary {
        Some(url) => {
            SinkUrl::parse(url)?;
            (url.to_owned(), None)
        }
        None => {
            let file = default_sink_file(location)?;
            refuse_existing(&file, "sink file")?;
            (SinkUrl::sqlite_url(&file), Some(file))
        }
    };
    if let Some(path) = location.as_path() {
        make_parent_dir(path)?;
    }
    if let NewKey::File(file) = &key {
        make_parent_dir(file)?;
    }
    let (master, key_file, kms) = match key {
        NewKey::Given(master) => (master, None, None),
        NewKey::Kms(kms) => (MasterKey::generate(), None, Some(kms)),
        NewKey::File(file) => {
            let master = MasterKey::generate();
            master.write_new_file(&file)?;
            (master, Some(file), None)
        }
    };
    let remove_key_file = || {
        if let Some(file) = &key_file {
            let _ = std::fs::remove_file(file);
        }
    };
    // Ledger::init removes what it made if it fails itself.
    let mut ledger = Ledger::init(location.clone(), master, settings).inspect_err(|_| remove_key_file())?;
    let mut made_sink = None;
    let attached = kms
        .map_or(Ok(()), |kms| {
            let wrapped = kms.wrap(ledger.master_key()?, &ledger.ledger_id()?)?;
            ledger.hold_key_in(kms.uri(), &wrapped)
        })
        .and_then(|()| SinkUrl::parse(&primary))
        .and_then(|url| {
            made_sink = crate::replay::orchestrate::prepare_backend(&url)?;
            // Another ledger's sqlite file is refused now, not at the first projection.
            if url.sqlite_path().is_some() {
                ledger.open_sink_url(&primary)?;
            }
            Ok(())
        })
        .and_then(|()| {
            ledger.execute(
                actor,
                vec![Command::AddSink {
                    name: DEFAULT_SINK.into(),
                    url: primary.clone(),
                    role: SinkRole::Primary,
                }],
            )
        });
    if let Err(e) = attached {
        drop(ledger);
        remove_key_file();
        location.remove_created();
        if let Some(file) = made_sink {
            let _ = std::fs::remove_file(file);
        }
        return Err(e);
    }
    Ok(Initialized {
        ledger,
        primary,
        sink_file,
    })
}
