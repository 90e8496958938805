//! Rules for names, value keys, labels and sizes, checked before anything is appended.

use std::collections::BTreeMap;

use crate::crypto::SecretValues;
use crate::error::{Error, Result};

/// Default limit on a secret's values, measured as the JSON object a sink stores.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 * 1024;

const NAME_CHARS: &str = "letters, digits and _ . @ / + = -";

/// Secret names: `[A-Za-z0-9_.@/+=-]`, 1–255 characters.
pub fn secret_name(name: &str) -> Result<()> {
    let err = |reason: String| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return err("a name needs at least one character".into());
    }
    if name.len() > 255 {
        return err(format!("it is {} characters long; the limit is 255", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.@/+=-".contains(*c)))
    {
        return err(format!("{c:?} is not allowed; use only {NAME_CHARS}"));
    }
    // A URL path drops `.` and `..` segments, so such a name could be written but never
    // addressed through `sledger serve`.
    if let Some(segment) = name.split('/').find(|s| *s == "." || *s == "..") {
        return err(format!(
            "a {segment:?} path segment cannot be addressed through a server URL; \
             use a segment with other characters as well"
        ));
    }
    Ok(())
}

/// Value keys: `[A-Za-z0-9_.-]`, 1–128 characters.
pub fn value_key(key: &str) -> Result<()> {
    let err = |reason: String| {
        Err(Error::InvalidValueKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return err("a key needs at least one character".into());
    }
    if key.len() > 128 {
        return err(format!("it is {} characters long; the limit is 128", key.len()));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
    {
        return err(format!(
            "{c:?} is not allowed; use only letters, digits and _ . -"
        ));
    }
    Ok(())
}

/// Label keys follow the value-key rules; label values are at most 255 characters.
pub fn labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        value_key(k).map_err(|e| match e {
            Error::InvalidValueKey { key, reason } => Error::InvalidLabel { key, reason },
            other => other,
        })?;
        if v.len() > 255 {
            return Err(Error::InvalidLabel {
                key: k.clone(),
                reason: format!("its value is {} bytes long (UTF-8); the limit is 255", v.len()),
            });
        }
    }
    Ok(())
}

/// A complete value map: non-empty, valid keys, within the size limit.
pub fn values(name: &str, values: &SecretValues, max_bytes: usize) -> Result<()> {
    if values.is_empty() {
        return Err(Error::EmptySecret {
            name: name.to_owned(),
        });
    }
    for key in values.keys() {
        value_key(key)?;
    }
    let size = values.json_size();
    if size > max_bytes {
        return Err(Error::ValueTooLarge {
            name: name.to_owned(),
            size,
            limit: max_bytes,
        });
    }
    Ok(())
}

/// Sink names: 1–64 lowercase letters, digits, `-` and `_`, starting with a letter or digit.
pub fn sink_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid sink name {name:?}: use 1-64 lowercase letters, digits, - and _, starting with a letter or digit"
        )))
    }
}

/// Who an event is recorded as (the audit log's actor, a private secret's owner): some text,
/// at most 255 characters, none of them control characters.
pub fn actor(actor: &str) -> Result<()> {
    if actor.trim().is_empty() || actor.chars().count() > 255 || actor.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "the actor {actor:?} cannot be recorded: it must be 1 to 255 characters without control \
             characters (--actor NAME, or leave it out for USER@HOST)"
        )));
    }
    Ok(())
}

/// For `#[serde(deserialize_with)]`: a map whose every key is given once. serde keeps the last
/// of a key given twice without a word, which for values and labels would drop what was sent;
/// this refuses it ("duplicate key `K`", naming the key, never a value).
pub fn unique_keys<'de, D, V>(deserializer: D) -> std::result::Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: serde::Deserialize<'de>,
{
    struct Entries<V>(std::marker::PhantomData<V>);
    impl<'de, V: serde::Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut entries = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, V>()? {
                if entries.contains_key(&key) {
                    return Err(serde::de::Error::custom(format_args!("duplicate key `{key}`")));
                }
                entries.insert(key, value);
            }
            Ok(entries)
        }
    }
    deserializer.deserialize_map(Entries(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(secret_name("db/prod-password@eu+1=x_y.z").is_ok());
        assert!(secret_name("").is_err());
        assert!(secret_name(&"a".repeat(256)).is_err());
        assert!(secret_name(&"a".repeat(255)).is_ok());
        assert!(secret_name("has space").is_err());
        assert!(secret_name("ünïcode").is_err());
        assert!(secret_name("/prod/db").is_ok());
        assert!(secret_name("a..b/.c/d.").is_ok());
        for dotted in [".", "..", "a/..", "../a", "a/./b"] {
            assert!(secret_name(dotted).is_err(), "{dotted}");
        }
    }

    #[test]
    fn keys() {
        assert!(value_key("user.name-1_x").is_ok());
        assert!(value_key("a/b").is_err());
        assert!(value_key(&"k".repeat(129)).is_err());
    }
}
