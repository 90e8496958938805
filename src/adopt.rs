//! Adopting an existing estate: the secrets a Vault mount, an AWS, GCP or Azure backend holds
//! outside sledger's own objects, read so they can be imported (`sledger import --from URL`).
//! All or nothing: adopting part of an estate silently would leave the rest unmanaged.

use crate::crypto::SecretValues;
use crate::error::{Error, Result};
use crate::sink::{redacted, SinkUrl};

/// One secret of the estate.
#[derive(Debug)]
pub struct Adoptee {
    pub name: String,
    pub values: SecretValues,
}

/// Read every secret under `prefix` ("" for all) of the backend at `url`. Refuses (changing
/// nothing) when there is none, when one has no text value to read, or when a name is not a
/// valid sledger name. `progress(done, total)` follows the reads.
pub async fn read_estate(
    url: &str,
    prefix: &str,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<Adoptee>> {
    let backend = SinkUrl::parse(url)?.open_foreign()?;
    let names = backend.names(prefix).await?;
    if names.is_empty() {
        return Err(Error::invalid(format!(
            "{} holds no secrets{} outside sledger's own objects",
            redacted(url),
            if prefix.is_empty() {
                String::new()
            } else {
                format!(" starting with {prefix:?}")
            }
        )));
    }
    let (mut estate, mut unreadable) = (Vec::new(), Vec::new());
    for (done, name) in names.iter().enumerate() {
        match backend.read(name).await? {
            Some(values) => estate.push(Adoptee {
                name: name.clone(),
                values,
            }),
            None => unreadable.push(name.clone()),
        }
        progress(done as u64 + 1, names.len() as u64);
    }
    if !unreadable.is_empty() {
        return Err(Error::invalid(format!(
            "{} secret(s) have no text value to read (binary, no enabled version, or deleted meanwhile): {}; \
             narrow the import with --prefix",
            unreadable.len(),
            unreadable.join(", ")
        )));
    }
    let invalid: Vec<String> = estate
        .iter()
        .filter_map(|a| {
            crate::validate::secret_name(&a.name)
                .err()
                .map(|e| format!("{:?} ({e})", a.name))
        })
        .collect();
    if !invalid.is_empty() {
        return Err(Error::invalid(format!(
            "{} name(s) are not valid sledger names: {}; narrow the import with --prefix",
            invalid.len(),
            invalid.join(", ")
        )));
    }
    Ok(estate)
}
