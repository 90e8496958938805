//! `gcp-sm://PROJECT?prefix=…&endpoint=…&old_versions=disable|destroy|keep`: Google Secret
//! Manager.
//!
//! Each secret is the GCP secret `<prefix><id>`; every put adds a version whose payload is the
//! JSON object of the secret's values (what workloads read as `latest`), then the versions
//! before it are disabled (default), destroyed or kept, per `old_versions`.
//!
//! The record's metadata lives in the secret's labels, since those are what every Secret
//! Manager (and the drongo emulator the tests run against) keeps: `sledger-seq`,
//! `sledger-state` (`live` or `deleted`) and the metadata JSON, hex-encoded in 63-character
//! chunks (`sledger-m00`, `sledger-m01`, …) because label values must be lowercase. The labels
//! are written after the version, so a crash between the two leaves the old seq and the
//! projector writes again. Soft delete disables every version and marks the labels deleted;
//! purge deletes the secret with all its versions and leaves a version-less tombstone secret,
//! so a late write from another projector cannot bring the values back.
//!
//! Credentials: Application Default Credentials, or none when `endpoint=` names an emulator;
//! or this sink's own: `credentials_file=/path/key.json` (a service account, external-account,
//! impersonated or user credentials file) and/or `impersonate=SA_EMAIL` (service account
//! impersonation on top of the file or of ADC), as `gcloud --impersonate-service-account` does.

use std::collections::HashMap;

use async_trait::async_trait;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::paginator::ItemPaginator as _;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::{replication, secret_version, Replication, Secret, SecretPayload};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::foreign::{is_sledger_object, values_from_text, ForeignSecrets};
use super::tagged::{TagLimits, Tagged};
use super::{object_id, object_name, Capabilities, DeleteMode, ObjectLocks, Sink, SinkEntry, SinkRecord};
use crate::crypto::SecretValues;
use crate::error::{Error, Result};
use crate::SecretId;

/// A secret version's payload limit.
pub const MAX_VALUE_BYTES: usize = 65_536;
/// Longest secret id Secret Manager accepts.
pub const MAX_NAME_CHARS: usize = 255;
const KIND: &str = "gcp-sm";
/// Rounds of "add a version, label it, check it is the newest" before giving up for now.
const RACE_ATTEMPTS: usize = 5;
/// GCP allows 64 labels of at most 63 characters; three carry the seq, the state and the
/// version holding the values (`sledger-ver`).
const LABELS: TagLimits = TagLimits {
    kind: KIND,
    chunks: 61,
    chunk_len: 63,
};

/// What happens to the versions a put supersedes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldVersions {
    /// Disabled: not readable, but can be enabled again.
    Disable,
    /// Destroyed: their payloads are gone.
    Destroy,
    /// Left enabled (readable by version number).
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpConfig {
    pub project: String,
    pub endpoint: Option<String>,
    pub prefix: String,
    pub old_versions: OldVersions,
    pub max_concurrency: usize,
    /// A credentials JSON file for this sink alone.
    pub credentials_file: Option<std::path::PathBuf>,
    /// The service account this sink acts as, impersonated with the credentials above.
    pub impersonate: Option<String>,
}

fn unusable_file(path: &std::path::Path, why: impl std::fmt::Display) -> Error {
    Error::sink(KIND, format!("credentials_file {}: {why}", path.display()), false)
}

/// Credentials from a JSON file of one of the kinds `gcloud` writes or the console downloads;
/// errors name the file and its kind, never its contents.
fn credentials_from_file(path: &std::path::Path) -> Result<google_cloud_auth::credentials::Credentials> {
    use google_cloud_auth::credentials::{external_account, impersonated, service_account, user_account};
    let text = std::fs::read_to_string(path).map_err(|e| unusable_file(path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| unusable_file(path, "is not a JSON credentials file"))?;
    let kind = json["type"].as_str().unwrap_or_default().to_owned();
    let built = match kind.as_str() {
        "service_account" => service_account::Builder::new(json).build(),
        "external_account" => external_account::Builder::new(json).build(),
        "impersonated_service_account" => impersonated::Builder::new(json).build(),
        "authorized_user" => user_account::Builder::new(json).build(),
        _ => {
            return Err(unusable_file(
                path,
                "has no credentials type sledger knows (service_account, external_account, \
                 impersonated_service_account, authorized_user)",
            ))
        }
    };
    // The builder's error says which field is missing or malformed, not what the file holds.
    built.map_err(|e| unusable_file(path, format!("not usable as {kind} credentials ({e})")))
}

impl GcpConfig {
    /// What such a sink holds and how hard it may be driven, known without connecting.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_bytes: MAX_VALUE_BYTES,
            max_meta_bytes: LABELS.max_meta_bytes(),
            max_field_bytes: usize::MAX,
            soft_delete: true,
            // drongo ignores etags, so sledger does not rely on them.
            conditional_write: false,
            max_concurrency: self.max_concurrency,
        }
    }
}

