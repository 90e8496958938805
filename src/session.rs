//! One way in for a front end (the `sledger` command, a script, another program): a
//! [`Session`] is a ledger on this host ([`Local`]) or a `sledger serve` ([`Client`]), and
//! answers each operation the same way either way (the JSON documents a server sends, where
//! there are documents), so what renders the answers need not know which.
//!
//! Blocking, like [`Client`]: a local call runs on the session's own single-threaded runtime,
//! so it must not be made from inside an async runtime.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::access_log::AccessFilter;
use crate::client::Client;
use crate::crypto::MASTER_KEY_ENV;
use crate::error::{Error, Result};
use crate::identity::Role;
use crate::keys::KeyReloader;
use crate::project::{write_docs, PrimaryWait};
use crate::read::{read_latest, ReadFrom, Served};
use crate::replay::orchestrate::{self, MigratePlan, MigrateStep, MigrateTo, Phase, Progress};
use crate::replay::Target;
use crate::store::Location;
use crate::{Command, Ledger, ListQuery, LogFilter, MasterKey, Outcome, ReadPoint};

/// A ledger on this host, opened afresh by each call as one command of the CLI does: where it
/// is, where its key comes from, who acts, and how long a write waits for the primary sink.
pub struct Local {
    pub ledger: Location,
    pub key_file: PathBuf,
    /// A KMS key URI (`--master-key aws-kms://…`) when the key is wrapped in the ledger.
    pub kms: Option<String>,
    pub actor: String,
    pub wait: Duration,
    /// The base64 key from SLEDGER_MASTER_KEY, which a front end takes out of its
    /// environment before it starts any thread (so that no child process inherits it).
    env_key: Option<Zeroizing<String>>,
    notes: Box<dyn Fn(&str) + Send + Sync>,
    /// One runtime for every call: a ledger keeps the sinks it opened, and their plug-in
    /// processes and connection pools belong to the runtime they were opened on.
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl Local {
    /// `notes` hears what a person should know but that is no error (a primary that did not
    /// answer when the ledger was opened to write).
    pub fn new(
        ledger: Location,
        key_file: PathBuf,
        kms: Option<String>,
        env_key: Option<Zeroizing<String>>,
        actor: String,
        wait: Duration,
        notes: impl Fn(&str) + Send + Sync + 'static,
    ) -> Local {
        Local {
            ledger,
            key_file,
            kms,
            actor,
            wait,
            env_key,
            notes: Box::new(notes),
            runtime: OnceLock::new(),
        }
    }

    /// Run a future to completion on this session's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime can be built")
            })
            .block_on(future)
    }

    /// The master key from SLEDGER_MASTER_KEY, if it was set.
    pub fn env_key(&self) -> Result<Option<MasterKey>> {
        self.env_key
            .as_deref()
            .map(|text| {
                MasterKey::from_base64(text).map_err(|e| match e {
                    Error::KeyUnavailable(why) => {
                        Error::KeyUnavailable(format!("{MASTER_KEY_ENV} is unusable: {why}"))
                    }
                    other => other,
                })
            })
            .transpose()
    }

    /// The master key from SLEDGER_MASTER_KEY or the key file, if there is one (not checked
    /// against the ledger).
    pub fn master_key_if_any(&self) -> Result<Option<MasterKey>> {
        match self.env_key()? {
            Some(key) => Ok(Some(key)),
            None => MasterKey::read_file_if_present(&self.key_file),
        }
    }

    /// Open the ledger without its key (audit and verify need none).
    pub fn open(&self) -> Result<Ledger> {
        Ledger::open(self.ledger.clone())
    }

    /// Open the ledger and unlock it with the master key.
    pub fn open_unlocked(&self) -> Result<Ledger> {
        let mut ledger = self.open()?;
        match self.env_key()? {
            Some(key) => ledger.unlock(key)?,
            None => crate::keys::unlock(&mut ledger, &self.key_file, self.kms.as_deref())?,
        }
        Ok(ledger)
    }

    /// The master key that opens this ledger (checked), for calls that open their own
    /// connections.
    pub fn master_key(&self) -> Result<MasterKey> {
        Ok(self.open_unlocked()?.master_key()?.clone())
    }

    /// Open the ledger to write: unlocked, and refused if it lost events its primary sink
    /// witnessed (a truncated tail, an older copy put back). A primary that does not answer
    /// within the wait (at least a second, at most five) is noted, not waited for.
    pub fn open_to_write(&self) -> Result<Ledger> {
        let ledger = self.open_unlocked()?;
        let limit = self.wait.clamp(Duration::from_secs(1), Duration::from_secs(5));
        if let Some(note) = self.block_on(crate::witness::check_primary(&ledger, limit))? {
            (self.notes)(&note);
        }
        Ok(ledger)
    }

    /// Open to write and apply `commands` as the actor. A key rotation by another process in
    /// the meantime is waited out rather than failed: the write is tried again with the
    /// rotated key once its key file is in place (a rotation renames it over the old one just
    /// after committing).
    pub fn execute(&self, commands: Vec<Command>) -> Result<(Ledger, Vec<Outcome>)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut rotated = false;
        loop {
            let attempt = self.open_to_write().and_then(|mut ledger| {
                let outcomes = ledger.execute(&self.actor, commands.clone())?;
                Ok((ledger, outcomes))
            });
            let waiting = match &attempt {
                Err(Error::KeyRotated) => true,
                // The rotation committed, and its key file is not renamed into place yet.
                Err(Error::WrongKey) => rotated,
                _ => false,
            };
            if !waiting || Instant::now() >= deadline {
                return attempt;
            }
            rotated = true;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After a write: give the primary sink up to the wait to apply the write's own last
    /// event (nothing to wait for when it appended none).
    pub fn wait_for_primary(&self, ledger: &Ledger, outcomes: &[Outcome]) -> Result<Option<PrimaryWait>> {
        let Some(seq) = outcomes.iter().filter_map(Outcome::seq).max() else {
            return Ok(None);
        };
        self.block_on(crate::project::wait_for_primary(ledger, self.wait, seq, outcomes))
    }

    /// Apply `commands`, wait for the primary, and describe what changed: the documents a
    /// server answers a write with.
    pub fn write(&self, verb: &str, commands: Vec<Command>) -> Result<Vec<Value>> {
        let (ledger, outcomes) = self.execute(commands)?;
        self.written(verb, &ledger, &outcomes)
    }

    /// What a write did, once the primary has had its chance to apply it.
    fn written(&self, verb: &str, ledger: &Ledger, outcomes: &[Outcome]) -> Result<Vec<Value>> {
        let primary = self.wait_for_primary(ledger, outcomes)?;
        Ok(write_docs(verb, outcomes, primary.as_ref()))
    }

    /// `undelete NAME --as NEW`: the deleted secret called NAME (the caller's private one
    /// first, then the most recently changed) renamed and brought back, in one transaction.
    pub fn undelete_as(&self, name: &str, new_name: String) -> Result<Vec<Value>> {
        let commands = self.open()?.undelete_as(&self.actor, name, new_name)?;
        let (ledger, outcomes) = self.execute(commands)?;
        // The first outcome is the rename that freed the name; the document is the undelete.
        self.written("undeleted", &ledger, &outcomes[1..])
    }

    /// `sledger recover --from URL`: a new ledger here from a sink's current state (see
    /// [`crate::recover::recover`]), under the key given. A sqlite source is sealed under the
    /// lost ledger's key: given a KMS key (`--master-key`) instead, the key the sink keeps as
    /// that KMS wrapped it opens it, and the KMS holds the new ledger's key too. A cloud
    /// source's values its own credentials open: with no key given, the new ledger gets a new
    /// one, held by the KMS key given, or else in the key file (removed again if the recovery
    /// fails). [`Recovery::project`] then catches the new primary up.
    pub fn recover(
        &self,
        from: &str,
        primary: Option<&str>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Recovery> {
        let sqlite_source = crate::sink::SinkUrl::parse(from)?
            .sqlite_path()
            .map(std::path::Path::to_path_buf);
        let (master, held_by, new_key_file) =
            match (self.master_key_if_any()?, &sqlite_source) {
                (Some(key), _) => (key, None, None),
                (None, None) => match &self.kms {
                    Some(uri) => (MasterKey::generate(), Some(crate::keys::kms(uri)?), None),
                    None => {
                        let key = MasterKey::generate();
                        key.write_new_file(&self.key_file)?;
                        (key, None, Some(self.key_file.clone()))
                    }
                },
                (None, Some(file)) => {
                    match crate::sink::SqliteSink::escrowed_master(file, self.kms.as_deref())? {
                    Some((key, kms)) => (key, Some(kms), None),
                    None => {
                        return Err(Error::invalid(
                            "a sqlite sink opens only with the lost ledger's master key: give it with --key-file PATH or \
                             SLEDGER_MASTER_KEY (this sink file keeps no key a KMS wrapped, as those of a ledger whose \
                             key was in a file, and those an older sledger wrote, do not)",
                        ))
                    }
                }
                }
            };
        let recovered = self.block_on(crate::recover::recover(
            &self.ledger,
            master,
            held_by.as_deref(),
            from,
            primary,
            &self.actor,
            progress,
        ));
        let recovered = recovered.inspect_err(|_| {
            if let Some(made) = &new_key_file {
                let _ = std::fs::remove_file(made);
            }
        })?;
        Ok(Recovery {
            recovered,
            new_key_file,
        })
    }

    /// How a long-running front end (a server, `project --follow`) finds the master key again
    /// after `key rotate` replaced it: as [`Local::open_unlocked`] does, except that the
    /// environment's key, once replaced, is not the key any more.
    pub fn key_reloader(&self) -> KeyReloader {
        let (ledger, key_file, kms) = (self.ledger.clone(), self.key_file.clone(), self.kms.clone());
        let env_key = self.env_key().ok().flatten();
        KeyReloader::new(move || {
            let mut opened = Ledger::open(ledger.clone())?;
            match env_key.clone() {
                Some(key) => opened.unlock(key).map_err(|e| match e {
                    Error::WrongKey => Error::KeyUnavailable(format!(
                        "{MASTER_KEY_ENV} holds the key the ledger was rotated away from; \
                         start this command again with the new one"
                    )),
                    // A database that cannot be read is that, not a stale key.
                    other => other,
                })?,
                None => crate::keys::unlock(&mut opened, &key_file, kms.as_deref())?,
            }
            Ok(opened.master_key()?.clone())
        })
    }
}

/// What [`Local::recover`] made.
pub struct Recovery {
    pub recovered: crate::recover::Recovered,
    /// The key file written for the new ledger, when no key was given.
    pub new_key_file: Option<PathBuf>,
}

impl Recovery {
    /// The first projection into the new primary sink, so that it holds this ledger's records
    /// and anchor; after an error, `sledger project` finishes it.
    pub fn project(&self, local: &Local) -> Result<()> {
        let primary = crate::setup::DEFAULT_SINK;
        local
            .block_on(crate::project::project_named(
                &self.recovered.ledger,
                primary,
                &Default::default(),
            ))
            .map(drop)
    }
}

impl Drop for Local {
    /// Without waiting for blocking work still running (a sink's DNS lookup that a timeout gave
    /// up on): a command that is done exits, as it did when nothing waited for that work.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A ledger here, or a server there.
pub enum Session {
    Local(Local),
    /// A server, and how long its writes wait for its primary sink.
    Remote {
        client: Client,
        wait: Duration,
    },
}

/// `{"seq": N, "at": "RFC 3339"}`, as a server takes a point of the log.
fn target_body(target: Target) -> Value {
    match target {
        Target::Head => json!({}),
        Target::Seq(seq) => json!({"seq": seq}),
        Target::Time(at) => json!({"at": crate::event::format_millis(at)}),
    }
}

fn migrate_body(to: &MigrateTo, dry_run: bool) -> Value {
    let mut body = serde_json::to_value(to).expect("migrations serialise");
    body["dry_run"] = json!(dry_run);
    body
}

fn unreadable_answer(e: serde_json::Error) -> Error {
    Error::Remote {
        class: crate::ErrorClass::Internal,
        message: format!(
            "the server's answer is not what this client expects ({e}); are both the same version?"
        ),
    }
}

fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(docs) => docs,
        _ => Vec::new(),
    }
}

