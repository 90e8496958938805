//! Projectors: bring a sink up to the ledger's head (ARCHITECTURE.md).
//!
//! Events after the sink's checkpoint are read in batches; each batch is compacted to the
//! final state of every secret it touches (so 1 000 updates of one secret cost one write),
//! applied with bounded concurrency, and the checkpoint moves past the batch only once every
//! write in it succeeded. Temporary errors are retried with jittered exponential backoff; a
//! permanent error for one secret parks that secret's event (visible in `sink status`, retried
//! by `sink retry`) instead of blocking the sink. Delivery is at-least-once: sinks are idempotent.

pub mod service;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::catalog::{self, SecretMeta, SinkConfig, Status};
use crate::error::{Error, Result};
use crate::event::{Millis, SinkRole};
use crate::ledger::{now_ms, open_values_at, Ledger, Outcome};
use crate::sink::layer::retry::within_deadline;
use crate::sink::{DeleteMode, Sink, SinkRecord};
use crate::SecretId;

/// How a projector runs.
#[derive(Debug, Clone)]
pub struct ProjectOptions {
    /// Events read per batch (the unit of compaction and of checkpointing).
    pub batch_events: u64,
    /// In-flight writes; `None` uses the sink's `max_concurrency`. (Retries of temporary
    /// errors are the sink's [`Retry`](crate::sink::layer::Retry) layer's.)
    pub concurrency: Option<usize>,
    /// Stop after this instant: between batches, while backing off, and (a backend that hangs)
    /// shortly after it even with writes in flight.
    pub deadline: Option<Instant>,
    /// Stop between batches once this is set (a signal handler's flag).
    pub stop: Option<Arc<AtomicBool>>,
    /// Leave the ledger's head in the sink after each batch ([`crate::witness`]). Off only to
    /// measure what the anchors cost.
    pub anchors: bool,
}

impl Default for ProjectOptions {
    fn default() -> Self {
        ProjectOptions {
            batch_events: 1000,
            concurrency: None,
            deadline: None,
            stop: None,
            anchors: true,
        }
    }
}

/// One write to a sink: the final state of one secret as of a batch's end.
#[derive(Debug, Clone)]
pub enum Op {
    Put(SinkRecord),
    Delete { id: SecretId, seq: u64, how: DeleteMode },
}

impl Op {
    /// The secret written, and the seq of the state written.
    pub fn target(&self) -> (SecretId, u64) {
        match self {
            Op::Put(r) => (r.id, r.seq),
            Op::Delete { id, seq, .. } => (*id, *seq),
        }
    }

    pub async fn apply(&self, sink: &dyn Sink) -> Result<()> {
        match self {
            Op::Put(record) => sink.put(record).await,
            Op::Delete { id, seq, how } => sink.delete(*id, *seq, *how).await,
        }
    }
}

/// What a projector run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProjectReport {
    /// Events the checkpoint moved past.
    pub events: u64,
    /// Writes sent to the sink (after compaction).
    pub writes: u64,
    /// Secrets newly parked.
    pub parked: u64,
    pub checkpoint: u64,
    pub head: u64,
}

/// A sink's projection state, for `sink status`.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub url: String,
    pub role: SinkRole,
    pub checkpoint: u64,
    pub head: u64,
    /// head − checkpoint (0 for standby sinks, which no projector writes).
    pub lag: u64,
    pub parked: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    pub last_applied_at: Option<Millis>,
    /// The instance (host:pid) that applied the last batch: with several servers on one
    /// ledger, the one projecting this sink.
    pub projected_by: Option<String>,
    /// Who the backend sees this sink as ([`statuses_with_identities`]); `None` where there is
    /// no such notion or it was not asked.
    pub identity: Option<String>,
}

pub use crate::store::Parked;

/// This process as `sink status` names a projector: host:pid.
pub fn instance() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut host = [0u8; 256];
        let named = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0;
        let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
        let host = if named {
            String::from_utf8_lossy(&host[..end]).into_owned()
        } else {
            "localhost".into()
        };
        format!("{host}:{}", std::process::id())
    })
}

