//! `sledger import`: bulk-load secrets in batched, all-or-nothing transactions.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::json;
use sledger::{Command, Outcome, Scope, SecretValues};
use zeroize::Zeroizing;

use crate::cli::{ImportArgs, ImportFormat};
use crate::context::{block_on, Context};
use crate::exit::usage;
use crate::output;
use crate::output::outln;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    name: String,
    values: BTreeMap<String, Zeroizing<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    private: bool,
}

impl Record {
    fn into_command(self) -> Command {
        let mut values = SecretValues::new();
        for (k, v) in &self.values {
            values.insert(k.as_str(), v.as_str());
        }
        Command::Put {
            name: self.name,
            scope: if self.private {
                Scope::Private
            } else {
                Scope::Workspace
            },
            labels: self.labels,
            values,
        }
    }
}

fn bad_record(where_: String, e: &serde_json::Error) -> anyhow::Error {
    // Only the position: serde_json's message may quote the offending (secret) text.
    usage(format!(
        "{where_} is not a secret record {{\"name\", \"values\", \"labels\"?, \"private\"?}} (column {})",
        e.column()
    ))
}

fn read_records(args: &ImportArgs, path: &Path) -> Result<Vec<Record>> {
    let format = args
        .input_format
        .unwrap_or_else(|| match path.extension().and_then(|e| e.to_str()) {
            Some("json") => ImportFormat::Json,
            Some("env") => ImportFormat::Dotenv,
            _ if path.file_name().is_some_and(|n| n == ".env") => ImportFormat::Dotenv,
            _ => ImportFormat::Jsonl,
        });
    if format != ImportFormat::Dotenv && args.name.is_some() {
        return Err(usage("--name is for dotenv input (a .env file is one secret)"));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = std::io::BufReader::new(file);
    match format {
        ImportFormat::Json => {
            serde_json::from_reader(reader).map_err(|e| bad_record(format!("{}", path.display()), &e))
        }
        ImportFormat::Jsonl => {
            let mut records = Vec::new();
            for (i, line) in reader.lines().enumerate() {
                let line = Zeroizing::new(line.with_context(|| format!("cannot read {}", path.display()))?);
                if line.trim().is_empty() {
                    continue;
                }
                records.push(
                    serde_json::from_str(&line).map_err(|e| bad_record(format!("line {}", i + 1), &e))?,
                );
            }
            Ok(records)
        }
        ImportFormat::Dotenv => {
            let name = args
                .name
                .clone()
                .ok_or_else(|| usage("a dotenv file is one secret: name it with --name NAME"))?;
            let text = Zeroizing::new(
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
            );
            Ok(vec![Record {
                name,
                values: parse_dotenv(&text)?,
                labels: BTreeMap::new(),
                private: false,
            }])
        }
    }
}

/// The secrets a backend holds outside sledger's objects, read one by one.
fn read_foreign(ctx: &Context, url: &str, prefix: &str) -> Result<Vec<Record>> {
    let bar = if ctx.json() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("reading {bar:30} {pos}/{len} ({eta})").expect("valid template"),
    );
    let estate = block_on(sledger::adopt::read_estate(url, prefix, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }));
    bar.finish_and_clear();
    Ok(estate?
        .into_iter()
        .map(|a| Record {
            name: a.name,
            values: a
                .values
                .iter()
                .map(|(k, v)| (k.to_owned(), Zeroizing::new(v.to_owned())))
                .collect(),
            labels: BTreeMap::new(),
            private: false,
        })
        .collect())
}

pub fn run(ctx: &Context, args: ImportArgs) -> Result<()> {
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be at least 1"));
    }
    let records = match (&args.file, &args.from) {
        (Some(path), _) => read_records(&args, path)?,
        (None, Some(url)) => read_foreign(ctx, url, args.prefix.as_deref().unwrap_or(""))?,
        (None, None) => unreachable!("clap requires --file or --from"),
    };
    let mut ledger = ctx.open_unlocked()?;
    if args.dry_run {
        return dry_run(ctx, &ledger, &records);
    }
    let bar = if ctx.json() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(records.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("importing {bar:30} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    let (mut appended, mut unchanged) = (0usize, 0usize);
    // An adoption is one transaction: half an estate adopted would leave the rest unmanaged
    // without anyone noticing.
    let batch_size = if args.from.is_some() {
        usize::MAX
    } else {
        args.batch_size
    };
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let batch: Vec<Command> = records
            .by_ref()
            .take(batch_size)
            .map(Record::into_command)
            .collect();
        let n = batch.len() as u64;
        for outcome in ledger.execute(&ctx.actor, batch)? {
            match outcome {
                Outcome::Appended { .. } => appended += 1,
                _ => unchanged += 1,
            }
        }
        bar.inc(n);
    }
    bar.finish_and_clear();
    let primary = ctx.wait_for_primary(&ledger)?;
    let lag = primary.as_ref().map(|p| p.lag).unwrap_or(0);
    if ctx.json() {
        output::json_line(&json!({"appended": appended, "unchanged": unchanged, "primary_lag": lag}));
    } else {
        outln!("imported: {appended} events appended, {unchanged} secrets unchanged");
        if lag > 0 {
            eprintln!("note: the primary sink is {lag} events behind; `sledger project` catches it up");
        }
    }
    Ok(())
}

/// What an import would do: each secret, new or already in the ledger (and then updated if
/// its values differ).
fn dry_run(ctx: &Context, ledger: &sledger::Ledger, records: &[Record]) -> Result<()> {
    for record in records {
        let known = ledger.find(&ctx.actor, &record.name).is_ok();
        let what = if known { "exists" } else { "new" };
        if ctx.json() {
            output::json_line(&json!({"name": record.name, "keys": record.values.len(), "status": what}));
        } else {
            outln!(
                "would import {} ({} key(s), {what})",
                record.name,
                record.values.len()
            );
        }
    }
    if !ctx.json() {
        outln!("dry run: {} secret(s), nothing changed", records.len());
    }
    Ok(())
}

/// `KEY=VALUE` lines; blank lines and `#` comments skipped, an `export ` prefix allowed, values
/// optionally in single quotes (literal) or double quotes (with \n, \", \\ escapes).
fn parse_dotenv(text: &str) -> Result<BTreeMap<String, Zeroizing<String>>> {
    let mut values = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        // Only the line number: the line holds a value.
        let (key, raw) = line
            .split_once('=')
            .ok_or_else(|| usage(format!("line {} is not KEY=VALUE", i + 1)))?;
        let raw = raw.trim();
        let value = if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            inner.to_owned()
        } else if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match (c, c == '\\') {
                    (_, true) => match chars.next() {
                        Some('n') => out.push('\n'),
                        Some(other) => out.push(other),
                        None => out.push('\\'),
                    },
                    (c, false) => out.push(c),
                }
            }
            out
        } else {
            raw.to_owned()
        };
        if values
            .insert(key.trim().to_owned(), Zeroizing::new(value))
            .is_some()
        {
            return Err(usage(format!("line {}: {:?} is set twice", i + 1, key.trim())));
        }
    }
    Ok(values)
}