pub struct GcpSink {
    config: GcpConfig,
    client: OnceCell<SecretManagerService>,
    /// Writes to one object from this process go one at a time (version, then labels).
    writing: ObjectLocks,
}

impl std::fmt::Debug for GcpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpSink")
            .field("project", &self.config.project)
            .field("prefix", &self.config.prefix)
            .finish()
    }
}

/// The state of one GCP secret as far as sledger is concerned, from its labels.
struct Stored {
    tagged: Tagged,
    /// The version the labels say holds the values.
    version: u64,
    etag: String,
}

fn is(e: &google_cloud_gax::error::Error, code: Code, http: u16) -> bool {
    e.status().map(|s| s.code) == Some(code) || e.http_status_code() == Some(http)
}

impl GcpSink {
    pub fn new(config: GcpConfig) -> Self {
        GcpSink {
            config,
            client: OnceCell::new(),
            writing: Default::default(),
        }
    }

    async fn client(&self) -> Result<&SecretManagerService> {
        self.client
            .get_or_try_init(|| async {
                let mut builder = SecretManagerService::builder()
                    // The projector retries with its own backoff and deadline.
                    .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry);
                if let Some(endpoint) = &self.config.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(credentials) = self.credentials()? {
                    builder = builder.with_credentials(credentials);
                }
                builder.build().await.map_err(|e| {
                    Error::sink(
                        KIND,
                        format!(
                            "cannot set up the Secret Manager client ({e}); outside Google Cloud, \
                             run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
                        ),
                        false,
                    )
                })
            })
            .await
    }

    /// The emulator or private endpoint `endpoint=` names.
    pub(crate) fn endpoint(&self) -> Option<&str> {
        self.config.endpoint.as_deref()
    }

    /// This sink's own credentials; `None` for Application Default Credentials.
    pub(crate) fn credentials(&self) -> Result<Option<google_cloud_auth::credentials::Credentials>> {
        use google_cloud_auth::credentials::{anonymous, impersonated, Builder};
        let base = match &self.config.credentials_file {
            Some(path) => Some(credentials_from_file(path)?),
            // An emulator takes anonymous calls.
            None if self.config.endpoint.is_some() => Some(anonymous::Builder::new().build()),
            None => None,
        };
        let Some(target) = &self.config.impersonate else {
            return Ok(base);
        };
        let source = match base {
            Some(source) => source,
            None => Builder::default().build().map_err(|e| {
                Error::sink(
                    KIND,
                    format!("no Application Default Credentials to impersonate {target} with ({e})"),
                    false,
                )
            })?,
        };
        impersonated::Builder::from_source_credentials(source)
            .with_target_principal(target)
            .build()
            .map(Some)
            .map_err(|e| Error::sink(KIND, format!("cannot impersonate {target} ({e})"), false))
    }

    fn where_(&self) -> String {
        let place = match &self.config.endpoint {
            Some(endpoint) => format!("project {} at {endpoint}", self.config.project),
            None => format!("project {}", self.config.project),
        };
        match (&self.config.credentials_file, &self.config.impersonate) {
            (_, Some(target)) => format!("{place}, as {target}"),
            (Some(path), None) => format!("{place}, with credentials_file {}", path.display()),
            (None, None) => place,
        }
    }

    fn failure(&self, what: &str, e: google_cloud_gax::error::Error) -> Error {
        let temporary = match (e.http_status_code(), e.status()) {
            (_, Some(s))
                if matches!(
                    s.code,
                    Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::DeadlineExceeded
                ) =>
            {
                true
            }
            (Some(code), _) => code == 429 || code >= 500,
            // No answer at all: the network or the endpoint.
            (None, _) => e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport(),
        };
        // Service messages describe the request; payloads never appear in them.
        let detail = match e.status() {
            Some(s) => format!("{:?}: {}", s.code, s.message),
            None => e.to_string(),
        };
        Error::sink(KIND, format!("{what}: {detail} ({})", self.where_()), temporary)
    }

    fn secret_path(&self, name: &str) -> String {
        format!("projects/{}/secrets/{name}", self.config.project)
    }

    async fn stored(&self, name: &str) -> Result<Option<Stored>> {
        let client = self.client().await?;
        match client.get_secret().set_name(self.secret_path(name)).send().await {
            Ok(secret) => Ok(Some(Stored {
                tagged: LABELS.decode(&secret.labels),
                version: secret
                    .labels
                    .get("sledger-ver")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                etag: secret.etag,
            })),
            Err(e) if is(&e, Code::NotFound, 404) => Ok(None),
            Err(e) => Err(self.failure(&format!("cannot read {name}"), e)),
        }
    }

    async fn create(&self, name: &str, labels: HashMap<String, String>) -> Result<()> {
        let client = self.client().await?;
        let secret = Secret::new()
            .set_replication(Replication::new().set_automatic(replication::Automatic::new()))
            .set_labels(labels);
        match client
            .create_secret()
            .set_parent(format!("projects/{}", self.config.project))
            .set_secret_id(name)
            .set_secret(secret)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Another projector (or a retry of ours) created it; the labels are set after.
            Err(e) if is(&e, Code::AlreadyExists, 409) => Ok(()),
            Err(e) => Err(self.failure(&format!("cannot create {name}"), e)),
        }
    }

    async fn set_labels(&self, name: &str, etag: &str, labels: HashMap<String, String>) -> Result<()> {
        let client = self.client().await?;
        let secret = Secret::new()
            .set_name(self.secret_path(name))
            .set_etag(etag)
            .set_labels(labels);
        client
            .update_secret()
            .set_secret(secret)
            .set_update_mask(google_cloud_wkt::FieldMask::default().set_paths(["labels"]))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                // An etag mismatch: another writer labelled it since we read it.
                let raced = is(&e, Code::FailedPrecondition, 412) || is(&e, Code::Aborted, 409);
                let error = self.failure(&format!("cannot label {name}"), e);
                if raced {
                    Error::sink(KIND, error.to_string(), true)
                } else {
                    error
                }
            })
    }

    /// Every version of `name`: (number, state, resource name).
    async fn versions(&self, name: &str) -> Result<Vec<(u64, secret_version::State, String)>> {
        let client = self.client().await?;
        let mut versions = client
            .list_secret_versions()
            .set_parent(self.secret_path(name))
            .by_item();
        let mut out = Vec::new();
        while let Some(version) = versions.next().await {
            let version =
                version.map_err(|e| self.failure(&format!("cannot list the versions of {name}"), e))?;
            out.push((version_number(&version.name), version.state, version.name));
        }
        Ok(out)
    }

    /// Disable or destroy the versions of `name` before version number `before` (all of
    /// them for `None`). Only older ones: another process's newer write stays readable.
    async fn retire_versions(&self, name: &str, before: Option<u64>, how: OldVersions) -> Result<()> {
        if how == OldVersions::Keep {
            return Ok(());
        }
        for (number, state, version) in self.versions(name).await? {
            let live = match how {
                OldVersions::Destroy => state != secret_version::State::Destroyed,
                _ => state == secret_version::State::Enabled,
            };
            if live && before.is_none_or(|before| number < before) {
                self.retire(&version, how).await?;
            }
        }
        Ok(())
    }

    /// Add a version holding `value`; its number.
    async fn add_version(&self, name: &str, value: &str) -> Result<(u64, String)> {
        let client = self.client().await?;
        match client
            .add_secret_version()
            .set_parent(self.secret_path(name))
            .set_payload(SecretPayload::new().set_data(value.as_bytes().to_vec()))
            .send()
            .await
        {
            Ok(version) => Ok((version_number(&version.name), version.name)),
            // Purged by another writer meanwhile: the retry sees its tombstone.
            Err(e) if is(&e, Code::NotFound, 404) => Err(Error::sink(
                KIND,
                format!("{name} was deleted while it was being written"),
                true,
            )),
            Err(e) => Err(self.failure(&format!("cannot write {name}"), e)),
        }
    }

    /// What `latest` serves: (its version number, its payload), or `None` when there is no
    /// enabled version to read.
    async fn latest(&self, name: &str) -> Result<Option<(u64, Zeroizing<Vec<u8>>)>> {
        let client = self.client().await?;
        match client
            .access_secret_version()
            .set_name(format!("{}/versions/latest", self.secret_path(name)))
            .send()
            .await
        {
            Ok(out) => Ok(Some((
                version_number(&out.name),
                Zeroizing::new(out.payload.map(|p| p.data.to_vec()).unwrap_or_default()),
            ))),
            Err(e) if is(&e, Code::NotFound, 404) || is(&e, Code::FailedPrecondition, 400) => Ok(None),
            Err(e) => Err(self.failure(&format!("cannot read {name}"), e)),
        }
    }

    /// Every secret in the project whose name contains `filter`, by name, with its labels.
    async fn all_secrets(&self, filter: &str) -> Result<Vec<(String, HashMap<String, String>)>> {
        let client = self.client().await?;
        let mut secrets = client
            .list_secrets()
            .set_parent(format!("projects/{}", self.config.project))
            .set_filter(if filter.is_empty() {
                String::new()
            } else {
                format!("name:{filter}")
            })
            .set_page_size(250)
            .by_item();
        let mut out = Vec::new();
        while let Some(secret) = secrets.next().await {
            let secret = secret.map_err(|e| self.failure("cannot list secrets", e))?;
            if let Some(name) = secret.name.rsplit('/').next() {
                out.push((name.to_owned(), secret.labels));
            }
        }
        Ok(out)
    }

    /// Delete the secret with every version and its labels.
    async fn remove(&self, name: &str) -> Result<()> {
        let client = self.client().await?;
        match client
            .delete_secret()
            .set_name(self.secret_path(name))
            .send()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is(&e, Code::NotFound, 404) => Ok(()),
            Err(e) => Err(self.failure(&format!("cannot purge {name}"), e)),
        }
    }

    async fn retire(&self, version: &str, how: OldVersions) -> Result<()> {
        let client = self.client().await?;
        let done = match how {
            OldVersions::Keep => return Ok(()),
            OldVersions::Disable => client.disable_secret_version().set_name(version).send().await,
            OldVersions::Destroy => client.destroy_secret_version().set_name(version).send().await,
        };
        done.map(|_| ())
            .map_err(|e| self.failure(&format!("cannot retire {version}"), e))
    }
}

