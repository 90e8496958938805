//! `aws-sm://REGION?prefix=…&endpoint=…&recovery_days=N`: AWS Secrets Manager.
//!
//! Each secret is the AWS secret `<prefix><id>` whose SecretString is the JSON object of its
//! values (what workloads read). Its Description holds the record's metadata as JSON (name,
//! scope, owner, labels, version, seq, deleted); tags repeat the seq and name for people and
//! IAM conditions. ClientRequestToken is derived from (id, seq), so a retried write is the same
//! request. Soft delete schedules deletion with the recovery window (a later put restores the
//! secret first); purge deletes without recovery and leaves a value-less tombstone secret, so
//! a late write from another projector cannot bring the values back.
//!
//! Credentials come from the standard AWS chain (environment, profile, instance role), unless
//! the URL names others for this sink alone ([`AwsCredentials`]): a profile, a role to assume
//! on top of the chain (another account's backup), or the variables holding a static key pair.

use async_trait::async_trait;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};
use aws_sdk_secretsmanager::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::foreign::{is_sledger_object, values_from_text, ForeignSecrets};
use super::{
    object_id, object_name, Capabilities, DeleteMode, ObjectLocks, RecordMeta, Sink, SinkEntry, SinkRecord,
};
use crate::crypto::SecretValues;
use crate::error::{Error, Result};
use crate::SecretId;

/// SecretString's limit.
pub const MAX_VALUE_BYTES: usize = 65_536;
/// A description holds 2 048 characters; the seq and deleted flag around the metadata take
/// at most 60 of them.
const MAX_META_BYTES: usize = 2_048 - 60;
const KIND: &str = "aws-sm";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub region: String,
    pub endpoint: Option<String>,
    pub prefix: String,
    /// Days a soft-deleted secret stays recoverable (7 to 30).
    pub recovery_days: i64,
    pub max_concurrency: usize,
    pub credentials: AwsCredentials,
}

/// Where one sink's credentials come from: references only (names, ARNs), never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AwsCredentials {
    /// `profile=`: a named profile of the shared config and credentials files.
    pub profile: Option<String>,
    /// `access_key_env=` and `secret_key_env=`: the variables holding a static key pair.
    pub key_pair_env: Option<(String, String)>,
    /// `role_arn=`: assumed through STS on top of the credentials above, refreshed before it
    /// expires.
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub session_name: Option<String>,
}

impl AwsCredentials {
    /// The source, in words, for errors and status.
    fn describe(&self) -> String {
        let base = match (&self.profile, &self.key_pair_env) {
            (Some(profile), _) => format!("profile {profile}"),
            (None, Some((key, _))) => format!("the key pair in ${key}"),
            (None, None) => "the default credential chain".to_owned(),
        };
        match &self.role_arn {
            Some(role) => format!("role {role} assumed with {base}"),
            None => base,
        }
    }
}

impl AwsConfig {
    /// What such a sink holds and how hard it may be driven, known without connecting.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_bytes: MAX_VALUE_BYTES,
            max_meta_bytes: MAX_META_BYTES,
            // The name also goes into a tag, whose values hold 256 characters.
            max_field_bytes: usize::MAX,
            soft_delete: true,
            // A client request token makes a retry idempotent, but no write is conditional.
            conditional_write: false,
            max_concurrency: self.max_concurrency,
        }
    }
}

/// What the Description carries.
#[derive(Serialize, Deserialize)]
pub(crate) struct Described {
    seq: u64,
    deleted: bool,
    meta: Option<RecordMeta>,
}

pub struct AwsSink {
    config: AwsConfig,
    sdk: OnceCell<aws_config::SdkConfig>,
    client: OnceCell<Client>,
    /// Writes to one object from this process go one at a time (value, then description).
    writing: ObjectLocks,
}

impl std::fmt::Debug for AwsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSink")
            .field("region", &self.config.region)
            .field("prefix", &self.config.prefix)
            .finish()
    }
}

