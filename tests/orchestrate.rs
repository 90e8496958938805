//! The orchestration lives in the library: `migrate`, `backup --delete-secrets` and the
//! continuous projector service, driven here with no CLI involved, while writes flow through
//! a shared `LedgerHandle`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sledger::event::SinkRole;
use sledger::project;
use sledger::project::service::{self, FollowOptions, ProjectorEvent};
use sledger::replay::orchestrate::{self, MigrateStep, MigrateTo};
use sledger::sink::SinkUrl;
use sledger::{Command, Ledger, LedgerHandle, LedgerSettings, MasterKey, Scope, SecretValues};

fn create(name: &str) -> Command {
    let mut values = SecretValues::new();
    values.insert("password", name);
    Command::Create {
        name: name.to_owned(),
        scope: Scope::Workspace,
        labels: BTreeMap::new(),
        values,
    }
}

async fn caught_up(ledger: &Ledger, sink: &str, failures: &Mutex<Vec<String>>) {
    let until = Instant::now() + Duration::from_secs(30);
    while ledger.checkpoint(sink).unwrap() < ledger.head().unwrap().seq {
        assert!(
            Instant::now() < until,
            "the service did not catch {sink} up: checkpoint {}, head {}, failures {:?}",
            ledger.checkpoint(sink).unwrap(),
            ledger.head().unwrap().seq,
            failures.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn held(ledger: &Ledger, sink: &str) -> usize {
    let (_, sink) = ledger.open_sink(sink).unwrap();
    sink.list().await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_backup_and_the_projector_service_without_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let master = MasterKey::generate();
    let mut ledger = Ledger::init(&path, master.clone(), LedgerSettings::default()).unwrap();
    let url = |file: &str| SinkUrl::sqlite_url(&dir.path().join(file));

    // A first migration with no primary yet makes `a` the primary.
    let mut steps = Vec::new();
    let to_a = MigrateTo {
        to: url("a.db"),
        name: Some("a".into()),
        delete_secrets: false,
    };
    orchestrate::migrate(&mut ledger, "ops", &to_a, &|_, _, _| {}, &mut |s| steps.push(s))
        .await
        .unwrap();
    assert_eq!(ledger.sink_config("a").unwrap().role, SinkRole::Primary);
    assert_eq!(steps.last(), Some(&MigrateStep::Done));

    // The projector service keeps every sink current, woken by the handle's commits.
    let handle = LedgerHandle::open(&path, master.clone()).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let failures = Arc::new(Mutex::new(Vec::new()));
    let service = {
        let (path, master, wake, failures) =
            (path.clone(), master.clone(), handle.subscribe(), failures.clone());
        let options = FollowOptions {
            poll: Duration::from_millis(20),
            ..Default::default()
        };
        tokio::spawn(async move {
            service::follow(
                &path.into(),
                &master,
                options,
                Some(wake),
                stopped,
                move |event| {
                    if let ProjectorEvent::Failed { sink, error } = event {
                        failures.lock().unwrap().push(format!("{sink}: {error}"));
                    }
                },
            )
            .await
        })
    };
    for i in 0..20 {
        handle
            .execute("alice", vec![create(&format!("s{i}"))])
            .await
            .unwrap();
    }
    caught_up(&ledger, "a", &failures).await;
    assert_eq!(held(&ledger, "a").await, 20);

    // Migrate to `b` while writes keep flowing; the old primary is emptied at the end.
    let writer = {
        let handle = handle.clone();
        tokio::spawn(async move {
            for i in 20..40 {
                handle
                    .execute("alice", vec![create(&format!("s{i}"))])
                    .await
                    .unwrap();
            }
        })
    };
    let mut steps = Vec::new();
    let to_b = MigrateTo {
        to: url("b.db"),
        name: Some("b".into()),
        delete_secrets: true,
    };
    orchestrate::migrate(&mut ledger, "ops", &to_b, &|_, _, _| {}, &mut |s| steps.push(s))
        .await
        .unwrap();
    writer.await.unwrap();
    assert!(steps.contains(&MigrateStep::Promoted {
        name: "b".into(),
        old: Some("a".into())
    }));
    assert!(
        matches!(steps.last(), Some(MigrateStep::Emptied { old, removed }) if old == "a" && *removed >= 20),
        "{steps:?}"
    );
    assert_eq!(ledger.sink_config("a").unwrap().role, SinkRole::Standby);
    caught_up(&ledger, "b", &failures).await;
    assert_eq!(held(&ledger, "b").await, 40);
    // The emptied standby stays empty: its projector writes nothing more, even when woken.
    handle.execute("alice", vec![create("s40")]).await.unwrap();
    caught_up(&ledger, "b", &failures).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held(&ledger, "a").await, 0);

    // A backup attached now is picked up by the running service.
    orchestrate::prepare_backend(&SinkUrl::parse(&url("c.db")).unwrap()).unwrap();
    handle
        .execute(
            "ops",
            vec![Command::AddSink {
                name: "c".into(),
                url: url("c.db"),
                role: SinkRole::Backup,
            }],
        )
        .await
        .unwrap();
    caught_up(&ledger, "c", &failures).await;
    assert_eq!(held(&ledger, "c").await, 41);

    // backup --delete-secrets: the primary keeps nothing the backup verifiably holds.
    let report = orchestrate::backup(&ledger, false, true, &|_, _, _| {}, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.emptied, Some(("b".to_owned(), 41)));
    assert_eq!(held(&ledger, "b").await, 0);
    assert_eq!(held(&ledger, "c").await, 41);
    // The ledger still reads every value.
    let read = ledger.read("alice", "s39", sledger::ReadPoint::Latest).unwrap();
    assert_eq!(read.values.get("password"), Some("s39"));

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), service)
        .await
        .expect("the service stops within its grace")
        .unwrap()
        .unwrap();
    handle.close();
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );
    ledger.verify(&mut |_, _| {}).unwrap();
}

