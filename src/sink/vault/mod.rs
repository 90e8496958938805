//! `vault://HOST:PORT/MOUNT?prefix=…`: HashiCorp Vault or OpenBao, KV version 2 (vaultrs).
//!
//! Each secret is the KV entry `MOUNT/data/<prefix><id>` holding its values; the entry's
//! `custom_metadata` carries name, scope, owner, labels, version and the ledger seq, plus
//! `deleted` for tombstones. Writes are check-and-set on the entry's current version, so two
//! writers never interleave silently; the seq in the metadata keeps older records out.
//! Soft delete deletes the latest version (recoverable with `vault kv undelete`); purge deletes
//! the metadata and every version, then leaves a tombstone (metadata only, no versions).
//!
//! Credentials: those the URL names for this sink alone ([`VaultCredentials`]: `token_env=`,
//! `token_file=`, or AppRole with `approle_mount=`, `role_id_env=` and `secret_id_env=` or
//! `secret_id_file=`), else `VAULT_TOKEN`, or AppRole with `VAULT_ROLE_ID` and
//! `VAULT_SECRET_ID` (`VAULT_APPROLE_MOUNT`, default `approle`); tokens with a TTL are renewed,
//! or logged in again, before they expire (`session`). `namespace=` is sent as
//! `X-Vault-Namespace` (Vault Enterprise, OpenBao). TLS by default; `tls=off` for a dev server on
//! loopback, `ca-file=/path/ca.pem` for a private CA.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use vaultrs::api::kv2::requests::{SetSecretMetadataRequest, SetSecretRequestOptions};
use vaultrs::client::VaultClient;
use vaultrs::error::ClientError;
use vaultrs::kv2;
use zeroize::Zeroizing;

mod session;

use session::Session;

use super::foreign::{is_sledger_object, ForeignSecrets};
use super::{object_id, object_name, Capabilities, DeleteMode, ObjectLocks, Sink, SinkEntry, SinkRecord};
use crate::crypto::SecretValues;
use crate::error::{Error, Result};
use crate::event::Scope;
use crate::SecretId;

/// Vault's default request size limit is 32 MiB; one secret stays far below it.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
const KIND: &str = "vault";
/// Check-and-set conflicts (another writer got in between) retried before giving up.
const CAS_ATTEMPTS: usize = 5;

/// Where and how to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    pub address: String,
    pub mount: String,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub max_concurrency: usize,
    pub namespace: Option<String>,
    pub credentials: VaultCredentials,
}

/// Where one sink's credentials come from: variable names and file paths, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VaultCredentials {
    /// `VAULT_TOKEN`, or AppRole through `VAULT_ROLE_ID`/`VAULT_SECRET_ID`.
    #[default]
    Process,
    TokenEnv(String),
    /// A file holding the token; it must not be readable by others.
    TokenFile(PathBuf),
    AppRole {
        mount: String,
        role_id_env: String,
        secret_id: SecretIdSource,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretIdSource {
    Env(String),
    File(PathBuf),
}

impl VaultCredentials {
    /// The source, in words, for errors.
    fn describe(&self) -> String {
        match self {
            VaultCredentials::Process => "VAULT_TOKEN or VAULT_ROLE_ID/VAULT_SECRET_ID".into(),
            VaultCredentials::TokenEnv(var) => format!("the token in ${var}"),
            VaultCredentials::TokenFile(path) => format!("the token in {}", path.display()),
            VaultCredentials::AppRole {
                mount, role_id_env, ..
            } => {
                format!("AppRole at {mount} with the role id in ${role_id_env}")
            }
        }
    }
}

impl VaultConfig {
    /// What such a sink holds and how hard it may be driven, known without connecting.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_bytes: MAX_VALUE_BYTES,
            // Each custom-metadata value holds 512 bytes (64 keys); sledger uses 7 keys.
            max_meta_bytes: usize::MAX,
            max_field_bytes: 512,
            soft_delete: true,
            conditional_write: true,
            max_concurrency: self.max_concurrency,
        }
    }
}

