//! What the ledger reads and writes through its [`Store`], beyond single calls: settings that
//! must exist, name resolution, data keys and sealed values, and the bookkeeping every append
//! does (catalog position, snapshots).

use super::*;

/// A setting every ledger has; its absence is corruption.
pub(super) fn required_setting(store: &dyn Store, key: &str) -> Result<Vec<u8>> {
    store
        .setting(key)?
        .ok_or_else(|| Error::Corrupt(format!("ledger_meta lacks {key}")))
}

/// Refuse to write with a master key another process has since rotated away: data keys
/// wrapped under it would be unreadable with the ledger's real key.
pub(super) fn ensure_current_key(store: &dyn Store, keys: &Keys) -> Result<()> {
    if !keys.master.checks(&required_setting(store, "key_check")?) {
        return Err(Error::KeyRotated);
    }
    Ok(())
}

/// Secrets named `name` (or the one `id:<uuid>` refers to) visible to `actor`: the workspace
/// and the actor's private scope.
pub(super) fn named(store: &dyn Store, actor: &str, name: &str) -> Result<Vec<SecretMeta>> {
    if let Some(id) = name.strip_prefix(ID_REF_PREFIX) {
        let id = SecretId::parse_str(id).map_err(|_| {
            Error::InvalidInput(format!(
                "{name:?} is not id:<uuid> (see `sledger secret history`)"
            ))
        })?;
        let visible = |m: &SecretMeta| m.scope == Scope::Workspace || m.owner == actor;
        return Ok(store.secret(id)?.filter(visible).into_iter().collect());
    }
    store.secrets_named(name, &["workspace", &namespace(Scope::Private, actor)])
}

/// Which lifecycle states a lookup accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Live,
    Deleted,
    /// Live first, then the most recently deleted, then purged.
    Any,
}

/// One secret's state after event `seq`, folded from its own events (through the secret index).
pub(super) fn fold_secret(store: &dyn Store, id: SecretId, seq: u64) -> Result<Option<SecretMeta>> {
    let mut state = None;
    store.scan_secret(id, seq, &mut |e| {
        state = catalog::apply(state.take(), &e, e.decode()?)?;
        Ok(true)
    })?;
    Ok(state)
}

/// A catalog row found for `name` (as `actor` looked it up) is used only if it is that name's,
/// visible to `actor`, and the secret's own events fold into it. The catalog is derived and
/// carries no MAC, so a row edited outside sledger (a name pointed at another secret, the
/// value seq moved back to an older version) would otherwise make a read serve, or an update
/// merge into, the wrong values. Costs one scan of the secret's events.
fn folded_row(store: &dyn Store, actor: &str, name: &str, row: &SecretMeta) -> Result<SecretMeta> {
    let named_so = name.starts_with(ID_REF_PREFIX) || row.name == name;
    let visible = row.scope == Scope::Workspace || row.owner == actor;
    match fold_secret(store, row.id, u64::MAX)? {
        Some(folded) if folded == *row && named_so && visible => Ok(folded),
        _ => Err(super::verify::derived_mismatch_unverified(format!(
            "the catalog row found for {name:?} (secret {})",
            row.id
        ))),
    }
}

/// Resolve a name for `actor`: the actor's private secret wins over a workspace one.
pub(super) fn resolve(store: &dyn Store, actor: &str, name: &str, want: Want) -> Result<SecretMeta> {
    let mut found = named(store, actor, name)?;
    let rank = |m: &SecretMeta| {
        let status = match m.status {
            Status::Live => 0,
            Status::Deleted => 1,
            Status::Purged => 2,
        };
        (
            status,
            m.scope != Scope::Private,
            std::cmp::Reverse(m.updated_seq),
        )
    };
    found.sort_by_key(rank);
    let accepts = |m: &&SecretMeta| match want {
        Want::Live => m.status == Status::Live,
        Want::Deleted => m.status == Status::Deleted,
        Want::Any => true,
    };
    if let Some(m) = found.iter().find(accepts) {
        return folded_row(store, actor, name, m);
    }
    let hint = match (want, found.first().map(|m| m.status)) {
        (Want::Live, Some(Status::Deleted)) => {
            format!("; it was deleted, and `sledger secret undelete {name}` brings it back")
        }
        (_, Some(Status::Purged)) => "; it was purged and cannot come back".to_owned(),
        (Want::Deleted, Some(Status::Live)) => {
            return Err(Error::NotDeleted {
                name: name.to_owned(),
            });
        }
        _ => return Err(Error::no_such_secret(name)),
    };
    Err(Error::SecretNotFound {
        name: name.to_owned(),
        hint,
    })
}

/// The attached sinks, folded from the log's sink events (found through the type index: a
/// handful of events). The `sinks` table is not trusted for this: it is outside the chain, and
/// a URL edited there would send values wherever it names.
pub(super) fn sinks_from_log(store: &dyn Store) -> Result<BTreeMap<String, SinkConfig>> {
    let mut sinks = BTreeMap::new();
    store.scan_types(
        &["sink.added", "sink.role_changed", "sink.removed"],
        0,
        &mut |e| {
            catalog::apply_sink_event(&mut sinks, &e, e.decode()?)?;
            Ok(true)
        },
    )?;
    Ok(sinks)
}

