//! `azure-kv-key://VAULT_HOST/keys/NAME[/VERSION]`: an Azure Key Vault (or Managed HSM) RSA key
//! wraps the master key with RSA-OAEP-256. RSA-OAEP takes no context, so the ledger's id is
//! bound inside the wrap: what is wrapped is the master key followed by a key derived from the
//! ledger id, checked on unwrap. The wrapped bytes start with the key version that made them, so a
//! key rotated in Key Vault still unwraps older wraps. TLS (`ca-file=`) and the credential
//! options (`tenant_id=`, `client_id=`, `client_secret_env=` or `client_certificate=`,
//! `managed_identity_client_id=`)
//! are the azure-kv sink's, and so are its credential-refusal rules.

use std::sync::Arc;

use azure_core::error::ErrorKind;
use azure_core::http::StatusCode;
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, KeyClientUnwrapKeyOptions, KeyClientWrapKeyOptions, KeyOperationParameters,
};

use super::{from_raw, raw, refused, sink_url, split_uri, unreachable, KeyWrapper};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::sink::azure::AzureSink;
use crate::sink::{Backend, SinkUrl};

const KIND: &str = "azure-kv-key";

pub struct VaultKey {
    uri: String,
    name: String,
    /// The version the URI pins; the latest when absent.
    version: Option<String>,
    azure: Arc<AzureSink>,
}

/// The bytes that bind a wrap to one ledger.
fn binding(ledger_id: &str) -> [u8; 32] {
    blake3::derive_key("sledger 2026 master key wrapped for ledger", ledger_id.as_bytes())
}

impl VaultKey {
    pub fn parse(uri: &str) -> Result<VaultKey> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "{uri:?}: {why}; the form is azure-kv-key://VAULT_HOST/keys/NAME[/VERSION]"
            ))
        };
        let (location, query) = split_uri(uri, KIND).ok_or_else(|| bad("not an azure-kv-key URI"))?;
        let parts: Vec<&str> = location.split('/').collect();
        let (host, name, version) = match parts[..] {
            [host, "keys", name] => (host, name, None),
            [host, "keys", name, version] => (host, name, Some(version.to_owned())),
            _ => return Err(bad("it does not name one key")),
        };
        if host.is_empty() || name.is_empty() || version.as_deref() == Some("") {
            return Err(bad("it does not name one key"));
        }
        // TLS and credentials as an azure-kv sink on that vault would have them.
        let Backend::Azure(config) = SinkUrl::parse(&sink_url("azure-kv", host, query))?.backend else {
            return Err(bad("not a Key Vault host"));
        };
        Ok(VaultKey {
            uri: uri.to_owned(),
            name: name.to_owned(),
            version,
            azure: Arc::new(AzureSink::new(config)),
        })
    }

    fn failure(&self, e: azure_core::Error) -> Error {
        match e.kind() {
            ErrorKind::HttpResponse {
                status, error_code, ..
            } if u16::from(*status) < 500 && *status != StatusCode::TooManyRequests => refused(
                &self.uri,
                format!("{} {}", u16::from(*status), error_code.as_deref().unwrap_or("")).trim(),
            ),
            _ => unreachable(KIND, &self.uri, &e),
        }
    }

    /// One key operation (`wrap` or not) with the key's `version` ("" for the latest) on the
    /// library's I/O runtime: the key id that did it, and its result.
    fn operate(&self, wrap: bool, version: String, value: Vec<u8>) -> Result<(String, Vec<u8>)> {
        let client = self.azure.key_client()?;
        let name = self.name.clone();
        let parameters = KeyOperationParameters {
            algorithm: Some(EncryptionAlgorithm::RsaOaep256),
            value: Some(value),
            ..Default::default()
        };
        let answer = crate::blocking::run(async move {
            let parameters = parameters.try_into()?;
            let response = if wrap {
                let options = KeyClientWrapKeyOptions {
                    key_version: (!version.is_empty()).then_some(version),
                    ..Default::default()
                };
                client.wrap_key(&name, parameters, Some(options)).await?
            } else {
                let options = KeyClientUnwrapKeyOptions::default();
                client
                    .unwrap_key(&name, &version, parameters, Some(options))
                    .await?
            };
            response.into_model()
        })
        .map_err(|e| self.failure(e))?;
        let kid = answer.kid.unwrap_or_default();
        let result = answer
            .result
            .ok_or_else(|| refused(&self.uri, "Key Vault answered without a result"))?;
        Ok((kid, result))
    }
}

impl KeyWrapper for VaultKey {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn wrap(&self, key: &MasterKey, ledger_id: &str) -> Result<Vec<u8>> {
        let mut plaintext = raw(key);
        plaintext.extend_from_slice(&binding(ledger_id));
        let (kid, wrapped) =
            self.operate(true, self.version.clone().unwrap_or_default(), plaintext.to_vec())?;
        // `…/keys/NAME/VERSION`: the version is kept with the wrap, which only it unwraps.
        let version = kid.rsplit('/').next().unwrap_or_default();
        let mut stored = Vec::with_capacity(version.len() + 1 + wrapped.len());
        stored.extend_from_slice(version.as_bytes());
        stored.push(0);
        stored.extend_from_slice(&wrapped);
        Ok(stored)
    }

    fn unwrap(&self, wrapped: &[u8], ledger_id: &str) -> Result<MasterKey> {
        let split = wrapped.iter().position(|b| *b == 0);
        let (version, ciphertext) = match split {
            Some(at) => (
                String::from_utf8_lossy(&wrapped[..at]).into_owned(),
                &wrapped[at + 1..],
            ),
            None => {
                return Err(refused(
                    &self.uri,
                    "the stored wrapped key is not one Key Vault made",
                ))
            }
        };
        let (_, plaintext) = self.operate(false, version, ciphertext.to_vec())?;
        let plaintext = zeroize::Zeroizing::new(plaintext);
        let Some(key) = plaintext.strip_suffix(&binding(ledger_id)) else {
            return Err(refused(&self.uri, "the wrap was made for a different ledger"));
        };
        from_raw(key, &self.uri)
    }
}
