//! The credential chain of the azure-kv sink, in the order of the SDKs'
//! DefaultAzureCredential: environment (service principal), workload identity, managed
//! identity, developer tools (`az login`, `azd auth login`). The first to give a token wins;
//! when none does, the error says what each one needed.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::ClientOptions;
use azure_identity::{
    ClientAssertionCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, DeveloperToolsCredential, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
};
use tokio::sync::Mutex;

use super::AzureCredentials;

#[derive(Debug)]
struct Chain {
    sources: Vec<(String, Arc<dyn TokenCredential>)>,
    /// The source that worked last, tried first next time.
    chosen: Mutex<Option<usize>>,
    /// What to do when none gives a token.
    hint: &'static str,
    /// The one scope tokens are asked for, whatever the caller asks: a vault's 401 challenge
    /// names the resource, and a squatter on its port must not choose the audience of the
    /// token it is then sent.
    scope: String,
}

/// The credential of a sink: its own service principal or managed identity when its URL names
/// one, else the default chain. Errors name the source, never a secret.
pub(super) fn for_sink(
    credentials: &AzureCredentials,
    options: &ClientOptions,
    scope: String,
) -> crate::Result<Arc<dyn TokenCredential>> {
    let unusable = |why: String| crate::Error::sink(super::KIND, why, false);
    let (label, credential): (String, Arc<dyn TokenCredential>) = match credentials {
        AzureCredentials::Chain => return Ok(chain(options, scope)),
        AzureCredentials::ServicePrincipal {
            tenant_id,
            client_id,
            secret_env,
        } => {
            let secret = crate::sink::url::credential_from_env(super::KIND, secret_env)?;
            let credential = ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(secret.to_string()),
                Some(ClientSecretCredentialOptions {
                    client_options: options.clone(),
                }),
            )
            .map_err(|e| unusable(format!("service principal {client_id}: {e}")))?;
            (
                format!(
                    "service principal {client_id} in tenant {tenant_id} with the secret in ${secret_env}"
                ),
                credential,
            )
        }
        AzureCredentials::CertificatePrincipal {
            tenant_id,
            client_id,
            certificate,
        } => {
            let assertion =
                super::certificate::CertificateAssertion::load(tenant_id, client_id, certificate, options)?;
            let label = format!(
                "service principal {client_id} in tenant {tenant_id} with the certificate {} (thumbprint {})",
                certificate.display(),
                assertion.thumbprint_hex()
            );
            let credential = ClientAssertionCredential::new(
                tenant_id.clone(),
                client_id.clone(),
                assertion,
                Some(ClientAssertionCredentialOptions {
                    client_options: options.clone(),
                }),
            )
            .map_err(|e| unusable(format!("service principal {client_id}: {e}")))?;
            (label, credential)
        }
        AzureCredentials::ManagedIdentity { client_id } => {
            // The SDK's options gain fields between releases; the rest keep their defaults.
            #[allow(clippy::needless_update)]
            let credential = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: Some(UserAssignedId::ClientId(client_id.clone())),
                client_options: options.clone(),
                ..Default::default()
            }))
            .map_err(|e| unusable(format!("managed identity {client_id}: {e}")))?;
            (format!("managed identity {client_id}"), credential)
        }
    };
    Ok(Arc::new(Chain {
        sources: vec![(label, credential)],
        chosen: Mutex::new(None),
        hint: "check the credentials this sink's URL names",
        scope,
    }))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The chain, its HTTP calls made with `options` (a custom CA for the token endpoint too).
fn chain(options: &ClientOptions, scope: String) -> Arc<dyn TokenCredential> {
    let mut sources: Vec<(String, Arc<dyn TokenCredential>)> = Vec::new();
    if let (Some(tenant), Some(client), Some(secret)) = (
        env("AZURE_TENANT_ID"),
        env("AZURE_CLIENT_ID"),
        env("AZURE_CLIENT_SECRET"),
    ) {
        let built = ClientSecretCredential::new(
            &tenant,
            client,
            Secret::new(secret),
            Some(ClientSecretCredentialOptions {
                client_options: options.clone(),
            }),
        );
        if let Ok(credential) = built {
            sources.push((
                "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET".into(),
                credential,
            ));
        }
    }
    if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        if let Ok(credential) = WorkloadIdentityCredential::new(None) {
            sources.push((
                "workload identity (AZURE_FEDERATED_TOKEN_FILE)".into(),
                credential,
            ));
        }
    }
    if let Ok(credential) = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
        client_options: options.clone(),
        ..Default::default()
    })) {
        sources.push(("managed identity".into(), credential));
    }
    if let Ok(credential) = DeveloperToolsCredential::new(None) {
        sources.push(("az login / azd auth login".into(), credential));
    }
    Arc::new(Chain {
        sources,
        chosen: Mutex::new(None),
        hint: "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, run on Azure with a \
               managed or workload identity, or `az login`",
        scope,
    })
}

#[async_trait]
impl TokenCredential for Chain {
    async fn get_token(
        &self,
        _requested: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let scopes = &[self.scope.as_str()][..];
        let mut chosen = self.chosen.lock().await;
        if let Some(i) = *chosen {
            if let Ok(token) = self.sources[i].1.get_token(scopes, options.clone()).await {
                return Ok(token);
            }
        }
        let mut tried = Vec::new();
        for (i, (label, source)) in self.sources.iter().enumerate() {
            match source.get_token(scopes, options.clone()).await {
                Ok(token) => {
                    *chosen = Some(i);
                    return Ok(token);
                }
                // Credential errors never carry the secret itself.
                Err(e) => tried.push(format!("{label}: {e}")),
            }
        }
        Err(azure_core::Error::with_message(
            ErrorKind::Credential,
            format!("{}; tried {}", self.hint, tried.join("; ")),
        ))
    }
}
