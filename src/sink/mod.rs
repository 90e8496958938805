//! Sinks: the places workloads read secrets from, written only by projectors and replays.
//!
//! A sink stores each secret as one object named `prefix + secret id` (never its human name),
//! with name, scope, labels and the ledger seq it reflects as metadata, and the values as the
//! JSON object of the secret's key/values. A sink touches only objects under its prefix.
//!
//! Sinks are named by URL; [`SinkUrl::parse`] is the one place URLs are read, and it refuses
//! URLs that carry credentials: those come from the backend's own credential chain.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
mod exec;
mod foreign;
pub mod layer;
#[cfg(feature = "gcp")]
pub mod gcp;
mod memory;
mod sqlite;
#[cfg(any(feature = "gcp", feature = "azure"))]
mod tagged;
#[cfg(feature = "vault")]
pub mod vault;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use exec::ExecSink;
pub use foreign::{values_from_text, ForeignSecrets};
pub use memory::MemorySink;
pub use sqlite::SqliteSink;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::crypto::{SecretValues, SinkSealKey};
use crate::error::{Error, Result};
use crate::event::Scope;
use crate::SecretId;

/// Default object-name prefix.
pub const DEFAULT_PREFIX: &str = "sledger-";

/// What a sink can hold and how hard it may be driven. The ledger checks every write against
/// the capabilities of every attached sink *before* appending it, so nothing is recorded that
/// some sink would have to park.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Largest value map, as the JSON object stored.
    pub max_value_bytes: usize,
    /// Largest record metadata (name, scope, owner, labels, version, seq as the JSON of
    /// [`RecordMeta`]) the backend's tags, labels or description can carry.
    pub max_meta_bytes: usize,
    /// Largest single metadata field: the name, the owner, or the labels as one JSON object
    /// (Vault caps each custom-metadata value).
    pub max_field_bytes: usize,
    /// Whether a soft delete can be undone in the backend itself.
    pub soft_delete: bool,
    /// Whether the backend refuses a write conditioned on what it holds (check-and-set, a
    /// transaction): without one, two writers can interleave, and one process at a time
    /// applies the sink's batches.
    pub conditional_write: bool,
    /// How many requests a projector may have in flight against this sink.
    pub max_concurrency: usize,
}

impl Capabilities {
    /// A sink that holds whatever the ledger allows (sqlite, exec, memory).
    pub fn unlimited(max_concurrency: usize) -> Self {
        Capabilities {
            max_value_bytes: usize::MAX,
            max_meta_bytes: usize::MAX,
            max_field_bytes: usize::MAX,
            soft_delete: true,
            conditional_write: true,
            max_concurrency,
        }
    }

    /// Check that a secret with this metadata and a value map of `value_bytes` fits; the
    /// error names the limit (the caller adds which sink).
    pub fn check_fits(&self, meta: &RecordMeta, value_bytes: usize) -> std::result::Result<(), LimitExceeded> {
        if value_bytes > self.max_value_bytes {
            return Err(LimitExceeded {
                what: "its values as JSON",
                size: value_bytes,
                limit: self.max_value_bytes,
            });
        }
        if self.max_meta_bytes == usize::MAX && self.max_field_bytes == usize::MAX {
            return Ok(());
        }
        let meta_bytes = serde_json::to_vec(meta).expect("metadata serialises").len();
        if meta_bytes > self.max_meta_bytes {
            return Err(LimitExceeded {
                what: "its name, owner and labels as metadata",
                size: meta_bytes,
                limit: self.max_meta_bytes,
            });
        }
        let labels = serde_json::to_vec(&meta.labels).expect("labels serialise").len();
        let field = labels.max(meta.name.len()).max(meta.owner.len());
        if field > self.max_field_bytes {
            return Err(LimitExceeded {
                what: "its largest metadata field (the labels as JSON, the name or the owner)",
                size: field,
                limit: self.max_field_bytes,
            });
        }
        Ok(())
    }
}

/// Which limit of [`Capabilities`] a secret exceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    pub what: &'static str,
    pub size: usize,
    pub limit: usize,
}

/// How to delete an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// Recoverable where the backend supports it.
    Soft,
    /// Gone for good.
    Purge,
}

