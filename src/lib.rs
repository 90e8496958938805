//! # sledger — an event-sourced secrets ledger
//!
//! Every change to a secret is appended to an immutable, hash-chained, encrypted event log in
//! SQLite. The log is the system of record: the catalog of current secrets is a pure fold of
//! it, and sinks (issue: sinks) are projections of it.
//!
//! * [`Ledger`] is the façade: commands in, events appended, reads out; [`LedgerHandle`]
//!   shares one between many tasks, with group commit.
//! * [`store`] is the storage seam: everything the ledger persists, behind one trait.
//! * [`replay::orchestrate`], [`project::service`], [`setup`] and [`import`] are the operations
//!   every front end calls (backup, migrate, continuous projection, init, adoption).
//! * [`session`] gives a front end one call per operation, against a local ledger or a server.
//! * [`event`] holds the event types, codec and hash chain; [`log`] the event log.
//! * [`crypto`] is the only module that touches ciphers.
//! * [`catalog`] folds events into current metadata, purely.
//!
//! The library never prints; it reports progress through callbacks.

pub mod access_log;
#[cfg(any(
    feature = "postgres",
    feature = "aws",
    feature = "gcp",
    feature = "azure",
    feature = "vault"
))]
mod blocking;
pub mod catalog;
#[cfg(feature = "client")]
pub mod client;
pub mod crypto;
pub mod error;
pub mod event;
#[cfg(test)]
mod fuzz;
pub mod handle;
pub mod identity;
pub mod import;
pub mod keyfile;
pub mod keys;
pub mod ledger;
pub mod log;
pub(crate) mod private_file;
pub mod project;
pub mod read;
pub mod recover;
pub mod replay;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "client")]
pub mod session;
pub mod setup;
pub mod sink;
pub mod store;
pub mod validate;
pub mod witness;

pub use catalog::{Catalog, ListQuery, SecretMeta, Status};
pub use crypto::{MasterKey, SecretValues};
pub use error::{Error, ErrorClass, Result};
pub use event::{Event, Scope, StoredEvent};
pub use handle::{Append, CommitStats, LedgerHandle, ReadAppend, ThroughHandle};
pub use ledger::{
    Anchor, AuditEntry, Command, KeyChange, Ledger, LedgerSettings, LogFilter, Outcome, ReadPoint, Request,
    SecretPage, SecretRead,
};

/// A secret's immutable id (UUIDv7).
pub type SecretId = uuid::Uuid;
