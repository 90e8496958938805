//! Key material and ciphers. This is the only module that touches a cipher.
//!
//! * The master key (KEK) wraps every per-secret data key (DEK) and the fingerprint key.
//! * Values are sealed with XChaCha20-Poly1305 under the secret's DEK, with associated data
//!   `secret_id ‖ seq`, so a sealed blob cannot be moved to another secret or event.
//! * Fingerprints are keyed blake3 hashes of single values: they show that a value changed,
//!   and whether two versions are equal, without revealing it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::SecretId;

const NONCE_LEN: usize = 24;
/// The key check of ledgers made before subkeys: a keyed hash under the master key itself.
const LEGACY_KEY_CHECK_CONTEXT: &[u8] = b"sledger master key check v1";
const KEY_CHECK_CONTEXT: &str = "sledger 2026-11 master key check";
const KEY_ID_CONTEXT: &str = "sledger key id v1";
/// The master key is never used as a key itself: each use has its own subkey.
const WRAPPING_CONTEXT: &str = "sledger 2026-11 master key: wrapping";
/// Wrapped under the wrapping subkey: a version byte, then nonce and ciphertext of a 32-byte
/// key. Wrappings from before subkeys (under the master key itself) are a byte shorter, and
/// still open, until `key rotate` wraps everything again.
const WRAPPED_V2: u8 = 2;
/// Mixes a secret's data key with a rotation's epoch key (see [`KeyEpochs`]).
const VALUE_EPOCH_CONTEXT: &str = "sledger 2026-11 value key of an epoch";
/// Mixes the event-MAC key with a rotation's epoch key.
const EVENT_MAC_EPOCH_CONTEXT: &str = "sledger 2026-11 event mac of an epoch";
const LEGACY_WRAPPED_LEN: usize = NONCE_LEN + 32 + 16;

/// Environment variable holding a base64 master key; it takes precedence over a key file.
pub const MASTER_KEY_ENV: &str = "SLEDGER_MASTER_KEY";

/// A 256-bit key that zeroizes on drop and never prints.
#[derive(Clone)]
struct Key32(Zeroizing<[u8; 32]>);

impl Key32 {
    fn random() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Key32(k)
    }
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }
}

/// The master key (KEK). Debug and Display print `[REDACTED]`.
#[derive(Clone)]
pub struct MasterKey(Key32);

/// A per-secret data key (DEK).
#[derive(Clone)]
pub struct DataKey(Key32);

/// The key that seals values at rest in local sinks (the sqlite sink); made once per ledger
/// and wrapped by the master key, so sink files never hold plaintext. Unwrapped, it keeps
/// its wrapped form: a sqlite sink stores that too, so the sink opens with the master key
/// alone once the ledger is lost (`sledger recover`).
#[derive(Clone)]
pub struct SinkSealKey {
    key: DataKey,
    wrapped: Option<Vec<u8>>,
    /// The ledgers it opens sink files for (see [`SinkSealKey::for_ledgers`]).
    ledgers: Vec<String>,
    /// The master key as a KMS wraps it, when a KMS holds it (see [`KeyEscrow`]).
    escrow: Option<KeyEscrow>,
}

/// The master key as the KMS that holds it wrapped it for one ledger: what a sqlite sink file
/// keeps beside its seal key, so that a sink whose ledger is lost opens with the KMS alone
/// (a key file's holder has the key itself). Nothing in it is secret without the KMS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEscrow {
    /// The KMS key's URI, as the ledger records it.
    pub kms: String,
    pub wrapped_master: Vec<u8>,
    /// The ledger the wrap is bound to.
    pub ledger_id: String,
}

/// The key for audit fingerprints; made once per ledger and wrapped by the master key.
#[derive(Clone)]
pub struct FingerprintKey(Key32);

macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "([REDACTED])"))
            }
        }
    )*};
}
redacted_debug!(MasterKey, DataKey, FingerprintKey, SinkSealKey);

