//! Integrity: the chain recomputed, derived state (catalog, snapshots) compared with the fold of
//! the log or rebuilt from it, and anchors that catch a truncated or rewritten tail.

use super::*;
use crate::crypto::EventMac;

/// A saved chain head; checking it later catches a truncated or rewritten tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub ledger_id: String,
    pub seq: u64,
    pub hash: String,
}

impl Anchor {
    /// The anchor `verify --save-anchor` (or [`Anchor::save`]) wrote to `path`.
    pub fn read_file(path: &Path) -> Result<Anchor> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("cannot read anchor {}", path.display()),
            source,
        })?;
        serde_json::from_str(&text).map_err(|_| {
            Error::invalid(format!(
                "{} is not an anchor file written by `sledger verify --save-anchor`",
                path.display()
            ))
        })
    }

    /// Write this anchor to `path`, replacing an older anchor of the same ledger there; any
    /// other file there was kept on purpose (another ledger's anchor, or not an anchor at all)
    /// and is refused unless `force`.
    ///
    /// An anchor is public (a seq and a hash), so it is written 0644 on purpose; its worth is
    /// in being kept where whoever could rewrite the ledger cannot reach it.
    pub fn save(&self, path: &Path, force: bool) -> Result<()> {
        if path.exists() && !force {
            let ours = Anchor::read_file(path).is_ok_and(|old| old.ledger_id == self.ledger_id);
            if !ours {
                return Err(Error::WouldOverwrite {
                    what: "file, not an anchor of this ledger (--force replaces it),",
                    path: path.to_owned(),
                });
            }
        }
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_json::to_string_pretty(self).expect("anchors serialise") + "\n";
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|source| Error::Io {
                context: format!("cannot write anchor {}", path.display()),
                source,
            })
    }
}

pub(super) fn derived_mismatch(what: String) -> Error {
    Error::Corrupt(format!(
        "{what} differs from the fold of the log, though the log itself verifies: the database was \
         edited outside sledger. That data is derived: `sledger verify --rebuild-catalog` rebuilds it from the log"
    ))
}

/// The same, found by a read or a write, which has not checked the whole log: the log may be
/// what was edited.
pub(super) fn derived_mismatch_unverified(what: String) -> Error {
    Error::Corrupt(format!(
        "{what} differs from the fold of the log: the database was edited outside sledger. \
         `sledger verify` says whether the log itself is intact; if it is, \
         `sledger verify --rebuild-catalog` rebuilds the derived data from it"
    ))
}

/// An event's MAC, from the seq MACs start at.
fn check_mac(macs: &Option<(EventMac, u64)>, e: &StoredEvent) -> Result<()> {
    match macs {
        // The chain walk has recomputed the hash.
        Some((mac, from)) if e.seq >= *from => mac::check_stored_mac(mac, e),
        _ => Ok(()),
    }
}

/// The fold `verify` checks the derived tables against, with each secret's state kept encoded
/// (about 200 bytes, where a decoded one takes 1.7 KB): a million secrets fit in about 250 MB.
#[derive(Default)]
struct CompactFold {
    seq: u64,
    /// By id, so the catalog rows and snapshots (both in id order) compare in one merge.
    secrets: BTreeMap<SecretId, Box<[u8]>>,
    sinks: BTreeMap<String, SinkConfig>,
    /// The secrets purged (their data keys deleted): few, so kept apart from `secrets`.
    purged: std::collections::HashSet<SecretId>,
}

impl CompactFold {
    fn apply(&mut self, stored: &StoredEvent, event: Event) -> Result<()> {
        match stored.secret_id {
            Some(id) => {
                let state = self
                    .secrets
                    .get(&id)
                    .map(|b| SecretMeta::from_bytes(b))
                    .transpose()?;
                if let Some(next) = catalog::apply(state, stored, event)? {
                    if next.status == Status::Purged {
                        self.purged.insert(id);
                    } else {
                        self.purged.remove(&id);
                    }
                    self.secrets.insert(id, next.to_bytes().into_boxed_slice());
                }
            }
            None => catalog::apply_sink_event(&mut self.sinks, stored, event)?,
        }
        self.seq = stored.seq;
        Ok(())
    }

    /// The digest of this fold's snapshot as it would be stored (with its MAC, given the MAC
    /// key), hashed as it is encoded (never held).
    fn snapshot_digest(&self, mac: Option<&EventMac>) -> [u8; 32] {
        let mut snapshot = SnapshotEncoder::writing_to(blake3::Hasher::new(), self.seq, self.secrets.len());
        for (id, meta) in &self.secrets {
            snapshot.push(id, meta);
        }
        let mut stored = snapshot.finish(&self.sinks);
        if let Some(mac) = mac {
            let tag = mac.snapshot(self.seq, stored.finalize().as_bytes());
            stored.update(&tag);
            stored.update(mac::SNAPSHOT_MARKER);
        }
        *stored.finalize().as_bytes()
    }
}

