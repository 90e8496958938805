//! `azure-kv://VAULT_HOST?prefix=…&ca-file=…`: Azure Key Vault secrets.
//!
//! Each secret is the Key Vault secret `<prefix><id>`, whose value is the JSON object of its
//! values. Every put is one `SetSecret` call carrying value and tags together, so a write
//! is atomic: a new version with `sledger-seq`, `sledger-state` and the record's metadata
//! (hex-encoded over `sledger-m00`…`sledger-m12`, since Key Vault allows 15 tags of 256
//! characters). Soft delete first tags the secret deleted at the deleting seq, then deletes it
//! (recoverable for the vault's retention period); a put on a soft-deleted name recovers it
//! first, unless the deleted secret says it was deleted after the put's seq. Purge deletes and
//! purges, then leaves a value-less tombstone secret, so a late write from another projector
//! cannot bring the values back.
//!
//! Credentials, tried in order (like the SDKs' DefaultAzureCredential): a service principal
//! from `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET`; workload identity
//! (`AZURE_FEDERATED_TOKEN_FILE`, set by AKS); managed identity; `az login` / `azd auth login`.
//! Or those the URL names for this sink alone ([`AzureCredentials`]): its own service principal
//! with a secret in a named variable or a certificate file, or a user-assigned managed identity.

mod certificate;
mod credential;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RetryOptions, StatusCode, Transport};
use azure_security_keyvault_secrets::models::{
    SecretClientListSecretPropertiesOptions, SecretProperties, SetSecretParameters,
    UpdateSecretPropertiesParameters,
};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use futures::TryStreamExt;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::foreign::{is_sledger_object, values_from_text, ForeignSecrets};
use super::tagged::{TagLimits, Tagged};
use super::{object_id, object_name, Capabilities, DeleteMode, ObjectLocks, Sink, SinkEntry, SinkRecord};
use crate::crypto::SecretValues;
use crate::error::{Error, Result};
use crate::SecretId;

/// Key Vault's secret value limit (25 KiB).
pub const MAX_VALUE_BYTES: usize = 25 * 1024;
/// Longest secret name Key Vault accepts.
pub const MAX_NAME_CHARS: usize = 127;
const KIND: &str = "azure-kv";
/// Key Vault finishes deletions, purges and recoveries in the background: how often, and how
/// many times, to look whether one is done before giving up for now.
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(200);
const SETTLE_POLLS: usize = 50;
/// 15 tags of 256 characters; two carry the seq and state.
const TAGS: TagLimits = TagLimits {
    kind: KIND,
    chunks: 13,
    chunk_len: 256,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureConfig {
    /// `myvault.vault.azure.net`, or `HOST:PORT`.
    pub vault_host: String,
    /// A PEM file of CA certificates to trust instead of the system's (private endpoints, tests).
    pub ca_file: Option<PathBuf>,
    pub prefix: String,
    pub max_concurrency: usize,
    pub credentials: AzureCredentials,
}

/// Where one sink's credentials come from: ids and variable names, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AzureCredentials {
    /// The chain of `credential`: environment, workload identity, managed identity, `az login`.
    #[default]
    Chain,
    /// `tenant_id=`, `client_id=` and `client_secret_env=`: a service principal of its own.
    ServicePrincipal {
        tenant_id: String,
        client_id: String,
        secret_env: String,
    },
    /// `tenant_id=`, `client_id=` and `client_certificate=`: a service principal of its own that
    /// signs in with a certificate (a PEM file with its private key, readable by its owner only).
    CertificatePrincipal {
        tenant_id: String,
        client_id: String,
        certificate: PathBuf,
    },
    /// `managed_identity_client_id=`: a user-assigned managed identity.
    ManagedIdentity { client_id: String },
}

impl AzureConfig {
    /// What such a sink holds and how hard it may be driven, known without connecting.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_bytes: MAX_VALUE_BYTES,
            max_meta_bytes: TAGS.max_meta_bytes(),
            max_field_bytes: usize::MAX,
            soft_delete: true,
            conditional_write: false,
            max_concurrency: self.max_concurrency,
        }
    }
}

pub struct AzureSink {
    config: AzureConfig,
    client: OnceCell<SecretClient>,
    /// Made once: each one reads its certificate file or asks `az` again, and keeps its tokens.
    credential: std::sync::Mutex<Option<Arc<dyn TokenCredential>>>,
    writing: ObjectLocks,
}