impl fmt::Display for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Self {
        MasterKey(Key32::random())
    }

    /// Parse a base64 (standard alphabet) 32-byte key.
    pub fn from_base64(text: &str) -> Result<Self> {
        let mut bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| {
                    Error::KeyUnavailable("the master key is not valid base64; it must be 32 random bytes, base64-encoded (as written by `sledger init`)".into())
                })?,
        );
        if bytes.len() != 32 {
            return Err(Error::KeyUnavailable(format!(
                "the master key decodes to {} bytes; it must be exactly 32",
                bytes.len()
            )));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&bytes);
        bytes.zeroize();
        Ok(MasterKey(Key32(k)))
    }

    /// The key as base64, for writing to a key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0 .0.as_ref()))
    }

    /// Read a key file written by [`MasterKey::write_new_file`]. A key file others can read is
    /// refused, as ssh refuses such a private key.
    pub fn read_file(path: &Path) -> Result<Self> {
        Self::read_file_if_present(path)?.ok_or_else(|| {
            Error::KeyUnavailable(format!(
                "no key file at {}; pass --key-file / SLEDGER_KEY_FILE or set {MASTER_KEY_ENV}",
                path.display()
            ))
        })
    }

    /// As [`MasterKey::read_file`], but a file that is not there is `None`.
    pub fn read_file_if_present(path: &Path) -> Result<Option<Self>> {
        if let Ok(Some(mode)) = crate::private_file::loose_mode(path) {
            return Err(Error::KeyUnavailable(format!(
                "key file {} is readable or writable by others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read key file {}", path.display()), e)),
        };
        Self::from_base64(&text).map(Some)
    }

    /// Write the key to a new file with mode 0600; never overwrites.
    pub fn write_new_file(&self, path: &Path) -> Result<()> {
        let mut file = crate::private_file::create(path, "key file")?;
        let text = self.to_base64();
        file.write_all(text.as_bytes())
            .and_then(|_| file.write_all(b"\n"))
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(format!("cannot write key file {}", path.display()), e))?;
        sync_parent_dir(path)
    }

    /// A value stored in the ledger to recognise this key without revealing it.
    pub(crate) fn key_check(&self) -> [u8; 32] {
        blake3::derive_key(KEY_CHECK_CONTEXT, self.0 .0.as_ref())
    }

    /// Whether `stored` (a ledger's key check) was made by this key, now or before subkeys.
    pub(crate) fn checks(&self, stored: &[u8]) -> bool {
        let legacy = blake3::keyed_hash(&self.0 .0, LEGACY_KEY_CHECK_CONTEXT);
        stored == self.key_check().as_slice() || stored == legacy.as_bytes().as_slice()
    }

    fn wrapping_key(&self) -> Key32 {
        Key32(Zeroizing::new(blake3::derive_key(
            WRAPPING_CONTEXT,
            self.0 .0.as_ref(),
        )))
    }

    /// A short public identifier of this key, recorded in `key.rotated` events.
    pub fn key_id(&self) -> String {
        let id = blake3::derive_key(KEY_ID_CONTEXT, self.0 .0.as_ref());
        hex::encode(&id[..8])
    }

    fn wrap(&self, key: &Key32, aad: &[u8]) -> Vec<u8> {
        let mut wrapped = vec![WRAPPED_V2];
        wrapped.extend(seal_bytes(&self.wrapping_key(), key.0.as_ref(), aad));
        wrapped
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Key32> {
        let opened = match wrapped.split_first() {
            Some((&WRAPPED_V2, sealed)) if wrapped.len() == LEGACY_WRAPPED_LEN + 1 => {
                open_bytes(&self.wrapping_key(), sealed, aad)
            }
            _ => open_bytes(&self.0, wrapped, aad),
        };
        let plain = Zeroizing::new(opened.map_err(|_| Error::WrongKey)?);
        if plain.len() != 32 {
            return Err(Error::Corrupt("a wrapped key has the wrong length".into()));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&plain);
        Ok(Key32(k))
    }

    /// Wrap a secret's data key for storage in `secret_keys`.
    pub fn wrap_data_key(&self, dek: &DataKey, secret: SecretId) -> Vec<u8> {
        self.wrap(&dek.0, &dek_aad(secret))
    }

    /// Unwrap a secret's data key.
    pub fn unwrap_data_key(&self, wrapped: &[u8], secret: SecretId) -> Result<DataKey> {
        self.unwrap(wrapped, &dek_aad(secret)).map(DataKey)
    }

    /// Wrap the ledger's sink seal key.
    pub fn wrap_sink_seal_key(&self, key: &SinkSealKey) -> Vec<u8> {
        self.wrap(&key.key.0, b"sledger sink seal key")
    }

    /// Unwrap the ledger's sink seal key.
    pub fn unwrap_sink_seal_key(&self, wrapped: &[u8]) -> Result<SinkSealKey> {
        self.unwrap(wrapped, b"sledger sink seal key")
            .map(|k| SinkSealKey {
                key: DataKey(k),
                wrapped: Some(wrapped.to_vec()),
                ledgers: Vec::new(),
                escrow: None,
            })
    }

    /// Wrap the ledger's fingerprint key.
    /// Once a ledger's event MACs have started at `macs_from`, that seq is bound into the
    /// wrapping too, and so are the value epochs of its key rotations (`epochs`, as stored):
    /// removing or changing the ledger's record of either makes the key unopenable, so MACs
    /// cannot be switched off, nor values sealed again under keys an old master key opens,
    /// by editing the file.
    pub fn wrap_fingerprint_key(
        &self,
        key: &FingerprintKey,
        macs_from: Option<u64>,
        epochs: &[u8],
    ) -> Vec<u8> {
        self.wrap(&key.0, &fingerprint_aad(macs_from, epochs))
    }

    /// Unwrap the ledger's fingerprint key (see [`MasterKey::wrap_fingerprint_key`]).
    pub fn unwrap_fingerprint_key(
        &self,
        wrapped: &[u8],
        macs_from: Option<u64>,
        epochs: &[u8],
    ) -> Result<FingerprintKey> {
        self.unwrap(wrapped, &fingerprint_aad(macs_from, epochs))
            .map(FingerprintKey)
    }
}

