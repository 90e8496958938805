//! `sledger verify`

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use sledger::Anchor;

use crate::cli::{AnchorsArgs, AnchorsCmd, LedgerCmd, RecoverArgs, VerifyArgs};
use crate::context::block_on;
use crate::context::Context;
use crate::output;
use crate::output::outln;

fn read_anchor(path: &std::path::Path) -> Result<Anchor> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read anchor {}", path.display()))?;
    serde_json::from_str(&text).map_err(|_| {
        crate::exit::usage(format!(
            "{} is not an anchor file written by `sledger verify --save-anchor`",
            path.display()
        ))
    })
}

/// Verify the local ledger file; the document the server's `POST /v1/verify` answers too.
fn verify_local(ctx: &Context, args: &VerifyArgs, saved: Option<&Anchor>) -> Result<Value> {
    // With the key, the MACs are checked too; without it, the structure only (an auditor).
    let mut ledger = ctx.open()?;
    let key = match ctx.master_key_if_any()? {
        Some(key) => Some(key),
        None => sledger::keys::recorded_key(&ledger, ctx.kms.as_deref())?,
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
    let verified = ledger.verify(&mut output::advance(&bar));
    bar.finish_and_clear();
    let head = match verified {
        Ok(head) => head,
        Err(broken) => {
            // A log cut short is still a log its sinks saw longer: name them too.
            let witnessed = match ledger.is_unlocked() {
                true => block_on(sledger::witness::read_all(&ledger))
                    .ok()
                    .and_then(|w| sledger::witness::refuse_rollback(&ledger, &w).err()),
                false => None,
            };
            return Err(match witnessed {
                Some(witnessed) => anyhow::Error::new(broken).context(witnessed.to_string()),
                None => broken.into(),
            });
        }
    };
    if let Some(saved) = saved {
        ledger.check_anchor(saved)?;
    }
    // The sinks' anchors need the key to be believed; an auditor without it has --anchor.
    let witnesses = match ledger.is_unlocked() {
        true => Some(block_on(sledger::witness::check_all(&ledger))?),
        false => None,
    };
    Ok(json!({
        "ok": true,
        "events": head.seq,
        "head": ledger.anchor(head)?,
        "anchor_checked": saved.is_some(),
        "access_log_rows": ledger.access_head()?,
        "macs": macs(&ledger)?,
        "witnesses": witnesses,
    }))
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
    let ledger = ctx.open_unlocked()?;
    if let Some(AnchorsCmd::Reset { yes }) = args.command {
        if !yes {
            return Err(crate::exit::usage(
                "`anchors reset` gives up the events the sinks saw beyond this ledger's head; \
                 if you have the newer ledger file, put it back instead. Pass --yes to accept this ledger",
            ));
        }
        let mut ledger = ledger;
        let outcomes = ledger.execute(&ctx.actor, vec![sledger::Command::ResetAnchors])?;
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
    let witnesses = serde_json::to_value(block_on(sledger::witness::read_all(&ledger))?)?;
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

/// Which seqs the MAC check covered.
pub fn macs(ledger: &sledger::Ledger) -> Result<Value> {
    Ok(match ledger.is_unlocked() {
        false => {
            json!({"checked": false, "why": "no master key: the chain and structure were checked, not who wrote the events"})
        }
        true => json!({"checked": true, "from_seq": ledger.mac_from()?}),
    })
}

pub fn run(ctx: &Context, args: VerifyArgs) -> Result<()> {
    let saved = args.anchor.as_deref().map(read_anchor).transpose()?;
    let doc = match &ctx.remote {
        Some(remote) => {
            if args.rebuild_catalog {
                ctx.local_only("verify --rebuild-catalog")?;
            }
            remote.post(&["verify"], json!({"anchor": saved}))?
        }
        None => verify_local(ctx, &args, saved.as_ref())?,
    };
    if let Some(path) = &args.save_anchor {
        // Replacing this ledger's older anchor is the point; anything else there was kept on
        // purpose (another ledger's anchor, or not an anchor at all).
        if path.exists() && !args.force {
            let ours = read_anchor(path)
                .map(|old| Some(old.ledger_id.as_str()) == doc["head"]["ledger_id"].as_str())
                .unwrap_or(false);
            if !ours {
                return Err(sledger::Error::WouldOverwrite {
                    what: "file, not an anchor of this ledger (--force replaces it),",
                    path: path.clone(),
                }
                .into());
            }
        }
        // An anchor is public (a seq and a hash), so it is written 0644 on purpose; its worth is
        // in being kept where whoever could rewrite the ledger cannot reach it.
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_json::to_string_pretty(&doc["head"]).expect("anchors serialise") + "\n";
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write anchor {}", path.display()))?;
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
    let (from, name) = (args.from.as_str(), sledger::setup::DEFAULT_SINK);
    let bar = output::progress_bar(ctx, "reading");
    // The lost ledger's key, from where a key always comes; there is no ledger to check it on.
    let master = ctx.master_key_if_any()?.ok_or_else(|| {
        crate::exit::usage(
            "recover needs the lost ledger's master key: --key-file PATH or SLEDGER_MASTER_KEY",
        )
    })?;
    let recovered = block_on(sledger::recover::recover(
        &ctx.ledger,
        master,
        from,
        args.primary.as_deref(),
        &ctx.actor,
        &output::advance(&bar),
    ));
    bar.finish_and_clear();
    let recovered = recovered?;
    let projected = block_on(sledger::project::project_named(
        &recovered.ledger,
        name,
        &Default::default(),
    ));
    let head = recovered.ledger.head()?.seq;
    if ctx.json() {
        output::json_line(&json!({
            "ledger": ctx.ledger.to_string(),
            "secrets": recovered.secrets,
            "gone": recovered.gone,
            "seq": head,
            "projected": projected.is_ok(),
        }));
    } else {
        outln!(
            "recovered {} from {} into {} (its first event records the source; earlier history is not available)",
            output::count(recovered.secrets, "secret"),
            sledger::sink::redacted(from),
            ctx.ledger
        );
        outln!(
            "the source is attached as standby sink {:?} and was not changed; the primary is sink {name:?}",
            sledger::recover::SOURCE_SINK
        );
    }
    if let Err(e) = projected {
        eprintln!("note: the sink {name} is not caught up yet ({e}); `sledger project` finishes it");
    }
    Ok(())
}

/// `sledger ledger backup --to PATH`: an online copy, verified with the key before it counts.
pub fn ledger(ctx: &Context, cmd: LedgerCmd) -> Result<()> {
    let to = match cmd {
        LedgerCmd::Backup { to } => to,
        LedgerCmd::Copy { from, to } => return copy(ctx, from, to),
    };
    let ledger = ctx.open_unlocked()?;
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

fn copy(ctx: &Context, from: Option<String>, to: String) -> Result<()> {
    let from = match from {
        Some(from) => sledger::store::Location::parse(&from)?,
        None => ctx.ledger.clone(),
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
