//! `gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K`: Google Cloud KMS encrypts the
//! master key under a symmetric crypto key, with the ledger's id as additional authenticated
//! data (so a wrap from one ledger opens no other). `endpoint=` and the credential options
//! (`credentials_file=`, `impersonate=`) are the gcp-sm sink's, and so are its
//! credential-refusal rules.

use std::sync::Arc;

use google_cloud_gax::error::rpc::Code;
use google_cloud_kms_v1::client::KeyManagementService;

use super::{from_raw, raw, refused, sink_url, split_uri, unreachable, KeyWrapper};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::sink::gcp::GcpSink;
use crate::sink::{Backend, SinkUrl};

const KIND: &str = "gcp-kms";

pub struct CloudKmsKey {
    uri: String,
    /// `projects/P/locations/L/keyRings/R/cryptoKeys/K`.
    name: String,
    gcp: Arc<GcpSink>,
}

impl CloudKmsKey {
    pub fn parse(uri: &str) -> Result<CloudKmsKey> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "{uri:?}: {why}; the form is gcp-kms://projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY"
            ))
        };
        let (name, query) = split_uri(uri, KIND).ok_or_else(|| bad("not a gcp-kms URI"))?;
        let parts: Vec<&str> = name.split('/').collect();
        let [projects, project, locations, _, rings, _, keys, _] = parts[..] else {
            return Err(bad("it does not name one crypto key"));
        };
        if [projects, locations, rings, keys] != ["projects", "locations", "keyRings", "cryptoKeys"]
            || parts.iter().any(|p| p.is_empty())
        {
            return Err(bad("it does not name one crypto key"));
        }
        // The endpoint and credentials as a gcp-sm sink in that project would have them.
        let Backend::Gcp(config) = SinkUrl::parse(&sink_url("gcp-sm", project, query))?.backend else {
            return Err(bad("not a Google Cloud project"));
        };
        Ok(CloudKmsKey {
            uri: uri.to_owned(),
            name: name.to_owned(),
            gcp: Arc::new(GcpSink::new(config)),
        })
    }

    fn failure(&self, e: google_cloud_gax::error::Error) -> Error {
        let away = match e.status() {
            Some(status) => matches!(status.code, Code::Unavailable | Code::DeadlineExceeded),
            None => e.http_status_code().is_none_or(|code| code >= 500),
        };
        if away {
            return unreachable(KIND, &self.uri, &e);
        }
        match e.status() {
            Some(status) => refused(&self.uri, format!("{:?}: {}", status.code, status.message)),
            None => refused(&self.uri, &e),
        }
    }

    /// Run one KMS request (given a client with this key's endpoint and credentials, and the
    /// key's name) on the library's I/O runtime.
    fn call<T, Fut>(
        &self,
        request: impl FnOnce(KeyManagementService, String) -> Fut + Send + 'static,
    ) -> Result<T>
    where
        Fut: std::future::Future<Output = std::result::Result<T, google_cloud_gax::error::Error>> + Send,
        T: Send + 'static,
    {
        let (gcp, name, uri) = (self.gcp.clone(), self.name.clone(), self.uri.clone());
        crate::blocking::run(async move {
            let mut builder = KeyManagementService::builder()
                // One attempt: an unreachable KMS is reported at once, as exit 7.
                .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry);
            if let Some(endpoint) = gcp.endpoint() {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(credentials) = gcp.credentials()? {
                builder = builder.with_credentials(credentials);
            }
            let client = builder
                .build()
                .await
                .map_err(|e| unreachable(KIND, &uri, format!("cannot set up the KMS client ({e})")))?;
            Ok::<_, Error>(request(client, name).await)
        })?
        .map_err(|e| self.failure(e))
    }
}

impl KeyWrapper for CloudKmsKey {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn wrap(&self, key: &MasterKey, ledger_id: &str) -> Result<Vec<u8>> {
        let (plaintext, ledger) = (raw(key), ledger_id.to_owned());
        let answer = self.call(move |client, name| async move {
            client
                .encrypt()
                .set_name(name)
                .set_plaintext(plaintext.to_vec())
                .set_additional_authenticated_data(ledger.into_bytes())
                .send()
                .await
        })?;
        if answer.ciphertext.is_empty() {
            return Err(refused(&self.uri, "KMS answered without a ciphertext"));
        }
        Ok(answer.ciphertext.to_vec())
    }

    fn unwrap(&self, wrapped: &[u8], ledger_id: &str) -> Result<MasterKey> {
        let (ciphertext, ledger) = (wrapped.to_vec(), ledger_id.to_owned());
        let answer = self.call(move |client, name| async move {
            client
                .decrypt()
                .set_name(name)
                .set_ciphertext(ciphertext)
                .set_additional_authenticated_data(ledger.into_bytes())
                .send()
                .await
        })?;
        let plaintext = zeroize::Zeroizing::new(answer.plaintext.to_vec());
        from_raw(&plaintext, &self.uri)
    }
}
