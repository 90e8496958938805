//! Reads with fallback (ARCHITECTURE.md): the primary, then the backups when the primary is
//! unreachable, misses the secret or errors, then the ledger itself, which is always consistent.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::event::SinkRole;
use crate::ledger::{Ledger, ReadPoint, SecretRead};

/// Where a read may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Primary, then backups, then the ledger.
    Auto,
    Primary,
    Backup,
    Ledger,
}

/// Which source served a read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    Sink { name: String, role: SinkRole },
    Ledger,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Sink { name, role } => write!(f, "{role} sink {name}"),
            Source::Ledger => f.write_str("ledger"),
        }
    }
}

/// A read and where it came from.
#[derive(Debug)]
pub struct Served {
    pub read: SecretRead,
    pub source: Source,
    /// The source holds an older state of this secret than the ledger.
    pub lagging: bool,
    /// Sources tried first, and why each could not serve (never a value).
    pub skipped: Vec<(String, String)>,
}

impl Served {
    /// The read as the CLI's `--format json` and the API show it (values included).
    pub fn to_json(&self) -> serde_json::Value {
        let read = &self.read;
        let values: std::collections::BTreeMap<&str, &str> = read.values.iter().collect();
        serde_json::json!({
            "name": read.meta.name,
            "id": read.meta.id,
            "scope": read.meta.scope,
            "version": read.version,
            "seq": read.seq,
            "recorded_at": crate::event::format_millis(read.recorded_at),
            "labels": read.meta.labels,
            "source": self.source,
            "lagging": self.lagging,
            "skipped": self.skipped.iter().map(|(s, why)| serde_json::json!({"sink": s, "reason": why})).collect::<Vec<_>>(),
            "values": values,
        })
    }

    /// A read the ledger itself served (historical reads always are).
    pub fn from_ledger(read: SecretRead) -> Self {
        Served {
            read,
            source: Source::Ledger,
            lagging: false,
            skipped: Vec::new(),
        }
    }
}

/// The latest values of a secret, from the best available source.
pub async fn read_latest(ledger: &Ledger, actor: &str, name: &str, from: ReadFrom) -> Result<Served> {
    let meta = ledger.find(actor, name)?;
    let sinks = ledger.sinks()?;
    let wanted: Vec<_> = match from {
        ReadFrom::Ledger => vec![],
        ReadFrom::Primary => sinks.values().filter(|s| s.role == SinkRole::Primary).collect(),
        ReadFrom::Backup => sinks.values().filter(|s| s.role == SinkRole::Backup).collect(),
        ReadFrom::Auto => {
            let mut v: Vec<_> = sinks
                .values()
                .filter(|s| matches!(s.role, SinkRole::Primary | SinkRole::Backup))
                .collect();
            v.sort_by_key(|s| s.role);
            v
        }
    };
    if wanted.is_empty() && from != ReadFrom::Ledger && from != ReadFrom::Auto {
        let role = if from == ReadFrom::Primary {
            "primary"
        } else {
            "backup"
        };
        return Err(Error::NotFound(format!(
            "there is no {role} sink; `sledger sink list` shows the sinks"
        )));
    }
    let mut skipped = Vec::new();
    for config in wanted {
        let attempt = async {
            let (_, sink) = ledger.open_sink(&config.name)?;
            sink.get(meta.id).await
        };
        match attempt.await {
            Ok(Some(record)) => {
                let recorded_at = ledger
                    .store()
                    .event(record.seq)?
                    .map(|e| e.recorded_at)
                    .unwrap_or_default();
                let lagging = record.seq < meta.updated_seq;
                let read = SecretRead {
                    version: record.version,
                    seq: record.seq,
                    recorded_at,
                    meta,
                    values: record.values,
                };
                return Ok(Served {
                    read,
                    source: Source::Sink {
                        name: config.name.clone(),
                        role: config.role,
                    },
                    lagging,
                    skipped,
                });
            }
            Ok(None) => skipped.push((config.name.clone(), "does not hold this secret".to_owned())),
            Err(e) => skipped.push((config.name.clone(), e.to_string())),
        }
        if from != ReadFrom::Auto {
            let (sink, why) = skipped.pop().expect("just pushed");
            return Err(Error::sink(
                "read",
                format!("sink {sink:?} cannot serve {name:?}: {why}"),
                true,
            ));
        }
    }
    let read = ledger.read(actor, name, ReadPoint::Latest)?;
    Ok(Served {
        read,
        source: Source::Ledger,
        lagging: false,
        skipped,
    })
}
