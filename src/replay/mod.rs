//! Replays (ARCHITECTURE.md): fold the log up to a target into the state a sink should hold,
//! compare it with what the sink holds, and apply the difference.
//!
//! `replay --into`, `backup`, `diff`/`reconcile`, `migrate` and the repair form of `restore`
//! are this one loop against different sinks and targets. It is idempotent and resumable by
//! construction: a run that stops half-way leaves a smaller difference for the next run.
//! Memory is O(secrets): the target state comes from the nearest snapshot plus the events
//! after it, one entry per secret.

use std::collections::HashMap;

use serde::Serialize;

use crate::catalog::Status;
use crate::error::{Error, Result};
use crate::event::Millis;
use crate::ledger::Ledger;
use crate::project::{apply_all, Op, ProjectOptions};
use crate::sink::{DeleteMode, Sink};
use crate::SecretId;

pub mod orchestrate;
pub mod restore;

/// The point of the log a replay aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Head,
    Seq(u64),
    /// The last event recorded at or before this time (unix ms).
    Time(Millis),
}

impl Ledger {
    /// The seq a target names; an error if it lies beyond the log.
    pub fn target_seq(&self, target: Target) -> Result<u64> {
        let head = self.head()?.seq;
        match target {
            Target::Head => Ok(head),
            Target::Seq(seq) if seq <= head => Ok(seq),
            Target::Seq(seq) => Err(Error::InvalidInput(format!(
                "--seq {seq} is beyond the end of the log (the last event is {head})"
            ))),
            Target::Time(at) => Ok(self.store().seq_at_time(at)?),
        }
    }

    /// Every secret as a sink should hold it after event `seq`: a put of its values, or its
    /// absence (deleted, purged, or not created yet).
    pub fn desired_at(&self, seq: u64) -> Result<Desired> {
        let catalog = self.catalog_at(seq)?;
        let mut objects = HashMap::with_capacity(catalog.secrets.len());
        let mut purged_since = Vec::new();
        for meta in catalog.secrets.into_values() {
            let (id, live, name) = (meta.id, meta.status == Status::Live, meta.name.clone());
            let op = self.op_for(meta)?;
            if live
                && matches!(
                    op,
                    Op::Delete {
                        how: DeleteMode::Purge,
                        ..
                    }
                )
            {
                purged_since.push(name);
            }
            objects.insert(id, op);
        }
        purged_since.sort();
        Ok(Desired {
            seq,
            head: self.head()?.seq,
            objects,
            purged_since,
        })
    }
}

/// The state a sink should hold at some seq.
#[derive(Debug)]
pub struct Desired {
    pub seq: u64,
    /// The ledger's head when the target was folded: a sink claiming a seq beyond it is
    /// [`DiffKind::Ahead`].
    pub head: u64,
    pub objects: HashMap<SecretId, Op>,
    /// Secrets live at the target but purged since: their values are gone, so the target
    /// cannot hold them (a replay says so).
    pub purged_since: Vec<String>,
}

/// How one object differs from the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// The secret is live at the target and the sink does not hold it.
    Missing,
    /// The sink holds an older state.
    Stale,
    /// The sink holds the right seq with other content, or an object whose value or metadata
    /// sledger never wrote: changed behind the ledger's back.
    Drifted,
    /// The sink holds an object the target state does not have (deleted, purged, not yet
    /// created, or unknown to this ledger).
    Extra,
    /// The sink holds a state newer than the target; replays never roll a sink back in place
    /// (that is what `restore` is for), so this is reported, not fixed.
    Newer,
    /// The sink claims a seq beyond the ledger's head: it was written behind sledger's back,
    /// or the ledger was put back from an older copy. sledger cannot tell which: reads do not
    /// serve it, and only `reconcile --force-ledger` overwrites it.
    Ahead,
}

impl DiffKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::Missing => "missing",
            DiffKind::Stale => "stale",
            DiffKind::Drifted => "drifted",
            DiffKind::Extra => "extra",
            DiffKind::Newer => "newer",
            DiffKind::Ahead => "ahead",
        }
    }
}

/// One object that differs.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub id: SecretId,
    /// The secret's name at the target, if it exists there.
    pub name: Option<String>,
    pub kind: DiffKind,
    pub sink_seq: Option<u64>,
    pub target_seq: Option<u64>,
}

impl Difference {
    /// The difference as `diff --format json` and the API show it.
    pub fn to_json(&self, sink: &str) -> serde_json::Value {
        let mut doc = serde_json::to_value(self).expect("differences serialise");
        doc["sink"] = serde_json::json!(sink);
        doc
    }
}

/// What applying a difference did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub written: u64,
    pub deleted: u64,
    /// Objects ahead of the ledger that were erased before the ledger's state was written.
    pub erased: u64,
    /// Objects left as they are (newer than the target).
    pub skipped: u64,
    /// Writes the sink accepted but did not take: it keeps a tombstone newer than the target
    /// (the secret was deleted later), so the object stays absent.
    pub refused: u64,
}

