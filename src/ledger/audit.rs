//! The audit log as people and scripts read it: what happened, never a value.

use super::*;

/// One line of the audit log: what happened, never a value.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub event_id: uuid::Uuid,
    pub recorded_at: Millis,
    pub actor: String,
    pub event_type: String,
    pub secret_id: Option<SecretId>,
    pub name: Option<String>,
    pub scope: Option<Scope>,
    /// The secret's owner (the principal a private secret belongs to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub version: Option<u32>,
    pub changes: Vec<KeyChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEntry {
    /// The entry as `sledger log --format json` and the API show it: its fields plus `time`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("audit entries serialise");
        v["time"] = serde_json::json!(crate::event::format_millis(self.recorded_at));
        v
    }
}

/// How one value key changed, with the new value's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyChange {
    pub key: String,
    pub change: &'static str,
    pub fingerprint: Option<String>,
}

pub(super) fn fingerprint_hex(fp: &crate::crypto::Fingerprint) -> String {
    hex::encode(fp)
}

pub(super) fn describe(
    stored: &StoredEvent,
    event: &Event,
    before: Option<&SecretMeta>,
    after: Option<&SecretMeta>,
) -> AuditEntry {
    let mut changes = Vec::new();
    if let Some(values) = event.values() {
        let old = before.map(|m| &m.fingerprints);
        for (key, fp) in &values.fingerprints {
            let change = match old.and_then(|o| o.get(key)) {
                None => "added",
                Some(prev) if prev != fp => "changed",
                Some(_) => continue,
            };
            changes.push(KeyChange {
                key: key.clone(),
                change,
                fingerprint: Some(fingerprint_hex(fp)),
            });
        }
        for key in old.into_iter().flat_map(|o| o.keys()) {
            if !values.fingerprints.contains_key(key) {
                changes.push(KeyChange {
                    key: key.clone(),
                    change: "removed",
                    fingerprint: None,
                });
            }
        }
    }
    let detail = match event {
        Event::SecretRenamed { from, to } => Some(format!("renamed {from} → {to}")),
        Event::KeyRotated { key_id } => Some(format!("master key is now {key_id}")),
        Event::SecretPurged => Some("data key destroyed; every version is unreadable".into()),
        Event::SinkAdded { name, url, role } => Some(format!("sink {name} added as {role}: {url}")),
        Event::SinkRoleChanged { name, role } => Some(format!("sink {name} is now {role}")),
        Event::SinkRemoved { name } => Some(format!("sink {name} removed")),
        Event::LedgerRestored { target_seq } => Some(format!(
            "restore to the state after seq {target_seq}; the compensating events follow"
        )),
        Event::TokenIssued {
            name,
            role,
            patterns,
            expires_at,
            ..
        } => Some(format!(
            "token {name} issued: {role} on {}{}",
            patterns.join(", "),
            expires_at
                .map(|at| format!(", expires {}", crate::event::format_millis(at)))
                .unwrap_or_default()
        )),
        Event::TokenRevoked { name } => Some(format!("token {name} revoked")),
        Event::MacsStarted => {
            Some("every event from here on carries a MAC only master-key holders can make".into())
        }
        Event::AnchorsReset => Some(
            "this ledger was accepted as it is: the head its sinks witnessed before now is no longer believed"
                .into(),
        ),
        _ => None,
    };
    let labels = match event {
        Event::SecretCreated { labels, .. } | Event::SecretUpdated { labels, .. } => Some(labels.clone()),
        _ => None,
    };
    let meta = after.or(before);
    AuditEntry {
        seq: stored.seq,
        event_id: stored.event_id,
        recorded_at: stored.recorded_at,
        actor: stored.actor.clone(),
        event_type: stored.event_type.clone(),
        secret_id: stored.secret_id,
        name: meta.map(|m| m.name.clone()),
        scope: meta.map(|m| m.scope),
        owner: meta.map(|m| m.owner.clone()),
        version: meta.map(|m| m.version),
        changes,
        labels,
        detail,
    }
}

/// Which audit entries a query wants (every field narrows it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFilter {
    /// Only this secret's events (a name as `actor` sees it, or `id:<uuid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Unix ms, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// Only the last N matching entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Who is looking: other owners' private secrets are left out (the server sets it to the
    /// caller's principal; a local key holder sees everything).
    #[serde(skip)]
    pub viewer: Option<String>,
}

/// The filter's conditions on one entry, with its secret resolved to an id.
pub struct LogMatcher {
    filter: LogFilter,
    secret_id: Option<SecretId>,
}

impl LogMatcher {
    pub fn keeps(&self, e: &AuditEntry) -> bool {
        let f = &self.filter;
        self.secret_id.is_none_or(|id| e.secret_id == Some(id))
            && f.actor.as_ref().is_none_or(|a| &e.actor == a)
            && f.event_type.as_ref().is_none_or(|t| &e.event_type == t)
            && f.since.is_none_or(|s| e.recorded_at >= s)
            && f.until.is_none_or(|u| e.recorded_at <= u)
            && f.after_seq.is_none_or(|a| e.seq > a)
            && f.viewer
                .as_ref()
                .is_none_or(|v| e.scope != Some(Scope::Private) || e.owner.as_ref() == Some(v))
    }
}

