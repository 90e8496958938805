//! `sledger sink …` and `sledger project`.

use std::time::Duration;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use sledger::event::SinkRole;
use sledger::project::service::{self, FollowOptions, ProjectorEvent};
use sledger::project::{self, ProjectOptions};
use sledger::session::Local;
use sledger::sink::{Backend, SinkUrl};
use sledger::{Command, Ledger};

use crate::cli::{ProjectArgs, SinkCmd};
use crate::context::Context;
use crate::output;
use crate::output::outln;

/// A memory:// sink lives inside one process: refused where the next command would find it empty.
pub fn refuse_memory(url: &SinkUrl) -> Result<()> {
    match url.backend {
        Backend::Memory { .. } => Err(crate::exit::usage(
            "a memory:// sink lives inside one process and would be empty for the next command; \
             use sqlite:///PATH or exec:///PROGRAM",
        )),
        _ => Ok(()),
    }
}

/// Apply a sink command, locally or through the server, and say what changed.
fn change(ctx: &Context, command: Command, verb: &str, name: &str) -> Result<()> {
    let changed = ctx.session.change_sink(command)?;
    if ctx.json() {
        output::json_line(&json!({"sink": name, "result": if changed { verb } else { "unchanged" }}));
    } else if changed {
        outln!("sink {name} {verb}");
    } else {
        outln!("sink {name} unchanged");
    }
    Ok(())
}

