//! Master-key files and their safe rotation.
//!
//! Rotation never leaves a ledger without a working key file: the new key is written to
//! `<key file>.new` first, the ledger is re-wrapped in one transaction, and only then is the
//! new file renamed over the old one. If a crash lands between the commit and the rename,
//! [`unlock`] finds the `.new` file, sees that it is the ledger's key, and finishes the rename.

use std::path::{Path, PathBuf};

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::ledger::Ledger;

fn pending_path(key_file: &Path) -> PathBuf {
    let mut p = key_file.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

fn replace(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .map_err(|e| Error::io(format!("cannot move {} to {}", from.display(), to.display()), e))?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Unlock `ledger` with the key in `key_file`, completing an interrupted rotation if needed.
pub fn unlock(ledger: &mut Ledger, key_file: &Path) -> Result<()> {
    let pending = pending_path(key_file);
    let key = match MasterKey::read_file(key_file) {
        Ok(key) => key,
        Err(Error::KeyUnavailable(_)) if pending.exists() => MasterKey::read_file(&pending)?,
        Err(e) => return Err(e),
    };
    if ledger.key_matches(&key)? {
        if pending.exists() {
            // A rotation that never committed: its key opens nothing.
            let _ = std::fs::remove_file(&pending);
        }
        return ledger.unlock(key);
    }
    if pending.exists() {
        let new = MasterKey::read_file(&pending)?;
        if ledger.key_matches(&new)? {
            tracing::info!("finishing an interrupted key rotation");
            replace(&pending, key_file)?;
            return ledger.unlock(new);
        }
    }
    Err(Error::WrongKey)
}

/// Rotate the master key kept in `key_file` (the ledger must be unlocked with it).
/// Returns the number of data keys re-wrapped.
pub fn rotate(ledger: &mut Ledger, key_file: &Path, actor: &str) -> Result<u64> {
    let pending = pending_path(key_file);
    if pending.exists() {
        std::fs::remove_file(&pending)
            .map_err(|e| Error::io(format!("cannot remove stale {}", pending.display()), e))?;
    }
    let new = MasterKey::generate();
    new.write_new_file(&pending)?;
    let rewrapped = ledger.rotate_key(actor, new)?;
    replace(&pending, key_file)?;
    Ok(rewrapped)
}