/// The state of one AWS secret as far as sledger is concerned.
struct Stored {
    /// Its Description is not one sledger wrote.
    unreadable: bool,
    seq: u64,
    deleted: bool,
    scheduled_for_deletion: bool,
    meta: Option<RecordMeta>,
}

fn request_token(id: SecretId, seq: u64, what: &str) -> String {
    format!("{}{what}{seq:016x}", id.simple())
}

impl AwsSink {
    pub fn new(config: AwsConfig) -> Self {
        AwsSink {
            config,
            sdk: OnceCell::new(),
            client: OnceCell::new(),
            writing: Default::default(),
        }
    }

    /// The SDK configuration with this sink's own credentials (each sink has its own: two
    /// sinks in one process may write to different accounts).
    pub(crate) async fn sdk(&self) -> Result<&aws_config::SdkConfig> {
        self.sdk
            .get_or_try_init(|| async {
                let credentials = &self.config.credentials;
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.config.region.clone()));
                if let Some(endpoint) = &self.config.endpoint {
                    loader = loader.endpoint_url(endpoint);
                }
                if let Some(profile) = &credentials.profile {
                    // The named profile is this sink's credentials, as `aws --profile` makes it:
                    // the default chain would try the environment's keys first, and those may
                    // well be another sink's account.
                    loader = loader.profile_name(profile).credentials_provider(
                        aws_config::profile::ProfileFileCredentialsProvider::builder()
                            .profile_name(profile)
                            .build(),
                    );
                }
                if let Some((key_var, secret_var)) = &credentials.key_pair_env {
                    let read = |var: &str| super::url::credential_from_env(KIND, var).map(|v| v.to_string());
                    loader = loader.credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                        read(key_var)?,
                        read(secret_var)?,
                        None,
                        None,
                        "sledger-sink-url",
                    ));
                }
                let base = loader.load().await;
                let Some(role) = &credentials.role_arn else {
                    return Ok(base);
                };
                let mut assume = aws_config::sts::AssumeRoleProvider::builder(role)
                    .session_name(credentials.session_name.as_deref().unwrap_or("sledger"))
                    .configure(&base);
                if let Some(external_id) = &credentials.external_id {
                    assume = assume.external_id(external_id);
                }
                let provider = assume.build().await;
                Ok(base
                    .into_builder()
                    .credentials_provider(aws_sdk_secretsmanager::config::SharedCredentialsProvider::new(
                        provider,
                    ))
                    .build())
            })
            .await
    }

    async fn client(&self) -> Result<&Client> {
        let sdk = self.sdk().await?;
        Ok(self.client.get_or_init(|| async { Client::new(sdk) }).await)
    }

    fn where_(&self) -> String {
        let place = self
            .config
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("region {}", self.config.region));
        format!("{place}, as {}", self.config.credentials.describe())
    }

    fn failure<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        what: &str,
        e: SdkError<E, HttpResponse>,
    ) -> Error {
        let temporary = match &e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(s) => {
                s.raw().status().as_u16() >= 500
                    || matches!(e.code(), Some("ThrottlingException" | "InternalServiceError"))
            }
            _ => false,
        };
        // Service messages describe the request, never its SecretString.
        let detail = match (e.code(), e.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => DisplayErrorContext(&e).to_string(),
        };
        Error::sink(KIND, format!("{what}: {detail} ({})", self.where_()), temporary)
    }

    /// What a Description says; `None` when sledger did not write it (every secret sledger
    /// creates has one from the start, so that is an edit behind its back).
    pub(crate) fn described(description: Option<&str>) -> Option<Described> {
        description
            .and_then(|d| serde_json::from_str::<Described>(d).ok())
            .filter(|d| d.deleted || d.meta.is_some())
    }

    async fn stored(&self, name: &str) -> Result<Option<Stored>> {
        match self
            .client()
            .await?
            .describe_secret()
            .secret_id(name)
            .send()
            .await
        {
            Ok(out) => {
                let described = Self::described(out.description());
                Ok(Some(Stored {
                    unreadable: described.is_none(),
                    seq: described.as_ref().map_or(0, |d| d.seq),
                    deleted: described.as_ref().is_some_and(|d| d.deleted),
                    scheduled_for_deletion: out.deleted_date().is_some(),
                    meta: described.and_then(|d| d.meta),
                }))
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(self.failure(&format!("cannot describe {name}"), e)),
        }
    }

    fn tags(seq: u64, name: Option<&str>) -> Vec<Tag> {
        let mut tags = vec![Tag::builder().key("sledger:seq").value(seq.to_string()).build()];
        if let Some(name) = name {
            tags.push(Tag::builder().key("sledger:name").value(name).build());
        }
        tags
    }

    /// A value-less secret marking `name` as deleted at `seq`.
    async fn create_tombstone(&self, id: SecretId, name: &str, seq: u64) -> Result<()> {
        let description = serde_json::to_string(&Described {
            meta: None,
            seq,
            deleted: true,
        })
        .expect("serialises");
        let client = self.client().await?;
        match client
            .create_secret()
            .name(name)
            .secret_string("{}")
            .description(description)
            .client_request_token(request_token(id, seq, "d"))
            .set_tags(Some(Self::tags(seq, None)))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Someone (a retry of ours, or another projector) got there first.
            Err(e) if e.code() == Some("ResourceExistsException") => Ok(()),
            // The purge just before is still finishing in AWS.
            Err(e) if e.message().is_some_and(|m| m.contains("scheduled for deletion")) => Err(Error::sink(
                KIND,
                format!("cannot record the deletion of {name} yet: AWS is still deleting it"),
                true,
            )),
            Err(e) => Err(self.failure(&format!("cannot record the deletion of {name}"), e)),
        }
    }

    /// Cancel the scheduled deletion of `name`.
    async fn restore(&self, name: &str) -> Result<()> {
        self.client()
            .await?
            .restore_secret()
            .secret_id(name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.failure(&format!("cannot restore {name}"), e))
    }

    async fn describe(&self, name: &str, described: &Described) -> Result<()> {
        self.client()
            .await?
            .update_secret()
            .secret_id(name)
            .description(serde_json::to_string(described).expect("serialises"))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.failure(&format!("cannot describe {name}"), e))
    }

    async fn force_delete(&self, name: &str) -> Result<()> {
        let client = self.client().await?;
        match client
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(()),
            Err(e) => Err(self.failure(&format!("cannot purge {name}"), e)),
        }
    }
}