impl std::fmt::Debug for AzureSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSink")
            .field("vault_host", &self.config.vault_host)
            .field("prefix", &self.config.prefix)
            .finish()
    }
}

/// Who an Entra ID access token (a JWT) was issued to, from its claims: a user (`upn`,
/// `unique_name` or `preferred_username`) unless `idtyp` says "app", else the application
/// (`appid` in v1 tokens, `azp` in v2), with `oid` and `tid`. `None` for a token that is not a
/// JWT.
fn token_identity(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?,
    )
    .ok()?;
    let claim = |name: &str| claims[name].as_str().filter(|v| !v.is_empty());
    let user = claim("upn")
        .or(claim("unique_name"))
        .or(claim("preferred_username"))
        .filter(|_| claim("idtyp") != Some("app"));
    let who = match (user, claim("appid").or(claim("azp"))) {
        (Some(user), _) => format!("user {user}"),
        (None, Some(app)) => format!("application {app}"),
        (None, None) => return None,
    };
    let object = claim("oid")
        .map(|oid| format!(" (object {oid})"))
        .unwrap_or_default();
    let tenant = claim("tid")
        .map(|tid| format!(" in tenant {tid}"))
        .unwrap_or_default();
    Some(format!("{who}{object}{tenant}"))
}

/// The scope of the tokens a vault at `vault_host` is sent: its DNS suffix's Key Vault
/// resource (`NAME.vault.azure.net` → `https://vault.azure.net/.default`, and likewise in the
/// sovereign clouds); a vault on loopback (a test double) is taken for the public cloud's.
fn token_scope(vault_host: &str) -> String {
    let host = vault_host.rsplit_once(':').map_or(vault_host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            vault_host
        }
    });
    let resource = match host.split_once('.') {
        Some((_, suffix)) if !super::url::is_loopback(vault_host) => suffix,
        _ => "vault.azure.net",
    };
    format!("https://{resource}/.default")
}

fn status_of(e: &azure_core::Error) -> Option<StatusCode> {
    e.http_status()
}

impl AzureSink {
    pub fn new(config: AzureConfig) -> Self {
        AzureSink {
            config,
            client: OnceCell::new(),
            credential: Default::default(),
            writing: Default::default(),
        }
    }

    fn client_options(&self) -> Result<ClientOptions> {
        let mut options = ClientOptions {
            // The projector retries with its own backoff and deadline.
            retry: RetryOptions::none(),
            ..Default::default()
        };
        if let Some(ca_file) = &self.config.ca_file {
            let pem = std::fs::read(ca_file).map_err(|e| {
                Error::sink(
                    KIND,
                    format!("cannot read ca-file {}: {e}", ca_file.display()),
                    false,
                )
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::sink(
                    KIND,
                    format!(
                        "ca-file {} is not a PEM certificate bundle: {e}",
                        ca_file.display()
                    ),
                    false,
                )
            })?;
            let http = reqwest::Client::builder()
                .tls_certs_merge(certs)
                .build()
                .map_err(|e| Error::sink(KIND, format!("cannot set up TLS: {e}"), false))?;
            options.transport = Some(Transport::new(Arc::new(http)));
        }
        Ok(options)
    }

    /// What every client of this vault is made with: the HTTP options, the credential (its
    /// tokens scoped to the vault's cloud), and whether the challenge's resource is checked
    /// (not on loopback, where it cannot match the host).
    fn connection(&self) -> Result<(ClientOptions, Arc<dyn TokenCredential>, Option<bool>)> {
        let client_options = self.client_options()?;
        let mut cached = self.credential.lock().expect("not poisoned");
        let credential = match &*cached {
            Some(credential) => credential.clone(),
            None => cached
                .insert(credential::for_sink(
                    &self.config.credentials,
                    &client_options,
                    token_scope(&self.config.vault_host),
                )?)
                .clone(),
        };
        let verify_challenge = Some(!super::url::is_loopback(&self.config.vault_host));
        Ok((client_options, credential, verify_challenge))
    }

    /// A Key Vault keys client for the same vault, with this sink's TLS and credentials (a
    /// master key held in Key Vault: `azure-kv-key://`).
    pub(crate) fn key_client(&self) -> Result<azure_security_keyvault_keys::KeyClient> {
        let (client_options, credential, verify_challenge_resource) = self.connection()?;
        let options = azure_security_keyvault_keys::KeyClientOptions {
            client_options,
            verify_challenge_resource,
            ..Default::default()
        };
        azure_security_keyvault_keys::KeyClient::new(
            &format!("https://{}/", self.config.vault_host),
            credential,
            Some(options),
        )
        .map_err(|e| {
            Error::sink(
                KIND,
                format!("cannot set up the Key Vault keys client: {e}"),
                false,
            )
        })
    }