impl Ledger {
    /// Check `filter` (a known event type, a secret `actor` can see) and resolve its secret.
    pub fn log_matcher(&self, actor: &str, filter: LogFilter) -> Result<LogMatcher> {
        if let Some(t) = &filter.event_type {
            if !crate::event::EVENT_TYPES.contains(&t.as_str()) {
                return Err(Error::invalid(format!(
                    "unknown event type {t:?}; known types: {}",
                    crate::event::EVENT_TYPES.join(", ")
                )));
            }
        }
        let secret_id = match &filter.secret {
            Some(name) => self.history(actor, name)?.first().and_then(|e| e.secret_id),
            None => None,
        };
        Ok(LogMatcher { filter, secret_id })
    }

    /// The entries `filter` keeps, oldest first. With a `limit`, the log is read back from the
    /// head only until that many are found (each described from its own secret's history), so
    /// `log --limit 20` costs twenty entries, not the whole log; without one, every entry.
    pub fn log_entries(&self, actor: &str, filter: LogFilter) -> Result<Vec<AuditEntry>> {
        let Some(limit) = filter.limit else {
            return Ok(self.query_log(actor, filter)?.0);
        };
        let matcher = self.log_matcher(actor, filter)?;
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        let f = &matcher.filter;
        self.store.scan_back(u64::MAX, &mut |stored| {
            // What the stored row says decides most filters before anything is decoded.
            let maybe = matcher.secret_id.is_none_or(|id| stored.secret_id == Some(id))
                && f.actor.as_ref().is_none_or(|a| &stored.actor == a)
                && f.event_type.as_ref().is_none_or(|t| &stored.event_type == t)
                && f.after_seq.is_none_or(|a| stored.seq > a);
            if maybe {
                let entry = self.describe_in_history(&stored)?;
                if matcher.keeps(&entry) {
                    found.push(entry);
                }
            }
            Ok(found.len() < limit && f.after_seq.is_none_or(|a| stored.seq > a + 1))
        })?;
        found.reverse();
        Ok(found)
    }

    /// One event as an audit entry, its secret's state before and after folded from that
    /// secret's own events.
    fn describe_in_history(&self, stored: &StoredEvent) -> Result<AuditEntry> {
        let event = stored.decode()?;
        let Some(id) = stored.secret_id else {
            return Ok(describe(stored, &event, None, None));
        };
        let mut before: Option<SecretMeta> = None;
        self.store.scan_secret(id, stored.seq - 1, &mut |earlier| {
            let earlier_event = earlier.decode()?;
            before = catalog::apply(before.take(), &earlier, earlier_event)?;
            Ok(true)
        })?;
        let after = catalog::apply(before.clone(), stored, event.clone())?;
        Ok(describe(stored, &event, before.as_ref(), after.as_ref()))
    }

    /// The entries `filter` keeps (the last `limit` of them), oldest first, and the catalog
    /// folded to the head, to follow the log from.
    pub fn query_log(
        &self,
        actor: &str,
        filter: LogFilter,
    ) -> Result<(Vec<AuditEntry>, Catalog, LogMatcher)> {
        let matcher = self.log_matcher(actor, filter)?;
        let limit = matcher.filter.limit.unwrap_or(usize::MAX);
        let mut shown = std::collections::VecDeque::new();
        let mut catalog = Catalog::default();
        self.audit(&mut catalog, &mut |e| {
            if matcher.keeps(&e) && limit > 0 {
                if shown.len() == limit {
                    shown.pop_front();
                }
                shown.push_back(e);
            }
            Ok(true)
        })?;
        Ok((shown.into(), catalog, matcher))
    }

    /// Visit audit entries for events after `catalog.seq`, folding them into `catalog` as it goes
    /// (so a follower can call it again with the same catalog to get only new events).
    pub fn audit(
        &self,
        catalog: &mut Catalog,
        visit: &mut dyn FnMut(AuditEntry) -> Result<bool>,
    ) -> Result<()> {
        self.log().scan(catalog.seq + 1, u64::MAX, &mut |stored| {
            let event = stored.decode()?;
            let before = stored.secret_id.and_then(|id| catalog.secrets.get(&id).cloned());
            catalog.apply(&stored, event.clone())?;
            let after = stored.secret_id.and_then(|id| catalog.secrets.get(&id));
            visit(describe(&stored, &event, before.as_ref(), after))
        })
    }

    /// Every event of one secret (live, deleted or purged), as audit entries.
    pub fn history(&self, actor: &str, name: &str) -> Result<Vec<AuditEntry>> {
        let meta = resolve(self.catalog()?, actor, name, Want::Any)?;
        let mut state: Option<SecretMeta> = None;
        let mut entries = Vec::new();
        self.store.scan_secret(meta.id, u64::MAX, &mut |stored| {
            let event = stored.decode()?;
            let before = state.take();
            state = catalog::apply(before.clone(), &stored, event.clone())?;
            entries.push(describe(&stored, &event, before.as_ref(), state.as_ref()));
            Ok(true)
        })?;
        Ok(entries)
    }
}
