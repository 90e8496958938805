//! The projector's guarantees: compaction within a batch, and checkpoints that never run ahead
//! of what a sink holds, even when `sledger project` is SIGKILLed mid-batch.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use sledger::event::SinkRole;
use sledger::project::{self, Op, ProjectOptions};
use sledger::sink::{Capabilities, DeleteMode, MemorySink, Sink, SinkEntry, SinkRecord, ANCHOR_ID};
use sledger::{keyfile, Command, Ledger, LedgerSettings, MasterKey, Scope, SecretId, SecretValues};

use common::{exec_url, Env};

/// A sink that counts the writes reaching it.
#[derive(Debug)]
struct Counting {
    inner: MemorySink,
    /// Secrets written (the anchors each batch leaves are counted apart).
    puts: AtomicU64,
    anchors: AtomicU64,
    deletes: AtomicU64,
}

#[async_trait::async_trait]
impl Sink for Counting {
    fn kind(&self) -> &'static str {
        "counting"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(&self, record: &SinkRecord) -> sledger::Result<()> {
        if record.id == ANCHOR_ID {
            self.anchors.fetch_add(1, Ordering::SeqCst);
        } else {
            self.puts.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.put(record).await
    }
    async fn get(&self, id: SecretId) -> sledger::Result<Option<SinkRecord>> {
        self.inner.get(id).await
    }
    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> sledger::Result<()> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(id, seq, how).await
    }
    async fn erase(&self, id: SecretId) -> sledger::Result<()> {
        self.inner.erase(id).await
    }
    async fn list(&self) -> sledger::Result<Vec<SinkEntry>> {
        self.inner.list().await
    }
    async fn health(&self) -> sledger::Result<()> {
        self.inner.health().await
    }
}

fn values(pairs: &[(&str, &str)]) -> SecretValues {
    let mut v = SecretValues::new();
    for (k, val) in pairs {
        v.insert(*k, *val);
    }
    v
}

fn create(name: &str, value: &str) -> Command {
    Command::Create {
        name: name.into(),
        scope: Scope::Workspace,
        labels: BTreeMap::new(),
        values: values(&[("pw", value)]),
    }
}

fn update(name: &str, value: &str) -> Command {
    Command::Update {
        name: name.into(),
        set_values: values(&[("pw", value)]),
        remove_keys: vec![],
        set_labels: BTreeMap::new(),
        remove_labels: vec![],
    }
}

#[tokio::test]
async fn a_thousand_updates_in_one_batch_cause_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::init(
        dir.path().join("l.db"),
        MasterKey::generate(),
        LedgerSettings::default(),
    )
    .unwrap();
    let sink_added = Command::AddSink {
        name: "counted".into(),
        url: "memory://counted".into(),
        role: SinkRole::Backup,
    };
    ledger.execute("t", vec![sink_added, create("db", "v0")]).unwrap();
    let updates: Vec<Command> = (1..=1000).map(|i| update("db", &format!("v{i}"))).collect();
    ledger.execute("t", updates).unwrap();
    let head = ledger.head().unwrap().seq;
    assert_eq!(head, 1002);

    let sink = Counting {
        inner: MemorySink::new("sledger/"),
        puts: 0.into(),
        anchors: 0.into(),
        deletes: 0.into(),
    };
    let opts = ProjectOptions {
        batch_events: 2000,
        ..Default::default()
    };
    let report = project::project(&ledger, "counted", &sink, &opts).await.unwrap();
    assert_eq!((report.events, report.writes, report.checkpoint), (head, 1, head));
    assert_eq!(
        sink.puts.load(Ordering::SeqCst),
        1,
        "1 001 events of one secret, one write"
    );
    assert_eq!(sink.deletes.load(Ordering::SeqCst), 0);
    assert_eq!(sink.anchors.load(Ordering::SeqCst), 1, "one anchor per batch");
    let id = ledger
        .catalog_at(head)
        .unwrap()
        .secrets
        .into_keys()
        .next()
        .unwrap();
    let held = sink.get(id).await.unwrap().unwrap();
    assert_eq!(
        (held.values.get("pw"), held.version, held.seq),
        (Some("v1000"), 1001, head)
    );

    // Compaction is per batch: 100-event batches over the same history are 11 writes.
    let again = Counting {
        inner: MemorySink::new("sledger/"),
        puts: 0.into(),
        anchors: 0.into(),
        deletes: 0.into(),
    };
    ledger
        .execute(
            "t",
            vec![Command::AddSink {
                name: "small".into(),
                url: "memory://small".into(),
                role: SinkRole::Backup,
            }],
        )
        .unwrap();
    let opts = ProjectOptions {
        batch_events: 100,
        ..Default::default()
    };
    project::project(&ledger, "small", &again, &opts).await.unwrap();
    assert_eq!(again.puts.load(Ordering::SeqCst), 11);
    assert_eq!(again.anchors.load(Ordering::SeqCst), 11, "one anchor per batch");
}

