//! `client_certificate=/path.pem`: a service principal that proves itself with a certificate,
//! as `az login --service-principal --certificate` does. Entra ID's client assertion is a
//! short-lived JWT signed (RS256) with the certificate's private key and naming the certificate
//! by its SHA-1 thumbprint (`x5t`); the key never leaves this process.

use std::path::Path;

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::http::ClientMethodOptions;
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
    pub(super) fn load(tenant_id: &str, client_id: &str, path: &Path) -> Result<CertificateAssertion> {
        use std::os::unix::fs::MetadataExt;
        let unusable = |why: String| Error::sink(super::KIND, format!("{}: {why}", path.display()), false);
        let meta = std::fs::metadata(path).map_err(|e| unusable(format!("cannot read it ({e})")))?;
        if meta.mode() & 0o077 != 0 {
            return Err(unusable(format!(
                "it holds a private key and may be read by others (mode {:o}); `chmod 600` it",
                meta.mode() & 0o777
            )));
        }
        let pem = zeroize::Zeroizing::new(
            std::fs::read(path).map_err(|e| unusable(format!("cannot read it ({e})")))?,
        );
        let certificate = CertificateDer::pem_slice_iter(&pem)
            .next()
            .and_then(|c| c.ok())
            .ok_or_else(|| unusable("it holds no certificate (-----BEGIN CERTIFICATE-----)".into()))?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
            unusable("it holds no unencrypted private key (-----BEGIN PRIVATE KEY-----)".into())
        })?;
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .ok()
            .and_then(|key| key.choose_scheme(&[rustls::SignatureScheme::RSA_PKCS1_SHA256]))
            .ok_or_else(|| {
                unusable("its private key is not an RSA key, which Entra ID needs (RS256)".into())
            })?;
        let authority = std::env::var("AZURE_AUTHORITY_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "https://login.microsoftonline.com".into());
        Ok(CertificateAssertion {
            client_id: client_id.to_owned(),
            audience: format!(
                "{}/{tenant_id}/oauth2/v2.0/token",
                authority.trim_end_matches('/')
            ),
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
