//! `aws-kms://REGION/KEY_ID_OR_ALIAS`: AWS KMS encrypts the master key under a symmetric KMS
//! key, with the encryption context `{"sledger:ledger": LEDGER_ID}` (so a policy can require
//! it, and a wrap from one ledger opens no other). Region, `endpoint=` and the credential
//! options (`profile=`, `role_arn=`, `access_key_env=`/`secret_key_env=`) are the aws-sm
//! sink's, and so are its credential-refusal rules.

use std::sync::Arc;

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;

use super::{from_raw, raw, refused, sink_url, split_uri, unreachable, KeyWrapper};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::sink::aws::AwsSink;
use crate::sink::{Backend, SinkUrl};

const KIND: &str = "aws-kms";
const CONTEXT_KEY: &str = "sledger:ledger";

pub struct KmsKey {
    uri: String,
    key: String,
    aws: Arc<AwsSink>,
}

impl KmsKey {
    pub fn parse(uri: &str) -> Result<KmsKey> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "{uri:?}: {why}; the form is aws-kms://REGION/KEY_ID_OR_ALIAS"
            ))
        };
        let (location, query) = split_uri(uri, "aws-kms").ok_or_else(|| bad("not an aws-kms URI"))?;
        let (region, key) = location.split_once('/').ok_or_else(|| bad("it names no key"))?;
        if key.is_empty() {
            return Err(bad("it names no key"));
        }
        let Backend::Aws(config) = SinkUrl::parse(&sink_url("aws-sm", region, query))?.backend else {
            return Err(bad("not an AWS region"));
        };
        Ok(KmsKey {
            uri: uri.to_owned(),
            key: key.to_owned(),
            aws: Arc::new(AwsSink::new(config)),
        })
    }

    fn failure<E: ProvideErrorMetadata + std::error::Error + 'static>(&self, e: SdkError<E>) -> Error {
        match &e {
            SdkError::ServiceError(service) => {
                let err = service.err();
                refused(
                    &self.uri,
                    format!(
                        "{}: {}",
                        err.code().unwrap_or("refused"),
                        err.message().unwrap_or_default()
                    ),
                )
            }
            _ => unreachable(KIND, &self.uri, aws_sdk_kms::error::DisplayErrorContext(&e)),
        }
    }

    /// Run one KMS request (given a client with this key's credentials, and the key's id) on
    /// the library's I/O runtime.
    fn call<T, E, Fut>(
        &self,
        request: impl FnOnce(aws_sdk_kms::Client, String) -> Fut + Send + 'static,
    ) -> Result<T>
    where
        Fut: std::future::Future<Output = std::result::Result<T, SdkError<E>>> + Send,
        T: Send + 'static,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (aws, key_id) = (self.aws.clone(), self.key.clone());
        crate::blocking::run(async move {
            let client = aws_sdk_kms::Client::new(aws.sdk().await?);
            Ok::<_, Error>(request(client, key_id).await)
        })?
        .map_err(|e| self.failure(e))
    }
}

impl KeyWrapper for KmsKey {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn wrap(&self, key: &MasterKey, ledger_id: &str) -> Result<Vec<u8>> {
        let (plaintext, ledger) = (raw(key), ledger_id.to_owned());
        let answer = self.call(move |client, key_id| async move {
            client
                .encrypt()
                .key_id(key_id)
                .plaintext(Blob::new(plaintext.to_vec()))
                .encryption_context(CONTEXT_KEY, ledger)
                .send()
                .await
        })?;
        answer
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| refused(&self.uri, "KMS answered without a ciphertext"))
    }

    fn unwrap(&self, wrapped: &[u8], ledger_id: &str) -> Result<MasterKey> {
        let (ciphertext, ledger) = (wrapped.to_vec(), ledger_id.to_owned());
        let answer = self.call(move |client, key_id| async move {
            client
                .decrypt()
                .key_id(key_id)
                .ciphertext_blob(Blob::new(ciphertext))
                .encryption_context(CONTEXT_KEY, ledger)
                .send()
                .await
        })?;
        let plaintext = zeroize::Zeroizing::new(
            answer
                .plaintext
                .map(Blob::into_inner)
                .ok_or_else(|| refused(&self.uri, "KMS answered without a plaintext"))?,
        );
        from_raw(&plaintext, &self.uri)
    }
}