fn fingerprint_aad(macs_from: Option<u64>, epochs: &[u8]) -> Vec<u8> {
    let mut aad = b"sledger fingerprint key".to_vec();
    if let Some(seq) = macs_from {
        aad.extend_from_slice(b" macs from ");
        aad.extend_from_slice(&seq.to_le_bytes());
    }
    if !epochs.is_empty() {
        aad.extend_from_slice(b" value epochs ");
        aad.extend_from_slice(blake3::hash(epochs).as_bytes());
    }
    aad
}

/// The epochs of a ledger's key rotations. A secret keeps one data key for its whole life,
/// but from each `key rotate` on its values are sealed under that key mixed with the
/// rotation's fresh epoch key, wrapped only by the new master key: so an old master key (with
/// a copy of the ledger from before the rotation, which holds the data keys wrapped by it)
/// opens the history sealed before the rotation, never a version written after it. Event
/// MACs move to each epoch the same way ([`EventMac::with_epochs`]).
#[derive(Clone, Default)]
pub struct KeyEpochs(Vec<(u64, Key32)>);

const EPOCH_RECORD_LEN: usize = 8 + 1 + LEGACY_WRAPPED_LEN;

fn epoch_aad(from: u64) -> Vec<u8> {
    let mut aad = b"sledger value epoch from ".to_vec();
    aad.extend_from_slice(&from.to_le_bytes());
    aad
}

