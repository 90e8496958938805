//! `sledger secret …`

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::json;
use sledger::read::{read_latest, ReadFrom, Served};
use sledger::{Command, Outcome, ReadPoint, Scope, SecretMeta, SecretValues, Status};
use zeroize::Zeroizing;

use crate::cli::{FromArg, SecretCmd, ValueArgs};
use crate::context::{block_on, Context};
use crate::exit::usage;
use crate::output;
use crate::output::outln;
use sledger::project::PrimaryWait;

/// Split `K=V` at the first `=`.
fn split_pair<'a>(flag: &str, text: &'a str) -> Result<(&'a str, &'a str)> {
    text.split_once('=')
        .ok_or_else(|| usage(format!("{flag} expects KEY=VALUE, got an argument without '='")))
}

pub fn parse_labels(flag: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in pairs {
        let (k, v) = split_pair(flag, pair)?;
        if labels.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(usage(format!("label {k:?} is given more than once")));
        }
    }
    Ok(labels)
}

fn read_source(path: &Path) -> Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read values from stdin")?;
    } else {
        let bytes =
            Zeroizing::new(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?);
        text.push_str(std::str::from_utf8(&bytes).map_err(|_| {
            usage(format!(
                "{} is not UTF-8 text; values must be text",
                path.display()
            ))
        })?);
    }
    Ok(text)
}

/// Gather values from --value, --value-file and --values-json; a key given twice is an error.
fn collect_values(args: &ValueArgs) -> Result<SecretValues> {
    let mut values = SecretValues::new();
    let mut add = |key: &str, value: &str| -> Result<()> {
        if values.insert(key, value) {
            return Err(sledger::Error::DuplicateValueKey { key: key.to_owned() }.into());
        }
        Ok(())
    };
    for pair in &args.values {
        let (k, v) = split_pair("--value", pair)?;
        add(k, v)?;
    }
    for pair in &args.value_files {
        let (k, path) = split_pair("--value-file", pair)?;
        let mut text = read_source(Path::new(path))?;
        // A trailing newline from `echo` or an editor is never part of a password.
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        add(k, &text)?;
    }
    if let Some(path) = &args.values_json {
        let text = read_source(path)?;
        let map: BTreeMap<String, Zeroizing<String>> = serde_json::from_str(&text).map_err(|e| {
            usage(format!(
                "--values-json {} must be a JSON object of string values ({} at line {}, column {})",
                path.display(),
                e.classify_kind(),
                e.line(),
                e.column()
            ))
        })?;
        for (k, v) in &map {
            add(k, v)?;
        }
    }
    Ok(values)
}

trait ClassifyKind {
    fn classify_kind(&self) -> &'static str;
}

impl ClassifyKind for serde_json::Error {
    /// The error category only: serde_json's message can quote the input, which may be a secret.
    fn classify_kind(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "not an object of strings",
            serde_json::error::Category::Eof => "unexpected end",
        }
    }
}

pub fn meta_json(m: &SecretMeta) -> serde_json::Value {
    m.to_json()
}

