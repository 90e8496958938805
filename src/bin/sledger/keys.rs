//! `sledger init` and `sledger key …`

use anyhow::Result;
use serde_json::json;
use sledger::crypto::MASTER_KEY_ENV;
use sledger::setup::{self, NewKey};
use sledger::{keyfile, LedgerSettings, MasterKey};

use crate::cli::{InitArgs, KeyCmd};
use crate::context::{block_on, Context};
use crate::exit::usage;
use crate::output;
use crate::output::outln;

pub fn init(ctx: &Context, args: InitArgs) -> Result<()> {
    let (key, key_source) = match (Context::env_key()?, &ctx.kms) {
        (Some(key), _) => (NewKey::Given(key), format!("${MASTER_KEY_ENV}")),
        (None, Some(uri)) => (
            NewKey::Kms(sledger::keys::kms(uri)?),
            format!("{uri} (wrapped in the ledger)"),
        ),
        (None, None) => (
            NewKey::File(ctx.key_file.clone()),
            ctx.key_file.display().to_string(),
        ),
    };
    let settings = LedgerSettings {
        max_value_bytes: args.max_value_bytes,
        ..LedgerSettings::default()
    };
    let made = setup::init(&ctx.ledger, key, &ctx.actor, settings, args.primary.as_deref())?;
    if ctx.json() {
        output::json_line(
            &json!({"ledger": ctx.ledger.to_string(), "key": key_source, "primary_sink": made.sink_file, "primary": sledger::sink::redacted(&made.primary)}),
        );
    } else {
        outln!("created ledger {}", ctx.ledger);
        match &made.sink_file {
            Some(file) => outln!("primary sink: local (sqlite, {})", file.display()),
            None => outln!("primary sink: local ({})", sledger::sink::redacted(&made.primary)),
        }
        outln!("master key: {key_source} (keep it safe and backed up: without it no value can be decrypted)");
    }
    Ok(())
}

pub fn run(ctx: &Context, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Migrate { to } => {
            let mut ledger = ctx.open_to_write()?;
            let migrated = sledger::keys::migrate(&mut ledger, &ctx.actor, &to, &ctx.key_file)?;
            if ctx.json() {
                output::json_line(&migrated);
            } else {
                outln!(
                    "the master key is now held by {} (recorded in the log)",
                    migrated.to
                );
                if let Some(file) = &migrated.removed_key_file {
                    outln!(
                        "removed the key file {}: the KMS holds the key now",
                        file.display()
                    );
                }
            }
            Ok(())
        }
        KeyCmd::Rotate { new_key_file } => {
            // The sqlite sinks move to the new seal key; said on stderr whatever the format
            // (about copies this command cannot see, and repairs it could not make).
            let reseal = |ledger: &sledger::Ledger| -> Result<sledger::keys::Resealed> {
                let resealed = block_on(sledger::keys::reseal_sinks(ledger))?;
                for sink in &resealed.to_reconcile {
                    eprintln!(
                        "note: sqlite sink {sink} holds objects the replaced key did not open; \
                         `sledger reconcile {sink}` rewrites them from the ledger"
                    );
                }
                Ok(resealed)
            };
            let note_backups = || {
                eprintln!(
                    "note: ledger backups made before this rotation open only with the old key: keep \
                     it, stored away from them, for as long as you keep them, or replace them with a \
                     new `sledger ledger backup`. Versions written from now on are sealed under keys \
                     the old key does not open"
                )
            };
            let from_env = Context::env_key()?.is_some();
            let mut ledger = ctx.open_to_write()?;
            if !from_env {
                if let Some((uri, rewrapped)) =
                    sledger::keys::rotate_in_kms(&mut ledger, &ctx.actor, ctx.kms.as_deref())?
                {
                    let resealed = reseal(&ledger)?;
                    if ctx.json() {
                        output::json_line(&json!({"rotated": true, "data_keys": rewrapped,
                            "sink_objects_resealed": resealed.objects, "key": uri}));
                    } else {
                        outln!(
                            "master key rotated: {rewrapped} data keys re-wrapped, {} sqlite sink objects sealed again; \
                             the new key is wrapped by {uri}",
                            resealed.objects
                        );
                    }
                    note_backups();
                    return Ok(());
                }
            }
            let (rewrapped, written_to) = match (from_env, new_key_file) {
                (true, Some(path)) => {
                    let mut persist = |new: &MasterKey| new.write_new_file(&path);
                    (ledger.rotate_key(&ctx.actor, MasterKey::generate(), &mut persist)?, path)
                }
                (true, None) => {
                    return Err(usage(format!(
                        "the master key comes from {MASTER_KEY_ENV}; pass --new-key-file PATH to say where the new key goes"
                    )))
                }
                (false, Some(_)) => {
                    return Err(usage(format!(
                        "--new-key-file is for keys from {MASTER_KEY_ENV}; the key file {} is rotated in place",
                        ctx.key_file.display()
                    )))
                }
                (false, None) => (keyfile::rotate(&mut ledger, &ctx.key_file, &ctx.actor)?, ctx.key_file.clone()),
            };
            let resealed = reseal(&ledger)?;
            if ctx.json() {
                output::json_line(&json!({"rotated": true, "data_keys": rewrapped,
                    "sink_objects_resealed": resealed.objects, "key_file": written_to}));
            } else {
                outln!(
                    "master key rotated: {rewrapped} data keys re-wrapped, {} sqlite sink objects sealed again; new key in {}",
                    resealed.objects,
                    written_to.display()
                );
                if from_env {
                    outln!("set {MASTER_KEY_ENV} to the new key before the next command");
                }
            }
            note_backups();
            Ok(())
        }
    }
}
