//! The behaviour every [`Store`] must show, as one suite: SQLite runs it in `cargo test`, and
//! a PostgreSQL store will have to pass it unchanged.
//!
//! `fresh()` gives a new, empty store with its schema in place, and a way to open a second
//! connection to that same store (another process, or another server instance).

use std::collections::BTreeMap;

use super::{Parked, Read, Store, Write};
use crate::catalog::{ListQuery, SecretMeta, SinkConfig, Status};
use crate::event::{Event, Scope, SinkRole, StoredEvent};
use crate::log::{chain_next, Head, NewEvent};
use crate::SecretId;

/// A new empty store, and a function opening another connection to it.
pub type Fresh<'a> = &'a mut dyn FnMut() -> (Box<dyn Store>, Box<dyn Fn() -> Box<dyn Store>>);

/// Run every check; panics with the name of the first that fails.
pub fn run_all(fresh: Fresh<'_>) {
    log_appends_read_back_in_order(fresh);
    a_rolled_back_write_leaves_nothing(fresh);
    savepoints_undo_only_their_part(fresh);
    settings_round_trip(fresh);
    catalog_rows_answer_every_lookup(fresh);
    lists_filter_by_label_prefix_and_start_in_order(fresh);
    a_secret_created_and_relabelled_is_listed_under_its_last_labels(fresh);
    data_keys_are_put_destroyed_and_rewrapped(fresh);
    many_rows_at_once_equal_one_at_a_time(fresh);
    sink_progress_only_moves_forward(fresh);
    snapshots_and_derived_state(fresh);
    other_connections_see_only_commits(fresh);
    settings_are_listed(fresh);
    a_write_transaction_reads_its_own_writes(fresh);
    a_failed_write_never_commits(fresh);
}

fn a_write_transaction_reads_its_own_writes(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let id = SecretId::now_v7();
    let tx = Write::begin(&*store).unwrap();
    tx.set_setting("k", b"before").unwrap();
    assert_eq!(tx.setting("k").unwrap(), Some(b"before".to_vec()));
    tx.put_secret(&meta(id, "db", Scope::Workspace, "alice", Status::Live, 1))
        .unwrap();
    let asked = |names: &[(&str, &str)]| -> Vec<(String, String)> {
        names
            .iter()
            .map(|(ns, n)| (ns.to_string(), n.to_string()))
            .collect()
    };
    assert!(tx.name_taken("workspace", "db").unwrap());
    assert_eq!(
        tx.names_taken(&asked(&[
            ("workspace", "db"),
            ("private:alice", "db"),
            ("workspace", "api")
        ]))
        .unwrap(),
        [true, false, false],
        "one answer per name, in order"
    );
    tx.savepoint().unwrap();
    tx.set_setting("k", b"inside").unwrap();
    chain(&*tx, vec![(Some(id), Event::SecretDeleted)], 1);
    assert_eq!(tx.setting("k").unwrap(), Some(b"inside".to_vec()));
    assert_eq!(tx.head().unwrap().seq, 1);
    tx.rollback_savepoint().unwrap();
    assert_eq!(
        tx.setting("k").unwrap(),
        Some(b"before".to_vec()),
        "a rolled-back unit's setting is undone inside the transaction"
    );
    assert_eq!(tx.head().unwrap(), Head::EMPTY);
    tx.commit().unwrap();
    assert_eq!(store.setting("k").unwrap(), Some(b"before".to_vec()));
    assert_eq!(store.head().unwrap(), Head::EMPTY);
}

fn a_failed_write_never_commits(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let id = SecretId::now_v7();
    let tx = Write::begin(&*store).unwrap();
    tx.set_setting("k", b"v").unwrap();
    tx.put_wrapped_key(id, b"wrapped").unwrap();
    let appended = chain(&*tx, vec![(Some(id), Event::SecretDeleted)], 1);
    // A seq is appended once: this write fails, when made or at the commit.
    let committed = tx.append(&appended[0]).and_then(|()| tx.commit());
    assert!(
        committed.is_err(),
        "a transaction with a failed write does not commit"
    );
    assert_eq!(store.head().unwrap(), Head::EMPTY);
    assert_eq!(store.wrapped_key(id).unwrap(), None);
    assert_eq!(store.setting("k").unwrap(), None, "nothing of it committed");
}

