//! `sledger verify`

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sledger::Anchor;

use crate::cli::VerifyArgs;
use crate::context::Context;
use crate::output;
use crate::output::outln;

pub fn run(ctx: &Context, args: VerifyArgs) -> Result<()> {
    let mut ledger = ctx.open()?;
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
    let anchor = ledger.anchor(head)?;
    if let Some(path) = &args.anchor {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read anchor {}", path.display()))?;
        let saved: Anchor = serde_json::from_str(&text).map_err(|_| {
            crate::exit::usage(format!(
                "{} is not an anchor file written by `sledger verify --save-anchor`",
                path.display()
            ))
        })?;
        ledger.check_anchor(&saved)?;
    }
    if let Some(path) = &args.save_anchor {
        let text = serde_json::to_string_pretty(&anchor).expect("anchors serialise") + "\n";
        std::fs::write(path, text).with_context(|| format!("cannot write anchor {}", path.display()))?;
    }
    if ctx.json() {
        output::json_line(
            &json!({"ok": true, "events": head.seq, "head": anchor, "anchor_checked": args.anchor.is_some()}),
        );
    } else {
        outln!(
            "ok: {} events, chain intact; head seq {} hash {}",
            head.seq,
            anchor.seq,
            anchor.hash
        );
        if args.anchor.is_some() {
            outln!("anchor matches: nothing before it was truncated or rewritten");
        }
    }
    Ok(())
}