impl Ledger {
    /// Every event ≤ the checkpoint has been applied to (or parked for) the sink. With the key,
    /// a checkpoint is believed only with the MAC stored beside it: one raised by hand (the
    /// table is outside the chain) would make the projector skip events, so without a valid
    /// MAC projection starts over from the beginning, which idempotent sink writes make safe.
    pub fn checkpoint(&self, sink: &str) -> Result<u64> {
        let progress = self.store().sink_progress(sink)?;
        if progress.checkpoint == 0 || !self.is_unlocked() {
            return Ok(progress.checkpoint);
        }
        let attached = self.sink_config(sink)?.added_seq;
        let expected = self.checkpoint_mac(sink, attached, progress.checkpoint)?;
        let believed = progress
            .checkpoint_mac
            .as_deref()
            .and_then(|m| <[u8; 32]>::try_from(m).ok())
            .is_some_and(|m| crate::crypto::EventMac::matches(&m, &expected));
        if believed {
            return Ok(progress.checkpoint);
        }
        tracing::warn!(
            sink,
            checkpoint = progress.checkpoint,
            "the sink's checkpoint has no valid MAC (edited outside sledger, or written before checkpoints had one): projecting it from the beginning"
        );
        // Forgotten, so the next checkpoint saved (with its MAC) is not held below the bad one.
        self.store().forget_sink_progress(sink)?;
        Ok(0)
    }

    /// Move a sink's checkpoint forward (never back: two projectors may race), if the sink is
    /// still the attachment made at `attached`. Returns whether it was.
    fn save_checkpoint(&self, sink: &str, attached: u64, seq: u64) -> Result<bool> {
        let mac = self.checkpoint_mac(sink, attached, seq)?;
        self.store()
            .save_checkpoint(sink, attached, seq, &mac, now_ms(), instance())
    }

    fn try_lock_sink_writes(&self, sink: &str) -> Result<bool> {
        self.store().try_lock_sink_writes(sink)
    }

    fn unlock_sink_writes(&self, sink: &str) {
        self.store().unlock_sink_writes(sink)
    }

    fn record_sink_error(&self, sink: &str, error: &str) -> Result<()> {
        self.store().record_sink_error(sink, error, now_ms())
    }

    fn park(&self, sink: &str, secret_id: SecretId, seq: u64, error: &str) -> Result<()> {
        let parked = Parked {
            secret_id,
            seq,
            error: error.to_owned(),
            parked_at: now_ms(),
        };
        self.store().park(sink, &parked)
    }

    /// Forget a parked secret once a write at `seq` or later has reached the sink.
    fn unpark(&self, sink: &str, id: SecretId, seq: u64) -> Result<()> {
        self.store().unpark(sink, id, seq)
    }

    /// The secrets a sink refused permanently.
    pub fn parked(&self, sink: &str) -> Result<Vec<Parked>> {
        self.store().parked(sink)
    }

    /// Projection state of every attached sink.
    pub fn sink_status(&self) -> Result<Vec<SinkStatus>> {
        let head = self.head()?.seq;
        let mut out = Vec::new();
        for config in self.sinks()?.into_values() {
            let progress = self.store().sink_progress(&config.name)?;
            let parked = self.store().parked(&config.name)?.len();
            let checkpoint = progress.checkpoint;
            out.push(SinkStatus {
                lag: if config.role.is_projected() {
                    head.saturating_sub(checkpoint)
                } else {
                    0
                },
                name: config.name,
                url: config.url,
                role: config.role,
                checkpoint,
                head,
                parked: parked as u64,
                last_error: progress.last_error,
                last_error_at: progress.last_error_at,
                last_applied_at: progress.last_applied_at,
                projected_by: progress.projected_by,
                identity: None,
            })
        }
        Ok(out)
    }

    /// The state of secret `id` just after event `seq`.
    fn meta_at(&self, id: SecretId, seq: u64) -> Result<Option<SecretMeta>> {
        if let Some(current) = self.store().secret(id)? {
            if current.updated_seq <= seq {
                return Ok(Some(current));
            }
        }
        // The secret changed after `seq`: fold its own events up to there.
        let mut state = None;
        self.store().scan_secret(id, seq, &mut |e| {
            state = catalog::apply(state.take(), &e, e.decode()?)?;
            Ok(true)
        })?;
        Ok(state)
    }

