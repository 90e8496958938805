//! A ledger shared by many tasks: `Clone + Send + Sync`, async, with group commit.
//!
//! One writer thread owns the write connection. Commands that arrive while it is busy are
//! applied together by [`Ledger::execute_group`]: one transaction, one fsync, and each caller
//! still gets its own result. Reads run on tokio's blocking pool against a small pool of read
//! connections, so no SQLite call ever runs on a tokio worker thread. Other processes may keep
//! using the same ledger file: appends serialize through SQLite's write lock as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::{oneshot, watch};

use crate::access_log::AccessRecord;
use crate::error::{Error, Result};
use crate::ledger::{Command, Ledger, Outcome, Request};
use crate::store::Location;
use crate::MasterKey;

/// Most requests one group commit takes; more wait for the next one.
const MAX_GROUP: usize = 1024;
/// Reads that run at once, each on its own connection; more wait their turn without holding
/// a thread. Two per core keeps the cores busy while one read waits on the disk, and bounds
/// the memory a burst of clients can pin (each connection has its own page cache).
fn max_readers() -> usize {
    std::thread::available_parallelism().map_or(4, |n| 2 * n.get())
}

/// A job for the writer thread.
enum Write {
    Request {
        request: Request,
        reply: oneshot::Sender<Result<Vec<Outcome>>>,
    },
    /// Access-log records, appended together with those of other callers.
    Access {
        records: Vec<AccessRecord>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The master key another process rotated to, used from the next write on.
    Rekey {
        master: MasterKey,
        reply: oneshot::Sender<Result<()>>,
    },
}

struct Shared {
    location: Location,
    master: Mutex<MasterKey>,
    /// Bumped by each rekey: a read connection opened under an older key is not reused.
    key_generation: AtomicU64,
    writes: Mutex<Option<mpsc::Sender<Write>>>,
    readers: Mutex<Vec<(u64, Ledger)>>,
    reading: Arc<tokio::sync::Semaphore>,
    head: watch::Sender<u64>,
    groups: AtomicU64,
    requests: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A handle on an open, unlocked ledger that any number of tasks may share.
#[derive(Clone)]
pub struct LedgerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LedgerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerHandle")
            .field("location", &self.shared.location)
            .finish()
    }
}

/// How well group commit is batching: requests per transaction is `requests / groups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Write transactions committed (or attempted).
    pub groups: u64,
    /// Requests applied through them.
    pub requests: u64,
}

impl LedgerHandle {
    /// Open the ledger at `location` with its master key and start the writer thread.
    pub fn open(location: impl Into<Location>, master: MasterKey) -> Result<LedgerHandle> {
        let writer = Ledger::open_with_key(location, master.clone())?;
        Ok(Self::start(writer, master))
    }

