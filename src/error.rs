//! The library's one error type.
//!
//! Every variant says what went wrong and, where there is one, how to fix it. None of them ever
//! carries a secret value: only names, keys (the map keys, not key material), paths and sizes.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Broad classes of failure; the binary maps each to a documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The caller asked for something invalid (bad name, too large, nothing to do, ...).
    Invalid,
    /// The named secret, ledger or file does not exist.
    NotFound,
    /// Something with that name already exists.
    AlreadyExists,
    /// The ledger's contents do not check out (broken chain, corrupt row, bad anchor).
    Integrity,
    /// The master key is missing or does not open this ledger.
    Key,
    /// A backend (or the ledger database) is unreachable or busy; retrying may help.
    Unavailable,
    /// The file is not a sledger ledger, or it is one this build cannot read.
    Incompatible,
    /// A backend refused a request, and retrying will not help.
    Backend,
    /// An I/O or internal failure not covered above.
    Internal,
    /// A sink differs from the ledger, or a replay left objects it must not roll back.
    OutOfSync,
    /// No valid credentials were presented (server: missing, unknown, revoked or expired token).
    Unauthenticated,
    /// The caller is known but may not do this.
    Denied,
}

/// Everything that can go wrong in the sledger library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid secret name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error("invalid value key {key:?}: {reason}")]
    InvalidValueKey { key: String, reason: String },

    #[error("invalid label {key:?}: {reason}")]
    InvalidLabel { key: String, reason: String },

    #[error("value key {key:?} is given more than once; give each key once")]
    DuplicateValueKey { key: String },

    #[error("secret {name:?} would have no values; a secret needs at least one KEY=VALUE")]
    EmptySecret { name: String },

    #[error("secret {name:?} is {size} bytes as JSON, over the limit of {limit} bytes; split it into several secrets")]
    ValueTooLarge { name: String, size: usize, limit: usize },

    #[error("{0}")]
    InvalidInput(String),

    #[error("no secret named {name:?}{hint}")]
    SecretNotFound { name: String, hint: String },

    #[error("a live secret named {name:?} already exists in the {scope} scope; pick another name or rename the existing one")]
    AlreadyExists { name: String, scope: String },

    #[error("a sink named {name:?} is attached already; pick another name (`sledger sink list` shows them)")]
    SinkExists { name: String },

    #[error("a token named {name:?} was issued before ({state}); token names are never reused, since the name is the principal the audit log and private secrets name: pick another")]
    TokenExists { name: String, state: &'static str },

    #[error("token {name:?} is revoked already; nothing to do")]
    TokenRevokedAlready { name: String },

    #[error("secret {name:?} is live, not deleted; nothing to undelete")]
    NotDeleted { name: String },

    #[error("secret {name:?} was purged: its values were crypto-shredded and can never be read again")]
    Purged { name: String },

    #[error("no ledger at {path}; create one with `sledger init` or point --ledger / SLEDGER_LEDGER at an existing one")]
    LedgerNotFound { path: PathBuf },

    #[error("refusing to overwrite existing {what} at {path}; move it away or choose another path")]
    WouldOverwrite { what: &'static str, path: PathBuf },

    #[error("{path} is not a sledger ledger ({reason}); check --ledger / SLEDGER_LEDGER")]
    NotALedger { path: PathBuf, reason: String },

    #[error("{path} was written by a newer sledger (schema version {found}, this build knows up to {supported}); upgrade sledger to read it")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    #[error("the event log is broken at seq {seq}: {reason}")]
    ChainBroken { seq: u64, reason: String },

    #[error("the anchor does not match: {reason}")]
    AnchorMismatch { reason: String },

    /// A sink keeps state the ledger never wrote, beyond its head, which shadows the ledger's
    /// writes (see `DiffKind::Ahead`).
    #[error("sink {sink:?} did not take the write: {reason}")]
    SinkAhead { sink: String, reason: String },

    #[error("corrupt ledger data: {0}")]
    Corrupt(String),

    #[error("this key does not open this ledger; use the key file created by `sledger init` for it (or the key it was rotated to)")]
    WrongKey,

    #[error("the master key was rotated by another process since this one opened the ledger; run the command again")]
    KeyRotated,

    #[error("{0}")]
    NotFound(String),

    #[error("no master key: {0}")]
    KeyUnavailable(String),

    /// The KMS holding the master key did not answer; temporary.
    #[error("{0}")]
    KmsUnreachable(String),

    #[error("{kind} sink{}: {message}", .sink.as_ref().map(|name| format!(" {name:?}")).unwrap_or_default())]
    #[non_exhaustive]
    Sink {
        kind: String,
        /// The attached sink's name, where the call went through one (`Ledger::open_sink`).
        sink: Option<String>,
        message: String,
        temporary: bool,
    },

    #[error("sink {name:?} does not exist; `sledger sink list` shows the attached sinks")]
    SinkNotFound { name: String },

    #[error("secret {name:?} is {size} bytes as JSON, over the {limit}-byte limit of sink {sink:?}; split it or detach that sink")]
    TooLargeForSink {
        name: String,
        size: usize,
        limit: usize,
        sink: String,
    },

    #[error("secret {name:?} does not fit sink {sink:?}: {what} take {size} bytes, over its limit of {limit}; shorten them or detach that sink")]
    SinkLimit {
        name: String,
        sink: String,
        what: &'static str,
        size: usize,
        limit: usize,
    },

    #[error("{0}")]
    OutOfSync(String),

    #[error(
        "not authenticated: present a valid token (Authorization: Bearer …, SLEDGER_TOKEN or --token-file)"
    )]
    Unauthenticated,

    #[error("{principal} may not {what}; ask an admin for a token whose role and patterns allow it")]
    Denied { principal: String, what: String },

    #[error("no token named {name:?}; `sledger token list` shows the tokens there are")]
    TokenNotFound { name: String },

    #[error("the access log cannot be written ({reason}); no value is served until it can")]
    AccessLogUnavailable { reason: String },

    #[error("the ledger is closed for writes (the service is shutting down); retry against a running one")]
    Closed,

    #[error("the ledger is busy (another sledger process holds the write lock); retry in a moment")]
    Busy,

    #[error("the ledger changed while this {what} was being planned; run it again")]
    ChangedMeanwhile { what: &'static str },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("ledger database error: {0}")]
    Database(#[source] rusqlite::Error),

    /// The PostgreSQL ledger database failed or could not be reached (never carries a value).
    #[error("ledger database: {message}")]
    LedgerDatabase { message: String, temporary: bool },

    /// An error a `sledger serve` answered with (through [`crate::client::Client`]).
    #[error("{message}")]
    Remote { class: ErrorClass, message: String },

    #[error("ledger schema migration failed: {0}")]
    Migration(#[source] rusqlite_migration::Error),
}

impl Error {
    /// No secret of any status is called `name` (or has the id `id:<uuid>`).
    pub(crate) fn no_such_secret(name: &str) -> Error {
        Error::SecretNotFound {
            name: name.to_owned(),
            hint: "; `sledger secret list` shows the secrets there are".into(),
        }
    }

    /// The broad class of this error (what the binary turns into an exit code).
    pub fn class(&self) -> ErrorClass {
        use Error::*;
        match self {
            InvalidName { .. }
            | InvalidValueKey { .. }
            | InvalidLabel { .. }
            | DuplicateValueKey { .. }
            | EmptySecret { .. }
            | ValueTooLarge { .. }
            | InvalidInput(_)
            | TooLargeForSink { .. }
            | SinkLimit { .. } => ErrorClass::Invalid,
            SecretNotFound { .. }
            | LedgerNotFound { .. }
            | Purged { .. }
            | SinkNotFound { .. }
            | TokenNotFound { .. }
            | NotFound(_) => ErrorClass::NotFound,
            Unauthenticated => ErrorClass::Unauthenticated,
            Denied { .. } => ErrorClass::Denied,
            AccessLogUnavailable { .. } | KmsUnreachable(_) => ErrorClass::Unavailable,
            Sink { temporary: true, .. } => ErrorClass::Unavailable,
            Sink { temporary: false, .. } => ErrorClass::Backend,
            AlreadyExists { .. }
            | SinkExists { .. }
            | TokenExists { .. }
            | TokenRevokedAlready { .. }
            | NotDeleted { .. }
            | WouldOverwrite { .. } => ErrorClass::AlreadyExists,
            ChainBroken { .. } | AnchorMismatch { .. } | SinkAhead { .. } | Corrupt(_) => {
                ErrorClass::Integrity
            }
            WrongKey | KeyUnavailable(_) => ErrorClass::Key,
            // Another process's rotation, finished by now: retrying with the new key works.
            Busy | Closed | ChangedMeanwhile { .. } | KeyRotated => ErrorClass::Unavailable,
            NotALedger { .. } | NewerSchema { .. } => ErrorClass::Incompatible,
            LedgerDatabase { temporary: true, .. } => ErrorClass::Unavailable,
            Io { .. } | Database(_) | Migration(_) | LedgerDatabase { .. } => ErrorClass::Internal,
            OutOfSync(_) => ErrorClass::OutOfSync,
            Remote { class, .. } => *class,
        }
    }

    /// True when the same call may succeed if retried later (lock contention, network).
    pub fn is_temporary(&self) -> bool {
        matches!(self.class(), ErrorClass::Unavailable)
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                Error::Busy
            }
            Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase) => {
                Error::Corrupt(e.to_string())
            }
            _ => Error::Database(e),
        }
    }
}