    async fn client(&self) -> Result<&SecretClient> {
        self.client
            .get_or_try_init(|| async {
                let (client_options, credential, verify_challenge_resource) = self.connection()?;
                let options = SecretClientOptions {
                    client_options,
                    verify_challenge_resource,
                    ..Default::default()
                };
                SecretClient::new(
                    &format!("https://{}/", self.config.vault_host),
                    credential,
                    Some(options),
                )
                .map_err(|e| Error::sink(KIND, format!("cannot set up the Key Vault client: {e}"), false))
            })
            .await
    }

    fn failure(&self, what: &str, e: azure_core::Error) -> Error {
        let (temporary, detail) = match e.kind() {
            ErrorKind::HttpResponse {
                status, error_code, ..
            } => (
                // 409: an earlier delete, purge or recovery is still finishing in the background.
                matches!(*status, StatusCode::TooManyRequests | StatusCode::Conflict)
                    || u16::from(*status) >= 500,
                // Key Vault's error messages describe the request, never a secret's value.
                format!("{} {}", u16::from(*status), error_code.as_deref().unwrap_or("")),
            ),
            ErrorKind::Connection | ErrorKind::Io => (true, e.to_string()),
            ErrorKind::Credential => (true, format!("no credential worked: {e}")),
            _ => (false, e.to_string()),
        };
        Error::sink(
            KIND,
            format!("{what}: {} (vault {})", detail.trim(), self.config.vault_host),
            temporary,
        )
    }

    /// The tags of the live secret `name`, or of the soft-deleted one (`Err(tags)`).
    async fn stored(&self, name: &str) -> Result<Option<std::result::Result<Tagged, Tagged>>> {
        if let Some(secret) = self.secret(name).await? {
            return Ok(Some(Ok(TAGS.decode(&secret.tags.unwrap_or_default()))));
        }
        match self.client().await?.get_deleted_secret(name, None).await {
            Ok(response) => {
                let deleted = response
                    .into_model()
                    .map_err(|e| self.failure(&format!("cannot read deleted {name}"), e))?;
                Ok(Some(Err(TAGS.decode(&deleted.tags.unwrap_or_default()))))
            }
            Err(e) if status_of(&e) == Some(StatusCode::NotFound) => Ok(None),
            Err(e) => Err(self.failure(&format!("cannot read deleted {name}"), e)),
        }
    }

