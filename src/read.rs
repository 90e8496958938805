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

impl Ledger {
    /// Whether a sink's record of `meta`'s secret may be served: it must not claim a seq beyond
    /// the ledger's head (the sink was written behind sledger's back, or the ledger was put back
    /// from an older copy: sledger cannot tell which, and serves neither), and its values must
    /// match the ledger's fingerprints of that version (a sink cannot lie about a value).
    /// `Ok(Err(why))` when it may not.
    pub fn check_sink_record(
        &self,
        meta: &crate::SecretMeta,
        record: &crate::sink::SinkRecord,
    ) -> Result<std::result::Result<(), String>> {
        let head = self.head()?.seq;
        if record.id != meta.id {
            return Ok(Err("it answered with another secret's record".into()));
        }
        if record.seq > head {
            return Ok(Err(format!(
                "it holds seq {}, beyond the ledger's head {head}: the sink was written behind sledger's back, \
                 or the ledger was restored from an older copy; `sledger diff` shows it as ahead, \
                 `sledger reconcile --force-ledger` overwrites it with the ledger's state",
                record.seq
            )));
        }
        let expected = if record.seq >= meta.value_seq {
            meta.fingerprints.clone()
        } else {
            self.fingerprints_at(meta.id, record.seq)?
        };
        if self.fingerprints_of(&record.values)? != expected {
            return Ok(Err(format!(
                "drifted: its values differ from those the ledger recorded for seq {} (changed behind sledger's back); \
                 `sledger reconcile` rewrites them",
                record.seq
            )));
        }
        Ok(Ok(()))
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
        let attempt = match attempt.await {
            Ok(Some(record)) => match ledger.check_sink_record(&meta, &record)? {
                Ok(()) => Ok(Some(record)),
                Err(why) => {
                    tracing::warn!(sink = %config.name, secret = %meta.id, reason = %why, "a sink's record was not served");
                    Err(Error::sink("read", why, false))
                }
            },
            other => other,
        };
        match attempt {
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
            Err(e) => skipped.push((config.name.clone(), e.without_sink_name())),
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