impl KeyEpochs {
    /// The epochs as a ledger stores them (each epoch key wrapped by `master`).
    pub fn load(master: &MasterKey, stored: &[u8]) -> Result<Self> {
        if !stored.len().is_multiple_of(EPOCH_RECORD_LEN) {
            return Err(Error::Corrupt("the ledger's value epochs are damaged".into()));
        }
        stored
            .chunks(EPOCH_RECORD_LEN)
            .map(|record| {
                let from = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
                Ok((from, master.unwrap(&record[8..], &epoch_aad(from))?))
            })
            .collect::<Result<_>>()
            .map(KeyEpochs)
    }

    /// The epochs wrapped by `master`, to store.
    pub fn stored(&self, master: &MasterKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * EPOCH_RECORD_LEN);
        for (from, key) in &self.0 {
            out.extend_from_slice(&from.to_le_bytes());
            out.extend(master.wrap(key, &epoch_aad(*from)));
        }
        out
    }

    /// These epochs and a fresh one, for values sealed at `from` and later.
    pub fn and_new_from(&self, from: u64) -> Self {
        let mut epochs = self.0.clone();
        epochs.push((from, Key32::random()));
        KeyEpochs(epochs)
    }

    /// The key that seals (and opens) a secret's values at `seq`, given its data key.
    pub fn key_for(&self, dek: &DataKey, seq: u64) -> DataKey {
        match self.0.iter().rev().find(|(from, _)| *from <= seq) {
            None => dek.clone(),
            Some((_, epoch)) => {
                let mut mixed = blake3::Hasher::new_derive_key(VALUE_EPOCH_CONTEXT);
                mixed.update(dek.0 .0.as_ref());
                mixed.update(epoch.0.as_ref());
                DataKey(Key32(Zeroizing::new(*mixed.finalize().as_bytes())))
            }
        }
    }
}

redacted_debug!(KeyEpochs);

/// Make a new directory entry durable (a synced file in an unsynced directory can vanish).
pub(crate) fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("cannot sync directory {}", dir.display()), e))
}

fn dek_aad(secret: SecretId) -> Vec<u8> {
    let mut aad = b"sledger dek ".to_vec();
    aad.extend_from_slice(secret.as_bytes());
    aad
}

fn value_aad(secret: SecretId, seq: u64) -> [u8; 24] {
    let mut aad = [0u8; 24];
    aad[..16].copy_from_slice(secret.as_bytes());
    aad[16..].copy_from_slice(&seq.to_be_bytes());
    aad
}

