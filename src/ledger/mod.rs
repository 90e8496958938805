//! The façade: commands are validated against the catalog, sealed, chained and appended in one
//! write transaction together with the catalog rows they change; reads come from the log.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::catalog::{self, namespace, Catalog, ListQuery, SecretMeta, SinkConfig, SnapshotEncoder, Status};
use crate::crypto::{DataKey, FingerprintKey, KeyEpochs, MasterKey, SecretValues, SinkSealKey};
use crate::error::{Error, Result};
use crate::event::{Event, Millis, Scope, SealedValues, SinkRole, StoredEvent};
use crate::log::{self, chain_next, EventLog, Head, NewEvent};
use crate::sink::{Capabilities, SinkUrl};
use crate::store::{EventQuery, Location, Read, Store, StoreLog, Write};
use crate::{validate, SecretId};

mod access;
mod append;
mod audit;
mod keys;
mod mac;
mod persist;
mod query;
mod verify;
mod witness;

pub use append::Request;
use append::*;
pub use audit::{AuditEntry, KeyChange, LabelChange, LogFilter};
pub(crate) use persist::open_values_at;
use persist::*;
pub use query::SecretPage;
pub use verify::Anchor;
pub use witness::{Verdict, WitnessedHead};

/// Per-ledger settings, fixed at `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerSettings {
    /// Largest allowed value map, as the JSON object sinks store.
    pub max_value_bytes: usize,
    /// A catalog snapshot is stored every this many events.
    pub snapshot_interval: u64,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            max_value_bytes: validate::DEFAULT_MAX_VALUE_BYTES,
            snapshot_interval: 10_000,
        }
    }
}

/// A mutation request. Each successful command becomes exactly one event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Command {
    Create {
        name: String,
        scope: Scope,
        labels: BTreeMap<String, String>,
        values: SecretValues,
    },
    /// Keys and labels not named keep their current values.
    Update {
        name: String,
        set_values: SecretValues,
        remove_keys: Vec<String>,
        set_labels: BTreeMap<String, String>,
        remove_labels: Vec<String>,
    },
    /// Create the secret, or replace all its values and labels if a live one has that name.
    Put {
        name: String,
        scope: Scope,
        labels: BTreeMap<String, String>,
        values: SecretValues,
    },
    Rename {
        name: String,
        new_name: String,
    },
    /// Soft delete: recoverable with `Undelete`.
    Delete {
        name: String,
    },
    Undelete {
        name: String,
    },
    /// Crypto-shred: destroy the data key; no version can be read again.
    Purge {
        name: String,
    },
    /// Attach a sink. Its URL must not carry credentials.
    AddSink {
        name: String,
        url: String,
        role: SinkRole,
    },
    /// Change a sink's role (not to or from primary: see `PromoteSink`).
    SetSinkRole {
        name: String,
        role: SinkRole,
    },
    /// Make a sink the primary; the old primary becomes a backup.
    PromoteSink {
        name: String,
    },
    /// Detach a sink (never the primary). Its backend is left as it is.
    RemoveSink {
        name: String,
    },
    /// Issue an API token; only its keyed hash is recorded.
    IssueToken {
        name: String,
        role: crate::identity::Role,
        patterns: Vec<String>,
        expires_at: Option<Millis>,
        token: crate::identity::TokenSecret,
    },
    /// Revoke an API token: refused from its next request on.
    RevokeToken {
        name: String,
    },
    /// Accept the ledger as it is although sinks witnessed a later head (it was put back from
    /// an older copy): anchors written before this are no longer believed, and the next
    /// projection into each sink overwrites its anchor.
    ResetAnchors,
    /// Record that sink `name` is about to be made to match the ledger although it holds
    /// objects beyond the ledger's head (`reconcile --force-ledger`).
    ForceSink {
        name: String,
    },
    /// Record, as a new ledger's first event, that it is being rebuilt from what the sink at
    /// `source` holds (`sledger recover`).
    RecordRecovery {
        source: String,
    },
    /// Bring back a secret a sink holds, under its own id and owner (recovery): the sink's
    /// object then stays the same object.
    Recover {
        id: SecretId,
        name: String,
        scope: Scope,
        owner: String,
        labels: BTreeMap<String, String>,
        values: SecretValues,
    },
    /// Record that the commands after it restore the state after `target_seq` (so the audit
    /// log says what a burst of compensating events was for).
    RecordRestore {
        target_seq: u64,
        /// The head the restore was planned against: if the log moved on since, the plan is
        /// stale and the whole transaction is refused.
        planned_at: u64,
    },
}