    /// The write that makes a sink hold secret `id` as it was after event `seq`.
    pub fn op_at(&self, id: SecretId, seq: u64) -> Result<Option<Op>> {
        self.meta_at(id, seq)?.map(|meta| self.op_for(meta)).transpose()
    }

    /// The write that makes a sink hold a secret in the state `meta` describes.
    pub fn op_for(&self, meta: SecretMeta) -> Result<Op> {
        let (id, seq) = (meta.id, meta.updated_seq);
        Ok(match meta.status {
            Status::Deleted => Op::Delete {
                id,
                seq,
                how: DeleteMode::Soft,
            },
            Status::Purged => Op::Delete {
                id,
                seq,
                how: DeleteMode::Purge,
            },
            Status::Live => match open_values_at(self.store(), self.value_keys()?, &meta, meta.value_seq) {
                Ok((values, _)) => Op::Put(SinkRecord {
                    id,
                    name: meta.name,
                    scope: meta.scope,
                    owner: meta.owner,
                    labels: meta.labels,
                    seq,
                    version: meta.version,
                    values,
                }),
                // Purged since: its values are gone, and so must the object be.
                Err(Error::Purged { .. }) => Op::Delete {
                    id,
                    seq,
                    how: DeleteMode::Purge,
                },
                Err(e) => return Err(e),
            },
        })
    }

    /// The compacted writes for events `after+1 ..= through`: one per secret, in the order of
    /// each secret's last event.
    pub fn compacted_ops(&self, after: u64, through: u64) -> Result<Vec<Op>> {
        // One read transaction for the batch: a consistent view, and one lock instead of three
        // per secret.
        let _snapshot = crate::store::Read::begin(self.store())?;
        self.check_macs(after + 1, through)?;
        let touched = self.store().secrets_touched(after, through)?;
        let mut ops = Vec::with_capacity(touched.len());
        for id in touched {
            ops.extend(self.op_at(id, through)?);
        }
        Ok(ops)
    }
}

/// How long past `ProjectOptions::deadline` writes in flight may take before they are abandoned.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

fn stopped(opts: &ProjectOptions) -> bool {
    past(opts.deadline) || opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
}

