//! Where the master key comes from (DESIGN §14), named by a URI (`--master-key` /
//! `SLEDGER_MASTER_KEY_URI`):
//!
//! - `file:///path`: a key file (mode 0600), as `init` writes it;
//! - `env:VAR`: base64 in an environment variable;
//! - a KMS that wraps it: `vault-transit://HOST:PORT/MOUNT/KEY` (Vault/OpenBao Transit),
//!   `aws-kms://REGION/KEY_ID_OR_ALIAS` (AWS KMS),
//!   `gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K` (Google Cloud KMS) and
//!   `azure-kv-key://VAULT_HOST/keys/NAME[/VERSION]` (Azure Key Vault or Managed HSM).
//!
//! With a KMS the ledger keeps the master key only as the KMS wrapped it (settings
//! `master_key_provider` and `master_key_wrapped`), bound to the ledger's id (Transit's
//! context, KMS's encryption context), so a wrapped key copied into another ledger opens
//! nothing. It is unwrapped once per process; a long-running server keeps the key it unwrapped.

#[cfg(feature = "aws")]
mod aws_kms;
#[cfg(feature = "azure")]
mod azure_key;
#[cfg(feature = "gcp")]
mod gcp_kms;
#[cfg(feature = "vault")]
mod vault_transit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::ledger::Ledger;

/// The environment variable `--master-key` reads.
pub const MASTER_KEY_URI_ENV: &str = "SLEDGER_MASTER_KEY_URI";

/// A KMS key that wraps and unwraps master keys. Calls block the caller (they run on the
/// library's I/O runtime), so they work inside an async runtime or outside one.
pub trait KeyWrapper: Send + Sync {
    /// The URI this key was named by (recorded in the ledger; never a secret).
    fn uri(&self) -> &str;
    /// `key` encrypted under the KMS key, bound to `ledger_id`.
    fn wrap(&self, key: &MasterKey, ledger_id: &str) -> Result<Vec<u8>>;
    /// The key [`KeyWrapper::wrap`] wrapped for `ledger_id`. A KMS that cannot be reached is a
    /// temporary error (exit 7); one that refuses (access denied, disabled key, another
    /// ledger's wrap) is [`Error::KeyUnavailable`] (exit 6) naming the key and the refusal.
    fn unwrap(&self, wrapped: &[u8], ledger_id: &str) -> Result<MasterKey>;
}

impl std::fmt::Debug for dyn KeyWrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.uri())
    }
}

/// A parsed `--master-key` URI.
pub enum KeySource {
    File(PathBuf),
    Env(String),
    Kms(Box<dyn KeyWrapper>),
}

impl KeySource {
    pub fn parse(uri: &str) -> Result<KeySource> {
        if let Some(path) = uri.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::invalid(format!(
                    "{uri:?}: a file:// key URI takes an absolute path, like file:///etc/sledger/ledger.key"
                )));
            }
            return Ok(KeySource::File(PathBuf::from(path)));
        }
        if let Some(var) = uri.strip_prefix("env:") {
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::invalid(format!(
                    "{uri:?}: name a variable, like env:SLEDGER_MASTER_KEY"
                )));
            }
            return Ok(KeySource::Env(var.to_owned()));
        }
        let scheme = uri.split("://").next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "vault")]
            "vault-transit" => Ok(KeySource::Kms(Box::new(vault_transit::TransitKey::parse(uri)?))),
            #[cfg(feature = "aws")]
            "aws-kms" => Ok(KeySource::Kms(Box::new(aws_kms::KmsKey::parse(uri)?))),
            #[cfg(feature = "gcp")]
            "gcp-kms" => Ok(KeySource::Kms(Box::new(gcp_kms::CloudKmsKey::parse(uri)?))),
            #[cfg(feature = "azure")]
            "azure-kv-key" => Ok(KeySource::Kms(Box::new(azure_key::VaultKey::parse(uri)?))),
            _ => Err(Error::invalid(format!(
                "{uri:?} is not a master-key URI (of a KMS this build supports): use file:///PATH, env:VAR, vault-transit://HOST:PORT/MOUNT/KEY, aws-kms://REGION/KEY, gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K or azure-kv-key://VAULT_HOST/keys/NAME"
            ))),
        }
    }
}

/// The KMS named by `uri` (a file or variable is not one).
pub fn kms(uri: &str) -> Result<Box<dyn KeyWrapper>> {
    match KeySource::parse(uri)? {
        KeySource::Kms(kms) => Ok(kms),
        _ => Err(Error::invalid(format!(
            "{uri:?} names a key file or variable, not a KMS key"
        ))),
    }
}

