//! The replays as whole operations, callable from any front end: reconcile a sink (with the
//! guards that stop a replay from fighting a projector), `backup [--delete-secrets]`, and the
//! five resumable steps of `migrate`. Progress and results reach the caller through callbacks
//! and return values; nothing here prints.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::{apply, diff, ApplyReport, Desired, DiffKind, Difference};
use crate::error::{Error, Result};
use crate::event::SinkRole;
use crate::handle::ReadAppend;
use crate::ledger::{Command, Ledger, Outcome};
use crate::project::{self, lock_sink_writes, ProjectOptions};
use crate::sink::{Backend, Sink, SinkUrl, SqliteSink};
use crate::SecretId;

/// Which part of a replay is under way, for progress reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Listing the sink and reading back what it holds.
    Comparing,
    /// Applying the difference.
    Writing,
}

/// Progress callback: `(phase, done, total)`.
pub type Progress<'a> = &'a (dyn Fn(Phase, u64, u64) + Sync);

/// How [`reconcile`] treats the difference it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Report it; change nothing.
    DryRun,
    /// Apply what can be applied; objects newer than the target are left and reported.
    Apply,
    /// Like `Apply`, but change nothing if any object is newer than the target (a replay
    /// would otherwise leave the sink half rolled back).
    AllOrNothing,
    /// Like `Apply`, and objects claiming a seq beyond the ledger's head are erased and
    /// written again from the ledger (`reconcile --force-ledger`): the user has decided that
    /// the ledger, not the sink, is right.
    ForceLedger,
}

impl Mode {
    pub fn unless_dry_run(dry_run: bool, otherwise: Mode) -> Mode {
        if dry_run {
            Mode::DryRun
        } else {
            otherwise
        }
    }
}

/// What a resync reports as it goes, for the caller to show.
#[derive(Debug, Clone, Copy)]
pub enum Resync<'a> {
    /// The difference `sink` showed, before anything is written; `applying` says whether it
    /// is about to be applied (not on a dry run, nor when there is none).
    Found {
        sink: &'a str,
        differences: &'a [Difference],
        applying: bool,
    },
    /// What applying it did, bringing `sink` to the state of `seq`.
    Applied {
        sink: &'a str,
        seq: u64,
        report: &'a ApplyReport,
    },
}

impl Resync<'_> {
    /// The event as the API reports it (`event`: `found` or `applied`); the CLI prints the
    /// same documents whether a replay ran in its own process or on a server.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Resync::Found {
                sink,
                differences,
                applying,
            } => serde_json::json!({
                "event": "found",
                "sink": sink,
                "applying": applying,
                "differences": differences.iter().map(|d| d.to_json(sink)).collect::<Vec<_>>(),
            }),
            Resync::Applied { sink, seq, report } => serde_json::json!({
                "event": "applied",
                "sink": sink,
                "target_seq": seq,
                "written": report.written,
                "deleted": report.deleted,
                "erased": report.erased,
                "skipped": report.skipped,
                "refused": report.refused,
            }),
        }
    }
}

/// Attach the sink `name` at `url`: make its backend ready ([`prepare_backend`]) and record
/// `sink.added` as `actor`. When the ledger refuses it (a taken name, say), a sqlite file made
/// for it is removed again, so no file is left behind for a sink that does not exist, unless
/// an attached sink writes that file by then (another add of the same file won the race).
pub async fn add_sink(
    ledger: &mut impl ReadAppend,
    actor: &str,
    name: &str,
    url: &str,
    role: SinkRole,
) -> Result<Vec<Outcome>> {
    let parsed = SinkUrl::parse(url)?;
    let created = prepare_backend(&parsed)?;
    let add = Command::AddSink {
        name: name.to_owned(),
        url: url.to_owned(),
        role,
    };
    // A sqlite file that serves another ledger is refused now, not at its first projection.
    let claimed = match parsed.sqlite_path() {
        Some(_) => ledger.reader().open_sink_url(url).map(drop),
        None => Ok(()),
    };
    let added = match claimed {
        Ok(()) => ledger.append(actor, vec![add]).await,
        Err(e) => Err(e),
    };
    if let (Err(_), Some(path)) = (&added, created) {
        let attached = ledger.reader().sinks().map(|sinks| {
            sinks
                .values()
                .any(|s| SinkUrl::parse(&s.url).is_ok_and(|u| u.same_objects(&parsed)))
        });
        if attached.is_ok_and(|attached| !attached) {
            let _ = std::fs::remove_file(path);
        }
    }
    added
}