pub struct VaultSink {
    config: VaultConfig,
    session: Session,
    /// Writes to one object from this process go one at a time: the data write is
    /// check-and-set, but the metadata that carries the seq is written after it.
    writing: ObjectLocks,
}

impl std::fmt::Debug for VaultSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSink")
            .field("address", &self.config.address)
            .field("mount", &self.config.mount)
            .field("prefix", &self.config.prefix)
            .finish()
    }
}

/// Map a client error: server-side trouble and network failures are worth retrying; a
/// refusal (403, 400) is not.
/// [`failure`], saying which server and which credentials.
fn failure_at(config: &VaultConfig, what: &str, e: ClientError) -> Error {
    match failure(what, e) {
        Error::Sink {
            message, temporary, ..
        } => Error::sink(
            KIND,
            format!(
                "{message} ({}, as {})",
                config.address,
                config.credentials.describe()
            ),
            temporary,
        ),
        other => other,
    }
}

fn failure(what: &str, e: ClientError) -> Error {
    let temporary = match &e {
        ClientError::APIError { code, .. } => *code == 429 || *code >= 500,
        ClientError::RestClientError { .. } | ClientError::ResponseEmptyError => true,
        _ => false,
    };
    // The error list comes from the server and never holds request bodies.
    let detail = match &e {
        ClientError::APIError { code, errors } => format!("HTTP {code}: {}", errors.join("; ")),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    };
    Error::sink(KIND, format!("{what}: {detail}"), temporary)
}

fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::APIError { code: 404, .. })
}

/// What the entry's custom metadata says about the object.
struct Stored {
    /// Whether the current version is deleted or destroyed (or there is none).
    current_gone: bool,
    seq: u64,
    deleted: bool,
    version: u64,
    custom: HashMap<String, String>,
}

impl VaultSink {
    pub fn new(config: VaultConfig) -> Self {
        VaultSink {
            session: Session::new(config.clone()),
            config,
            writing: Default::default(),
        }
    }

    /// A client whose token is valid now (see `session`).
    pub(crate) async fn client(&self) -> Result<Arc<VaultClient>> {
        self.session.client().await
    }

    /// A client failure, with the server's address so an outage says where.
    fn failure(&self, what: &str, e: ClientError) -> Error {
        failure_at(&self.config, what, e)
    }

    fn path(&self, id: SecretId) -> String {
        object_name(&self.config.prefix, id)
    }