/// Compare `sink` with `desired`. Objects whose seq matches are read back and compared, so a
/// change made behind the ledger's back shows as drift. `progress(done, total)` follows that.
pub async fn diff(
    desired: &Desired,
    sink: &dyn Sink,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<Difference>> {
    let held: HashMap<SecretId, u64> = sink.list().await?.into_iter().map(|e| (e.id, e.seq)).collect();
    let mut out = Vec::new();
    let mut to_compare = Vec::new();
    for (&id, op) in &desired.objects {
        let sink_seq = held.get(&id).copied();
        let (name, want_seq, present) = match op {
            Op::Put(r) => (Some(r.name.clone()), r.seq, true),
            Op::Delete { seq, .. } => (None, *seq, false),
        };
        let purge = matches!(
            op,
            Op::Delete {
                how: DeleteMode::Purge,
                ..
            }
        );
        let kind = match (present, sink_seq) {
            (true, None) => Some(DiffKind::Missing),
            // Its metadata is unreadable (see `SinkEntry`).
            (_, Some(0)) => Some(DiffKind::Drifted),
            // Purged since the target: no state of it may stay anywhere, however new.
            (false, Some(_)) if purge => Some(DiffKind::Extra),
            (_, Some(s)) if s > desired.head => Some(DiffKind::Ahead),
            (_, Some(s)) if s > want_seq => Some(DiffKind::Newer),
            (true, Some(s)) if s < want_seq => Some(DiffKind::Stale),
            (true, Some(_)) => {
                to_compare.push(id);
                None
            }
            (false, Some(_)) => Some(DiffKind::Extra),
            (false, None) => None,
        };
        if let Some(kind) = kind {
            out.push(Difference {
                id,
                name,
                kind,
                sink_seq,
                target_seq: Some(want_seq),
            });
        }
    }
    for (&id, &seq) in &held {
        if !desired.objects.contains_key(&id) {
            out.push(Difference {
                id,
                name: None,
                // Created after the target (or planted with a seq from the future).
                kind: if seq == 0 {
                    DiffKind::Drifted
                } else if seq > desired.head {
                    DiffKind::Ahead
                } else if seq > desired.seq {
                    DiffKind::Newer
                } else {
                    DiffKind::Extra
                },
                sink_seq: Some(seq),
                target_seq: None,
            });
        }
    }
    use futures::StreamExt;
    let total = to_compare.len() as u64;
    let concurrency = sink.capabilities().max_concurrency.max(1);
    let mut reads = futures::stream::iter(to_compare)
        .map(|id| async move { (id, sink.get(id).await) })
        .buffer_unordered(concurrency);
    let mut done = 0;
    while let Some((id, held_record)) = reads.next().await {
        done += 1;
        progress(done, total);
        let Some(Op::Put(want)) = desired.objects.get(&id) else {
            continue;
        };
        let same = match held_record {
            Ok(held) => held.as_ref() == Some(want),
            // Unreadable (say, ciphertext edited in place): as drifted as a changed value.
            Err(e) if !e.is_temporary() => false,
            Err(e) => return Err(e),
        };
        if !same {
            out.push(Difference {
                id,
                name: Some(want.name.clone()),
                kind: DiffKind::Drifted,
                sink_seq: Some(want.seq),
                target_seq: Some(want.seq),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, a.id).cmp(&(&b.name, b.id)));
    Ok(out)
}

/// Make `sink` match `desired` where `differences` say it does not (objects newer than the
/// target are left alone and counted as skipped, and so are objects ahead of the ledger unless
/// `overwrite_ahead`: then they are erased, and the target's state written in their place).
/// Writes go with the sink's concurrency and the projector's retries; the first write that
/// still fails is returned as the error, after every other write was tried.
pub async fn apply(
    desired: &Desired,
    sink: &dyn Sink,
    differences: &[Difference],
    overwrite_ahead: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ApplyReport> {
    let mut report = ApplyReport::default();
    // Writes borrow the target's records; only removals of objects outside it are built here.
    let mut removals = Vec::new();
    let mut ops: Vec<&Op> = Vec::with_capacity(differences.len());
    for d in differences {
        if d.kind == DiffKind::Ahead {
            if !overwrite_ahead {
                report.skipped += 1;
                continue;
            }
            tracing::warn!(secret = %d.id, sink_seq = ?d.sink_seq, "erasing an object ahead of the ledger");
            sink.erase(d.id).await?;
            report.erased += 1;
            if let Some(op) = desired.objects.get(&d.id) {
                ops.push(op);
            }
            continue;
        }
        match (d.kind, desired.objects.get(&d.id)) {
            (DiffKind::Newer, _) => report.skipped += 1,
            (_, Some(op)) => ops.push(op),
            // Not in the target at all: remove it for good, at the seq it holds.
            (_, None) => removals.push(Op::Delete {
                id: d.id,
                seq: d.sink_seq.unwrap_or(0),
                how: DeleteMode::Purge,
            }),
        }
    }
    ops.extend(removals.iter());
    let total = ops.len() as u64;
    let mut first_error = None;
    for (i, chunk) in ops.chunks(1000).enumerate() {
        for (op, result) in apply_all(sink, chunk.iter().copied(), &ProjectOptions::default()).await {
            match (result, op) {
                (Ok(()), Op::Put(_)) => report.written += 1,
                (Ok(()), Op::Delete { .. }) => report.deleted += 1,
                (Err(e), _) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        progress((i * 1000 + chunk.len()) as u64, total);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // A put never overwrites a newer tombstone, and says Ok: check what landed.
    let held: HashMap<SecretId, u64> = sink.list().await?.into_iter().map(|e| (e.id, e.seq)).collect();
    report.refused = ops
        .iter()
        .filter(|op| matches!(op, Op::Put(r) if held.get(&r.id).is_none_or(|&s| s < r.seq)))
        .count() as u64;
    report.written -= report.refused;
    Ok(report)
}