/// What a reconcile found and did. When something is left different, [`reconcile`] returns
/// [`Error::OutOfSync`] instead, after the caller's callback saw the difference.
#[derive(Debug, Clone, Default)]
pub struct Reconciled {
    pub differences: Vec<Difference>,
    /// `None` on a dry run or when there was nothing to apply.
    pub applied: Option<ApplyReport>,
}

/// Make a sink's backend ready to be written: a sqlite sink's file is created here (never
/// silently on open: a missing file is an outage, not an empty sink). Returns the file it
/// created, if any, so a caller whose next step fails can remove it again.
pub fn prepare_backend(url: &SinkUrl) -> Result<Option<PathBuf>> {
    match &url.backend {
        Backend::Sqlite { path, .. } if path.exists() => {
            SqliteSink::check_file(path).map_err(|e| match e {
                Error::InvalidInput(foreign) => {
                    Error::InvalidInput(format!("{foreign}; choose a new path (sledger creates the file)"))
                }
                other => other,
            })?;
            Ok(None)
        }
        Backend::Sqlite { path, .. } => {
            match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                    return Err(Error::invalid(format!(
                        "the sqlite sink's directory {} does not exist; create it first (mkdir -p)",
                        dir.display()
                    )));
                }
                _ => {}
            }
            SqliteSink::create(path)?;
            Ok(Some(path.clone()))
        }
        Backend::Exec { program, .. } => {
            use std::os::unix::fs::PermissionsExt;
            match std::fs::metadata(program) {
                Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(None),
                Ok(_) => Err(Error::invalid(format!(
                    "the exec plug-in {} is not an executable file; `chmod +x` it, or name the plug-in's program",
                    program.display()
                ))),
                Err(e) => Err(Error::invalid(format!(
                    "the exec plug-in {} cannot be used ({e}); give the absolute path of an executable",
                    program.display()
                ))),
            }
        }
        _ => Ok(None),
    }
}

/// A replay's target: an attached sink no projector writes (a standby), or a URL no projected
/// sink writes, however it is spelled. Returns the sink and whether it is attached. A dry run
/// into a sqlite file that does not exist yet plans against an empty sink and creates nothing.
pub fn replay_target(ledger: &Ledger, into: &str, dry_run: bool) -> Result<(Arc<dyn Sink>, bool)> {
    if !into.contains("://") {
        let (config, sink) = ledger.open_sink(into)?;
        if config.role.is_projected() {
            return Err(Error::invalid(format!(
                "sink {:?} is a {}: a projector writes it, so a replay would fight it; replay into a standby \
                 (`sledger sink add NAME URL --role standby`) or a sink URL",
                config.name, config.role
            )));
        }
        return Ok((sink, true));
    }
    let url = SinkUrl::parse(into)?;
    let projected = ledger
        .sinks()?
        .into_values()
        .find(|s| s.role.is_projected() && SinkUrl::parse(&s.url).is_ok_and(|u| u.same_objects(&url)));
    if let Some(s) = projected {
        return Err(Error::invalid(format!(
            "that URL writes the objects of sink {:?}, a {}: its projector would fight a replay",
            s.name, s.role
        )));
    }
    if let (true, Backend::Sqlite { path, prefix, .. }) = (dry_run, &url.backend) {
        if !path.exists() {
            return Ok((Arc::new(crate::sink::MemorySink::new(prefix)), false));
        }
    }
    prepare_backend(&url)?;
    Ok((ledger.open_sink_url(into)?, false))
}