fn record(name: &str, value: &str) -> sledger::import::Record {
    sledger::import::Record {
        name: name.to_owned(),
        values: BTreeMap::from([("password".to_owned(), value.to_owned().into())]),
        labels: BTreeMap::new(),
        private: false,
        line: 0,
    }
}

/// `import` through the library: batches are all-or-nothing, a failed one leaves those before
/// it, and the same import run again finishes the job without touching what it already did.
#[test]
fn an_import_keeps_the_batches_before_a_failed_one_and_a_rerun_finishes_it() {
    use sledger::import::{Format, ImportFile, Imported, Importer, Source, Stopped};
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::init(
        dir.path().join("ledger.db"),
        MasterKey::generate(),
        LedgerSettings::default(),
    )
    .unwrap();
    let start = ledger.head().unwrap().seq;
    let names = ["a", "b", "c", "not a valid name/", "e"];

    let mut batches = Vec::new();
    let mut progress = |n| batches.push(n);
    let mut importer = Importer::new(&mut ledger, "ops", 2, &mut progress);
    let failed = names
        .iter()
        .try_for_each(|name| importer.push(record(name, "v1")))
        .unwrap_err();
    assert!(failed.to_string().contains("not a valid name/"), "{failed}");
    assert_eq!(
        importer.imported(),
        Imported {
            appended: 2,
            unchanged: 0
        }
    );
    assert_eq!(batches, [2], "the failed batch is not reported as imported");
    assert_eq!(
        ledger.head().unwrap().seq,
        start + 2,
        "the failed batch appended nothing"
    );

    // The same through `import::run`, which says what stayed when it stops.
    let file = dir.path().join("secrets.jsonl");
    let lines: Vec<String> = ["a", "b", "x", "not a valid name/"]
        .iter()
        .map(|name| format!(r#"{{"name": "{name}", "values": {{"password": "v1"}}}}"#))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let source = || Source::File(ImportFile::new(&file, Format::Jsonl, None).unwrap());
    assert!(
        source().check(1024).is_err(),
        "a file is checked whole before it is imported"
    );
    let Stopped { error, imported } =
        sledger::import::run(&mut ledger, "ops", source(), 3, &mut |_| {}).unwrap_err();
    assert!(error.to_string().contains("not a valid name/"), "{error}");
    assert_eq!(
        imported,
        Imported {
            appended: 1,
            unchanged: 2
        },
        "the first batch (a and b unchanged, x new) stays"
    );

    let fixed = ["a", "b", "c", "d", "e"];
    let estate = Source::Estate(fixed.iter().map(|name| record(name, "v1")).collect());
    assert_eq!(estate.check(1024).unwrap(), 5);
    let mut batches = Vec::new();
    let imported = sledger::import::run(&mut ledger, "ops", estate, 2, &mut |n| batches.push(n)).unwrap();
    assert_eq!(
        imported,
        Imported {
            appended: 3,
            unchanged: 2
        }
    );
    assert_eq!(batches, [5], "an estate is adopted in one transaction");
    assert_eq!(ledger.head().unwrap().seq, start + 6);
}

/// The race `migrate --delete-secrets` must not lose: a projector run that began while the old
/// primary was still projected writes nothing to it once it is a standby (each batch checks the
/// role), so what the last step empties stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_run_writes_nothing_to_a_sink_made_a_standby() {
    use sledger::project::{project_attachment, project_named, ProjectOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::init(
        dir.path().join("ledger.db"),
        MasterKey::generate(),
        LedgerSettings::default(),
    )
    .unwrap();
    let url = SinkUrl::sqlite_url(&dir.path().join("old.db"));
    orchestrate::add_sink(&mut ledger, "ops", "old", &url, SinkRole::Backup)
        .await
        .unwrap();
    for i in 0..3 {
        ledger.execute("ops", vec![create(&format!("s{i}"))]).unwrap();
    }
    project_named(&ledger, "old", &ProjectOptions::default())
        .await
        .unwrap();
    let before = held(&ledger, "old").await;
    // A run that opened the sink while it was a backup goes on after it became a standby.
    let config = ledger.sink_config("old").unwrap();
    let (_, sink) = ledger.open_sink("old").unwrap();
    for i in 3..5 {
        ledger.execute("ops", vec![create(&format!("s{i}"))]).unwrap();
    }
    let standby = Command::SetSinkRole {
        name: "old".into(),
        role: SinkRole::Standby,
    };
    ledger.execute("ops", vec![standby]).unwrap();
    let batches = ProjectOptions {
        batch_events: 1,
        ..Default::default()
    };
    let report = project_attachment(&ledger, &config, &*sink, &batches)
        .await
        .unwrap();
    assert_eq!((report.events, report.writes), (0, 0), "{report:?}");
    assert_eq!(held(&ledger, "old").await, before);
}

/// Appends through a ledger after another process attached `url` as sink "winner": the race
/// two adds of one new sqlite file run.
struct AttachedMeanwhile<'a> {
    ledger: &'a mut Ledger,
    url: String,
}

impl sledger::Append for AttachedMeanwhile<'_> {
    async fn append(
        &mut self,
        actor: &str,
        commands: Vec<Command>,
    ) -> sledger::Result<Vec<sledger::Outcome>> {
        let winner = Command::AddSink {
            name: "winner".into(),
            url: self.url.clone(),
            role: SinkRole::Backup,
        };
        self.ledger.execute("other", vec![winner]).unwrap();
        self.ledger.execute(actor, commands)
    }
}