fn docs<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> Vec<Value> {
    items
        .into_iter()
        .map(|item| serde_json::to_value(item).expect("documents serialise"))
        .collect()
}

impl Session {
    /// The local ledger, or an error saying that `command` is not offered through a server.
    pub fn local(&self, command: &str) -> Result<&Local> {
        match self {
            Session::Local(local) => Ok(local),
            Session::Remote { .. } => Err(Error::invalid(format!(
                "`sledger {command}` is not available through --server yet; run it on the server's host against the ledger file"
            ))),
        }
    }

    /// How long a write waits for the primary sink to apply it.
    pub fn wait(&self) -> Duration {
        match self {
            Session::Local(local) => local.wait,
            Session::Remote { wait, .. } => *wait,
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Session::Remote { .. })
    }

    /// Apply one command to a secret; one document per changed secret, whose `result` is
    /// `verb` (a server names its own).
    pub fn write(&self, verb: &str, command: Command) -> Result<Vec<Value>> {
        match self {
            Session::Remote { client, wait } => client.execute(command, *wait),
            Session::Local(local) => local.write(verb, vec![command]),
        }
    }

    /// A secret's values: the latest from the first source that has it, or a version or
    /// point in time from the ledger.
    pub fn read(&self, name: &str, point: Option<ReadPoint>, from: ReadFrom) -> Result<Value> {
        match self {
            Session::Remote { client, .. } => client.read(name, point, from),
            Session::Local(local) => {
                let ledger = local.open_unlocked()?;
                let served = match point {
                    Some(point) => Served::from_ledger(ledger.read(&local.actor, name, point)?),
                    None => local.block_on(read_latest(&ledger, &local.actor, name, from))?,
                };
                for (sink, why) in &served.skipped {
                    tracing::info!(sink = %sink, reason = %why, "read fell through to the next source");
                }
                Ok(served.to_json())
            }
        }
    }

