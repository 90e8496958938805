//! `sledger init` and `sledger key …`

use anyhow::Result;
use serde_json::json;
use sledger::crypto::MASTER_KEY_ENV;
use sledger::{keyfile, Ledger, LedgerSettings, MasterKey};

use crate::cli::{InitArgs, KeyCmd};
use crate::context::Context;
use crate::exit::usage;
use crate::output;

fn refuse_existing(path: &std::path::Path, what: &'static str) -> Result<()> {
    if path.exists() {
        return Err(sledger::Error::WouldOverwrite {
            what,
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(())
}

pub fn init(ctx: &Context, args: InitArgs) -> Result<()> {
    let from_env = Context::env_key()?;
    refuse_existing(&ctx.ledger_path, "ledger")?;
    if from_env.is_none() {
        refuse_existing(&ctx.key_file, "key file")?;
    }
    if let Some(dir) = ctx
        .ledger_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let key = match from_env {
        Some(key) => key,
        None => {
            let key = MasterKey::generate();
            key.write_new_file(&ctx.key_file)?;
            key
        }
    };
    let settings = LedgerSettings {
        max_value_bytes: args.max_value_bytes,
        ..LedgerSettings::default()
    };
    if let Err(e) = Ledger::init(&ctx.ledger_path, key, settings) {
        if std::env::var_os(MASTER_KEY_ENV).is_none() {
            let _ = std::fs::remove_file(&ctx.key_file);
        }
        return Err(e.into());
    }
    let key_source = if std::env::var_os(MASTER_KEY_ENV).is_some() {
        format!("${MASTER_KEY_ENV}")
    } else {
        ctx.key_file.display().to_string()
    };
    if ctx.json() {
        output::json_line(&json!({"ledger": ctx.ledger_path, "key": key_source}));
    } else {
        println!("created ledger {}", ctx.ledger_path.display());
        println!(
            "master key: {key_source} (keep it safe and backed up: without it no value can be decrypted)"
        );
    }
    Ok(())
}

pub fn run(ctx: &Context, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Rotate { new_key_file } => {
            let mut ledger = ctx.open_unlocked()?;
            let (rewrapped, written_to) = if std::env::var_os(MASTER_KEY_ENV).is_some() {
                let path = new_key_file.ok_or_else(|| {
                    usage(format!(
                        "the master key comes from {MASTER_KEY_ENV}; pass --new-key-file PATH to say where the new key goes"
                    ))
                })?;
                let new = MasterKey::generate();
                new.write_new_file(&path)?;
                (ledger.rotate_key(&ctx.actor, new)?, path)
            } else {
                (
                    keyfile::rotate(&mut ledger, &ctx.key_file, &ctx.actor)?,
                    ctx.key_file.clone(),
                )
            };
            if ctx.json() {
                output::json_line(&json!({"rotated": true, "data_keys": rewrapped, "key_file": written_to}));
            } else {
                println!(
                    "master key rotated: {rewrapped} data keys re-wrapped; new key in {}",
                    written_to.display()
                );
            }
            Ok(())
        }
    }
}
