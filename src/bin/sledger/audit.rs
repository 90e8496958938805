//! `sledger log` and the audit table shared with `secret history`.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use sledger::access_log::AccessEntry;
use sledger::event::EVENT_TYPES;
use sledger::{AuditEntry, Catalog};

use crate::cli::LogArgs;
use crate::context::Context;
use crate::exit::usage;
use crate::output;
use crate::output::outln;

fn changes(e: &AuditEntry) -> String {
    let mut parts: Vec<String> = e
        .changes
        .iter()
        .map(|c| match (&c.fingerprint, c.change) {
            (Some(fp), "added") => format!("+{} ({})", c.key, &fp[..12]),
            (Some(fp), _) => format!("~{} ({})", c.key, &fp[..12]),
            (None, _) => format!("-{}", c.key),
        })
        .collect();
    if let Some(d) = &e.detail {
        parts.push(d.clone());
    }
    parts.join(" ")
}

fn entry_json(e: &AuditEntry) -> serde_json::Value {
    let mut v = serde_json::to_value(e).expect("audit entries serialise");
    v["time"] = json!(output::time(e.recorded_at));
    v
}

fn row(e: &AuditEntry) -> Vec<String> {
    vec![
        e.seq.to_string(),
        output::time(e.recorded_at),
        e.actor.clone(),
        e.event_type.clone(),
        e.name.clone().unwrap_or_default(),
        e.version.map(|v| v.to_string()).unwrap_or_default(),
        changes(e),
    ]
}

const HEADER: [&str; 7] = ["SEQ", "TIME", "ACTOR", "EVENT", "SECRET", "VERSION", "CHANGES"];

/// Print entries as a table (people) or JSON lines (scripts).
pub fn render(ctx: &Context, entries: &[AuditEntry]) {
    if ctx.json() {
        for e in entries {
            output::json_line(&entry_json(e));
        }
        return;
    }
    let mut t = output::table(&HEADER);
    for e in entries {
        t.add_row(row(e));
    }
    outln!("{t}");
}

/// `log --access`: the access log, oldest first (the last N with --limit), optionally
/// filtered by principal (--actor) and followed.
fn access(ctx: &Context, args: &LogArgs, actor_filter: bool) -> Result<()> {
    let ledger = ctx.open()?;
    let principal = actor_filter.then(|| ctx.actor.clone());
    let keep = |e: &AccessEntry| principal.as_ref().is_none_or(|p| &e.record.principal == p);
    let print_row = |e: &AccessEntry| {
        let r = &e.record;
        vec![
            e.seq.to_string(),
            output::time(r.at),
            r.principal.clone(),
            r.action.clone(),
            r.outcome.as_str().to_owned(),
            r.secret.clone().unwrap_or_default(),
            r.version.map(|v| v.to_string()).unwrap_or_default(),
            r.source.clone().unwrap_or_default(),
            r.client.clone().unwrap_or_default(),
        ]
    };
    const ACCESS_HEADER: [&str; 9] = ["SEQ", "TIME", "PRINCIPAL", "ACTION", "OUTCOME", "SECRET", "VERSION", "SOURCE", "CLIENT"];
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut shown: VecDeque<AccessEntry> = VecDeque::new();
    let mut last = 0;
    ledger.access_log(0, &mut |e| {
        last = e.seq;
        if keep(&e) && limit > 0 {
            if shown.len() == limit {
                shown.pop_front();
            }
            shown.push_back(e);
        }
        Ok(true)
    })?;
    let print = |e: &AccessEntry| {
        if ctx.json() {
            output::json_line(e);
        } else {
            outln!("{}", print_row(e).join("  "));
        }
        let _ = std::io::stdout().flush();
    };
    if !args.follow {
        if ctx.json() {
            shown.iter().for_each(print);
        } else {
            let mut t = output::table(&ACCESS_HEADER);
            for e in &shown {
                t.add_row(print_row(e));
            }
            outln!("{t}");
        }
        return Ok(());
    }
    if !ctx.json() {
        outln!("{}", ACCESS_HEADER.join("  "));
    }
    shown.iter().for_each(print);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        ledger.access_log(last, &mut |e| {
            last = e.seq;
            if keep(&e) {
                print(&e);
            }
            Ok(true)
        })?;
    }
}

pub fn run(ctx: &Context, args: LogArgs, actor_filter: bool) -> Result<()> {
    if args.access {
        return access(ctx, &args, actor_filter);
    }
    if let Some(t) = &args.event_type {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(usage(format!(
                "unknown event type {t:?}; known types: {}",
                EVENT_TYPES.join(", ")
            )));
        }
    }
    let since = args
        .since
        .as_deref()
        .map(|t| output::parse_time("--since", t))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|t| output::parse_time("--until", t))
        .transpose()?;
    let ledger = ctx.open()?;
    let secret = args
        .secret
        .as_deref()
        .map(|name| ledger.history(&ctx.actor, name))
        .transpose()?;
    let secret_id = secret.and_then(|h| h.first().and_then(|e| e.secret_id));
    let actor = actor_filter.then(|| ctx.actor.clone());
    let keep = |e: &AuditEntry| {
        secret_id.is_none_or(|id| e.secret_id == Some(id))
            && actor.as_ref().is_none_or(|a| &e.actor == a)
            && args.event_type.as_ref().is_none_or(|t| &e.event_type == t)
            && since.is_none_or(|s| e.recorded_at >= s)
            && until.is_none_or(|u| e.recorded_at <= u)
    };

    let mut catalog = Catalog::default();
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut shown: VecDeque<AuditEntry> = VecDeque::new();
    ledger.audit(&mut catalog, &mut |e| {
        if keep(&e) {
            if shown.len() == limit {
                shown.pop_front();
            }
            if limit > 0 {
                shown.push_back(e);
            }
        }
        Ok(true)
    })?;
    let shown: Vec<_> = shown.into();
    if !args.follow {
        render(ctx, &shown);
        return Ok(());
    }
    // Following: one line per event, flushed as it comes, until interrupted.
    let print = |e: &AuditEntry| {
        if ctx.json() {
            output::json_line(&entry_json(e));
        } else {
            outln!("{}", row(e).join("  "));
        }
        let _ = std::io::stdout().flush();
    };
    if !ctx.json() {
        outln!("{}", HEADER.join("  "));
    }
    shown.iter().for_each(print);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        ledger.audit(&mut catalog, &mut |e| {
            if keep(&e) {
                print(&e);
            }
            Ok(true)
        })?;
    }
}