/// Apply writes with at most `concurrency` in flight; returns each op's result.
pub(crate) async fn apply_all<'a>(
    sink: &dyn Sink,
    ops: impl IntoIterator<Item = &'a Op>,
    opts: &ProjectOptions,
) -> Vec<(&'a Op, Result<()>)> {
    let concurrency = opts
        .concurrency
        .unwrap_or(sink.capabilities().max_concurrency)
        .max(1);
    futures::stream::iter(ops)
        .map(|op| async move { (op, op.apply(sink).await) })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Bring sink `name` (already opened as `sink`) up to the ledger's head as of the call, batch by batch.
///
/// Returns when the sink is caught up, or with the sink's error when a batch could not be
/// applied (the checkpoint stays before that batch), or early at `opts.deadline` or `opts.stop`.
pub async fn project(
    ledger: &Ledger,
    name: &str,
    sink: &dyn Sink,
    opts: &ProjectOptions,
) -> Result<ProjectReport> {
    project_attachment(ledger, &ledger.sink_config(name)?, sink, opts).await
}

/// [`project`] into `sink`, opened for the attachment `config` describes: if the sink is
/// removed or re-added meanwhile, what this run applied does not become the new attachment's
/// checkpoint.
pub async fn project_attachment(
    ledger: &Ledger,
    config: &SinkConfig,
    sink: &dyn Sink,
    opts: &ProjectOptions,
) -> Result<ProjectReport> {
    let mut report = ProjectReport::default();
    let (name, attached) = (config.name.as_str(), config.added_seq);
    let mut parked: HashSet<SecretId> = ledger.parked(name)?.into_iter().map(|p| p.secret_id).collect();
    // One run projects what was written before it started: chasing the head instead would
    // never end while writers outpace a slow backend (a migration under load).
    let head = ledger.head()?.seq;
    if opts.anchors && ledger.checkpoint(name)? < head {
        if let Err(e) = crate::witness::refuse_to_overwrite(ledger, config, sink, opts.deadline).await {
            ledger.record_sink_error(name, &e.to_string())?;
            return Err(e);
        }
    }
    loop {
        let Some(_writing) = lock_sink_writes(ledger, name, opts).await? else {
            return Ok(report); // the deadline passed, or a stop, while another process wrote
        };
        // Made a standby meanwhile (`migrate --delete-secrets` empties the old primary next):
        // no projector writes it from now on.
        if ledger.sinks()?.get(name).is_some_and(|s| !s.role.is_projected()) {
            return Ok(report);
        }
        let checkpoint = ledger.checkpoint(name)?;
        report.checkpoint = checkpoint;
        report.head = head;
        if checkpoint >= head || stopped(opts) {
            return Ok(report);
        }
        let through = head.min(checkpoint + opts.batch_events.max(1));
        let ops = ledger.compacted_ops(checkpoint, through)?;
        tracing::debug!(
            sink = name,
            from = checkpoint,
            through,
            writes = ops.len(),
            "projecting a batch"
        );
        let results = match opts.deadline {
            None => apply_all(sink, &ops, opts).await,
            // Retries give up at the deadline by themselves (the retry layer sees it); the grace
            // cuts only a backend that hangs. Abandoned writes may still land: the checkpoint
            // stays before this batch.
            Some(deadline) => {
                let cutoff = tokio::time::Instant::from_std(deadline) + DEADLINE_GRACE;
                let applying = within_deadline(Some(deadline), apply_all(sink, &ops, opts));
                match tokio::time::timeout_at(cutoff, applying).await {
                    Ok(results) => results,
                    Err(_) => {
                        let e = Error::sink(
                            sink.kind(),
                            "it did not finish the writes before the deadline",
                            true,
                        );
                        ledger.record_sink_error(name, &e.to_string())?;
                        return Err(e);
                    }
                }
            }
        };
        // A backend that is down or broken as a whole may refuse every write "permanently"
        // (a full disk, a plug-in gone wrong): that is an outage to wait out, not secrets to park.
        let refused = results
            .iter()
            .any(|(_, r)| r.as_ref().is_err_and(|e| !e.is_temporary()));
        let mut failed = if refused { sink.health().await.err() } else { None };
        let outage = failed.is_some();
        for (op, result) in results {
            let (id, seq) = op.target();
            match result {
                Ok(()) => {
                    report.writes += 1;
                    if parked.remove(&id) {
                        ledger.unpark(name, id, seq)?;
                    }
                }
                Err(_) if outage => {}
                Err(e) if e.is_temporary() => failed = Some(e),
                Err(e) => {
                    tracing::warn!(sink = name, secret = %id, seq, error = %e, "parking a write the sink refused");
                    ledger.park(name, id, seq, &e.to_string())?;
                    parked.insert(id);
                    report.parked += 1;
                }
            }
        }
        if let Some(e) = failed {
            ledger.record_sink_error(name, &e.to_string())?;
            return Err(e);
        }
        if opts.anchors {
            // After the batch's records, so an anchor never claims more than the sink holds.
            // A sink that takes the records but not the anchor still gets its secrets: the
            // anchor is a witness, and a stale one only witnesses less.
            if let Err(e) = sink.put(&ledger.anchor_record(through)?).await {
                tracing::warn!(sink = name, error = %e, "the sink's anchor could not be written");
            }
        }
        if !ledger.save_checkpoint(name, attached, through)? {
            return Err(Error::sink(
                sink.kind(),
                format!(
                    "sink {name} was removed or re-added while this projector ran; its progress was dropped"
                ),
                false,
            ));
        }
        report.events += through - checkpoint;
        report.checkpoint = through;
    }
}

/// Sinks refuse writes older than what they hold, but a backend without a conditional write
/// of the seq (AWS, Azure, Vault's metadata) can still let an older write from another
/// process land in the same instant as a newer one. So one process at a time applies a
/// sink's batches: it holds the store's write lock for that sink (a file lock beside an SQLite
/// ledger, a session advisory lock in PostgreSQL), waited for until the deadline (`None` if it
/// passed, or a stop came, first). Replays into an attached sink hold it too while they write.
pub async fn lock_sink_writes<'a>(
    ledger: &'a Ledger,
    name: &str,
    opts: &ProjectOptions,
) -> Result<Option<SinkWriting<'a>>> {
    loop {
        if ledger.try_lock_sink_writes(name)? {
            return Ok(Some(SinkWriting {
                ledger,
                name: name.to_owned(),
            }));
        }
        if stopped(opts) || opts.deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The right to write one sink, released when dropped (see [`lock_sink_writes`]).
pub struct SinkWriting<'a> {
    ledger: &'a Ledger,
    name: String,
}

