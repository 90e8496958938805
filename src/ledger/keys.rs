//! Master-key rotation (every data key and the ledger's own keys re-wrapped under a new key)
//! and where the master key is held (a file or the environment, or wrapped by a KMS).

use super::*;

/// Settings: the URI of the KMS that holds the master key (empty: none), and the master key as
/// it wrapped it.
const KEY_PROVIDER: &str = "master_key_provider";
const KEY_WRAPPED: &str = "master_key_wrapped";

impl Ledger {
    /// The KMS that holds this ledger's master key (its URI) and the key as that KMS wrapped
    /// it; `None` when the key is kept in a file or the environment.
    pub fn key_provider(&self) -> Result<Option<(String, Vec<u8>)>> {
        let Some(uri) = self.store.setting(KEY_PROVIDER)?.filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let uri = String::from_utf8(uri)
            .map_err(|_| Error::Corrupt("the master key's provider is not text".into()))?;
        let wrapped = self
            .store
            .setting(KEY_WRAPPED)?
            .filter(|w| !w.is_empty())
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "the ledger says {uri} holds its master key, but keeps no wrapped key"
                ))
            })?;
        Ok(Some((uri, wrapped)))
    }

    /// Record, in a new ledger (no event yet), that the KMS `provider` holds its master key,
    /// wrapped as `wrapped`.
    pub fn hold_key_in(&mut self, provider: &str, wrapped: &[u8]) -> Result<()> {
        let tx = Write::begin(&*self.store)?;
        if tx.head()?.seq != 0 {
            return Err(Error::invalid(
                "only a new ledger takes its key provider without `key migrate`",
            ));
        }
        tx.set_setting(KEY_PROVIDER, provider.as_bytes())?;
        tx.set_setting(KEY_WRAPPED, wrapped)?;
        tx.commit()
    }

    /// Move the master key (unchanged) to `provider`: a KMS, with the key as it wrapped it, or
    /// a file or the environment (`wrapped` is `None`; `provider` says which, with no secret).
    /// One transaction holds the change and its `key.migrated` event.
    pub fn migrate_key(&mut self, actor: &str, provider: &str, wrapped: Option<&[u8]>) -> Result<()> {
        let keys = need_keys(self.keys.as_ref())?;
        let tx = Write::begin(&*self.store)?;
        ensure_current_key(&*tx, keys)?;
        mac::check_since_trusted(&*tx, &keys.mac)?;
        let mut head = tx.head()?;
        let first_seq = head.seq;
        // A ledger's first event may be this one (`key migrate` right after `init`): MACs
        // start with it, as with any first write.
        if let Some(event) = mac::start_if_needed(&*tx, &keys.master, &keys.fingerprint, &keys.mac, head)? {
            append_ledger_event(&*tx, keys, &mut head, actor, event, now_ms())?;
        }
        let event = Event::KeyMigrated {
            provider: provider.to_owned(),
        };
        append_ledger_event(&*tx, keys, &mut head, actor, event, now_ms())?;
        match wrapped {
            Some(wrapped) => {
                tx.set_setting(KEY_PROVIDER, provider.as_bytes())?;
                tx.set_setting(KEY_WRAPPED, wrapped)?;
            }
            None => {
                tx.set_setting(KEY_PROVIDER, b"")?;
                tx.set_setting(KEY_WRAPPED, b"")?;
            }
        }
        mac::trust(&*tx, &keys.mac, head)?;
        finish_append(&*tx, &keys.mac, self.settings, first_seq, head)?;
        tx.commit()
    }

    /// [`Ledger::rotate_key`] for a key a KMS holds: `wrapped` is `new` as the KMS wrapped it,
    /// stored in the same transaction.
    pub fn rotate_key_in_kms(&mut self, actor: &str, new: MasterKey, wrapped: &[u8]) -> Result<u64> {
        self.rotate(actor, new, &mut |_| Ok(()), Some(wrapped))
    }

    /// Make `key` (unwrapped from a sink that kept it) this new, still empty ledger's sink
    /// seal key: a recovered ledger goes on opening the objects its sqlite sink already holds.
    /// `from_ledger`: the ledger that sink file serves, whose files this one opens too.
    pub(crate) fn adopt_sink_seal_key(&mut self, key: SinkSealKey, from_ledger: Option<&str>) -> Result<()> {
        let wrapped = key
            .wrapped()
            .ok_or_else(|| Error::invalid("a sink seal key must come wrapped by the master key"))?
            .to_vec();
        let tx = Write::begin(&*self.store)?;
        if tx.head()?.seq != 0 {
            return Err(Error::invalid("only an empty ledger can adopt a sink's seal key"));
        }
        tx.set_setting("sink_seal_key", &wrapped)?;
        if let Some(from) = from_ledger {
            tx.set_setting("recovered_from_ledger", from.as_bytes())?;
        }
        tx.commit()?;
        if let Some(keys) = self.keys.as_mut() {
            keys.sink_seal = key;
        }
        Ok(())
    }

    /// Re-wrap every data key and the ledger's own keys under `new`, start a new value epoch
    /// ([`KeyEpochs`]: values written from now on are sealed under keys only `new` opens),
    /// replace the sink seal key, and record `key.rotated`. Old events stay readable: their
    /// values are sealed by data keys (and epochs) that do not change. Call
    /// [`crate::keys::reseal_sinks`] next: until it runs, the sqlite sinks hold objects only
    /// the replaced seal key opens (reads skip them, `reconcile` rewrites them).
    ///
    /// `persist` is called with the new key while the write lock is held and before the commit:
    /// it must store the key durably (see [`crate::keyfile::rotate`]); if it fails, nothing changes.
    pub fn rotate_key(
        &mut self,
        actor: &str,
        new: MasterKey,
        persist: &mut dyn FnMut(&MasterKey) -> Result<()>,
    ) -> Result<u64> {
        self.rotate(actor, new, persist, None)
    }

    fn rotate(
        &mut self,
        actor: &str,
        new: MasterKey,
        persist: &mut dyn FnMut(&MasterKey) -> Result<()>,
        wrapped_by_kms: Option<&[u8]>,
    ) -> Result<u64> {
        let keys = need_keys(self.keys.as_ref())?;
        let tx = Write::begin(&*self.store)?;
        ensure_current_key(&*tx, keys)?;
        mac::check_since_trusted(&*tx, &keys.mac)?;
        if let Some(event) =
            mac::start_if_needed(&*tx, &keys.master, &keys.fingerprint, &keys.mac, tx.head()?)?
        {
            append_ledger_event(&*tx, keys, &mut tx.head()?, actor, event, now_ms())?;
        }
        let rewrapped = tx.rewrap_keys(&mut |id, wrapped| {
            let dek = keys.master.unwrap_data_key(wrapped, id)?;
            Ok(new.wrap_data_key(&dek, id))
        })?;
        let mut head = tx.head()?;
        let first_seq = head.seq;
        // The epoch starts after the rotation's own event, which is MAC'd (and carries no
        // values) under the epoch before.
        let epochs = keys.epochs.and_new_from(head.seq + 2);
        let stored_epochs = epochs.stored(&new);
        tx.set_setting(VALUE_EPOCHS, &stored_epochs)?;
        let macs_from = mac::mac_from(&*tx, &keys.mac)?;
        tx.set_setting(
            "fingerprint_key",
            &new.wrap_fingerprint_key(&keys.fingerprint, macs_from, &stored_epochs),
        )?;
        // A fresh seal key too: the old master key opens the old one (from any copy of the
        // ledger or of a sqlite sink made before now). `keys::reseal_sinks` moves the sinks.
        let sink_seal = new.unwrap_sink_seal_key(&new.wrap_sink_seal_key(&SinkSealKey::generate()))?;
        tx.set_setting("sink_seal_key", sink_seal.wrapped().expect("just unwrapped"))?;
        tx.set_setting("key_check", new.key_check().as_slice())?;
        if let Some(wrapped) = wrapped_by_kms {
            tx.set_setting(KEY_WRAPPED, wrapped)?;
        }
        let event = Event::KeyRotated { key_id: new.key_id() };
        append_ledger_event(&*tx, keys, &mut head, actor, event, now_ms())?;
        mac::trust(&*tx, &keys.mac, head)?;
        finish_append(&*tx, &keys.mac, self.settings, first_seq, head)?;
        persist(&new)?;
        tx.commit()?;
        self.store.scrub();
        if let Some(keys) = self.keys.as_mut() {
            keys.master = new;
            keys.previous_sink_seal = Some(std::mem::replace(&mut keys.sink_seal, sink_seal));
            keys.mac = keys.fingerprint.event_mac().with_epochs(&epochs);
            keys.epochs = epochs;
        }
        // Sinks opened so far seal with the replaced key.
        self.opened_sinks.lock().expect("not poisoned").clear();
        Ok(rewrapped)
    }
}