    async fn set(&self, name: &str, value: &str, tags: HashMap<String, String>) -> Result<()> {
        let parameters = SetSecretParameters {
            value: Some(value.to_owned()),
            content_type: Some("application/json".to_owned()),
            tags: Some(tags),
            ..Default::default()
        };
        let body: azure_core::http::RequestContent<SetSecretParameters> = parameters
            .try_into()
            .map_err(|e| self.failure(&format!("cannot encode {name}"), e))?;
        let client = self.client().await?;
        // A deletion, purge or recovery of this name still finishing in the background: wait.
        let mut last = None;
        for _ in 0..SETTLE_POLLS {
            match client.set_secret(name, body.clone(), None).await {
                Ok(_) => return Ok(()),
                Err(e) if status_of(&e) == Some(StatusCode::Conflict) => last = Some(e),
                Err(e) => return Err(self.failure(&format!("cannot write {name}"), e)),
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
        Err(self.failure(
            &format!("cannot write {name}"),
            last.expect("polled at least once"),
        ))
    }

    /// The live secret `name` (its current version), if there is one.
    async fn secret(&self, name: &str) -> Result<Option<azure_security_keyvault_secrets::models::Secret>> {
        match self.client().await?.get_secret(name, None).await {
            Ok(response) => response
                .into_model()
                .map(Some)
                .map_err(|e| self.failure(&format!("cannot read {name}"), e)),
            Err(e) if status_of(&e) == Some(StatusCode::NotFound) => Ok(None),
            Err(e) => Err(self.failure(&format!("cannot read {name}"), e)),
        }
    }

    /// Every live secret in the vault, by name, with its properties (tags, attributes).
    async fn all_secrets(&self) -> Result<Vec<(String, SecretProperties)>> {
        let mut pager = self
            .client()
            .await?
            .list_secret_properties(Some(SecretClientListSecretPropertiesOptions {
                maxresults: Some(25),
                ..Default::default()
            }))
            .map_err(|e| self.failure("cannot list secrets", e))?;
        let mut out = Vec::new();
        while let Some(properties) = pager
            .try_next()
            .await
            .map_err(|e| self.failure("cannot list secrets", e))?
        {
            let name = properties
                .id
                .as_deref()
                .and_then(|id| id.trim_end_matches('/').rsplit('/').next())
                .map(str::to_owned);
            if let Some(name) = name {
                out.push((name, properties));
            }
        }
        Ok(out)
    }

    /// Replace the tags of `name`'s current version.
    async fn tag(&self, name: &str, tags: HashMap<String, String>) -> Result<()> {
        let parameters = UpdateSecretPropertiesParameters {
            tags: Some(tags),
            ..Default::default()
        };
        let body = parameters
            .try_into()
            .map_err(|e| self.failure(&format!("cannot encode {name}"), e))?;
        self.client()
            .await?
            .update_secret_properties(name, body, None)
            .await
            .map(|_| ())
            .map_err(|e| self.failure(&format!("cannot tag {name}"), e))
    }

    async fn recover(&self, name: &str) -> Result<()> {
        let client = self.client().await?;
        for polls in 1.. {
            match client.recover_deleted_secret(name, None).await {
                Ok(_) => break,
                Err(e) if status_of(&e) == Some(StatusCode::NotFound) => break,
                // The deletion itself is still finishing.
                Err(e) if status_of(&e) == Some(StatusCode::Conflict) && polls < SETTLE_POLLS => {
                    tokio::time::sleep(SETTLE_POLL).await
                }
                Err(e) => return Err(self.failure(&format!("cannot recover {name}"), e)),
            }
        }
        // Recovery finishes in the background; a write before it does is refused (409).
        for _ in 0..SETTLE_POLLS {
            if client.get_secret(name, None).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
        Err(Error::sink(
            KIND,
            format!("{name} is still being recovered"),
            true,
        ))
    }

    /// Delete `name` and, for a purge, purge it; absent names are fine.
    async fn remove(&self, name: &str, purge: bool) -> Result<()> {
        let client = self.client().await?;
        match client.delete_secret(name, None).await {
            Ok(_) => {}
            Err(e) if status_of(&e) == Some(StatusCode::NotFound) => {}
            Err(e) => return Err(self.failure(&format!("cannot delete {name}"), e)),
        }
        if !purge {
            return Ok(());
        }
        // The deletion, too, finishes in the background (409 until then).
        for _ in 0..SETTLE_POLLS {
            match client.purge_deleted_secret(name, None).await {
                Ok(_) => return Ok(()),
                Err(e) if status_of(&e) == Some(StatusCode::NotFound) => return Ok(()),
                Err(e) if status_of(&e) == Some(StatusCode::Conflict) => {
                    tokio::time::sleep(SETTLE_POLL).await
                }
                Err(e) => return Err(self.failure(&format!("cannot purge {name}"), e)),
            }
        }
        Err(Error::sink(KIND, format!("{name} is still being deleted"), true))
    }
}

#[async_trait]
impl Sink for AzureSink {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        self.config.capabilities()
    }

    async fn put(&self, record: &SinkRecord) -> Result<()> {
        let name = object_name(&self.config.prefix, record.id);
        let _one_writer = self.writing.lock(record.id).await;
        let tags = TAGS.encode(record.seq, false, Some(&record.meta()))?;
        match self.stored(&name).await? {
            Some(Ok(live)) if live.seq > record.seq => return Ok(()),
            Some(Err(deleted)) if deleted.seq > record.seq => return Ok(()),
            Some(Err(_)) => self.recover(&name).await?,
            _ => {}
        }
        self.set(&name, &record.values.to_json(), tags).await
    }

    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        let name = object_name(&self.config.prefix, id);
        let Some(secret) = self.secret(&name).await? else {
            return Ok(None);
        };
        let Some((seq, meta)) = TAGS.live_meta(&name, TAGS.decode(&secret.tags.unwrap_or_default()))? else {
            return Ok(None);
        };
        let text = Zeroizing::new(secret.value.unwrap_or_default());
        SinkRecord::from_stored(KIND, &name, meta, seq, text.as_bytes()).map(Some)
    }

    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        let name = object_name(&self.config.prefix, id);
        let _one_writer = self.writing.lock(id).await;
        let tombstone = |seq| TAGS.encode(seq, true, None);
        let live = match self.stored(&name).await? {
            None => return self.set(&name, "{}", tombstone(seq)?).await,
            Some(Ok(live)) => live,
            Some(Err(deleted)) if deleted.seq >= seq => {
                return match how {
                    DeleteMode::Soft => Ok(()),
                    DeleteMode::Purge => {
                        self.remove(&name, true).await?;
                        self.set(&name, "{}", tombstone(seq)?).await
                    }
                };
            }
            // Deleted at an older seq (the writes since were compacted away): its tags must
            // move forward, and Key Vault changes only a live secret's tags.
            Some(Err(_)) => {
                self.recover(&name).await?;
                match self.stored(&name).await? {
                    Some(Ok(live)) => live,
                    _ => {
                        return Err(Error::sink(
                            KIND,
                            format!("{name} is still being recovered"),
                            true,
                        ))
                    }
                }
            }
        };
        if live.seq > seq {
            return Ok(());
        }
        if live.deleted && live.meta.is_none() {
            // A purge's tombstone (a live, value-less secret): move it forward.
            if live.seq < seq {
                return self.set(&name, "{}", tombstone(seq)?).await;
            }
            return Ok(());
        }
        // Tag first, so the deleted secret says at which seq it was deleted (a late, older
        // put then leaves it alone); a retry that finds it tagged but still live finishes.
        let meta = (how == DeleteMode::Soft).then_some(live.meta.as_ref()).flatten();
        if !(live.deleted && live.seq == seq) || how == DeleteMode::Purge {
            self.tag(&name, TAGS.encode(seq, true, meta)?).await?;
        }
        match how {
            DeleteMode::Soft => self.remove(&name, false).await,
            DeleteMode::Purge => {
                self.remove(&name, true).await?;
                self.set(&name, "{}", tombstone(seq)?).await
            }
        }
    }