impl Drop for SinkWriting<'_> {
    fn drop(&mut self) {
        self.ledger.unlock_sink_writes(&self.name);
    }
}

/// The sinks a projector writes (every role but standby), or just `only`, which must be one.
pub fn projected_sinks(ledger: &Ledger, only: Option<&str>) -> Result<Vec<String>> {
    if let Some(only) = only {
        if !ledger.sink_config(only)?.role.is_projected() {
            return Err(Error::invalid(format!(
                "sink {only:?} is a standby: no projector writes it (use a replay)"
            )));
        }
    }
    Ok(ledger
        .sinks()?
        .into_values()
        .filter(|s| s.role.is_projected() && only.is_none_or(|o| o == s.name))
        .map(|s| s.name)
        .collect())
}

/// Open attached sink `name` and [`project`] into it. A sink that cannot even be opened (its
/// file gone, its plug-in missing) is recorded as the sink's last error, like a failed batch.
pub async fn project_named(ledger: &Ledger, name: &str, opts: &ProjectOptions) -> Result<ProjectReport> {
    let sink = match ledger.open_sink(name) {
        Ok((_, sink)) => sink,
        Err(e) => {
            ledger.record_sink_error(name, &e.to_string())?;
            return Err(e);
        }
    };
    project(ledger, name, &*sink, opts).await
}

/// One pass of every projected sink (or just `only`) up to the head, concurrently: each
/// sink's own result, so that one failing backend does not hide what the others did.
pub async fn project_all(
    ledger: &Ledger,
    only: Option<&str>,
    opts: &ProjectOptions,
) -> Result<Vec<(String, Result<ProjectReport>)>> {
    let runs = projected_sinks(ledger, only)?.into_iter().map(|name| async move {
        let result = project_named(ledger, &name, opts).await;
        (name, result)
    });
    Ok(futures::future::join_all(runs).await)
}

/// What [`retry_parked`] did: `sledger sink retry --format json` and `POST /v1/sinks/NAME/retry`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Retried {
    pub sink: String,
    /// Parked secrets the sink took this time.
    pub applied: u64,
    /// Parked secrets it refused again.
    pub still_parked: u64,
}

/// Re-apply the sink `name`'s parked secrets at their current state.
pub async fn retry_parked(ledger: &Ledger, name: &str) -> Result<Retried> {
    let (_, sink) = ledger.open_sink(name)?;
    let head = ledger.head()?.seq;
    let (mut applied, mut still_parked) = (0, 0);
    for parked in ledger.parked(name)? {
        let Some(op) = ledger.op_at(parked.secret_id, head)? else {
            ledger.unpark(name, parked.secret_id, u64::MAX)?;
            continue;
        };
        match op.apply(&*sink).await {
            Ok(()) => {
                ledger.unpark(name, parked.secret_id, op.target().1)?;
                applied += 1;
            }
            Err(e) if e.is_temporary() => return Err(e),
            Err(e) => {
                ledger.park(name, parked.secret_id, op.target().1, &e.to_string())?;
                still_parked += 1;
            }
        }
    }
    Ok(Retried {
        sink: name.to_owned(),
        applied,
        still_parked,
    })
}

/// Check that a sink's backend answers, and say who it sees this sink as.
pub async fn check_sink(ledger: &Ledger, name: &str) -> Result<Option<String>> {
    let (_, sink) = ledger.open_sink(name)?;
    sink.health().await?;
    sink.identity().await
}