fn settings_are_listed(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let tx = Write::begin(&*store).unwrap();
    tx.set_setting("b", b"bytes").unwrap();
    tx.set_setting_int("a", 7).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        store.settings().unwrap(),
        vec![
            ("a".to_owned(), super::Setting::Int(7)),
            ("b".to_owned(), super::Setting::Bytes(b"bytes".to_vec()))
        ]
    );
}

fn chain(store: &dyn Store, events: Vec<(Option<SecretId>, Event)>, now: i64) -> Vec<StoredEvent> {
    let mut head = store.head().unwrap();
    events
        .into_iter()
        .map(|(secret_id, event)| {
            let row = chain_next(
                &mut head,
                &NewEvent {
                    event_id: uuid::Uuid::now_v7(),
                    actor: "tester".into(),
                    secret_id,
                    event,
                },
                now,
            );
            store.append(&row).unwrap();
            row
        })
        .collect()
}

fn meta(id: SecretId, name: &str, scope: Scope, owner: &str, status: Status, seq: u64) -> SecretMeta {
    SecretMeta {
        id,
        name: name.into(),
        scope,
        owner: owner.into(),
        labels: BTreeMap::from([("env".to_owned(), "test".to_owned())]),
        version: 1,
        status,
        created_at: 1,
        created_by: owner.into(),
        updated_at: 1,
        updated_seq: seq,
        value_seq: seq,
        fingerprints: BTreeMap::new(),
    }
}

fn scanned(store: &dyn Store, from: u64, to: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    store
        .scan(from, to, &mut |e| {
            seqs.push(e.seq);
            Ok(true)
        })
        .unwrap();
    seqs
}

fn log_appends_read_back_in_order(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    assert_eq!(store.head().unwrap(), Head::EMPTY, "an empty store's head");
    let (a, b) = (SecretId::now_v7(), SecretId::now_v7());
    let tx = Write::begin(&*store).unwrap();
    let rows = chain(
        &*tx,
        vec![
            (Some(a), Event::SecretDeleted),
            (Some(b), Event::SecretDeleted),
            (None, Event::SinkRemoved { name: "x".into() }),
            (Some(a), Event::SecretRestored),
        ],
        1_000,
    );
    tx.commit().unwrap();
    let last = rows.last().unwrap();
    assert_eq!(
        store.head().unwrap(),
        Head {
            seq: 4,
            hash: last.hash,
            recorded_at: last.recorded_at
        }
    );
    assert_eq!(
        store.event(2).unwrap().as_ref(),
        Some(&rows[1]),
        "an event reads back as stored"
    );
    assert_eq!(store.event(5).unwrap(), None);
    assert_eq!(scanned(&*store, 2, 3), vec![2, 3], "a range, in seq order");
    assert_eq!(scanned(&*store, 1, u64::MAX), vec![1, 2, 3, 4]);
    let mut first = Vec::new();
    store
        .scan(1, 4, &mut |e| {
            first.push(e.seq);
            Ok(false)
        })
        .unwrap();
    assert_eq!(first, vec![1], "a visit that returns false stops the scan");
    let mut of_a = Vec::new();
    store
        .scan_secret(a, 3, &mut |e| {
            of_a.push(e.seq);
            Ok(true)
        })
        .unwrap();
    assert_eq!(of_a, vec![1], "one secret's events up to a seq");
    assert_eq!(
        store.secrets_touched(0, 4).unwrap(),
        vec![b, a],
        "ordered by each one's last event"
    );
    assert_eq!(store.secrets_touched(1, 2).unwrap(), vec![b]);
    assert_eq!(store.seq_at_time(999).unwrap(), 0);
    assert_eq!(store.seq_at_time(1_000).unwrap(), 4);
}