    async fn erase(&self, id: SecretId) -> Result<()> {
        let name = object_name(&self.config.prefix, id);
        let _one_writer = self.writing.lock(id).await;
        self.remove(&name, true).await
    }

    async fn list(&self) -> Result<Vec<SinkEntry>> {
        let mut out = Vec::new();
        for (name, properties) in self.all_secrets().await? {
            let Some(id) = object_id(&self.config.prefix, &name) else {
                continue;
            };
            if name != object_name(&self.config.prefix, id) {
                continue;
            }
            if let Some(seq) = TAGS.listed_seq(&TAGS.decode(&properties.tags.unwrap_or_default())) {
                out.push(SinkEntry { id, seq });
            }
        }
        Ok(out)
    }

    /// Whom Entra ID issued this sink's token to, from the token's claims: an application
    /// (its client id and object id) or a user, and the tenant. The claims are read, not
    /// verified: Key Vault judges the token; this only says which identity the sink runs as.
    async fn identity(&self) -> Result<Option<String>> {
        let (_, credential, _) = self.connection()?;
        let token = credential
            .get_token(&[], None)
            .await
            .map_err(|e| self.failure("no token for the identity check", e))?;
        Ok(token_identity(token.token.secret()))
    }

    async fn health(&self) -> Result<()> {
        let client = self.client().await?;
        let mut pager = client
            .list_secret_properties(Some(SecretClientListSecretPropertiesOptions {
                maxresults: Some(1),
                ..Default::default()
            }))
            .map_err(|e| self.failure("not reachable", e))?
            .into_pages();
        pager
            .try_next()
            .await
            .map(|_| ())
            .map_err(|e| self.failure("not reachable", e))
    }
}