/// A secret's data key. A key that is gone is a purge only if the log records one: the
/// `secret_keys` table is outside the chain, and a key deleted there by hand must not pass
/// for a purge (whose next replay would delete the secret from every backend).
pub(super) fn load_dek(store: &dyn Store, master: &MasterKey, meta: &SecretMeta) -> Result<DataKey> {
    let Some(wrapped) = store.wrapped_key(meta.id)? else {
        let mut purged = false;
        store.scan_secret(meta.id, u64::MAX, &mut |e| {
            purged |= e.event_type == "secret.purged";
            Ok(!purged)
        })?;
        return Err(match purged {
            true => Error::Purged {
                name: meta.name.clone(),
            },
            false => Error::Corrupt(format!(
                "the data key of secret {:?} is missing, though the log records no purge of it: the \
                 ledger file was edited outside sledger. Its values cannot be read, and nothing is \
                 deleted from any sink; restore the ledger from a backup (`sledger ledger backup`)",
                meta.name
            )),
        });
    };
    master.unwrap_data_key(&wrapped, meta.id)
}

/// Decrypt the values carried by the event at `seq` for `meta`'s secret.
pub(crate) fn open_values_at(
    store: &dyn Store,
    keys: ValueKeys<'_>,
    meta: &SecretMeta,
    seq: u64,
) -> Result<(SecretValues, Millis)> {
    let dek = keys.epochs.key_for(&load_dek(store, keys.master, meta)?, seq);
    let stored = store
        .event(seq)?
        .ok_or_else(|| Error::Corrupt(format!("event {seq} is missing")))?;
    let event = stored.decode()?;
    let sealed = event
        .values()
        .ok_or_else(|| Error::Corrupt(format!("event {seq} carries no values")))?;
    Ok((dek.open(&sealed.ciphertext, meta.id, seq)?, stored.recorded_at))
}

/// A snapshot costs O(secrets) bytes, so snapshots are at least as many events apart as there
/// are secrets: with 100 000 secrets, one every 10 000 events would store far more snapshot
/// than log. Replaying from the nearest snapshot then costs at most max(interval, secrets) events.
pub(super) fn snapshot_due(store: &dyn Store, every: u64, head: u64) -> Result<bool> {
    let last = store.snapshot_seqs()?.last().copied().unwrap_or(0);
    Ok(head - last >= every.max(store.secret_count()?))
}

/// Bookkeeping shared by every append transaction: catalog position and snapshots (MAC'd
/// under `mac`).
pub(super) fn finish_append(
    store: &dyn Store,
    mac: &crate::crypto::EventMac,
    settings: LedgerSettings,
    first_seq: u64,
    head: Head,
) -> Result<()> {
    if head.seq == first_seq {
        return Ok(());
    }
    store.set_setting_int("catalog_seq", head.seq as i64)?;
    let every = settings.snapshot_interval;
    if first_seq / every != head.seq / every && snapshot_due(store, every, head.seq)? {
        let encoding = derived_snapshot(store, mac, head.seq)?;
        store.put_snapshot(head.seq, &mac::seal_snapshot(mac, head.seq, encoding))?;
        tracing::debug!(seq = head.seq, "catalog snapshot stored");
    }
    Ok(())
}

/// The encoding of the catalog at `head`, derived from the log alone and never from the
/// catalog table, which carries no MAC (an edited row sealed into a snapshot would reach a
/// replay): the previous snapshot this key vouches for, of `head`'s epoch, with each secret
/// that has events since folded on from its state there (or, without one, the whole log
/// folded). Secrets are held encoded, one entry per secret changed, never the whole catalog
/// decoded.
fn derived_snapshot(store: &dyn Store, mac: &crate::crypto::EventMac, head: u64) -> Result<Vec<u8>> {
    let stored = store
        .snapshot_at_or_before(head)?
        .filter(|(at, _)| mac.same_epoch(*at, head));
    let verified = match &stored {
        Some((at, bytes)) => mac::verified_snapshot(mac, *at, bytes)?.map(|encoding| (*at, encoding)),
        None => None,
    };
    let (from, encoding) = verified.unwrap_or((0, &[][..]));
    let unchanged = match from {
        0 => Vec::new(),
        _ => catalog::snapshot_entries(encoding)?,
    };
    let mut changed: BTreeMap<SecretId, Box<[u8]>> = BTreeMap::new();
    store.scan(from + 1, head, &mut |e| {
        let Some(id) = e.secret_id else {
            return Ok(true);
        };
        let state = match changed.get(&id) {
            Some(bytes) => Some(SecretMeta::from_bytes(bytes)?),
            None => match unchanged.binary_search_by_key(&id, |(id, _)| *id) {
                Ok(i) => Some(SecretMeta::from_bytes(&encoding[unchanged[i].1.clone()])?),
                Err(_) => None,
            },
        };
        if let Some(next) = catalog::apply(state, &e, e.decode()?)? {
            changed.insert(id, next.to_bytes().into_boxed_slice());
        }
        Ok(true)
    })?;
    let unchanged: Vec<_> = unchanged
        .into_iter()
        .filter(|(id, _)| !changed.contains_key(id))
        .collect();
    let count = unchanged.len() + changed.len();
    let mut unchanged = unchanged.into_iter().peekable();
    let mut snapshot = SnapshotEncoder::new(head, count);
    let mut changed = changed.into_iter().peekable();
    loop {
        let next_changed = match (unchanged.peek(), changed.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((a, _)), Some((b, _))) => b < a,
        };
        if next_changed {
            let (id, meta) = changed.next().expect("peeked");
            snapshot.push(&id, &meta);
        } else {
            let (id, range) = unchanged.next().expect("peeked");
            snapshot.push(&id, &encoding[range]);
        }
    }
    Ok(snapshot.finish(&sinks_from_log(store)?))
}