fn a_rolled_back_write_leaves_nothing(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let id = SecretId::now_v7();
    {
        let tx = Write::begin(&*store).unwrap();
        chain(&*tx, vec![(Some(id), Event::SecretDeleted)], 1);
        tx.put_secret(&meta(id, "a", Scope::Workspace, "o", Status::Live, 1))
            .unwrap();
        tx.put_wrapped_key(id, b"wrapped").unwrap();
        tx.set_setting("k", b"v").unwrap();
        // Dropped without a commit.
    }
    assert_eq!(store.head().unwrap(), Head::EMPTY, "rolled back: no event");
    assert_eq!(store.secret(id).unwrap(), None, "rolled back: no catalog row");
    assert_eq!(store.wrapped_key(id).unwrap(), None, "rolled back: no data key");
    assert_eq!(store.setting("k").unwrap(), None, "rolled back: no setting");
}

fn savepoints_undo_only_their_part(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let (kept, undone) = (SecretId::now_v7(), SecretId::now_v7());
    let tx = Write::begin(&*store).unwrap();
    tx.savepoint().unwrap();
    chain(&*tx, vec![(Some(kept), Event::SecretDeleted)], 1);
    tx.release_savepoint().unwrap();
    tx.savepoint().unwrap();
    chain(&*tx, vec![(Some(undone), Event::SecretDeleted)], 1);
    tx.put_wrapped_key(undone, b"w").unwrap();
    tx.rollback_savepoint().unwrap();
    assert_eq!(
        tx.head().unwrap().seq,
        1,
        "the undone unit's event is gone inside the transaction"
    );
    chain(&*tx, vec![(Some(kept), Event::SecretRestored)], 2);
    tx.commit().unwrap();
    assert_eq!(scanned(&*store, 1, u64::MAX), vec![1, 2]);
    assert_eq!(store.wrapped_key(undone).unwrap(), None);
}

fn settings_round_trip(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let tx = Write::begin(&*store).unwrap();
    tx.set_setting("bytes", &[0, 1, 2, 255]).unwrap();
    tx.set_setting_int("number", 42).unwrap();
    tx.set_setting_int("number", 43).unwrap();
    tx.commit().unwrap();
    assert_eq!(store.setting("bytes").unwrap(), Some(vec![0, 1, 2, 255]));
    assert_eq!(
        store.setting_int("number").unwrap(),
        Some(43),
        "a setting is replaced"
    );
    assert_eq!(store.setting("missing").unwrap(), None);
    assert_eq!(store.setting_int("missing").unwrap(), None);
}

fn catalog_rows_answer_every_lookup(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let ids: Vec<SecretId> = (0..4).map(|_| SecretId::now_v7()).collect();
    let rows = [
        meta(ids[0], "db", Scope::Workspace, "alice", Status::Deleted, 1),
        meta(ids[1], "db", Scope::Workspace, "alice", Status::Live, 2),
        meta(ids[2], "db", Scope::Private, "bob", Status::Live, 3),
        meta(ids[3], "api", Scope::Workspace, "alice", Status::Live, 4),
    ];
    let tx = Write::begin(&*store).unwrap();
    for row in &rows {
        tx.put_secret(row).unwrap();
    }
    tx.commit().unwrap();
    assert_eq!(
        store.secret(ids[2]).unwrap().as_ref(),
        Some(&rows[2]),
        "a row reads back whole"
    );
    let named: Vec<SecretId> = store
        .secrets_named("db", &["workspace"])
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        named,
        vec![ids[1], ids[0]],
        "newest change first, only the namespaces asked for"
    );
    assert_eq!(
        store
            .secrets_named("db", &["workspace", "private:bob"])
            .unwrap()
            .len(),
        3
    );
    let live: Vec<(String, String)> = listed(
        &*store,
        &ListQuery::new(Status::Live),
        &["workspace", "private:bob"],
    )
    .into_iter()
    .map(|m| (m.name.clone(), m.namespace()))
    .collect();
    assert_eq!(
        live,
        [("api", "workspace"), ("db", "private:bob"), ("db", "workspace")]
            .map(|(n, ns)| (n.to_owned(), ns.to_owned())),
        "ordered by name, then namespace"
    );
    assert!(store.name_taken("workspace", "db").unwrap());
    assert!(!store.name_taken("private:alice", "db").unwrap());
    assert_eq!(store.secret_count().unwrap(), 4);
    let mut all: Vec<SecretId> = Vec::new();
    store
        .scan_all_secrets(&mut |id, meta, columns_agree| {
            assert_eq!(id, meta.id);
            assert!(columns_agree, "a row written by put_secret agrees with its meta");
            all.push(id);
            Ok(true)
        })
        .unwrap();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "rows come in id order");
    let mut want = ids.clone();
    want.sort();
    assert_eq!(all, want);
    // Replacing a row changes what every lookup sees.
    let tx = Write::begin(&*store).unwrap();
    tx.put_secret(&meta(ids[1], "db", Scope::Workspace, "alice", Status::Deleted, 5))
        .unwrap();
    tx.commit().unwrap();
    assert!(
        !store.name_taken("workspace", "db").unwrap(),
        "a deleted secret frees its name"
    );
    assert_eq!(store.secret_count().unwrap(), 4);
    // A name finds its secrets in every status, a purged one too.
    let tx = Write::begin(&*store).unwrap();
    tx.put_secret(&meta(ids[0], "db", Scope::Workspace, "alice", Status::Purged, 6))
        .unwrap();
    tx.commit().unwrap();
    let named: Vec<(SecretId, Status)> = store
        .secrets_named("db", &["workspace"])
        .unwrap()
        .iter()
        .map(|m| (m.id, m.status))
        .collect();
    assert_eq!(named, [(ids[0], Status::Purged), (ids[1], Status::Deleted)]);
}