fn seal_bytes(key: &Key32, plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = key
        .cipher()
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open_bytes(key: &Key32, sealed: &[u8], aad: &[u8]) -> std::result::Result<Vec<u8>, ()> {
    if sealed.len() < NONCE_LEN {
        return Err(());
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    key.cipher()
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| ())
}

impl DataKey {
    /// A fresh random data key for a new secret.
    pub fn generate() -> Self {
        DataKey(Key32::random())
    }

    /// Seal a secret's values for the event at `seq`.
    pub fn seal(&self, values: &SecretValues, secret: SecretId, seq: u64) -> Vec<u8> {
        let plain = Zeroizing::new(
            bincode::serde::encode_to_vec(&values.0, bincode::config::standard())
                .expect("a string map always encodes"),
        );
        seal_bytes(&self.0, &plain, &value_aad(secret, seq))
    }

    /// Open values sealed by [`DataKey::seal`] for the same secret and seq.
    pub fn open(&self, sealed: &[u8], secret: SecretId, seq: u64) -> Result<SecretValues> {
        let plain = Zeroizing::new(open_bytes(&self.0, sealed, &value_aad(secret, seq)).map_err(|_| {
            Error::Corrupt(format!(
                "sealed values of secret {secret} at seq {seq} do not decrypt"
            ))
        })?);
        let (map, _): (BTreeMap<String, Zeroizing<String>>, usize) = bincode::serde::decode_from_slice(
            &plain,
            bincode::config::standard().with_limit::<{ 256 << 20 }>(),
        )
        .map_err(|_| Error::Corrupt(format!("sealed values at seq {seq} do not decode")))?;
        Ok(SecretValues(map))
    }
}

impl SinkSealKey {
    pub fn generate() -> Self {
        SinkSealKey {
            key: DataKey::generate(),
            wrapped: None,
            ledgers: Vec::new(),
            escrow: None,
        }
    }

    /// The same key without its wrapped form: a sink opened with it does not record it (to
    /// read what an old key sealed without making the sink file name that key again).
    pub(crate) fn unrecorded(&self) -> SinkSealKey {
        SinkSealKey {
            key: self.key.clone(),
            wrapped: None,
            ledgers: self.ledgers.clone(),
            escrow: None,
        }
    }

    /// The same key, opening sink files for the ledgers `ids`: its own first, then the one it
    /// was recovered from, if any. A sqlite sink file records the first ledger that opens it
    /// and refuses the others: one file keeps one ledger's seal key.
    pub(crate) fn for_ledgers(&self, ids: Vec<String>) -> SinkSealKey {
        SinkSealKey {
            ledgers: ids,
            ..self.clone()
        }
    }

    /// The same key, with the master key as the KMS holding it wrapped it (none: a key file or
    /// the environment holds it).
    pub(crate) fn with_escrow(self, escrow: Option<KeyEscrow>) -> SinkSealKey {
        SinkSealKey { escrow, ..self }
    }

    /// The master key as its KMS wrapped it, for a sink file to keep.
    pub fn escrow(&self) -> Option<&KeyEscrow> {
        self.escrow.as_ref()
    }

    /// The ledgers this key opens sink files for; none when it is not a ledger's own.
    pub fn ledgers(&self) -> &[String] {
        &self.ledgers
    }

    /// The key as the master key wrapped it, when it came from there.
    pub fn wrapped(&self) -> Option<&[u8]> {
        self.wrapped.as_deref()
    }

    /// Seal a record's values, bound to its secret and seq.
    pub fn seal(&self, values: &SecretValues, secret: SecretId, seq: u64) -> Vec<u8> {
        self.key.seal(values, secret, seq)
    }

    /// Open values sealed by [`SinkSealKey::seal`].
    pub fn open(&self, sealed: &[u8], secret: SecretId, seq: u64) -> Result<SecretValues> {
        self.key.open(sealed, secret, seq)
    }
}

/// A 128-bit keyed hash of one value.
pub type Fingerprint = [u8; 16];

impl FingerprintKey {
    /// A fresh random fingerprint key (made once, at `init`).
    pub fn generate() -> Self {
        FingerprintKey(Key32::random())
    }

    /// Fingerprint one value.
    pub fn fingerprint(&self, value: &str) -> Fingerprint {
        let h = blake3::keyed_hash(&self.0 .0, value.as_bytes());
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&h.as_bytes()[..16]);
        fp
    }

    /// The key event MACs are made with.
    pub fn event_mac(&self) -> EventMac {
        EventMac {
            key: Zeroizing::new(blake3::derive_key("sledger 2026 event mac", self.0 .0.as_ref())),
            epochs: Vec::new(),
        }
    }

    /// What API tokens are hashed with (a key derived from this one, so token hashes and value
    /// fingerprints never share a key).
    pub fn token_hasher(&self) -> TokenHasher {
        TokenHasher(Zeroizing::new(blake3::derive_key(
            "sledger 2026 api token hash",
            self.0 .0.as_ref(),
        )))
    }

    /// Fingerprints of every value in a map, by key.
    pub fn fingerprints(&self, values: &SecretValues) -> BTreeMap<String, Fingerprint> {
        values
            .iter()
            .map(|(k, v)| (k.to_owned(), self.fingerprint(v)))
            .collect()
    }
}

