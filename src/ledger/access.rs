//! Tokens and the access log: the ledger's part of the server's identity model.

use super::*;
use crate::access_log::{self, AccessEntry, AccessFilter, AccessRecord};
use crate::identity::Tokens;

impl Ledger {
    /// The token registry (every token ever issued, revoked and expired ones included).
    pub fn tokens(&self) -> Result<Tokens> {
        let mut tokens = Tokens::default();
        self.refresh_tokens(&mut tokens)?;
        Ok(tokens)
    }

    /// Fold the token events appended since `tokens` was last brought up to date. Unlocked,
    /// each must carry a key holder's MAC: a token forged into the file grants nothing.
    pub fn refresh_tokens(&self, tokens: &mut Tokens) -> Result<()> {
        let mac = match self.keys.as_ref() {
            Some(keys) => mac::mac_from(&*self.store, &keys.mac)?.map(|from| (keys.mac.clone(), from)),
            None => None,
        };
        self.store
            .scan_types(crate::identity::TOKEN_EVENT_TYPES, tokens.seq, &mut |stored| {
                if let Some((mac, from)) = &mac {
                    if stored.seq >= *from {
                        mac::check_event(mac, &stored)?;
                    }
                }
                let event = stored.decode()?;
                tokens.apply(&stored, event);
                Ok(true)
            })
    }

    /// What a presented token is hashed with to look it up.
    pub fn token_hasher(&self) -> Result<crate::crypto::TokenHasher> {
        Ok(need_keys(self.keys.as_ref())?.fingerprint.token_hasher())
    }

    /// Append `records` to the access log in one transaction: durable when this returns.
    pub fn record_access(&self, records: &[AccessRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = Write::begin(&*self.store)?;
        let (seq, hash) = tx.access_head()?;
        tx.append_access(&access_log::chain(seq, hash, records))?;
        tx.commit()
    }

    /// Access-log rows with seq > `after`, in seq order, until `visit` returns false.
    pub fn access_log(&self, after: u64, visit: &mut dyn FnMut(AccessEntry) -> Result<bool>) -> Result<()> {
        self.store.scan_access(after, visit)
    }

    /// Whether the secret `id` is private to a principal other than `viewer`, who may then not
    /// see its name.
    pub(crate) fn private_to_another(&self, id: crate::SecretId, viewer: &str) -> Result<bool> {
        private_to_another(&*self.store, id, viewer)
    }

    /// The access-log rows `filter` keeps (the last `limit` of them), oldest first.
    pub fn query_access(&self, filter: &AccessFilter) -> Result<Vec<AccessEntry>> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let paging = filter.after_seq.is_some();
        let mut shown = std::collections::VecDeque::new();
        let mut hidden_secrets = std::collections::HashMap::new();
        let store = &*self.store;
        let mut hidden = |e: &AccessEntry| -> Result<bool> {
            let (Some(viewer), Some(id)) = (&filter.viewer, e.record.secret_id) else {
                return Ok(false);
            };
            if let Some(hidden) = hidden_secrets.get(&id) {
                return Ok(*hidden);
            }
            let private_to_another = private_to_another(store, id, viewer)?;
            hidden_secrets.insert(id, private_to_another);
            Ok(private_to_another)
        };
        self.store.scan_access(filter.after_seq.unwrap_or(0), &mut |e| {
            if filter.keeps(&e) && limit > 0 && !hidden(&e)? {
                if shown.len() == limit {
                    shown.pop_front();
                }
                shown.push_back(e);
            }
            // A page after a seq is complete with its first `limit` rows.
            Ok(!(paging && shown.len() == limit))
        })?;
        Ok(shown.into())
    }

    /// The access log's last seq (0 when empty).
    pub fn access_head(&self) -> Result<u64> {
        Ok(self.store.access_head()?.0)
    }

    /// Check the access log's chain from its first row; returns how many rows it holds.
    pub fn verify_access_log(&self) -> Result<u64> {
        let _snapshot = Read::begin(&*self.store)?;
        let mut rows = Vec::new();
        self.store.scan_access(0, &mut |e| {
            rows.push(e);
            Ok(true)
        })?;
        access_log::verify_chain(rows).map_err(|(seq, reason)| Error::ChainBroken {
            seq,
            reason: format!("access log: {reason}"),
        })
    }
}

fn private_to_another(store: &dyn crate::store::Store, id: crate::SecretId, viewer: &str) -> Result<bool> {
    Ok(store
        .secret(id)?
        .is_some_and(|m| m.scope == crate::Scope::Private && m.owner != viewer))
}