    /// Secrets in name order, each handed to `each`: a page of `limit` (returning where the
    /// next page starts), or every one.
    pub fn list(
        &self,
        query: &ListQuery,
        limit: Option<usize>,
        each: &mut dyn FnMut(&Value),
    ) -> Result<Option<String>> {
        match self {
            Session::Remote { client, .. } => {
                // A server pages at most MAX_LIST_PAGE at a time; a larger limit takes several.
                let mut query = query.clone();
                let mut wanted = limit;
                loop {
                    let page = wanted.map(|w| w.min(crate::server::routes::MAX_LIST_PAGE));
                    let (docs, next) = client.list(&query, page)?;
                    docs.iter().for_each(&mut *each);
                    wanted = wanted.map(|w| w.saturating_sub(docs.len()));
                    match next {
                        Some(after) if wanted != Some(0) => query.after = Some(after),
                        next => return Ok(next),
                    }
                }
            }
            Session::Local(local) => {
                let ledger = local.open()?;
                match limit {
                    Some(limit) => {
                        let page = ledger.list_page(&local.actor, query, limit, &|_| true)?;
                        page.secrets.iter().for_each(|m| each(&m.to_json()));
                        Ok(page.next_after)
                    }
                    None => {
                        ledger.scan_secrets(&local.actor, query, &mut |m| {
                            each(&m.to_json());
                            Ok(true)
                        })?;
                        Ok(None)
                    }
                }
            }
        }
    }

