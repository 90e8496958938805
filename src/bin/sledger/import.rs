//! `sledger import`: bulk-load secrets in batched, all-or-nothing transactions.

use std::path::Path;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sledger::import::{self, Format, Record};
use sledger::{Command, Outcome};

use crate::cli::{ImportArgs, ImportFormat};
use crate::context::{block_on, Context};
use crate::exit::usage;
use crate::output;
use crate::output::outln;

fn read_records(args: &ImportArgs, path: &Path) -> Result<Vec<Record>> {
    let format = match args.input_format {
        Some(ImportFormat::Json) => Format::Json,
        Some(ImportFormat::Jsonl) => Format::Jsonl,
        Some(ImportFormat::Dotenv) => Format::Dotenv,
        None => Format::of(path),
    };
    Ok(import::read_file(path, format, args.name.clone())?)
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
    let estate = block_on(import::read_estate(url, prefix, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }));
    bar.finish_and_clear();
    Ok(estate?)
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
    let mut ledger = ctx.open_to_write()?;
    if let Some(path) = &args.file {
        let limit = ledger.settings().max_value_bytes;
        import::check(&records, &path.display().to_string(), limit)?;
    }
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
        let done = appended + unchanged;
        let outcomes = ledger.execute(&ctx.actor, batch).map_err(|e| match done {
            0 => anyhow::Error::new(e),
            _ => anyhow::Error::new(e).context(format!(
                "{done} secrets were imported by earlier batches and stay; once the cause is fixed, \
                 running the same import again finishes it (secrets already imported are left unchanged)"
            )),
        })?;
        for outcome in outcomes {
            match outcome {
                Outcome::Appended { .. } => appended += 1,
                _ => unchanged += 1,
            }
        }
        bar.inc(n);
    }
    bar.finish_and_clear();
    let last = ledger.head()?.seq;
    let primary = match appended {
        0 => None,
        _ => block_on(sledger::project::wait_for_primary(&ledger, ctx.wait, last))?,
    };
    let lag = primary.as_ref().map(|p| p.lag).unwrap_or(0);
    if ctx.json() {
        output::json_line(&json!({"appended": appended, "unchanged": unchanged, "primary_lag": lag}));
    } else {
        outln!(
            "imported: {} appended, {} unchanged",
            output::count(appended as u64, "event"),
            output::count(unchanged as u64, "secret")
        );
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
