//! `sledger replay`, `restore`, `backup`, `migrate`, `diff`, `reconcile`: replays of the log
//! against sinks (the engine is `sledger::replay`).

use anyhow::Result;
use indicatif::ProgressBar;
use serde_json::{json, Value};
use sledger::replay::orchestrate::{self, MigratePlan, MigrateStep, MigrateTo, Mode, Phase};
use sledger::replay::Target;
use sledger::sink::SinkUrl;

use crate::cli::{BackupArgs, DiffArgs, MigrateArgs, ReconcileArgs, ReplayArgs, RestoreArgs, TargetArgs};
use crate::context::Context;
use crate::exit::out_of_sync;
use crate::output::{self, outln};
use crate::secret::render_writes;
use crate::sinks::refuse_memory;

/// `--seq` / `--at`: the point of the log a command works against.
fn target(args: &TargetArgs) -> Result<Target> {
    Ok(match (&args.at, args.seq) {
        (Some(at), _) => Target::Time(output::parse_time("--at", at)?),
        (None, Some(seq)) => Target::Seq(seq),
        (None, None) => Target::Head,
    })
}

/// Progress bars for the two phases of a replay (people only).
struct Bars {
    comparing: ProgressBar,
    writing: ProgressBar,
}

impl Bars {
    fn new(ctx: &Context) -> Bars {
        Bars {
            comparing: output::progress_bar(ctx, "comparing"),
            writing: output::progress_bar(ctx, "writing"),
        }
    }

