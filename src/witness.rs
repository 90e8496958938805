//! Witnessed anchors: every projection batch leaves the ledger's head, MAC'd under a key only
//! master-key holders have, in the sink it moved ([`crate::sink::ANCHOR_ID`]). A sink in
//! another account, cluster or project then remembers a head that whoever can write the ledger
//! file cannot take back: a ledger whose tail was truncated, or that was put back from an older
//! copy, no longer holds what its sinks witnessed, and opening it to write, or `verify`, says
//! so. README (threat model) says who can still roll back unnoticed.

use std::time::Duration;

use serde::Serialize;

use crate::catalog::SinkConfig;
use crate::error::{Error, Result};
use crate::event::{format_millis, SinkRole};
use crate::ledger::{Anchor, Ledger, Verdict, WitnessedHead};
use crate::sink::{Sink, SinkRecord, ANCHOR_ID};

/// One sink's anchor, read and judged.
#[derive(Debug, Clone, Serialize)]
pub struct SinkWitness {
    pub sink: String,
    pub role: SinkRole,
    /// The head its anchor states (absent: no anchor yet, unreadable, or not an anchor at all).
    pub anchor: Option<WitnessedHead>,
    /// `None` when there is no anchor to judge (none written yet, or the sink is unreachable).
    pub verdict: Option<Verdict>,
    /// Why the anchor could not be read.
    pub error: Option<String>,
}

async fn get_anchor(sink: &dyn Sink, limit: Option<Duration>) -> Result<Option<SinkRecord>> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, sink.get(ANCHOR_ID))
            .await
            .unwrap_or_else(|_| {
                let why = format!("it did not answer within {limit:?} (the deadline)");
                Err(Error::sink(sink.kind(), why, true))
            }),
        None => sink.get(ANCHOR_ID).await,
    }
}

/// What `config`'s sink answered for its anchor, judged.
fn judged(ledger: &Ledger, config: &SinkConfig, answer: Result<Option<SinkRecord>>) -> Result<SinkWitness> {
    let mut witness = SinkWitness {
        sink: config.name.clone(),
        role: config.role,
        anchor: None,
        verdict: None,
        error: None,
    };
    match answer {
        Err(e) => witness.error = Some(e.without_sink_name()),
        Ok(None) => {}
        Ok(Some(record)) => {
            let (anchor, verdict) = ledger.judge_anchor(&record)?;
            witness.anchor = anchor;
            witness.verdict = Some(verdict);
        }
    }
    Ok(witness)
}

async fn read_one(ledger: &Ledger, config: &SinkConfig, limit: Option<Duration>) -> Result<SinkWitness> {
    let answer = match ledger.open_sink(&config.name) {
        Ok((_, sink)) => get_anchor(&*sink, limit).await,
        Err(e) => Err(e),
    };
    judged(ledger, config, answer)
}

/// Before a projector writes anchors into `sink`: refuse if its anchor shows that this ledger
/// lost events the sink saw, so that a ledger put back from an older copy cannot erase the
/// evidence by overwriting the witness. A sink that does not answer before the deadline
/// fails the run as a temporary error; one that refuses the read does not stop it (its anchor
/// is then a witness it cannot keep).
pub async fn refuse_to_overwrite(
    ledger: &Ledger,
    config: &SinkConfig,
    sink: &dyn Sink,
    deadline: Option<std::time::Instant>,
) -> Result<()> {
    let limit = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
    let answer = get_anchor(sink, limit).await;
    if let Err(e) = &answer {
        if e.is_temporary() {
            return answer.map(drop);
        }
    }
    let witness = judged(ledger, config, answer)?;
    refuse_rollback(ledger, std::slice::from_ref(&witness))
}

/// What [`verify`] found: the document `sledger verify --format json` prints and
/// `POST /v1/verify` answers.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Always true: a check that fails is an error instead.
    pub ok: bool,
    /// The events checked (the head's seq).
    pub events: u64,
    pub head: Anchor,
    /// Whether a saved anchor was given, and so checked.
    pub anchor_checked: bool,
    pub access_log_rows: u64,
    pub macs: MacCoverage,
    /// Every sink's anchor; `None` without the master key, which believing them needs.
    pub witnesses: Option<Vec<SinkWitness>>,
}

/// Which events had their MAC checked.
#[derive(Debug, Clone, Serialize)]
pub struct MacCoverage {
    pub checked: bool,
    /// The first seq checked; `None` in a ledger from before MACs (its next write starts them).
    pub from_seq: Option<u64>,
    /// Why they were not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<&'static str>,
}