fn listed(store: &dyn Store, query: &ListQuery, namespaces: &[&str]) -> Vec<SecretMeta> {
    let mut found = Vec::new();
    store
        .list_secrets(query, namespaces, &mut |m| {
            found.push(m);
            Ok(true)
        })
        .unwrap();
    found
}

fn lists_filter_by_label_prefix_and_start_in_order(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let mut rows = Vec::new();
    for (i, name) in ["app/b", "app/a", "web/x", "app/c", "zz"].iter().enumerate() {
        let mut m = meta(
            SecretId::now_v7(),
            name,
            Scope::Workspace,
            "alice",
            Status::Live,
            i as u64 + 1,
        );
        m.labels = BTreeMap::from([(
            "team".to_owned(),
            if i % 2 == 0 { "red" } else { "blue" }.to_owned(),
        )]);
        rows.push(m);
    }
    rows[4].status = Status::Deleted;
    let tx = Write::begin(&*store).unwrap();
    for row in &rows {
        tx.put_secret(row).unwrap();
    }
    tx.commit().unwrap();
    let names = |query: &ListQuery| -> Vec<String> {
        listed(&*store, query, &["workspace"])
            .into_iter()
            .map(|m| m.name)
            .collect()
    };
    let live = ListQuery::new(Status::Live);
    assert_eq!(names(&live), ["app/a", "app/b", "app/c", "web/x"]);
    let red = ListQuery {
        labels: BTreeMap::from([("team".to_owned(), "red".to_owned())]),
        ..live.clone()
    };
    assert_eq!(names(&red), ["app/b", "web/x"], "a label narrows the list");
    let two_labels = ListQuery {
        labels: BTreeMap::from([
            ("team".to_owned(), "red".to_owned()),
            ("zone".to_owned(), "eu".to_owned()),
        ]),
        ..live.clone()
    };
    assert!(names(&two_labels).is_empty(), "every label must match");
    let prefixed = ListQuery {
        prefix: Some("app/".into()),
        ..live.clone()
    };
    assert_eq!(names(&prefixed), ["app/a", "app/b", "app/c"]);
    let resumed = ListQuery {
        after: Some("app/b".into()),
        ..prefixed.clone()
    };
    assert_eq!(names(&resumed), ["app/c"], "a page resumes after the last name");
    assert_eq!(
        names(&ListQuery {
            after: Some("app/a".into()),
            ..red.clone()
        }),
        ["app/b", "web/x"]
    );
    let deleted = ListQuery::new(Status::Deleted);
    assert_eq!(names(&deleted), ["zz"]);
    // A changed row moves in every list: relabelled, renamed, deleted.
    let mut moved = rows[0].clone();
    moved.labels = BTreeMap::from([("team".to_owned(), "blue".to_owned())]);
    moved.name = "web/a".into();
    let tx = Write::begin(&*store).unwrap();
    tx.put_secret(&moved).unwrap();
    tx.commit().unwrap();
    assert_eq!(names(&red), ["web/x"]);
    assert_eq!(
        names(&ListQuery {
            labels: BTreeMap::from([("team".to_owned(), "blue".to_owned())]),
            ..live.clone()
        }),
        ["app/a", "app/c", "web/a"]
    );
    moved.status = Status::Deleted;
    let tx = Write::begin(&*store).unwrap();
    tx.put_secret(&moved).unwrap();
    tx.commit().unwrap();
    assert_eq!(names(&deleted), ["web/a", "zz"]);
}

