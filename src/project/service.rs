//! The continuous projector service: one projector per projected sink, each on its own thread
//! with its own ledger connection, runtime and deadline, so a backend that hangs delays only
//! its own sink. Used by `sledger project --follow` and by the server.
//!
//! A stop abandons the batch each projector has in flight (its checkpoint does not move, which
//! is safe because sinks are idempotent) and returns within [`STOP_GRACE`], even while a
//! backend hangs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{project_attachment, ProjectOptions, ProjectReport};
use crate::catalog::SinkConfig;
use crate::error::Result;
use crate::sink::Sink;
use crate::store::Location;
use crate::{Ledger, MasterKey};

/// How long a stop waits for projectors to let go before returning without them.
pub const STOP_GRACE: Duration = Duration::from_millis(1500);

/// How the service runs.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Per batch: size, concurrency and retries. Its `deadline` and `stop` are set by the service.
    pub project: ProjectOptions,
    /// Project only this sink.
    pub only: Option<String>,
    /// How long one projector call may run before it gives up and starts again, recording the
    /// sink's error: a backend that hangs shows up in `sink status` instead of nowhere.
    pub call_deadline: Duration,
    /// How often projectors look for appends by other processes (appends through a
    /// [`LedgerHandle`](crate::LedgerHandle) in this process wake them at once), and how often
    /// the service looks for sinks added or removed.
    pub poll: Duration,
    /// Longest pause between attempts while a sink keeps failing.
    pub max_pause: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            project: ProjectOptions::default(),
            only: None,
            call_deadline: Duration::from_secs(30),
            poll: Duration::from_millis(100),
            max_pause: Duration::from_secs(10),
        }
    }
}

/// What a projector did, reported as it happens (from the projector's own thread).
#[derive(Debug)]
pub enum ProjectorEvent {
    /// A call moved the sink's checkpoint.
    Projected { sink: String, report: ProjectReport },
    /// A call failed; the projector will try again after a pause.
    Failed { sink: String, error: crate::Error },
}

type Report = Arc<dyn Fn(ProjectorEvent) + Send + Sync>;

struct Running {
    thread: std::thread::JoinHandle<()>,
    /// Set when the sink is no longer projected, to end this projector alone.
    retire: watch::Sender<bool>,
}

/// [`follow`] that goes on across a rotation of the master key by another process: when a
/// projector finds the key replaced, `reload` loads the new one and the projectors start again
/// with it (the batches in flight are abandoned, which sinks' idempotence makes safe).
pub async fn follow_across_rotations(
    location: &Location,
    master: &MasterKey,
    reload: crate::keys::KeyReloader,
    options: FollowOptions,
    mut stop: watch::Receiver<bool>,
    report: impl Fn(ProjectorEvent) + Send + Sync + 'static,
) -> Result<()> {
    let report = Arc::new(report);
    let mut master = master.clone();
    let mut reloaded = false;
    loop {
        let new = {
            let rotated = Arc::new(tokio::sync::Notify::new());
            let (stop_these, these_stop) = watch::channel(false);
            let running = {
                let (report, rotated) = (report.clone(), rotated.clone());
                follow(
                    location,
                    &master,
                    options.clone(),
                    None,
                    these_stop,
                    move |event| {
                        if let ProjectorEvent::Failed {
                            error: crate::Error::WrongKey | crate::Error::KeyRotated,
                            ..
                        } = &event
                        {
                            rotated.notify_one();
                        }
                        report(event)
                    },
                )
            };
            tokio::pin!(running);
            let mut ended = false;
            let new = loop {
                tokio::select! {
                    result = &mut running => match result {
                        // Restarted with a reloaded key that was replaced again meanwhile: wait
                        // for the newest, rather than end the service.
                        Err(crate::Error::WrongKey | crate::Error::KeyRotated) if reloaded => {
                            ended = true;
                            match wait_for_newer_key(&reload, &master, &mut stop).await {
                                Some(new) => break new,
                                None => return Ok(()),
                            }
                        }
                        other => return other,
                    },
                    _ = stop.changed() => {
                        let _ = stop_these.send(true);
                        return running.await;
                    }
                    _ = rotated.notified() => {
                        if let Some(new) = newer_key(&reload, &master).await {
                            break new;
                        }
                    }
                }
            };
            tracing::info!("the master key was rotated by another process: projecting with the new key");
            if !ended {
                let _ = stop_these.send(true);
                running.await?;
            }
            new
        };
        master = new;
        reloaded = true;
    }
}

