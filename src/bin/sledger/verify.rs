//! `sledger verify`

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use sledger::Anchor;

use crate::cli::VerifyArgs;
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
    if let Some(key) = ctx.master_key_if_any()? {
        ledger.unlock_to_verify(key)?;
    }
    if args.rebuild_catalog {
        let secrets = ledger.rebuild_catalog()?;
        if !ctx.json() {
            outln!("catalog rebuilt from the log: {secrets} secrets");
        }
    }
    let bar = if ctx.json() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("verifying {bar:30} {pos}/{len} events ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    let verified = ledger.verify(&mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let head = verified?;
    if let Some(saved) = saved {
        ledger.check_anchor(saved)?;
    }
    Ok(json!({
        "ok": true,
        "events": head.seq,
        "head": ledger.anchor(head)?,
        "anchor_checked": saved.is_some(),
        "access_log_rows": ledger.access_head()?,
        "macs": macs(&ledger)?,
    }))
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
            "ok: {} events, chain intact; head seq {} hash {}; access log: {} records, chain intact",
            doc["events"],
            doc["head"]["seq"],
            doc["head"]["hash"].as_str().unwrap_or_default(),
            doc["access_log_rows"]
        );
        if doc["anchor_checked"] == true {
            outln!("anchor matches: nothing before it was truncated or rewritten");
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
