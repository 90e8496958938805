//! The rows the ledger keeps beside its log, in SQLite: settings, catalog rows, data keys, the
//! sink registry, snapshots, and the bookkeeping every append does. (Planning, verify and key
//! rotation still issue a few statements of their own: the storage seam is the next step.)

use super::*;

/// Refuse to write with a master key another process has since rotated away: data keys
/// wrapped under it would be unreadable with the ledger's real key.
pub(super) fn ensure_current_key(tx: &Connection, keys: &Keys) -> Result<()> {
    if meta_get_blob(tx, "key_check")?.as_slice() != keys.master.key_check().as_slice() {
        return Err(Error::KeyRotated);
    }
    Ok(())
}

/// After destroying key material (purge, rotation), move WAL frames into the database, whose
/// freed pages `secure_delete` zeroes, so old wrapped keys do not linger on disk. Best effort:
/// a concurrent reader can keep frames alive until it finishes.
pub(super) fn scrub_freed_pages(conn: &Connection) {
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::debug!(error = %e, "checkpoint after key destruction did not complete");
    }
}

pub(super) fn meta_get_i64(conn: &Connection, key: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT value FROM ledger_meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

pub(super) fn meta_get_blob(conn: &Connection, key: &str) -> Result<Vec<u8>> {
    conn.prepare_cached("SELECT CAST(value AS BLOB) FROM ledger_meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::Corrupt(format!("ledger_meta lacks {key}")))
}

pub(super) fn meta_set(conn: &Connection, key: &str, value: impl rusqlite::ToSql) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO ledger_meta (key, value) VALUES (?1, ?2)")?
        .execute(params![key, value])?;
    Ok(())
}

pub(super) fn decode_meta(bytes: &[u8]) -> Result<SecretMeta> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(m, _)| m)
        .map_err(|e| Error::Corrupt(format!("catalog row does not decode: {e}")))
}

pub(super) fn store_meta(conn: &Connection, m: &SecretMeta) -> Result<()> {
    let blob =
        bincode::serde::encode_to_vec(m, bincode::config::standard()).expect("metadata always encodes");
    conn.prepare_cached(
        "INSERT OR REPLACE INTO catalog (secret_id, namespace, name, status, updated_seq, meta) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![m.id.as_bytes().as_slice(), m.namespace(), m.name, m.status.as_str(), m.updated_seq as i64, blob])?;
    Ok(())
}

pub(crate) fn load_meta(conn: &Connection, id: SecretId) -> Result<Option<SecretMeta>> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT meta FROM catalog WHERE secret_id = ?1")?
        .query_row([id.as_bytes().as_slice()], |r| r.get(0))
        .optional()?;
    blob.map(|b| decode_meta(&b)).transpose()
}

/// Secrets named `name` (or the one `id:<uuid>` refers to) visible to `actor`: the workspace
/// and the actor's private scope.
pub(super) fn named(conn: &Connection, actor: &str, name: &str) -> Result<Vec<SecretMeta>> {
    if let Some(id) = name.strip_prefix(ID_REF_PREFIX) {
        let id = SecretId::parse_str(id).map_err(|_| {
            Error::InvalidInput(format!(
                "{name:?} is not id:<uuid> (see `sledger secret history`)"
            ))
        })?;
        let visible = |m: &SecretMeta| m.scope == Scope::Workspace || m.owner == actor;
        return Ok(load_meta(conn, id)?.filter(visible).into_iter().collect());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT meta FROM catalog WHERE name = ?1 AND namespace IN ('workspace', ?2) ORDER BY updated_seq DESC",
    )?;
    let rows = stmt.query_map(params![name, namespace(Scope::Private, actor)], |r| {
        r.get::<_, Vec<u8>>(0)
    })?;
    rows.map(|b| decode_meta(&b?)).collect()
}

/// Which lifecycle states a lookup accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Live,
    Deleted,
    /// Live first, then the most recently deleted, then purged.
    Any,
}

/// Resolve a name for `actor`: the actor's private secret wins over a workspace one.
pub(super) fn resolve(conn: &Connection, actor: &str, name: &str, want: Want) -> Result<SecretMeta> {
    let mut found = named(conn, actor, name)?;
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
        return Ok(m.clone());
    }
    let hint = match (want, found.first().map(|m| m.status)) {
        (Want::Live, Some(Status::Deleted)) => {
            format!("; it was deleted, and `sledger secret undelete {name}` brings it back")
        }
        (_, Some(Status::Purged)) => "; it was purged and cannot come back".to_owned(),
        (Want::Deleted, Some(Status::Live)) => "; it is not deleted".to_owned(),
        _ => "; `sledger secret list` shows the secrets there are".to_owned(),
    };
    Err(Error::SecretNotFound {
        name: name.to_owned(),
        hint,
    })
}