impl Ledger {
    /// Rebuild the catalog from the log when its tables are missing or not at the head.
    pub(super) fn ensure_catalog(&mut self) -> Result<()> {
        let current = {
            let read = Read::begin(&*self.store)?;
            read.has_derived()? && read.setting_int("catalog_seq")? == Some(read.head()?.seq as i64)
        };
        if !current {
            self.fold_catalog_again()?;
        }
        Ok(())
    }

    /// Check the whole log's chain (and MACs, unlocked), then drop the catalog and its
    /// snapshots and fold it again from the log: a log that does not verify is never folded
    /// into a catalog that reads then trust. Returns the number of secrets.
    pub fn rebuild_catalog(&mut self) -> Result<usize> {
        let macs = self.macs_checked_from()?;
        self.store.verified_scan(&mut |e, _| check_mac(&macs, &e))?;
        self.fold_catalog_again()
    }

    /// The MAC key and the first seq it covers, when the ledger is unlocked.
    fn macs_checked_from(&self) -> Result<Option<(EventMac, u64)>> {
        Ok(match self.keys.as_ref() {
            Some(keys) => mac::mac_from(&*self.store, &keys.mac)?.map(|from| (keys.mac.clone(), from)),
            None => None,
        })
    }

    fn fold_catalog_again(&mut self) -> Result<usize> {
        let tx = Write::begin(&*self.store)?;
        tx.reset_derived()?;
        let head = tx.head()?;
        let mut folded = CompactFold::default();
        tx.scan(1, head.seq, &mut |e| {
            folded.apply(&e, e.decode()?)?;
            Ok(true)
        })?;
        let metas: Vec<SecretMeta> = folded
            .secrets
            .values()
            .map(|meta| SecretMeta::from_bytes(meta))
            .collect::<Result<_>>()?;
        for chunk in metas.chunks(10_000) {
            tx.put_secrets(chunk)?;
        }
        tx.put_sinks(&folded.sinks)?;
        tx.set_setting_int("catalog_seq", head.seq as i64)?;
        tx.commit()?;
        tracing::info!(
            secrets = folded.secrets.len(),
            seq = head.seq,
            "catalog rebuilt from the log"
        );
        Ok(folded.secrets.len())
    }

