//! `client_certificate=/path.pem`: a service principal that proves itself with a certificate,
//! as `az login --service-principal --certificate` does. Entra ID's client assertion is a
//! short-lived JWT signed (RS256) with the certificate's private key and naming the certificate
//! by its SHA-1 thumbprint (`x5t`); the key never leaves this process.

use std::path::Path;

use async_trait::async_trait;
use azure_core::cloud::CloudConfiguration;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientMethodOptions, ClientOptions, Url};
use azure_identity::ClientAssertion;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::Signer;
use sha1::Digest as _;

use crate::error::{Error, Result};

/// How long an assertion is valid: it is made for one token request.
const LIFETIME_SECS: u64 = 600;

pub(super) struct CertificateAssertion {
    client_id: String,
    /// The token endpoint the assertion is addressed to (its `aud`).
    audience: String,
    thumbprint: String,
    signer: Box<dyn Signer>,
}

impl std::fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAssertion")
            .field("client_id", &self.client_id)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl CertificateAssertion {
    /// Read `path`: a PEM file holding the certificate and its RSA private key (unencrypted),
    /// readable by its owner only, as ssh wants of a key. Errors name the file, never its text.
    pub(super) fn load(
        tenant_id: &str,
        client_id: &str,
        path: &Path,
        options: &ClientOptions,
    ) -> Result<CertificateAssertion> {
        let unusable = |why: String| Error::sink(super::KIND, format!("{}: {why}", path.display()), false);
        let pem = crate::sink::url::private_credential_file(super::KIND, path)?;
        let certificate = CertificateDer::pem_slice_iter(&pem)
            .next()
            .and_then(|c| c.ok())
            .ok_or_else(|| unusable("it holds no certificate (-----BEGIN CERTIFICATE-----)".into()))?;
        let key = zeroize::Zeroizing::new(PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
            unusable("it holds no unencrypted private key (-----BEGIN PRIVATE KEY-----)".into())
        })?);
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .ok()
            .and_then(|key| key.choose_scheme(&[rustls::SignatureScheme::RSA_PKCS1_SHA256]))
            .ok_or_else(|| {
                unusable("its private key is not an RSA key, which Entra ID needs (RS256)".into())
            })?;
        Ok(CertificateAssertion {
            client_id: client_id.to_owned(),
            audience: token_endpoint(tenant_id, options)
                .map_err(|e| unusable(format!("no token endpoint for tenant {tenant_id}: {e}")))?
                .to_string(),
            thumbprint: URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(certificate.as_ref())),
            signer,
        })
    }

    /// The certificate's thumbprint as Entra ID shows it (hex), to say which one a sink uses.
    pub(super) fn thumbprint_hex(&self) -> String {
        URL_SAFE_NO_PAD
            .decode(&self.thumbprint)
            .map(hex::encode_upper)
            .unwrap_or_default()
    }
}

/// The token endpoint azure_identity posts the assertion to, which is what its `aud` must name:
/// worked out as that crate does (the client options' cloud, else `AZURE_AUTHORITY_HOST`, else
/// the public cloud; the path joined onto the authority's root).
fn token_endpoint(tenant_id: &str, options: &ClientOptions) -> azure_core::Result<Url> {
    let authority = match options.cloud.as_deref() {
        None => std::env::var("AZURE_AUTHORITY_HOST")
            .unwrap_or_else(|_| "https://login.microsoftonline.com".into()),
        Some(CloudConfiguration::Custom(custom)) => custom.authority_host.clone(),
        Some(CloudConfiguration::AzureGovernment) => "https://login.microsoftonline.us".into(),
        Some(CloudConfiguration::AzureChina) => "https://login.chinacloudapi.cn".into(),
        Some(_) => "https://login.microsoftonline.com".into(),
    };
    Ok(Url::parse(&authority)?.join(&format!("/{tenant_id}/oauth2/v2.0/token"))?)
}

#[async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let part = |value: serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let signed = format!(
            "{}.{}",
            part(serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": self.thumbprint})),
            part(serde_json::json!({
                "aud": self.audience,
                "iss": self.client_id,
                "sub": self.client_id,
                "jti": uuid::Uuid::now_v7().to_string(),
                "nbf": now,
                "iat": now,
                "exp": now + LIFETIME_SECS,
            }))
        );
        let signature = self.signer.sign(signed.as_bytes()).map_err(|e| {
            azure_core::Error::with_message(
                ErrorKind::Credential,
                format!("signing the client assertion failed: {e}"),
            )
        })?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
    use azure_core::http::{ClientMethodOptions, ClientOptions};
    use azure_identity::{ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions};

    #[derive(Debug)]
    struct Unused;

    #[async_trait::async_trait]
    impl ClientAssertion for Unused {
        async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
            unreachable!("no token is asked for")
        }
    }

    /// The assertion's audience is the endpoint the credential posts it to, also for an
    /// authority with a path, a default port and capitals (which the URL join normalises).
    #[test]
    fn the_audience_is_the_credentials_own_endpoint() {
        let mut custom = CustomConfiguration::default();
        custom.authority_host = "https://Login.Example:443/adfs/".into();
        let options = ClientOptions {
            cloud: Some(Arc::new(CloudConfiguration::Custom(custom))),
            ..Default::default()
        };
        let ours = super::token_endpoint("tenant-1", &options).unwrap();
        assert_eq!(ours.as_str(), "https://login.example/tenant-1/oauth2/v2.0/token");
        let credential = ClientAssertionCredential::new(
            "tenant-1".into(),
            "client-1".into(),
            Unused,
            Some(ClientAssertionCredentialOptions {
                client_options: options,
            }),
        )
        .unwrap();
        assert!(
            format!("{credential:?}").contains(&format!("{ours:?}")),
            "{credential:?}"
        );
    }
}
