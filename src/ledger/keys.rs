//! Master-key rotation: every data key and the ledger's own keys re-wrapped under a new key.

use super::*;

impl Ledger {
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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        ensure_current_key(&tx, keys)?;
        let mut rewrapped = 0u64;
        {
            let mut read = tx.prepare("SELECT secret_id, wrapped FROM secret_keys")?;
            let mut write = tx.prepare("UPDATE secret_keys SET wrapped = ?2 WHERE secret_id = ?1")?;
            let mut rows = read.query([])?;
            while let Some(r) = rows.next()? {
                let id = SecretId::from_slice(&r.get::<_, Vec<u8>>(0)?)
                    .map_err(|_| Error::Corrupt("a secret_keys id is not a UUID".into()))?;
                let dek = keys.master.unwrap_data_key(&r.get::<_, Vec<u8>>(1)?, id)?;
                write.execute(params![id.as_bytes().as_slice(), new.wrap_data_key(&dek, id)])?;
                rewrapped += 1;
            }
        }
        meta_set(
            &tx,
            "fingerprint_key",
            new.wrap_fingerprint_key(&keys.fingerprint),
        )?;
        meta_set(&tx, "sink_seal_key", new.wrap_sink_seal_key(&keys.sink_seal))?;
        meta_set(&tx, "key_check", new.key_check().as_slice())?;
        let mut head = sqlite::head(&tx)?;
        let first_seq = head.seq;
        let row = chain_next(
            &mut head,
            &NewEvent {
                event_id: uuid::Uuid::now_v7(),
                actor: actor.to_owned(),
                secret_id: None,
                event: Event::KeyRotated { key_id: new.key_id() },
            },
            now_ms(),
        );
        sqlite::insert(&tx, &row)?;
        finish_append(&tx, self.settings, first_seq, head)?;
        persist(&new)?;
        tx.commit()?;
        scrub_freed_pages(&self.conn);
        if let Some(keys) = self.keys.as_mut() {
            keys.master = new;
        }
        Ok(rewrapped)
    }
}
