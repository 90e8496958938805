//! The ledger's side of witnessed anchors ([`crate::witness`]): the record a projector leaves in
//! a sink after each batch, and the judgement of a record read back from one.
//!
//! An anchor is a [`SinkRecord`] under [`ANCHOR_ID`] whose values hold the ledger id, a seq,
//! the hash of the event at that seq, when it was written, and a MAC of those under the
//! ledger's event-MAC key. Its record `seq` is the time it was written (in ms), not the ledger
//! seq: sinks keep the record with the highest seq, and time keeps moving forward after a
//! ledger is put back from an older copy and accepted (`anchors reset`), so the next anchor
//! still replaces the one that witnessed the lost head.

use super::*;
use crate::crypto::EventMac;
use crate::sink::{SinkRecord, ANCHOR_ID};

const ANCHOR_NAME: &str = "sledger.anchor";
const MAC_NAME: &str = "witnessed anchor";

/// The head a sink witnessed, as its anchor states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessedHead {
    pub ledger_id: String,
    pub seq: u64,
    /// Hex of the hash of the event at `seq`.
    pub hash: String,
    /// When the projector wrote it.
    pub at: Millis,
}

/// What a sink's anchor says about this ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// The ledger holds the event the sink saw, with the same hash; `behind` events came since.
    Matches { behind: u64 },
    /// The sink saw a seq the ledger does not have: its tail was truncated, or it was put back
    /// from an older copy.
    Ahead { head: u64 },
    /// The ledger's event at that seq is not the one the sink saw: it was rewritten.
    Diverged,
    /// Written before an `anchors.reset` accepted the ledger as it is.
    Superseded { reset_seq: u64 },
    /// Not believed: not an anchor this ledger's key holders wrote (forged, copied from another
    /// ledger, or damaged).
    Invalid { reason: String },
}

impl Verdict {
    /// Whether the ledger lost or rewrote events this sink saw.
    pub fn is_rollback(&self) -> bool {
        matches!(self, Verdict::Ahead { .. } | Verdict::Diverged)
    }
}

fn mac_of(mac: &EventMac, head: &WitnessedHead) -> [u8; 32] {
    let text = format!("{}\0{}\0{}\0{}", head.ledger_id, head.seq, head.hash, head.at);
    mac.setting(MAC_NAME, text.as_bytes())
}

/// The head an anchor record states and the MAC it carries, if it has that shape at all.
fn parse(record: &SinkRecord) -> Option<(WitnessedHead, [u8; 32])> {
    let values = &record.values;
    let head = WitnessedHead {
        ledger_id: values.get("ledger_id")?.to_owned(),
        seq: values.get("seq")?.parse().ok()?,
        hash: values.get("hash")?.to_owned(),
        at: values.get("at")?.parse().ok()?,
    };
    let tag = hex::decode(values.get("mac")?).ok()?.try_into().ok()?;
    Some((head, tag))
}

impl Ledger {
    /// The anchor a projector writes into a sink once it holds everything up to `seq`.
    pub fn anchor_record(&self, seq: u64) -> Result<SinkRecord> {
        let keys = need_keys(self.keys.as_ref())?;
        let event = self
            .store
            .event(seq)?
            .ok_or_else(|| Error::Corrupt(format!("event {seq} is missing")))?;
        let head = WitnessedHead {
            ledger_id: self.ledger_id()?,
            seq,
            hash: hex::encode(event.hash),
            at: now_ms(),
        };
        let mut values = SecretValues::new();
        values.insert("mac", hex::encode(mac_of(&keys.mac, &head)));
        values.insert("ledger_id", head.ledger_id);
        values.insert("seq", seq.to_string());
        values.insert("hash", head.hash);
        values.insert("at", head.at.to_string());
        Ok(SinkRecord {
            id: ANCHOR_ID,
            name: ANCHOR_NAME.into(),
            scope: Scope::Workspace,
            owner: "sledger".into(),
            labels: BTreeMap::new(),
            seq: head.at.max(1) as u64,
            version: 1,
            values,
        })
    }

    /// Judge an anchor read from a sink against this ledger (the MAC needs the master key).
    pub fn judge_anchor(&self, record: &SinkRecord) -> Result<(Option<WitnessedHead>, Verdict)> {
        let keys = need_keys(self.keys.as_ref())?;
        let invalid = |reason: &str| Verdict::Invalid {
            reason: reason.into(),
        };
        let Some((head, tag)) = parse(record) else {
            return Ok((None, invalid("it is not an anchor sledger wrote")));
        };
        if !EventMac::matches(&mac_of(&keys.mac, &head), &tag) {
            let verdict = invalid(
                "its MAC does not match: it was not written with this ledger's master key \
                 (forged, changed, or copied from another ledger)",
            );
            return Ok((Some(head), verdict));
        }
        if head.ledger_id != self.ledger_id()? {
            let verdict = invalid("another ledger that shares this master key wrote it");
            return Ok((Some(head), verdict));
        }
        if let Some(reset) = self.last_anchor_reset()? {
            if head.at <= reset.recorded_at {
                return Ok((Some(head), Verdict::Superseded { reset_seq: reset.seq }));
            }
        }
        let ledger_head = self.head()?.seq;
        let verdict = match self.store.event(head.seq)? {
            None => Verdict::Ahead { head: ledger_head },
            Some(event) if hex::encode(event.hash) != head.hash => Verdict::Diverged,
            Some(_) => Verdict::Matches {
                behind: ledger_head.saturating_sub(head.seq),
            },
        };
        Ok((Some(head), verdict))
    }

    /// The latest MAC-valid `anchors.reset`, if any.
    fn last_anchor_reset(&self) -> Result<Option<StoredEvent>> {
        let keys = need_keys(self.keys.as_ref())?;
        let mut last = None;
        self.store.scan_types(&["anchors.reset"], 0, &mut |e| {
            last = Some(e);
            Ok(true)
        })?;
        match last {
            Some(e) => mac::check_event(&keys.mac, &e).map(|()| Some(e)),
            None => Ok(None),
        }
    }
}
