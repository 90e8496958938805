//! Copying a whole ledger between stores (`sledger ledger copy`, `ledger backup` of a
//! PostgreSQL ledger): the log with its chain checked as it is read, then everything outside
//! the chain (settings, wrapped keys, the access log, sink progress) from one consistent read.
//!
//! The copy resumes: a target that holds a prefix of the same ledger's log is continued from
//! its head. Derived state (catalog, snapshots) is not copied: the target folds it from the
//! log when it is first opened.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Location, Read, Setting, Store, Write};
use crate::error::{Error, Result};
use crate::log::{ChainCheck, Head};
use crate::SecretId;

/// Events appended per target transaction while the bulk of the log is copied.
const BATCH: u64 = 5_000;

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// The target's head before the copy (non-zero when it resumed).
    pub resumed_from: u64,
    /// The head both stores now share.
    pub head: u64,
    /// The head's hash, hex.
    pub head_hash: String,
    pub events_copied: u64,
}

/// Copy the ledger in `from` into `to` (empty, or holding an earlier copy of the same ledger).
/// `progress(copied, total)` is called after each batch.
pub fn copy(from: &dyn Store, to: &dyn Store, progress: &mut dyn FnMut(u64, u64)) -> Result<CopyReport> {
    if from.setting_int(COPY_UNFINISHED)? == Some(1) {
        return Err(Error::Corrupt(
            "the source is a copy that `sledger ledger copy` has not finished: it holds only part of the log; \
             finish that copy first"
                .into(),
        ));
    }
    let resumed = resume_point(from, to)?;
    if resumed == Head::EMPTY {
        // The ledger's identity first, so a copy cut short can be resumed; marked unfinished
        // until the last step, so a copy cut short is never taken for the ledger.
        let tx = Write::begin(to)?;
        copy_settings(from, &*tx)?;
        tx.set_setting_int(COPY_UNFINISHED, 1)?;
        tx.commit()?;
    }
    let mut chain = ChainCheck::after(resumed);
    // The bulk, a batch per transaction, while writers may go on appending to `from`.
    let mut done = resumed.seq;
    let target = from.head()?.seq;
    while done < target {
        let through = (done + BATCH).min(target);
        let tx = Write::begin(to)?;
        append_range(from, &*tx, &mut chain, done, through)?;
        tx.commit()?;
        done = through;
        progress(done - resumed.seq, target - resumed.seq);
    }
    // The rest, and everything outside the chain, as of one instant of `from`.
    let read = Read::begin(from)?;
    let tx = Write::begin(to)?;
    let head = read.head()?;
    append_range(&*read, &*tx, &mut chain, done, head.seq)?;
    copy_outside_chain(&*read, &*tx)?;
    tx.set_setting_int(COPY_UNFINISHED, 0)?;
    tx.commit()?;
    let copied = chain.finish(head.seq)?;
    if to.head()? != copied {
        return Err(Error::Corrupt(format!(
            "the copy's head differs from the source's at seq {}",
            head.seq
        )));
    }
    progress(head.seq - resumed.seq, head.seq - resumed.seq);
    Ok(CopyReport {
        resumed_from: resumed.seq,
        head: copied.seq,
        head_hash: hex::encode(copied.hash),
        events_copied: copied.seq - resumed.seq,
    })
}

/// `sledger ledger copy`: copy the ledger at `from` into `to` (created if there is none,
/// continued if it holds an earlier copy of the same ledger), then check the copy's chain from
/// seq 1 as a new reader of it would.
pub fn copy_ledger(from: &Location, to: &Location, progress: &mut dyn FnMut(u64, u64)) -> Result<CopyReport> {
    if from == to {
        return Err(Error::invalid("--from and --to name the same ledger"));
    }
    let source = from.open()?;
    let target = match to.open() {
        Ok(target) => target,
        Err(Error::LedgerNotFound { .. }) => to.create()?,
        Err(e) => return Err(e),
    };
    let report = copy(&*source, &*target, progress)?;
    let checked = target.verified_scan(&mut |_, _| Ok(()))?;
    if checked.seq != report.head || hex::encode(checked.hash) != report.head_hash {
        return Err(Error::Corrupt(format!(
            "the copy at {to} does not verify to the source's head {}",
            report.head
        )));
    }
    Ok(report)
}