/// A checkpoint never runs ahead of the sink: for every secret, the sink holds its state as of
/// the checkpoint or a later state (writes past the checkpoint may land before a crash), and
/// whatever it holds is a state the secret really had.
fn check_not_ahead(ledger: &Ledger, sink_name: &str, sink: &dyn Sink, checkpoint: u64) -> Result<(), String> {
    let held: HashMap<SecretId, u64> = block(sink.list())
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|e| e.id != ANCHOR_ID)
        .map(|e| (e.id, e.seq))
        .collect();
    // When each secret was deleted or purged, for sinks that hold a state newer than the checkpoint.
    let mut deleted_at: HashMap<SecretId, Vec<u64>> = HashMap::new();
    ledger
        .audit(&mut Default::default(), &mut |e| {
            if matches!(e.event_type.as_str(), "secret.deleted" | "secret.purged") {
                deleted_at.entry(e.secret_id.unwrap()).or_default().push(e.seq);
            }
            Ok(true)
        })
        .unwrap();
    let head = ledger.head().unwrap().seq;
    for id in ledger.catalog_at(head).unwrap().secrets.into_keys() {
        let want = ledger.op_at(id, checkpoint).unwrap();
        let want_seq = want.as_ref().map_or(0, |op| match op {
            Op::Put(r) => r.seq,
            Op::Delete { seq, .. } => *seq,
        });
        let fail = |what: String| {
            Err(format!(
                "{sink_name} at checkpoint {checkpoint}: secret {id} {what}"
            ))
        };
        match held.get(&id) {
            Some(&seq) => {
                if seq < want_seq {
                    return fail(format!(
                        "is held at seq {seq}, older than its state at the checkpoint ({want_seq})"
                    ));
                }
                match ledger.op_at(id, seq).unwrap() {
                    Some(Op::Put(r)) if r.seq == seq => {}
                    other => {
                        return fail(format!(
                            "is held at seq {seq}, which was not a live state of it: {other:?}"
                        ))
                    }
                }
            }
            None => {
                let gone_at_checkpoint = matches!(want, None | Some(Op::Delete { .. }));
                let gone_since = deleted_at
                    .get(&id)
                    .is_some_and(|seqs| seqs.iter().any(|&s| s > checkpoint));
                if !gone_at_checkpoint && !gone_since {
                    return fail(format!(
                        "is missing, but was live at seq {want_seq} and never deleted since"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn open(env: &Env) -> Ledger {
    let mut ledger = Ledger::open(&env.ledger).unwrap();
    keyfile::unlock(&mut ledger, &env.key).unwrap();
    ledger
}

/// A burst of work: creates, updates, deletes, undeletes and a purge.
fn write_burst(env: &Env, round: usize) {
    let mut ledger = open(env);
    let mut commands: Vec<Command> = (0..60).map(|i| create(&format!("r{round}-s{i}"), "v1")).collect();
    commands.extend(
        (0..60)
            .step_by(2)
            .map(|i| update(&format!("r{round}-s{i}"), "v2")),
    );
    commands.extend((0..60).step_by(5).map(|i| Command::Delete {
        name: format!("r{round}-s{i}"),
    }));
    commands.extend((0..60).step_by(10).map(|i| Command::Undelete {
        name: format!("r{round}-s{i}"),
    }));
    commands.push(Command::Purge {
        name: format!("r{round}-s1"),
    });
    commands.extend(
        (0..60)
            .step_by(3)
            .filter(|i| i % 5 != 0) // not the deleted ones
            .map(|i| update(&format!("r{round}-s{i}"), "v3")),
    );
    for chunk in commands.chunks(25) {
        ledger.execute("crash-test", chunk.to_vec()).unwrap();
    }
}

#[test]
fn project_killed_mid_batch_never_checkpoints_ahead_and_converges() {
    let env = Env::new();
    // A slow plug-in sink (10 ms per request, two at a time) so kills land inside batches.
    let url = format!(
        "{}&max_concurrency=2",
        exec_url(&env.path("plug"), &["--sleep-ms", "10"])
    );
    env.ok(&["sink", "add", "plug", &url]);
    write_burst(&env, 0);
    let sinks = ["local", "plug"];

    let mut rng = rand::thread_rng();
    let (mut kills, mut rounds, mut killed_after_progress) = (0, 1, 0);
    let mut last_checkpoints = HashMap::new();
    // On a loaded machine a process may take longer than the kill window to make its first
    // batch: keep killing (up to a bound) until enough kills came after some progress.
    while kills < 25 || (killed_after_progress < 5 && kills < 200) {
        let mut child = env.spawn(&[], &["--format", "json", "project", "--batch-events", "20"]);
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();

        let ledger = open(&env);
        let plug_before = last_checkpoints.get("plug").copied().unwrap_or(0);
        for name in sinks {
            let checkpoint = ledger.checkpoint(name).unwrap();
            let previous = last_checkpoints.insert(name, checkpoint).unwrap_or(0);
            assert!(
                checkpoint >= previous,
                "{name}: the checkpoint went back from {previous} to {checkpoint}"
            );
            let (_, sink) = ledger.open_sink(name).unwrap();
            if let Err(e) = check_not_ahead(&ledger, name, &*sink, checkpoint) {
                panic!("after kill {kills}: {e}");
            }
        }
        let head = ledger.head().unwrap().seq;
        let caught_up = sinks.iter().all(|n| ledger.checkpoint(n).unwrap() == head);
        if killed && (plug_before + 1..head).contains(&last_checkpoints["plug"]) {
            killed_after_progress += 1;
        }
        drop(ledger);
        if caught_up {
            // Finished before the kill: give the next run something to do.
            write_burst(&env, rounds);
            rounds += 1;
        }
    }

    // Kills must have landed between checkpoints, not only before the first batch ended.
    assert!(
        killed_after_progress >= 5,
        "only {killed_after_progress} of {kills} kills came after some progress"
    );
    eprintln!("{kills} kills, {killed_after_progress} after progress, {rounds} bursts of writes");

    // A run left alone converges every sink to exactly the ledger's state.
    let out = env.json_lines(&["project"]);
    assert!(
        out.iter().all(|s| s["lag"] == 0 && s["error"].is_null()),
        "{out:?}"
    );
    let ledger = open(&env);
    let head = ledger.head().unwrap().seq;
    let catalog = ledger.catalog_at(head).unwrap();
    for name in sinks {
        let (_, sink) = ledger.open_sink(name).unwrap();
        let ids: Vec<SecretId> = catalog.secrets.keys().copied().collect();
        let (held, listed) = block(async {
            let held = futures::future::join_all(ids.iter().map(|&id| sink.get(id))).await;
            (held, sink.list().await.unwrap())
        });
        let mut live = 0;
        for (&id, held) in ids.iter().zip(held) {
            let held = held.unwrap();
            match ledger.op_at(id, head).unwrap().unwrap() {
                Op::Put(want) => {
                    live += 1;
                    assert_eq!(held.as_ref(), Some(&want), "{name}: {}", want.name);
                }
                Op::Delete { .. } => assert_eq!(held, None, "{name}: a deleted secret is still held"),
            }
        }
        assert_eq!(listed.len(), live, "{name}: objects the ledger does not know");
    }
}

/// A sink whose puts take a while and that counts how many are in flight at once, across
/// every instance sharing the counter (one instance per projector, as in two processes).
#[derive(Debug)]
struct Overlapping {
    inner: MemorySink,
    in_flight: std::sync::Arc<AtomicU64>,
    most: std::sync::Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Sink for Overlapping {
    fn kind(&self) -> &'static str {
        "overlapping"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_concurrency: 1,
            ..self.inner.capabilities()
        }
    }
    async fn put(&self, record: &SinkRecord) -> sledger::Result<()> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.inner.put(record).await
    }
    async fn get(&self, id: SecretId) -> sledger::Result<Option<SinkRecord>> {
        self.inner.get(id).await
    }
    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> sledger::Result<()> {
        self.inner.delete(id, seq, how).await
    }
    async fn erase(&self, id: SecretId) -> sledger::Result<()> {
        self.inner.erase(id).await
    }
    async fn list(&self) -> sledger::Result<Vec<SinkEntry>> {
        self.inner.list().await
    }
    async fn health(&self) -> sledger::Result<()> {
        self.inner.health().await
    }
}

/// Two projectors of one sink (two handles on the ledger file, like two processes) never
/// write to it at the same time: a backend without a conditional write could otherwise take
/// an older value from one after a newer one from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projectors_of_one_sink_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let master = MasterKey::generate();
    let mut ledger = Ledger::init(&path, master.clone(), LedgerSettings::default()).unwrap();
    let sink_added = Command::AddSink {
        name: "shared".into(),
        url: "memory://shared".into(),
        role: SinkRole::Backup,
    };
    ledger.execute("t", vec![sink_added]).unwrap();
    let creates: Vec<Command> = (0..200).map(|i| create(&format!("s{i}"), "v")).collect();
    ledger.execute("t", creates).unwrap();
    let (in_flight, most) = (
        std::sync::Arc::new(AtomicU64::new(0)),
        std::sync::Arc::new(AtomicU64::new(0)),
    );
    let run = |ledger: Ledger| {
        let sink = Overlapping {
            inner: MemorySink::new("sledger/"),
            in_flight: in_flight.clone(),
            most: most.clone(),
        };
        async move {
            let opts = ProjectOptions {
                batch_events: 20,
                ..Default::default()
            };
            project::project(&ledger, "shared", &sink, &opts).await.unwrap();
        }
    };
    let other = Ledger::open_with_key(&path, master).unwrap();
    tokio::join!(run(ledger), run(other));
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two projectors wrote to the sink at once"
    );
}