    /// A secret's audit entries.
    pub fn history(&self, name: &str) -> Result<Vec<Value>> {
        match self {
            Session::Remote { client, .. } => client.history(name),
            Session::Local(local) => Ok(local
                .open()?
                .history(&local.actor, name)?
                .iter()
                .map(|e| e.to_json())
                .collect()),
        }
    }

    /// The audit entries `filter` keeps, handed to `each` as they are read; where following
    /// them picks up.
    pub fn log(&self, filter: &LogFilter, each: &mut dyn FnMut(&Value)) -> Result<Option<u64>> {
        match self {
            Session::Remote { client, .. } => client.log(filter, each),
            Session::Local(local) => {
                let covered = local.open()?.scan_log(&local.actor, filter.clone(), &mut |e| {
                    each(&e.to_json());
                    Ok(true)
                })?;
                Ok(Some(covered))
            }
        }
    }

    /// Follow the audit log after `after` (what [`Session::log`] returned), handing each new
    /// entry `filter` keeps to `each`, until the server ends the stream (locally, never).
    pub fn follow_log(
        &self,
        filter: &LogFilter,
        after: Option<u64>,
        each: &mut dyn FnMut(&Value),
    ) -> Result<()> {
        let local = match self {
            Session::Remote { client, .. } => return client.follow_log(filter, after, &mut |e| each(&e)),
            Session::Local(local) => local,
        };
        let ledger = local.open()?;
        let mut covered = after.unwrap_or(0);
        let mut appended = local.ledger.watch_appends()?;
        loop {
            let next = LogFilter {
                after_seq: Some(covered),
                limit: None,
                tail: None,
                ..filter.clone()
            };
            covered = ledger.scan_log(&local.actor, next, &mut |e| {
                each(&e.to_json());
                Ok(true)
            })?;
            match appended.as_mut() {
                // Woken by the next append (or once in a while, to notice a lost listener).
                Some(appended) => local.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(5), appended.changed()).await;
                }),
                None => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The access log's entries that `filter` keeps.
    pub fn access_log(&self, filter: &AccessFilter) -> Result<Vec<Value>> {
        match self {
            Session::Remote { client, .. } => client.access_log(filter),
            Session::Local(local) => Ok(docs(local.open()?.query_access(filter)?)),
        }
    }

