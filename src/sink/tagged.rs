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
        Tagged {
            seq: fields
                .get("sledger-seq")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            deleted: fields.get("sledger-state").map(String::as_str) == Some("deleted"),
            meta: hex::decode(&hex_meta)
                .ok()
                .and_then(|json| serde_json::from_slice(&json).ok()),
        }
    }
}
