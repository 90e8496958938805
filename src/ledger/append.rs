//! Commands become events: validation against the catalog (planning), sealing, chaining, and
//! the append with group commit.

use super::*;

pub(super) fn sink_event_name(event: &Event) -> String {
    match event {
        Event::SinkAdded { name, .. } | Event::SinkRoleChanged { name, .. } | Event::SinkRemoved { name } => {
            name.clone()
        }
        _ => String::new(),
    }
}

/// The result of planning one command inside the write transaction.
pub(super) enum Planned {
    /// Ledger-level events (sinks); empty when nothing changes.
    Ledger(Vec<Event>),
    Append {
        secret_id: SecretId,
        event: Event,
        before: Option<SecretMeta>,
    },
    Nothing(SecretMeta),
}

/// The token registry as of the store's head (inside the write transaction, whose MAC check
/// already covered every event).
pub(super) fn tokens(store: &dyn Store) -> Result<crate::identity::Tokens> {
    let mut tokens = crate::identity::Tokens::default();
    store.scan_types(crate::identity::TOKEN_EVENT_TYPES, 0, &mut |stored| {
        let event = stored.decode()?;
        tokens.apply(&stored, event);
        Ok(true)
    })?;
    Ok(tokens)
}

/// One caller's commands, applied all-or-nothing (see [`Ledger::execute_group`]).
#[derive(Debug, Clone)]
pub struct Request {
    /// Who is acting: recorded in every event, and the owner of private secrets.
    pub actor: String,
    pub commands: Vec<Command>,
}

/// Each attached sink's name and limits.
type SinkLimits = Rc<Vec<(String, Capabilities)>>;

/// One write transaction's planning: the store and keys, and what it reads once for all the
/// commands of a group commit (which a store across a network would otherwise answer with a
/// round trip per command).
pub(super) struct Planner<'a> {
    pub(super) tx: &'a dyn Store,
    pub(super) keys: Option<&'a Keys>,
    pub(super) settings: LedgerSettings,
    /// The attached sinks' limits, from the registry table: they only decide limits (sinks are
    /// opened, and values sent, by the log's fold). Forgotten when a sink event is appended or
    /// a request is rolled back.
    sinks: RefCell<Option<SinkLimits>>,
    /// Whether each (namespace, name) the group's creates want was taken at the start, read in
    /// one query. An answer is used once, and dropped as soon as an event of the transaction
    /// touches its name; after that the catalog is asked.
    names: RefCell<HashMap<(String, String), bool>>,
}

impl<'a> Planner<'a> {
    pub(super) fn new(tx: &'a dyn Store, keys: Option<&'a Keys>, settings: LedgerSettings) -> Self {
        Planner {
            tx,
            keys,
            settings,
            sinks: RefCell::new(None),
            names: RefCell::new(HashMap::new()),
        }
    }