/// The master key as the KMS `ledger` records unwraps it (or `kms_override`, the same key
/// reached another way); `None` when no KMS holds it.
pub fn recorded_key(ledger: &Ledger, kms_override: Option<&str>) -> Result<Option<MasterKey>> {
    let Some((recorded, wrapped)) = ledger.key_provider()? else {
        return Ok(None);
    };
    let kms = kms(kms_override.unwrap_or(&recorded))?;
    kms.unwrap(&wrapped, &ledger.ledger_id()?).map(Some)
}

/// Unlock `ledger`: with the KMS it records, else with the key file (finishing an interrupted
/// rotation, see [`crate::keyfile`]).
pub fn unlock(ledger: &mut Ledger, key_file: &Path, kms_override: Option<&str>) -> Result<()> {
    match recorded_key(ledger, kms_override)? {
        Some(master) => ledger.unlock(master),
        None => crate::keyfile::unlock(ledger, key_file),
    }
}

/// `sledger key rotate` for a ledger whose master key a KMS holds: a new master key, wrapped by
/// that KMS (or `kms_override`, the same key reached another way) and committed with the
/// rewrap. Returns the KMS URI and how many data keys were re-wrapped; `None` when no KMS
/// holds the key (rotate the key file instead, [`crate::keyfile::rotate`]).
pub fn rotate_in_kms(
    ledger: &mut Ledger,
    actor: &str,
    kms_override: Option<&str>,
) -> Result<Option<(String, u64)>> {
    let Some((recorded, _)) = ledger.key_provider()? else {
        return Ok(None);
    };
    let kms = kms(kms_override.unwrap_or(&recorded))?;
    let new = MasterKey::generate();
    let wrapped = kms.wrap(&new, &ledger.ledger_id()?)?;
    let rewrapped = ledger.rotate_key_in_kms(actor, new, &wrapped)?;
    Ok(Some((recorded, rewrapped)))
}

/// Where the master key being rotated came from, and so where its successor goes.
#[derive(Debug, Clone, Copy)]
pub enum RotateFrom<'a> {
    /// A key file: rotated in place, unless a KMS holds the ledger's key (it wraps the new one).
    KeyFile(&'a Path),
    /// The environment (`SLEDGER_MASTER_KEY`), which this process cannot change: the new key is
    /// written to a new file at `new_key_file`, for the operator to move into the environment.
    Environment { new_key_file: &'a Path },
}

/// Where the new master key is.
#[derive(Debug, Clone)]
pub enum NewKeyAt {
    /// Wrapped by this KMS key, inside the ledger.
    Kms(String),
    File(PathBuf),
}

/// What [`rotate`] did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// Data keys re-wrapped under the new master key.
    pub data_keys: u64,
    pub key: NewKeyAt,
    pub resealed: Resealed,
}

/// `sledger key rotate`: a new master key, kept where the old one was ([`RotateFrom`]), every
/// data key re-wrapped under it in one commit, then every sqlite sink's objects sealed again
/// ([`reseal_sinks`]), so that the replaced key opens nothing from now on.
pub async fn rotate(
    ledger: &mut Ledger,
    actor: &str,
    from: RotateFrom<'_>,
    kms_override: Option<&str>,
) -> Result<Rotated> {
    let (data_keys, key) = match from {
        RotateFrom::KeyFile(key_file) => match rotate_in_kms(ledger, actor, kms_override)? {
            Some((uri, data_keys)) => (data_keys, NewKeyAt::Kms(uri)),
            None => (
                crate::keyfile::rotate(ledger, key_file, actor)?,
                NewKeyAt::File(key_file.to_owned()),
            ),
        },
        RotateFrom::Environment { new_key_file } => {
            let mut persist = |new: &MasterKey| new.write_new_file(new_key_file);
            (
                ledger.rotate_key(actor, MasterKey::generate(), &mut persist)?,
                NewKeyAt::File(new_key_file.to_owned()),
            )
        }
    };
    let resealed = reseal_sinks(ledger).await?;
    Ok(Rotated {
        data_keys,
        key,
        resealed,
    })
}

/// Where a long-running process (a server, `project --follow`) finds the master key again
/// after another process rotated it: the key file or KMS it started from. Called on a
/// blocking thread; the key it returns has opened the ledger.
#[derive(Clone)]
pub struct KeyReloader(std::sync::Arc<dyn Fn() -> Result<MasterKey> + Send + Sync>);

