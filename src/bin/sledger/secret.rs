//! `sledger secret …`

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use sledger::project::PrimaryWait;
use sledger::read::ReadFrom;
use sledger::{Command, ListQuery, ReadPoint, Scope, SecretValues, Status};
use zeroize::Zeroizing;

use crate::cli::{FromArg, SecretCmd, ValueArgs};
use crate::context::Context;
use crate::exit::usage;
use crate::output;
use crate::output::outln;

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
    // Standard input can be read once: the second reader would get nothing.
    let stdin_readers: Vec<String> = args
        .value_files
        .iter()
        .map(|p| ("--value-file", p))
        .chain(args.raw_value_files.iter().map(|p| ("--value-file-raw", p)))
        .filter(|(_, pair)| pair.split_once('=').is_some_and(|(_, path)| path == "-"))
        .map(|(flag, pair)| format!("{flag} {pair}"))
        .chain(
            args.values_json
                .iter()
                .filter(|p| *p == Path::new("-"))
                .map(|_| "--values-json -".into()),
        )
        .collect();
    if stdin_readers.len() > 1 {
        return Err(usage(format!(
            "{} all read standard input, which can be read once; give the others from files",
            stdin_readers.join(", ")
        )));
    }
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
    for pair in &args.raw_value_files {
        let (k, path) = split_pair("--value-file-raw", pair)?;
        add(k, &read_source(Path::new(path))?)?;
    }
    if let Some(path) = &args.values_json {
        let text = read_source(path)?;
        let pairs: JsonPairs = serde_json::from_str(&text).map_err(|e| {
            usage(format!(
                "--values-json {} must be a JSON object of string values ({} at line {}, column {})",
                path.display(),
                e.classify_kind(),
                e.line(),
                e.column()
            ))
        })?;
        for (k, v) in &pairs.0 {
            add(k, v)?;
        }
    }
    Ok(values)
}

/// A JSON object of strings with every member kept, so that a key given twice is refused (as
/// for `--value`) instead of silently keeping the last.
struct JsonPairs(Vec<(String, Zeroizing<String>)>);

impl<'de> serde::Deserialize<'de> for JsonPairs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = JsonPairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<JsonPairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, Zeroizing<String>>()? {
                    pairs.push(pair);
                }
                Ok(JsonPairs(pairs))
            }
        }
        deserializer.deserialize_map(Members)
    }
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

