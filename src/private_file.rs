//! Files only their owner may read (ledgers, key files, sink files, backups): created new with
//! mode 0600, never over an existing file.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Create `path` (mode 0600 on Unix). An existing file is refused as
/// [`Error::WouldOverwrite`], naming it as `what`.
pub fn create(path: &Path, what: &'static str) -> Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::WouldOverwrite {
            what,
            path: path.to_path_buf(),
        },
        _ => Error::io(format!("cannot create {what} {}", path.display()), e),
    })
}

/// The permission bits of `path` when group or others may use it (a key, token or password
/// file that must be its owner's alone, as ssh demands of a private key); `None` when it is
/// owner-only. Each caller says what the file is and what to do.
pub fn loose_mode(path: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}
