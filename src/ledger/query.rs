//! Reads of the ledger itself: lookups by name, lists, values at any version or time, the
//! catalog at any seq.

use std::collections::BTreeSet;

use super::*;

/// Fold `log` from `start` up to `to`.
fn fold_log(log: &dyn EventLog, mut catalog: Catalog, to: u64) -> Result<Catalog> {
    if to > catalog.seq {
        log.scan(catalog.seq + 1, to, &mut |e| {
            catalog.apply(&e, e.decode()?)?;
            Ok(true)
        })?;
    }
    Ok(catalog)
}

/// One page of a list: its secrets in name order, and where the next page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretPage {
    pub secrets: Vec<SecretMeta>,
    /// Pass as [`ListQuery::after`] for the next page; `None` when this page is the last.
    pub next_after: Option<String>,
}

impl Ledger {
    /// The fingerprints of the values a secret had as of `seq` (from the last event at or
    /// before it that carried values).
    pub fn fingerprints_at(
        &self,
        id: SecretId,
        seq: u64,
    ) -> Result<BTreeMap<String, crate::crypto::Fingerprint>> {
        let mut found = BTreeMap::new();
        self.store.scan_secret(id, seq, &mut |stored| {
            if let Some(values) = stored.decode()?.values() {
                found = values.fingerprints.clone();
            }
            Ok(true)
        })?;
        Ok(found)
    }

    /// Fingerprints of `values` under this ledger's key.
    pub fn fingerprints_of(
        &self,
        values: &SecretValues,
    ) -> Result<BTreeMap<String, crate::crypto::Fingerprint>> {
        Ok(need_keys(self.keys.as_ref())?.fingerprint.fingerprints(values))
    }

    pub fn find(&self, actor: &str, name: &str) -> Result<SecretMeta> {
        resolve(self.catalog()?, actor, name, Want::Live)
    }

    /// Like [`Ledger::find`], but a deleted or purged secret is found too (live first).
    pub fn find_any(&self, actor: &str, name: &str) -> Result<SecretMeta> {
        resolve(self.catalog()?, actor, name, Want::Any)
    }

    /// The commands that bring back the deleted secret called `name` under `new_name`, as one
    /// request (`undelete NAME --as NEW`): of the deleted secrets of that name, the actor's
    /// private one first, then the most recently changed. They name it by id, so the live
    /// secret that holds `name` now is not touched.
    pub fn undelete_as(&self, actor: &str, name: &str, new_name: String) -> Result<Vec<Command>> {
        let query = ListQuery {
            prefix: Some(name.to_owned()),
            ..ListQuery::new(Status::Deleted)
        };
        let mut deleted = Vec::new();
        self.scan_secrets(actor, &query, &mut |m| {
            // Names run in order from the prefix: the exact name comes first, then longer ones.
            let exact = m.name == name;
            if exact {
                deleted.push(m);
            }
            Ok(exact)
        })?;
        let meta = deleted
            .into_iter()
            .min_by_key(|m| (m.scope != Scope::Private, std::cmp::Reverse(m.updated_seq)))
            .ok_or_else(|| Error::SecretNotFound {
                name: name.to_owned(),
                hint: " among deleted secrets; `sledger secret list --deleted` shows them".into(),
            })?;
        let by_id = format!("{ID_REF_PREFIX}{}", meta.id);
        Ok(vec![
            Command::Rename {
                name: by_id.clone(),
                new_name,
            },
            Command::Undelete { name: by_id },
        ])
    }

    /// Secrets visible to `actor` with the given status, sorted by name.
    pub fn list(&self, actor: &str, status: Status) -> Result<Vec<SecretMeta>> {
        let mut found = Vec::new();
        self.scan_secrets(actor, &ListQuery::new(status), &mut |m| {
            found.push(m);
            Ok(true)
        })?;
        Ok(found)
    }

    /// The secrets visible to `actor` that `query` admits, in name order, handed to `visit`
    /// as they are read (until it returns false): memory stays flat however many match.
    pub fn scan_secrets(
        &self,
        actor: &str,
        query: &ListQuery,
        visit: &mut dyn FnMut(SecretMeta) -> Result<bool>,
    ) -> Result<()> {
        let private = namespace(Scope::Private, actor);
        self.catalog()?
            .list_secrets(query, &["workspace", &private], visit)
    }

    /// One page of at most `limit` secrets that `query` admits and `keep` accepts (a filter of
    /// the caller's, such as a token's scope). A page never ends between two secrets of the
    /// same name (the workspace's and the caller's private one), so `next_after` resumes
    /// exactly where it stopped; it is `None` on the last page.
    pub fn list_page(
        &self,
        actor: &str,
        query: &ListQuery,
        limit: usize,
        keep: &dyn Fn(&SecretMeta) -> bool,
    ) -> Result<SecretPage> {
        let mut page = SecretPage::default();
        self.scan_secrets(actor, query, &mut |meta| {
            if !keep(&meta) {
                return Ok(true);
            }
            // A full page ends before the next name (a private and a workspace secret may
            // share one, and a name is never split across pages); only then is there a next.
            if page.secrets.len() >= limit {
                match page.secrets.last() {
                    Some(last) if last.name == meta.name => {}
                    last => {
                        page.next_after = last.map(|m| m.name.clone());
                        return Ok(false);
                    }
                }
            }
            page.secrets.push(meta);
            Ok(true)
        })?;
        Ok(page)
    }