    async fn stored(&self, path: &str) -> Result<Option<Stored>> {
        let client = self.client().await?;
        let client = &*client;
        match kv2::read_metadata(client, &self.config.mount, path).await {
            Ok(m) => {
                let custom = m.custom_metadata.unwrap_or_default();
                let current = m.versions.get(&m.current_version.to_string());
                Ok(Some(Stored {
                    current_gone: current.is_none_or(|v| v.destroyed || !v.deletion_time.is_empty()),
                    seq: custom.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0),
                    deleted: custom.get("deleted").is_some_and(|d| d == "true"),
                    version: m.current_version,
                    custom,
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.failure(&format!("cannot read the metadata of {path}"), e)),
        }
    }

    async fn set_custom(&self, path: &str, custom: HashMap<String, String>) -> Result<()> {
        let client = self.client().await?;
        let client = &*client;
        let mut request = SetSecretMetadataRequest::builder();
        request.custom_metadata(custom);
        kv2::set_metadata(client, &self.config.mount, path, Some(&mut request))
            .await
            .map_err(|e| self.failure(&format!("cannot write the metadata of {path}"), e))
    }
}

fn tombstone(seq: u64) -> HashMap<String, String> {
    HashMap::from([
        ("seq".to_owned(), seq.to_string()),
        ("deleted".to_owned(), "true".to_owned()),
    ])
}

#[async_trait]
impl Sink for VaultSink {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        self.config.capabilities()
    }

    async fn put(&self, record: &SinkRecord) -> Result<()> {
        let path = self.path(record.id);
        let data: BTreeMap<&str, &str> = record.values.iter().collect();
        let custom = HashMap::from([
            ("seq".to_owned(), record.seq.to_string()),
            ("deleted".to_owned(), "false".to_owned()),
            ("name".to_owned(), record.name.clone()),
            ("scope".to_owned(), record.scope.to_string()),
            ("owner".to_owned(), record.owner.clone()),
            ("version".to_owned(), record.version.to_string()),
            (
                "labels".to_owned(),
                serde_json::to_string(&record.labels).expect("labels serialise"),
            ),
        ]);
        let _one_writer = self.writing.lock(record.id).await;
        for _ in 0..CAS_ATTEMPTS {
            let current = self.stored(&path).await?;
            if current.as_ref().is_some_and(|s| s.seq > record.seq) {
                return Ok(()); // a newer record or tombstone is there already
            }
            let cas = current.map_or(0, |s| s.version) as u32;
            let client = self.client().await?;
            let client = &*client;
            match kv2::set_with_options(
                client,
                &self.config.mount,
                &path,
                &data,
                SetSecretRequestOptions { cas },
            )
            .await
            {
                Ok(_) => return self.set_custom(&path, custom).await,
                // Another writer moved the entry on: look again.
                Err(ClientError::APIError { code: 400, errors })
                    if errors.iter().any(|e| e.contains("check-and-set")) =>
                {
                    continue
                }
                Err(e) => return Err(self.failure(&format!("cannot write {path}"), e)),
            }
        }
        Err(Error::sink(
            KIND,
            format!("{path} kept changing under concurrent writers"),
            true,
        ))
    }

    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        let path = self.path(id);
        let Some(stored) = self.stored(&path).await? else {
            return Ok(None);
        };
        if stored.deleted {
            return Ok(None);
        }
        let client = self.client().await?;
        let client = &*client;
        let data: BTreeMap<String, Zeroizing<String>> =
            match kv2::read(client, &self.config.mount, &path).await {
                Ok(data) => data,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(self.failure(&format!("cannot read {path}"), e)),
            };
        record_from(&path, id, stored.seq, &stored.custom, &data).map(Some)
    }

    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        let path = self.path(id);
        let _one_writer = self.writing.lock(id).await;
        let stored = self.stored(&path).await?;
        let client = self.client().await?;
        let client = &*client;
        if how == DeleteMode::Purge {
            // Every version goes, whatever the order of requests; the tombstone keeps the
            // higher of the two seqs.
            if stored.is_some() {
                kv2::delete_metadata(client, &self.config.mount, &path)
                    .await
                    .map_err(|e| self.failure(&format!("cannot purge {path}"), e))?;
            }
            return self
                .set_custom(&path, tombstone(stored.map_or(seq, |s| s.seq.max(seq))))
                .await;
        }
        match stored {
            Some(s) if s.seq > seq => Ok(()),
            Some(mut s) => {
                if s.version > 0 && !s.deleted {
                    kv2::delete_latest(client, &self.config.mount, &path)
                        .await
                        .map_err(|e| self.failure(&format!("cannot delete {path}"), e))?;
                }
                s.custom.extend(tombstone(seq));
                self.set_custom(&path, s.custom).await
            }
            None => self.set_custom(&path, tombstone(seq)).await,
        }
    }

    async fn erase(&self, id: SecretId) -> Result<()> {
        let path = self.path(id);
        let _one_writer = self.writing.lock(id).await;
        let client = self.client().await?;
        match kv2::delete_metadata(&*client, &self.config.mount, &path).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.failure(&format!("cannot erase {path}"), e)),
        }
    }

    async fn list(&self) -> Result<Vec<SinkEntry>> {
        // A prefix with `/` lives in a folder: list that folder.
        let dir = self
            .config
            .prefix
            .rsplit_once('/')
            .map_or(String::new(), |(d, _)| format!("{d}/"));
        let client = self.client().await?;
        let client = &*client;
        let keys = match kv2::list(client, &self.config.mount, &dir).await {
            Ok(keys) => keys,
            Err(e) if is_not_found(&e) => return Ok(vec![]),
            Err(e) => return Err(self.failure("cannot list the mount", e)),
        };
        let mut out = Vec::new();
        for key in keys {
            let key = format!("{dir}{key}");
            let Some(id) = object_id(&self.config.prefix, &key) else {
                continue;
            };
            if key != self.path(id) {
                continue; // another prefix that happens to start with this one
            }
            if let Some(stored) = self.stored(&key).await? {
                if !stored.deleted {
                    out.push(SinkEntry { id, seq: stored.seq });
                }
            }
        }
        Ok(out)
    }

    async fn identity(&self) -> Result<Option<String>> {
        let client = self.client().await?;
        match vaultrs::token::lookup_self(&*client).await {
            Ok(token) => Ok(Some(format!(
                "token {} (policies: {})",
                token.display_name,
                token.policies.join(", ")
            ))),
            // A token that may not look itself up still works; it just cannot say who it is.
            Err(ClientError::APIError { code: 403, .. }) => Ok(None),
            Err(e) => Err(self.failure("cannot look up this sink's token", e)),
        }
    }

    async fn health(&self) -> Result<()> {
        let client = self.client().await?;
        let client = &*client;
        match kv2::list(client, &self.config.mount, "").await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.failure("not healthy", e)),
        }
    }
}