/// One secret as a sink holds it. Debug never shows values.
#[derive(Clone, PartialEq, Eq)]
pub struct SinkRecord {
    pub id: SecretId,
    pub name: String,
    pub scope: Scope,
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    /// The ledger seq this record reflects.
    pub seq: u64,
    pub version: u32,
    pub values: SecretValues,
}

impl fmt::Debug for SinkRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("seq", &self.seq)
            .field("version", &self.version)
            .field("values", &self.values)
            .finish()
    }
}

/// Metadata of a record, as it travels beside the values (JSON in every backend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    pub id: SecretId,
    pub name: String,
    pub scope: Scope,
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    pub seq: u64,
    pub version: u32,
}

impl SinkRecord {
    pub fn meta(&self) -> RecordMeta {
        RecordMeta {
            id: self.id,
            name: self.name.clone(),
            scope: self.scope,
            owner: self.owner.clone(),
            labels: self.labels.clone(),
            seq: self.seq,
            version: self.version,
        }
    }

    /// The record a backend object holds: `meta` from its metadata, at `seq`, and the values
    /// from its stored JSON. An object holding anything else is an error naming `object`
    /// (never quoting its text).
    pub(crate) fn from_stored(
        kind: &str,
        object: &str,
        meta: RecordMeta,
        seq: u64,
        json: &[u8],
    ) -> Result<Self> {
        let values = SecretValues::from_json(json).ok_or_else(|| {
            Error::sink(
                kind,
                format!("{object} does not hold a JSON object of strings"),
                false,
            )
        })?;
        Ok(Self::from_meta(RecordMeta { seq, ..meta }, values))
    }

    pub fn from_meta(meta: RecordMeta, values: SecretValues) -> Self {
        SinkRecord {
            id: meta.id,
            name: meta.name,
            scope: meta.scope,
            owner: meta.owner,
            labels: meta.labels,
            seq: meta.seq,
            version: meta.version,
            values,
        }
    }
}

/// What `list` reports: which secret, at which seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SinkEntry {
    pub id: SecretId,
    pub seq: u64,
}

/// A backend holding the current values of secrets.
///
/// Contract (checked for every implementation by [`conformance`]):
/// - `put` stores the record under `prefix + id`; putting the same record twice leaves the same
///   state, and a record with a lower seq than the stored one must not overwrite it.
/// - `get` returns what `put` stored, or `None` for an absent or deleted object.
/// - `delete` carries the seq of the deleting event and leaves a tombstone at that seq, so a
///   `put` with a lower seq arriving late (another projector still applying an older batch)
///   cannot bring a deleted or purged secret back. Deleting an absent object is `Ok`. After a
///   soft delete `get` returns `None` and a `put` with a higher seq brings the object back;
///   after a purge nothing of its values remains, only the tombstone.
/// - `list` returns every live object under this sink's prefix, and nothing else.
/// - Nothing outside the prefix is ever listed, changed or deleted.
/// - Errors are [`Error::Sink`]; `temporary` ones (network, throttling, 5xx) may be retried.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug + 'static {
    /// Short kind name: "memory", "sqlite", "exec", …
    fn kind(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    async fn put(&self, record: &SinkRecord) -> Result<()>;
    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>>;
    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()>;
    async fn list(&self) -> Result<Vec<SinkEntry>>;
    async fn health(&self) -> Result<()>;
}

/// The object name of a secret under a prefix.
pub fn object_name(prefix: &str, id: SecretId) -> String {
    format!("{prefix}{id}")
}

/// One async lock per object, for sinks whose write is more than one request (the values,
/// then the metadata carrying the seq): writes to one object from this process take turns.
#[derive(Default)]
pub(crate) struct ObjectLocks(
    std::sync::Mutex<std::collections::HashMap<SecretId, Arc<tokio::sync::Mutex<()>>>>,
);

impl ObjectLocks {
    pub(crate) async fn lock(&self, id: SecretId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}

/// A parsed sink URL: the backend and how hard any sledger process may drive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkUrl {
    pub backend: Backend,
    /// `max_rps=N`: at most N sink operations per second from one process (the backend's quota).
    pub max_rps: Option<u32>,
}