/// What a command did.
#[derive(Debug, Clone)]
pub enum Outcome {
    Appended {
        seq: u64,
        event_type: &'static str,
        secret: SecretMeta,
    },
    /// An update that changed nothing appends nothing.
    Unchanged { secret: SecretMeta },
    /// A sink was added, changed role, or removed.
    SinkChanged {
        seq: u64,
        event_type: &'static str,
        name: String,
    },
    /// Another ledger-level event (a restore's record).
    Recorded { seq: u64, event_type: &'static str },
}

impl Outcome {
    /// The seq of the event this outcome appended, if it appended one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Outcome::Appended { seq, .. }
            | Outcome::SinkChanged { seq, .. }
            | Outcome::Recorded { seq, .. } => Some(*seq),
            Outcome::Unchanged { .. } => None,
        }
    }

    /// Whether it is about a secret (appended to or left unchanged), not a sink or a record.
    pub fn is_about_a_secret(&self) -> bool {
        matches!(self, Outcome::Appended { .. } | Outcome::Unchanged { .. })
    }

    /// The outcome as the CLI's `--format json` and the API show it: the secret's metadata
    /// with `result` (`verb`, or `unchanged`) and `seq`, or the sink or record it changed.
    pub fn to_json(&self, verb: &str) -> serde_json::Value {
        use serde_json::json;
        match self {
            Outcome::Appended { seq, secret, .. } => {
                let mut v = secret.to_json();
                v["result"] = json!(verb);
                v["seq"] = json!(seq);
                v
            }
            Outcome::Unchanged { secret } => {
                let mut v = secret.to_json();
                v["result"] = json!("unchanged");
                v["seq"] = serde_json::Value::Null;
                v
            }
            Outcome::SinkChanged {
                seq,
                event_type,
                name,
            } => {
                json!({"result": verb, "event_type": event_type, "sink": name, "seq": seq})
            }
            Outcome::Recorded { seq, event_type } => {
                json!({"result": verb, "event_type": event_type, "seq": seq})
            }
        }
    }
}

/// Which version of a secret to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPoint {
    Latest,
    Version(u32),
    /// The state as of this time (unix ms).
    At(Millis),
}

/// A secret's values at some point, with the metadata as of that point.
#[derive(Debug, Clone)]
pub struct SecretRead {
    pub meta: SecretMeta,
    pub version: u32,
    /// Seq of the event that wrote these values.
    pub seq: u64,
    pub recorded_at: Millis,
    pub values: SecretValues,
}

struct Keys {
    master: MasterKey,
    fingerprint: FingerprintKey,
    sink_seal: SinkSealKey,
    mac: crate::crypto::EventMac,
    epochs: KeyEpochs,
    /// The sink seal key a rotation in this process replaced: it still opens what the sqlite
    /// sinks hold until [`crate::keys::reseal_sinks`] seals it again.
    previous_sink_seal: Option<SinkSealKey>,
}

impl Keys {
    fn values(&self) -> ValueKeys<'_> {
        ValueKeys {
            master: &self.master,
            epochs: &self.epochs,
        }
    }
}

/// What opens a secret's values: the master key (which unwraps its data key) and the epochs
/// of the key rotations since.
#[derive(Clone, Copy)]
pub(crate) struct ValueKeys<'a> {
    pub master: &'a MasterKey,
    pub epochs: &'a KeyEpochs,
}

/// The setting holding the value epochs of the ledger's key rotations.
pub(crate) const VALUE_EPOCHS: &str = "value_epochs";

/// An open ledger.
pub struct Ledger {
    store: Box<dyn Store>,
    location: Location,
    settings: LedgerSettings,
    keys: Option<Keys>,
    /// Why the catalog could not be rebuilt (a damaged log); audit and verify still work.
    catalog_unusable: Option<String>,
    /// The head the last [`Ledger::execute`] or [`Ledger::execute_group`] committed.
    committed_head: Option<u64>,
    /// Sinks opened by [`Ledger::open_sink`], kept for reuse, by name (with their attachment).
    opened_sinks: std::sync::Mutex<OpenedSinks>,
}

