//! `sledger replay`, `restore`, `backup`, `migrate`, `diff`, `reconcile`: replays of the log
//! against sinks (the engine is `sledger::replay`).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sledger::event::SinkRole;
use sledger::project::{self, ProjectOptions};
use sledger::replay::{self, ApplyReport, Desired, DiffKind, Difference, Target};
use sledger::sink::{Sink, SinkUrl};
use sledger::{Command, Ledger, SecretId};

use crate::cli::{BackupArgs, DiffArgs, MigrateArgs, ReconcileArgs, ReplayArgs, RestoreArgs, TargetArgs};
use crate::context::{block_on, Context};
use crate::exit::{out_of_sync, usage};
use crate::output::{self, outln};
use crate::secret::render_outcomes;
use crate::sinks::prepare_backend;

fn target(ledger: &Ledger, args: &TargetArgs) -> Result<u64> {
    let target = match (&args.at, args.seq) {
        (Some(at), _) => Target::Time(output::parse_time("--at", at)?),
        (None, Some(seq)) => Target::Seq(seq),
        (None, None) => Target::Head,
    };
    Ok(ledger.target_seq(target)?)
}

/// A progress bar for people (hidden for scripts, and by indicatif when not on a terminal).
fn bar(ctx: &Context, what: &str) -> ProgressBar {
    if ctx.json() {
        return ProgressBar::hidden();
    }
    let template = format!("{what:>12} {{bar:30}} {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})");
    ProgressBar::new(0).with_style(ProgressStyle::with_template(&template).expect("valid template"))
}

fn follow(bar: &ProgressBar) -> impl Fn(u64, u64) + Sync + '_ {
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }
}

/// Compare a sink with `desired`, then (unless `dry_run`) apply the difference. Returns the
/// difference found and what was applied.
async fn sync(
    ctx: &Context,
    sink: &dyn Sink,
    desired: &Desired,
    dry_run: bool,
) -> Result<(Vec<Difference>, Option<ApplyReport>)> {
    let comparing = bar(ctx, "comparing");
    let differences = replay::diff(desired, sink, &follow(&comparing)).await?;
    comparing.finish_and_clear();
    if dry_run || differences.is_empty() {
        return Ok((differences, None));
    }
    let writing = bar(ctx, "writing");
    let report = replay::apply(desired, sink, &differences, &follow(&writing)).await?;
    writing.finish_and_clear();
    Ok((differences, Some(report)))
}

fn print_differences(ctx: &Context, sink: &str, differences: &[Difference]) {
    if ctx.json() {
        for d in differences {
            output::json_line(&json!({"sink": sink, "id": d.id, "name": d.name, "kind": d.kind,
                "sink_seq": d.sink_seq, "target_seq": d.target_seq}));
        }
        return;
    }
    if differences.is_empty() {
        outln!("{sink}: in sync");
        return;
    }
    let mut t = output::table(&["KIND", "SECRET", "ID", "SINK SEQ", "LEDGER SEQ"]);
    for d in differences {
        let seq = |s: Option<u64>| s.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        t.add_row(vec![
            d.kind.as_str().to_owned(),
            d.name.clone().unwrap_or_default(),
            d.id.to_string(),
            seq(d.sink_seq),
            seq(d.target_seq),
        ]);
    }
    outln!("{sink}: {} object(s) differ\n{t}", differences.len());
}

fn print_applied(ctx: &Context, sink: &str, seq: u64, report: &ApplyReport) {
    if ctx.json() {
        output::json_line(
            &json!({"sink": sink, "target_seq": seq, "written": report.written,
            "deleted": report.deleted, "skipped": report.skipped, "refused": report.refused}),
        );
        return;
    }
    let left = report.skipped + report.refused;
    let outcome = if left == 0 {
        format!("now at the state of seq {seq}")
    } else {
        format!("{left} object(s) left as they are (see below)")
    };
    outln!(
        "{sink}: {} written, {} deleted, {outcome}",
        report.written,
        report.deleted
    );
}