/// A store may skip clearing the labels of a secret created in the same write (it has none
/// yet); the labels it then holds are still exactly the last ones, within one transaction and
/// across two.
fn a_secret_created_and_relabelled_is_listed_under_its_last_labels(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let id = SecretId::now_v7();
    let labelled = |team: &str, seq: u64| {
        let mut m = meta(id, "db", Scope::Workspace, "alice", Status::Live, seq);
        m.labels = BTreeMap::from([("team".to_owned(), team.to_owned())]);
        m
    };
    let listed_under = |store: &dyn Store, team: &str| {
        let query = ListQuery {
            labels: BTreeMap::from([("team".to_owned(), team.to_owned())]),
            ..ListQuery::new(Status::Live)
        };
        listed(store, &query, &["workspace"]).len()
    };
    let created = Event::SecretCreated {
        name: "db".into(),
        scope: Scope::Workspace,
        owner: "alice".into(),
        labels: BTreeMap::from([("team".to_owned(), "red".to_owned())]),
        values: crate::event::SealedValues {
            ciphertext: vec![0; 40],
            fingerprints: BTreeMap::new(),
        },
    };
    let tx = Write::begin(&*store).unwrap();
    chain(&*tx, vec![(Some(id), created)], 1_000);
    tx.put_secret(&labelled("red", 1)).unwrap();
    tx.put_secret(&labelled("blue", 1)).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        (listed_under(&*store, "red"), listed_under(&*store, "blue")),
        (0, 1),
        "only the labels the transaction left"
    );
    for (seq, team) in [(2, "green"), (3, "blue")] {
        let tx = Write::begin(&*store).unwrap();
        tx.put_secret(&labelled(team, seq)).unwrap();
        tx.commit().unwrap();
        assert_eq!(listed_under(&*store, team), 1, "relabelled {team}");
    }
    assert_eq!(listed_under(&*store, "green"), 0, "a later relabel replaces them");
}

fn data_keys_are_put_destroyed_and_rewrapped(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let (a, b) = (SecretId::now_v7(), SecretId::now_v7());
    let tx = Write::begin(&*store).unwrap();
    tx.put_wrapped_key(a, b"key-a").unwrap();
    tx.put_wrapped_key(b, b"key-b").unwrap();
    tx.delete_wrapped_key(b).unwrap();
    tx.delete_wrapped_key(SecretId::now_v7()).unwrap();
    let rewrapped = tx
        .rewrap_keys(&mut |id, wrapped| {
            assert_eq!(id, a);
            Ok([wrapped, b"+new"].concat())
        })
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(rewrapped, 1);
    assert_eq!(store.wrapped_key(a).unwrap(), Some(b"key-a+new".to_vec()));
    assert_eq!(store.wrapped_key(b).unwrap(), None, "a destroyed key is gone");

    let (c, d) = (SecretId::now_v7(), SecretId::now_v7());
    let tx = Write::begin(&*store).unwrap();
    tx.put_wrapped_keys(&[(c, b"key-c".to_vec()), (d, b"key-d".to_vec())])
        .unwrap();
    tx.commit().unwrap();
    let mut all = Vec::new();
    store
        .scan_wrapped_keys(&mut |id, wrapped| {
            all.push((id, wrapped));
            Ok(true)
        })
        .unwrap();
    let mut want = vec![
        (a, b"key-a+new".to_vec()),
        (c, b"key-c".to_vec()),
        (d, b"key-d".to_vec()),
    ];
    want.sort();
    assert_eq!(all, want, "keys put many at once, scanned in id order");
}