/// Where a sink's objects live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Memory {
        store: String,
        prefix: String,
        max_concurrency: usize,
    },
    Sqlite {
        path: PathBuf,
        prefix: String,
        max_concurrency: usize,
    },
    Exec {
        program: PathBuf,
        args: Vec<String>,
        prefix: String,
        max_concurrency: usize,
    },
    #[cfg(feature = "vault")]
    Vault(vault::VaultConfig),
    #[cfg(feature = "aws")]
    Aws(aws::AwsConfig),
    #[cfg(feature = "gcp")]
    Gcp(gcp::GcpConfig),
    #[cfg(feature = "azure")]
    Azure(azure::AzureConfig),
}

fn bad_url(url: &str, why: impl fmt::Display) -> Error {
    Error::InvalidInput(format!("invalid sink URL {:?}: {why}", redacted(url)))
}

/// Query parameters whose values are credentials: refused, and never echoed.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "password",
    "secret",
    "secret_id",
    "secret-id",
    "access_key",
    "secret_key",
    "key",
    "credentials",
];

/// `url` with any user info and every parameter value other than `prefix`,
/// `max_concurrency` and `max_rps` replaced by `***`, so an error about a URL never repeats a credential,
/// whatever the parameter carrying it is called.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (location, query) = rest.split_once('?').map_or((rest, None), |(l, q)| (l, Some(q)));
    let location = match location.rsplit_once('@') {
        Some((_, host)) if !location.starts_with('/') => format!("***@{host}"),
        _ => location.to_owned(),
    };
    let mut out = if scheme.is_empty() {
        location
    } else {
        format!("{scheme}://{location}")
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if !matches!(k, "prefix" | "max_concurrency" | "max_rps") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

const CREDENTIALS_HINT: &str = "credentials never go in a sink URL (it is recorded in the ledger); \
they come from the backend's own chain (environment, profile, instance identity) or from \
environment variables named in the sink configuration";

/// Split `a=b&c=d` into pairs, percent-decoding values.
fn query_pairs(url: &str, query: &str) -> Result<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((k.to_owned(), percent_decode(url, v)?))
        })
        .collect()
}

fn percent_decode(url: &str, s: &str) -> Result<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s.as_bytes()[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .ok_or_else(|| bad_url(url, "a % escape is cut short"))?;
                let byte = u8::from_str_radix(hex, 16)
                    .map_err(|_| bad_url(url, format!("%{hex} is not a valid escape")))?;
                out.push(byte);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad_url(url, "an escape does not decode to UTF-8"))
}

impl SinkUrl {
    /// The `sqlite://` URL of an absolute path, escaping what the parser would otherwise read
    /// as a query or an escape (`%`, `?`, `#`, `&`).
    pub fn sqlite_url(path: &Path) -> String {
        let mut url = String::from("sqlite://");
        for c in path.to_string_lossy().chars() {
            match c {
                '%' | '?' | '#' | '&' => url.push_str(&format!("%{:02X}", c as u32)),
                c => url.push(c),
            }
        }
        url
    }