/// Verify `ledger` whole: the chain and the derived state ([`Ledger::verify`]), a `saved`
/// anchor, and, when it is unlocked, the MACs and every sink's anchor. Without the master key
/// (an auditor) the chain and structure are checked, not who wrote the events; a saved anchor
/// is then what catches a truncated tail. A log that fails and is shorter than what a sink
/// witnessed names that sink as well.
pub async fn verify(
    ledger: &mut Ledger,
    saved: Option<&Anchor>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let head = match ledger.verify(progress) {
        Ok(head) => head,
        Err(broken) if ledger.is_unlocked() => {
            let witnessed = match read_all(ledger).await {
                Ok(witnesses) => refuse_rollback(ledger, &witnesses).err(),
                Err(_) => None,
            };
            return Err(match witnessed {
                Some(Error::AnchorMismatch { reason }) => Error::AnchorMismatch {
                    reason: format!("{reason}; and {broken}"),
                },
                _ => broken,
            });
        }
        Err(broken) => return Err(broken),
    };
    if let Some(saved) = saved {
        ledger.check_anchor(saved)?;
    }
    let (macs, witnesses) = match ledger.is_unlocked() {
        true => (
            MacCoverage {
                checked: true,
                from_seq: ledger.mac_from()?,
                why: None,
            },
            Some(check_all(ledger).await?),
        ),
        false => (
            MacCoverage {
                checked: false,
                from_seq: None,
                why: Some("no master key: the chain and structure were checked, not who wrote the events"),
            },
            None,
        ),
    };
    Ok(VerifyReport {
        ok: true,
        events: head.seq,
        head: ledger.anchor(head)?,
        anchor_checked: saved.is_some(),
        access_log_rows: ledger.access_head()?,
        macs,
        witnesses,
    })
}

/// Every sink's anchor, refusing a ledger that lost or rewrote events one of them saw.
pub async fn check_all(ledger: &Ledger) -> Result<Vec<SinkWitness>> {
    let witnesses = read_all(ledger).await?;
    refuse_rollback(ledger, &witnesses)?;
    Ok(witnesses)
}

/// Every attached sink's anchor, read concurrently and judged (needs the master key).
pub async fn read_all(ledger: &Ledger) -> Result<Vec<SinkWitness>> {
    let sinks: Vec<SinkConfig> = ledger.sinks()?.into_values().collect();
    let reads = sinks.iter().map(|config| read_one(ledger, config, None));
    futures::future::join_all(reads).await.into_iter().collect()
}

/// Refuse a ledger that lost or rewrote events its sinks witnessed, naming each such sink,
/// what it saw and the ledger's head, and the ways out.
pub fn refuse_rollback(ledger: &Ledger, witnesses: &[SinkWitness]) -> Result<()> {
    let head = ledger.head()?.seq;
    let found: Vec<String> = witnesses
        .iter()
        .filter_map(|w| match (&w.anchor, &w.verdict) {
            (Some(anchor), Some(verdict)) if verdict.is_rollback() => {
                let what = match verdict {
                    Verdict::Diverged => format!("but this ledger's event {} has another hash", anchor.seq),
                    _ => format!("but this ledger ends at seq {head}"),
                };
                Some(format!(
                    "sink {} witnessed seq {} (hash {}…, {}) {what}",
                    w.sink,
                    anchor.seq,
                    &anchor.hash[..anchor.hash.len().min(12)],
                    format_millis(anchor.at)
                ))
            }
            _ => None,
        })
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::AnchorMismatch {
        reason: format!(
            "{}: the ledger was truncated, rewritten or put back from an older copy since. \
             Put the newer ledger file back if you have it (a `sledger ledger backup` copy); or \
             rebuild the ledger from that sink's current state with `sledger recover --from URL` \
             into a new ledger file; or accept this ledger as it is with \
             `sledger anchors reset --yes` (recorded in the log; each sink's anchor is replaced on \
             its next projection, and `sledger diff` then shows what the sinks hold that the \
             ledger lost)",
            found.join("; ")
        ),
    })
}

/// Before a write: read the primary's anchor (one `get`, given at most `limit`: a primary that
/// hangs must not hold the write) and refuse a ledger that lost events the primary saw.
/// Returns a note when the check could not be made (an unreachable primary, an anchor not
/// believed).
pub async fn check_primary(ledger: &Ledger, limit: Duration) -> Result<Option<String>> {
    let Some(primary) = ledger
        .sinks()?
        .into_values()
        .find(|s| s.role == SinkRole::Primary)
    else {
        return Ok(None);
    };
    let witness = read_one(ledger, &primary, Some(limit)).await?;
    refuse_rollback(ledger, std::slice::from_ref(&witness))?;
    Ok(match (&witness.error, &witness.verdict) {
        (Some(e), _) => Some(format!(
            "the primary sink {}'s anchor could not be read ({e}), so whether this ledger lost events it saw was not checked",
            primary.name
        )),
        (None, Some(Verdict::Invalid { reason })) => Some(format!(
            "the anchor in the primary sink {} is not believed ({reason}); the next projection replaces it",
            primary.name
        )),
        _ => None,
    })
}