    /// Add, promote, re-role or remove a sink; whether anything changed.
    pub fn change_sink(&self, command: Command) -> Result<bool> {
        if !matches!(
            command,
            Command::AddSink { .. }
                | Command::PromoteSink { .. }
                | Command::SetSinkRole { .. }
                | Command::RemoveSink { .. }
        ) {
            return Err(Error::invalid("change_sink takes a sink command"));
        }
        let client = match self {
            Session::Remote { client, .. } => client,
            Session::Local(local) => {
                let mut ledger = local.open_to_write()?;
                let outcomes = match command {
                    Command::AddSink { name, url, role } => local.block_on(orchestrate::add_sink(
                        &mut ledger,
                        &local.actor,
                        &name,
                        &url,
                        role,
                    ))?,
                    command => ledger.execute(&local.actor, vec![command])?,
                };
                return Ok(!outcomes.is_empty());
            }
        };
        let answer = match &command {
            Command::AddSink { name, url, role } => {
                client.post(&["sinks"], json!({"name": name, "url": url, "role": role}))?
            }
            Command::PromoteSink { name } => client.post(&["sinks", name, "promote"], json!({}))?,
            Command::SetSinkRole { name, role } => {
                client.put(&["sinks", name, "role"], json!({"role": role}))?
            }
            Command::RemoveSink { name } => client.delete(&["sinks", name])?,
            _ => unreachable!("sink commands only, checked above"),
        };
        Ok(answer.as_array().is_none_or(|a| !a.is_empty()))
    }

    /// Apply a sink's parked events again: `{"applied": N, "still_parked": M}`.
    pub fn retry_sink(&self, name: &str) -> Result<Value> {
        match self {
            Session::Remote { client, .. } => client.post(&["sinks", name, "retry"], json!({})),
            Session::Local(local) => Ok(json!(
                local.block_on(crate::project::retry_parked(&local.open_to_write()?, name))?
            )),
        }
    }