pub fn run(ctx: &Context, cmd: SinkCmd) -> Result<()> {
    match cmd {
        SinkCmd::Add { name, url, role } => {
            refuse_memory(&SinkUrl::parse(&url)?)?;
            let add = Command::AddSink {
                name: name.clone(),
                url,
                role: role.into(),
            };
            change(ctx, add, "added", &name)?;
            if !ctx.json() && SinkRole::from(role).is_projected() && !ctx.session.is_remote() {
                outln!("run `sledger project` to bring it up to date");
            }
            Ok(())
        }
        SinkCmd::Promote { name } => change(
            ctx,
            Command::PromoteSink { name: name.clone() },
            "promoted to primary",
            &name,
        ),
        SinkCmd::SetRole { name, role } => change(
            ctx,
            Command::SetSinkRole {
                name: name.clone(),
                role: role.into(),
            },
            &format!("is now {}", SinkRole::from(role)),
            &name,
        ),
        SinkCmd::Remove { name } => change(ctx, Command::RemoveSink { name: name.clone() }, "removed", &name),
        SinkCmd::List => list(ctx),
        SinkCmd::Status => status(ctx),
        SinkCmd::Retry { name } => {
            let doc = ctx.session.retry_sink(&name)?;
            if ctx.json() {
                output::json_line(&doc);
            } else {
                outln!(
                    "sink {name}: {} parked events applied, {} still parked",
                    doc["applied"],
                    doc["still_parked"]
                );
            }
            Ok(())
        }
        SinkCmd::Check { name } => {
            let identity = ctx.session.check_sink(&name)?;
            if ctx.json() {
                output::json_line(&json!({"sink": name, "healthy": true, "identity": identity}));
            } else {
                match identity.as_str() {
                    Some(identity) => outln!("sink {name} is reachable, as {identity}"),
                    None => outln!("sink {name} is reachable"),
                }
            }
            Ok(())
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn list(ctx: &Context) -> Result<()> {
    let sinks = ctx.session.sink_statuses()?;
    if ctx.json() {
        let rows: Vec<_> = sinks
            .iter()
            .map(|s| json!({"name": s["name"], "role": s["role"], "url": s["url"]}))
            .collect();
        output::json_line(&rows);
        return Ok(());
    }
    let mut t = output::table(&["NAME", "ROLE", "URL"]);
    for s in &sinks {
        t.add_row(vec![text(&s["name"]), text(&s["role"]), text(&s["url"])]);
    }
    outln!("{t}");
    Ok(())
}

fn status(ctx: &Context) -> Result<()> {
    let statuses = ctx.session.sink_statuses()?;
    if ctx.json() {
        output::json_line(&statuses);
        return Ok(());
    }
    let mut t = output::table(&[
        "NAME",
        "ROLE",
        "AS",
        "CHECKPOINT",
        "LAG",
        "PARKED",
        "PROJECTED BY",
        "LAST ERROR",
    ]);
    for s in &statuses {
        let error = match (s["last_error"].as_str(), s["last_error_at"].as_i64()) {
            (Some(e), Some(at)) => format!("{e} (at {})", output::time(at)),
            (Some(e), None) => e.to_owned(),
            _ => String::new(),
        };
        let lag = if s["role"] == "standby" {
            "-".into()
        } else {
            text(&s["lag"])
        };
        t.add_row(vec![
            text(&s["name"]),
            text(&s["role"]),
            text(&s["identity"]),
            text(&s["checkpoint"]),
            lag,
            text(&s["parked"]),
            text(&s["projected_by"]),
            error,
        ]);
    }
    outln!("{t}");
    Ok(())
}

pub fn project_cmd(ctx: &Context, args: ProjectArgs) -> Result<()> {
    let local = ctx.local("project")?;
    let ledger = local.open_unlocked()?;
    let opts = ProjectOptions {
        batch_events: args.batch_events,
        ..Default::default()
    };
    if args.follow {
        drop(ledger);
        return follow(ctx, local, args.sink.as_deref(), opts);
    }
    let only = args.sink.as_deref();
    let results = local.block_on(with_progress(
        ctx,
        &ledger,
        only,
        project::project_all(&ledger, only, &opts),
    ))?;
    let mut first_error = None;
    let mut t = output::table(&["SINK", "EVENTS", "WRITES", "PARKED", "CHECKPOINT", "LAG", "ERROR"]);
    for (name, result) in results {
        let head = ledger.head()?.seq;
        let checkpoint = ledger.checkpoint(&name)?;
        let (events, writes, parked, error) = match &result {
            Ok(r) => (r.events, r.writes, r.parked, String::new()),
            Err(e) => (0, 0, 0, e.to_string()),
        };
        if ctx.json() {
            output::json_line(
                &json!({"sink": name, "events": events, "writes": writes, "parked": parked,
                "checkpoint": checkpoint, "lag": head - checkpoint, "error": result.as_ref().err().map(|e| e.to_string())}),
            );
        } else {
            t.add_row(vec![
                name.clone(),
                events.to_string(),
                writes.to_string(),
                parked.to_string(),
                checkpoint.to_string(),
                (head - checkpoint).to_string(),
                error,
            ]);
        }
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    if !ctx.json() {
        outln!("{t}");
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Run `work` while a progress bar per lagging sink follows its checkpoint (people only;
/// indicatif draws nothing when stderr is not a terminal).
async fn with_progress<T>(
    ctx: &Context,
    ledger: &Ledger,
    only: Option<&str>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let lagging: Vec<(String, u64)> = match ledger.sink_status() {
        Ok(status) if !ctx.json() => status
            .into_iter()
            .filter(|s| s.lag > 0 && only.is_none_or(|o| o == s.name))
            .map(|s| (s.name, s.checkpoint))
            .collect(),
        _ => Vec::new(),
    };
    if lagging.is_empty() {
        return work.await;
    }
    let head = ledger.head().map(|h| h.seq).unwrap_or(0);
    let bars = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:>12} {bar:30} {pos}/{len} events ({per_sec}, eta {eta})")
            .expect("valid template");
    let tracked: Vec<(String, u64, ProgressBar)> = lagging
        .into_iter()
        .map(|(name, start)| {
            let bar = bars.add(
                ProgressBar::new(head - start)
                    .with_style(style.clone())
                    .with_prefix(name.clone()),
            );
            (name, start, bar)
        })
        .collect();
    let tick = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for (name, start, bar) in &tracked {
                if let Ok(checkpoint) = ledger.checkpoint(name) {
                    bar.set_position(checkpoint.saturating_sub(*start));
                }
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        _ = tick => unreachable!("the ticker never ends"),
    };
    for (_, _, bar) in &tracked {
        bar.finish_and_clear();
    }
    result
}

/// Project continuously until SIGINT or SIGTERM: one projector per sink, so a backend that
/// hangs delays only itself; a signal abandons the batches in flight and exits at once.
fn follow(ctx: &Context, local: &Local, only: Option<&str>, opts: ProjectOptions) -> Result<()> {
    let master = local.master_key()?;
    let options = FollowOptions {
        project: opts,
        only: only.map(str::to_owned),
        ..Default::default()
    };
    let json = ctx.json();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    local.block_on(async {
        tokio::spawn(async move {
            crate::context::terminated().await;
            let _ = stop.send(true);
        });
        service::follow_across_rotations(&local.ledger, &master, local.key_reloader(), options, stopped, move |event| match event {
            ProjectorEvent::Projected { sink, report } if json => output::json_line(
                &json!({"sink": sink, "events": report.events, "writes": report.writes, "checkpoint": report.checkpoint}),
            ),
            ProjectorEvent::Projected { sink, report } => outln!(
                "{sink}: {}, {}, checkpoint {}",
                output::count(report.events, "event"),
                output::count(report.writes, "write"),
                report.checkpoint
            ),
            ProjectorEvent::Failed { sink, error } => {
                eprintln!("{sink}: {} (retrying)", error.without_sink_name())
            }
        })
        .await
    })?;
    if !json {
        outln!("stopped");
    }
    Ok(())
}
