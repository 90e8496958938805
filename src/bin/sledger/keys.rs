//! `sledger init` and `sledger key …`

use anyhow::Result;
use serde_json::json;
use sledger::crypto::MASTER_KEY_ENV;
use sledger::keys::{NewKeyAt, RotateFrom};
use sledger::setup::{self, NewKey};
use sledger::LedgerSettings;

use crate::cli::{InitArgs, KeyCmd};
use crate::context::Context;
use crate::exit::usage;
use crate::output;
use crate::output::outln;

pub fn init(ctx: &Context, args: InitArgs) -> Result<()> {
    let local = ctx.local("init")?;
    let (key, key_source) = match (local.env_key()?, &local.kms) {
        (Some(key), _) => (NewKey::Given(key), format!("${MASTER_KEY_ENV}")),
        (None, Some(uri)) => (
            NewKey::Kms(sledger::keys::kms(uri)?),
            format!("{uri} (wrapped in the ledger)"),
        ),
        (None, None) => (
            NewKey::File(local.key_file.clone()),
            local.key_file.display().to_string(),
        ),
    };
    let settings = LedgerSettings {
        max_value_bytes: args.max_value_bytes,
        ..LedgerSettings::default()
    };
    let made = setup::init(
        &local.ledger,
        key,
        &local.actor,
        settings,
        args.primary.as_deref(),
    )?;
    if ctx.json() {
        output::json_line(
            &json!({"ledger": local.ledger.to_string(), "key": key_source, "primary_sink": made.sink_file, "primary": sledger::sink::redacted(&made.primary)}),
        );
    } else {
        outln!("created ledger {}", local.ledger);
        match &made.sink_file {
            Some(file) => outln!("primary sink: local (sqlite, {})", file.display()),
            None => outln!("primary sink: local ({})", sledger::sink::redacted(&made.primary)),
        }
        outln!("master key: {key_source} (keep it safe and backed up: without it no value can be decrypted)");
    }
    Ok(())
}

pub fn run(ctx: &Context, cmd: KeyCmd) -> Result<()> {
    let local = ctx.local("key")?;
    match cmd {
        KeyCmd::Migrate { to } => {
            let mut ledger = local.open_to_write()?;
            let migrated = sledger::keys::migrate(&mut ledger, &local.actor, &to, &local.key_file)?;
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
            let from = match (local.env_key()?.is_some(), &new_key_file) {
                (true, Some(path)) => RotateFrom::Environment { new_key_file: path },
                (true, None) => {
                    return Err(usage(format!(
                        "the master key comes from {MASTER_KEY_ENV}; pass --new-key-file PATH to say where the new key goes"
                    )))
                }
                (false, Some(_)) => {
                    return Err(usage(format!(
                        "--new-key-file is for keys from {MASTER_KEY_ENV}; the key file {} is rotated in place",
                        local.key_file.display()
                    )))
                }
                (false, None) => RotateFrom::KeyFile(&local.key_file),
            };
            let mut ledger = local.open_to_write()?;
            let rotated = local.block_on(sledger::keys::rotate(
                &mut ledger,
                &local.actor,
                from,
                local.kms.as_deref(),
            ))?;
            // Said on stderr whatever the format: copies this command cannot see, and repairs
            // it could not make.
            for sink in &rotated.resealed.to_reconcile {
                match rotated.resealed.failed.get(sink) {
                    Some(error) => eprintln!(
                        "warning: sqlite sink {sink} could not be sealed again under the new key ({error}), so it \
                         serves nothing now; once it is back, `sledger reconcile {sink}` rewrites it from the ledger"
                    ),
                    None => eprintln!(
                        "note: sqlite sink {sink} holds objects the replaced key did not open; \
                         `sledger reconcile {sink}` rewrites them from the ledger"
                    ),
                }
            }
            let (rewrapped, resealed) = (rotated.data_keys, rotated.resealed.objects);
            let to_reconcile = &rotated.resealed.to_reconcile;
            match (&rotated.key, ctx.json()) {
                (NewKeyAt::Kms(uri), true) => output::json_line(&json!({"rotated": true, "data_keys": rewrapped,
                    "sink_objects_resealed": resealed, "sinks_to_reconcile": to_reconcile, "key": uri})),
                (NewKeyAt::File(path), true) => output::json_line(&json!({"rotated": true, "data_keys": rewrapped,
                    "sink_objects_resealed": resealed, "sinks_to_reconcile": to_reconcile, "key_file": path})),
                (NewKeyAt::Kms(uri), false) => outln!(
                    "master key rotated: {rewrapped} data keys re-wrapped, {resealed} sqlite sink objects sealed again; \
                     the new key is wrapped by {uri}"
                ),
                (NewKeyAt::File(path), false) => {
                    outln!(
                        "master key rotated: {rewrapped} data keys re-wrapped, {resealed} sqlite sink objects sealed again; new key in {}",
                        path.display()
                    );
                    if new_key_file.is_some() {
                        outln!("set {MASTER_KEY_ENV} to the new key before the next command");
                    }
                }
            }
            eprintln!(
                "note: ledger backups made before this rotation open only with the old key: keep \
                 it, stored away from them, for as long as you keep them, or replace them with a \
                 new `sledger ledger backup`. Versions written from now on are sealed under keys \
                 the old key does not open"
            );
            Ok(())
        }
    }
}