/// The key `reload` finds, when it is not `master` (which the ledger's key replaced); the
/// same key means a projector's failure was something else.
async fn newer_key(reload: &crate::keys::KeyReloader, master: &MasterKey) -> Option<MasterKey> {
    reload
        .reload_after_rotation()
        .await
        .filter(|new| new.key_id() != master.key_id())
}

/// [`newer_key`], once a second until there is one, or `None` when `stop` turns true.
async fn wait_for_newer_key(
    reload: &crate::keys::KeyReloader,
    master: &MasterKey,
    stop: &mut watch::Receiver<bool>,
) -> Option<MasterKey> {
    loop {
        if let Some(new) = newer_key(reload, master).await {
            return Some(new);
        }
        tokio::select! {
            _ = stop.changed() => return None,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// Run a projector for every projected sink of the ledger at `location` until `stop` turns true.
/// Sinks added while it runs get a projector; removed or demoted ones lose theirs. `wake`
/// (a [`LedgerHandle::subscribe`](crate::LedgerHandle::subscribe) receiver) wakes projectors
/// as soon as an append commits.
pub async fn follow(
    location: &Location,
    master: &MasterKey,
    options: FollowOptions,
    wake: Option<watch::Receiver<u64>>,
    mut stop: watch::Receiver<bool>,
    report: impl Fn(ProjectorEvent) + Send + Sync + 'static,
) -> Result<()> {
    let report: Report = Arc::new(report);
    // Appends from every process and server, where the store signals them.
    let wake = match location.watch_appends()? {
        Some(appended) => Some(appended),
        None => wake,
    };
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let only = options.only.clone();
    let mut first = true;
    while !*stop.borrow() {
        let projected = {
            let (location, master, only) = (location.clone(), master.clone(), only.clone());
            match tokio::task::spawn_blocking(move || projected_sinks(location, master, only.as_deref()))
                .await
            {
                Ok(projected) => projected,
                // The runtime is shutting down (its owner returned an error of its own).
                Err(e) if e.is_cancelled() => return Ok(()),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        };
        let projected = match projected {
            Ok(names) => names,
            // The first look decides whether the service can run at all.
            Err(e) if first => return Err(e),
            // The one sink asked for was removed or made a standby: nothing to project.
            Err(e)
                if matches!(
                    e.class(),
                    crate::ErrorClass::NotFound | crate::ErrorClass::Invalid
                ) =>
            {
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the sinks; keeping the projectors running");
                running.keys().cloned().collect()
            }
        };
        first = false;
        running.retain(|name, r| {
            let keep = projected.contains(name) && !r.thread.is_finished();
            if !keep {
                let _ = r.retire.send(true);
            }
            keep
        });
        for name in projected {
            if let std::collections::btree_map::Entry::Vacant(slot) = running.entry(name.clone()) {
                let (retire, retired) = watch::channel(false);
                let projector = Projector {
                    location: location.clone(),
                    master: master.clone(),
                    sink: name.clone(),
                    options: options.clone(),
                    wake: wake.clone(),
                    stop: stop.clone(),
                    retired,
                    report: report.clone(),
                };
                let thread = std::thread::Builder::new()
                    .name(format!("project-{name}"))
                    .spawn(move || projector.run())
                    .map_err(|e| crate::Error::io("cannot start a projector thread", e))?;
                slot.insert(Running { thread, retire });
            }
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(options.poll.max(Duration::from_millis(10)) * 10) => {}
        }
    }
    // Projectors see the stop themselves and abandon their batch; wait for them a moment,
    // then leave any that a blocking call still holds (the process is shutting down).
    let until = Instant::now() + STOP_GRACE;
    while running.values().any(|r| !r.thread.is_finished()) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (name, r) in running {
        if r.thread.is_finished() {
            let _ = r.thread.join();
        } else {
            tracing::warn!(sink = %name, "projector did not stop in time; abandoning it");
        }
    }
    Ok(())
}

/// [`super::projected_sinks`] of the ledger at `location`.
fn projected_sinks(location: Location, master: MasterKey, only: Option<&str>) -> Result<Vec<String>> {
    super::projected_sinks(&Ledger::open_with_key(location, master)?, only)
}

struct Projector {
    location: Location,
    master: MasterKey,
    sink: String,
    options: FollowOptions,
    wake: Option<watch::Receiver<u64>>,
    stop: watch::Receiver<bool>,
    retired: watch::Receiver<bool>,
    report: Report,
}

impl Projector {
    fn run(self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime can be built");
        let Projector {
            location,
            master,
            sink,
            options,
            mut wake,
            mut stop,
            mut retired,
            report,
        } = self;
        runtime.block_on(async {
            // Watches the head between attempts.
            let mut ledger: Option<Ledger> = None;
            // The sink is kept between attempts, so its client keeps its connections and its
            // credentials (a Vault token renewed before it expires); reopened after a failure,
            // and when the attachment changes (removed and added again, maybe elsewhere).
            let mut backend: Option<(SinkConfig, Arc<dyn Sink>)> = None;
            let mut failures = 0u32;
            loop {
                if *stop.borrow() || *retired.borrow() {
                    return;
                }
                let attempt = async {
                    // A connection per attempt: nothing of one attempt (a statement, a
                    // transaction a dropped future left open) outlives it.
                    let ledger = Ledger::open_with_key(location.clone(), master.clone())?;
                    let ledger = &ledger;
                    let opts = ProjectOptions {
                        deadline: Some(Instant::now() + options.call_deadline),
                        ..options.project.clone()
                    };
                    let config = ledger.sink_config(&sink)?;
                    if !config.role.is_projected() {
                        // Made a standby: nothing to write until the service retires this
                        // projector; wait for the next append, as when caught up.
                        let head = ledger.head()?.seq;
                        let idle = ProjectReport {
                            checkpoint: head,
                            head,
                            ..Default::default()
                        };
                        return Ok((idle, false));
                    }
                    let target = match &backend {
                        Some((opened_for, b)) if *opened_for == config => b.clone(),
                        _ => match ledger.open_sink(&sink) {
                            Ok((config, opened)) => backend.insert((config, opened)).1.clone(),
                            Err(e) => {
                                // A sink that cannot even be opened shows in `sink status`.
                                ledger.record_sink_error(&sink, &e.to_string())?;
                                return Err(e);
                            }
                        },
                    };
                    let opened_for = &backend.as_ref().expect("opened above").0;
                    let done = project_attachment(ledger, opened_for, &*target, &opts).await?;
                    let behind = ledger.head()?.seq > done.checkpoint;
                    Ok::<_, crate::Error>((done, behind))
                };
                let outcome = tokio::select! {
                    outcome = attempt => outcome,
                    // The batch in flight is abandoned: its checkpoint stays where it was.
                    _ = stop.changed() => return,
                    _ = retired.changed() => return,
                };
                // The head this projector has caught up to; an append after it wakes the wait.
                let mut caught_up_to = None;
                let pause = match outcome {
                    Ok((done, behind)) => {
                        failures = 0;
                        caught_up_to = Some(done.checkpoint);
                        if done.events > 0 {
                            report(ProjectorEvent::Projected {
                                sink: sink.clone(),
                                report: done,
                            });
                        }
                        if behind {
                            continue; // appended meanwhile, or the deadline cut a long catch-up
                        }
                        None
                    }
                    // Removed: the service retires this projector at its next look, and a
                    // sink added again under the name gets a new one.
                    Err(crate::Error::SinkNotFound { .. }) => return,
                    Err(error) => {
                        failures = (failures + 1).min(8);
                        report(ProjectorEvent::Failed {
                            sink: sink.clone(),
                            error,
                        });
                        ledger = None; // open afresh: the file may have been replaced
                        backend = None;
                        Some((Duration::from_millis(200) * (1 << failures)).min(options.max_pause))
                    }
                };
                // Wait for new appends (signalled, or seen by polling the head), for the end
                // of the pause after a failure, or for a stop.
                if ledger.is_none() {
                    ledger = Ledger::open(location.clone()).ok();
                }
                // Without a connection to watch the head with, try again after a pause.
                let pause = pause.or_else(|| ledger.is_none().then_some(Duration::from_secs(1)));
                let until = pause.map(|p| tokio::time::Instant::now() + p);
                loop {
                    let woken = async {
                        match wake.as_mut() {
                            Some(w) => w.changed().await.is_ok(),
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = retired.changed() => return,
                        signalled = woken => {
                            if !signalled {
                                wake = None; // the handle is gone: poll from now on
                            } else if pause.is_none() {
                                break;
                            }
                        }
                        _ = tokio::time::sleep(options.poll) => {}
                    }
                    match until {
                        Some(until) if tokio::time::Instant::now() >= until => break,
                        Some(_) => {}
                        None => {
                            // Compared with the checkpoint reached, not a head read now: an
                            // append that landed since the attempt is not missed.
                            let now = ledger.as_ref().and_then(|l| l.head().ok()).map(|h| h.seq);
                            if now != caught_up_to {
                                break;
                            }
                        }
                    }
                }
            }
        });
    }
}