    fn progress(&self) -> impl Fn(Phase, u64, u64) + Sync + '_ {
        move |phase, done, total| {
            let bar = match phase {
                Phase::Comparing => &self.comparing,
                Phase::Writing => {
                    self.comparing.finish_and_clear();
                    &self.writing
                }
            };
            bar.set_length(total);
            bar.set_position(done);
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Bars {
    fn clear(&self) {
        self.comparing.finish_and_clear();
        self.writing.finish_and_clear();
    }

    /// Print what a resync reports as it goes.
    fn show<'a>(&'a self, ctx: &'a Context) -> impl FnMut(&Value) + 'a {
        move |event| {
            self.clear();
            show_resync(ctx, event)
        }
    }
}

/// Print one resync document (from this process or a server): the difference when nothing is
/// applied (a dry run, or in sync), and what applying did.
fn show_resync(ctx: &Context, event: &Value) {
    let sink = event["sink"].as_str().unwrap_or_default();
    match event["event"].as_str() {
        Some("found") if event["applying"] == false => render_differences(
            ctx,
            sink,
            event["differences"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
        ),
        Some("applied") => print_applied(ctx, sink, event),
        _ => {}
    }
}

fn render_differences(ctx: &Context, sink: &str, differences: &[Value]) {
    if ctx.json() {
        // In sync is an answer too: a script reading no output cannot tell it from a crash.
        if differences.is_empty() {
            output::json_line(&serde_json::json!({"sink": sink, "in_sync": true}));
        }
        differences.iter().for_each(output::json_line);
        return;
    }
    if differences.is_empty() {
        outln!("{sink}: in sync");
        return;
    }
    let mut t = output::table(&["KIND", "SECRET", "ID", "SINK SEQ", "LEDGER SEQ"]);
    for d in differences {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        t.add_row(vec![
            text(&d["kind"]),
            match (d["name"].as_str(), d["private"] == true) {
                (Some(name), _) => name.to_owned(),
                (None, true) => "(another owner's private secret)".to_owned(),
                (None, false) => String::new(),
            },
            text(&d["id"]),
            text(&d["sink_seq"]),
            text(&d["target_seq"]),
        ]);
    }
    outln!("{sink}: {} object(s) differ\n{t}", differences.len());
}

fn print_applied(ctx: &Context, sink: &str, report: &Value) {
    let count = |field: &str| report[field].as_u64().unwrap_or(0);
    if ctx.json() {
        output::json_line(
            &json!({"sink": sink, "target_seq": report["target_seq"], "written": count("written"),
            "deleted": count("deleted"), "erased": count("erased"), "skipped": count("skipped"),
            "refused": count("refused")}),
        );
        return;
    }
    let left = count("skipped") + count("refused");
    let outcome = if left == 0 {
        format!("now at the state of seq {}", report["target_seq"])
    } else {
        format!("{left} object(s) left as they are (see below)")
    };
    let erased = match count("erased") {
        0 => String::new(),
        n => format!("{n} ahead of the ledger erased and rewritten, "),
    };
    outln!(
        "{sink}: {erased}{} written, {} deleted, {outcome}",
        count("written"),
        count("deleted")
    );
}

pub fn replay(ctx: &Context, args: ReplayArgs) -> Result<()> {
    let local = ctx.local("replay")?;
    let ledger = local.open_to_write()?;
    let seq = ledger.target_seq(target(&args.target)?)?;
    if args.into.contains("://") {
        refuse_memory(&SinkUrl::parse(&args.into)?)?;
    }
    let (sink, attached) = orchestrate::replay_target(&ledger, &args.into, args.dry_run)?;
    let desired = ledger.desired_at(seq)?;
    if !desired.purged_since.is_empty() && !ctx.json() {
        eprintln!(
            "note: purged since, cannot come back: {} (their values are destroyed); replaying the rest",
            desired
                .purged_since
                .iter()
                .map(|n| output::printable(n))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mode = Mode::unless_dry_run(args.dry_run, Mode::AllOrNothing);
    let bars = Bars::new(ctx);
    let mut show = bars.show(ctx);
    local.block_on(orchestrate::reconcile(
        attached.then_some(&ledger),
        &args.into,
        &*sink,
        &desired,
        mode,
        None,
        &bars.progress(),
        &mut |event| show(&event.to_json()),
    ))?;
    Ok(())
}

pub fn diff(ctx: &Context, args: DiffArgs) -> Result<()> {
    let bars = Bars::new(ctx);
    let differences = ctx
        .session
        .diff(&args.sink, target(&args.target)?, &bars.progress())?;
    drop(bars);
    render_differences(ctx, &args.sink, &differences);
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
    let bars = Bars::new(ctx);
    ctx.session.reconcile(
        &args.sink,
        args.force_ledger,
        &bars.progress(),
        &mut bars.show(ctx),
    )?;
    Ok(())
}

pub fn backup(ctx: &Context, args: BackupArgs) -> Result<()> {
    let bars = Bars::new(ctx);
    let emptied = ctx.session.backup(
        args.dry_run,
        args.delete_secrets,
        &bars.progress(),
        &mut bars.show(ctx),
    )?;
    drop(bars);
    match emptied {
        Some((primary, removed)) if ctx.json() => {
            let key = if args.dry_run { "would_delete" } else { "deleted" };
            output::json_line(&json!({"sink": primary, key: removed}));
        }
        Some((primary, removed)) if args.dry_run => {
            outln!("{primary}: would delete {removed} secret(s) once the backups hold them (a dry run: nothing deleted)");
        }
        Some((primary, removed)) => {
            outln!("{primary}: {removed} secret(s) deleted; reads fall back to the backup, `sledger restore` puts them back");
        }
        None => {}
    }
    Ok(())
}

pub fn restore(ctx: &Context, args: RestoreArgs) -> Result<()> {
    if args.target.at.is_none() && args.target.seq.is_none() {
        // No point in time: repair the primary from the ledger (a wiped or damaged primary).
        let local = ctx.local("restore without --at or --seq (repairing the primary)")?;
        let ledger = local.open_unlocked()?;
        let bars = Bars::new(ctx);
        let mut show = bars.show(ctx);
        local.block_on(orchestrate::repair_primary(
            &ledger,
            &local.actor,
            &args.secrets,
            args.dry_run,
            &bars.progress(),
            &mut |event| show(&event.to_json()),
        ))?;
        return Ok(());
    }
    let doc = ctx
        .session
        .restore(target(&args.target)?, &args.secrets, args.dry_run)?;
    let seq = doc["target_seq"].as_u64().unwrap_or_default();
    let purged: Vec<&str> = doc["purged"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !purged.is_empty() {
        eprintln!(
            "note: purged since, cannot come back: {} (their values are destroyed); restoring the rest",
            purged.join(", ")
        );
    }
    if doc["not_yours"].as_u64().unwrap_or(0) > 0 {
        eprintln!(
            "note: {} private secret(s) of other owners left alone",
            doc["not_yours"]
        );
    }
    if let Some(outcomes) = doc["outcomes"].as_array() {
        return render_writes(ctx, &format!("restored to seq {seq}:"), outcomes);
    }
    let steps = doc["steps"].as_array().cloned().unwrap_or_default();
    if ctx.json() {
        // Nothing to do is an answer too: a script reading no output cannot tell it from a crash.
        if steps.is_empty() {
            output::json_line(&json!({"target_seq": seq, "in_sync": true}));
        }
        for s in &steps {
            output::json_line(&json!({"name": s["name"], "actions": s["actions"], "target_seq": seq}));
        }
    } else if steps.is_empty() {
        outln!("nothing to restore: the state matches seq {seq}");
    } else {
        let mut t = output::table(&["SECRET", "WOULD"]);
        for s in &steps {
            let actions: Vec<&str> = s["actions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            t.add_row(vec![
                s["name"].as_str().unwrap_or_default().to_owned(),
                actions.join(", "),
            ]);
        }
        outln!("{t}");
    }
    Ok(())
}

pub fn migrate(ctx: &Context, args: MigrateArgs) -> Result<()> {
    let to = MigrateTo {
        to: args.to.clone(),
        name: args.name.clone(),
        delete_secrets: args.delete_secrets,
    };
    if args.to.contains("://") {
        refuse_memory(&SinkUrl::parse(&args.to)?)?;
    }
    if args.dry_run {
        let plan = ctx.session.plan_migration(&to)?;
        match ctx.json() {
            true => output::json_line(&plan),
            false => print_plan(plan),
        }
        return Ok(());
    }
    let bars = Bars::new(ctx);
    ctx.session
        .migrate(&to, &bars.progress(), &mut |step| match ctx.json() {
            true => output::json_line(&step),
            false => print_step(step),
        })?;
    Ok(())
}

fn print_plan(plan: MigratePlan) {
    match plan {
        MigratePlan::Attach { name, url } => {
            outln!("would attach {name} ({url}) as backup, catch it up, verify, promote it")
        }
        MigratePlan::Promote {
            name,
            role,
            differing,
            old,
        } => outln!(
            "would make {name} a backup (now {role}), catch up {differing} differing object(s), verify, promote it{}",
            old.map(|o| format!(", and make {o} a backup")).unwrap_or_default()
        ),
        MigratePlan::AlreadyPrimary { name } => outln!("{name} is the primary already; nothing to do"),
    }
}

fn print_step(step: MigrateStep) {
    match step {
        MigrateStep::Attached { name, was: None } => outln!("1/5 attached {name} as backup"),
        MigrateStep::Attached { name, was: Some(_) } => outln!("1/5 {name} is now a backup"),
        MigrateStep::CaughtUp { name, seq } => outln!("2/5 {name} caught up to seq {seq}"),
        MigrateStep::Verified { name, fixed } => {
            outln!("3/5 verified: {name} matches the ledger ({fixed} difference(s) fixed on the way)")
        }
        MigrateStep::Promoted { name, old } => outln!(
            "4/5 {name} is the primary{}",
            old.map(|o| format!("; {o} is a backup")).unwrap_or_default()
        ),
        MigrateStep::Emptied { old, removed } => {
            outln!("5/5 {removed} secret(s) deleted from {old}, now a standby")
        }
        MigrateStep::Done => outln!("5/5 done"),
        MigrateStep::AlreadyPrimary { name } => outln!("{name} is the primary already; nothing to do"),
    }
}