/// Sinks by name, each with the attachment it was opened under.
type OpenedSinks = HashMap<String, (SinkConfig, std::sync::Arc<dyn crate::sink::Sink>)>;

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("location", &self.location)
            .field("unlocked", &self.keys.is_some())
            .finish()
    }
}

/// Current time in unix milliseconds.
pub fn now_ms() -> Millis {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as Millis
}

/// Prefix of a reference to a secret by id (`id:<uuid>`), which no name can start with (`:` is
/// not allowed in names): it picks one secret exactly, whatever it is called now.
pub const ID_REF_PREFIX: &str = "id:";

impl Ledger {
    /// Create a new ledger at `location`, sealed under `master`. Refuses an existing one; on
    /// any failure after creating it, removes it again, so nothing half-made is left behind.
    pub fn init(
        location: impl Into<Location>,
        master: MasterKey,
        settings: LedgerSettings,
    ) -> Result<Ledger> {
        let location = location.into();
        let store = location.create()?;
        let settings = LedgerSettings {
            snapshot_interval: settings.snapshot_interval.max(1),
            ..settings
        };
        let fingerprint = FingerprintKey::generate();
        // Unwrapped again so the key carries the form sqlite sinks keep beside their data.
        let sink_seal = master.unwrap_sink_seal_key(&master.wrap_sink_seal_key(&SinkSealKey::generate()))?;
        let keys = Keys {
            master,
            mac: fingerprint.event_mac(),
            fingerprint,
            sink_seal,
            epochs: KeyEpochs::default(),
            previous_sink_seal: None,
        };
        let written = (|| -> Result<()> {
            let tx = Write::begin(&*store)?;
            tx.set_setting("ledger_id", uuid::Uuid::now_v7().to_string().as_bytes())?;
            tx.set_setting_int("created_at", now_ms())?;
            tx.set_setting("key_check", keys.master.key_check().as_slice())?;
            tx.set_setting(
                "fingerprint_key",
                &keys.master.wrap_fingerprint_key(&keys.fingerprint, None, &[]),
            )?;
            tx.set_setting(
                "sink_seal_key",
                keys.sink_seal.wrapped().expect("unwrapped above"),
            )?;
            tx.set_setting_int("max_value_bytes", settings.max_value_bytes as i64)?;
            tx.set_setting_int("snapshot_interval", settings.snapshot_interval as i64)?;
            tx.set_setting_int("catalog_seq", 0)?;
            tx.commit()
        })();
        if let Err(e) = written {
            drop(store);
            location.remove_created();
            return Err(e);
        }
        Ok(Ledger {
            store,
            location,
            settings,
            keys: Some(keys),
            catalog_unusable: None,
            committed_head: None,
            opened_sinks: Default::default(),
        })
    }

    /// Open an existing ledger without a key: enough for `verify`, `log` and `history`.
    /// Call [`Ledger::unlock`] before reading values or writing.
    pub fn open(location: impl Into<Location>) -> Result<Ledger> {
        let location = location.into();
        let store = location.open()?;
        if store.setting_int(crate::store::copy::COPY_UNFINISHED)? == Some(1) {
            return Err(Error::Corrupt(format!(
                "{location} is a copy that `sledger ledger copy` has not finished (it was stopped): it holds \
                 only part of the log; run the same `sledger ledger copy --to {location}` again to finish it"
            )));
        }
        let settings = LedgerSettings {
            max_value_bytes: store
                .setting_int("max_value_bytes")?
                .ok_or_else(|| Error::Corrupt("ledger settings are missing".into()))?
                as usize,
            snapshot_interval: store.setting_int("snapshot_interval")?.unwrap_or(10_000).max(1) as u64,
        };
        let mut ledger = Ledger {
            store,
            location,
            settings,
            keys: None,
            catalog_unusable: None,
            committed_head: None,
            opened_sinks: Default::default(),
        };
        if let Err(e) = ledger.ensure_catalog() {
            if e.class() != crate::ErrorClass::Integrity {
                return Err(e);
            }
            tracing::warn!(error = %e, "the catalog cannot be rebuilt from this log");
            ledger.catalog_unusable = Some(e.to_string());
        }
        Ok(ledger)
    }

