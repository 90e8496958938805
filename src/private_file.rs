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