/// MACs events (and the ledger's MAC bookkeeping) under a key derived from the fingerprint
/// key, so only master-key holders can write an event the ledger accepts. Debug hides the key.
#[derive(Clone)]
pub struct EventMac {
    key: Zeroizing<[u8; 32]>,
    /// From each key rotation on, events are MAC'd under this key mixed with the rotation's
    /// epoch key: an old master key (with a copy of the ledger that opens the fingerprint
    /// key) cannot MAC an event the ledger accepts after the rotation.
    epochs: Vec<(u64, Zeroizing<[u8; 32]>)>,
}

impl std::fmt::Debug for EventMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventMac(…)")
    }
}

impl EventMac {
    /// These MAC keys, with the epochs of `epochs` for the events from each rotation on.
    pub fn with_epochs(&self, epochs: &KeyEpochs) -> EventMac {
        EventMac {
            key: self.key.clone(),
            epochs: epochs
                .0
                .iter()
                .map(|(from, epoch)| {
                    let mut mixed = blake3::Hasher::new_derive_key(EVENT_MAC_EPOCH_CONTEXT);
                    mixed.update(self.key.as_ref());
                    mixed.update(epoch.0.as_ref());
                    (*from, Zeroizing::new(*mixed.finalize().as_bytes()))
                })
                .collect(),
        }
    }

    /// The MAC of the event at `seq`, given its (unkeyed, chained) hash.
    pub fn event(&self, seq: u64, hash: &[u8; 32]) -> [u8; 32] {
        *blake3::keyed_hash(self.key_at(seq), hash).as_bytes()
    }

    /// The MAC of the catalog snapshot taken at `seq`, given the digest of its encoding: under
    /// the same key as that event, so a key rotated out cannot forge a later snapshot either.
    pub fn snapshot(&self, seq: u64, digest: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(self.key_at(seq));
        h.update(b"snapshot\0");
        h.update(&seq.to_le_bytes());
        h.update(digest);
        *h.finalize().as_bytes()
    }

    /// Whether `a` and `b` fall in the same key epoch (no rotation's epoch starts between them).
    pub fn same_epoch(&self, a: u64, b: u64) -> bool {
        let epoch = |seq: u64| self.epochs.iter().filter(|(from, _)| *from <= seq).count();
        epoch(a) == epoch(b)
    }

    fn key_at(&self, seq: u64) -> &[u8; 32] {
        match self.epochs.iter().rev().find(|(from, _)| *from <= seq) {
            Some((_, key)) => key,
            None => &self.key,
        }
    }

    /// The MAC of a named bookkeeping value (`mac_from`, the trusted point).
    pub fn setting(&self, name: &str, value: &[u8]) -> [u8; 32] {
        named_mac(&self.key, name, value)
    }

    /// The MAC of a named bookkeeping value that vouches for the log up to `seq` (a sink's
    /// checkpoint): under that seq's epoch key, so a key rotated out cannot vouch for a seq
    /// after the rotation.
    pub fn setting_at(&self, seq: u64, name: &str, value: &[u8]) -> [u8; 32] {
        named_mac(self.key_at(seq), name, value)
    }

    /// Constant-time comparison of two MACs.
    pub fn matches(a: &[u8; 32], b: &[u8; 32]) -> bool {
        blake3::Hash::from(*a) == blake3::Hash::from(*b)
    }
}

fn named_mac(key: &[u8; 32], name: &str, value: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(value);
    *h.finalize().as_bytes()
}

/// Hashes API tokens into what the ledger stores. Debug never shows the key.
#[derive(Clone)]
pub struct TokenHasher(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHasher(…)")
    }
}

impl TokenHasher {
    pub fn hash(&self, token: &str) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, token.as_bytes()).as_bytes()
    }
}

/// A secret's key/value map in plaintext. Zeroized on drop; Debug shows only the keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(BTreeMap<String, Zeroizing<String>>);