/// Report what a write did, and whether the primary has applied it.
pub fn render_outcomes(ctx: &Context, verb: &str, outcomes: &[Outcome], primary: Option<&PrimaryWait>) {
    if let Some(p) = primary.filter(|p| p.lag > 0 && !ctx.json()) {
        eprintln!(
            "note: the write is durable in the ledger, but primary sink {:?} is behind by {} event{}{}; \
             `sledger project` catches it up",
            p.name,
            p.lag,
            if p.lag == 1 { "" } else { "s" },
            p.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    if let Some(p) = primary.filter(|p| p.parked > 0 && !ctx.json()) {
        eprintln!(
            "note: primary sink {:?} refused {} secret{}: reads of {} fall back to other sources; \
             `sledger sink status` shows why, `sledger sink retry {}` re-applies them",
            p.name,
            p.parked,
            if p.parked == 1 { "" } else { "s" },
            if p.parked == 1 { "it" } else { "them" },
            p.name
        );
    }
    for o in outcomes {
        let (secret, seq, changed) = match o {
            Outcome::Appended { seq, secret, .. } => (secret, Some(*seq), true),
            Outcome::Unchanged { secret } => (secret, None, false),
            Outcome::SinkChanged { .. } | Outcome::Recorded { .. } => continue,
        };
        if ctx.json() {
            let mut v = meta_json(secret);
            v["result"] = json!(if changed { verb } else { "unchanged" });
            v["seq"] = json!(seq);
            if let Some(p) = primary {
                v["primary"] = json!({"name": p.name, "lag": p.lag, "parked": p.parked, "error": p.error});
            }
            output::json_line(&v);
        } else if changed {
            outln!(
                "{verb} {} (version {}, seq {})",
                secret.name,
                secret.version,
                seq.unwrap_or_default()
            );
        } else {
            outln!(
                "{} unchanged (version {}): nothing to record",
                secret.name,
                secret.version
            );
        }
    }
}

pub fn run(ctx: &Context, cmd: SecretCmd) -> Result<()> {
    let write = |verb: &str, command: Command| -> Result<()> {
        let mut ledger = ctx.open_unlocked()?;
        let outcomes = ledger.execute(&ctx.actor, vec![command])?;
        let primary = ctx.wait_for_primary(&ledger)?;
        render_outcomes(ctx, verb, &outcomes, primary.as_ref());
        Ok(())
    };
    match cmd {
        SecretCmd::Create {
            name,
            values,
            labels,
            private,
        } => write(
            "created",
            Command::Create {
                name,
                scope: if private { Scope::Private } else { Scope::Workspace },
                labels: parse_labels("--label", &labels)?,
                values: collect_values(&values)?,
            },
        ),
        SecretCmd::Update {
            name,
            values,
            remove_keys,
            labels,
            remove_labels,
        } => {
            let set_values = collect_values(&values)?;
            let set_labels = parse_labels("--label", &labels)?;
            if set_values.is_empty()
                && remove_keys.is_empty()
                && set_labels.is_empty()
                && remove_labels.is_empty()
            {
                return Err(usage(
                    "nothing to update: give --value, --value-file, --values-json, --remove-key, --label or --remove-label",
                ));
            }
            write(
                "updated",
                Command::Update {
                    name,
                    set_values,
                    remove_keys,
                    set_labels,
                    remove_labels,
                },
            )
        }
        SecretCmd::Rename { old, new } => write(
            "renamed",
            Command::Rename {
                name: old,
                new_name: new,
            },
        ),
        SecretCmd::Delete { name } => write("deleted", Command::Delete { name }),
        SecretCmd::Undelete { name } => write("restored", Command::Undelete { name }),
        SecretCmd::Purge { name, yes } => {
            if !yes {
                return Err(usage(format!(
                    "purge destroys every version of {name:?} for good; run again with --yes to confirm"
                )));
            }
            write("purged", Command::Purge { name })
        }
        SecretCmd::Get {
            name,
            key,
            version,
            at,
            from,
        } => get(ctx, &name, key.as_deref(), version, at.as_deref(), from),
        SecretCmd::List { labels, deleted } => list(ctx, &labels, deleted),
        SecretCmd::History { name } => history(ctx, &name),
    }
}

fn get(
    ctx: &Context,
    name: &str,
    key: Option<&str>,
    version: Option<u32>,
    at: Option<&str>,
    from: Option<FromArg>,
) -> Result<()> {
    let ledger = ctx.open_unlocked()?;
    let served = match (version, at) {
        (Some(v), _) => Served::from_ledger(ledger.read(&ctx.actor, name, ReadPoint::Version(v))?),
        (None, Some(t)) => Served::from_ledger(ledger.read(
            &ctx.actor,
            name,
            ReadPoint::At(output::parse_time("--at", t)?),
        )?),
        (None, None) => {
            let from = match from {
                None => ReadFrom::Auto,
                Some(FromArg::Primary) => ReadFrom::Primary,
                Some(FromArg::Backup) => ReadFrom::Backup,
                Some(FromArg::Ledger) => ReadFrom::Ledger,
            };
            block_on(read_latest(&ledger, &ctx.actor, name, from))?
        }
    };
    for (sink, why) in &served.skipped {
        tracing::info!(sink = %sink, reason = %why, "read fell through to the next source");
    }
    let read = &served.read;
    if let Some(k) = key {
        let value = read.values.get(k).ok_or_else(|| {
            sledger::Error::NotFound(format!(
                "secret {name:?} version {} has no key {k:?}; its keys are: {}",
                read.version,
                read.values.keys().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if ctx.json() {
            output::json_line(
                &json!({"name": read.meta.name, "version": read.version, "key": k, "value": value,
                "source": served.source, "lagging": served.lagging}),
            );
        } else {
            outln!("{value}");
            note_source(&served);
        }
        return Ok(());
    }
    if ctx.json() {
        let values: BTreeMap<&str, &str> = read.values.iter().collect();
        output::json_line(&json!({
            "name": read.meta.name,
            "id": read.meta.id,
            "scope": read.meta.scope,
            "version": read.version,
            "seq": read.seq,
            "recorded_at": output::time(read.recorded_at),
            "labels": read.meta.labels,
            "source": served.source,
            "lagging": served.lagging,
            "skipped": served.skipped.iter().map(|(s, why)| json!({"sink": s, "reason": why})).collect::<Vec<_>>(),
            "values": values,
        }));
    } else {
        let lag = if served.lagging { ", behind the ledger" } else { "" };
        outln!(
            "{} (version {}, seq {}, {}; source: {}{lag})",
            read.meta.name,
            read.version,
            read.seq,
            output::time(read.recorded_at),
            served.source
        );
        let mut t = output::table(&["KEY", "VALUE"]);
        // Never wrap a value: a token broken across lines is a broken token when copied.
        t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        for (k, v) in read.values.iter() {
            t.add_row(vec![k, v]);
        }
        outln!("{t}");
        note_source(&served);
    }
    Ok(())
}

/// Say on stderr when a read did not come from the first choice (stdout stays just the value).
fn note_source(served: &Served) {
    for (sink, why) in &served.skipped {
        eprintln!("note: sink {sink:?} could not serve this read: {why}");
    }
    if served.lagging {
        eprintln!(
            "note: {} holds an older version than the ledger; `sledger project` catches it up",
            served.source
        );
    }
}

fn list(ctx: &Context, labels: &[String], deleted: bool) -> Result<()> {
    let wanted = parse_labels("--label", labels)?;
    let ledger = ctx.open()?;
    let status = if deleted { Status::Deleted } else { Status::Live };
    let secrets: Vec<_> = ledger
        .list(&ctx.actor, status)?
        .into_iter()
        .filter(|m| wanted.iter().all(|(k, v)| m.labels.get(k) == Some(v)))
        .collect();
    if ctx.json() {
        output::json_line(&secrets.iter().map(meta_json).collect::<Vec<_>>());
        return Ok(());
    }
    let mut t = output::table(&["NAME", "SCOPE", "VERSION", "KEYS", "LABELS", "UPDATED"]);
    for m in &secrets {
        t.add_row(vec![
            m.name.clone(),
            m.scope.to_string(),
            m.version.to_string(),
            m.fingerprints.keys().cloned().collect::<Vec<_>>().join(","),
            output::labels(&m.labels),
            output::time(m.updated_at),
        ]);
    }
    outln!("{t}");
    Ok(())
}

fn history(ctx: &Context, name: &str) -> Result<()> {
    let ledger = ctx.open()?;
    let entries = ledger.history(&ctx.actor, name)?;
    crate::audit::render(ctx, &entries);
    Ok(())
}