    /// A secret's values: the latest, a version, or as of a time. Needs the key.
    pub fn read(&self, actor: &str, name: &str, at: ReadPoint) -> Result<SecretRead> {
        let keys = self.value_keys()?;
        let (meta, version, seq) = match at {
            ReadPoint::Latest => {
                let meta = resolve(self.catalog()?, actor, name, Want::Live)?;
                (meta.clone(), meta.version, meta.value_seq)
            }
            ReadPoint::Version(wanted) => {
                let current = resolve(self.catalog()?, actor, name, Want::Any)?;
                let mut state: Option<SecretMeta> = None;
                let mut hit = None;
                self.store.scan_secret(current.id, u64::MAX, &mut |e| {
                    state = catalog::apply(state.take(), &e, e.decode()?)?;
                    if let Some(m) = &state {
                        if m.version == wanted && m.value_seq == e.seq {
                            hit = Some(m.clone());
                            return Ok(false);
                        }
                    }
                    Ok(true)
                })?;
                let meta = hit.ok_or_else(|| {
                    Error::NotFound(format!(
                        "secret {name:?} has versions 1 to {}; there is no version {wanted}",
                        current.version
                    ))
                })?;
                (meta.clone(), wanted, meta.value_seq)
            }
            ReadPoint::At(time) => {
                let meta = self.resolve_at(actor, name, time)?;
                (meta.clone(), meta.version, meta.value_seq)
            }
        };
        if meta.status == Status::Purged {
            return Err(Error::Purged {
                name: name.to_owned(),
            });
        }
        let (values, recorded_at) = open_values_at(&*self.store, keys, &meta, seq)?;
        Ok(SecretRead {
            meta,
            version,
            seq,
            recorded_at,
            values,
        })
    }

    /// The live secret called `name` at `time`: by its name then, else by its current name.
    /// Only the secrets that ever held the name are folded (through their own events), never
    /// the whole catalog: a time read costs the same at a million secrets as at ten.
    pub(super) fn resolve_at(&self, actor: &str, name: &str, time: Millis) -> Result<SecretMeta> {
        let seq = self.store.seq_at_time(time)?;
        let not_then = || Error::SecretNotFound {
            name: name.to_owned(),
            hint: " at that time".into(),
        };
        if seq == 0 {
            return Err(not_then());
        }
        let private = namespace(Scope::Private, actor);
        let namespaces = ["workspace", private.as_str()];
        let visible = |m: &SecretMeta| {
            m.status == Status::Live && (m.scope == Scope::Workspace || m.namespace() == private)
        };
        // Who held the name then: a secret called that now, or one a rename (before or after
        // then) took it from or gave it to; any other secret has had its first name all along.
        let mut candidates: BTreeSet<SecretId> = self
            .catalog()?
            .secrets_named(name, &namespaces)?
            .iter()
            .map(|m| m.id)
            .collect();
        let renames = EventQuery {
            event_type: Some("secret.renamed".into()),
            ..EventQuery::range(1, u64::MAX)
        };
        self.store.scan_events(&renames, &mut |e| {
            if let (Event::SecretRenamed { from, to }, Some(id)) = (e.decode()?, e.secret_id) {
                if from == name || to == name {
                    candidates.insert(id);
                }
            }
            Ok(true)
        })?;
        let mut then = Vec::new();
        for id in candidates {
            if let Some(m) = self.state_at(id, seq)? {
                if visible(&m) && m.name == name {
                    then.push(m);
                }
            }
        }
        if let Some(m) = then.into_iter().min_by_key(|m| m.scope != Scope::Private) {
            return Ok(m);
        }
        let current = resolve(self.catalog()?, actor, name, Want::Any)?;
        self.state_at(current.id, seq)?
            .filter(visible)
            .ok_or_else(not_then)
    }

    /// One secret's state after event `seq`, folded from its own events.
    pub(crate) fn state_at(&self, id: SecretId, seq: u64) -> Result<Option<SecretMeta>> {
        fold_secret(&*self.store, id, seq)
    }

    /// The whole catalog as of `seq`: the nearest snapshot plus the events after it. Only a
    /// snapshot whose MAC checks is used, so a locked ledger folds the log from the start. So
    /// is one from an epoch before `seq`'s: a key rotated out could MAC a snapshot from its own
    /// epoch, and whoever held it could remove the later ones.
    pub fn catalog_at(&self, seq: u64) -> Result<Catalog> {
        let start = match (self.store.snapshot_at_or_before(seq)?, self.keys.as_ref()) {
            (Some((at, stored)), Some(keys)) if keys.mac.same_epoch(at, seq) => {
                mac::open_snapshot(&keys.mac, at, &stored)?.unwrap_or_default()
            }
            _ => Catalog::default(),
        };
        fold_log(&self.log(), start, seq)
    }
}