    /// Open and unlock in one step.
    pub fn open_with_key(location: impl Into<Location>, master: MasterKey) -> Result<Ledger> {
        let mut ledger = Ledger::open(location)?;
        ledger.unlock(master)?;
        Ok(ledger)
    }

    /// Check that `master` is this ledger's key and keep it for reads and writes, after checking
    /// the MACs of what was appended since the last key holder's write.
    pub fn unlock(&mut self, master: MasterKey) -> Result<()> {
        self.unlock_keys(master, true)
    }

    /// Unlock for [`Ledger::verify`], which checks every MAC itself and so reports the first
    /// bad seq, not the first one after the trusted point.
    pub fn unlock_to_verify(&mut self, master: MasterKey) -> Result<()> {
        self.unlock_keys(master, false)
    }

    fn unlock_keys(&mut self, master: MasterKey, check_tail: bool) -> Result<()> {
        if !self.key_matches(&master)? {
            return Err(Error::WrongKey);
        }
        match self.unlock_matching(master.clone(), check_tail) {
            // Another process rotated the key between the check and the reads: not damage,
            // and opening again with the new key works.
            Err(_) if !self.key_matches(&master)? => Err(Error::KeyRotated),
            result => result,
        }
    }

    fn unlock_matching(&mut self, master: MasterKey, check_tail: bool) -> Result<()> {
        let macs_from = mac::recorded_start(&*self.store)?;
        let stored_epochs = self.store.setting(VALUE_EPOCHS)?.unwrap_or_default();
        let fingerprint = master
            .unwrap_fingerprint_key(
                &required_setting(&*self.store, "fingerprint_key")?,
                macs_from,
                &stored_epochs,
            )
            .map_err(|_| {
                Error::Corrupt(match macs_from {
                    None => "the record of where event MACs start was removed from the ledger: events may have been forged since".into(),
                    Some(seq) => format!(
                        "the record of where event MACs start (seq {seq}), or of the key rotations' value epochs, \
                         was changed: events may have been forged"
                    ),
                })
            })?;
        let epochs = KeyEpochs::load(&master, &stored_epochs)?;
        let sink_seal = match self.store.setting("sink_seal_key")? {
            Some(wrapped) => master.unwrap_sink_seal_key(&wrapped)?,
            // Ledgers made before sinks existed get their sink key on first unlock.
            None => {
                let wrapped = master.wrap_sink_seal_key(&SinkSealKey::generate());
                let tx = Write::begin(&*self.store)?;
                tx.set_setting("sink_seal_key", &wrapped)?;
                tx.commit()?;
                master.unwrap_sink_seal_key(&wrapped)?
            }
        };
        let keys = Keys {
            mac: fingerprint.event_mac().with_epochs(&epochs),
            master,
            fingerprint,
            sink_seal,
            epochs,
            previous_sink_seal: None,
        };
        // Whatever was appended since the last key holder's write must be a key holder's too.
        if check_tail {
            let _snapshot = Read::begin(&*self.store)?;
            mac::check_since_trusted(&*self.store, &keys.mac)?;
        }
        self.keys = Some(keys);
        Ok(())
    }

    /// Does `master` open this ledger? (Without keeping it.)
    pub fn key_matches(&self, master: &MasterKey) -> Result<bool> {
        Ok(master.checks(&self.key_check()?))
    }

    /// What identifies the current master key (not secret: a MAC of a constant under it).
    pub(crate) fn key_check(&self) -> Result<Vec<u8>> {
        required_setting(&*self.store, "key_check")
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn settings(&self) -> LedgerSettings {
        self.settings
    }

    pub fn ledger_id(&self) -> Result<String> {
        String::from_utf8(required_setting(&*self.store, "ledger_id")?)
            .map_err(|_| Error::Corrupt("ledger_id is not text".into()))
    }

    fn keys(&self) -> Result<&Keys> {
        need_keys(self.keys.as_ref())
    }

    /// The store, for the projector and read modules of this crate.
    pub(crate) fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The key this ledger was unlocked with, for opening further connections to it in this
    /// process (a [`LedgerHandle`](crate::LedgerHandle), the projector service).
    pub fn master_key(&self) -> Result<&MasterKey> {
        Ok(&self.keys()?.master)
    }

    /// What opens secrets' values (needs the key).
    pub(crate) fn value_keys(&self) -> Result<ValueKeys<'_>> {
        Ok(self.keys()?.values())
    }

