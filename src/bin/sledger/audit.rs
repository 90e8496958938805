//! `sledger log` (the audit log, or the access log with --access) and the audit table shared
//! with `secret history`. Entries are rendered from their JSON documents, which a local ledger
//! and a server produce alike.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use sledger::access_log::AccessFilter;
use sledger::LogFilter;

use crate::cli::LogArgs;
use crate::context::Context;
use crate::output;
use crate::output::outln;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn changes(e: &Value) -> String {
    let mut parts: Vec<String> = e["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let key = text(&c["key"]);
            match (c["fingerprint"].as_str(), c["change"].as_str()) {
                (Some(fp), Some("added")) => format!("+{key} ({})", &fp[..12.min(fp.len())]),
                (Some(fp), _) => format!("~{key} ({})", &fp[..12.min(fp.len())]),
                (None, _) => format!("-{key}"),
            }
        })
        .collect();
    for c in e["label_changes"].as_array().into_iter().flatten() {
        let key = text(&c["key"]);
        parts.push(match (c["change"].as_str(), c["value"].as_str()) {
            (Some("added"), Some(v)) => format!("+label {key}={v}"),
            (_, Some(v)) => format!("~label {key}={v}"),
            (_, None) => format!("-label {key}"),
        });
    }
    if let Some(d) = e["detail"].as_str() {
        parts.push(d.to_owned());
    }
    parts.join(" ")
}

const HEADER: [&str; 7] = ["SEQ", "TIME", "ACTOR", "EVENT", "SECRET", "VERSION", "CHANGES"];

fn row(e: &Value) -> Vec<String> {
    vec![
        text(&e["seq"]),
        text(&e["time"]),
        text(&e["actor"]),
        text(&e["event_type"]),
        text(&e["name"]),
        text(&e["version"]),
        changes(e),
    ]
}

const ACCESS_HEADER: [&str; 9] = [
    "SEQ",
    "TIME",
    "PRINCIPAL",
    "ACTION",
    "OUTCOME",
    "SECRET",
    "VERSION",
    "SOURCE",
    "CLIENT",
];

fn access_row(e: &Value) -> Vec<String> {
    [
        "seq",
        "at",
        "principal",
        "action",
        "outcome",
        "secret",
        "version",
        "source",
        "client",
    ]
    .iter()
    .map(|field| match *field {
        "at" => e["at"].as_i64().map(output::time).unwrap_or_default(),
        field => text(&e[field]),
    })
    .collect()
}

/// Print documents as a table (people) or JSON lines (scripts).
fn table(ctx: &Context, header: &[&str], row: fn(&Value) -> Vec<String>, docs: &[Value]) {
    if ctx.json() {
        docs.iter().for_each(output::json_line);
        return;
    }
    let mut t = output::table(header);
    for d in docs {
        t.add_row(row(d));
    }
    outln!("{t}");
}

/// A stream of audit entries: a table or JSON lines.
fn events(ctx: &Context) -> output::Stream {
    output::Stream::new(ctx.json(), output::StreamFormat::JsonLines, &HEADER).cutting(&["CHANGES"])
}

/// Audit entries as a table or JSON lines.
pub fn render(ctx: &Context, entries: &[Value]) {
    let mut out = events(ctx);
    entries.iter().for_each(|e| out.push(e, row(e)));
    out.finish();
}

/// One line per document as it comes (following).
fn print_line(ctx: &Context, row: fn(&Value) -> Vec<String>, doc: &Value) {
    if ctx.json() {
        output::json_line(doc);
    } else {
        outln!("{}", row(doc).join("  "));
    }
    let _ = std::io::stdout().flush();
}

pub fn run(ctx: &Context, args: LogArgs, actor_filter: bool) -> Result<()> {
    let time = |flag: &str, t: &Option<String>| t.as_deref().map(|t| output::parse_time(flag, t)).transpose();
    if args.access {
        let filter = AccessFilter {
            principal: actor_filter.then(|| ctx.actor.clone()),
            after_seq: args.after_seq,
            limit: args.limit,
            ..Default::default()
        };
        return access(ctx, filter, args.tail, args.follow);
    }
    let filter = LogFilter {
        secret: args.secret.clone(),
        event_type: args.event_type.clone(),
        actor: actor_filter.then(|| ctx.actor.clone()),
        since: time("--since", &args.since)?,
        until: time("--until", &args.until)?,
        after_seq: args.after_seq,
        limit: args.limit,
        tail: args.tail,
        viewer: None,
    };
    let mut out = events(ctx);
    let mut show = |e: &Value| {
        if args.follow {
            print_line(ctx, row, e);
        } else {
            out.push(e, row(e));
        }
    };
    if args.follow && !ctx.json() {
        outln!("{}", HEADER.join("  "));
    }
    let last = ctx.session.log(&filter, &mut show)?;
    if !args.follow {
        out.finish();
        return Ok(());
    }
    // Following: one line per event, flushed as it comes, until interrupted.
    Ok(ctx
        .session
        .follow_log(&filter, last, &mut |e| print_line(ctx, row, e))?)
}

/// `log --access`: value reads, denied requests and failed authentications.
fn access(ctx: &Context, filter: AccessFilter, tail: Option<usize>, follow: bool) -> Result<()> {
    let fetch = |after: Option<u64>, limit: Option<usize>| -> Result<Vec<Value>> {
        let filter = AccessFilter {
            after_seq: after,
            limit,
            ..filter.clone()
        };
        Ok(ctx.session.access_log(&filter)?)
    };
    // Without --after-seq a limit is already the last N; after a seq it is the first N, so a
    // tail there keeps the end of what follows the seq.
    let shown = match (tail, filter.after_seq) {
        (Some(n), None) => fetch(None, Some(n))?,
        (Some(n), Some(after)) => {
            let mut rows = fetch(Some(after), None)?;
            rows.drain(..rows.len().saturating_sub(n));
            rows
        }
        (None, after) => fetch(after, filter.limit)?,
    };
    if !follow {
        table(ctx, &ACCESS_HEADER, access_row, &shown);
        return Ok(());
    }
    if !ctx.json() {
        outln!("{}", ACCESS_HEADER.join("  "));
    }
    let mut last = shown.last().and_then(|e| e["seq"].as_u64());
    shown.iter().for_each(|e| print_line(ctx, access_row, e));
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for e in fetch(last, None)? {
            last = e["seq"].as_u64().or(last);
            print_line(ctx, access_row, &e);
        }
    }
}