#[async_trait]
impl Sink for AwsSink {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        self.config.capabilities()
    }

    async fn put(&self, record: &SinkRecord) -> Result<()> {
        let name = object_name(&self.config.prefix, record.id);
        let _one_writer = self.writing.lock(record.id).await;
        let value = record.values.to_json();
        let described = Described {
            meta: Some(record.meta()),
            seq: record.seq,
            deleted: false,
        };
        let token = request_token(record.id, record.seq, "p");
        let client = self.client().await?;
        match self.stored(&name).await? {
            Some(s) if s.seq > record.seq => Ok(()),
            None => match client
                .create_secret()
                .name(&name)
                .secret_string(value.as_str())
                .description(serde_json::to_string(&described).expect("serialises"))
                .client_request_token(token)
                .set_tags(Some(Self::tags(record.seq, Some(&record.name))))
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err(self.failure(&format!("cannot create {name}"), e)),
            },
            Some(s) => {
                if s.scheduled_for_deletion {
                    self.restore(&name).await?;
                }
                // Rewriting the seq it holds (reconcile after drift): the seq's token would
                // make AWS answer with the version already made under it and leave the
                // drifted one current.
                let token = if s.seq == record.seq {
                    uuid::Uuid::now_v7().simple().to_string()
                } else {
                    token
                };
                client
                    .put_secret_value()
                    .secret_id(&name)
                    .secret_string(value.as_str())
                    .client_request_token(token)
                    .send()
                    .await
                    .map_err(|e| self.failure(&format!("cannot write {name}"), e))?;
                self.describe(&name, &described).await?;
                client
                    .tag_resource()
                    .secret_id(&name)
                    .set_tags(Some(Self::tags(record.seq, Some(&record.name))))
                    .send()
                    .await
                    .map_err(|e| self.failure(&format!("cannot tag {name}"), e))?;
                Ok(())
            }
        }
    }

    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        let name = object_name(&self.config.prefix, id);
        let Some(stored) = self.stored(&name).await? else {
            return Ok(None);
        };
        if stored.scheduled_for_deletion || stored.deleted {
            return Ok(None);
        }
        let Some(meta) = stored.meta.filter(|_| !stored.unreadable) else {
            return Err(Error::drifted(
                KIND,
                &name,
                "its Description is not sledger's metadata",
            ));
        };
        let out = match self
            .client()
            .await?
            .get_secret_value()
            .secret_id(&name)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(None),
            Err(e) => return Err(self.failure(&format!("cannot read {name}"), e)),
        };
        let Some(text) = out.secret_string() else {
            return Err(Error::drifted(KIND, &name, "it holds a binary value"));
        };
        SinkRecord::from_stored(KIND, &name, meta, stored.seq, text.as_bytes()).map(Some)
    }

    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        let name = object_name(&self.config.prefix, id);
        let _one_writer = self.writing.lock(id).await;
        let stored = self.stored(&name).await?;
        if how == DeleteMode::Purge {
            let seq = stored.as_ref().map_or(seq, |s| s.seq.max(seq));
            if stored.is_some() {
                self.force_delete(&name).await?;
            }
            return self.create_tombstone(id, &name, seq).await;
        }
        match stored {
            None => self.create_tombstone(id, &name, seq).await,
            Some(s) if s.seq > seq || (s.seq == seq && s.scheduled_for_deletion) => Ok(()),
            // A purge's tombstone (live, value-less): move it forward.
            Some(s) if s.deleted && s.meta.is_none() && !s.scheduled_for_deletion => {
                if s.seq < seq {
                    self.describe(
                        &name,
                        &Described {
                            meta: None,
                            seq,
                            deleted: true,
                        },
                    )
                    .await?;
                }
                Ok(())
            }
            Some(s) => {
                let client = self.client().await?;
                if s.scheduled_for_deletion {
                    // Deleted at an older seq (the writes since were compacted away): its
                    // description must move forward, and AWS changes only a live secret's.
                    self.restore(&name).await?;
                }
                // Described first, so the deleted secret says at which seq it was deleted; a
                // retry that finds it described but not yet deleted finishes.
                self.describe(
                    &name,
                    &Described {
                        meta: s.meta,
                        seq,
                        deleted: true,
                    },
                )
                .await?;
                client
                    .delete_secret()
                    .secret_id(&name)
                    .recovery_window_in_days(self.config.recovery_days)
                    .send()
                    .await
                    .map_err(|e| self.failure(&format!("cannot delete {name}"), e))?;
                Ok(())
            }
        }
    }

    async fn erase(&self, id: SecretId) -> Result<()> {
        let name = object_name(&self.config.prefix, id);
        let _one_writer = self.writing.lock(id).await;
        self.force_delete(&name).await
    }

    async fn list(&self) -> Result<Vec<SinkEntry>> {
        let client = self.client().await?;
        let filter = Filter::builder()
            .key(FilterNameStringType::Name)
            .values(&self.config.prefix)
            .build();
        let mut pages = client
            .list_secrets()
            .filters(filter)
            .max_results(100)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.failure("cannot list secrets", e))?;
            for entry in page.secret_list() {
                let Some(name) = entry.name() else { continue };
                let Some(id) = object_id(&self.config.prefix, name) else {
                    continue;
                };
                if entry.deleted_date().is_some() {
                    continue;
                }
                match Self::described(entry.description()) {
                    Some(d) if !d.deleted => out.push(SinkEntry { id, seq: d.seq }),
                    Some(_) => {}
                    None => out.push(SinkEntry { id, seq: 0 }),
                }
            }
        }
        Ok(out)
    }

    async fn identity(&self) -> Result<Option<String>> {
        let sdk = self.sdk().await?;
        let me = aws_sdk_sts::Client::new(sdk)
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| self.failure("cannot tell who this sink runs as (sts:GetCallerIdentity)", e))?;
        Ok(Some(format!(
            "account {} as {}",
            me.account().unwrap_or("?"),
            me.arn().unwrap_or("?")
        )))
    }

    async fn health(&self) -> Result<()> {
        self.client()
            .await?
            .list_secrets()
            .max_results(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.failure("not reachable", e))
    }
}

