//! Record metadata kept in a backend's small key/value fields (GCP labels, Azure tags), for
//! backends that offer nothing larger beside the value workloads read.
//!
//! `sledger-seq` and `sledger-state` (`live` or `deleted`) are plain; the metadata JSON (name,
//! scope, owner, labels, version) is hex-encoded, since GCP label values must be lowercase,
//! and split over numbered fields `sledger-m00`, `sledger-m01`, ….

use std::collections::HashMap;

use super::RecordMeta;
use crate::error::{Error, Result};

/// How much one backend's fields can hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TagLimits {
    pub kind: &'static str,
    /// Fields available for metadata chunks (the backend's limit less seq and state).
    pub chunks: usize,
    /// Characters per field value.
    pub chunk_len: usize,
}

/// What a backend object's fields say.
#[derive(Debug, Default)]
pub(crate) struct Tagged {
    pub seq: u64,
    pub deleted: bool,
    pub meta: Option<RecordMeta>,
    /// sledger's fields are there but do not decode (edited behind sledger's back). An object
    /// with none of them at all is one whose creation has not finished: absent, not drifted.
    pub unreadable: bool,
}

impl TagLimits {
    /// The largest metadata JSON the fields can carry.
    pub const fn max_meta_bytes(&self) -> usize {
        self.chunks * self.chunk_len / 2
    }

    pub fn encode(
        &self,
        seq: u64,
        deleted: bool,
        meta: Option<&RecordMeta>,
    ) -> Result<HashMap<String, String>> {
        let mut fields = HashMap::from([
            ("sledger-seq".to_owned(), seq.to_string()),
            (
                "sledger-state".to_owned(),
                if deleted { "deleted" } else { "live" }.to_owned(),
            ),
        ]);
        if let Some(meta) = meta {
            let json = serde_json::to_vec(meta).expect("serialises");
            if json.len() > self.max_meta_bytes() {
                return Err(Error::sink(
                    self.kind,
                    format!(
                        "the name, owner and labels of {} take {} bytes; {} metadata holds at most {}: \
                         shorten the labels",
                        meta.name,
                        json.len(),
                        self.kind,
                        self.max_meta_bytes()
                    ),
                    false,
                ));
            }
            for (i, chunk) in hex::encode(&json).as_bytes().chunks(self.chunk_len).enumerate() {
                fields.insert(
                    format!("sledger-m{i:02}"),
                    String::from_utf8(chunk.to_vec()).expect("hex is ASCII"),
                );
            }
        }
        Ok(fields)
    }

    pub fn decode(&self, fields: &HashMap<String, String>) -> Tagged {
        let mut hex_meta = String::new();
        for i in 0..self.chunks {
            match fields.get(&format!("sledger-m{i:02}")) {
                Some(chunk) => hex_meta.push_str(chunk),
                None => break,
            }
        }
        let seq = fields.get("sledger-seq").and_then(|s| s.parse().ok());
        let state = fields.get("sledger-state").map(String::as_str);
        let meta: Option<RecordMeta> = hex::decode(&hex_meta)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok());
        let ours = fields.keys().any(|k| k.starts_with("sledger-"));
        let readable = match state {
            Some("deleted") => seq.is_some(),
            Some("live") => seq.is_some() && meta.is_some(),
            _ => false,
        };
        Tagged {
            seq: seq.unwrap_or(0),
            deleted: state == Some("deleted"),
            meta,
            unreadable: ours && !readable,
        }
    }

    /// What `get` makes of an object's fields: `Ok(None)` for a deleted (or not yet labelled)
    /// object, an error for one whose fields were edited behind sledger's back.
    pub fn live_meta(&self, object: &str, tagged: Tagged) -> Result<Option<(u64, RecordMeta)>> {
        if tagged.unreadable {
            return Err(Error::drifted(
                self.kind,
                object,
                "its sledger labels do not decode",
            ));
        }
        Ok(tagged
            .meta
            .filter(|_| !tagged.deleted)
            .map(|meta| (tagged.seq, meta)))
    }

    /// What `list` makes of an object's fields: its seq when it is live (0 when unreadable).
    pub fn listed_seq(&self, tagged: &Tagged) -> Option<u64> {
        if tagged.unreadable {
            Some(0)
        } else {
            (!tagged.deleted && tagged.meta.is_some()).then_some(tagged.seq)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TagLimits = TagLimits {
        kind: "test",
        chunks: 16,
        chunk_len: 64,
    };

    fn meta() -> RecordMeta {
        serde_json::from_value(serde_json::json!({
            "id": "01a231d2-5b50-73f4-aa94-3a279011825a", "name": "db", "scope": "workspace",
            "owner": "", "labels": {}, "seq": 0, "version": 1
        }))
        .unwrap()
    }

    #[test]
    fn edited_fields_are_drifted_and_missing_ones_absent() {
        let live = LIMITS.encode(7, false, Some(&meta())).unwrap();
        let (seq, got) = LIMITS.live_meta("o", LIMITS.decode(&live)).unwrap().unwrap();
        assert_eq!((seq, got.name.as_str()), (7, "db"));
        assert_eq!(LIMITS.listed_seq(&LIMITS.decode(&live)), Some(7));

        let tombstone = LIMITS.encode(9, true, None).unwrap();
        assert!(LIMITS
            .live_meta("o", LIMITS.decode(&tombstone))
            .unwrap()
            .is_none());
        assert_eq!(LIMITS.listed_seq(&LIMITS.decode(&tombstone)), None);

        // Not labelled yet (a creation that did not finish): absent.
        assert!(LIMITS
            .live_meta("o", LIMITS.decode(&HashMap::new()))
            .unwrap()
            .is_none());

        for edit in [
            ("sledger-m00", "zz"),
            ("sledger-seq", "many"),
            ("sledger-state", "odd"),
        ] {
            let mut edited = live.clone();
            edited.insert(edit.0.to_owned(), edit.1.to_owned());
            let err = LIMITS.live_meta("o", LIMITS.decode(&edited)).unwrap_err();
            assert!(err.to_string().contains("drifted"), "{edit:?}: {err}");
            assert_eq!(LIMITS.listed_seq(&LIMITS.decode(&edited)), Some(0), "{edit:?}");
        }
    }
}
