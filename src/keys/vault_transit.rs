//! `vault-transit://HOST:PORT/MOUNT/KEY`: Vault/OpenBao Transit encrypts the master key with
//! a derived key whose context is the ledger's id. The server, TLS and credential options are
//! the vault sink's (`tls=off` for loopback, `token_env=`, `token_file=`, AppRole,
//! `namespace=`), and so are the credential-refusal rules.

use std::sync::Arc;

use base64::Engine;
use vaultrs::api::transit::requests::{DecryptDataRequest, EncryptDataRequest};
use vaultrs::client::VaultClient;
use vaultrs::error::ClientError;

use super::{from_raw, raw, refused, sink_url, split_uri, unreachable, KeyWrapper};
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
        let (location, query) =
            split_uri(uri, "vault-transit").ok_or_else(|| bad("not a vault-transit URI"))?;
        let (path, key) = location.rsplit_once('/').ok_or_else(|| bad("it names no key"))?;
        let (_, mount) = path.split_once('/').ok_or_else(|| bad("it names no mount"))?;
        if key.is_empty() || mount.is_empty() {
            return Err(bad("it names no mount or no key"));
        }
        // The server, TLS and credentials as a vault sink at that mount would have them.
        let Backend::Vault(config) = SinkUrl::parse(&sink_url("vault", path, query))?.backend else {
            return Err(bad("not a Vault address"));
        };
        Ok(TransitKey {
            uri: uri.to_owned(),
            mount: mount.to_owned(),
            key: key.to_owned(),
            vault: Arc::new(VaultSink::new(config)),
        })
    }

    /// Run one Transit request (given a logged-in client, the mount and the key's name) on the
    /// library's I/O runtime. A server that is away, even for the login, is the KMS being
    /// unreachable.
    fn call<T, Fut>(
        &self,
        request: impl FnOnce(Arc<VaultClient>, String, String) -> Fut + Send + 'static,
    ) -> Result<T>
    where
        Fut: std::future::Future<Output = std::result::Result<T, ClientError>> + Send,
        T: Send + 'static,
    {
        let (vault, mount, name, uri) = (
            self.vault.clone(),
            self.mount.clone(),
            self.key.clone(),
            self.uri.clone(),
        );
        crate::blocking::run(async move {
            let client = vault.client().await.map_err(|e| match e.is_temporary() {
                true => unreachable(KIND, &uri, e),
                false => e,
            })?;
            Ok::<_, Error>(request(client, mount, name).await)
        })?
        .map_err(|e| self.failure(e))
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

impl KeyWrapper for TransitKey {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn wrap(&self, key: &MasterKey, ledger_id: &str) -> Result<Vec<u8>> {
        let plaintext = zeroize::Zeroizing::new(base64(&raw(key)));
        let context = base64(ledger_id.as_bytes());
        let answer = self.call(move |client, mount, name| async move {
            let mut request = EncryptDataRequest::builder();
            request.context(context);
            vaultrs::transit::data::encrypt(&*client, &mount, &name, &plaintext, Some(&mut request)).await
        })?;
        Ok(answer.ciphertext.into_bytes())
    }

    fn unwrap(&self, wrapped: &[u8], ledger_id: &str) -> Result<MasterKey> {
        let ciphertext = String::from_utf8(wrapped.to_vec()).map_err(|_| {
            refused(
                &self.uri,
                "the wrapped key in the ledger is not a Transit ciphertext",
            )
        })?;
        let context = base64(ledger_id.as_bytes());
        let answer = self.call(move |client, mount, name| async move {
            let mut request = DecryptDataRequest::builder();
            request.context(context);
            vaultrs::transit::data::decrypt(&*client, &mount, &name, &ciphertext, Some(&mut request)).await
        })?;
        let plaintext = zeroize::Zeroizing::new(answer.plaintext);
        let bytes = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(plaintext.as_bytes())
                .map_err(|_| refused(&self.uri, "Transit answered with something that is not base64"))?,
        );
        from_raw(&bytes, &self.uri)
    }
}