impl sledger::ReadAppend for AttachedMeanwhile<'_> {
    fn reader(&self) -> &Ledger {
        self.ledger
    }
}

/// A refused add removes the sqlite file it made, unless an add of the same file by someone
/// else won meanwhile: that sink's file stays.
#[tokio::test]
async fn a_refused_sink_add_keeps_a_file_another_add_attached_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::init(
        dir.path().join("ledger.db"),
        MasterKey::generate(),
        LedgerSettings::default(),
    )
    .unwrap();
    let file = dir.path().join("shared.db");
    let url = SinkUrl::sqlite_url(&file);
    let mut raced = AttachedMeanwhile {
        ledger: &mut ledger,
        url: url.clone(),
    };
    let refused = orchestrate::add_sink(&mut raced, "ops", "loser", &url, SinkRole::Backup).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(file.exists(), "the winner's sink file was removed");
    project::project_named(&ledger, "winner", &Default::default())
        .await
        .unwrap();
    // Without a race, a refused add (a taken name) leaves nothing behind.
    let fresh = dir.path().join("fresh.db");
    let taken = orchestrate::add_sink(
        &mut ledger,
        "ops",
        "winner",
        &SinkUrl::sqlite_url(&fresh),
        SinkRole::Backup,
    )
    .await;
    assert!(taken.is_err(), "{taken:?}");
    assert!(!fresh.exists());
}