impl KeyReloader {
    pub fn new(reload: impl Fn() -> Result<MasterKey> + Send + Sync + 'static) -> Self {
        KeyReloader(std::sync::Arc::new(reload))
    }

    /// The key that opens the ledger now.
    pub fn load(&self) -> Result<MasterKey> {
        (self.0)()
    }

    /// After a rotation: [`KeyReloader::load`] on a blocking thread, once. `None`, with a
    /// warning, while the new key cannot be loaded yet (its file not renamed into place, a
    /// KMS not answering); `None` too when the runtime is shutting down.
    pub async fn reload_after_rotation(&self) -> Option<MasterKey> {
        let reload = self.clone();
        match tokio::task::spawn_blocking(move || reload.load()).await {
            Ok(Ok(key)) => Some(key),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the master key was rotated; its new key cannot be loaded yet");
                None
            }
            Err(e) if e.is_cancelled() => None,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl std::fmt::Debug for KeyReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyReloader")
    }
}

/// What [`reseal_sinks`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Resealed {
    /// Objects sealed again under the new sink seal key.
    pub objects: u64,
    /// Sinks holding objects the replaced key did not open (an earlier run was interrupted,
    /// or they were damaged), or that could not be sealed again at all (`failed`): `reconcile`
    /// rewrites those from the ledger.
    pub to_reconcile: Vec<String>,
    /// Sinks that could not be sealed again (a missing file, an outage), with the error.
    pub failed: BTreeMap<String, String>,
}

/// After [`Ledger::rotate_key`] (or a rotation in a KMS) in this process: seal every object of
/// every attached sqlite sink again, at its own seq, under the ledger's new sink seal key, so
/// that the replaced master key opens nothing those sinks hold. The sinks' projectors wait
/// meanwhile. Nothing to do without such a rotation.
///
/// The primary goes first, and a sink that fails does not stop the others: the rotation has
/// committed, and each sink left behind serves nothing until it is reconciled.
pub async fn reseal_sinks(ledger: &Ledger) -> Result<Resealed> {
    let mut done = Resealed::default();
    let Some(previous) = ledger.previous_sink_seal()?.map(|k| k.unrecorded()) else {
        return Ok(done);
    };
    let mut sinks: Vec<_> = ledger.sinks()?.into_values().collect();
    sinks.sort_by_key(|s| s.role != crate::event::SinkRole::Primary);
    for config in sinks {
        match reseal_sink(ledger, &config.name, &config.url, &previous).await {
            Ok(None) => {}
            Ok(Some((objects, unreadable))) => {
                done.objects += objects;
                if unreadable {
                    done.to_reconcile.push(config.name);
                }
            }
            Err(e) => {
                done.failed.insert(config.name.clone(), e.to_string());
                done.to_reconcile.push(config.name);
            }
        }
    }
    Ok(done)
}

/// Seal one sink's objects again: how many, and whether some did not open with `previous`.
/// `None` for a sink that is not a sqlite file.
async fn reseal_sink(
    ledger: &Ledger,
    name: &str,
    url: &str,
    previous: &crate::crypto::SinkSealKey,
) -> Result<Option<(u64, bool)>> {
    use crate::sink::{SinkUrl, ANCHOR_ID};
    let url = SinkUrl::parse(url)?;
    if url.sqlite_path().is_none() {
        return Ok(None);
    }
    let _projectors_wait = crate::project::lock_sink_writes(ledger, name, &Default::default()).await?;
    let sealed_before = url.open(previous)?;
    let (_, sink) = ledger.open_sink(name)?;
    let ids = sealed_before.list().await?.into_iter().map(|e| e.id);
    let (mut objects, mut unreadable) = (0, false);
    for id in ids.chain([ANCHOR_ID]) {
        match sealed_before.get(id).await {
            Ok(Some(record)) => {
                sink.put(&record).await?;
                objects += 1;
            }
            Ok(None) => {}
            Err(e) if e.is_temporary() => return Err(e),
            Err(_) => unreadable = true,
        }
    }
    Ok(Some((objects, unreadable)))
}

/// What [`migrate`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Migrated {
    /// Where the master key is held now.
    pub to: String,
    /// The key file that held the key in the clear, removed once a KMS held it.
    pub removed_key_file: Option<PathBuf>,
}

