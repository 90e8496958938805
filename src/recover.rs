//! Rebuilding a lost ledger from what one of its sinks holds (DESIGN §13, single-machine
//! disaster recovery): the current values, names, scopes, owners and labels of sledger's
//! objects under the sink's prefix, each under its own secret id. The new ledger's first event
//! says where it came from and that the history before it is not available.
//!
//! The source is attached as a standby and never written: its objects carry the lost ledger's
//! seqs, which the new log (numbered from 1 again) does not reach, and a sink never lets a
//! lower seq overwrite a higher one. A new primary takes the recovered secrets instead.

use futures::StreamExt;

use crate::crypto::{MasterKey, SinkSealKey};
use crate::error::{Error, Result};
use crate::event::SinkRole;
use crate::ledger::{Command, Ledger, LedgerSettings};
use crate::sink::{redacted, SinkUrl, SqliteSink};
use crate::store::Location;

/// What [`recover`] brought back.
#[derive(Debug)]
pub struct Recovered {
    pub ledger: Ledger,
    /// Secrets brought back (every live object the sink held).
    pub secrets: u64,
    /// Objects the sink listed but no longer held when read (deleted meanwhile).
    pub gone: u64,
}

/// Secrets appended per transaction.
const BATCH: usize = 256;

/// The name the source gets in the recovered ledger (a standby).
pub const SOURCE_SINK: &str = "recovered-from";

/// Build a new ledger at `location` from the sink at `source_url` (attached as standby
/// [`SOURCE_SINK`]), with `primary_url` as its primary sink, or, without one, a new sqlite
/// sink beside the ledger (as `init` makes). A sqlite source opens with `master` alone (it
/// keeps its seal key wrapped by it), so `master` must be the lost ledger's key there; a cloud
/// sink's values are readable to its own credentials. With `held_by`, that KMS holds the new
/// ledger's key (recorded as `key migrate` records it). Nothing is created when the source
/// cannot be read or holds nothing; what a recovery that fails half-way made is removed.
/// `progress(done, total)` follows the reads.
pub async fn recover(
    location: &Location,
    master: MasterKey,
    held_by: Option<&dyn crate::keys::KeyWrapper>,
    source_url: &str,
    primary_url: Option<&str>,
    actor: &str,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Recovered> {
    if let Some(path) = location.as_path().filter(|p| p.exists()) {
        return Err(Error::WouldOverwrite {
            what: "ledger",
            path: path.to_path_buf(),
        });
    }
    let primary = match primary_url {
        Some(url) => url.to_owned(),
        None => {
            let file = crate::setup::default_sink_file(location)?;
            if file.exists() {
                return Err(Error::invalid(format!(
                    "{} exists: name the new primary sink with --primary URL (the source stays as it is)",
                    file.display()
                )));
            }
            SinkUrl::sqlite_url(&file)
        }
    };
    let primary_parsed = SinkUrl::parse(&primary)?;
    let url = SinkUrl::parse(source_url)?;
    let seal = match url.sqlite_path() {
        Some(file) => Some(SqliteSink::seal_key(file, &master)?),
        None => None,
    };
    let sink = url.open(seal.as_ref().unwrap_or(&SinkSealKey::generate()))?;
    let entries = sink.list().await?;
    if entries.is_empty() {
        return Err(Error::invalid(format!(
            "{} holds no sledger objects under its prefix: there is nothing to recover from it",
            redacted(source_url)
        )));
    }
    let created = crate::replay::orchestrate::prepare_backend(&primary_parsed)?;
    let mut ledger = match Ledger::init(location.clone(), master, LedgerSettings::default()) {
        Ok(ledger) => ledger,
        Err(e) => {
            if let Some(file) = &created {
                let _ = std::fs::remove_file(file);
            }
            return Err(e);
        }
    };
    let rebuilt = async {
        if let Some(seal) = seal {
            let from = url.sqlite_path().map(SqliteSink::owner).transpose()?.flatten();
            ledger.adopt_sink_seal_key(seal, from.as_deref())?;
        }
        // A new primary that is another ledger's sqlite file is refused before any work.
        if primary_parsed.sqlite_path().is_some() {
            ledger.open_sink_url(&primary)?;
        }
        let source = redacted(source_url);
        ledger.execute(actor, vec![Command::RecordRecovery { source }])?;
        if let Some(kms) = held_by {
            crate::keys::hold_in(&mut ledger, actor, kms)?;
        }
        let (mut secrets, mut gone) = (0u64, 0u64);
        let total = entries.len() as u64;
        // Reads go as many at once as the backend takes (a cloud sink answers each in a round
        // trip); appends are batched.
        let in_flight = sink.capabilities().max_concurrency.max(1);
        for chunk in entries.chunks(BATCH) {
            let mut batch = Vec::with_capacity(chunk.len());
            let records: Vec<_> = futures::stream::iter(chunk.iter().map(|e| sink.get(e.id)))
                .buffered(in_flight)
                .collect()
                .await;
            for record in records {
                match record? {
                    Some(record) => batch.push(Command::Recover {
                        id: record.id,
                        name: record.name,
                        scope: record.scope,
                        owner: record.owner,
                        labels: record.labels,
                        values: record.values,
                    }),
                    None => gone += 1,
                }
            }
            secrets += batch.len() as u64;
            if !batch.is_empty() {
                ledger.execute(actor, batch)?;
            }
            progress(secrets + gone, total);
        }
        ledger.execute(
            actor,
            vec![
                Command::AddSink {
                    name: SOURCE_SINK.into(),
                    url: source_url.to_owned(),
                    role: SinkRole::Standby,
                },
                Command::AddSink {
                    name: crate::setup::DEFAULT_SINK.into(),
                    url: primary,
                    role: SinkRole::Primary,
                },
            ],
        )?;
        Ok::<_, Error>((secrets, gone))
    }
    .await;
    match rebuilt {
        Ok((secrets, gone)) => Ok(Recovered {
            ledger,
            secrets,
            gone,
        }),
        Err(e) => {
            drop(ledger);
            location.remove_created();
            if let Some(file) = created {
                let _ = std::fs::remove_file(file);
            }
            Err(e)
        }
    }
}
