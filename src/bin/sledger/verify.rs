//! `sledger verify`

use anyhow::Result;
use serde_json::{json, Value};

use crate::cli::{AnchorsArgs, AnchorsCmd, LedgerCmd, RecoverArgs, VerifyArgs};
use sledger::session::{Local, Recovery, Session};
use sledger::Anchor;

use crate::context::Context;
use crate::output;
use crate::output::outln;

/// Verify the local ledger file (with the key, the MACs and the sinks' anchors too; without
/// it, the structure only: an auditor).
fn verify_local(ctx: &Context, local: &Local, args: &VerifyArgs, saved: Option<&Anchor>) -> Result<Value> {
    let mut ledger = local.open()?;
    let key = match local.master_key_if_any()? {
        Some(key) => Some(key),
        None => sledger::keys::recorded_key(&ledger, local.kms.as_deref())?,
    };
    if let Some(key) = key {
        ledger.unlock_to_verify(key)?;
    }
    if args.rebuild_catalog {
        let secrets = ledger.rebuild_catalog()?;
        if !ctx.json() {
            outln!("catalog rebuilt from the log: {secrets} secrets");
        }
    }
    let bar = output::progress_bar(ctx, "verifying");
    let report = local.block_on(sledger::witness::verify(
        &mut ledger,
        saved,
        &mut output::advance(&bar),
    ));
    bar.finish_and_clear();
    Ok(serde_json::to_value(report?)?)
}

/// One line per sink: what its anchor says.
fn describe(w: &Value) -> String {
    let seq = &w["anchor"]["seq"];
    match w["verdict"]["status"].as_str() {
        _ if !w["error"].is_null() => format!("not read: {}", w["error"].as_str().unwrap_or_default()),
        None => "no anchor yet (written by its next projection)".into(),
        Some("matches") => match w["verdict"]["behind"].as_u64() {
            Some(0) => format!("seq {seq}: matches the head"),
            behind => format!(
                "seq {seq}: matches ({} behind the head)",
                output::count(behind.unwrap_or_default(), "event")
            ),
        },
        Some("ahead") => format!("seq {seq}: AHEAD of this ledger's head {}", w["verdict"]["head"]),
        Some("diverged") => format!("seq {seq}: DIFFERS from this ledger's event {seq}"),
        Some("superseded") => format!(
            "seq {seq}: written before `anchors reset` (seq {}); replaced on its next projection",
            w["verdict"]["reset_seq"]
        ),
        Some(_) => format!(
            "not believed: {}",
            w["verdict"]["reason"].as_str().unwrap_or_default()
        ),
    }
}

/// `sledger anchors`: each sink's anchor; `anchors reset --yes`: accept the ledger as it is.
pub fn anchors(ctx: &Context, args: AnchorsArgs) -> Result<()> {
    let local = ctx.local("anchors")?;
    let ledger = local.open_unlocked()?;
    if let Some(AnchorsCmd::Reset { yes }) = args.command {
        if !yes {
            return Err(crate::exit::usage(
                "`anchors reset` gives up the events the sinks saw beyond this ledger's head; \
                 if you have the newer ledger file, put it back instead. Pass --yes to accept this ledger",
            ));
        }
        let mut ledger = ledger;
        let outcomes = ledger.execute(&local.actor, vec![sledger::Command::ResetAnchors])?;
        let seq = outcomes.iter().find_map(sledger::Outcome::seq);
        if ctx.json() {
            output::json_line(&json!({"result": "reset", "seq": seq}));
        } else {
            outln!(
                "anchors reset at seq {}: the sinks' earlier anchors are no longer believed; each is replaced on its next projection (`sledger project`)",
                seq.unwrap_or_default()
            );
        }
        return Ok(());
    }
    let witnesses = serde_json::to_value(local.block_on(sledger::witness::read_all(&ledger))?)?;
    if ctx.json() {
        output::json_line(&witnesses);
        return Ok(());
    }
    let now = sledger::ledger::now_ms();
    let mut table = output::table(&["SINK", "ROLE", "ANCHOR", "AGE"]);
    for w in witnesses.as_array().into_iter().flatten() {
        let age = w["anchor"]["at"]
            .as_i64()
            .map(|at| {
                humantime::format_duration(std::time::Duration::from_secs(((now - at).max(0) / 1000) as u64))
                    .to_string()
            })
            .unwrap_or_default();
        table.add_row(vec![
            w["sink"].as_str().unwrap_or_default().to_owned(),
            w["role"].as_str().unwrap_or_default().to_owned(),
            describe(w),
            age,
        ]);
    }
    outln!("{table}");
    Ok(())
}