    /// Parse and check a sink URL.
    pub fn parse(url: &str) -> Result<SinkUrl> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad_url(url, "expected SCHEME://…, e.g. sqlite:///var/lib/sledger/sink.db"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        // Network URLs name a host; file URLs (sqlite, exec) start with the path, where an
        // `@` is just a character. A password may hold `/`, so look at the whole location.
        if !location.starts_with('/') && location.contains('@') {
            return Err(bad_url(
                url,
                format!("it carries user:password@; {CREDENTIALS_HINT}"),
            ));
        }
        let pairs = query_pairs(url, query)?;
        if let Some((k, _)) = pairs
            .iter()
            .find(|(k, _)| SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()))
        {
            return Err(bad_url(
                url,
                format!("the {k}= parameter would put a credential in the ledger; {CREDENTIALS_HINT}"),
            ));
        }
        let mut prefix = DEFAULT_PREFIX.to_owned();
        let mut max_concurrency = None;
        let mut max_rps = None;
        let mut args = Vec::new();
        let (mut tls, mut ca_file) = (true, None);
        let (mut endpoint, mut recovery_days) = (None, 7);
        #[cfg(feature = "gcp")]
        let mut old_versions = gcp::OldVersions::Disable;
        for (k, v) in &pairs {
            match k.as_str() {
                "prefix" => {
                    if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                        return Err(bad_url(
                            url,
                            "prefix must be non-empty letters, digits and - _ . /",
                        ));
                    }
                    prefix = v.clone();
                }
                "max_concurrency" => {
                    max_concurrency = Some(
                        v.parse::<usize>()
                            .ok()
                            .filter(|n| (1..=256).contains(n))
                            .ok_or_else(|| bad_url(url, "max_concurrency must be a number from 1 to 256"))?,
                    )
                }
                "max_rps" => {
                    max_rps = Some(
                        v.parse::<u32>()
                            .ok()
                            .filter(|n| (1..=100_000).contains(n))
                            .ok_or_else(|| bad_url(url, "max_rps must be a number from 1 to 100000"))?,
                    )
                }
                "arg" if scheme == "exec" => args.push(v.clone()),
                "tls" if scheme == "vault" => match v.as_str() {
                    "on" => tls = true,
                    "off" => tls = false,
                    _ => return Err(bad_url(url, "tls must be on or off")),
                },
                "ca-file" if matches!(scheme, "vault" | "azure-kv") => ca_file = Some(PathBuf::from(v)),
                "endpoint" if matches!(scheme, "aws-sm" | "gcp-sm") => {
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(bad_url(url, "endpoint must be an http:// or https:// URL"));
                    }
                    endpoint = Some(v.clone());
                }
                "recovery_days" if scheme == "aws-sm" => {
                    recovery_days = v
                        .parse::<i64>()
                        .ok()
                        .filter(|d| (7..=30).contains(d))
                        .ok_or_else(|| {
                            bad_url(url, "recovery_days must be a number from 7 to 30 (AWS's limits)")
                        })?
                }
                #[cfg(feature = "gcp")]
                "old_versions" if scheme == "gcp-sm" => {
                    old_versions = match v.as_str() {
                        "disable" => gcp::OldVersions::Disable,
                        "destroy" => gcp::OldVersions::Destroy,
                        "keep" => gcp::OldVersions::Keep,
                        _ => return Err(bad_url(url, "old_versions must be disable, destroy or keep")),
                    }
                }
                other => return Err(bad_url(url, format!("unknown parameter {other:?}"))),
            }
        }
        let backend = match scheme {
            "memory" => Ok(Backend::Memory {
                store: location.to_owned(),
                prefix,
                max_concurrency: max_concurrency.unwrap_or(16),
            }),
            "sqlite" | "exec" => {
                if !location.starts_with('/') || location.len() < 2 {
                    return Err(bad_url(
                        url,
                        format!("expected an absolute path: {scheme}:///absolute/path"),
                    ));
                }
                let path = PathBuf::from(percent_decode(url, location)?);
                Ok(if scheme == "sqlite" {
                    Backend::Sqlite {
                        path,
                        prefix,
                        max_concurrency: max_concurrency.unwrap_or(64),
                    }
                } else {
                    Backend::Exec {
                        program: path,
                        args,
                        prefix,
                        max_concurrency: max_concurrency.unwrap_or(16),
                    }
                })
            }
            #[cfg(feature = "vault")]
            "vault" => {
                let (host, mount) = location.split_once('/').unwrap_or((location, ""));
                let mount = mount.trim_end_matches('/');
                if host.is_empty() || mount.is_empty() {
                    return Err(bad_url(
                        url,
                        "expected vault://HOST:PORT/MOUNT, e.g. vault://vault.internal:8200/secret",
                    ));
                }
                Ok(Backend::Vault(vault::VaultConfig {
                    address: format!("{}://{host}", if tls { "https" } else { "http" }),
                    mount: mount.to_owned(),
                    prefix,
                    ca_file,
                    max_concurrency: max_concurrency.unwrap_or(16),
                }))
            }
            #[cfg(feature = "aws")]
            "aws-sm" => {
                if location.is_empty() || location.contains('/') {
                    return Err(bad_url(url, "expected aws-sm://REGION, e.g. aws-sm://eu-west-1"));
                }
                Ok(Backend::Aws(aws::AwsConfig {
                    region: location.to_owned(),
                    endpoint,
                    prefix,
                    recovery_days,
                    max_concurrency: max_concurrency.unwrap_or(16),
                }))
            }
            #[cfg(feature = "gcp")]
            "gcp-sm" => {
                if location.is_empty()
                    || !location
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-:.".contains(c))
                {
                    return Err(bad_url(
                        url,
                        "expected gcp-sm://PROJECT_ID, e.g. gcp-sm://my-project",
                    ));
                }
                if !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
                {
                    return Err(bad_url(
                        url,
                        "a Secret Manager prefix may hold only letters, digits, - and _",
                    ));
                }
                let longest = gcp::MAX_NAME_CHARS - SecretId::nil().to_string().len();
                if prefix.len() > longest {
                    return Err(bad_url(
                        url,
                        format!("Secret Manager names hold 255 characters, so the prefix may have at most {longest}"),
                    ));
                }
                Ok(Backend::Gcp(gcp::GcpConfig {
                    project: location.to_owned(),
                    endpoint,
                    prefix,
                    old_versions,
                    max_concurrency: max_concurrency.unwrap_or(16),
                }))
            }
            #[cfg(feature = "azure")]
            "azure-kv" => {
                if location.is_empty() || location.contains('/') {
                    return Err(bad_url(
                        url,
                        "expected azure-kv://VAULT_HOST, e.g. azure-kv://myvault.vault.azure.net",
                    ));
                }
                if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    return Err(bad_url(
                        url,
                        "a Key Vault prefix may hold only letters, digits and -",
                    ));
                }
                let longest = azure::MAX_NAME_CHARS - SecretId::nil().to_string().len();
                if prefix.len() > longest {
                    return Err(bad_url(
                        url,
                        format!(
                            "Key Vault names hold 127 characters, so the prefix may have at most {longest}"
                        ),
                    ));
                }
                Ok(Backend::Azure(azure::AzureConfig {
                    vault_host: location.to_owned(),
                    ca_file,
                    prefix,
                    max_concurrency: max_concurrency.unwrap_or(16),
                }))
            }
            #[cfg(not(feature = "azure"))]
            "azure-kv" => Err(bad_url(
                url,
                "this build has no azure-kv sink (cargo feature `azure`)",
            )),
            #[cfg(not(feature = "gcp"))]
            "gcp-sm" => Err(bad_url(
                url,
                "this build has no gcp-sm sink (cargo feature `gcp`)",
            )),
            #[cfg(not(feature = "vault"))]
            "vault" => Err(bad_url(
                url,
                "this build has no vault sink (cargo feature `vault`)",
            )),
            #[cfg(not(feature = "aws"))]
            "aws-sm" => Err(bad_url(
                url,
                "this build has no aws-sm sink (cargo feature `aws`)",
            )),
            other => Err(bad_url(
                url,
                format!(
                    "unknown scheme {other:?}; known: memory, sqlite, exec, vault, aws-sm, gcp-sm, azure-kv"
                ),
            )),
        }?;
        Ok(SinkUrl { backend, max_rps })
    }

    /// Whether two URLs write the same objects: the same backend and prefix, whatever the
    /// spelling of the path or the tuning parameters (`max_concurrency`).
    pub fn same_objects(&self, other: &SinkUrl) -> bool {
        fn canonical(path: &Path) -> PathBuf {
            let parent = path.parent().and_then(|d| std::fs::canonicalize(d).ok());
            match (parent, path.file_name()) {
                (Some(dir), Some(file)) => dir.join(file),
                _ => path.to_path_buf(),
            }
        }
        match (&self.backend, &other.backend) {
            (
                Backend::Memory {
                    store: a, prefix: pa, ..
                },
                Backend::Memory {
                    store: b, prefix: pb, ..
                },
            ) => a == b && pa == pb,
            (
                Backend::Sqlite {
                    path: a, prefix: pa, ..
                },
                Backend::Sqlite {
                    path: b, prefix: pb, ..
                },
            ) => canonical(a) == canonical(b) && pa == pb,
            (
                Backend::Exec {
                    program: a,
                    args: aa,
                    prefix: pa,
                    ..
                },
                Backend::Exec {
                    program: b,
                    args: ab,
                    prefix: pb,
                    ..
                },
            ) => canonical(a) == canonical(b) && aa == ab && pa == pb,
            #[cfg(feature = "vault")]
            (Backend::Vault(a), Backend::Vault(b)) => {
                let host = |c: &vault::VaultConfig| c.address.split_once("://").map(|(_, h)| h.to_owned());
                host(a) == host(b) && a.mount == b.mount && a.prefix == b.prefix
            }
            #[cfg(feature = "aws")]
            (Backend::Aws(a), Backend::Aws(b)) => {
                a.region == b.region && a.endpoint == b.endpoint && a.prefix == b.prefix
            }
            #[cfg(feature = "gcp")]
            (Backend::Gcp(a), Backend::Gcp(b)) => {
                a.project == b.project && a.endpoint == b.endpoint && a.prefix == b.prefix
            }
            #[cfg(feature = "azure")]
            (Backend::Azure(a), Backend::Azure(b)) => a.vault_host == b.vault_host && a.prefix == b.prefix,
            _ => false,
        }
    }

    /// Capabilities known from the URL alone (no connection), used to enforce limits before
    /// anything is appended.
    pub fn capabilities(&self) -> Capabilities {
        match &self.backend {
            // Local sinks take any size the ledger allows; cloud sinks bring their limits.
            Backend::Memory { max_concurrency, .. }
            | Backend::Sqlite { max_concurrency, .. }
            | Backend::Exec { max_concurrency, .. } => Capabilities::unlimited(*max_concurrency),
            #[cfg(feature = "vault")]
            Backend::Vault(config) => config.capabilities(),
            #[cfg(feature = "aws")]
            Backend::Aws(config) => config.capabilities(),
            #[cfg(feature = "gcp")]
            Backend::Gcp(config) => config.capabilities(),
            #[cfg(feature = "azure")]
            Backend::Azure(config) => config.capabilities(),
        }
    }

    /// The backend's own secrets, for adopting them (`import --from`).
    pub fn open_foreign(&self) -> Result<Arc<dyn ForeignSecrets>> {
        match &self.backend {
            #[cfg(feature = "vault")]
            Backend::Vault(config) => Ok(Arc::new(vault::VaultSink::new(config.clone()))),
            #[cfg(feature = "aws")]
            Backend::Aws(config) => Ok(Arc::new(aws::AwsSink::new(config.clone()))),
            #[cfg(feature = "gcp")]
            Backend::Gcp(config) => Ok(Arc::new(gcp::GcpSink::new(config.clone()))),
            #[cfg(feature = "azure")]
            Backend::Azure(config) => Ok(Arc::new(azure::AzureSink::new(config.clone()))),
            _ => Err(Error::InvalidInput(
                "import --from reads a vault://, aws-sm://, gcp-sm:// or azure-kv:// backend; \
                     sledger's own sinks are filled from a ledger with `sledger replay`"
                    .into(),
            )),
        }
    }

    /// Connect. `seal_key` seals values at rest in sinks that store them locally (sqlite).
    pub fn open(&self, seal_key: &SinkSealKey) -> Result<Arc<dyn Sink>> {
        let sink: Arc<dyn Sink> = match &self.backend {
            Backend::Memory {
                store,
                prefix,
                max_concurrency,
            } => Arc::new(MemorySink::named(store, prefix, *max_concurrency)),
            Backend::Sqlite {
                path,
                prefix,
                max_concurrency,
            } => Arc::new(SqliteSink::open(
                path,
                prefix,
                seal_key.clone(),
                *max_concurrency,
            )?),
            Backend::Exec {
                program,
                args,
                prefix,
                max_concurrency,
            } => Arc::new(ExecSink::new(program, args, prefix, *max_concurrency)),
            #[cfg(feature = "vault")]
            Backend::Vault(config) => Arc::new(vault::VaultSink::new(config.clone())),
            #[cfg(feature = "aws")]
            Backend::Aws(config) => Arc::new(aws::AwsSink::new(config.clone())),
            #[cfg(feature = "gcp")]
            Backend::Gcp(config) => Arc::new(gcp::GcpSink::new(config.clone())),
            #[cfg(feature = "azure")]
            Backend::Azure(config) => Arc::new(azure::AzureSink::new(config.clone())),
        };
        Ok(layer::Layers {
            max_rps: self.max_rps,
            ..Default::default()
        }
        .wrap(sink))
    }
}

impl Error {
    /// A sink failure; `temporary` says whether retrying may help.
    pub fn sink(kind: &str, message: impl Into<String>, temporary: bool) -> Error {
        Error::Sink {
            kind: kind.to_owned(),
            message: message.into(),
            temporary,
        }
    }
}