fn many_rows_at_once_equal_one_at_a_time(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let (a, b) = (SecretId::now_v7(), SecretId::now_v7());
    let first = meta(a, "one", Scope::Workspace, "alice", Status::Live, 1);
    let mut renamed = first.clone();
    renamed.name = "two".into();
    renamed.labels.insert("tier".into(), "gold".into());
    let other = meta(b, "one", Scope::Workspace, "bob", Status::Live, 2);
    let tx = Write::begin(&*store).unwrap();
    tx.put_secrets(&[first, renamed.clone()]).unwrap();
    tx.put_secrets(std::slice::from_ref(&other)).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        store.secret(a).unwrap(),
        Some(renamed.clone()),
        "the last row of an id wins"
    );
    assert_eq!(store.secret(b).unwrap(), Some(other));
    let gold = ListQuery {
        labels: BTreeMap::from([("tier".to_owned(), "gold".to_owned())]),
        ..ListQuery::new(Status::Live)
    };
    assert_eq!(listed(&*store, &gold, &["workspace"]), vec![renamed]);
}

fn sink(name: &str, added_seq: u64) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        url: format!("memory://{name}"),
        role: SinkRole::Backup,
        added_seq,
    }
}

fn sink_progress_only_moves_forward(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    let tx = Write::begin(&*store).unwrap();
    tx.put_sinks(&BTreeMap::from([
        ("a".to_owned(), sink("a", 3)),
        ("b".to_owned(), sink("b", 4)),
    ]))
    .unwrap();
    tx.put_sinks(&BTreeMap::from([("a".to_owned(), sink("a", 3))]))
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(
        store.sinks().unwrap().keys().collect::<Vec<_>>(),
        vec!["a"],
        "the registry is replaced"
    );

    assert_eq!(store.sink_progress("a").unwrap().checkpoint, 0);
    store.record_sink_error("a", "down", 10).unwrap();
    assert_eq!(
        store.sink_progress("a").unwrap().last_error.as_deref(),
        Some("down")
    );
    assert!(store.save_checkpoint("a", 3, 7, b"mac7", 11, "host-a:1").unwrap());
    let progress = store.sink_progress("a").unwrap();
    assert_eq!(
        (progress.checkpoint, progress.last_error, progress.last_applied_at),
        (7, None, Some(11))
    );
    assert_eq!(progress.checkpoint_mac.as_deref(), Some(&b"mac7"[..]));
    assert_eq!(progress.projected_by.as_deref(), Some("host-a:1"));
    assert!(store.save_checkpoint("a", 3, 5, b"mac5", 12, "host-b:2").unwrap());
    let progress = store.sink_progress("a").unwrap();
    assert_eq!(progress.checkpoint, 7, "a checkpoint never moves back");
    assert_eq!(
        progress.checkpoint_mac.as_deref(),
        Some(&b"mac7"[..]),
        "its MAC stays the one made for it"
    );
    assert!(
        !store.save_checkpoint("a", 9, 8, b"mac8", 12, "host-a:1").unwrap(),
        "another attachment's progress is refused"
    );
    assert!(
        !store
            .save_checkpoint("gone", 1, 8, b"mac8", 12, "host-a:1")
            .unwrap(),
        "a detached sink's progress is refused"
    );

    let park = |id, seq| Parked {
        secret_id: id,
        seq,
        error: "too big".into(),
        parked_at: 5,
    };
    let (x, y) = (SecretId::now_v7(), SecretId::now_v7());
    store.park("a", &park(x, 9)).unwrap();
    store.park("a", &park(y, 6)).unwrap();
    store.park("a", &park(x, 8)).unwrap();
    let parked: Vec<(SecretId, u64)> = store
        .parked("a")
        .unwrap()
        .iter()
        .map(|p| (p.secret_id, p.seq))
        .collect();
    assert_eq!(parked, vec![(y, 6), (x, 8)], "one entry per secret, by seq");
    store.unpark("a", x, 7).unwrap();
    assert_eq!(
        store.parked("a").unwrap().len(),
        2,
        "an older write does not unpark a newer refusal"
    );
    store.unpark("a", x, 8).unwrap();
    assert_eq!(store.parked("a").unwrap().len(), 1);
    store.forget_sink_progress("a").unwrap();
    assert_eq!(store.sink_progress("a").unwrap(), Default::default());
    assert!(store.parked("a").unwrap().is_empty());
}