#[async_trait]
impl ForeignSecrets for AzureSink {
    async fn names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (name, properties) in self.all_secrets().await? {
            let ours = is_sledger_object(&self.config.prefix, &name)
                || properties
                    .tags
                    .as_ref()
                    .is_some_and(|t| t.contains_key("sledger-seq"));
            let enabled = properties.attributes.as_ref().and_then(|a| a.enabled) != Some(false);
            if !ours && enabled && name.starts_with(prefix) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn read(&self, name: &str) -> Result<Option<SecretValues>> {
        Ok(self
            .secret(name)
            .await?
            .and_then(|secret| secret.value)
            .map(|v| values_from_text(&Zeroizing::new(v))))
    }
}

/// `azure-kv://VAULT_HOST[?ca-file=PATH]`.
pub(super) fn from_url(parts: &mut super::url::UrlParts<'_>) -> Result<super::Backend> {
    let ca_file = parts.take("ca-file").map(PathBuf::from);
    let location = parts.location;
    // A host and an optional port, nothing else: `#`, `\` or `@` would make the https URL
    // built from it reach another host than the one written.
    let (host, port) = location.rsplit_once(':').unwrap_or((location, ""));
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !host_ok || !port.chars().all(|c| c.is_ascii_digit()) || location.ends_with(':') {
        return Err(
            parts.bad("expected azure-kv://VAULT_HOST[:PORT], e.g. azure-kv://myvault.vault.azure.net")
        );
    }
    let prefix = parts.prefix_within(
        "Key Vault",
        |c| c.is_ascii_alphanumeric() || c == '-',
        "letters, digits and -",
        MAX_NAME_CHARS,
    )?;
    let tenant_id = parts.take("tenant_id");
    let client_id = parts.take("client_id");
    let secret_env = parts.take_env_name("client_secret_env")?;
    let certificate = parts.take("client_certificate").map(PathBuf::from);
    if certificate.as_ref().is_some_and(|path| !path.is_absolute()) {
        return Err(parts.bad("client_certificate= must be an absolute path to a PEM file"));
    }
    let managed = parts.take("managed_identity_client_id");
    let credentials = match (tenant_id, client_id, secret_env, certificate, managed) {
        (None, None, None, None, None) => AzureCredentials::Chain,
        (None, None, None, None, Some(client_id)) => AzureCredentials::ManagedIdentity { client_id },
        (Some(tenant_id), Some(client_id), Some(secret_env), None, None) => {
            AzureCredentials::ServicePrincipal {
                tenant_id,
                client_id,
                secret_env,
            }
        }
        (Some(tenant_id), Some(client_id), None, Some(certificate), None) => {
            AzureCredentials::CertificatePrincipal {
                tenant_id,
                client_id,
                certificate,
            }
        }
        (_, _, Some(_), Some(_), _) => {
            return Err(parts.bad(
                "client_secret_env= and client_certificate= are two credentials for one service \
                 principal; name one",
            ))
        }
        (_, _, _, _, Some(_)) => {
            return Err(parts.bad(
                "managed_identity_client_id= and a service principal (tenant_id=, client_id=, \
                 client_secret_env= or client_certificate=) are two credential sources; name one",
            ))
        }
        _ => {
            return Err(parts.bad(
                "a service principal of the sink's own needs tenant_id=, client_id= and either \
                 client_secret_env= (the variable holding its secret) or client_certificate= (a \
                 PEM file with its certificate and key)",
            ))
        }
    };
    Ok(super::Backend::Azure(AzureConfig {
        vault_host: location.to_owned(),
        ca_file,
        prefix,
        max_concurrency: parts.concurrency(16),
        credentials,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_comes_from_the_tokens_claims() {
        use base64::Engine as _;
        let jwt = |claims: serde_json::Value| {
            let part = |v: &serde_json::Value| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
            };
            format!(
                "{}.{}.sig",
                part(&serde_json::json!({"alg": "RS256"})),
                part(&claims)
            )
        };
        assert_eq!(
            super::token_identity(&jwt(
                serde_json::json!({"appid": "app-1", "oid": "o-1", "tid": "t-1"})
            )),
            Some("application app-1 (object o-1) in tenant t-1".into())
        );
        assert_eq!(
            super::token_identity(&jwt(
                serde_json::json!({"upn": "ada@example.com", "azp": "cli", "tid": "t-1"})
            )),
            Some("user ada@example.com in tenant t-1".into())
        );
        assert_eq!(
            super::token_identity(&jwt(
                serde_json::json!({"preferred_username": "ada", "azp": "cli"})
            )),
            Some("user ada".into())
        );
        assert_eq!(super::token_identity("opaque-token"), None);
        assert_eq!(
            super::token_identity(&jwt(serde_json::json!({"tid": "t-1"}))),
            None
        );
    }

    #[test]
    fn tokens_are_scoped_to_the_vaults_cloud() {
        for (host, scope) in [
            ("myvault.vault.azure.net", "https://vault.azure.net/.default"),
            ("myvault.vault.azure.net:443", "https://vault.azure.net/.default"),
            ("myvault.vault.azure.cn", "https://vault.azure.cn/.default"),
            (
                "myvault.vault.usgovcloudapi.net",
                "https://vault.usgovcloudapi.net/.default",
            ),
            ("127.0.0.1:8443", "https://vault.azure.net/.default"),
            ("localhost:8443", "https://vault.azure.net/.default"),
        ] {
            assert_eq!(super::token_scope(host), scope, "{host}");
        }
    }
}
