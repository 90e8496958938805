//! Event MACs (ARCHITECTURE.md, security): the unkeyed hash chain lets anyone check the log's
//! structure; the MAC of each event's hash, under a key only master-key holders have, lets a
//! key holder tell the events sledger wrote from events someone who could write the file
//! forged (a `sink.added exec:///tmp/x`, a `secret.purged`, a faked actor) and rechained.
//!
//! Bookkeeping, in settings, each with its own MAC so it cannot be moved:
//! - `mac_from`: the first seq that must carry a MAC (1 for ledgers made with MACs; for an
//!   older ledger, the `ledger.macs_started` event its first write by a key holder appends).
//! - `mac_trusted`: the head (seq and hash) as of the last append. Opening checks that the
//!   event there still has that hash (so nothing before it was rewritten and rechained) and the
//!   MACs of every event after it.
//!
//! Catalog snapshots carry a MAC as well, at the end of their stored bytes.

use super::verify::derived_mismatch_unverified;
use super::*;
use crate::crypto::EventMac;

const MAC_FROM: &str = "mac_from";
const MAC_TRUSTED: &str = "mac_trusted";

fn broken(seq: u64, reason: impl Into<String>) -> Error {
    Error::ChainBroken {
        seq,
        reason: reason.into(),
    }
}

/// The seq `mac_from` records, unchecked (to unwrap the fingerprint key, which binds it).
pub(super) fn recorded_start(store: &dyn Store) -> Result<Option<u64>> {
    Ok(match store.setting(MAC_FROM)? {
        None => None,
        Some(bytes) => Some(u64::from_le_bytes(
            bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::Corrupt("mac_from is malformed".into()))?,
        )),
    })
}

/// `mac_from`, checked; `None` for a ledger whose MACs have not started.
pub(super) fn mac_from(store: &dyn Store, mac: &EventMac) -> Result<Option<u64>> {
    let Some(bytes) = store.setting(MAC_FROM)? else {
        if store.setting(MAC_TRUSTED)?.is_some() {
            return Err(Error::Corrupt(
                "the ledger's mac_from setting was removed: events may have been forged since".into(),
            ));
        }
        return Ok(None);
    };
    let (seq, tag) = split_tagged(&bytes, 8).ok_or_else(|| Error::Corrupt("mac_from is malformed".into()))?;
    if !EventMac::matches(&mac.setting(MAC_FROM, seq), &tag) {
        return Err(Error::Corrupt(
            "mac_from does not carry a valid MAC: the ledger was edited outside sledger".into(),
        ));
    }
    Ok(Some(u64::from_le_bytes(seq.try_into().expect("8 bytes"))))
}

fn split_tagged(bytes: &[u8], len: usize) -> Option<(&[u8], [u8; 32])> {
    if bytes.len() != len + 32 {
        return None;
    }
    let (value, tag) = bytes.split_at(len);
    Some((value, tag.try_into().ok()?))
}

fn tagged(mac: &EventMac, name: &str, value: &[u8]) -> Vec<u8> {
    let mut bytes = value.to_vec();
    bytes.extend_from_slice(&mac.setting(name, value));
    bytes
}

/// An event read without a chain walk: its columns must still hash to its stored hash, and
/// that hash must carry a key holder's MAC (so its contents and place in the chain are theirs).
pub(super) fn check_event(mac: &EventMac, e: &StoredEvent) -> Result<()> {
    if e.computed_hash() != e.hash {
        return Err(crate::log::altered(e.seq));
    }
    check_stored_mac(mac, e)
}

/// The MAC of an event whose hash the caller has already recomputed (a chain walk).
pub(super) fn check_stored_mac(mac: &EventMac, e: &StoredEvent) -> Result<()> {
    match &e.mac {
        Some(m) if EventMac::matches(m, &mac.event(e.seq, &e.hash)) => Ok(()),
        Some(_) => Err(broken(
            e.seq,
            "its MAC does not match: it was written or changed without the master key",
        )),
        None => Err(broken(
            e.seq,
            "it carries no MAC where every event must: it was written without the master key",
        )),
    }
}

/// Check the MACs of events `from ..= to` (those at or after `mac_from`).
pub(super) fn check_range(store: &dyn Store, mac: &EventMac, from: u64, to: u64) -> Result<()> {
    let Some(start) = mac_from(store, mac)? else {
        return Ok(());
    };
    store.scan(from.max(start), to, &mut |e| {
        check_event(mac, &e)?;
        Ok(true)
    })
}

/// Check everything appended since the last trusted point: the event at that point still has
/// the hash it had (nothing before it was rewritten), and every event after it carries a valid
/// MAC.
pub(super) fn check_since_trusted(store: &dyn Store, mac: &EventMac) -> Result<()> {
    let head = store.head()?;
    let trusted = match store.setting(MAC_TRUSTED)? {
        None => 0,
        Some(bytes) => {
            let (value, tag) =
                split_tagged(&bytes, 40).ok_or_else(|| Error::Corrupt("mac_trusted is malformed".into()))?;
            if !EventMac::matches(&mac.setting(MAC_TRUSTED, value), &tag) {
                return Err(Error::Corrupt(
                    "mac_trusted does not carry a valid MAC: the ledger was edited outside sledger".into(),
                ));
            }
            let seq = u64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
            let seen = store.event(seq)?.ok_or_else(|| {
                broken(
                    seq,
                    "the last event a key holder saw is gone: the log was truncated",
                )
            })?;
            if seen.hash[..] != value[8..] {
                return Err(broken(
                    seq,
                    "it is not the event a key holder last saw: the log before it was rewritten and rechained",
                ));
            }
            if seen.computed_hash() != seen.hash {
                return Err(crate::log::altered(seq));
            }
            seq
        }
    };
    check_range(store, mac, trusted + 1, head.seq)
}