/// Who each sink runs as, asked of every backend at once (a few seconds at most each): the
/// identity, or why it could not be told. Sinks with no such notion are left out.
pub async fn identities(ledger: &Ledger) -> Result<std::collections::BTreeMap<String, String>> {
    const LIMIT: Duration = Duration::from_secs(5);
    let names: Vec<String> = ledger.sinks()?.into_keys().collect();
    let asks = names.iter().map(|name| async move {
        let answer = match ledger.open_sink(name) {
            Ok((_, sink)) => match tokio::time::timeout(LIMIT, sink.identity()).await {
                Ok(Ok(identity)) => identity,
                Ok(Err(e)) => Some(format!("unknown ({})", e.without_sink_name())),
                Err(_) => Some(format!("unknown (no answer within {LIMIT:?})")),
            },
            Err(e) => Some(format!("unknown ({})", e.without_sink_name())),
        };
        answer.map(|identity| (name.clone(), identity))
    });
    Ok(futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect())
}

/// [`Ledger::sink_status`], with who each sink runs as (asked of the backends: needs the key).
pub async fn statuses_with_identities(ledger: &Ledger) -> Result<Vec<SinkStatus>> {
    let mut identities = identities(ledger).await?;
    let mut statuses = ledger.sink_status()?;
    for status in &mut statuses {
        status.identity = identities.remove(&status.name);
    }
    Ok(statuses)
}

/// The primary's name, if there is one.
pub fn primary(ledger: &Ledger) -> Result<Option<String>> {
    Ok(ledger
        .sinks()?
        .into_values()
        .find(|s| s.role == SinkRole::Primary)
        .map(|s| s.name))
}

/// A write's documents, as `--format json` and the API show them: one per secret it changed
/// or left unchanged (one per outcome if it touched no secret), each with the primary's state
/// after it.
pub fn write_docs(verb: &str, outcomes: &[Outcome], primary: Option<&PrimaryWait>) -> Vec<serde_json::Value> {
    let secrets = outcomes.iter().any(Outcome::is_about_a_secret);
    outcomes
        .iter()
        .filter(|o| !secrets || o.is_about_a_secret())
        .map(|o| {
            let mut doc = o.to_json(verb);
            if let Some(p) = primary {
                doc["primary"] = serde_json::json!(p);
            }
            doc
        })
        .collect()
}

/// Whether the primary applied a write in time.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PrimaryWait {
    pub name: String,
    /// Whether the primary has applied the write's own event.
    pub applied: bool,
    /// Events up to the write's own that the primary has not applied yet (never other
    /// writers' later events).
    pub lag: u64,
    /// Secrets the primary refused (it will not serve them until `sink retry` applies them).
    pub parked: u64,
    /// Why it did not catch up, if it did not.
    pub error: Option<String>,
    /// Written secrets the primary did not take although it applied the write: it keeps a
    /// record beyond the ledger's head. One line per secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<String>,
    /// Written secrets the primary, having applied the write, still answers with an older
    /// version of: something beside sledger holds the object, or the backend is eventually
    /// consistent and has not caught up yet. One line per secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale: Vec<String>,
}

/// What a sink that has applied a write answers for the written secrets
/// ([`shadowed_writes`]).
#[derive(Debug, Default)]
pub struct ReadBack {
    /// Records beyond the ledger's head: the write was not taken (an integrity error).
    pub shadowed: Vec<String>,
    /// Records older than the write (a note: an eventually consistent backend may catch up).
    pub stale: Vec<String>,
}

impl PrimaryWait {
    /// The error a write reports when the primary did not take it (see `shadowed`), after
    /// what it did is shown: it is in the ledger, but the primary keeps something else.
    pub fn shadowing(&self) -> Option<Error> {
        (!self.shadowed.is_empty()).then(|| Error::SinkAhead {
            reason: format!(
                "{}. It was written behind sledger's back, or this ledger was put back from an older \
                 copy. The write is recorded in the ledger and the other sinks, and reads skip the \
                 sink's copy; `sledger diff {}` shows what it holds, `sledger reconcile {} \
                 --force-ledger` overwrites it with the ledger's state",
                self.shadowed.join("; "),
                self.name,
                self.name
            ),
            sink: self.name.clone(),
        })
    }
}