    /// Check that a sink answers; who it runs as, when the backend says.
    pub fn check_sink(&self, name: &str) -> Result<Value> {
        match self {
            Session::Remote { client, .. } => {
                Ok(client.post(&["sinks", name, "check"], json!({}))?["identity"].clone())
            }
            Session::Local(local) => Ok(json!(
                local.block_on(crate::project::check_sink(&local.open_unlocked()?, name))?
            )),
        }
    }

    /// Every sink's status, as `GET /v1/sinks` shows it; locally with the key, also who each
    /// sink runs as (`identity`), and without it the ledger's view alone (an auditor).
    pub fn sink_statuses(&self) -> Result<Vec<Value>> {
        match self {
            Session::Remote { client, .. } => Ok(array(client.get(&["sinks"])?)),
            Session::Local(local) => Ok(docs(match local.open_unlocked() {
                Ok(ledger) => local.block_on(crate::project::statuses_with_identities(&ledger))?,
                Err(_) => local.open()?.sink_status()?,
            })),
        }
    }

    /// Issue a token; the document holds it, once.
    pub fn issue_token(
        &self,
        name: &str,
        role: Role,
        patterns: Vec<String>,
        expires: Option<Duration>,
    ) -> Result<Value> {
        match self {
            Session::Remote { client, .. } => client.post(
                &["tokens"],
                json!({"name": name, "role": role, "patterns": patterns,
                       "expires_in_seconds": expires.map(|d| d.as_secs().max(1))}),
            ),
            Session::Local(local) => local.block_on(crate::identity::issue_token(
                &mut local.open_to_write()?,
                &local.actor,
                name,
                role,
                patterns,
                expires,
            )),
        }
    }

    /// Every token issued, revoked and expired ones too (never the secret part).
    pub fn tokens(&self) -> Result<Vec<Value>> {
        match self {
            Session::Remote { client, .. } => Ok(array(client.get(&["tokens"])?)),
            Session::Local(local) => Ok(docs(local.open_unlocked()?.tokens()?.all())),
        }
    }

    pub fn revoke_token(&self, name: &str) -> Result<()> {
        match self {
            Session::Remote { client, .. } => client.delete(&["tokens", name]).map(drop),
            Session::Local(local) => local
                .open_to_write()?
                .execute(
                    &local.actor,
                    vec![Command::RevokeToken {
                        name: name.to_owned(),
                    }],
                )
                .map(drop),
        }
    }

    /// What a sink lacks, holds stale, holds extra or holds changed against a point of the log:
    /// one document per difference.
    pub fn diff(&self, sink: &str, target: Target, progress: Progress<'_>) -> Result<Vec<Value>> {
        match self {
            Session::Remote { client, .. } => {
                let mut body = target_body(target);
                body["sink"] = json!(sink);
                Ok(array(client.post(&["diff"], body)?))
            }
            Session::Local(local) => {
                let ledger = local.open_unlocked()?;
                let seq = ledger.target_seq(target)?;
                let (_, opened) = ledger.open_sink(sink)?;
                let desired = ledger.desired_at(seq)?;
                let differences = local.block_on(crate::replay::diff(&desired, &*opened, &|d, t| {
                    progress(Phase::Comparing, d, t)
                }))?;
                Ok(differences.iter().map(|d| d.to_json(sink)).collect())
            }
        }
    }

    /// Make a sink match the ledger; `report` hears each resync document (what was found,
    /// what was applied).
    pub fn reconcile(
        &self,
        sink: &str,
        force_ledger: bool,
        progress: Progress<'_>,
        report: &mut dyn FnMut(&Value),
    ) -> Result<()> {
        match self {
            Session::Remote { client, .. } => {
                let answer = client.post(
                    &["reconcile"],
                    json!({"sink": sink, "force_ledger": force_ledger}),
                )?;
                Self::events(&answer, report);
                Ok(())
            }
            Session::Local(local) => {
                let mut ledger = local.open_to_write()?;
                local.block_on(orchestrate::reconcile_attached(
                    &mut ledger,
                    &local.actor,
                    sink,
                    force_ledger,
                    progress,
                    &mut |event| report(&event.to_json()),
                ))?;
                Ok(())
            }
        }
    }

