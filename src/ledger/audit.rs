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
    /// How the labels changed (a label-only update shows here and nowhere else).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub label_changes: Vec<LabelChange>,
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

/// What a viewer is shown in place of a name it may not learn.
const HIDDEN_NAME: &str = "(a name outside the viewer's patterns)";

fn renamed(from: &str, to: &str) -> String {
    format!("renamed {from} → {to}")
}

impl AuditEntry {
    /// One secret's history (in seq order) for a viewer whose token covers its current name but
    /// maybe not every earlier one: a name it may not see is left out of the entries, and out
    /// of the renames' details.
    pub fn hide_names(history: &mut [AuditEntry], may_see: &dyn Fn(&str) -> bool) {
        let mut before: Option<String> = None;
        for entry in history {
            let name = entry.name.clone();
            if let (Some(from), Some(to), "secret.renamed") = (&before, &name, entry.event_type.as_str()) {
                let shown = |n: &str| {
                    if may_see(n) {
                        n.to_owned()
                    } else {
                        HIDDEN_NAME.to_owned()
                    }
                };
                entry.detail = Some(renamed(&shown(from), &shown(to)));
            }
            if entry.name.as_deref().is_some_and(|n| !may_see(n)) {
                entry.name = None;
            }
            before = name;
        }
    }
}

/// How one value key changed, with the new value's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyChange {
    pub key: String,
    pub change: &'static str,
    pub fingerprint: Option<String>,
}

/// How one label changed: its new value, or `None` when removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelChange {
    pub key: String,
    pub change: &'static str,
    pub value: Option<String>,
}

/// The label changes from `before` to `after` (a created secret's labels are all added).
fn label_changes(
    before: Option<&BTreeMap<String, String>>,
    after: &BTreeMap<String, String>,
) -> Vec<LabelChange> {
    let empty = BTreeMap::new();
    let before = before.unwrap_or(&empty);
    let mut changes: Vec<LabelChange> = after
        .iter()
        .filter_map(|(key, value)| {
            let change = match before.get(key) {
                None => "added",
                Some(old) if old != value => "changed",
                Some(_) => return None,
            };
            Some(LabelChange {
                key: key.clone(),
                change,
                value: Some(value.clone()),
            })
        })
        .collect();
    changes.extend(
        before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .map(|key| LabelChange {
                key: key.clone(),
                change: "removed",
                value: None,
            }),
    );
    changes
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
        Event::SecretRenamed { from, to } => Some(renamed(from, to)),
        Event::KeyRotated { key_id } => Some(format!("master key is now {key_id}")),
        Event::KeyMigrated { provider } => Some(format!("master key now held by {provider}")),
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
        Event::LedgerRecovered { source } => Some(format!(
            "rebuilt from what sink {source} held: the history before this event is not available"
        )),
        Event::SinkForced { name } => Some(format!(
            "sink {name} to be made to match the ledger (`reconcile --force-ledger`): what it holds beyond the ledger's head is erased and written again"
        )),
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
    let label_changes = labels
        .as_ref()
        .map(|after| label_changes(before.map(|m| &m.labels), after))
        .unwrap_or_default();
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
        label_changes,
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
    /// Inclusive; unix ms, or an RFC 3339 time where it is read from text (a query string).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "millis_or_time"
    )]
    pub since: Option<Millis>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "millis_or_time"
    )]
    pub until: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// At most N entries: the first N from the start point (`after_seq` or `since`), or,
    /// with neither, the last N (as `tail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The last N matching entries (read back from the end, still shown oldest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    /// Who is looking: other owners' private secrets are left out (the server sets it to the
    /// caller's principal; a local key holder sees everything).
    #[serde(skip)]
    pub viewer: Option<String>,
}

/// A time given as unix milliseconds or as an RFC 3339 time (`2026-11-28T12:00:00Z`).
fn millis_or_time<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Millis>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Millis(Millis),
        Text(String),
    }
    match Option::<Given>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Given::Millis(ms)) => Ok(Some(ms)),
        Some(Given::Text(text)) => text
            .parse::<Millis>()
            .ok()
            .or_else(|| crate::event::parse_millis(&text))
            .map(Some)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a time: give unix milliseconds or RFC 3339, like 2026-11-28T12:00:00Z"
                ))
            }),
    }
}

impl LogFilter {
    /// How many entries to read back from the end, if this is a tail read.
    fn tail_count(&self) -> Option<usize> {
        self.tail.or_else(|| {
            (self.after_seq.is_none() && self.since.is_none())
                .then_some(self.limit)
                .flatten()
        })
    }
}

/// The filter's conditions on one entry, with its secret resolved to an id.
struct LogMatcher {
    filter: LogFilter,
    secret_id: Option<SecretId>,
}

impl LogMatcher {
    /// The conditions the store's indexes answer: the event's own columns.
    fn query(&self, from: u64, to: u64, newest_first: bool) -> EventQuery {
        EventQuery {
            from,
            to,
            secret: self.secret_id,
            actor: self.filter.actor.clone(),
            event_type: self.filter.event_type.clone(),
            newest_first,
        }
    }

    /// The rest: the entry's times and whether the viewer may see its secret.
    fn keeps(&self, e: &AuditEntry) -> bool {
        let f = &self.filter;
        f.since.is_none_or(|s| e.recorded_at >= s)
            && f.until.is_none_or(|u| e.recorded_at <= u)
            && f.viewer
                .as_ref()
                .is_none_or(|v| e.scope != Some(Scope::Private) || e.owner.as_ref() == Some(v))
    }
}