    /// Recompute the chain from seq 1, decode every event and fold them all; returns the head
    /// or names the first bad seq. Reading and hashing run on a second thread.
    pub fn verify(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<Head> {
        let total = self.head()?.seq;
        let snapshot_seqs: std::collections::BTreeSet<u64> =
            self.store.snapshot_seqs()?.into_iter().collect();
        let mut catalog = CompactFold::default();
        let macs = self.macs_checked_from()?;
        let head = self.store.verified_scan(&mut |e, event| {
            let seq = e.seq;
            check_mac(&macs, &e)?;
            catalog.apply(&e, event).map_err(|err| Error::ChainBroken {
                seq,
                reason: err.to_string(),
            })?;
            if snapshot_seqs.contains(&seq) && !self.snapshot_matches(seq, &catalog)? {
                return Err(derived_mismatch(format!("the snapshot at seq {seq}")));
            }
            if seq % log::PROGRESS_EVERY == 0 {
                progress(seq, total.max(seq));
            }
            Ok(())
        })?;
        progress(head.seq, head.seq);
        if let Some(keys) = self.keys.as_ref() {
            // Every MAC is good; the trusted point catches a truncated tail.
            mac::check_since_trusted(&*self.store, &keys.mac)?;
        }
        self.check_catalog_rows(&catalog)?;
        self.verify_access_log()?;
        Ok(head)
    }

    /// The catalog tables must hold exactly the fold of the log (when they are at the same seq).
    fn check_catalog_rows(&mut self, folded: &CompactFold) -> Result<()> {
        let read = Read::begin(&*self.store)?;
        if read.setting_int("catalog_seq")? != Some(folded.seq as i64) {
            return Ok(()); // appended to since the scan; the next verify compares again
        }
        // Both in id order: one merge, nothing else held.
        let mut expected = folded.secrets.iter();
        read.scan_all_secrets(&mut |id, meta, columns_agree| match expected.next() {
            Some((want_id, want)) if *want_id == id && id == meta.id && **want == *meta.to_bytes() => {
                if columns_agree {
                    Ok(true)
                } else {
                    Err(derived_mismatch(format!(
                        "the catalog row of secret {:?} (its name, status, namespace or seq column)",
                        meta.name
                    )))
                }
            }
            _ => Err(derived_mismatch(format!(
                "the catalog row of secret {:?}",
                meta.name
            ))),
        })?;
        if expected.next().is_some() {
            return Err(derived_mismatch("the catalog (rows are missing)".into()));
        }
        self.check_data_keys(&read, folded)?;
        // Projectors and reads trust the sinks table: a URL edited there would send values to
        // whatever it names, so it must match the chain exactly.
        if read.sinks()? != folded.sinks {
            return Err(derived_mismatch(
                "the sinks table (an attached sink's URL or role)".into(),
            ));
        }
        Ok(())
    }

    /// Every secret the log has not purged keeps its data key, and no other has one (a purge
    /// deletes it): a key deleted by hand loses that secret's values from the ledger.
    fn check_data_keys(&self, read: &Read<'_>, folded: &CompactFold) -> Result<()> {
        let keyed = folded.secrets.keys().filter(|id| !folded.purged.contains(id));
        let missing = |id: &SecretId| {
            let name = folded
                .secrets
                .get(id)
                .and_then(|b| SecretMeta::from_bytes(b).ok())
                .map(|m| m.name);
            let name = name.unwrap_or_default();
            Error::Corrupt(format!(
                "the data key of secret {name:?} is gone though the log never purged it: it was deleted outside \
                 sledger, and the values the ledger holds for it cannot be opened; its sinks still hold the latest \
                 (`sledger secret get {name} --from backup`, or `sledger recover --from` a sink)"
            ))
        };
        let mut expected = keyed.peekable();
        read.scan_wrapped_keys(&mut |id, _| {
            if let Some(gone) = expected.next_if(|want| **want < id) {
                return Err(missing(gone));
            }
            match expected.next() {
                Some(want) if *want == id => Ok(true),
                _ => Err(Error::Corrupt(format!(
                    "a data key is stored for secret id {id}, which the log purged or never had: it was added \
                     outside sledger"
                ))),
            }
        })?;
        match expected.next() {
            Some(gone) => Err(missing(gone)),
            None => Ok(()),
        }
    }

    /// Whether the stored snapshot at `seq` holds `folded`: the digest of the stored bytes
    /// (read in pieces) against that of the fold's encoding and MAC (hashed as it is encoded),
    /// so neither is held whole. A snapshot in an older encoding, or from before snapshots
    /// carried a MAC, is decoded and compared instead; one whose MAC is wrong never matches.
    fn snapshot_matches(&self, seq: u64, folded: &CompactFold) -> Result<bool> {
        let Some(stored) = self.store.snapshot_digest(seq)? else {
            return Err(derived_mismatch(format!(
                "the snapshot at seq {seq} (it is gone)"
            )));
        };
        let mac = self.keys.as_ref().map(|keys| &keys.mac);
        if stored == folded.snapshot_digest(mac) {
            return Ok(true);
        }
        let Some((_, stored)) = self.store.snapshot_at_or_before(seq)? else {
            return Ok(false);
        };
        let decoded = match mac {
            Some(mac) => match mac::open_snapshot(mac, seq, &stored) {
                Ok(Some(catalog)) => catalog,
                Ok(None) => Catalog::from_snapshot(&stored)?,
                Err(_) => return Ok(false),
            },
            None => Catalog::from_snapshot(mac::split_snapshot(&stored).0)?,
        };
        Ok(decoded.seq == folded.seq
            && decoded.sinks == folded.sinks
            && decoded.secrets.len() == folded.secrets.len()
            && folded
                .secrets
                .iter()
                .all(|(id, bytes)| decoded.secrets.get(id).is_some_and(|m| *m.to_bytes() == **bytes)))
    }

    /// Copy the ledger, online and consistent, into a new SQLite file at `path` (writers keep going
    /// meanwhile), then open the copy with this ledger's key and verify it whole: a backup
    /// that would not open or verify is removed, never left to be trusted. Returns the
    /// copy's verified head.
    pub fn backup_to(&self, path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Head> {
        let master = self.master_key()?.clone();
        self.store.backup_to(path)?;
        let verified = Ledger::open_with_key(path, master).and_then(|mut copy| copy.verify(progress));
        if verified.is_err() {
            Location::from(path).remove_created();
        }
        verified
    }

    /// An anchor for `head`, to save and check later.
    pub fn anchor(&self, head: Head) -> Result<Anchor> {
        Ok(Anchor {
            ledger_id: self.ledger_id()?,
            seq: head.seq,
            hash: hex::encode(head.hash),
        })
    }

    /// Check a saved anchor: the event at its seq must still exist with the same hash.
    pub fn check_anchor(&self, anchor: &Anchor) -> Result<()> {
        let mismatch = |reason: String| Err(Error::AnchorMismatch { reason });
        if anchor.ledger_id != self.ledger_id()? {
            return mismatch(format!("it was saved from another ledger ({})", anchor.ledger_id));
        }
        let head = self.head()?;
        if head.seq < anchor.seq {
            return mismatch(format!(
                "the log ends at seq {} but the anchor saw seq {}: the tail was truncated",
                head.seq, anchor.seq
            ));
        }
        let stored = self
            .store
            .event(anchor.seq)?
            .ok_or_else(|| Error::AnchorMismatch {
                reason: format!("event {} is gone", anchor.seq),
            })?;
        if hex::encode(stored.hash) != anchor.hash.to_ascii_lowercase() {
            return mismatch(format!(
                "event {} differs from the anchor: the log was rewritten",
                anchor.seq
            ));
        }
        Ok(())
    }
}