/// A front end's one call per operation: a local session writes, waits for the primary, reads
/// through it, lists, shows history, diffs and restores, answering with the documents a server
/// answers with; a server session refuses what only a local ledger offers, naming it.
#[test]
fn a_local_session_answers_each_operation_with_the_documents_a_server_gives() {
    use serde_json::Value;
    use sledger::read::ReadFrom;
    use sledger::replay::Target;
    use sledger::session::{Local, Session};
    use sledger::store::Location;

    let dir = tempfile::tempdir().unwrap();
    let ledger = Location::File(dir.path().join("ledger.db"));
    let key_file = dir.path().join("ledger.key");
    let settings = LedgerSettings::default();
    sledger::setup::init(
        &ledger,
        sledger::setup::NewKey::File(key_file.clone()),
        "alice",
        settings,
        None,
    )
    .unwrap();
    let notes = Arc::new(Mutex::new(Vec::<String>::new()));
    let heard = notes.clone();
    let local = Local::new(
        ledger,
        key_file,
        None,
        None,
        "alice".into(),
        Duration::from_secs(10),
        move |n| heard.lock().unwrap().push(n.to_owned()),
    );
    let session = Session::Local(local);

    let created = session.write("created", create("db/a")).unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["result"], "created");
    assert_eq!(created[0]["name"], "db/a");
    assert_eq!(created[0]["primary"]["applied"], true, "{created:?}");
    let first_seq = created[0]["seq"].as_u64().unwrap();
    session.write("created", create("db/b")).unwrap();
    let mut values = SecretValues::new();
    values.insert("password", "rotated");
    let updated = session
        .write(
            "updated",
            Command::Update {
                name: "db/a".into(),
                set_values: values,
                remove_keys: vec![],
                set_labels: BTreeMap::new(),
                remove_labels: vec![],
            },
        )
        .unwrap();
    assert_eq!(updated[0]["version"], 2);

    let read = session.read("db/a", None, ReadFrom::Auto).unwrap();
    assert_eq!(read["values"]["password"], "rotated");
    assert_eq!(read["source"]["kind"], "sink", "the primary serves it: {read}");
    let then = session
        .read("db/a", Some(sledger::ReadPoint::Version(1)), ReadFrom::Auto)
        .unwrap();
    assert_eq!(then["values"]["password"], "db/a");

    let mut names = Vec::new();
    let next = session
        .list(
            &sledger::ListQuery::new(sledger::Status::Live),
            Some(1),
            &mut |m| names.push(m["name"].as_str().unwrap().to_owned()),
        )
        .unwrap();
    assert_eq!(
        (names.as_slice(), next.as_deref()),
        (&["db/a".to_owned()][..], Some("db/a"))
    );
    assert_eq!(session.history("db/a").unwrap().len(), 2);

    let restored = session
        .restore(Target::Seq(first_seq), &["db/a".to_owned()], false)
        .unwrap();
    let outcomes = restored["outcomes"].as_array().unwrap();
    assert_eq!(
        (outcomes.len(), &outcomes[0]["version"]),
        (1, &Value::from(3)),
        "{restored}"
    );
    assert_eq!(
        session.read("db/a", None, ReadFrom::Auto).unwrap()["values"]["password"],
        "db/a"
    );
    let differences = session.diff("local", Target::Head, &|_, _, _| {}).unwrap();
    assert!(differences.is_empty(), "{differences:?}");
    assert!(notes.lock().unwrap().is_empty(), "{:?}", notes.lock().unwrap());

    let remote = Session::Remote {
        client: sledger::client::Client::new(
            "http://127.0.0.1:9",
            None,
            Some(zeroize::Zeroizing::new("token".into())),
            None,
        )
        .unwrap(),
        wait: Duration::ZERO,
    };
    let refused = remote.local("recover").err().unwrap().to_string();
    assert!(
        refused.contains("`sledger recover` is not available through --server"),
        "{refused}"
    );
}