impl SecretValues {
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert a value; returns true if the key was already present.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> bool {
        self.0.insert(key.into(), Zeroizing::new(value.into())).is_some()
    }

    pub fn remove(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(|k| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Size of the values as the JSON object a sink would store.
    pub fn json_size(&self) -> usize {
        self.to_json().len()
    }

    /// The values from the JSON object of strings a sink stores; `None` if `json` is anything
    /// else (the caller names the object: a parse error would quote the text).
    pub fn from_json(json: &[u8]) -> Option<SecretValues> {
        let map: BTreeMap<String, Zeroizing<String>> = serde_json::from_slice(json).ok()?;
        let mut values = SecretValues::new();
        for (k, v) in &map {
            values.insert(k.as_str(), v.as_str());
        }
        Some(values)
    }

    /// The values as a JSON object (the form sinks and `--format json` use).
    pub fn to_json(&self) -> Zeroizing<String> {
        let plain: BTreeMap<&str, &str> = self.iter().collect();
        Zeroizing::new(serde_json::to_string(&plain).expect("a string map always serialises"))
    }
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "[REDACTED]")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The master key wraps through its own subkey, never as a key itself; what was wrapped,
    /// and the key check made, before subkeys still open and match.
    #[test]
    fn the_master_key_works_through_subkeys_and_still_opens_older_wrappings() {
        let master = MasterKey::generate();
        let (dek, id) = (DataKey::generate(), SecretId::now_v7());
        let wrapped = master.wrap_data_key(&dek, id);
        assert_eq!((wrapped[0], wrapped.len()), (WRAPPED_V2, LEGACY_WRAPPED_LEN + 1));
        assert!(
            open_bytes(&master.0, &wrapped[1..], &dek_aad(id)).is_err(),
            "not under the master key itself"
        );
        let unwrapped = master.unwrap_data_key(&wrapped, id).unwrap();
        assert_eq!(unwrapped.0 .0.as_ref(), dek.0 .0.as_ref());

        let legacy = seal_bytes(&master.0, dek.0 .0.as_ref(), &dek_aad(id));
        assert_eq!(legacy.len(), LEGACY_WRAPPED_LEN);
        let unwrapped = master.unwrap_data_key(&legacy, id).unwrap();
        assert_eq!(unwrapped.0 .0.as_ref(), dek.0 .0.as_ref());
        assert!(matches!(
            MasterKey::generate().unwrap_data_key(&wrapped, id),
            Err(Error::WrongKey)
        ));

        let legacy_check = blake3::keyed_hash(&master.0 .0, LEGACY_KEY_CHECK_CONTEXT);
        assert!(master.checks(legacy_check.as_bytes()));
        assert!(master.checks(&master.key_check()));
        assert_ne!(master.key_check(), *legacy_check.as_bytes());
        assert!(!MasterKey::generate().checks(&master.key_check()));
    }

    #[test]
    fn sealed_values_are_bound_to_secret_and_seq() {
        let dek = DataKey::generate();
        let id = SecretId::now_v7();
        let mut v = SecretValues::new();
        v.insert("password", "hunter2");
        let sealed = dek.seal(&v, id, 7);
        assert_eq!(dek.open(&sealed, id, 7).unwrap(), v);
        assert!(dek.open(&sealed, id, 8).is_err());
        assert!(dek.open(&sealed, SecretId::now_v7(), 7).is_err());
    }

    #[test]
    fn wrong_master_key_is_reported_as_such() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let id = SecretId::now_v7();
        let wrapped = a.wrap_data_key(&DataKey::generate(), id);
        assert!(matches!(b.unwrap_data_key(&wrapped, id), Err(Error::WrongKey)));
    }

    #[test]
    fn debug_never_shows_plaintext() {
        let mut v = SecretValues::new();
        v.insert("password", "hunter2");
        let shown = format!("{v:?} {:?} {}", MasterKey::generate(), MasterKey::generate());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password"));
    }
}