fn snapshots_and_derived_state(fresh: Fresh<'_>) {
    let (store, _) = fresh();
    assert!(store.has_derived().unwrap());
    let id = SecretId::now_v7();
    let tx = Write::begin(&*store).unwrap();
    chain(&*tx, vec![(Some(id), Event::SecretDeleted)], 1);
    tx.put_snapshot(10, b"ten").unwrap();
    tx.put_snapshot(20, b"twenty").unwrap();
    tx.put_secret(&meta(id, "s", Scope::Workspace, "o", Status::Live, 1))
        .unwrap();
    tx.put_sinks(&BTreeMap::from([("a".to_owned(), sink("a", 1))]))
        .unwrap();
    tx.put_wrapped_key(id, b"k").unwrap();
    tx.set_setting_int("kept", 1).unwrap();
    tx.commit().unwrap();
    assert_eq!(store.snapshot_seqs().unwrap(), vec![10, 20]);
    assert_eq!(
        store.snapshot_digest(20).unwrap(),
        Some(*blake3::hash(b"twenty").as_bytes()),
        "a snapshot's digest is that of its bytes"
    );
    assert_eq!(
        store.snapshot_digest(15).unwrap(),
        None,
        "only a snapshot at exactly that seq"
    );
    assert_eq!(
        store.snapshot_at_or_before(15).unwrap(),
        Some((10, b"ten".to_vec()))
    );
    assert_eq!(
        store.snapshot_at_or_before(u64::MAX).unwrap(),
        Some((20, b"twenty".to_vec()))
    );
    assert_eq!(store.snapshot_at_or_before(9).unwrap(), None);

    let tx = Write::begin(&*store).unwrap();
    tx.reset_derived().unwrap();
    tx.commit().unwrap();
    assert!(store.snapshot_seqs().unwrap().is_empty(), "snapshots are derived");
    assert_eq!(store.secret_count().unwrap(), 0, "the catalog is derived");
    assert!(store.sinks().unwrap().is_empty(), "the registry is derived");
    assert_eq!(store.head().unwrap().seq, 1, "the log is not");
    assert_eq!(
        store.wrapped_key(id).unwrap(),
        Some(b"k".to_vec()),
        "data keys are not"
    );
    assert_eq!(store.setting_int("kept").unwrap(), Some(1), "settings are not");
}

fn other_connections_see_only_commits(fresh: Fresh<'_>) {
    let (store, open_again) = fresh();
    let other = open_again();
    let tx = Write::begin(&*store).unwrap();
    chain(&*tx, vec![(None, Event::SinkRemoved { name: "x".into() })], 1);
    assert_eq!(
        other.head().unwrap().seq,
        0,
        "an uncommitted append is invisible elsewhere"
    );
    tx.commit().unwrap();
    assert_eq!(
        other.head().unwrap().seq,
        1,
        "a commit is visible to the next read elsewhere"
    );
    {
        let read = Read::begin(&*other).unwrap();
        assert_eq!(read.head().unwrap().seq, 1);
        let tx = Write::begin(&*store).unwrap();
        chain(&*tx, vec![(None, Event::SinkRemoved { name: "y".into() })], 1);
        tx.commit().unwrap();
        assert_eq!(read.head().unwrap().seq, 1, "a read transaction keeps its state");
    }
    assert_eq!(other.head().unwrap().seq, 2);
    // Appends from two connections chain one after the other.
    let tx = Write::begin(&*other).unwrap();
    let row = chain(&*tx, vec![(None, Event::SinkRemoved { name: "z".into() })], 1).remove(0);
    tx.commit().unwrap();
    assert_eq!(row.seq, 3);
    assert_eq!(store.head().unwrap().hash, row.hash);
}