/// A consistent copy of `from`, as it is at one instant, into a new SQLite ledger file.
pub fn backup(from: &dyn Store, path: &Path) -> Result<()> {
    let to = super::sqlite::SqliteStore::create(path)?;
    let copied = copy(from, &to, &mut |_, _| {});
    if let Err(e) = copied {
        drop(to);
        super::sqlite::SqliteStore::remove_files(path);
        return Err(e);
    }
    Ok(())
}

/// Where the copy starts: the target's head, if it is a prefix of the source's log.
fn resume_point(from: &dyn Store, to: &dyn Store) -> Result<Head> {
    let there = to.head()?;
    let ledger_id = |s: &dyn Store| s.setting("ledger_id");
    let source_id = ledger_id(from)?.ok_or_else(|| Error::Corrupt("the source ledger has no id".into()))?;
    match ledger_id(to)? {
        None if there == Head::EMPTY => return Ok(Head::EMPTY),
        Some(id) if id == source_id => {}
        _ => {
            return Err(Error::invalid(
                "the target holds another ledger; copy into an empty one (a new file, or a database without a sledger schema)",
            ))
        }
    }
    match from.event(there.seq)? {
        Some(e) if e.hash == there.hash => Ok(there),
        None if there == Head::EMPTY => Ok(there),
        _ => Err(Error::invalid(format!(
            "the target's log differs from the source's at seq {} (or goes beyond it); copy into an empty one",
            there.seq
        ))),
    }
}

/// Append `from`'s events `after+1 ..= through` to `to` (inside its write transaction),
/// checking the chain as they pass.
fn append_range(
    from: &dyn Store,
    to: &dyn Store,
    chain: &mut ChainCheck,
    after: u64,
    through: u64,
) -> Result<()> {
    if after >= through {
        return Ok(());
    }
    let mut events = Vec::with_capacity((through - after) as usize);
    from.scan(after + 1, through, &mut |e| {
        chain.check(&e)?;
        events.push(e);
        Ok(true)
    })?;
    events.iter().try_for_each(|e| to.append(e))
}

/// Set while a copy is under way: a ledger opened with it set is refused, since it holds only
/// part of the log.
pub(crate) const COPY_UNFINISHED: &str = "copy_unfinished";

fn copy_settings(from: &dyn Store, to: &dyn Store) -> Result<()> {
    for (key, value) in from
        .settings()?
        .into_iter()
        .filter(|(key, _)| key != COPY_UNFINISHED)
    {
        match value {
            Setting::Bytes(bytes) => to.set_setting(&key, &bytes)?,
            Setting::Int(number) => to.set_setting_int(&key, number)?,
        }
    }
    // The target folds its catalog from the log on first open.
    to.set_setting_int("catalog_seq", 0)
}

fn copy_outside_chain(from: &dyn Store, to: &dyn Store) -> Result<()> {
    copy_settings(from, to)?;

    let mut keys: BTreeMap<SecretId, Vec<u8>> = BTreeMap::new();
    from.scan_wrapped_keys(&mut |id, wrapped| {
        keys.insert(id, wrapped);
        Ok(true)
    })?;
    // Keys the target holds already (as the source does) stay; others go (purged or
    // re-wrapped since the last copy); the rest are added.
    let mut stale = Vec::new();
    to.scan_wrapped_keys(&mut |id, wrapped| {
        if keys.get(&id) == Some(&wrapped) {
            keys.remove(&id);
        } else {
            stale.push(id);
        }
        Ok(true)
    })?;
    for id in stale {
        to.delete_wrapped_key(id)?;
    }
    let missing: Vec<(SecretId, Vec<u8>)> = keys.into_iter().collect();
    for chunk in missing.chunks(10_000) {
        to.put_wrapped_keys(chunk)?;
    }

    let (access_there, _) = to.access_head()?;
    let mut entries = Vec::new();
    from.scan_access(access_there, &mut |entry| {
        entries.push(entry);
        Ok(true)
    })?;
    to.append_access(&entries)?;

    let sinks = from.sinks()?;
    to.put_sinks(&sinks)?;
    for sink in sinks.values() {
        to.forget_sink_progress(&sink.name)?;
        let progress = from.sink_progress(&sink.name)?;
        if let Some(mac) = &progress.checkpoint_mac {
            let at = progress.last_applied_at.unwrap_or_default();
            let by = progress.projected_by.as_deref().unwrap_or_default();
            to.save_checkpoint(&sink.name, sink.added_seq, progress.checkpoint, mac, at, by)?;
        }
        for parked in from.parked(&sink.name)? {
            to.park(&sink.name, &parked)?;
        }
    }
    Ok(())
}
