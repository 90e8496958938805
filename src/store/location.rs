//! Where a ledger lives: an SQLite file (the embedded default) or a PostgreSQL database.

use std::path::{Path, PathBuf};

use super::Store;
use crate::error::{Error, Result};

/// A ledger's store, as `--ledger` / `SLEDGER_LEDGER` name it: a path, or a `postgres://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    #[cfg(feature = "postgres")]
    Postgres(Box<super::postgres::PgUrl>),
}

impl Location {
    /// A path, or a `postgres://` / `postgresql://` URL (checked: no password in it).
    pub fn parse(text: &str) -> Result<Location> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Ok(Location::Postgres(Box::new(super::postgres::PgUrl::parse(text)?)));
            #[cfg(not(feature = "postgres"))]
            return Err(Error::invalid(
                "this build of sledger has no PostgreSQL support; build it with the `postgres` feature",
            ));
        }
        if text.contains("://") {
            return Err(Error::invalid(format!(
                "unsupported ledger URL {:?}: give a file path or a postgres:// URL",
                text.split("://").next().unwrap_or_default()
            )));
        }
        Ok(Location::File(PathBuf::from(text)))
    }

    /// The file, for an SQLite ledger.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Location::File(path) => Some(path),
            #[cfg(feature = "postgres")]
            Location::Postgres(_) => None,
        }
    }

    /// Open the existing ledger's store.
    pub fn open(&self) -> Result<Box<dyn Store>> {
        Ok(match self {
            Location::File(path) => Box::new(super::sqlite::SqliteStore::open(path)?),
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => Box::new(super::postgres::PgStore::open(url)?),
        })
    }

    /// Create a new, empty store with the current schema; refuses one that exists.
    pub fn create(&self) -> Result<Box<dyn Store>> {
        Ok(match self {
            Location::File(path) => Box::new(super::sqlite::SqliteStore::create(path)?),
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => Box::new(super::postgres::PgStore::create(url)?),
        })
    }

    /// Undo a creation that failed half-way (only ever after [`Location::create`] succeeded).
    pub fn remove_created(&self) {
        match self {
            Location::File(path) => super::sqlite::SqliteStore::remove_files(path),
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => super::postgres::PgStore::remove(url),
        }
    }

    /// Whether a ledger (or anything else) is already there.
    pub fn exists(&self) -> bool {
        match self {
            Location::File(path) => path.exists(),
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => super::postgres::PgStore::open(url).is_ok(),
        }
    }
}

impl Location {
    /// A counter that moves when an append commits, from any connection or process, where
    /// the store can signal it (PostgreSQL's LISTEN/NOTIFY); `None` where followers must poll.
    pub fn watch_appends(&self) -> Result<Option<tokio::sync::watch::Receiver<u64>>> {
        match self {
            Location::File(_) => Ok(None),
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => super::postgres::watch_appends(url).map(Some),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl std::str::FromStr for Location {
    type Err = Error;
    fn from_str(text: &str) -> Result<Location> {
        Location::parse(text)
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::File(path.to_path_buf())
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Self {
        Location::File(path)
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Self {
        Location::File(path.clone())
    }
}