#[async_trait]
impl ForeignSecrets for VaultSink {
    async fn names(&self, prefix: &str) -> Result<Vec<String>> {
        let client = self.client().await?;
        let client = &*client;
        let start = prefix
            .rsplit_once('/')
            .map_or(String::new(), |(d, _)| format!("{d}/"));
        let (mut out, mut folders) = (Vec::new(), vec![start]);
        while let Some(folder) = folders.pop() {
            let keys = match kv2::list(client, &self.config.mount, &folder).await {
                Ok(keys) => keys,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(self.failure(&format!("cannot list {folder}"), e)),
            };
            for key in keys {
                let path = format!("{folder}{key}");
                if path.ends_with('/') {
                    if path.starts_with(prefix) || prefix.starts_with(&path) {
                        folders.push(path);
                    }
                    continue;
                }
                if !path.starts_with(prefix) || is_sledger_object(&self.config.prefix, &path) {
                    continue;
                }
                // Written by sledger under another prefix (its metadata carries the seq), or
                // deleted in Vault (soft-deleted: `vault kv undelete` brings it back).
                if self
                    .stored(&path)
                    .await?
                    .is_none_or(|s| s.custom.contains_key("seq") || s.current_gone)
                {
                    continue;
                }
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn read(&self, name: &str) -> Result<Option<SecretValues>> {
        let client = self.client().await?;
        let client = &*client;
        let data: BTreeMap<String, serde_json::Value> =
            match kv2::read(client, &self.config.mount, name).await {
                Ok(data) => data,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(self.failure(&format!("cannot read {name}"), e)),
            };
        let mut values = SecretValues::new();
        for (k, v) in data {
            let v = Zeroizing::new(match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
            values.insert(k, v.as_str());
        }
        Ok((!values.is_empty()).then_some(values))
    }
}

/// `vault://HOST:PORT/MOUNT[?tls=off][&ca-file=PATH]`.
/// The record a KV entry holds: its values, and the metadata sledger keeps in the entry's
/// custom metadata (anything else there is refused, never quoted).
pub(crate) fn record_from(
    path: &str,
    id: SecretId,
    seq: u64,
    custom: &HashMap<String, String>,
    data: &BTreeMap<String, Zeroizing<String>>,
) -> Result<SinkRecord> {
    let mut values = SecretValues::new();
    for (k, v) in data {
        values.insert(k.as_str(), v.as_str());
    }
    let field = |k: &str| custom.get(k).cloned().unwrap_or_default();
    let broken = |what: &str| {
        Error::drifted(
            KIND,
            path,
            &format!("its custom metadata holds an unreadable {what}"),
        )
    };
    Ok(SinkRecord {
        id,
        name: field("name"),
        scope: match field("scope").as_str() {
            "private" => Scope::Private,
            "workspace" => Scope::Workspace,
            _ => {
                return Err(Error::drifted(
                    KIND,
                    path,
                    "its custom metadata holds a scope sledger does not know",
                ))
            }
        },
        owner: field("owner"),
        labels: serde_json::from_str(&field("labels")).map_err(|_| broken("labels"))?,
        seq,
        version: field("version").parse().map_err(|_| broken("version"))?,
        values,
    })
}

pub(super) fn from_url(parts: &mut super::url::UrlParts<'_>) -> Result<super::Backend> {
    let tls = match parts.take("tls").as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(_) => return Err(parts.bad("tls must be on or off")),
    };
    let ca_file = parts.take("ca-file").map(PathBuf::from);
    let (host, mount) = parts.location.split_once('/').unwrap_or((parts.location, ""));
    let mount = mount.trim_end_matches('/');
    if host.is_empty() || mount.is_empty() {
        return Err(parts.bad("expected vault://HOST:PORT/MOUNT, e.g. vault://vault.internal:8200/secret"));
    }
    if !tls && !super::url::is_loopback(host) {
        return Err(parts.bad(
            "tls=off is allowed only for a server on loopback (a dev server): anywhere else the \
             token and the values would cross the network in the clear",
        ));
    }
    let credentials = credentials_from_url(parts)?;
    Ok(super::Backend::Vault(VaultConfig {
        address: format!("{}://{host}", if tls { "https" } else { "http" }),
        mount: mount.to_owned(),
        prefix: parts.prefix.clone(),
        ca_file,
        max_concurrency: parts.concurrency(16),
        namespace: parts.take("namespace"),
        credentials,
    }))
}

fn credentials_from_url(parts: &mut super::url::UrlParts<'_>) -> Result<VaultCredentials> {
    let token_env = parts.take_env_name("token_env")?;
    let token_file = parts.take("token_file").map(PathBuf::from);
    let approle_mount = parts.take("approle_mount");
    let role_id_env = parts.take_env_name("role_id_env")?;
    let secret_id_env = parts.take_env_name("secret_id_env")?;
    let secret_id_file = parts.take("secret_id_file").map(PathBuf::from);
    let approle = approle_mount.is_some()
        || role_id_env.is_some()
        || secret_id_env.is_some()
        || secret_id_file.is_some();
    let chosen = [token_env.is_some(), token_file.is_some(), approle];
    if chosen.iter().filter(|c| **c).count() > 1 {
        return Err(parts.bad("token_env=, token_file= and AppRole (role_id_env=, …) are different credential sources; name one"));
    }
    Ok(match (token_env, token_file) {
        (Some(var), _) => VaultCredentials::TokenEnv(var),
        (_, Some(path)) => VaultCredentials::TokenFile(path),
        _ if approle => VaultCredentials::AppRole {
            mount: approle_mount.unwrap_or_else(|| "approle".into()),
            role_id_env: role_id_env
                .ok_or_else(|| parts.bad("AppRole needs role_id_env= (the variable holding the role id)"))?,
            secret_id: match (secret_id_env, secret_id_file) {
                (Some(var), None) => SecretIdSource::Env(var),
                (None, Some(path)) => SecretIdSource::File(path),
                _ => return Err(parts.bad("AppRole needs one of secret_id_env= or secret_id_file=")),
            },
        },
        _ => VaultCredentials::Process,
    })
}