/// [`shadowed_writes`] of the attached sink `name`, which has applied the write. A sink that
/// cannot be opened or read now judges nothing, and the second value says why: the write is
/// durable in the ledger whatever the sink does.
pub async fn shadowed_in(ledger: &Ledger, name: &str, written: &[Outcome]) -> (ReadBack, Option<String>) {
    let checked = match ledger.open_sink(name) {
        Ok((_, sink)) => shadowed_writes(ledger, name, &*sink, written).await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(read_back) => (read_back, None),
        Err(e) => (ReadBack::default(), Some(e.to_string())),
    }
}

/// The secrets among `written` (a write's outcomes) that `sink`, which has applied the write,
/// did not take: it keeps a record claiming a seq beyond the ledger's head, which shadows
/// every write until `reconcile --force-ledger`. One read per written secret; a record older
/// than the write, or a read that fails, is only `stale` (an outage, or a backend not caught
/// up, is not shadowing).
pub async fn shadowed_writes(
    ledger: &Ledger,
    sink_name: &str,
    sink: &dyn Sink,
    written: &[Outcome],
) -> Result<ReadBack> {
    let mut read_back = ReadBack::default();
    let mut held = Vec::new();
    // Written secrets the sink does not serve as written: stale unless refused (parked), which
    // has its own note.
    let mut behind = Vec::new();
    for outcome in written {
        if let Outcome::Appended { secret, seq, .. } = outcome {
            match sink.get(secret.id).await {
                Ok(Some(record)) => held.push((secret, *seq, record.seq)),
                // Deleted or purged since, by a later write.
                Ok(None) => {}
                // An outage, or an object altered behind sledger's back.
                Err(e) => behind.push((
                    secret,
                    format!("{:?} cannot be read back from it ({e})", secret.name),
                )),
            }
        }
    }
    // Read after the records: another writer's later event, projected meanwhile, is then
    // within the head.
    let head = ledger.head()?.seq;
    for (secret, written_seq, held_seq) in held {
        let name = &secret.name;
        if held_seq > head {
            read_back.shadowed.push(format!(
                "it keeps seq {held_seq} of {name:?}, beyond the ledger's head {head}"
            ));
        } else if held_seq < written_seq {
            behind.push((
                secret,
                format!("it answers seq {held_seq} of {name:?}, older than this write's seq {written_seq}"),
            ));
        }
    }
    // Only then the parked list: a write the sink took, the usual case, costs no read of it.
    if !behind.is_empty() {
        let parked: HashSet<SecretId> = ledger
            .parked(sink_name)?
            .into_iter()
            .map(|p| p.secret_id)
            .collect();
        read_back.stale = behind
            .into_iter()
            .filter(|(secret, _)| !parked.contains(&secret.id))
            .map(|(_, line)| line)
            .collect();
    }
    Ok(read_back)
}

/// After a write whose last event is `seq`: give the primary sink up to `wait` to apply it (a
/// zero wait only reports whether it has), then check that it took the `written` secrets
/// ([`shadowed_writes`]). The write is durable in the ledger whatever happens here. `None`
/// when there is no primary.
pub async fn wait_for_primary(
    ledger: &Ledger,
    wait: Duration,
    seq: u64,
    written: &[Outcome],
) -> Result<Option<PrimaryWait>> {
    let Some(name) = primary(ledger)? else {
        return Ok(None);
    };
    let mut error = None;
    if !wait.is_zero() && ledger.checkpoint(&name)? < seq {
        let opts = ProjectOptions {
            deadline: Some(Instant::now() + wait),
            ..Default::default()
        };
        error = project_named(ledger, &name, &opts)
            .await
            .err()
            .map(|e| e.to_string());
    }
    let checkpoint = ledger.checkpoint(&name)?;
    let parked = ledger.parked(&name)?.len() as u64;
    let (read_back, unread) = if checkpoint >= seq {
        shadowed_in(ledger, &name, written).await
    } else {
        (ReadBack::default(), None)
    };
    Ok(Some(PrimaryWait {
        applied: checkpoint >= seq,
        lag: seq.saturating_sub(checkpoint),
        error: if checkpoint >= seq { unread } else { error },
        parked,
        shadowed: read_back.shadowed,
        stale: read_back.stale,
        name,
    }))
}