fn newer_error(sink: &str, differences: &[Difference]) -> Option<anyhow::Error> {
    let newer = differences.iter().filter(|d| d.kind == DiffKind::Newer).count();
    (newer > 0).then(|| {
        out_of_sync(format!(
            "{sink} holds {newer} object(s) newer than the target, left as they are: a replay never \
             rolls a sink back in place; replay into an empty sink, or roll the ledger back with `sledger restore --at`"
        ))
    })
}

/// How `reconcile_sink` treats the difference it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Print it; change nothing.
    DryRun,
    /// Apply what can be applied; objects newer than the target are left and reported.
    Apply,
    /// Like `Apply`, but change nothing if any object is newer than the target (a replay
    /// would otherwise leave the sink half rolled back).
    AllOrNothing,
}

impl Mode {
    fn unless_dry_run(dry_run: bool, otherwise: Mode) -> Mode {
        if dry_run {
            Mode::DryRun
        } else {
            otherwise
        }
    }
}

/// The write lock of attached sink `name`, which its projectors take per batch.
async fn writing_to(ledger: &Ledger, name: &str) -> Result<Option<std::fs::File>> {
    Ok(project::lock_sink_writes(ledger, name, &ProjectOptions::default()).await?)
}

/// Resync `sink` to `desired` (only the differences `only` keeps, if given) and report; Err
/// if something is left different. `attached_to`: the ledger `name` is a sink of, whose
/// projectors then wait while this writes.
async fn reconcile_sink(
    ctx: &Context,
    attached_to: Option<&Ledger>,
    name: &str,
    sink: &dyn Sink,
    desired: &Desired,
    mode: Mode,
    only: Option<&dyn Fn(&Difference) -> bool>,
) -> Result<()> {
    let comparing = bar(ctx, "comparing");
    let mut differences = replay::diff(desired, sink, &follow(&comparing)).await?;
    comparing.finish_and_clear();
    if let Some(keep) = only {
        differences.retain(|d| keep(d));
    }
    if mode == Mode::AllOrNothing {
        if let Some(e) = newer_error(name, &differences) {
            return Err(e);
        }
    }
    if mode == Mode::DryRun || differences.is_empty() {
        print_differences(ctx, name, &differences);
        return newer_error(name, &differences).map_or(Ok(()), Err);
    }
    let _projectors_wait = match attached_to {
        Some(ledger) => writing_to(ledger, name).await?,
        None => None,
    };
    let writing = bar(ctx, "writing");
    let report = replay::apply(desired, sink, &differences, &follow(&writing)).await?;
    writing.finish_and_clear();
    print_applied(ctx, name, desired.seq, &report);
    if report.refused > 0 {
        return Err(out_of_sync(format!(
            "{name}: {} object(s) did not take the write: the sink keeps tombstones newer than the \
             target (those secrets were deleted later); replay into an empty sink",
            report.refused
        )));
    }
    newer_error(name, &differences).map_or(Ok(()), Err)
}

pub fn replay(ctx: &Context, args: ReplayArgs) -> Result<()> {
    let ledger = ctx.open_unlocked()?;
    let seq = target(&ledger, &args.target)?;
    let sink: Arc<dyn Sink> = if args.into.contains("://") {
        let into = SinkUrl::parse(&args.into)?;
        let projected = ledger
            .sinks()?
            .into_values()
            .find(|s| s.role.is_projected() && SinkUrl::parse(&s.url).is_ok_and(|u| u.same_objects(&into)));
        if let Some(s) = projected {
            return Err(usage(format!(
                "that URL writes the objects of sink {:?}, a {}: its projector would fight a replay",
                s.name, s.role
            )));
        }
        prepare_backend(&into)?;
        ledger.open_sink_url(&args.into)?
    } else {
        let (config, sink) = ledger.open_sink(&args.into)?;
        if config.role.is_projected() {
            return Err(usage(format!(
                "sink {:?} is a {}: a projector writes it, so a replay would fight it; replay into a standby \
                 (`sledger sink add NAME URL --role standby`) or a sink URL",
                config.name, config.role
            )));
        }
        sink
    };
    let desired = ledger.desired_at(seq)?;
    let mode = Mode::unless_dry_run(args.dry_run, Mode::AllOrNothing);
    let attached = (!args.into.contains("://")).then_some(&ledger);
    block_on(reconcile_sink(
        ctx, attached, &args.into, &*sink, &desired, mode, None,
    ))
}