    /// The sink seal key a key rotation in this process replaced, if one did.
    pub(crate) fn previous_sink_seal(&self) -> Result<Option<SinkSealKey>> {
        let ledgers = self.sink_file_ledgers()?;
        Ok(self
            .keys()?
            .previous_sink_seal
            .as_ref()
            .map(|k| k.for_ledgers(ledgers)))
    }

    /// Connect to an attached sink by name (needs the key: local sinks seal values with it).
    /// A ledger keeps the sinks it opened (connections, plug-in processes, a sqlite sink's
    /// thread) for the next call, as long as the attachment is the same.
    pub fn open_sink(&self, name: &str) -> Result<(SinkConfig, std::sync::Arc<dyn crate::sink::Sink>)> {
        let config = self.sink_config(name)?;
        let mut opened = self.opened_sinks.lock().expect("not poisoned");
        if let Some((attached, sink)) = opened.get(name) {
            if *attached == config {
                return Ok((config, sink.clone()));
            }
        }
        let sink = SinkUrl::parse(&config.url)
            .and_then(|url| url.open(&self.sink_seal()?))
            .map_err(|e| e.in_sink(name))?;
        let sink: std::sync::Arc<dyn crate::sink::Sink> =
            std::sync::Arc::new(crate::sink::layer::Named::new(sink, name));
        opened.insert(name.to_owned(), (config.clone(), sink.clone()));
        Ok((config, sink))
    }

    /// Open a sink by URL with this ledger's sink key (for replays into unattached sinks).
    pub fn open_sink_url(&self, url: &str) -> Result<std::sync::Arc<dyn crate::sink::Sink>> {
        SinkUrl::parse(url)?.open(&self.sink_seal()?)
    }

    /// The key sealing values in sqlite sinks, for this ledger's files (and, recovered, for the
    /// files of the ledger it was recovered from, whose seal key it adopted), with the master
    /// key as its KMS wrapped it, when a KMS holds it, for the files to keep.
    fn sink_seal(&self) -> Result<SinkSealKey> {
        let escrow = match self.key_provider()? {
            Some((kms, wrapped_master)) => Some(crate::crypto::KeyEscrow {
                kms,
                wrapped_master,
                ledger_id: self.ledger_id()?,
            }),
            None => None,
        };
        Ok(self
            .keys()?
            .sink_seal
            .for_ledgers(self.sink_file_ledgers()?)
            .with_escrow(escrow))
    }

    /// The ledgers whose sqlite sink files this one opens: itself, and the ledger it was
    /// recovered from, if any.
    fn sink_file_ledgers(&self) -> Result<Vec<String>> {
        let mut ledgers = vec![self.ledger_id()?];
        if let Some(from) = self.store.setting("recovered_from_ledger")? {
            ledgers.push(String::from_utf8_lossy(&from).into_owned());
        }
        Ok(ledgers)
    }

    /// The attached sinks, by name.
    pub fn sinks(&self) -> Result<BTreeMap<String, SinkConfig>> {
        sinks_from_log(&*self.store)
    }

    pub fn sink_config(&self, name: &str) -> Result<SinkConfig> {
        self.sinks()?.remove(name).ok_or_else(|| Error::SinkNotFound {
            name: name.to_owned(),
        })
    }

    /// The last event of the log.
    pub fn head(&self) -> Result<Head> {
        self.store.head()
    }

    /// The log seen through [`EventLog`].
    pub fn log(&self) -> StoreLog<'_> {
        StoreLog(&*self.store)
    }

    /// The store, for catalog queries; refused when the log could not be folded.
    fn catalog(&self) -> Result<&dyn Store> {
        match &self.catalog_unusable {
            None => Ok(&*self.store),
            Some(why) => Err(Error::Corrupt(format!(
                "{why}; run `sledger verify` to find the damage"
            ))),
        }
    }
}