    /// Bring every backup sink up to the ledger; with `delete_secrets`, then empty the
    /// primary: the sink emptied and how many it lost (in a dry run, would lose).
    pub fn backup(
        &self,
        dry_run: bool,
        delete_secrets: bool,
        progress: Progress<'_>,
        report: &mut dyn FnMut(&Value),
    ) -> Result<Option<(String, u64)>> {
        match self {
            Session::Remote { client, .. } => {
                let answer = client.post(
                    &["backup"],
                    json!({"dry_run": dry_run, "delete_secrets": delete_secrets}),
                )?;
                Self::events(&answer, report);
                let emptied = &answer["emptied"];
                let count = if dry_run { "would_delete" } else { "deleted" };
                Ok(emptied["sink"]
                    .as_str()
                    .map(|sink| (sink.to_owned(), emptied[count].as_u64().unwrap_or(0))))
            }
            Session::Local(local) => {
                let ledger = local.open_to_write()?;
                let backed_up = local.block_on(orchestrate::backup(
                    &ledger,
                    dry_run,
                    delete_secrets,
                    progress,
                    &mut |event| report(&event.to_json()),
                ))?;
                Ok(backed_up.emptied)
            }
        }
    }

    fn events(answer: &Value, report: &mut dyn FnMut(&Value)) {
        answer["events"].as_array().into_iter().flatten().for_each(report);
    }

    /// Put secrets back as they were at a point of the log (all, or the names in `secrets`),
    /// as new versions: the plan's summary, with `outcomes` (write documents) when it wrote.
    pub fn restore(&self, target: Target, secrets: &[String], dry_run: bool) -> Result<Value> {
        match self {
            Session::Remote { client, wait } => {
                let mut body = target_body(target);
                body["secrets"] = json!(secrets);
                body["dry_run"] = json!(dry_run);
                body["wait_ms"] = json!(wait.as_millis() as u64);
                client.post(&["restore"], body)
            }
            Session::Local(local) => {
                let mut ledger = local.open_to_write()?;
                let seq = ledger.target_seq(target)?;
                let mut plan = ledger.plan_restore(&local.actor, seq, secrets)?;
                let mut summary = plan.summary(dry_run);
                let commands = plan.commands_to_run(dry_run)?;
                if !commands.is_empty() {
                    let outcomes = ledger.execute(&local.actor, commands)?;
                    summary["outcomes"] = json!(local.written("restored", &ledger, &outcomes)?);
                }
                Ok(summary)
            }
        }
    }

    /// What `migrate` would do, changing nothing.
    pub fn plan_migration(&self, to: &MigrateTo) -> Result<MigratePlan> {
        match self {
            Session::Remote { client, .. } => {
                let answer = client.post(&["migrate"], migrate_body(to, true))?;
                serde_json::from_value(answer["plan"].clone()).map_err(unreadable_answer)
            }
            Session::Local(local) => local.block_on(orchestrate::plan_migration(&local.open_to_write()?, to)),
        }
    }

    /// Make another sink the primary with no gap in reads, in five resumable steps, each
    /// handed to `step` as it completes.
    pub fn migrate(
        &self,
        to: &MigrateTo,
        progress: Progress<'_>,
        step: &mut dyn FnMut(MigrateStep),
    ) -> Result<()> {
        match self {
            Session::Remote { client, .. } => {
                let answer = client.post(&["migrate"], migrate_body(to, false))?;
                for done in answer["steps"].as_array().into_iter().flatten() {
                    step(serde_json::from_value(done.clone()).map_err(unreadable_answer)?);
                }
                Ok(())
            }
            Session::Local(local) => {
                let mut ledger = local.open_to_write()?;
                local.block_on(orchestrate::migrate(
                    &mut ledger,
                    &local.actor,
                    to,
                    progress,
                    step,
                ))?;
                Ok(())
            }
        }
    }
}
