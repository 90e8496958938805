//! Master-key rotation: every data key and the ledger's own keys re-wrapped under a new key.

use super::*;

impl Ledger {
    /// Make `key` (unwrapped from a sink that kept it) this new, still empty ledger's sink
    /// seal key: a recovered ledger goes on opening the objects its sqlite sink already holds.
    pub(crate) fn adopt_sink_seal_key(&mut self, key: SinkSealKey) -> Result<()> {
        let wrapped = key
            .wrapped()
            .ok_or_else(|| Error::invalid("a sink seal key must come wrapped by the master key"))?
            .to_vec();
        let tx = Write::begin(&*self.store)?;
        if tx.head()?.seq != 0 {
            return Err(Error::invalid("only an empty ledger can adopt a sink's seal key"));
        }
        tx.set_setting("sink_seal_key", &wrapped)?;
        tx.commit()?;
        if let Some(keys) = self.keys.as_mut() {
            keys.sink_seal = key;
        }
        Ok(())
    }

    /// Re-wrap every data key and the ledger's own keys under `new`, and record `key.rotated`.
    /// Old events stay readable: their values are sealed by data keys, which do not change.
    ///
    /// `persist` is called with the new key while the write lock is held and before the commit:
    /// it must store the key durably (see [`crate::keyfile::rotate`]); if it fails, nothing changes.
    pub fn rotate_key(
        &mut self,
        actor: &str,
        new: MasterKey,
        persist: &mut dyn FnMut(&MasterKey) -> Result<()>,
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
        let macs_from = mac::mac_from(&*tx, &keys.mac)?;
        tx.set_setting(
            "fingerprint_key",
            &new.wrap_fingerprint_key(&keys.fingerprint, macs_from),
        )?;
        let sink_seal = new.unwrap_sink_seal_key(&new.wrap_sink_seal_key(&keys.sink_seal))?;
        tx.set_setting("sink_seal_key", sink_seal.wrapped().expect("just unwrapped"))?;
        tx.set_setting("key_check", new.key_check().as_slice())?;
        let mut head = tx.head()?;
        let first_seq = head.seq;
        let event = Event::KeyRotated { key_id: new.key_id() };
        append_ledger_event(&*tx, keys, &mut head, actor, event, now_ms())?;
        mac::trust(&*tx, &keys.mac, head)?;
        finish_append(&*tx, self.settings, first_seq, head)?;
        persist(&new)?;
        tx.commit()?;
        self.store.scrub();
        if let Some(keys) = self.keys.as_mut() {
            keys.master = new;
            keys.sink_seal = sink_seal;
        }
        Ok(rewrapped)
    }
}