/// Report what a write did, and whether the primary has applied it: one document per changed
/// secret (the same for a local ledger and a server). A write the primary applied but did not
/// take (it keeps a record beyond the ledger's head) is an error, after the documents.
pub fn render_writes(ctx: &Context, verb: &str, docs: &[Value]) -> Result<()> {
    let primary: Option<PrimaryWait> = docs
        .first()
        .and_then(|d| serde_json::from_value(d["primary"].clone()).ok());
    // Notes only when the write waited (`--wait 0` asked not to) and its own event is not
    // applied; other writers' later events are not this write's business.
    let notes = !ctx.json() && !ctx.session.wait().is_zero();
    if let Some(p) = primary.as_ref().filter(|p| !p.applied && notes) {
        eprintln!(
            "note: the write is durable in the ledger, but primary sink {:?} is behind by {} event{}{}; {}",
            p.name,
            p.lag,
            if p.lag == 1 { "" } else { "s" },
            p.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
            ctx.catch_up_hint()
        );
    }
    if let Some((p, error)) = primary
        .as_ref()
        .filter(|p| p.applied && notes)
        .and_then(|p| Some((p, p.error.as_deref()?)))
    {
        eprintln!(
            "note: the write is durable in the ledger and primary sink {:?} applied it, but it cannot be read back now ({error}); \
             `sledger sink status` shows its state",
            p.name
        );
    }
    if let Some(p) = primary.as_ref().filter(|p| !p.stale.is_empty() && notes) {
        eprintln!(
            "note: primary sink {:?} applied the write, but {}: something beside sledger holds the object, \
             or the backend has not caught up yet; `sledger diff {}` shows what it holds",
            p.name,
            p.stale.join("; "),
            p.name
        );
    }
    if let Some(p) = primary.as_ref().filter(|p| p.parked > 0 && notes) {
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
    for doc in docs {
        if ctx.json() {
            output::json_line(doc);
        } else if doc["result"] != "unchanged" {
            outln!(
                "{verb} {} (version {}, seq {})",
                doc["name"].as_str().unwrap_or_default(),
                doc["version"],
                doc["seq"]
            );
        } else {
            outln!(
                "{} unchanged (version {}): nothing to record",
                doc["name"].as_str().unwrap_or_default(),
                doc["version"]
            );
        }
    }
    match primary.and_then(|p| p.shadowing()) {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}

pub fn run(ctx: &Context, cmd: SecretCmd) -> Result<()> {
    // `said` is the verb people read (a rename names both names); scripts get `verb`.
    let write_saying = |verb: &str, said: &str, command: Command| -> Result<()> {
        render_writes(ctx, said, &ctx.session.write(verb, command)?)
    };
    let write = |verb: &str, command: Command| write_saying(verb, verb, command);
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
        SecretCmd::Rename { old, new } => write_saying(
            "renamed",
            &format!("renamed {} →", output::printable(&old)),
            Command::Rename {
                name: old,
                new_name: new,
            },
        ),
        SecretCmd::Delete { name } => write("deleted", Command::Delete { name }),
        SecretCmd::Undelete { name, as_name: None } => {
            let hint = format!(
                "its name is taken; `sledger secret undelete {} --as NEW` brings it back under another",
                output::printable(&name)
            );
            write("undeleted", Command::Undelete { name }).map_err(|e| {
                match e.downcast_ref::<sledger::Error>() {
                    Some(sledger::Error::AlreadyExists { .. }) => e.context(hint),
                    _ => e,
                }
            })
        }
        SecretCmd::Undelete {
            name,
            as_name: Some(new_name),
        } => undelete_as(ctx, &name, new_name),
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
        SecretCmd::List {
            labels,
            deleted,
            prefix,
            limit,
            after,
        } => {
            let query = ListQuery {
                labels: parse_labels("--label", &labels)?,
                prefix,
                after,
                ..ListQuery::new(if deleted { Status::Deleted } else { Status::Live })
            };
            list(ctx, query, limit)
        }
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
    let from = match from {
        None => ReadFrom::Auto,
        Some(FromArg::Primary) => ReadFrom::Primary,
        Some(FromArg::Backup) => ReadFrom::Backup,
        Some(FromArg::Ledger) => ReadFrom::Ledger,
    };
    let point = match (version, at) {
        (Some(v), _) => Some(ReadPoint::Version(v)),
        (None, Some(t)) => Some(ReadPoint::At(output::parse_time("--at", t)?)),
        (None, None) => None,
    };
    let doc = ctx.session.read(name, point, from)?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    if let Some(k) = key {
        let value = doc["values"].get(k).and_then(Value::as_str).ok_or_else(|| {
            let keys: Vec<&str> = doc["values"]
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            sledger::Error::NotFound(format!(
                "secret {name:?} version {} has no key {k:?}; its keys are: {}",
                doc["version"],
                keys.join(", ")
            ))
        })?;
        if ctx.json() {
            output::json_line(
                &json!({"name": doc["name"], "version": doc["version"], "key": k, "value": value,
                "source": doc["source"], "lagging": doc["lagging"]}),
            );
        } else {
            outln!("{value}");
            note_source(ctx, &doc);
        }
        return Ok(());
    }
    if ctx.json() {
        output::json_line(&doc);
        return Ok(());
    }
    let lag = if doc["lagging"] == true {
        ", behind the ledger"
    } else {
        ""
    };
    outln!(
        "{} (version {}, seq {}, {}; source: {}{lag})",
        text(&doc["name"]),
        doc["version"],
        doc["seq"],
        text(&doc["recorded_at"]),
        source_text(&doc["source"])
    );
    if let Some(labels) = doc["labels"].as_object().filter(|l| !l.is_empty()) {
        let shown: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        outln!("labels: {}", output::printable(&shown.join(", ")));
    }
    let mut t = output::table(&["KEY", "VALUE"]);
    t.without_wrapping();
    for (k, v) in doc["values"].as_object().into_iter().flatten() {
        t.add_row(vec![k.as_str(), v.as_str().unwrap_or_default()]);
    }
    outln!("{t}");
    note_source(ctx, &doc);
    Ok(())
}

/// "primary sink local", "ledger": where a read came from, as people read it.
fn source_text(source: &Value) -> String {
    match source["kind"].as_str() {
        Some("sink") => format!(
            "{} sink {}",
            source["role"].as_str().unwrap_or_default(),
            source["name"].as_str().unwrap_or_default()
        ),
        _ => "ledger".into(),
    }
}

/// Say on stderr when a read did not come from the first choice (stdout stays just the value).
fn note_source(ctx: &Context, doc: &Value) {
    for skipped in doc["skipped"].as_array().into_iter().flatten() {
        eprintln!(
            "note: sink {:?} could not serve this read: {}",
            skipped["sink"].as_str().unwrap_or_default(),
            skipped["reason"].as_str().unwrap_or_default()
        );
    }
    if doc["lagging"] == true {
        eprintln!(
            "note: {} holds an older version than the ledger; {}",
            source_text(&doc["source"]),
            ctx.catch_up_hint()
        );
    }
}

/// `undelete NAME --as NEW`: the deleted secret renamed and brought back, in one transaction.
fn undelete_as(ctx: &Context, name: &str, new_name: String) -> Result<()> {
    let sledger::session::Session::Local(local) = &ctx.session else {
        return Err(usage(
            "undelete --as works on a local ledger; through a server, rename the secret by its id (id:UUID) first",
        ));
    };
    let docs = local.undelete_as(name, new_name)?;
    render_writes(ctx, &format!("undeleted {} as", output::printable(name)), &docs)
}

/// Secrets streamed in name order as they are read, a page of `limit` when given (with a note
/// naming where the next page starts), or every one.
fn list(ctx: &Context, query: ListQuery, limit: Option<usize>) -> Result<()> {
    let mut out = output::Stream::new(
        ctx.json(),
        output::StreamFormat::JsonArray,
        &["NAME", "SCOPE", "VERSION", "KEYS", "LABELS", "UPDATED"],
    )
    .cutting(&["LABELS", "KEYS"]);
    let mut row = |m: &Value| {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let keys: Vec<String> = m["keys"].as_array().into_iter().flatten().map(text).collect();
        let labels: BTreeMap<String, String> =
            serde_json::from_value(m["labels"].clone()).unwrap_or_default();
        out.push(
            m,
            [
                text(&m["name"]),
                text(&m["scope"]),
                text(&m["version"]),
                output::abbreviated(&keys, 40),
                output::labels(&labels),
                text(&m["updated_at"]),
            ],
        );
    };
    let next_after = ctx.session.list(&query, limit, &mut row)?;
    out.finish();
    if let Some(after) = next_after {
        eprintln!(
            "note: more secrets follow; the next page: --after {}",
            output::printable(&after)
        );
    }
    Ok(())
}

fn history(ctx: &Context, name: &str) -> Result<()> {
    crate::audit::render(ctx, &ctx.session.history(name)?);
    Ok(())
}