pub fn diff(ctx: &Context, args: DiffArgs) -> Result<()> {
    let ledger = ctx.open_unlocked()?;
    let seq = target(&ledger, &args.target)?;
    let (_, sink) = ledger.open_sink(&args.sink)?;
    let desired = ledger.desired_at(seq)?;
    let differences = block_on(sync(ctx, &*sink, &desired, true))?.0;
    print_differences(ctx, &args.sink, &differences);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(out_of_sync(format!(
            "sink {:?} differs from the ledger in {} object(s); `sledger reconcile {}` fixes it",
            args.sink,
            differences.len(),
            args.sink
        )))
    }
}

pub fn reconcile(ctx: &Context, args: ReconcileArgs) -> Result<()> {
    let ledger = ctx.open_unlocked()?;
    let (_, sink) = ledger.open_sink(&args.sink)?;
    let desired = ledger.desired_at(ledger.head()?.seq)?;
    block_on(reconcile_sink(
        ctx,
        Some(&ledger),
        &args.sink,
        &*sink,
        &desired,
        Mode::Apply,
        None,
    ))
}

/// Remove from `sink`, for good, the objects at or before seq `through` that `verified_elsewhere`
/// accepts (a copy checked in another sink holds them). Returns how many went.
async fn empty_sink(
    sink: &dyn Sink,
    through: u64,
    verified_elsewhere: &dyn Fn(SecretId) -> bool,
) -> Result<u64> {
    let doomed: Vec<Difference> = sink
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
        .collect();
    // Against an empty target every difference is a purge at the seq the object holds.
    let nothing = Desired {
        seq: through,
        objects: Default::default(),
    };
    Ok(replay::apply(&nothing, sink, &doomed, &|_, _| {}).await?.deleted)
}

/// The ids of the objects a sink holds.
async fn held_ids(sink: &dyn Sink) -> Result<HashSet<SecretId>> {
    Ok(sink.list().await?.into_iter().map(|e| e.id).collect())
}

pub fn backup(ctx: &Context, args: BackupArgs) -> Result<()> {
    let ledger = ctx.open_unlocked()?;
    let backups: Vec<String> = ledger
        .sinks()?
        .into_values()
        .filter(|s| s.role == SinkRole::Backup)
        .map(|s| s.name)
        .collect();
    if backups.is_empty() {
        return Err(usage(
            "there is no backup sink; `sledger sink add NAME URL` attaches one (role backup by default)",
        ));
    }
    let desired = ledger.desired_at(ledger.head()?.seq)?;
    block_on(async {
        // Only what every backup holds once resynced may leave the primary.
        let mut everywhere: Option<HashSet<SecretId>> = None;
        for name in &backups {
            let (_, sink) = ledger.open_sink(name)?;
            reconcile_sink(
                ctx,
                Some(&ledger),
                name,
                &*sink,
                &desired,
                Mode::unless_dry_run(args.dry_run, Mode::Apply),
                None,
            )
            .await?;
            if args.delete_secrets && !args.dry_run {
                let held = held_ids(&*sink).await?;
                everywhere = Some(match everywhere {
                    None => held,
                    Some(before) => before.intersection(&held).copied().collect(),
                });
            }
        }
        if let Some(everywhere) = everywhere {
            let primary = project::primary(&ledger)?.context("there is no primary sink")?;
            let (_, sink) = ledger.open_sink(&primary)?;
            let _projectors_wait = writing_to(&ledger, &primary).await?;
            let removed = empty_sink(&*sink, desired.seq, &|id| everywhere.contains(&id)).await?;
            if ctx.json() {
                output::json_line(&json!({"sink": primary, "deleted": removed}));
            } else {
                outln!("{primary}: {removed} secret(s) deleted; reads fall back to the backup, `sledger restore` puts them back");
            }
        }
        Ok(())
    })
}

