//! Setting a ledger up on the embedded default: the ledger file, its master key file (mode
//! 0600) unless the key comes from elsewhere, and a local sqlite sink beside the ledger as the
//! primary. `sledger init` and a server's first run both start here.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::event::SinkRole;
use crate::ledger::{Command, Ledger, LedgerSettings};
use crate::sink::{SinkUrl, SqliteSink};
use crate::MasterKey;

/// The name of the embedded default's primary sink.
pub const DEFAULT_SINK: &str = "local";

/// Where the master key of a new ledger comes from.
#[derive(Debug)]
pub enum NewKey {
    /// Generate one and write it to this file (mode 0600); it must not exist yet.
    File(PathBuf),
    /// Use this one (from the environment, a KMS …); nothing is written.
    Given(MasterKey),
}

/// What [`init_embedded`] made.
#[derive(Debug)]
pub struct Initialized {
    pub ledger: Ledger,
    /// The primary sink's file.
    pub sink_file: PathBuf,
}

/// The primary sink file of the ledger at `ledger_path`: `ledger.db` → `ledger.sink.db`.
pub fn default_sink_file(ledger_path: &Path) -> Result<PathBuf> {
    std::path::absolute(ledger_path.with_extension("sink.db"))
        .map_err(|e| Error::io(format!("cannot resolve {}", ledger_path.display()), e))
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

/// Create a ledger on the embedded default. Refuses to overwrite a ledger, key file or sink
/// file; on any failure removes what it made, so nothing half-made is left behind. Adding the
/// primary is an event like any other, so "who set up the primary" is in the audit log.
pub fn init_embedded(
    ledger_path: &Path,
    key: NewKey,
    actor: &str,
    settings: LedgerSettings,
) -> Result<Initialized> {
    refuse_existing(ledger_path, "ledger")?;
    if let NewKey::File(file) = &key {
        refuse_existing(file, "key file")?;
    }
    let sink_file = default_sink_file(ledger_path)?;
    refuse_existing(&sink_file, "sink file")?;
    if let Some(dir) = ledger_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let (master, key_file) = match key {
        NewKey::Given(master) => (master, None),
        NewKey::File(file) => {
            let master = MasterKey::generate();
            master.write_new_file(&file)?;
            (master, Some(file))
        }
    };
    let made = Ledger::init(ledger_path, master, settings).and_then(|mut ledger| {
        SqliteSink::create(&sink_file)?;
        ledger.execute(
            actor,
            vec![Command::AddSink {
                name: DEFAULT_SINK.into(),
                url: SinkUrl::sqlite_url(&sink_file),
                role: SinkRole::Primary,
            }],
        )?;
        Ok(ledger)
    });
    match made {
        Ok(ledger) => Ok(Initialized { ledger, sink_file }),
        Err(e) => {
            if let Some(file) = key_file {
                let _ = std::fs::remove_file(file);
            }
            crate::store::sqlite::SqliteStore::remove_files(ledger_path);
            let _ = std::fs::remove_file(&sink_file);
            Err(e)
        }
    }
}
