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
    // A rotation in another process commits, then renames the pending file over the key
    // file: between this process's reads the key may move from one to the other, so a key
    // that does not match is looked for again before it is called wrong. Rotations may follow
    // each other: the looking goes on while the ledger's key keeps changing (up to a bound).
    let mut seen = None;
    let mut unchanged = 0;
    for attempt in 0..200 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let current = ledger.key_check()?;
        if seen.as_ref() == Some(&current) {
            unchanged += 1;
            if unchanged >= 5 {
                break;
            }
        } else {
            seen = Some(current);
            unchanged = 0;
        }
        match MasterKey::read_file(key_file) {
            // A key that matched a moment ago and no longer does was rotated meanwhile.
            Ok(key) if ledger.key_matches(&key)? => match ledger.unlock(key) {
                Err(Error::KeyRotated | Error::WrongKey) => continue,
                result => return result,
            },
            Ok(_) => {}
            Err(Error::KeyUnavailable(_)) if pending.exists() => {}
            Err(e) => return Err(e),
        }
        // Gone since: renamed into place meanwhile; read the key file again.
        let Ok(new) = MasterKey::read_file(&pending) else {
            continue;
        };
        if ledger.key_matches(&new)? {
            tracing::info!("finishing an interrupted key rotation");
            if let Err(e) = replace(&pending, key_file) {
                // The rotating process renamed it first: the key file holds `new` now.
                if pending.exists() {
                    return Err(e);
                }
            }
            match ledger.unlock(new) {
                Err(Error::KeyRotated | Error::WrongKey) => continue,
                result => return result,
            }
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
    if let Err(e) = replace(&pending, key_file) {
        // Another process opening the ledger finished the rename first (see `unlock`).
        if pending.exists() {
            return Err(e);
        }
    }
    Ok(rewrapped)
}
