//! The Vault client and the token it carries: logged in on first use (opening a sink must not
//! need the server), then kept alive. A token with a TTL is renewed when two thirds of it have
//! passed; one that can no longer be renewed far enough (its max TTL is near, or it is not
//! renewable) is replaced by logging in again with AppRole, when AppRole credentials are set.
//! A token without a TTL (a root token) is used as it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::{SecretIdSource, VaultConfig, VaultCredentials, KIND};
use crate::error::{Error, Result};

/// The credentials themselves, read when the sink logs in.
enum Credentials {
    Token(Zeroizing<String>),
    AppRole {
        mount: String,
        role: String,
        secret: Zeroizing<String>,
    },
}

fn unusable(why: String) -> Error {
    Error::sink(KIND, why, false)
}

fn from_var(var: &str) -> Result<Zeroizing<String>> {
    crate::sink::url::credential_from_env(KIND, var)
}

/// A credential file: refused if others may read it (as ssh refuses a loose key).
fn from_file(path: &std::path::Path) -> Result<Zeroizing<String>> {
    let bytes = crate::sink::url::private_credential_file(KIND, path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| unusable(format!("{}: it is not UTF-8 text", path.display())))?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

impl Credentials {
    fn resolve(source: &VaultCredentials) -> Result<Credentials> {
        Ok(match source {
            VaultCredentials::TokenEnv(var) => Credentials::Token(from_var(var)?),
            VaultCredentials::TokenFile(path) => Credentials::Token(from_file(path)?),
            VaultCredentials::AppRole {
                mount,
                role_id_env,
                secret_id,
            } => Credentials::AppRole {
                mount: mount.clone(),
                role: from_var(role_id_env)?.to_string(),
                secret: match secret_id {
                    SecretIdSource::Env(var) => from_var(var)?,
                    SecretIdSource::File(path) => from_file(path)?,
                },
            },
            VaultCredentials::Process => {
                if let Ok(token) = std::env::var("VAULT_TOKEN") {
                    return Ok(Credentials::Token(Zeroizing::new(token)));
                }
                match (std::env::var("VAULT_ROLE_ID"), std::env::var("VAULT_SECRET_ID")) {
                    (Ok(role), Ok(secret)) => Credentials::AppRole {
                        mount: std::env::var("VAULT_APPROLE_MOUNT").unwrap_or_else(|_| "approle".into()),
                        role,
                        secret: Zeroizing::new(secret),
                    },
                    _ => return Err(unusable(
                        "no credentials: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID for AppRole, \
                             or name this sink's own with token_env=, token_file= or role_id_env=…"
                            .into(),
                    )),
                }
            }
        })
    }
}

struct Current {
    client: Arc<VaultClient>,
    /// When to renew or replace the token; `None` for a token that does not expire.
    refresh_at: Option<Instant>,
    renewable: bool,
    /// The TTL the token was issued with: a renewal granting less has hit the max TTL.
    issued_ttl: u64,
}

/// A client whose token is kept valid.
pub(super) struct Session {
    config: VaultConfig,
    current: Mutex<Option<Current>>,
}

/// How soon a failed renewal or login is tried again.
const RETRY_REFRESH: Duration = Duration::from_secs(5);

fn refresh_at(ttl_seconds: u64) -> Option<Instant> {
    (ttl_seconds > 0).then(|| Instant::now() + Duration::from_secs(ttl_seconds) * 2 / 3)
}

impl Session {
    pub fn new(config: VaultConfig) -> Session {
        Session {
            config,
            current: Mutex::new(None),
        }
    }

    /// A client with a token that is valid now.
    pub async fn client(&self) -> Result<Arc<VaultClient>> {
        let mut current = self.current.lock().await;
        let Some(c) = current.as_mut() else {
            let fresh = self.log_in().await?;
            return Ok(current.insert(fresh).client.clone());
        };
        if c.refresh_at.is_none_or(|at| Instant::now() < at) {
            return Ok(c.client.clone());
        }
        if c.renewable {
            match vaultrs::token::renew_self(&*c.client, None).await {
                Ok(auth) if auth.lease_duration >= c.issued_ttl || !self.can_log_in() => {
                    tracing::debug!(ttl = auth.lease_duration, "vault token renewed");
                    c.refresh_at = refresh_at(auth.lease_duration);
                    c.renewable = auth.renewable;
                    return Ok(c.client.clone());
                }
                // Capped by the max TTL: a fresh login lasts longer.
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "vault token renewal failed"),
            }
        }
        // Log in again (AppRole), or look the token up again (VAULT_TOKEN: it may have been
        // replaced, or the last lookup failed). If that fails too, keep the token there is,
        // which may still be valid, and try again shortly: a blip must not stop renewal.
        match self.log_in().await {
            Ok(fresh) => Ok(current.insert(fresh).client.clone()),
            Err(e) => {
                tracing::debug!(error = %e, "vault login failed; keeping the current token for now");
                c.refresh_at = Some(Instant::now() + RETRY_REFRESH);
                Ok(c.client.clone())
            }
        }
    }

    fn can_log_in(&self) -> bool {
        matches!(
            Credentials::resolve(&self.config.credentials),
            Ok(Credentials::AppRole { .. })
        )
    }

    async fn log_in(&self) -> Result<Current> {
        let credentials = Credentials::resolve(&self.config.credentials)?;
        let mut settings = VaultClientSettingsBuilder::default();
        settings.address(&self.config.address);
        // Certificates are always checked: vaultrs would otherwise follow VAULT_SKIP_VERIFY.
        settings.verify(true);
        if let Some(ca) = &self.config.ca_file {
            settings.ca_certs(vec![ca.display().to_string()]);
        }
        if let Some(namespace) = &self.config.namespace {
            settings.namespace(Some(namespace.clone()));
        }
        if let Credentials::Token(token) = &credentials {
            settings.token(token.to_string());
        }
        let settings = settings.build().map_err(|e| {
            Error::sink(
                KIND,
                format!("cannot configure the client for {}: {e}", self.config.address),
                false,
            )
        })?;
        let mut client =
            VaultClient::new(settings).map_err(|e| self.failure("cannot build the client", e))?;
        let (ttl, renewable) = match credentials {
            Credentials::AppRole { mount, role, secret } => {
                let auth = vaultrs::auth::approle::login(&client, &mount, &role, &secret)
                    .await
                    .map_err(|e| self.failure("AppRole login failed", e))?;
                client.set_token(&auth.client_token);
                (auth.lease_duration, auth.renewable)
            }
            Credentials::Token(_) => match vaultrs::token::lookup_self(&client).await {
                Ok(token) => (token.ttl, token.renewable.unwrap_or(false)),
                // A token that may not look itself up is used as it is.
                Err(ClientError::APIError { code: 403, .. }) => (0, false),
                Err(e) => return Err(self.failure("cannot look up the token's TTL", e)),
            },
        };
        tracing::debug!(ttl, renewable, "vault client ready");
        Ok(Current {
            client: Arc::new(client),
            refresh_at: refresh_at(ttl),
            renewable,
            issued_ttl: ttl,
        })
    }

    fn failure(&self, what: &str, e: ClientError) -> Error {
        super::failure_at(&self.config, what, e)
    }
}
