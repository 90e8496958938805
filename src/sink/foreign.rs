//! Reading the secrets a backend already holds that sledger did not write, so an existing
//! estate can be adopted into a ledger (`sledger import --from URL`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::crypto::SecretValues;
use crate::error::Result;

/// A backend's own secrets, outside sledger's objects. Read-only: nothing in the backend
/// changes.
#[async_trait]
pub trait ForeignSecrets: Send + Sync + std::fmt::Debug {
    /// Names of the backend's live secrets starting with `prefix` ("" for all), sorted, without
    /// the objects sledger writes (`<sink prefix><secret id>`, or marked with sledger's metadata).
    async fn names(&self, prefix: &str) -> Result<Vec<String>>;
    /// One secret's current values (see [`values_from_text`]); `None` when it has none to
    /// read (gone meanwhile, binary, or disabled).
    async fn read(&self, name: &str) -> Result<Option<SecretValues>>;
}

/// A stored text as values: a JSON object becomes its keys (non-string members as their JSON
/// text); anything else is the one key `value`.
pub fn values_from_text(text: &str) -> SecretValues {
    let mut values = SecretValues::new();
    match serde_json::from_str::<BTreeMap<String, serde_json::Value>>(text) {
        Ok(map) if !map.is_empty() => {
            for (k, v) in map {
                let v = Zeroizing::new(match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                });
                values.insert(k.as_str(), v.as_str());
            }
        }
        _ => {
            values.insert("value", text);
        }
    }
    values
}

#[cfg_attr(
    not(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault")),
    allow(dead_code)
)]
/// Whether `name` is one of sledger's objects under `prefix`.
pub(crate) fn is_sledger_object(prefix: &str, name: &str) -> bool {
    super::object_id(prefix, name).is_some()
}
