//! Master-key files and their crash-safe rotation.
//!
//! Rotation never leaves a ledger without a durable key file that opens it: while holding the
//! ledger's write lock, the new key is written and synced to `<key file>.new`; the re-wrapped
//! ledger is committed; only then is the new file renamed over the old one. If a crash lands
//! between the commit and the rename, [`unlock`] finds the `.new` file, sees that it is the
//! ledger's key, and finishes the rename. A `.new` file left by a rotation that never committed
//! opens nothing and is replaced by the next rotation.

use std::path::{Path, PathBuf};

use crate::crypto::{sync_parent_dir, MasterKey};
use crate::error::{Error, Result};
use crate::ledger::Ledger;

fn pending_path(key_file: &Path) -> PathBuf {
    let mut p = key_file.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

fn replace(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        Error::io(
            format!(
                "the ledger now uses the key in {}, but it could not be moved to {}; move it there yourself",
                from.display(),
                to.display()
            ),
            e,
        )
    })?;
    sync_parent_dir(to)
}

/// Unlock `ledger` with the key in `key_file`, completing an interrupted rotation if needed.
pub fn unlock(ledger: &mut Ledger, key_file: &Path) -> Result<()> {
    let pending = pending_path(key_file);
    match MasterKey::read_file(key_file) {
        Ok(key) if ledger.key_matches(&key)? => return ledger.unlock(key),
        Ok(_) => {}
        Err(Error::KeyUnavailable(_)) if pending.exists() => {}
        Err(e) => return Err(e),
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
    // Runs under the ledger's write lock, so no other rotation is between these steps.
    let mut persist = |new: &MasterKey| -> Result<()> {
        if pending.exists() {
            std::fs::remove_file(&pending)
                .map_err(|e| Error::io(format!("cannot remove stale {}", pending.display()), e))?;
        }
        new.write_new_file(&pending)
    };
    let rewrapped = ledger.rotate_key(actor, MasterKey::generate(), &mut persist)?;
    replace(&pending, key_file)?;
    Ok(rewrapped)
}
