//! `sledger import`: bulk-load secrets in batched, all-or-nothing transactions.

use std::path::Path;

use anyhow::Result;
use indicatif::ProgressBar;
use serde_json::json;
use sledger::import::{self, Format, ImportFile, Record};
use sledger::{Command, Outcome};

use crate::cli::{ImportArgs, ImportFormat};
use crate::context::{block_on, Context};
use crate::exit::usage;
use crate::output;
use crate::output::outln;

fn import_file(args: &ImportArgs, path: &Path) -> Result<ImportFile> {
    let format = match args.input_format {
        Some(ImportFormat::Json) => Format::Json,
        Some(ImportFormat::Jsonl) => Format::Jsonl,
        Some(ImportFormat::Dotenv) => Format::Dotenv,
        None => Format::of(path),
    };
    Ok(ImportFile::new(path, format, args.name.clone())?)
}

/// The secrets a backend holds outside sledger's objects, read one by one.
fn read_foreign(ctx: &Context, url: &str, prefix: &str) -> Result<Vec<Record>> {
    let bar = output::progress_bar(ctx, "reading");
    let estate = block_on(import::read_estate(url, prefix, &output::advance(&bar)));
    bar.finish_and_clear();
    Ok(estate?)
}

/// Records appended in batches of all-or-nothing transactions, as they come.
struct Batches<'a> {
    ctx: &'a Context,
    ledger: &'a mut sledger::Ledger,
    size: usize,
    pending: Vec<Command>,
    appended: u64,
    unchanged: u64,
    bar: ProgressBar,
}

impl Batches<'_> {
    fn push(&mut self, record: Record) -> Result<()> {
        self.pending.push(record.into_command());
        if self.pending.len() >= self.size {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let n = batch.len() as u64;
        let done = self.appended + self.unchanged;
        let outcomes = self
            .ledger
            .execute(&self.ctx.actor, batch)
            .map_err(|e| match done {
                0 => anyhow::Error::new(e),
                _ => anyhow::Error::new(e).context(format!(
                    "{done} secrets were imported by earlier batches and stay; once the cause is fixed, \
                 running the same import again finishes it (secrets already imported are left unchanged)"
                )),
            })?;
        for outcome in outcomes {
            match outcome {
                Outcome::Appended { .. } => self.appended += 1,
                _ => self.unchanged += 1,
            }
        }
        self.bar.inc(n);
        Ok(())
    }
}

pub fn run(ctx: &Context, args: ImportArgs) -> Result<()> {
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be at least 1"));
    }
    let file = args
        .file
        .as_ref()
        .map(|path| import_file(&args, path))
        .transpose()?;
    let estate = match &args.from {
        Some(url) => Some(read_foreign(ctx, url, args.prefix.as_deref().unwrap_or(""))?),
        None => None,
    };
    let mut ledger = ctx.open_to_write()?;
    // A file is checked whole, in a first streaming pass, before its first batch.
    let total = match (&file, &estate) {
        (Some(file), _) => import::check_file(file, ledger.settings().max_value_bytes)?,
        (None, Some(estate)) => estate.len() as u64,
        (None, None) => unreachable!("clap requires --file or --from"),
    };
    if args.dry_run {
        return dry_run(ctx, &ledger, file.as_ref(), estate.unwrap_or_default());
    }
    let bar = output::progress_bar(ctx, "importing");
    bar.set_length(total);
    let mut batches = Batches {
        ctx,
        ledger: &mut ledger,
        // An adoption is one transaction: half an estate adopted would leave the rest
        // unmanaged without anyone noticing.
        size: if estate.is_some() {
            usize::MAX
        } else {
            args.batch_size
        },
        pending: Vec::new(),
        appended: 0,
        unchanged: 0,
        bar,
    };
    match (file, estate) {
        (Some(file), _) => {
            let mut failed = None;
            file.scan(&mut |record| match batches.push(record) {
                Ok(()) => Ok(true),
                Err(e) => {
                    failed = Some(e);
                    Ok(false)
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        (None, Some(estate)) => {
            for record in estate {
                batches.push(record)?;
            }
        }
        (None, None) => unreachable!("clap requires --file or --from"),
    }
    batches.flush()?;
    batches.bar.finish_and_clear();
    let (appended, unchanged) = (batches.appended, batches.unchanged);
    let last = ledger.head()?.seq;
    let primary = match appended {
        0 => None,
        _ => block_on(sledger::project::wait_for_primary(&ledger, ctx.wait, last, &[]))?,
    };
    let lag = primary.as_ref().map(|p| p.lag).unwrap_or(0);
    if ctx.json() {
        output::json_line(&json!({"appended": appended, "unchanged": unchanged, "primary_lag": lag}));
    } else {
        outln!(
            "imported: {} appended, {} unchanged",
            output::count(appended, "event"),
            output::count(unchanged, "secret")
        );
        if lag > 0 {
            eprintln!("note: the primary sink is {lag} events behind; `sledger project` catches it up");
        }
    }
    Ok(())
}

/// What an import would do: each secret, new or already in the ledger (and then updated if
/// its values differ).
fn dry_run(
    ctx: &Context,
    ledger: &sledger::Ledger,
    file: Option<&ImportFile>,
    estate: Vec<Record>,
) -> Result<()> {
    let mut count = 0u64;
    let mut show = |record: Record| {
        count += 1;
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
    };
    match file {
        Some(file) => file.scan(&mut |record| {
            show(record);
            Ok(true)
        })?,
        None => estate.into_iter().for_each(&mut show),
    }
    if !ctx.json() {
        outln!("dry run: {count} secret(s), nothing changed");
    }
    Ok(())
}
