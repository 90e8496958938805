//! `vault-transit://HOST:PORT/MOUNT/KEY`: Vault/OpenBao Transit encrypts the master key with
//! a derived key whose context is the ledger's id. The server, TLS and credential options are
//! the vault sink's (`tls=off` for loopback, `token_env=`, `token_file=`, AppRole,
//! `namespace=`), and so are the credential-refusal rules.

use std::sync::Arc;

use base64::Engine;
use vaultrs::api::transit::requests::{DecryptDataRequest, EncryptDataRequest};
use vaultrs::error::ClientError;

use super::{from_raw, raw, refused, unreachable, KeyWrapper};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::sink::vault::VaultSink;
use crate::sink::{Backend, SinkUrl};

const KIND: &str = "vault-transit";

pub struct TransitKey {
    uri: String,
    mount: String,
    key: String,
    vault: Arc<VaultSink>,
}

impl TransitKey {
    pub fn parse(uri: &str) -> Result<TransitKey> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "{uri:?}: {why}; the form is vault-transit://HOST:PORT/MOUNT/KEY"
            ))
        };
        let rest = uri
            .strip_prefix("vault-transit://")
            .ok_or_else(|| bad("not a vault-transit URI"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (path, key) = location.rsplit_once('/').ok_or_else(|| bad("it names no key"))?;
        let (_, mount) = path.split_once('/').ok_or_else(|| bad("it names no mount"))?;
        if key.is_empty() || mount.is_empty() {
            return Err(bad("it names no mount or no key"));
        }
        // The server, TLS and credentials as a vault sink at that mount would have them.
        let sink = format!("vault://{path}{}{query}", if query.is_empty() { "" } else { "?" });
        let Backend::Vault(config) = SinkUrl::parse(&sink)?.backend else {
            return Err(bad("not a Vault address"));
        };
        Ok(TransitKey {
            uri: uri.to_owned(),
            mount: mount.to_owned(),
            key: key.to_owned(),
            vault: Arc::new(VaultSink::new(config)),
        })
    }

    fn failure(&self, e: ClientError) -> Error {
        match e {
            ClientError::APIError { code, errors } if code < 500 => {
                refused(&self.uri, format!("{code} {}", errors.join("; ")))
            }
            e => unreachable(KIND, &self.uri, e),
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A client for `key`'s server; one that cannot log in because the server is away is the KMS
/// being unreachable.
async fn client(vault: &VaultSink, uri: &str) -> Result<Arc<vaultrs::client::VaultClient>> {
    vault.client().await.map_err(|e| match e.is_temporary() {
        true => unreachable(KIND, uri, e),
        false => e,
    })
}

impl KeyWrapper for TransitKey {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn wrap(&self, key: &MasterKey, ledger_id: &str) -> Result<Vec<u8>> {
        let (vault, mount, name, uri) = (
            self.vault.clone(),
            self.mount.clone(),
            self.key.clone(),
            self.uri.clone(),
        );
        let (plaintext, context) = (
            zeroize::Zeroizing::new(base64(&raw(key))),
            base64(ledger_id.as_bytes()),
        );
        let answer = crate::blocking::run(async move {
            let client = client(&vault, &uri).await?;
            let mut request = EncryptDataRequest::builder();
            request.context(context);
            Ok::<_, Error>(
                vaultrs::transit::data::encrypt(&*client, &mount, &name, &plaintext, Some(&mut request))
                    .await,
            )
        })?;
        Ok(answer.map_err(|e| self.failure(e))?.ciphertext.into_bytes())
    }

    fn unwrap(&self, wrapped: &[u8], ledger_id: &str) -> Result<MasterKey> {
        let ciphertext = String::from_utf8(wrapped.to_vec()).map_err(|_| {
            refused(
                &self.uri,
                "the wrapped key in the ledger is not a Transit ciphertext",
            )
        })?;
        let (vault, mount, name, uri) = (
            self.vault.clone(),
            self.mount.clone(),
            self.key.clone(),
            self.uri.clone(),
        );
        let context = base64(ledger_id.as_bytes());
        let answer = crate::blocking::run(async move {
            let client = client(&vault, &uri).await?;
            let mut request = DecryptDataRequest::builder();
            request.context(context);
            Ok::<_, Error>(
                vaultrs::transit::data::decrypt(&*client, &mount, &name, &ciphertext, Some(&mut request))
                    .await,
            )
        })?;
        let plaintext = zeroize::Zeroizing::new(answer.map_err(|e| self.failure(e))?.plaintext);
        let bytes = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(plaintext.as_bytes())
                .map_err(|_| refused(&self.uri, "Transit answered with something that is not base64"))?,
        );
        from_raw(&bytes, &self.uri)
    }
}