/// Inside an append: make sure MACs have started (an older ledger's first write by a key
/// holder starts them with a `ledger.macs_started` event, returned to be appended first). The
/// start is bound into the fingerprint key's wrapping, so it cannot be removed or moved.
pub(super) fn start_if_needed(
    store: &dyn Store,
    master: &MasterKey,
    fingerprint: &FingerprintKey,
    mac: &EventMac,
    head: Head,
) -> Result<Option<Event>> {
    if mac_from(store, mac)?.is_some() {
        return Ok(None);
    }
    let from = head.seq + 1;
    store.set_setting(MAC_FROM, &tagged(mac, MAC_FROM, &from.to_le_bytes()))?;
    let epochs = store.setting(super::VALUE_EPOCHS)?.unwrap_or_default();
    store.set_setting(
        "fingerprint_key",
        &master.wrap_fingerprint_key(fingerprint, Some(from), &epochs),
    )?;
    // A new ledger is MAC'd from its first event; an older one records where MACs start.
    Ok((head.seq > 0).then_some(Event::MacsStarted))
}

/// A stored snapshot ends with the MAC of its encoding and this marker. A forged snapshot is
/// outside the chain, so without it nothing would stop one from making a point-in-time restore
/// delete or rename secrets in a sink.
pub(super) const SNAPSHOT_MARKER: &[u8; 8] = b"sledgMAC";

/// `encoding` (of the catalog at `seq`) as it is stored: followed by its MAC and the marker.
pub(super) fn seal_snapshot(mac: &EventMac, seq: u64, mut encoding: Vec<u8>) -> Vec<u8> {
    let tag = mac.snapshot(seq, blake3::hash(&encoding).as_bytes());
    encoding.extend_from_slice(&tag);
    encoding.extend_from_slice(SNAPSHOT_MARKER);
    encoding
}

/// A stored snapshot's encoding and MAC (`None`: stored before snapshots carried one).
pub(super) fn split_snapshot(stored: &[u8]) -> (&[u8], Option<[u8; 32]>) {
    match stored.strip_suffix(SNAPSHOT_MARKER) {
        Some(rest) if rest.len() >= 32 => {
            let (encoding, tag) = rest.split_at(rest.len() - 32);
            (encoding, Some(tag.try_into().expect("32 bytes")))
        }
        _ => (stored, None),
    }
}

/// The catalog a stored snapshot (at `seq`) holds, if its MAC shows a key holder wrote it;
/// `None` for one stored before snapshots carried a MAC, which is never trusted (the caller
/// folds the log instead). One whose MAC does not match was forged or edited: an error.
pub(super) fn open_snapshot(mac: &EventMac, seq: u64, stored: &[u8]) -> Result<Option<Catalog>> {
    let Some(encoding) = verified_snapshot(mac, seq, stored)? else {
        return Ok(None);
    };
    let catalog = Catalog::from_snapshot(encoding)?;
    if catalog.seq != seq {
        return Err(forged_snapshot(seq));
    }
    Ok(Some(catalog))
}

/// [`open_snapshot`], not decoded: the encoding, if its MAC matches.
pub(super) fn verified_snapshot<'a>(mac: &EventMac, seq: u64, stored: &'a [u8]) -> Result<Option<&'a [u8]>> {
    let (encoding, Some(tag)) = split_snapshot(stored) else {
        return Ok(None);
    };
    if !EventMac::matches(&mac.snapshot(seq, blake3::hash(encoding).as_bytes()), &tag) {
        return Err(forged_snapshot(seq));
    }
    Ok(Some(encoding))
}

fn forged_snapshot(seq: u64) -> Error {
    derived_mismatch_unverified(format!("the snapshot at seq {seq} (its MAC does not match)"))
}

/// Inside an append, after its events: the new head is the trusted point.
pub(super) fn trust(store: &dyn Store, mac: &EventMac, head: Head) -> Result<()> {
    let mut value = head.seq.to_le_bytes().to_vec();
    value.extend_from_slice(&head.hash);
    store.set_setting(MAC_TRUSTED, &tagged(mac, MAC_TRUSTED, &value))
}

impl Ledger {
    /// Check the MACs of events `from ..= to`, if this ledger is unlocked (a projector checks
    /// each batch before applying it, so a forged `secret.purged` never reaches a backend).
    pub(crate) fn check_macs(&self, from: u64, to: u64) -> Result<()> {
        match self.keys.as_ref() {
            Some(keys) => check_range(&*self.store, &keys.mac, from, to),
            None => Ok(()),
        }
    }

    /// The MAC stored beside a sink's checkpoint: it binds the checkpoint to the sink and the
    /// attachment made at `attached`, under the key of the checkpoint's epoch (an old master
    /// key cannot raise a checkpoint past its rotation). Needs the master key.
    pub(crate) fn checkpoint_mac(&self, sink: &str, attached: u64, checkpoint: u64) -> Result<[u8; 32]> {
        let mac = &need_keys(self.keys.as_ref())?.mac;
        Ok(mac.setting_at(
            checkpoint,
            "sink checkpoint",
            format!("{sink}\0{attached}\0{checkpoint}").as_bytes(),
        ))
    }

    /// Whether this ledger is unlocked (its MACs can be checked).
    pub fn is_unlocked(&self) -> bool {
        self.keys.is_some()
    }

    /// The first seq every event must carry a MAC from (`None`: an older ledger no key holder
    /// has written to since MACs exist). Needs the master key.
    pub fn mac_from(&self) -> Result<Option<u64>> {
        mac_from(&*self.store, &need_keys(self.keys.as_ref())?.mac)
    }
}