/// `projects/P/secrets/S/versions/N` → N.
fn version_number(name: &str) -> u64 {
    name.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[async_trait]
impl Sink for GcpSink {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        self.config.capabilities()
    }

    async fn put(&self, record: &SinkRecord) -> Result<()> {
        let name = object_name(&self.config.prefix, record.id);
        let _one_writer = self.writing.lock(record.id).await;
        let new_labels = LABELS.encode(record.seq, false, Some(&record.meta()))?;
        match self.stored(&name).await? {
            Some(s) if s.tagged.seq > record.seq => return Ok(()),
            Some(_) => {}
            // Created without sledger's labels: until they are set it reads as absent.
            None => self.create(&name, HashMap::new()).await?,
        }
        let value = record.values.to_json();
        // Workloads read `latest`, the most recently created version: ours must end up the
        // newest. A slower writer of an older seq may add one after ours; then ours is added
        // again (the slower writer, seeing our seq in the labels, destroys its own).
        for _ in 0..RACE_ATTEMPTS {
            let (number, version) = self.add_version(&name, &value).await?;
            let fresh = self.stored(&name).await?.ok_or_else(|| {
                Error::sink(KIND, format!("{name} vanished while it was being written"), true)
            })?;
            if fresh.tagged.seq > record.seq {
                // A newer write (or a purge) got in meanwhile: ours must not be what `latest`
                // serves, and its values are stale.
                return self.retire(&version, OldVersions::Destroy).await;
            }
            let mut labels = new_labels.clone();
            labels.insert("sledger-ver".to_owned(), number.to_string());
            self.set_labels(&name, &fresh.etag, labels).await?;
            let newest = self
                .versions(&name)
                .await?
                .iter()
                .map(|v| v.0)
                .max()
                .unwrap_or(number);
            if newest == number {
                return self
                    .retire_versions(&name, Some(number), self.config.old_versions)
                    .await;
            }
        }
        Err(Error::sink(
            KIND,
            format!("{name}: another writer kept adding versions; trying again later"),
            true,
        ))
    }

    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        let name = object_name(&self.config.prefix, id);
        let Some(stored) = self.stored(&name).await? else {
            return Ok(None);
        };
        let Some((seq, meta)) = LABELS.live_meta(&name, stored.tagged)? else {
            return Ok(None);
        };
        let Some((served, data)) = self.latest(&name).await? else {
            return Ok(None);
        };
        if stored.version != 0 && served != stored.version {
            return Err(Error::sink(
                KIND,
                format!(
                    "{name} serves version {served} as latest, but sledger's labels say version {}: \
                     another writer raced it; `sledger reconcile` writes it again",
                    stored.version
                ),
                false,
            ));
        }
        SinkRecord::from_stored(KIND, &format!("{name}'s latest version"), meta, seq, &data).map(Some)
    }

    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        let name = object_name(&self.config.prefix, id);
        let _one_writer = self.writing.lock(id).await;
        let stored = self.stored(&name).await?;
        if how == DeleteMode::Purge {
            let seq = stored.as_ref().map_or(seq, |s| s.tagged.seq.max(seq));
            if stored.is_some() {
                self.remove(&name).await?;
            }
            self.create(&name, LABELS.encode(seq, true, None)?).await?;
            // If someone else's create won, make sure it says deleted at our seq or later.
            return match self.stored(&name).await? {
                Some(s) if s.tagged.deleted && s.tagged.seq >= seq => Ok(()),
                Some(s) => {
                    self.set_labels(&name, &s.etag, LABELS.encode(seq, true, None)?)
                        .await
                }
                None => Ok(()),
            };
        }
        match stored {
            None => {
                self.create(&name, LABELS.encode(seq, true, None)?).await?;
                Ok(())
            }
            Some(s) if s.tagged.seq > seq => Ok(()),
            Some(s) => {
                // Versions first: a crash before the labels leaves a secret that reads as
                // absent (no enabled version) and is deleted again on the retry.
                self.retire_versions(&name, None, OldVersions::Disable).await?;
                if s.tagged.deleted && s.tagged.seq == seq {
                    return Ok(());
                }
                self.set_labels(&name, &s.etag, LABELS.encode(seq, true, s.tagged.meta.as_ref())?)
                    .await
            }
        }
    }

    async fn erase(&self, id: SecretId) -> Result<()> {
        let name = object_name(&self.config.prefix, id);
        let _one_writer = self.writing.lock(id).await;
        self.remove(&name).await
    }

    async fn list(&self) -> Result<Vec<SinkEntry>> {
        let mut out = Vec::new();
        for (name, labels) in self.all_secrets(&self.config.prefix).await? {
            let Some(id) = object_id(&self.config.prefix, &name) else {
                continue;
            };
            if name != object_name(&self.config.prefix, id) {
                continue;
            }
            if let Some(seq) = LABELS.listed_seq(&LABELS.decode(&labels)) {
                out.push(SinkEntry { id, seq });
            }
        }
        Ok(out)
    }

    /// The service account this sink acts as, as its URL or credentials file names it.
    async fn identity(&self) -> Result<Option<String>> {
        if let Some(target) = &self.config.impersonate {
            return Ok(Some(format!("service account {target} (impersonated)")));
        }
        let Some(path) = &self.config.credentials_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| unusable_file(path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        Ok(json["client_email"]
            .as_str()
            .map(|email| format!("service account {email} (from {})", path.display())))
    }

    async fn health(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .list_secrets()
            .set_parent(format!("projects/{}", self.config.project))
            .set_page_size(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.failure("not reachable", e))
    }
}