#[async_trait]
impl ForeignSecrets for AwsSink {
    async fn names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut request = self.client().await?.list_secrets().max_results(100);
        if !prefix.is_empty() {
            request = request.filters(
                Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(prefix)
                    .build(),
            );
        }
        let mut pages = request.into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.failure("cannot list secrets", e))?;
            for entry in page.secret_list() {
                let Some(name) = entry.name() else { continue };
                let ours = is_sledger_object(&self.config.prefix, name)
                    || entry.tags().iter().any(|t| t.key() == Some("sledger:seq"));
                if !ours && entry.deleted_date().is_none() && name.starts_with(prefix) {
                    out.push(name.to_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn read(&self, name: &str) -> Result<Option<SecretValues>> {
        match self
            .client()
            .await?
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
        {
            Ok(out) => Ok(out.secret_string().map(values_from_text)),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(self.failure(&format!("cannot read {name}"), e)),
        }
    }
}

/// `aws-sm://REGION[?endpoint=URL][&recovery_days=N]`.
pub(super) fn from_url(parts: &mut super::url::UrlParts<'_>) -> Result<super::Backend> {
    let endpoint = parts.take_endpoint()?;
    let credentials = AwsCredentials {
        profile: parts.take("profile"),
        key_pair_env: match (
            parts.take_env_name("access_key_env")?,
            parts.take_env_name("secret_key_env")?,
        ) {
            (Some(key), Some(secret)) => Some((key, secret)),
            (None, None) => None,
            _ => return Err(parts.bad("access_key_env= and secret_key_env= go together")),
        },
        role_arn: parts.take("role_arn"),
        external_id: parts.take("external_id"),
        session_name: parts.take("session_name"),
    };
    if credentials.profile.is_some() && credentials.key_pair_env.is_some() {
        return Err(parts.bad("profile= and access_key_env= are two credential sources; name one"));
    }
    match &credentials.role_arn {
        Some(arn) if !(arn.starts_with("arn:") && arn.contains(":iam::") && arn.contains(":role/")) => {
            return Err(parts.bad("role_arn must be an IAM role ARN: arn:aws:iam::ACCOUNT:role/NAME"));
        }
        None if credentials.external_id.is_some() || credentials.session_name.is_some() => {
            return Err(parts.bad("external_id= and session_name= go with role_arn="));
        }
        _ => {}
    }
    let recovery_days = parts
        .take_number("recovery_days", 7..=30i64)
        .map_err(|_| parts.bad("recovery_days must be a number from 7 to 30 (AWS's limits)"))?
        .unwrap_or(7);
    if parts.location.is_empty() || parts.location.contains('/') {
        return Err(parts.bad("expected aws-sm://REGION, e.g. aws-sm://eu-west-1"));
    }
    Ok(super::Backend::Aws(AwsConfig {
        region: parts.location.to_owned(),
        endpoint,
        prefix: parts.prefix.clone(),
        recovery_days,
        max_concurrency: parts.concurrency(16),
        credentials,
    }))
}