fn newer_error(sink: &str, differences: &[Difference], mode: Mode) -> Option<Error> {
    let count = |kind| differences.iter().filter(|d| d.kind == kind).count();
    let (newer, ahead) = (count(DiffKind::Newer), count(DiffKind::Ahead));
    if ahead > 0 && mode != Mode::ForceLedger {
        return Some(Error::OutOfSync(format!(
            "{sink} holds {ahead} object(s) at a seq beyond the ledger's head, left as they are: they \
             were written behind sledger's back, or this ledger was put back from an older copy, and \
             sledger cannot tell which. If the ledger is right, `sledger reconcile {sink} --force-ledger` \
             overwrites them with its state; if the sink is, put the newer ledger back or \
             `sledger recover --from` the sink"
        )));
    }
    (newer > 0).then(|| {
        Error::OutOfSync(format!(
            "{sink} holds {newer} object(s) newer than the target, left as they are: a replay never \
             rolls a sink back in place; replay into an empty sink, or roll the ledger back with `sledger restore --at`"
        ))
    })
}

/// Resync `sink` (called `name`) to `desired`, keeping only the differences `only` accepts.
/// `attached_to`: the ledger `name` is a sink of; its projectors wait while this writes.
/// `report` sees the difference before anything is written, then what applying it did.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile(
    attached_to: Option<&Ledger>,
    name: &str,
    sink: &dyn Sink,
    desired: &Desired,
    mode: Mode,
    only: Option<&dyn Fn(&Difference) -> bool>,
    progress: Progress<'_>,
    report: &mut dyn FnMut(Resync<'_>),
) -> Result<Reconciled> {
    let mut differences = diff(desired, sink, &|d, t| progress(Phase::Comparing, d, t)).await?;
    if let Some(keep) = only {
        differences.retain(|d| keep(d));
    }
    if mode == Mode::AllOrNothing {
        if let Some(e) = newer_error(name, &differences, mode) {
            return Err(e);
        }
    }
    let applying = mode != Mode::DryRun && !differences.is_empty();
    report(Resync::Found {
        sink: name,
        differences: &differences,
        applying,
    });
    if !applying {
        return match newer_error(name, &differences, mode) {
            Some(e) => Err(e),
            None => Ok(Reconciled {
                differences,
                applied: None,
            }),
        };
    }
    let _projectors_wait = match attached_to {
        Some(ledger) => lock_sink_writes(ledger, name, &ProjectOptions::default()).await?,
        None => None,
    };
    if let (Mode::ForceLedger, Some(ledger)) = (mode, attached_to) {
        differences = without_projected_since(ledger, differences)?;
    }
    let applied = apply(desired, sink, &differences, mode == Mode::ForceLedger, &|d, t| {
        progress(Phase::Writing, d, t)
    })
    .await?;
    report(Resync::Applied {
        sink: name,
        seq: desired.seq,
        report: &applied,
    });
    if applied.refused > 0 {
        return Err(Error::OutOfSync(format!(
            "{name}: {} object(s) did not take the write: the sink keeps tombstones newer than the \
             target (those secrets were deleted later); replay into an empty sink",
            applied.refused
        )));
    }
    if let Some(e) = newer_error(name, &differences, mode) {
        return Err(e);
    }
    Ok(Reconciled {
        differences,
        applied: Some(applied),
    })
}

/// What `sledger reconcile` resyncs the attached sink `name` to: the sink, opened (a wrong
/// name fails here, before anything is recorded), and the ledger's head folded now. A forced
/// reconcile records its decision after this: what the sink holds beyond this head is ahead.
fn reconcile_target(ledger: &Ledger, name: &str) -> Result<(Arc<dyn Sink>, Desired)> {
    let (_, sink) = ledger.open_sink(name)?;
    Ok((sink, ledger.desired_at(ledger.head()?.seq)?))
}

impl Mode {
    /// `sledger reconcile`'s mode: with `--force-ledger` the ledger wins.
    fn reconciling(force_ledger: bool) -> Mode {
        if force_ledger {
            Mode::ForceLedger
        } else {
            Mode::Apply
        }
    }
}