#[async_trait]
impl ForeignSecrets for GcpSink {
    async fn names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (name, labels) in self.all_secrets("").await? {
            let ours = is_sledger_object(&self.config.prefix, &name) || labels.contains_key("sledger-seq");
            if !ours && name.starts_with(prefix) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn read(&self, name: &str) -> Result<Option<SecretValues>> {
        let Some((_, data)) = self.latest(name).await? else {
            return Ok(None);
        };
        Ok(std::str::from_utf8(&data).ok().map(values_from_text))
    }
}

/// `gcp-sm://PROJECT[?endpoint=URL][&old_versions=disable|destroy|keep]`.
pub(super) fn from_url(parts: &mut super::url::UrlParts<'_>) -> Result<super::Backend> {
    let endpoint = parts.take_endpoint()?;
    let old_versions = match parts.take("old_versions").as_deref() {
        None | Some("disable") => OldVersions::Disable,
        Some("destroy") => OldVersions::Destroy,
        Some("keep") => OldVersions::Keep,
        Some(_) => return Err(parts.bad("old_versions must be disable, destroy or keep")),
    };
    let location = parts.location;
    if location.is_empty()
        || !location
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-:.".contains(c))
    {
        return Err(parts.bad("expected gcp-sm://PROJECT_ID, e.g. gcp-sm://my-project"));
    }
    let prefix = parts.prefix_within(
        "Secret Manager",
        |c| c.is_ascii_alphanumeric() || "-_".contains(c),
        "letters, digits, - and _",
        MAX_NAME_CHARS,
    )?;
    Ok(super::Backend::Gcp(GcpConfig {
        project: location.to_owned(),
        endpoint,
        prefix,
        old_versions,
        max_concurrency: parts.concurrency(16),
        credentials_file: match parts.take("credentials_file") {
            Some(path) if !path.starts_with('/') => {
                return Err(parts.bad("credentials_file must be an absolute path"));
            }
            path => path.map(std::path::PathBuf::from),
        },
        impersonate: parts.take("impersonate"),
    }))
}