pub fn restore(ctx: &Context, args: RestoreArgs) -> Result<()> {
    let mut ledger = ctx.open_unlocked()?;
    if args.target.at.is_none() && args.target.seq.is_none() {
        // No point in time: repair the primary from the ledger (a wiped or damaged primary).
        let primary = project::primary(&ledger)?.context("there is no primary sink")?;
        if !args.dry_run {
            // A primary whose file is gone is rebuilt from scratch.
            prepare_backend(&SinkUrl::parse(&ledger.sink_config(&primary)?.url)?)?;
        }
        let (_, sink) = ledger.open_sink(&primary)?;
        let desired = ledger.desired_at(ledger.head()?.seq)?;
        // With --secret, only the named secrets; everything else in the primary is left as it is.
        let mut chosen = HashSet::new();
        for name in &args.secrets {
            chosen.insert(ledger.find(&ctx.actor, name)?.id);
        }
        let only = |d: &Difference| chosen.contains(&d.id);
        let only = (!args.secrets.is_empty()).then_some(&only as &dyn Fn(&Difference) -> bool);
        let mode = Mode::unless_dry_run(args.dry_run, Mode::Apply);
        return block_on(reconcile_sink(
            ctx,
            Some(&ledger),
            &primary,
            &*sink,
            &desired,
            mode,
            only,
        ));
    }
    let seq = target(&ledger, &args.target)?;
    let plan = ledger.plan_restore(&ctx.actor, seq, &args.secrets)?;
    if plan.empties_everything && !args.dry_run && args.secrets.is_empty() {
        return Err(usage(format!(
            "no secret was live at seq {seq}, so restoring to it would delete every secret; pick a later \
             point (`sledger log` shows the seqs), or name the secrets with --secret"
        )));
    }
    if !plan.purged.is_empty() {
        eprintln!(
            "note: purged since, cannot come back: {} (their values are destroyed); restoring the rest",
            plan.purged.join(", ")
        );
    }
    if plan.not_yours > 0 {
        eprintln!(
            "note: {} private secret(s) of other owners left alone",
            plan.not_yours
        );
    }
    if args.dry_run || plan.commands.is_empty() {
        if ctx.json() {
            for s in &plan.steps {
                output::json_line(&json!({"name": s.name, "actions": s.actions, "target_seq": seq}));
            }
        } else if plan.steps.is_empty() {
            outln!("nothing to restore: the state matches seq {seq}");
        } else {
            let mut t = output::table(&["SECRET", "WOULD"]);
            for s in &plan.steps {
                t.add_row(vec![s.name.clone(), s.actions.join(", ")]);
            }
            outln!("{t}");
        }
        return Ok(());
    }
    let outcomes = ledger.execute(&ctx.actor, plan.commands)?;
    let primary = ctx.wait_for_primary(&ledger)?;
    render_outcomes(
        ctx,
        &format!("restored to seq {seq}:"),
        &outcomes,
        primary.as_ref(),
    );
    Ok(())
}