/// Wrap `ledger`'s master key with `kms` and record that the KMS holds it (in the log).
pub(crate) fn hold_in(ledger: &mut Ledger, actor: &str, kms: &dyn KeyWrapper) -> Result<()> {
    let master = ledger.master_key()?.clone();
    let ledger_id = ledger.ledger_id()?;
    let wrapped = kms.wrap(&master, &ledger_id)?;
    // A key that may encrypt but not decrypt would lock the ledger: try it first.
    kms.unwrap(&wrapped, &ledger_id)?;
    ledger.migrate_key(actor, kms.uri(), Some(&wrapped))
}

/// `sledger key migrate --to URI`: move the (unchanged) master key of an unlocked `ledger` into
/// a KMS, or out of one into a new key file. Crash-safe: the wrapped key and its `key.migrated`
/// event commit together; a key file is written before that commit (moving out of a KMS) or
/// removed after it (moving in: `key_file`, if it holds this key), so at every instant the
/// ledger opens with the old holder or the new one.
pub fn migrate(ledger: &mut Ledger, actor: &str, to: &str, key_file: &Path) -> Result<Migrated> {
    let master = ledger.master_key()?.clone();
    let in_kms = ledger.key_provider()?.is_some();
    match KeySource::parse(to)? {
        KeySource::Kms(kms) => {
            hold_in(ledger, actor, &*kms)?;
            let holds_this_key = !in_kms
                && MasterKey::read_file(key_file).is_ok_and(|k| k.key_id() == master.key_id());
            let removed_key_file = holds_this_key
                .then(|| std::fs::remove_file(key_file).map(|()| key_file.to_path_buf()))
                .transpose()
                .map_err(|e| {
                    Error::io(
                        format!(
                            "the KMS holds the master key now, but its old key file {} could not be removed; remove it",
                            key_file.display()
                        ),
                        e,
                    )
                })?;
            Ok(Migrated {
                to: kms.uri().to_owned(),
                removed_key_file,
            })
        }
        KeySource::File(path) => {
            if !in_kms {
                return Err(Error::invalid(
                    "the master key is not held by a KMS: it is already a key file (or SLEDGER_MASTER_KEY); migrate to a vault-transit://, aws-kms://, gcp-kms:// or azure-kv-key:// key",
                ));
            }
            master.write_new_file(&path)?;
            ledger.migrate_key(actor, to, None).inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            })?;
            Ok(Migrated {
                to: to.to_owned(),
                removed_key_file: None,
            })
        }
        KeySource::Env(_) => Err(Error::invalid(
            "a master key migrates to a KMS or to a key file (file:///PATH); to keep it in the environment, migrate to a file and export it from there",
        )),
    }
}

/// A refusal by the KMS: the key named, the reason as the KMS gave it.
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault"))]
pub(crate) fn refused(uri: &str, reason: impl std::fmt::Display) -> Error {
    Error::KeyUnavailable(format!("the KMS key {uri} refused: {reason}"))
}

/// A KMS that did not answer.
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault"))]
pub(crate) fn unreachable(kind: &str, uri: &str, reason: impl std::fmt::Display) -> Error {
    Error::KmsUnreachable(format!("{kind}: the KMS key {uri} cannot be reached: {reason}"))
}

/// `SCHEME://LOCATION?QUERY` as (location, query) for a KMS URI of `scheme`.
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault"))]
fn split_uri<'a>(uri: &'a str, scheme: &str) -> Option<(&'a str, &'a str)> {
    let rest = uri.strip_prefix(scheme)?.strip_prefix("://")?;
    Some(rest.split_once('?').unwrap_or((rest, "")))
}

/// The URL of the sink whose server, TLS and credential options a KMS URI shares (and so its
/// credential-refusal rules).
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault"))]
fn sink_url(scheme: &str, location: &str, query: &str) -> String {
    match query {
        "" => format!("{scheme}://{location}"),
        query => format!("{scheme}://{location}?{query}"),
    }
}

/// The master key's raw bytes, for a KMS to encrypt.
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault"))]
fn raw(key: &MasterKey) -> zeroize::Zeroizing<Vec<u8>> {
    use base64::Engine;
    zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(key.to_base64().as_bytes())
            .expect("a key's base64 decodes"),
    )
}

#[cfg(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault"))]
fn from_raw(bytes: &[u8], uri: &str) -> Result<MasterKey> {
    use base64::Engine;
    let text = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes));
    MasterKey::from_base64(&text).map_err(|_| refused(uri, "what it unwrapped is not a sledger master key"))
}
