//! The concurrent ledger handle: group commit gives every caller its own result.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use sledger::ledger::Request;
use sledger::store::Location;
use sledger::{
    Command, Error, Ledger, LedgerHandle, LedgerSettings, MasterKey, Outcome, ReadPoint, Scope, SecretValues,
};

fn values(key: &str, value: &str) -> SecretValues {
    let mut v = SecretValues::new();
    v.insert(key, value);
    v
}

fn create(name: &str, value: &str) -> Command {
    Command::Create {
        name: name.to_owned(),
        scope: Scope::Workspace,
        labels: BTreeMap::new(),
        values: values("v", value),
    }
}

fn update(name: &str, value: &str) -> Command {
    Command::Update {
        name: name.to_owned(),
        set_values: values("v", value),
        remove_keys: vec![],
        set_labels: BTreeMap::new(),
        remove_labels: vec![],
    }
}

fn appended_seq(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Appended { seq, .. } => *seq,
        other => panic!("expected an appended event, got {other:?}"),
    }
}

fn new_ledger(dir: &tempfile::TempDir) -> (std::path::PathBuf, MasterKey) {
    let path = dir.path().join("ledger.db");
    let master = MasterKey::generate();
    Ledger::init(&path, master.clone(), LedgerSettings::default()).unwrap();
    (path, master)
}

/// A request that fails inside a group is rolled back alone; the requests around it, which
/// depend on the state before and after it, are appended.
#[test]
fn a_failing_request_in_a_group_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (path, master) = new_ledger(&dir);
    group_with_a_failing_request(Ledger::open_with_key(&path, master).unwrap());
}

/// The same on PostgreSQL, whose store holds a group's writes and sends them merged: a request
/// rolled back before they were sent, and one rolled back after, each undo only their own.
#[test]
fn a_failing_request_in_a_group_fails_alone_on_postgres() {
    let server = common::pg::Postgres::start();
    let location = Location::parse(&server.database("group")).unwrap();
    let master = MasterKey::generate();
    let ledger = Ledger::init(location, master, LedgerSettings::default()).unwrap();
    group_with_a_failing_request(ledger);
}

fn group_with_a_failing_request(mut ledger: Ledger) {
    let request = |commands| Request {
        actor: "alice".into(),
        commands,
    };
    let results = ledger.execute_group(vec![
        request(vec![create("a", "1")]),
        // Two commands, the second invalid: neither may be appended.
        request(vec![create("b", "1"), create("a", "again")]),
        request(vec![create("b", "2"), update("a", "2")]),
        request(vec![create("bad name!", "1")]),
    ]);
    assert_eq!(results.len(), 4);
    assert_eq!(appended_seq(&results[0].as_ref().unwrap()[0]), 1);
    assert!(
        matches!(results[1], Err(Error::AlreadyExists { ref name, .. }) if name == "a"),
        "{:?}",
        results[1]
    );
    let third = results[2].as_ref().unwrap();
    assert_eq!((appended_seq(&third[0]), appended_seq(&third[1])), (2, 3));
    assert!(
        matches!(results[3], Err(Error::InvalidName { .. })),
        "{:?}",
        results[3]
    );
    assert_eq!(ledger.head().unwrap().seq, 3);
    let b = ledger.read("alice", "b", ReadPoint::Latest).unwrap();
    assert_eq!(b.values.get("v"), Some("2"));
    ledger.verify(&mut |_, _| {}).unwrap();
}

/// 64 tasks create and update through one handle at once; a few of them send an invalid
/// command in the middle of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_writers_each_get_their_own_result() {
    let dir = tempfile::tempdir().unwrap();
    let (path, master) = new_ledger(&dir);
    let handle = LedgerHandle::open(&path, master.clone()).unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for task in 0..64 {
        let handle = handle.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut seqs = Vec::new();
            for round in 0..10 {
                let name = format!("task{task}/secret{round}");
                let created = handle
                    .execute("alice", vec![create(&name, &format!("{task}-{round}"))])
                    .await
                    .unwrap();
                seqs.push(appended_seq(&created[0]));
                if task % 8 == 3 && round == 5 {
                    // Taken a moment ago by this same task: refused, alone.
                    let again = handle.execute("alice", vec![create(&name, "dup")]).await;
                    assert!(matches!(again, Err(Error::AlreadyExists { .. })), "{again:?}");
                    let bad = handle.execute("alice", vec![update("no/such", "x")]).await;
                    assert!(matches!(bad, Err(Error::SecretNotFound { .. })), "{bad:?}");
                }
                let updated = handle
                    .execute("alice", vec![update(&name, &format!("{task}-{round}-new"))])
                    .await
                    .unwrap();
                match &updated[0] {
                    Outcome::Appended { secret, .. } => {
                        assert_eq!(secret.name, name);
                        assert_eq!(secret.version, 2);
                    }
                    other => panic!("{other:?}"),
                }
                seqs.push(appended_seq(&updated[0]));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    // One event per success, no seq given twice, no gaps.
    assert_eq!(all.len(), 64 * 10 * 2);
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len());
    assert_eq!(*all.iter().max().unwrap(), all.len() as u64);
    let stats = handle.commit_stats();
    assert_eq!(stats.requests, 64 * 10 * 2 + 8 * 2);
    assert!(
        stats.groups < stats.requests,
        "no two requests ever shared a transaction: {stats:?}"
    );

    // Every secret reads back through the read pool with its own last value.
    let read = handle
        .read(|ledger| ledger.read("alice", "task17/secret9", ReadPoint::Latest))
        .await
        .unwrap();
    assert_eq!(read.values.get("v"), Some("17-9-new"));
    let listed = handle
        .read(|ledger| ledger.list("alice", sledger::Status::Live))
        .await
        .unwrap();
    assert_eq!(listed.len(), 640);
    handle.close();

    let mut ledger = Ledger::open_with_key(&path, master).unwrap();
    let head = ledger.verify(&mut |_, _| {}).unwrap();
    assert_eq!(head.seq, 1280);
    let mut per_type = std::collections::BTreeMap::<String, u64>::new();
    ledger
        .audit(&mut sledger::Catalog::default(), &mut |entry| {
            *per_type.entry(entry.event_type).or_default() += 1;
            Ok(true)
        })
        .unwrap();
    assert_eq!(
        per_type,
        BTreeMap::from([
            ("secret.created".to_owned(), 640),
            ("secret.updated".to_owned(), 640)
        ])
    );
}

/// Writes through the handle wake subscribers with the new head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_signal_the_new_head() {
    let dir = tempfile::tempdir().unwrap();
    let (path, master) = new_ledger(&dir);
    let handle = LedgerHandle::open(&path, master).unwrap();
    let mut head = handle.subscribe();
    assert_eq!(*head.borrow_and_update(), 0);
    handle.execute("alice", vec![create("x", "1")]).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), head.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*head.borrow(), 1);
    handle.close();
    let after = handle.execute("alice", vec![create("y", "1")]).await;
    assert!(matches!(after, Err(Error::Closed)), "{after:?}");
}