pub(super) fn ensure_name_free(conn: &Connection, ns: &str, scope: Scope, name: &str) -> Result<()> {
    let taken: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM catalog WHERE namespace = ?1 AND name = ?2 AND status = 'live'")?
        .query_row(params![ns, name], |r| r.get(0))
        .optional()?;
    match taken {
        Some(_) => Err(Error::AlreadyExists {
            name: name.to_owned(),
            scope: scope.to_string(),
        }),
        None => Ok(()),
    }
}

pub(super) fn load_dek(conn: &Connection, master: &MasterKey, meta: &SecretMeta) -> Result<DataKey> {
    let wrapped: Option<Vec<u8>> = conn
        .prepare_cached("SELECT wrapped FROM secret_keys WHERE secret_id = ?1")?
        .query_row([meta.id.as_bytes().as_slice()], |r| r.get(0))
        .optional()?;
    let wrapped = wrapped.ok_or_else(|| Error::Purged {
        name: meta.name.clone(),
    })?;
    master.unwrap_data_key(&wrapped, meta.id)
}

/// Decrypt the values carried by the event at `seq` for `meta`'s secret.
pub(crate) fn open_values_at(
    conn: &Connection,
    master: &MasterKey,
    meta: &SecretMeta,
    seq: u64,
) -> Result<(SecretValues, Millis)> {
    let dek = load_dek(conn, master, meta)?;
    let stored = sqlite::get(conn, seq)?.ok_or_else(|| Error::Corrupt(format!("event {seq} is missing")))?;
    let event = stored.decode()?;
    let sealed = event
        .values()
        .ok_or_else(|| Error::Corrupt(format!("event {seq} carries no values")))?;
    Ok((dek.open(&sealed.ciphertext, meta.id, seq)?, stored.recorded_at))
}

/// The attached sinks, as the derived `sinks` table holds them.
pub(crate) fn load_sinks(conn: &Connection) -> Result<BTreeMap<String, SinkConfig>> {
    let mut stmt = conn.prepare_cached("SELECT name, url, role, added_seq FROM sinks ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut sinks = BTreeMap::new();
    for row in rows {
        let (name, url, role, added_seq) = row?;
        let role = role.parse().map_err(Error::Corrupt)?;
        sinks.insert(
            name.clone(),
            SinkConfig {
                name,
                url,
                role,
                added_seq: added_seq as u64,
            },
        );
    }
    Ok(sinks)
}

pub(super) fn store_sinks(conn: &Connection, sinks: &BTreeMap<String, SinkConfig>) -> Result<()> {
    conn.execute("DELETE FROM sinks", [])?;
    for s in sinks.values() {
        conn.prepare_cached("INSERT INTO sinks (name, url, role, added_seq) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![s.name, s.url, s.role.as_str(), s.added_seq as i64])?;
    }
    Ok(())
}

/// A snapshot costs O(secrets) bytes, so snapshots are at least as many events apart as there
/// are secrets: with 100 000 secrets, one every 10 000 events would store far more snapshot
/// than log. Replaying from the nearest snapshot then costs at most max(interval, secrets) events.
pub(super) fn snapshot_due(tx: &Connection, every: u64, head: u64) -> Result<bool> {
    let (last, secrets): (i64, i64) = tx.query_row(
        "SELECT (SELECT coalesce(max(seq), 0) FROM snapshots), (SELECT count(*) FROM catalog)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(head - last as u64 >= every.max(secrets as u64))
}

/// Bookkeeping shared by every append transaction: catalog position and snapshots.
pub(super) fn finish_append(
    tx: &Connection,
    settings: LedgerSettings,
    first_seq: u64,
    head: Head,
) -> Result<()> {
    if head.seq == first_seq {
        return Ok(());
    }
    meta_set(tx, "catalog_seq", head.seq as i64)?;
    let every = settings.snapshot_interval;
    if first_seq / every != head.seq / every && snapshot_due(tx, every, head.seq)? {
        let mut stmt = tx.prepare_cached("SELECT meta FROM catalog")?;
        let secrets = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .map(|b| decode_meta(&b?).map(|m| (m.id, m)))
            .collect::<Result<_>>()?;
        let snapshot = Catalog {
            sinks: load_sinks(tx)?,
            seq: head.seq,
            secrets,
        };
        tx.prepare_cached("INSERT INTO snapshots (seq, state) VALUES (?1, ?2)")?
            .execute(params![head.seq as i64, snapshot.to_snapshot()])?;
        tracing::debug!(seq = head.seq, "catalog snapshot stored");
    }
    Ok(())
}