/// Describes events one at a time, each secret's state before the event folded from that
/// secret's own events. It remembers the last state it folded for recently seen secrets, so
/// reading the log forward folds each secret's history once, in bounded memory.
struct Describer<'a> {
    store: &'a dyn Store,
    /// Per secret: the seq of the last event folded, and the state after it.
    recent: HashMap<SecretId, (u64, Option<SecretMeta>)>,
}

impl<'a> Describer<'a> {
    /// How many secrets' states it keeps (about 2 KB each) before starting afresh.
    const RECENT_SECRETS: usize = 16_384;

    fn new(store: &'a dyn Store) -> Self {
        Describer {
            store,
            recent: HashMap::new(),
        }
    }

    fn describe(&mut self, stored: &StoredEvent) -> Result<AuditEntry> {
        let event = stored.decode()?;
        let Some(id) = stored.secret_id else {
            return Ok(describe(stored, &event, None, None));
        };
        let (folded_to, mut before) = match self.recent.remove(&id) {
            Some((seq, state)) if seq < stored.seq => (seq, state),
            _ => (0, None),
        };
        if folded_to + 1 < stored.seq {
            let query = EventQuery {
                secret: Some(id),
                ..EventQuery::range(folded_to + 1, stored.seq - 1)
            };
            self.store.scan_events(&query, &mut |earlier| {
                let earlier_event = earlier.decode()?;
                before = catalog::apply(before.take(), &earlier, earlier_event)?;
                Ok(true)
            })?;
        }
        let after = catalog::apply(before.clone(), stored, event.clone())?;
        let entry = describe(stored, &event, before.as_ref(), after.as_ref());
        if self.recent.len() >= Self::RECENT_SECRETS {
            self.recent.clear();
        }
        self.recent.insert(id, (stored.seq, after));
        Ok(entry)
    }
}

impl Ledger {
    /// Check `filter` (a known event type, a secret `actor` can see) and resolve its secret.
    fn log_matcher(&self, actor: &str, filter: LogFilter) -> Result<LogMatcher> {
        if let Some(t) = &filter.event_type {
            if !crate::event::EVENT_TYPES.contains(&t.as_str()) {
                return Err(Error::invalid(format!(
                    "unknown event type {t:?}; known types: {}",
                    crate::event::EVENT_TYPES.join(", ")
                )));
            }
        }
        let secret_id = match &filter.secret {
            Some(name) => Some(self.find_any(actor, name)?.id),
            None => None,
        };
        Ok(LogMatcher { filter, secret_id })
    }

    /// Hand the entries `filter` keeps to `visit`, oldest first, reading only what they need:
    /// the seq range that `after_seq`, `since` and `until` bound (times become seqs by binary
    /// search), through the index of the secret, actor or type filtered on, and only as far as
    /// `limit` or `tail` asks. Memory stays flat however long the log. Returns the last seq
    /// the read covered, to follow the log from.
    pub fn scan_log(
        &self,
        actor: &str,
        filter: LogFilter,
        visit: &mut dyn FnMut(AuditEntry) -> Result<bool>,
    ) -> Result<u64> {
        let matcher = self.log_matcher(actor, filter)?;
        let f = &matcher.filter;
        let head = self.store.head()?.seq;
        let mut from = f.after_seq.map_or(1, |a| a.saturating_add(1));
        if let Some(since) = f.since {
            from = from.max(self.store.seq_at_time(since.saturating_sub(1))? + 1);
        }
        let to = match f.until {
            Some(until) => self.store.seq_at_time(until)?,
            None => head,
        };
        if from > to {
            return Ok(to);
        }
        let mut describer = Describer::new(&*self.store);
        if let Some(tail) = f.tail_count() {
            let mut found = Vec::new();
            if tail > 0 {
                self.store
                    .scan_events(&matcher.query(from, to, true), &mut |stored| {
                        let entry = describer.describe(&stored)?;
                        if matcher.keeps(&entry) {
                            found.push(entry);
                        }
                        Ok(found.len() < tail)
                    })?;
            }
            for entry in found.into_iter().rev() {
                if !visit(entry)? {
                    break;
                }
            }
            return Ok(to);
        }
        let limit = f.limit.unwrap_or(usize::MAX);
        let mut shown = 0;
        let mut covered = to;
        if limit > 0 {
            self.store
                .scan_events(&matcher.query(from, to, false), &mut |stored| {
                    let entry = describer.describe(&stored)?;
                    if matcher.keeps(&entry) {
                        shown += 1;
                        if !visit(entry)? || shown == limit {
                            covered = stored.seq;
                            return Ok(false);
                        }
                    }
                    Ok(true)
                })?;
        } else {
            covered = from - 1;
        }
        Ok(covered)
    }

    /// The entries `filter` keeps, oldest first (see [`Ledger::scan_log`]).
    pub fn log_entries(&self, actor: &str, filter: LogFilter) -> Result<Vec<AuditEntry>> {
        let mut entries = Vec::new();
        self.scan_log(actor, filter, &mut |e| {
            entries.push(e);
            Ok(true)
        })?;
        Ok(entries)
    }

    /// Visit audit entries for events after `catalog.seq`, folding them into `catalog` as it goes
    /// (so a caller can call it again with the same catalog to get only new events). This holds
    /// every secret's state; [`Ledger::scan_log`] reads in flat memory.
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