    fn start(mut writer: Ledger, master: MasterKey) -> LedgerHandle {
        let (send, receive) = mpsc::channel::<Write>();
        let head = writer.head().map(|h| h.seq).unwrap_or(0);
        let shared = Arc::new(Shared {
            location: writer.location().clone(),
            master: Mutex::new(master),
            key_generation: AtomicU64::new(0),
            writes: Mutex::new(Some(send)),
            readers: Mutex::new(Vec::new()),
            reading: Arc::new(tokio::sync::Semaphore::new(max_readers())),
            head: watch::Sender::new(head),
            groups: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            writer: Mutex::new(None),
        });
        let weak = Arc::downgrade(&shared);
        let thread = std::thread::Builder::new()
            .name("sledger-writer".into())
            .spawn(move || {
                while let Ok(first) = receive.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match receive.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    let mut requests = Vec::new();
                    let mut replies = Vec::new();
                    let mut access = Vec::new();
                    let mut access_replies = Vec::new();
                    for job in group {
                        match job {
                            Write::Request { request, reply } => {
                                requests.push(request);
                                replies.push(reply);
                            }
                            Write::Access { records, reply } => {
                                access.extend(records);
                                access_replies.push(reply);
                            }
                            Write::Rekey { master, reply } => {
                                let _ = reply.send(rekey(&mut writer, master, weak.upgrade().as_deref()));
                            }
                        }
                    }
                    if !access_replies.is_empty() {
                        let recorded = writer.record_access(&access).map_err(|e| e.to_string());
                        for reply in access_replies {
                            let _ =
                                reply.send(recorded.clone().map_err(|reason| Error::AccessLogUnavailable {
                                    reason: reason.clone(),
                                }));
                        }
                    }
                    if requests.is_empty() {
                        continue;
                    }
                    let count = requests.len() as u64;
                    let results = writer.execute_group(requests);
                    if let Some(shared) = weak.upgrade() {
                        shared.groups.fetch_add(1, Ordering::Relaxed);
                        shared.requests.fetch_add(count, Ordering::Relaxed);
                        if let Some(head) = writer.committed_head() {
                            shared
                                .head
                                .send_if_modified(|known| std::mem::replace(known, head) != head);
                        }
                    }
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result); // the caller may have given up waiting
                    }
                }
            })
            .expect("the writer thread starts");
        *shared.writer.lock().expect("not poisoned") = Some(thread);
        LedgerHandle { shared }
    }

    pub fn location(&self) -> &Location {
        &self.shared.location
    }

    /// The master key this handle uses (for services that open their own connections, like
    /// the projectors): the one it opened the ledger with, or the one [`rekey`](Self::rekey)
    /// gave it since.
    pub fn master_key(&self) -> MasterKey {
        self.shared.master.lock().expect("not poisoned").clone()
    }

    /// Use `master` from now on: the key `sledger key rotate` in another process rotated the
    /// ledger to. Until then this handle's writes fail with [`Error::KeyRotated`] and its reads
    /// cannot open new data keys. Refused with [`Error::WrongKey`] unless `master` is the
    /// ledger's key now.
    pub async fn rekey(&self, master: MasterKey) -> Result<()> {
        let (reply, outcome) = oneshot::channel();
        self.submit(Write::Rekey { master, reply })?;
        outcome.await.map_err(|_| closed())?
    }

    /// Apply `commands` as one all-or-nothing request on behalf of `actor`. Requests from
    /// other tasks may share its transaction, but never its outcome: a request that fails
    /// fails alone.
    pub async fn execute(&self, actor: &str, commands: Vec<Command>) -> Result<Vec<Outcome>> {
        let (reply, outcome) = oneshot::channel();
        self.submit(Write::Request {
            request: Request {
                actor: actor.to_owned(),
                commands,
            },
            reply,
        })?;
        outcome.await.map_err(|_| closed())?
    }

    /// Append `records` to the access log; returns once they are durable. Records from
    /// concurrent callers share one transaction. If they cannot be written, the error is
    /// [`Error::AccessLogUnavailable`], and the caller must not serve what it was recording.
    pub async fn record_access(&self, records: Vec<AccessRecord>) -> Result<()> {
        let (reply, outcome) = oneshot::channel();
        self.submit(Write::Access { records, reply })?;
        outcome.await.map_err(|_| closed())?
    }

    fn submit(&self, job: Write) -> Result<()> {
        self.shared
            .writes
            .lock()
            .expect("not poisoned")
            .as_ref()
            .ok_or_else(closed)?
            .send(job)
            .map_err(|_| closed())
    }

    /// Run `read` against a read connection on tokio's blocking pool.
    pub async fn read<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T> + Send + 'static,
    {
        // The permit moves into the task, so a caller that gives up does not free its turn
        // while its read still runs.
        let turn = self
            .shared
            .reading
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let generation = shared.key_generation.load(Ordering::Acquire);
            let master = shared.master.lock().expect("not poisoned").clone();
            let idle = shared.readers.lock().expect("not poisoned").pop();
            let reader = match idle {
                Some((opened_in, reader)) if opened_in == generation => Ok(reader),
                _ => Ledger::open_with_key(shared.location.clone(), master.clone()),
            };
            let result = reader.and_then(|reader| {
                let result = read(&reader);
                // At most `max_readers` connections exist, since only that many reads run at once.
                shared
                    .readers
                    .lock()
                    .expect("not poisoned")
                    .push((generation, reader));
                result
            });
            match result {
                // This handle's key opened the ledger; if the ledger's key is another now, it
                // was rotated by another process: a temporary state until `rekey`, as for
                // writes. Otherwise the key is right and something it wrapped is damaged.
                Err(Error::WrongKey) if rotated_away_from(&shared.location, &master) => {
                    Err(Error::KeyRotated)
                }
                other => other,
            }
        })
        .await
        .map_err(|e| Error::io("a read task failed", std::io::Error::other(e.to_string())))?
    }

    /// The head seq after each commit through this handle (appends by other processes are
    /// not signalled: poll the log for those).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            groups: self.shared.groups.load(Ordering::Relaxed),
            requests: self.shared.requests.load(Ordering::Relaxed),
        }
    }

    /// Stop accepting writes, let the writer finish those already queued, and wait for it.
    /// Writes through any clone of this handle fail afterwards.
    pub fn close(&self) {
        self.shared.writes.lock().expect("not poisoned").take();
        if let Some(thread) = self.shared.writer.lock().expect("not poisoned").take() {
            let _ = thread.join();
        }
    }
}