pub fn run(ctx: &Context, args: VerifyArgs) -> Result<()> {
    let saved = args.anchor.as_deref().map(Anchor::read_file).transpose()?;
    let doc = match &ctx.session {
        Session::Remote { client, .. } => {
            if args.rebuild_catalog {
                ctx.local("verify --rebuild-catalog")?;
            }
            client.post(&["verify"], json!({"anchor": saved}))?
        }
        Session::Local(local) => verify_local(ctx, local, &args, saved.as_ref())?,
    };
    if let Some(path) = &args.save_anchor {
        let head: Anchor = serde_json::from_value(doc["head"].clone())?;
        head.save(path, args.force)?;
        if !ctx.json() {
            eprintln!(
                "anchor written to {} (public; keep a copy off this host, where whoever could rewrite the ledger cannot reach it)",
                path.display()
            );
        }
    }
    if ctx.json() {
        output::json_line(&doc);
    } else {
        outln!(
            "ok: {}, chain intact; head seq {} hash {}; access log: {}, chain intact",
            output::count(doc["events"].as_u64().unwrap_or_default(), "event"),
            doc["head"]["seq"],
            doc["head"]["hash"].as_str().unwrap_or_default(),
            output::count(doc["access_log_rows"].as_u64().unwrap_or_default(), "record")
        );
        if doc["anchor_checked"] == true {
            outln!("anchor matches: nothing before it was truncated or rewritten");
        }
        match doc["witnesses"].as_array() {
            Some(witnesses) => {
                for w in witnesses {
                    outln!(
                        "witness {}: {}",
                        w["sink"].as_str().unwrap_or_default(),
                        describe(w)
                    );
                }
            }
            None => {
                outln!("witnesses: not checked without the master key (--anchor FILE checks a saved head)")
            }
        }
        match (doc["macs"]["checked"].as_bool(), doc["macs"]["from_seq"].as_u64()) {
            (Some(true), Some(from)) => {
                outln!("MACs: every event from seq {from} on was written by a master-key holder")
            }
            (Some(true), None) => {
                outln!("MACs: none yet (a ledger from before MACs; the next write starts them)")
            }
            _ => outln!("MACs: not checked without the master key"),
        }
    }
    Ok(())
}

/// `sledger recover --from URL`: a new ledger from a sink's current state, then one
/// projection so the sink holds this ledger's records (and anchor).
pub fn recover(ctx: &Context, args: RecoverArgs) -> Result<()> {
    let local = ctx.local("recover")?;
    let (from, name) = (args.from.as_str(), sledger::setup::DEFAULT_SINK);
    let bar = output::progress_bar(ctx, "reading");
    let recovery = local.recover(from, args.primary.as_deref(), &output::advance(&bar));
    bar.finish_and_clear();
    let recovery = recovery?;
    let projected = recovery.project(local);
    let Recovery {
        recovered,
        new_key_file,
    } = recovery;
    let head = recovered.ledger.head()?.seq;
    if ctx.json() {
        output::json_line(&json!({
            "ledger": local.ledger.to_string(),
            "secrets": recovered.secrets,
            "gone": recovered.gone,
            "seq": head,
            "projected": projected.is_ok(),
            "new_key_file": new_key_file,
        }));
    } else {
        outln!(
            "recovered {} from {} into {} (its first event records the source; earlier history is not available)",
            output::count(recovered.secrets, "secret"),
            sledger::sink::redacted(from),
            local.ledger
        );
        outln!(
            "the source is attached as standby sink {:?} and was not changed; the primary is sink {name:?}",
            sledger::recover::SOURCE_SINK
        );
        if let Some(made) = &new_key_file {
            outln!(
                "master key: a new one, {} (keep it safe and backed up: without it no value can be decrypted)",
                made.display()
            );
        }
    }
    if let Err(e) = projected {
        eprintln!("note: the sink {name} is not caught up yet ({e}); `sledger project` finishes it");
    }
    Ok(())
}

/// `sledger ledger backup --to PATH`: an online copy, verified with the key before it counts.
pub fn ledger(ctx: &Context, cmd: LedgerCmd) -> Result<()> {
    let local = ctx.local("ledger")?;
    let to = match cmd {
        LedgerCmd::Backup { to } => to,
        LedgerCmd::Copy { from, to } => return copy(ctx, local, from, to),
    };
    let ledger = local.open_unlocked()?;
    let bar = output::progress_bar(ctx, "verifying");
    let head = ledger.backup_to(&to, &mut output::advance(&bar));
    bar.finish_and_clear();
    let head = head?;
    let hash = hex::encode(head.hash);
    if ctx.json() {
        output::json_line(&json!({"backup": to, "seq": head.seq, "hash": hash, "verified": true}));
    } else {
        outln!(
            "backed up to {}: {} up to seq {} (head {}), verified with the master key",
            to.display(),
            output::count(head.seq, "event"),
            head.seq,
            &hash[..16]
        );
        eprintln!("note: the backup opens only with this ledger's master key; keep the key apart from it");
    }
    Ok(())
}

fn copy(ctx: &Context, local: &Local, from: Option<String>, to: String) -> Result<()> {
    let from = match from {
        Some(from) => sledger::store::Location::parse(&from)?,
        None => local.ledger.clone(),
    };
    let to = sledger::store::Location::parse(&to)?;
    let bar = output::progress_bar(ctx, "copying");
    let report = sledger::store::copy::copy_ledger(&from, &to, &mut output::advance(&bar));
    bar.finish_and_clear();
    let report = report?;
    if ctx.json() {
        output::json_line(&json!({"from": from.to_string(), "to": to.to_string(), "copy": report}));
    } else {
        outln!(
            "copied {} from {from} to {to}{}: both end at seq {} (head {}), chain verified",
            output::count(report.events_copied, "event"),
            if report.resumed_from > 0 {
                format!(" (resumed after seq {})", report.resumed_from)
            } else {
                String::new()
            },
            report.head,
            &report.head_hash[..16]
        );
    }
    Ok(())
}