/// `sledger reconcile`: resync the attached sink `name` to the ledger's head. With
/// `force_ledger`, the decision that the ledger, not the sink, is right is recorded first
/// (`sink.forced`, by `actor`), and what the sink holds beyond the head is erased and written
/// again from the ledger.
pub async fn reconcile_attached(
    ledger: &mut impl ReadAppend,
    actor: &str,
    name: &str,
    force_ledger: bool,
    progress: Progress<'_>,
    report: &mut dyn FnMut(Resync<'_>),
) -> Result<Reconciled> {
    let (sink, desired) = reconcile_target(ledger.reader(), name)?;
    if force_ledger {
        let force = Command::ForceSink {
            name: name.to_owned(),
        };
        ledger.append(actor, vec![force]).await?;
    }
    let mode = Mode::reconciling(force_ledger);
    let reader = ledger.reader();
    reconcile(Some(reader), name, &*sink, &desired, mode, None, progress, report).await
}

/// `differences` without the objects a projector wrote after the target was folded.
fn without_projected_since(ledger: &Ledger, differences: Vec<Difference>) -> Result<Vec<Difference>> {
    let mut kept = Vec::with_capacity(differences.len());
    for d in differences {
        if !projected_since(ledger, &d)? {
            kept.push(d);
        }
    }
    Ok(kept)
}

/// Whether `d` is a state a projector (the server's, `project --follow`) wrote after the
/// target was folded: it claims a seq beyond the target, or beyond the head the target saw,
/// but the ledger holds that event and it is this secret's. Such an object is ahead, not
/// wrong, so neither forcing the ledger's state nor a catch-up may treat it as a difference.
fn projected_since(ledger: &Ledger, d: &Difference) -> Result<bool> {
    match (d.kind, d.sink_seq) {
        // A seq beyond the head has no event: one lookup answers both questions.
        (DiffKind::Ahead | DiffKind::Newer, Some(seq)) => Ok(ledger
            .store()
            .event(seq)?
            .is_some_and(|e| e.secret_id == Some(d.id))),
        _ => Ok(false),
    }
}

/// Remove from `sink`, for good, the objects at or before seq `through` that `verified_elsewhere`
/// accepts (a copy checked in another sink holds them). Returns how many went.
async fn empty_sink(
    sink: &dyn Sink,
    through: u64,
    verified_elsewhere: &dyn Fn(SecretId) -> bool,
) -> Result<u64> {
    let doomed = doomed_in(sink, through, verified_elsewhere).await?;
    // Against an empty target every difference is a purge at the seq the object holds.
    let nothing = Desired {
        seq: through,
        head: through,
        objects: Default::default(),
        purged_since: Vec::new(),
    };
    Ok(apply(&nothing, sink, &doomed, false, &|_, _| {}).await?.deleted)
}

/// The objects [`empty_sink`] would delete.
async fn doomed_in(
    sink: &dyn Sink,
    through: u64,
    verified_elsewhere: &dyn Fn(SecretId) -> bool,
) -> Result<Vec<Difference>> {
    Ok(sink
        .list()
        .await?
        .into_iter()
        .filter(|e| e.seq <= through && verified_elsewhere(e.id))
        .map(|e| Difference {
            id: e.id,
            name: None,
            kind: DiffKind::Extra,
            sink_seq: Some(e.seq),
            target_seq: None,
        })
        .collect())
}

async fn held_ids(sink: &dyn Sink) -> Result<HashSet<SecretId>> {
    Ok(sink.list().await?.into_iter().map(|e| e.id).collect())
}

/// What [`backup`] did.
#[derive(Debug, Clone, Default)]
pub struct BackupReport {
    /// Each backup sink and what its resync found and did.
    pub backups: Vec<(String, Reconciled)>,
    /// With `delete_secrets`: the primary, and how many secrets left it (in a dry run, how
    /// many would: those it holds that every backup would hold once resynced).
    pub emptied: Option<(String, u64)>,
}

/// Resync every backup sink to the head; with `delete_secrets`, then remove from the primary
/// the secrets every backup verifiably holds (reads fall back to the backups; `restore` puts
/// them back). `report` follows each backup's resync as it goes.
pub async fn backup(
    ledger: &Ledger,
    dry_run: bool,
    delete_secrets: bool,
    progress: Progress<'_>,
    report: &mut dyn FnMut(Resync<'_>),
) -> Result<BackupReport> {
    let backups: Vec<String> = ledger
        .sinks()?
        .into_values()
        .filter(|s| s.role == SinkRole::Backup)
        .map(|s| s.name)
        .collect();
    if backups.is_empty() {
        return Err(Error::invalid(
            "there is no backup sink; `sledger sink add NAME URL` attaches one (role backup by default)",
        ));
    }
    let desired = ledger.desired_at(ledger.head()?.seq)?;
    let mut done_all = BackupReport::default();
    // Only what every backup holds once resynced may leave the primary.
    let mut everywhere: Option<HashSet<SecretId>> = None;
    for name in backups {
        let (_, sink) = ledger.open_sink(&name)?;
        let mode = Mode::unless_dry_run(dry_run, Mode::Apply);
        let done = reconcile(
            Some(ledger),
            &name,
            &*sink,
            &desired,
            mode,
            None,
            progress,
            report,
        )
        .await?;
        if delete_secrets && !dry_run {
            let held = held_ids(&*sink).await?;
            everywhere = Some(match everywhere {
                None => held,
                Some(before) => before.intersection(&held).copied().collect(),
            });
        }
        done_all.backups.push((name, done));
    }
    if delete_secrets && dry_run {
        // A dry run changed nothing, so it counts on the resyncs having worked: every backup
        // would then hold every live secret.
        let live = desired
            .objects
            .iter()
            .filter(|(_, op)| matches!(op, project::Op::Put(_)));
        everywhere = Some(live.map(|(id, _)| *id).collect());
    }
    if let Some(everywhere) = everywhere {
        let primary = project::primary(ledger)?.ok_or_else(no_primary)?;
        let (_, sink) = ledger.open_sink(&primary)?;
        let verified = |id| everywhere.contains(&id);
        let removed = if dry_run {
            doomed_in(&*sink, desired.seq, &verified).await?.len() as u64
        } else {
            let _projectors_wait = lock_sink_writes(ledger, &primary, &ProjectOptions::default()).await?;
            empty_sink(&*sink, desired.seq, &verified).await?
        };
        done_all.emptied = Some((primary, removed));
    }
    Ok(done_all)
}

/// Repair the primary from the ledger (a wiped, damaged or lost primary): resync it to the
/// head, only the named secrets if `secrets` names any (everything else it holds is left as
/// it is). A primary whose sqlite file is gone is rebuilt from scratch. `report` follows the
/// resync as it goes.
pub async fn repair_primary(
    ledger: &Ledger,
    actor: &str,
    secrets: &[String],
    dry_run: bool,
    progress: Progress<'_>,
    report: &mut dyn FnMut(Resync<'_>),
) -> Result<Reconciled> {
    let primary = project::primary(ledger)?.ok_or_else(no_primary)?;
    if !dry_run {
        prepare_backend(&SinkUrl::parse(&ledger.sink_config(&primary)?.url)?)?;
    }
    let (_, sink) = ledger.open_sink(&primary)?;
    let desired = ledger.desired_at(ledger.head()?.seq)?;
    let mut chosen = HashSet::new();
    for name in secrets {
        chosen.insert(ledger.find(actor, name)?.id);
    }
    let only = |d: &Difference| chosen.contains(&d.id);
    let only = (!secrets.is_empty()).then_some(&only as &dyn Fn(&Difference) -> bool);
    let mode = Mode::unless_dry_run(dry_run, Mode::Apply);
    reconcile(
        Some(ledger),
        &primary,
        &*sink,
        &desired,
        mode,
        only,
        progress,
        report,
    )
    .await
}

fn no_primary() -> Error {
    Error::NotFound("there is no primary sink; `sledger sink promote NAME` makes one".into())
}

/// A step of [`migrate`], reported as it completes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum MigrateStep {
    /// 1/5: the target was attached as a backup (or made one).
    Attached { name: String, was: Option<SinkRole> },
    /// 2/5: projected up to this seq.
    CaughtUp { name: String, seq: u64 },
    /// 3/5: an empty difference, after fixing this many objects on the way.
    Verified { name: String, fixed: u64 },
    /// 4/5: promoted; the old primary (if any) is a backup.
    Promoted { name: String, old: Option<String> },
    /// 5/5 with `delete_secrets`: the old primary is a standby and lost this many secrets.
    Emptied { old: String, removed: u64 },
    /// 5/5.
    Done,
    /// The target was the primary already (an earlier run finished).
    AlreadyPrimary { name: String },
}

/// What `migrate --dry-run` would do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "plan", rename_all = "snake_case")]
pub enum MigratePlan {
    /// Attach `name` at `url`, then catch up, verify, promote.
    Attach { name: String, url: String },
    /// Make the attached sink a backup (from `role`), catch up `differing` objects, verify,
    /// promote, and make `old` a backup.
    Promote {
        name: String,
        role: SinkRole,
        differing: usize,
        old: Option<String>,
    },
    /// Nothing: it is the primary already.
    AlreadyPrimary { name: String },
}

/// Where to migrate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MigrateTo {
    /// An attached sink's name, or a URL (then `name` says what to attach it as).
    pub to: String,
    pub name: Option<String>,
    /// Afterwards, make the old primary a standby and remove from it what the new primary
    /// verifiably holds.
    #[serde(default)]
    pub delete_secrets: bool,
}

impl MigrateTo {
    /// The sink name this migration ends with, checking the URL form.
    fn sink_name(&self, ledger: &Ledger) -> Result<(String, bool)> {
        if !self.to.contains("://") {
            return Ok((self.to.clone(), true));
        }
        SinkUrl::parse(&self.to)?; // refuses credentials before the URL is echoed anywhere
        let name = self
            .name
            .clone()
            .ok_or_else(|| Error::invalid("--to URL needs --name NAME to attach it under"))?;
        crate::validate::sink_name(&name)?;
        match ledger.sinks()?.get(&name) {
            Some(s) if s.url == self.to => Ok((name, true)),
            Some(s) => Err(Error::invalid(format!(
                "sink {name:?} is attached with another URL ({})",
                s.url
            ))),
            None => Ok((name, false)),
        }
    }
}

/// What `migrate` would do, changing nothing.
pub async fn plan_migration(ledger: &Ledger, to: &MigrateTo) -> Result<MigratePlan> {
    let (name, attached) = to.sink_name(ledger)?;
    if !attached {
        return Ok(MigratePlan::Attach {
            name,
            url: to.to.clone(),
        });
    }
    let config = ledger.sink_config(&name)?;
    if config.role == SinkRole::Primary {
        return Ok(MigratePlan::AlreadyPrimary { name });
    }
    let (_, sink) = ledger.open_sink(&name)?;
    let desired = ledger.desired_at(ledger.head()?.seq)?;
    let differing = diff(&desired, &*sink, &|_, _| {}).await?.len();
    Ok(MigratePlan::Promote {
        name,
        role: config.role,
        differing,
        old: project::primary(ledger)?,
    })
}

/// The zero-downtime move of the primary, in five steps: attach as backup (an event), catch
/// up, verify an empty difference, promote (an event; the old primary becomes a backup),
/// catch up what was written meanwhile. Writes keep working throughout; running it again
/// after an interruption continues where it stopped.
pub async fn migrate(
    ledger: &mut impl ReadAppend,
    actor: &str,
    to: &MigrateTo,
    progress: Progress<'_>,
    step: &mut dyn FnMut(MigrateStep),
) -> Result<()> {
    let (name, attached) = to.sink_name(ledger.reader())?;
    if !attached {
        add_sink(ledger, actor, &name, &to.to, SinkRole::Backup).await?;
        step(MigrateStep::Attached {
            name: name.clone(),
            was: None,
        });
    }
    let config = ledger.reader().sink_config(&name)?;
    let old = project::primary(ledger.reader())?;
    if config.role == SinkRole::Primary {
        // Interrupted after the promotion: what may be left is emptying the old primary.
        match demoted_by_promotion_of(ledger.reader(), &name)? {
            Some(old) if to.delete_secrets && ledger.reader().sink_config(&old)?.role == SinkRole::Backup => {
                let removed = empty_old_primary(ledger, actor, &name, &old).await?;
                step(MigrateStep::Emptied { old, removed });
            }
            _ => step(MigrateStep::AlreadyPrimary { name }),
        }
        return Ok(());
    }
    if config.role != SinkRole::Backup {
        let role = SinkRole::Backup;
        ledger
            .append(
                actor,
                vec![Command::SetSinkRole {
                    name: name.clone(),
                    role,
                }],
            )
            .await?;
        step(MigrateStep::Attached {
            name: name.clone(),
            was: Some(config.role),
        });
    }
    verify_caught_up(ledger.reader(), &name, progress, step).await?;
    ledger
        .append(actor, vec![Command::PromoteSink { name: name.clone() }])
        .await?;
    step(MigrateStep::Promoted {
        name: name.clone(),
        old: old.clone(),
    });
    // Writes that landed between the check and the promotion.
    project::project_named(ledger.reader(), &name, &ProjectOptions::default()).await?;
    match (to.delete_secrets, old) {
        (true, Some(old)) => {
            let removed = empty_old_primary(ledger, actor, &name, &old).await?;
            step(MigrateStep::Emptied { old, removed });
        }
        _ => step(MigrateStep::Done),
    }
    Ok(())
}

/// Steps 2 and 3 of `migrate`: catch the backup `name` up, then check that it matches the
/// ledger. Projection first (fast, checkpointed), then a full comparison that also fixes
/// anything the sink held before it was attached.
async fn verify_caught_up(
    ledger: &Ledger,
    name: &str,
    progress: Progress<'_>,
    step: &mut dyn FnMut(MigrateStep),
) -> Result<()> {
    project::project_named(ledger, name, &ProjectOptions::default()).await?;
    let checkpoint = ledger.checkpoint(name)?;
    step(MigrateStep::CaughtUp {
        name: name.to_owned(),
        seq: checkpoint,
    });
    let (_, sink) = ledger.open_sink(name)?;
    let desired = ledger.desired_at(checkpoint)?;
    // A projector running meanwhile may already have written states after the checkpoint.
    // An error reading the log keeps the difference, so it is reported rather than ignored.
    let not_projected = |d: &Difference| !projected_since(ledger, d).unwrap_or(false);
    let done = reconcile(
        Some(ledger),
        name,
        &*sink,
        &desired,
        Mode::Apply,
        Some(&not_projected),
        progress,
        &mut |_| {},
    )
    .await?;
    let mut left = diff(&desired, &*sink, &|_, _| {}).await?;
    left.retain(not_projected);
    if !left.is_empty() {
        return Err(Error::OutOfSync(format!(
            "{name} still differs from the ledger in {} object(s) after catching up; not promoted",
            left.len()
        )));
    }
    step(MigrateStep::Verified {
        name: name.to_owned(),
        fixed: done.applied.map_or(0, |r| r.written + r.deleted),
    });
    Ok(())
}

/// The last step of `migrate --delete-secrets`: the old primary becomes a standby (so no
/// projector refills it) and loses what the new primary verifiably holds.
async fn empty_old_primary(ledger: &mut impl ReadAppend, actor: &str, new: &str, old: &str) -> Result<u64> {
    ledger
        .append(
            actor,
            vec![Command::SetSinkRole {
                name: old.to_owned(),
                role: SinkRole::Standby,
            }],
        )
        .await?;
    let reader = ledger.reader();
    let (_, target) = reader.open_sink(new)?;
    let (_, sink) = reader.open_sink(old)?;
    // A projector batch begun before the role change finishes first; later ones see the
    // standby and write nothing (`project_attachment`), so nothing lands after the emptying.
    let _projectors_wait = lock_sink_writes(reader, old, &ProjectOptions::default()).await?;
    let through = reader.checkpoint(new)?;
    let held = held_ids(&*target).await?;
    empty_sink(&*sink, through, &|id| held.contains(&id)).await
}

/// The sink that promoting `name` to primary made a backup, from the log (a promotion appends
/// "old is now backup" right before "name is now primary").
fn demoted_by_promotion_of(ledger: &Ledger, name: &str) -> Result<Option<String>> {
    use crate::log::EventLog;
    let (mut previous, mut found) = (None::<String>, None);
    ledger.log().scan(1, u64::MAX, &mut |stored| {
        if stored.event_type == "sink.role_changed" {
            if let crate::Event::SinkRoleChanged { name: changed, role } = stored.decode()? {
                if changed == name && role == SinkRole::Primary {
                    found = previous.take();
                }
                previous = (role == SinkRole::Backup).then_some(changed);
                return Ok(true);
            }
        }
        previous = None;
        Ok(true)
    })?;
    Ok(found)
}