    /// Read, in one query, whether the names `requests` create are taken. Asked first, so a
    /// store may send it with the transaction's first reads (PostgreSQL does): even one name.
    pub(super) fn read_names(&self, requests: &[Request]) -> Result<()> {
        let wanted: Vec<(String, String)> = requests
            .iter()
            .flat_map(|r| {
                r.commands.iter().filter_map(|c| match c {
                    Command::Create { name, scope, .. } => Some((namespace(*scope, &r.actor), name.clone())),
                    _ => None,
                })
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let taken = self.tx.names_taken(&wanted)?;
        self.names.borrow_mut().extend(wanted.into_iter().zip(taken));
        Ok(())
    }

    fn ensure_name_free(&self, ns: &str, scope: Scope, name: &str) -> Result<()> {
        let key = (ns.to_owned(), name.to_owned());
        let read = self.names.borrow_mut().remove(&key);
        let taken = match read {
            Some(taken) => taken,
            None => self.tx.name_taken(ns, name)?,
        };
        if taken {
            return Err(Error::AlreadyExists {
                name: name.to_owned(),
                scope: scope.to_string(),
            });
        }
        Ok(())
    }

    /// A secret's row changed: what was read about its old and new names no longer holds.
    fn forget_names(&self, metas: &[&SecretMeta]) {
        let mut names = self.names.borrow_mut();
        for meta in metas {
            names.remove(&(meta.namespace(), meta.name.clone()));
        }
    }

    /// A request was rolled back: the sinks it may have changed are read again.
    pub(super) fn rolled_back(&self) {
        self.sinks.take();
    }

    fn attached(&self) -> Result<SinkLimits> {
        if let Some(sinks) = &*self.sinks.borrow() {
            return Ok(sinks.clone());
        }
        let sinks = self
            .tx
            .sinks()?
            .into_values()
            .map(|sink| Ok((sink.name, SinkUrl::parse(&sink.url)?.capabilities())))
            .collect::<Result<Vec<_>>>()?;
        let sinks = Rc::new(sinks);
        *self.sinks.borrow_mut() = Some(sinks.clone());
        Ok(sinks)
    }

    /// Values must fit the ledger's limit and every attached sink's, checked before the append so
    /// that nothing is recorded that some sink cannot hold.
    fn check_size(&self, name: &str, values: &SecretValues) -> Result<()> {
        validate::values(name, values, self.settings.max_value_bytes)?;
        let size = values.json_size();
        for (sink, capabilities) in self.attached()?.iter() {
            let limit = capabilities.max_value_bytes;
            if size > limit {
                return Err(Error::TooLargeForSink {
                    name: name.to_owned(),
                    size,
                    limit,
                    sink: sink.clone(),
                });
            }
        }
        Ok(())
    }

    /// The metadata of `meta` must fit every attached sink's tags, labels or description, checked
    /// before the append like the values' size: a secret some sink cannot hold is refused, never
    /// appended and then parked where the primary would not serve it.
    fn check_metadata_fits(&self, meta: &SecretMeta) -> Result<()> {
        let sinks = self.attached()?;
        if sinks.is_empty() || meta.status != Status::Live {
            return Ok(());
        }
        let record = crate::sink::RecordMeta {
            id: meta.id,
            name: meta.name.clone(),
            scope: meta.scope,
            owner: meta.owner.clone(),
            labels: meta.labels.clone(),
            seq: meta.updated_seq,
            version: meta.version,
        };
        for (sink, capabilities) in sinks.iter() {
            if let Err(limit) = capabilities.check_metadata(&record) {
                return Err(Error::SinkLimit {
                    name: meta.name.clone(),
                    sink: sink.clone(),
                    what: limit.what,
                    size: limit.size,
                    limit: limit.limit,
                });
            }
        }
        Ok(())
    }

    /// Plan a sink command against the current sink registry.
    fn plan_sink(&self, command: Command) -> Result<Planned> {
        let sinks = sinks_from_log(self.tx)?;
        let get = |name: &str| {
            sinks.get(name).ok_or_else(|| Error::SinkNotFound {
                name: name.to_owned(),
            })
        };
        let primary = sinks
            .values()
            .find(|s| s.role == SinkRole::Primary)
            .map(|s| s.name.clone());
        let role_change = |name: &str, role| Event::SinkRoleChanged {
            name: name.to_owned(),
            role,
        };
        Ok(match command {
            Command::AddSink { name, url, role } => {
                validate::sink_name(&name)?;
                let parsed = SinkUrl::parse(&url)?;
                if sinks.contains_key(&name) {
                    return Err(Error::SinkExists { name });
                }
                if let Some(same) = sinks
                    .values()
                    .find(|s| SinkUrl::parse(&s.url).is_ok_and(|u| u.same_objects(&parsed)))
                {
                    return Err(Error::invalid(format!(
                        "sink {:?} already writes to {url}; two sinks on one backend and prefix would fight",
                        same.name
                    )));
                }
                if let (SinkRole::Primary, Some(p)) = (role, &primary) {
                    return Err(Error::invalid(format!(
                        "sink {p:?} is the primary; add this one as a backup, then `sledger sink promote {name}`"
                    )));
                }
                Planned::Ledger(vec![Event::SinkAdded { name, url, role }])
            }
            Command::SetSinkRole { name, role } => {
                let current = get(&name)?;
                if current.role == role {
                    Planned::Ledger(vec![])
                } else if role == SinkRole::Primary && primary.is_some() {
                    return Err(Error::invalid(format!(
                        "to make {name:?} the primary, use `sledger sink promote {name}`"
                    )));
                } else if current.role == SinkRole::Primary {
                    return Err(Error::invalid(format!(
                        "{name:?} is the primary; promote another sink first (`sledger sink promote OTHER`)"
                    )));
                } else {
                    Planned::Ledger(vec![role_change(&name, role)])
                }
            }
            Command::PromoteSink { name } => {
                get(&name)?;
                match primary {
                    Some(p) if p == name => Planned::Ledger(vec![]),
                    Some(p) => Planned::Ledger(vec![
                        role_change(&p, SinkRole::Backup),
                        role_change(&name, SinkRole::Primary),
                    ]),
                    None => Planned::Ledger(vec![role_change(&name, SinkRole::Primary)]),
                }
            }
            Command::RemoveSink { name } => {
                if get(&name)?.role == SinkRole::Primary {
                    return Err(Error::invalid(format!(
                        "{name:?} is the primary and serves reads; promote another sink before removing it"
                    )));
                }
                Planned::Ledger(vec![Event::SinkRemoved { name }])
            }
            _ => unreachable!("plan_sink is only called with sink commands"),
        })
    }

    /// Plan, chain and insert one request's commands inside the write transaction; advances `head`.
    pub(super) fn append_request(
        &self,
        request: &Request,
        head: &mut Head,
        now: Millis,
    ) -> Result<Vec<Outcome>> {
        let actor = request.actor.as_str();
        validate::actor(actor)?;
        let mut outcomes = Vec::with_capacity(request.commands.len());
        for command in request.commands.iter().cloned() {
            let seq = head.seq + 1;
            match self.plan(actor, command, seq)? {
                Planned::Nothing(meta) => outcomes.push(Outcome::Unchanged { secret: meta }),
                Planned::Append {
                    secret_id,
                    event,
                    before,
                } => {
                    let new = NewEvent {
                        event_id: uuid::Uuid::now_v7(),
                        actor: actor.to_owned(),
                        secret_id: Some(secret_id),
                        event,
                    };
                    let mut row = chain_next(head, &new, now);
                    seal_row(self.keys, &mut row);
                    self.tx.append(&row)?;
                    let event_type = new.event.event_type();
                    if let Some(before) = &before {
                        self.forget_names(&[before]);
                    }
                    let after = catalog::apply(before, &row, new.event)?
                        .expect("a secret event always leaves the secret in the catalog");
                    self.forget_names(&[&after]);
                    self.check_metadata_fits(&after)?;
                    self.tx.put_secret(&after)?;
                    tracing::debug!(seq = row.seq, event_type = %row.event_type, secret = %secret_id, "appended");
                    outcomes.push(Outcome::Appended {
                        seq: row.seq,
                        event_type,
                        secret: after,
                    });
                }
                Planned::Ledger(events) => {
                    for event in events {
                        let new = NewEvent {
                            event_id: uuid::Uuid::now_v7(),
                            actor: actor.to_owned(),
                            secret_id: None,
                            event,
                        };
                        let mut row = chain_next(head, &new, now);
                        seal_row(self.keys, &mut row);
                        self.tx.append(&row)?;
                        let event_type = new.event.event_type();
                        if !event_type.starts_with("sink.") {
                            tracing::debug!(seq = row.seq, event_type, "appended");
                            outcomes.push(Outcome::Recorded {
                                seq: row.seq,
                                event_type,
                            });
                            continue;
                        }
                        let name = sink_event_name(&new.event);
                        // The fold includes the row just appended (same transaction).
                        self.tx.put_sinks(&sinks_from_log(self.tx)?)?;
                        self.sinks.take();
                        if event_type == "sink.added" {
                            // A sink re-added under an old name starts from scratch.
                            self.tx.forget_sink_progress(&name)?;
                        }
                        tracing::debug!(seq = row.seq, event_type, sink = %name, "appended");
                        outcomes.push(Outcome::SinkChanged {
                            seq: row.seq,
                            event_type,
                            name,
                        });
                    }
                }
            }
        }
        Ok(outcomes)
    }

    /// The `secret.updated` event giving `meta` these full values and labels, or nothing if
    /// neither changed (compared by fingerprint, so no plaintext comparison is kept around).
    fn replace_values(
        &self,
        meta: SecretMeta,
        labels: BTreeMap<String, String>,
        values: SecretValues,
        seq: u64,
    ) -> Result<Planned> {
        self.check_size(&meta.name, &values)?;
        let keys = need_keys(self.keys)?;
        if labels == meta.labels && keys.fingerprint.fingerprints(&values) == meta.fingerprints {
            return Ok(Planned::Nothing(meta));
        }
        let dek = load_dek(self.tx, &keys.master, &meta)?;
        Ok(Planned::Append {
            secret_id: meta.id,
            event: Event::SecretUpdated {
                labels,
                values: seal(keys, &values, meta.id, seq, &dek),
            },
            before: Some(meta),
        })
    }

    /// Validate one command against the catalog (inside the write transaction) and build its event.
    fn plan(&self, actor: &str, command: Command, seq: u64) -> Result<Planned> {
        Ok(match command {
            Command::AddSink { .. }
            | Command::SetSinkRole { .. }
            | Command::PromoteSink { .. }
            | Command::RemoveSink { .. } => self.plan_sink(command)?,
            Command::IssueToken {
                name,
                role,
                patterns,
                expires_at,
                token,
            } => {
                crate::identity::validate_token_name(&name)?;
                crate::identity::validate_role_patterns(role, &patterns)?;
                let keys = need_keys(self.keys)?;
                if expires_at.is_some_and(|at| at <= now_ms()) {
                    return Err(Error::invalid(
                        "the token's expiry is in the past; give a future --expires",
                    ));
                }
                // Never reused, even after revocation: the name is the principal that owns its
                // private secrets and that the audit log names.
                if let Some(issued) = tokens(self.tx)?.get(&name) {
                    let state = match (issued.revoked_at, issued.expires_at) {
                        (Some(_), _) => "and revoked since",
                        (None, Some(at)) if at <= now_ms() => "and expired since",
                        (None, _) => "and is active",
                    };
                    return Err(Error::TokenExists { name, state });
                }
                Planned::Ledger(vec![Event::TokenIssued {
                    name,
                    role,
                    patterns,
                    expires_at,
                    hash: keys.fingerprint.token_hasher().hash(&token.0),
                }])
            }
            Command::RevokeToken { name } => {
                match tokens(self.tx)?.get(&name) {
                    Some(t) if t.revoked_at.is_none() => {}
                    Some(_) => return Err(Error::TokenRevokedAlready { name }),
                    None => return Err(Error::TokenNotFound { name }),
                }
                Planned::Ledger(vec![Event::TokenRevoked { name }])
            }
            Command::ResetAnchors => Planned::Ledger(vec![Event::AnchorsReset]),
            Command::ForceSink { name } => {
                if !self.tx.sinks()?.contains_key(&name) {
                    return Err(Error::SinkNotFound { name });
                }
                Planned::Ledger(vec![Event::SinkForced { name }])
            }
            Command::RecordRecovery { source } => {
                if seq != 1 {
                    return Err(Error::invalid(
                        "a recovery is recorded only as a new ledger's first event",
                    ));
                }
                Planned::Ledger(vec![Event::LedgerRecovered { source }])
            }
            Command::Recover {
                id,
                name,
                scope,
                owner,
                labels,
                values,
            } => {
                if self.tx.secret(id)?.is_some() {
                    return Err(Error::invalid(format!("secret {id} is already in this ledger")));
                }
                let secret = NewSecret {
                    id,
                    name,
                    scope,
                    owner,
                    labels,
                    values,
                };
                secret.plan(self, seq)?
            }
            Command::RecordRestore {
                target_seq,
                planned_at,
            } => {
                // `seq` is the seq this event gets, so the head is the one before it.
                if planned_at + 1 != seq {
                    return Err(Error::ChangedMeanwhile { what: "restore" });
                }
                Planned::Ledger(vec![Event::LedgerRestored { target_seq }])
            }
            Command::Create {
                name,
                scope,
                labels,
                values,
            } => {
                let owner = actor.to_owned();
                let secret = NewSecret {
                    id: SecretId::now_v7(),
                    name,
                    scope,
                    owner,
                    labels,
                    values,
                };
                secret.plan(self, seq)?
            }
            Command::Update {
                name,
                set_values,
                remove_keys,
                set_labels,
                remove_labels,
            } => {
                let meta = resolve(self.tx, actor, &name, Want::Live)?;
                let keys = need_keys(self.keys)?.values();
                for key in set_values.keys() {
                    validate::value_key(key)?;
                }
                validate::labels(&set_labels)?;
                let (mut values, _) = open_values_at(self.tx, keys, &meta, meta.value_seq)?;
                for (i, key) in remove_keys.iter().enumerate() {
                    if remove_keys[..i].contains(key) {
                        return Err(Error::invalid(format!(
                            "key {key:?} is to be removed twice; name it once"
                        )));
                    }
                    if set_values.contains_key(key) {
                        return Err(Error::invalid(format!(
                            "key {key:?} is both set and removed; do one or the other"
                        )));
                    }
                    if !values.remove(key) {
                        return Err(Error::invalid(format!(
                            "secret {name:?} has no key {key:?} to remove"
                        )));
                    }
                }
                for (k, v) in set_values.iter() {
                    values.insert(k, v);
                }
                let mut labels = meta.labels.clone();
                for key in &remove_labels {
                    if set_labels.contains_key(key) {
                        return Err(Error::invalid(format!(
                            "label {key:?} is both set and removed; do one or the other"
                        )));
                    }
                    if labels.remove(key).is_none() {
                        return Err(Error::invalid(format!(
                            "secret {name:?} has no label {key:?} to remove"
                        )));
                    }
                }
                labels.extend(set_labels);
                self.replace_values(meta, labels, values, seq)?
            }
            Command::Put {
                name,
                scope,
                labels,
                values,
            } => {
                let ns = namespace(scope, actor);
                let existing = named(self.tx, actor, &name)?
                    .into_iter()
                    .find(|m| m.status == Status::Live && m.namespace() == ns);
                match existing {
                    None => self.plan(
                        actor,
                        Command::Create {
                            name,
                            scope,
                            labels,
                            values,
                        },
                        seq,
                    )?,
                    Some(meta) => {
                        validate::labels(&labels)?;
                        self.replace_values(meta, labels, values, seq)?
                    }
                }
            }
            Command::Rename { name, new_name } => {
                validate::secret_name(&new_name)?;
                // A deleted secret can be renamed too (when no live one has the name): that is how
                // one whose name was taken since comes back under another (`undelete --as`).
                let meta = resolve(self.tx, actor, &name, Want::Live)
                    .or_else(|live| resolve(self.tx, actor, &name, Want::Deleted).map_err(|_| live))?;
                if new_name == meta.name {
                    return Ok(Planned::Nothing(meta));
                }
                self.ensure_name_free(&meta.namespace(), meta.scope, &new_name)?;
                Planned::Append {
                    secret_id: meta.id,
                    event: Event::SecretRenamed {
                        from: meta.name.clone(),
                        to: new_name,
                    },
                    before: Some(meta),
                }
            }
            Command::Delete { name } => {
                let meta = resolve(self.tx, actor, &name, Want::Live)?;
                Planned::Append {
                    secret_id: meta.id,
                    event: Event::SecretDeleted,
                    before: Some(meta),
                }
            }
            Command::Undelete { name } => {
                let meta = resolve(self.tx, actor, &name, Want::Deleted)?;
                self.ensure_name_free(&meta.namespace(), meta.scope, &meta.name)?;
                Planned::Append {
                    secret_id: meta.id,
                    event: Event::SecretRestored,
                    before: Some(meta),
                }
            }
            Command::Purge { name } => {
                let meta = resolve(self.tx, actor, &name, Want::Any)?;
                if meta.status == Status::Purged {
                    return Err(Error::Purged { name });
                }
                self.tx.delete_wrapped_key(meta.id)?;
                Planned::Append {
                    secret_id: meta.id,
                    event: Event::SecretPurged,
                    before: Some(meta),
                }
            }
        })
    }
}

/// Chain, MAC and append a ledger-level event (no secret) after `head`, which moves on.
pub(super) fn append_ledger_event(
    tx: &dyn Store,
    keys: &Keys,
    head: &mut Head,
    actor: &str,
    event: Event,
    now: Millis,
) -> Result<()> {
    let new = NewEvent {
        event_id: uuid::Uuid::now_v7(),
        actor: actor.to_owned(),
        secret_id: None,
        event,
    };
    let mut row = chain_next(head, &new, now);
    seal_row(Some(keys), &mut row);
    tx.append(&row)
}

/// Give a row its MAC (every append by a key holder).
pub(super) fn seal_row(keys: Option<&Keys>, row: &mut StoredEvent) {
    row.mac = keys.map(|k| k.mac.event(row.seq, &row.hash));
}

pub(super) fn need_keys(keys: Option<&Keys>) -> Result<&Keys> {
    keys.ok_or_else(|| {
        Error::KeyUnavailable(
            "this command needs the master key; pass --key-file or set SLEDGER_MASTER_KEY".into(),
        )
    })
}

pub(super) fn seal(
    keys: &Keys,
    values: &SecretValues,
    id: SecretId,
    seq: u64,
    dek: &DataKey,
) -> SealedValues {
    SealedValues {
        ciphertext: keys.epochs.key_for(dek, seq).seal(values, id, seq),
        fingerprints: keys.fingerprint.fingerprints(values),
    }
}

/// A secret to create: a new one (`create`), or one brought back under its own id and owner
/// (`recover`).
struct NewSecret {
    id: SecretId,
    name: String,
    scope: Scope,
    owner: String,
    labels: BTreeMap<String, String>,
    values: SecretValues,
}

impl NewSecret {
    /// Check it, make and wrap its data key, and seal its values for event `seq`.
    fn plan(self, planner: &Planner<'_>, seq: u64) -> Result<Planned> {
        validate::secret_name(&self.name)?;
        validate::labels(&self.labels)?;
        planner.check_size(&self.name, &self.values)?;
        let keys = need_keys(planner.keys)?;
        planner.ensure_name_free(&namespace(self.scope, &self.owner), self.scope, &self.name)?;
        let dek = DataKey::generate();
        planner
            .tx
            .put_wrapped_key(self.id, &keys.master.wrap_data_key(&dek, self.id))?;
        let sealed = seal(keys, &self.values, self.id, seq, &dek);
        Ok(Planned::Append {
            secret_id: self.id,
            event: Event::SecretCreated {
                name: self.name,
                scope: self.scope,
                owner: self.owner,
                labels: self.labels,
                values: sealed,
            },
            before: None,
        })
    }
}

impl Ledger {
    /// Apply commands as one all-or-nothing batch: either every event is appended, or none.
    pub fn execute(&mut self, actor: &str, commands: Vec<Command>) -> Result<Vec<Outcome>> {
        let request = Request {
            actor: actor.to_owned(),
            commands,
        };
        self.execute_request(request)
    }

    /// Group commit: apply several independent requests in one transaction and one fsync.
    /// Each request is all-or-nothing on its own and is validated against the state the
    /// requests before it left; one that fails is rolled back alone and gets its own error,
    /// while the others are appended. Results come back in request order.
    ///
    /// If the transaction as a whole fails (the database is busy or broken), each request is
    /// tried again on its own, so every caller still gets its own result.
    pub fn execute_group(&mut self, requests: Vec<Request>) -> Vec<Result<Vec<Outcome>>> {
        if requests.len() == 1 {
            return requests.into_iter().map(|r| self.execute_request(r)).collect();
        }
        match self.append_group(&requests) {
            Ok(results) => results,
            // The write lock never came: one by one, each would wait out the busy timeout again.
            Err(Error::Busy) => requests.iter().map(|_| Err(Error::Busy)).collect(),
            Err(e) => {
                tracing::debug!(error = %e, requests = requests.len(), "group commit failed; applying its requests one by one");
                requests.into_iter().map(|r| self.execute_request(r)).collect()
            }
        }
    }

    /// The head the last [`Ledger::execute`] or [`Ledger::execute_group`] through this `Ledger`
    /// committed (`None` before the first), known without asking the store; writers in other
    /// processes may have appended after it.
    pub fn committed_head(&self) -> Option<u64> {
        self.committed_head
    }

    pub(super) fn execute_request(&mut self, request: Request) -> Result<Vec<Outcome>> {
        self.append_group(std::slice::from_ref(&request))?
            .pop()
            .expect("one result per request")
    }

    /// One write transaction for `requests`. With more than one, each is all-or-nothing on
    /// its own: the group runs first without a savepoint per request, and only if one of them
    /// fails once more with them. Most groups have no failing request, and on SQLite a
    /// savepoint copies every page its request touches into a sub-journal (a sixth of the
    /// writer's time at 16 writers). `Err` only when the transaction itself fails.
    pub(super) fn append_group(&mut self, requests: &[Request]) -> Result<Vec<Result<Vec<Outcome>>>> {
        if requests.len() > 1 {
            if let Some(results) = self.append_in_one_transaction(requests, false)? {
                return Ok(results);
            }
        }
        Ok(self
            .append_in_one_transaction(requests, true)?
            .expect("with savepoints every request gets a result"))
    }

    /// [`Ledger::append_group`]'s transaction, with a savepoint per request or none; without,
    /// a failing request rolls the whole transaction back and the answer is `None`.
    fn append_in_one_transaction(
        &mut self,
        requests: &[Request],
        savepoints: bool,
    ) -> Result<Option<Vec<Result<Vec<Outcome>>>>> {
        self.catalog()?;
        let keys = self.keys.as_ref();
        let settings = self.settings;
        let tx = Write::begin(&*self.store)?;
        // Only key holders append, and only after checking what others appended since.
        let keys = need_keys(keys)?;
        let planner = Planner::new(&*tx, Some(keys), settings);
        // The transaction's first read, so that a store that pipelines (PostgreSQL) sends it
        // with the head and settings in one round trip.
        planner.read_names(requests)?;
        ensure_current_key(&*tx, keys)?;
        let mut head = tx.head()?;
        let first_seq = head.seq;
        let now = now_ms();
        mac::check_since_trusted(&*tx, &keys.mac)?;
        if let Some(event) = mac::start_if_needed(&*tx, &keys.master, &keys.fingerprint, &keys.mac, head)? {
            let actor = requests.first().map_or("sledger", |r| r.actor.as_str());
            append_ledger_event(&*tx, keys, &mut head, actor, event, now)?;
        }
        let alone = requests.len() == 1;
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            if alone {
                // The transaction is the unit: a failure rolls it back as a whole.
                results.push(Ok(planner.append_request(request, &mut head, now)?));
                continue;
            }
            if !savepoints {
                match planner.append_request(request, &mut head, now) {
                    Ok(outcomes) => results.push(Ok(outcomes)),
                    // Its writes cannot be undone alone: dropping `tx` rolls back them all.
                    Err(_) => return Ok(None),
                }
                continue;
            }
            tx.savepoint()?;
            let before = head;
            match planner.append_request(request, &mut head, now) {
                Ok(outcomes) => {
                    tx.release_savepoint()?;
                    results.push(Ok(outcomes));
                }
                Err(e) => {
                    tx.rollback_savepoint()?;
                    planner.rolled_back();
                    head = before;
                    results.push(Err(e));
                }
            }
        }
        mac::trust(&*tx, &keys.mac, head)?;
        finish_append(&*tx, &keys.mac, self.settings, first_seq, head)?;
        tx.commit()?;
        self.committed_head = Some(head.seq);
        let purged = results.iter().flatten().flatten().any(|o| {
            matches!(
                o,
                Outcome::Appended {
                    event_type: "secret.purged",
                    ..
                }
            )
        });
        if purged {
            self.store.scrub();
        }
        Ok(Some(results))
    }
}
