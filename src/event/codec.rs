//! Payload codec: bincode (serde) of a versioned struct per event type.
//!
//! Every payload is decoded through `(event_type, event_version)`. When a payload struct
//! changes, the old struct stays here as `…V1`, a new version number is written, and
//! [`decode`] upcasts the old form to the current [`Event`]. Fixture ledgers in `replay/`
//! pin that old versions keep decoding.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{Event, Scope, SealedValues, SinkRole};

/// Payload version written by this build, for every event type.
pub const CURRENT_VERSION: u32 = 1;

// Payload structs borrow when encoding (no copies on the append path) and own when decoding
// (serde's `Cow` deserialises to `Owned`); the bytes are those of the plain owned struct.

#[derive(Serialize, Deserialize)]
struct SecretCreatedV1<'a> {
    name: Cow<'a, str>,
    scope: Scope,
    owner: Cow<'a, str>,
    labels: Cow<'a, BTreeMap<String, String>>,
    values: Cow<'a, SealedValues>,
}

#[derive(Serialize, Deserialize)]
struct SecretUpdatedV1<'a> {
    labels: Cow<'a, BTreeMap<String, String>>,
    values: Cow<'a, SealedValues>,
}

#[derive(Serialize, Deserialize)]
struct SecretRenamedV1<'a> {
    from: Cow<'a, str>,
    to: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
struct Empty {}

#[derive(Serialize, Deserialize)]
struct KeyRotatedV1 {
    key_id: String,
}

#[derive(Serialize, Deserialize)]
struct KeyMigratedV1<'a> {
    provider: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
struct LedgerRecoveredV1<'a> {
    source: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
struct SinkForcedV1<'a> {
    name: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
struct LedgerRestoredV1 {
    target_seq: u64,
}

#[derive(Serialize, Deserialize)]
struct SinkAddedV1<'a> {
    name: Cow<'a, str>,
    url: Cow<'a, str>,
    role: SinkRole,
}

#[derive(Serialize, Deserialize)]
struct SinkRoleChangedV1<'a> {
    name: Cow<'a, str>,
    role: SinkRole,
}

#[derive(Serialize, Deserialize)]
struct SinkRemovedV1<'a> {
    name: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
struct TokenIssuedV1<'a> {
    name: Cow<'a, str>,
    role: crate::identity::Role,
    patterns: Cow<'a, [String]>,
    expires_at: Option<i64>,
    hash: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct TokenRevokedV1<'a> {
    name: Cow<'a, str>,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn to_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, config()).expect("event payloads always encode")
}

/// The most a payload may claim to need when decoded. A length prefix is read before its
/// bytes: without a bound, a forged payload of a few bytes claiming an exabyte-long vector
/// aborts the process on allocation (found by `fuzz::event_payloads_never_panic`).
const MAX_DECODED_PAYLOAD: usize = 256 << 20;

fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let bounded = config().with_limit::<MAX_DECODED_PAYLOAD>();
    let (v, read) = bincode::serde::decode_from_slice(bytes, bounded).map_err(|e| e.to_string())?;
    if read != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - read));
    }
    Ok(v)
}

/// Encode an event into `(event_type, event_version, payload)`.
pub fn encode(event: &Event) -> (&'static str, u32, Vec<u8>) {
    let payload = match event {
        Event::SecretCreated {
            name,
            scope,
            owner,
            labels,
            values,
        } => to_bytes(&SecretCreatedV1 {
            name: Cow::Borrowed(name),
            scope: *scope,
            owner: Cow::Borrowed(owner),
            labels: Cow::Borrowed(labels),
            values: Cow::Borrowed(values),
        }),
        Event::SecretUpdated { labels, values } => to_bytes(&SecretUpdatedV1 {
            labels: Cow::Borrowed(labels),
            values: Cow::Borrowed(values),
        }),
        Event::SecretRenamed { from, to } => to_bytes(&SecretRenamedV1 {
            from: Cow::Borrowed(from),
            to: Cow::Borrowed(to),
        }),
        Event::SecretDeleted
        | Event::SecretRestored
        | Event::SecretPurged
        | Event::MacsStarted
        | Event::AnchorsReset => to_bytes(&Empty {}),
        Event::KeyRotated { key_id } => to_bytes(&KeyRotatedV1 {
            key_id: key_id.clone(),
        }),
        Event::LedgerRestored { target_seq } => to_bytes(&LedgerRestoredV1 {
            target_seq: *target_seq,
        }),
        Event::KeyMigrated { provider } => to_bytes(&KeyMigratedV1 {
            provider: Cow::Borrowed(provider),
        }),
        Event::LedgerRecovered { source } => to_bytes(&LedgerRecoveredV1 {
            source: Cow::Borrowed(source),
        }),
        Event::SinkForced { name } => to_bytes(&SinkForcedV1 {
            name: Cow::Borrowed(name),
        }),
        Event::SinkAdded { name, url, role } => to_bytes(&SinkAddedV1 {
            name: Cow::Borrowed(name),
            url: Cow::Borrowed(url),
            role: *role,
        }),
        Event::SinkRoleChanged { name, role } => to_bytes(&SinkRoleChangedV1 {
            name: Cow::Borrowed(name),
            role: *role,
        }),
        Event::SinkRemoved { name } => to_bytes(&SinkRemovedV1 {
            name: Cow::Borrowed(name),
        }),
        Event::TokenIssued {
            name,
            role,
            patterns,
            expires_at,
            hash,
        } => to_bytes(&TokenIssuedV1 {
            name: Cow::Borrowed(name),
            role: *role,
            patterns: Cow::Borrowed(patterns),
            expires_at: *expires_at,
            hash: *hash,
        }),
        Event::TokenRevoked { name } => to_bytes(&TokenRevokedV1 {
            name: Cow::Borrowed(name),
        }),
    };
    (event.event_type(), CURRENT_VERSION, payload)
}