/// On the writer thread: unlock the write connection with `master`; only if that works, make
/// it the key of every connection opened from now on.
fn rekey(writer: &mut Ledger, master: MasterKey, shared: Option<&Shared>) -> Result<()> {
    writer.unlock(master.clone())?;
    if let Some(shared) = shared {
        *shared.master.lock().expect("not poisoned") = master;
        shared.key_generation.fetch_add(1, Ordering::AcqRel);
        shared.readers.lock().expect("not poisoned").clear();
    }
    Ok(())
}

/// Whether the ledger at `location` has a master key other than `master` now.
fn rotated_away_from(location: &Location, master: &MasterKey) -> bool {
    Ledger::open(location.clone())
        .and_then(|ledger| ledger.key_matches(master))
        .is_ok_and(|matches| !matches)
}

fn closed() -> Error {
    Error::Closed
}

/// Where an operation appends, so that it is written once for every front end: a [`Ledger`] it
/// holds alone (the CLI, library users), or a [`LedgerHandle`]'s group commit, where the
/// handle's subscribers and counters see the append (the server).
pub trait Append {
    /// Apply `commands` as one all-or-nothing request on behalf of `actor`.
    fn append(
        &mut self,
        actor: &str,
        commands: Vec<Command>,
    ) -> impl std::future::Future<Output = Result<Vec<Outcome>>>;
}

/// An operation that also reads: through the ledger it appends to, or, with
/// [`ThroughHandle`], through one of a handle's read connections.
pub trait ReadAppend: Append {
    /// The connection to read through. It sees every append made through
    /// [`append`](Append::append) as soon as that returns.
    fn reader(&self) -> &Ledger;
}

impl Append for Ledger {
    async fn append(&mut self, actor: &str, commands: Vec<Command>) -> Result<Vec<Outcome>> {
        self.execute(actor, commands)
    }
}

impl ReadAppend for Ledger {
    fn reader(&self) -> &Ledger {
        self
    }
}

impl Append for LedgerHandle {
    async fn append(&mut self, actor: &str, commands: Vec<Command>) -> Result<Vec<Outcome>> {
        self.execute(actor, commands).await
    }
}

/// Reads through `reader` (a read connection [`LedgerHandle::read`] lends), appends through
/// `handle`.
pub struct ThroughHandle<'a> {
    pub reader: &'a Ledger,
    pub handle: &'a LedgerHandle,
}

impl Append for ThroughHandle<'_> {
    async fn append(&mut self, actor: &str, commands: Vec<Command>) -> Result<Vec<Outcome>> {
        self.handle.execute(actor, commands).await
    }
}

impl ReadAppend for ThroughHandle<'_> {
    fn reader(&self) -> &Ledger {
        self.reader
    }
}