pub fn migrate(ctx: &Context, args: MigrateArgs) -> Result<()> {
    let mut ledger = ctx.open_unlocked()?;
    let name = if args.to.contains("://") {
        SinkUrl::parse(&args.to)?; // refuses credentials before the URL is echoed anywhere
        let name = args
            .name
            .clone()
            .ok_or_else(|| usage("--to URL needs --name NAME to attach it under"))?;
        match ledger.sinks()?.get(&name) {
            Some(s) if s.url == args.to => {}
            Some(s) => {
                return Err(usage(format!(
                    "sink {name:?} is attached with another URL ({})",
                    s.url
                )))
            }
            None if args.dry_run => {
                outln!(
                    "would attach {name} ({}) as backup, catch it up, verify, promote it",
                    args.to
                );
                return Ok(());
            }
            None => {
                let created = prepare_backend(&SinkUrl::parse(&args.to)?)?;
                let add = Command::AddSink {
                    name: name.clone(),
                    url: args.to.clone(),
                    role: SinkRole::Backup,
                };
                if let Err(e) = ledger.execute(&ctx.actor, vec![add]) {
                    if let Some(path) = created {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e.into());
                }
                outln!("1/5 attached {name} as backup");
            }
        }
        name
    } else {
        args.to.clone()
    };
    let config = ledger.sink_config(&name)?;
    let old = project::primary(&ledger)?;
    if config.role == SinkRole::Primary {
        // Interrupted after the promotion: what may be left is emptying the old primary.
        match demoted_by_promotion_of(&ledger, &name)? {
            Some(old)
                if args.delete_secrets
                    && !args.dry_run
                    && ledger.sink_config(&old)?.role == SinkRole::Backup =>
            {
                empty_old_primary(ctx, &mut ledger, &name, &old)?
            }
            _ => outln!("{name} is the primary already; nothing to do"),
        }
        return Ok(());
    }
    if args.dry_run {
        let (_, sink) = ledger.open_sink(&name)?;
        let desired = ledger.desired_at(ledger.head()?.seq)?;
        let differences = block_on(async { replay::diff(&desired, &*sink, &|_, _| {}).await })?;
        outln!(
            "would make {name} a backup (now {}), catch up {} differing object(s), verify, promote it{}",
            config.role,
            differences.len(),
            old.map(|o| format!(", and make {o} a backup"))
                .unwrap_or_default()
        );
        return Ok(());
    }
    if config.role != SinkRole::Backup {
        ledger.execute(
            &ctx.actor,
            vec![Command::SetSinkRole {
                name: name.clone(),
                role: SinkRole::Backup,
            }],
        )?;
        outln!("1/5 {name} is now a backup");
    }
    // Catch up and verify: projection first (fast, checkpointed), then a full comparison that
    // also fixes anything the sink held before it was attached.
    block_on(async {
        project::project_named(&ledger, &name, &ProjectOptions::default()).await?;
        outln!("2/5 {name} caught up to seq {}", ledger.checkpoint(&name)?);
        let (_, sink) = ledger.open_sink(&name)?;
        let desired = ledger.desired_at(ledger.checkpoint(&name)?)?;
        let (_, applied) = {
            let _projectors_wait = writing_to(&ledger, &name).await?;
            sync(ctx, &*sink, &desired, false).await?
        };
        let left = replay::diff(&desired, &*sink, &|_, _| {}).await?;
        if !left.is_empty() {
            return Err(out_of_sync(format!(
                "{name} still differs from the ledger in {} object(s) after catching up; not promoted",
                left.len()
            )));
        }
        let fixed = applied.map_or(0, |r| r.written + r.deleted);
        outln!("3/5 verified: {name} matches the ledger ({fixed} difference(s) fixed on the way)");
        Ok::<_, anyhow::Error>(())
    })?;
    ledger.execute(&ctx.actor, vec![Command::PromoteSink { name: name.clone() }])?;
    outln!(
        "4/5 {name} is the primary{}",
        old.as_ref()
            .map(|o| format!("; {o} is a backup"))
            .unwrap_or_default()
    );
    // Writes that landed between the check and the promotion.
    block_on(project::project_named(&ledger, &name, &ProjectOptions::default()))?;
    match (args.delete_secrets, &old) {
        (true, Some(old)) => empty_old_primary(ctx, &mut ledger, &name, old)?,
        _ => outln!("5/5 done"),
    }
    Ok(())
}

/// The last step of `migrate --delete-secrets`: the old primary becomes a standby (so no
/// projector refills it) and loses what the new primary verifiably holds.
fn empty_old_primary(ctx: &Context, ledger: &mut Ledger, new: &str, old: &str) -> Result<()> {
    ledger.execute(
        &ctx.actor,
        vec![Command::SetSinkRole {
            name: old.to_owned(),
            role: SinkRole::Standby,
        }],
    )?;
    let (_, target) = ledger.open_sink(new)?;
    let (_, sink) = ledger.open_sink(old)?;
    let through = ledger.checkpoint(new)?;
    let removed = block_on(async {
        let held = held_ids(&*target).await?;
        empty_sink(&*sink, through, &|id| held.contains(&id)).await
    })?;
    outln!("5/5 {removed} secret(s) deleted from {old}, now a standby");
    Ok(())
}

/// The sink that promoting `name` to primary made a backup, from the log (a promotion appends
/// "old is now backup" right before "name is now primary").
fn demoted_by_promotion_of(ledger: &Ledger, name: &str) -> Result<Option<String>> {
    use sledger::log::EventLog;
    let (mut previous, mut found) = (None::<String>, None);
    ledger.log().scan(1, u64::MAX, &mut |stored| {
        if stored.event_type == "sink.role_changed" {
            if let sledger::Event::SinkRoleChanged { name: changed, role } = stored.decode()? {
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
