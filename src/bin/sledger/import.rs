//! `sledger import`: bulk-load secrets in batched, all-or-nothing transactions.

use std::path::Path;

use anyhow::Result;
use serde_json::json;
use sledger::import::{self, Format, ImportFile, Imported, Record, Source, Stopped};
use sledger::session::Local;

use crate::cli::{ImportArgs, ImportFormat};
use crate::context::Context;
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
fn read_foreign(ctx: &Context, local: &Local, url: &str, prefix: &str) -> Result<Vec<Record>> {
    let bar = output::progress_bar(ctx, "reading");
    let estate = local.block_on(import::read_estate(url, prefix, &output::advance(&bar)));
    bar.finish_and_clear();
    Ok(estate?)
}

pub fn run(ctx: &Context, args: ImportArgs) -> Result<()> {
    let local = ctx.local("import")?;
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be at least 1"));
    }
    let source = match (&args.file, &args.from) {
        (Some(path), _) => Source::File(import_file(&args, path)?),
        (None, Some(url)) => Source::Estate(read_foreign(
            ctx,
            local,
            url,
            args.prefix.as_deref().unwrap_or(""),
        )?),
        (None, None) => unreachable!("clap requires --file or --from"),
    };
    let mut ledger = local.open_to_write()?;
    let total = source.check(ledger.settings().max_value_bytes)?;
    if args.dry_run {
        return dry_run(ctx, local, &ledger, source);
    }
    let bar = output::progress_bar(ctx, "importing");
    bar.set_length(total);
    let imported = import::run(&mut ledger, &local.actor, source, args.batch_size, &mut |n| {
        bar.inc(n)
    });
    let Imported { appended, unchanged } =
        imported.map_err(
            |Stopped { error, imported }| match imported.appended + imported.unchanged {
                0 => anyhow::Error::new(error),
                done => anyhow::Error::new(error).context(format!(
                    "{done} secrets were imported by earlier batches and stay; once the cause is fixed, \
                 running the same import again finishes it (secrets already imported are left unchanged)"
                )),
            },
        )?;
    bar.finish_and_clear();
    let last = ledger.head()?.seq;
    let primary = match appended {
        0 => None,
        _ => local.block_on(sledger::project::wait_for_primary(&ledger, local.wait, last, &[]))?,
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
            eprintln!(
                "note: the primary sink is {lag} events behind; {}",
                ctx.catch_up_hint()
            );
        }
    }
    Ok(())
}

/// What an import would do: each secret, new or already in the ledger (and then updated if
/// its values differ).
fn dry_run(ctx: &Context, local: &Local, ledger: &sledger::Ledger, source: Source) -> Result<()> {
    let mut count = 0u64;
    let mut show = |record: Record| {
        count += 1;
        let known = ledger.find(&local.actor, &record.name).is_ok();
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
    source.scan(&mut |record| {
        show(record);
        Ok(true)
    })?;
    if !ctx.json() {
        outln!("dry run: {count} secret(s), nothing changed");
    }
    Ok(())
}