/// Decode a payload by type and version, upcasting older versions to the current [`Event`].
pub fn decode(event_type: &str, event_version: u32, payload: &[u8]) -> Result<Event, String> {
    Ok(match (event_type, event_version) {
        ("secret.created", 1) => {
            let p: SecretCreatedV1 = from_bytes(payload)?;
            Event::SecretCreated {
                name: p.name.into_owned(),
                scope: p.scope,
                owner: p.owner.into_owned(),
                labels: p.labels.into_owned(),
                values: p.values.into_owned(),
            }
        }
        ("secret.updated", 1) => {
            let p: SecretUpdatedV1 = from_bytes(payload)?;
            Event::SecretUpdated {
                labels: p.labels.into_owned(),
                values: p.values.into_owned(),
            }
        }
        ("secret.renamed", 1) => {
            let p: SecretRenamedV1 = from_bytes(payload)?;
            Event::SecretRenamed {
                from: p.from.into_owned(),
                to: p.to.into_owned(),
            }
        }
        ("secret.deleted", 1) => from_bytes::<Empty>(payload).map(|_| Event::SecretDeleted)?,
        ("secret.restored", 1) => from_bytes::<Empty>(payload).map(|_| Event::SecretRestored)?,
        ("secret.purged", 1) => from_bytes::<Empty>(payload).map(|_| Event::SecretPurged)?,
        ("ledger.macs_started", 1) => from_bytes::<Empty>(payload).map(|_| Event::MacsStarted)?,
        ("anchors.reset", 1) => from_bytes::<Empty>(payload).map(|_| Event::AnchorsReset)?,
        ("key.rotated", 1) => {
            let p: KeyRotatedV1 = from_bytes(payload)?;
            Event::KeyRotated { key_id: p.key_id }
        }
        ("key.migrated", 1) => {
            let p: KeyMigratedV1 = from_bytes(payload)?;
            Event::KeyMigrated {
                provider: p.provider.into_owned(),
            }
        }
        ("ledger.recovered", 1) => {
            let p: LedgerRecoveredV1 = from_bytes(payload)?;
            Event::LedgerRecovered {
                source: p.source.into_owned(),
            }
        }
        ("sink.forced", 1) => {
            let p: SinkForcedV1 = from_bytes(payload)?;
            Event::SinkForced {
                name: p.name.into_owned(),
            }
        }
        ("ledger.restored", 1) => {
            let p: LedgerRestoredV1 = from_bytes(payload)?;
            Event::LedgerRestored {
                target_seq: p.target_seq,
            }
        }
        ("sink.added", 1) => {
            let p: SinkAddedV1 = from_bytes(payload)?;
            Event::SinkAdded {
                name: p.name.into_owned(),
                url: p.url.into_owned(),
                role: p.role,
            }
        }
        ("sink.role_changed", 1) => {
            let p: SinkRoleChangedV1 = from_bytes(payload)?;
            Event::SinkRoleChanged {
                name: p.name.into_owned(),
                role: p.role,
            }
        }
        ("sink.removed", 1) => {
            let p: SinkRemovedV1 = from_bytes(payload)?;
            Event::SinkRemoved {
                name: p.name.into_owned(),
            }
        }
        ("token.issued", 1) => {
            let p: TokenIssuedV1 = from_bytes(payload)?;
            Event::TokenIssued {
                name: p.name.into_owned(),
                role: p.role,
                patterns: p.patterns.into_owned(),
                expires_at: p.expires_at,
                hash: p.hash,
            }
        }
        ("token.revoked", 1) => {
            let p: TokenRevokedV1 = from_bytes(payload)?;
            Event::TokenRevoked {
                name: p.name.into_owned(),
            }
        }
        (t, v) if super::EVENT_TYPES.contains(&t) && v > CURRENT_VERSION => {
            return Err(format!(
                "{t} version {v} was written by a newer sledger; upgrade sledger to read this ledger"
            ))
        }
        (t, v) => return Err(format!("unknown event type {t:?} version {v}")),
    })
}
