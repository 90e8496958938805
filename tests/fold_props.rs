//! Property: folding any valid event sequence equals folding it from any snapshot.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sledger::catalog::Catalog;
use sledger::event::{Event, Scope, SealedValues, StoredEvent};
use sledger::log::memory::MemoryLog;
use sledger::log::{EventLog, NewEvent};
use sledger::{Command, Ledger, LedgerSettings, MasterKey, SecretValues, Status};

/// One step of a random history; indices pick among existing secrets, modulo their count.
#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Update(u8, u8),
    Rename(u8, u8),
    Delete(u8),
    Restore(u8),
    Purge(u8),
    RotateKey,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u8>().prop_map(Op::Create),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Update(a, b)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => any::<u8>().prop_map(Op::Delete),
        1 => any::<u8>().prop_map(Op::Restore),
        1 => any::<u8>().prop_map(Op::Purge),
        1 => Just(Op::RotateKey),
    ]
}

fn sealed(tag: u8) -> SealedValues {
    let mut fingerprints = BTreeMap::new();
    fingerprints.insert(format!("k{}", tag % 3), [tag; 16]);
    SealedValues {
        ciphertext: vec![tag; 8],
        fingerprints,
    }
}

/// Turn random ops into a valid event sequence (ops that cannot apply are skipped).
fn events(ops: &[Op]) -> Vec<StoredEvent> {
    let mut log = MemoryLog::new();
    let mut secrets: Vec<(uuid::Uuid, Status)> = Vec::new();
    let pick = |secrets: &Vec<(uuid::Uuid, Status)>, i: u8, ok: &dyn Fn(Status) -> bool| {
        let candidates: Vec<usize> = (0..secrets.len()).filter(|&k| ok(secrets[k].1)).collect();
        (!candidates.is_empty()).then(|| candidates[i as usize % candidates.len()])
    };
    for (n, op) in ops.iter().enumerate() {
        let (secret, event) = match op {
            Op::Create(t) => {
                let id = uuid::Uuid::now_v7();
                secrets.push((id, Status::Live));
                let event = Event::SecretCreated {
                    name: format!("s{n}"),
                    scope: if t % 2 == 0 {
                        Scope::Workspace
                    } else {
                        Scope::Private
                    },
                    owner: "o".into(),
                    labels: BTreeMap::from([("t".into(), t.to_string())]),
                    values: sealed(*t),
                };
                (Some(id), event)
            }
            Op::Update(i, t) => match pick(&secrets, *i, &|s| s != Status::Purged) {
                Some(k) => {
                    let event = Event::SecretUpdated {
                        labels: BTreeMap::new(),
                        values: sealed(*t),
                    };
                    (Some(secrets[k].0), event)
                }
                None => continue,
            },
            Op::Rename(i, t) => match pick(&secrets, *i, &|s| s == Status::Live) {
                Some(k) => (
                    Some(secrets[k].0),
                    Event::SecretRenamed {
                        from: "?".into(),
                        to: format!("r{n}-{t}"),
                    },
                ),
                None => continue,
            },
            Op::Delete(i) => match pick(&secrets, *i, &|s| s == Status::Live) {
                Some(k) => {
                    secrets[k].1 = Status::Deleted;
                    (Some(secrets[k].0), Event::SecretDeleted)
                }
                None => continue,
            },
            Op::Restore(i) => match pick(&secrets, *i, &|s| s == Status::Deleted) {
                Some(k) => {
                    secrets[k].1 = Status::Live;
                    (Some(secrets[k].0), Event::SecretRestored)
                }
                None => continue,
            },
            Op::Purge(i) => match pick(&secrets, *i, &|s| s != Status::Purged) {
                Some(k) => {
                    secrets[k].1 = Status::Purged;
                    (Some(secrets[k].0), Event::SecretPurged)
                }
                None => continue,
            },
            Op::RotateKey => (
                None,
                Event::KeyRotated {
                    key_id: format!("k{n}"),
                },
            ),
        };
        let new = NewEvent {
            event_id: uuid::Uuid::now_v7(),
            actor: "p".into(),
            secret_id: secret,
            event,
        };
        log.append(vec![new], 1_000 + n as i64);
    }
    log.events().to_vec()
}

fn fold(start: Catalog, events: &[StoredEvent]) -> Catalog {
    let decoded: Vec<(StoredEvent, Event)> =
        events.iter().map(|e| (e.clone(), e.decode().unwrap())).collect();
    start.fold(decoded.iter().map(|(s, e)| (s, e.clone()))).unwrap()
}

proptest! {
    #[test]
    fn fold_from_any_snapshot_equals_full_fold(ops in prop::collection::vec(op(), 0..60), cut in any::<prop::sample::Index>()) {
        let events = events(&ops);
        let full = fold(Catalog::default(), &events);
        let k = cut.index(events.len() + 1);
        let snapshot = fold(Catalog::default(), &events[..k]).to_snapshot();
        let resumed = fold(Catalog::from_snapshot(&snapshot).unwrap(), &events[k..]);
        prop_assert_eq!(resumed, full);
    }
}

fn command(op: &Op, n: usize) -> Option<Command> {
    let name = |i: &u8| format!("s{}", i % 6);
    let mut values = SecretValues::new();
    values.insert("k", format!("v{n}"));
    Some(match op {
        Op::Create(i) => Command::Create {
            name: name(i),
            scope: Scope::Workspace,
            labels: BTreeMap::new(),
            values,
        },
        Op::Update(i, _) => Command::Update {
            name: name(i),
            set_values: values,
            remove_keys: vec![],
            set_labels: BTreeMap::new(),
            remove_labels: vec![],
        },
        Op::Rename(i, j) => Command::Rename {
            name: name(i),
            new_name: name(j),
        },
        Op::Delete(i) => Command::Delete { name: name(i) },
        Op::Restore(i) => Command::Undelete { name: name(i) },
        Op::Purge(i) => Command::Purge { name: name(i) },
        Op::RotateKey => return None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Through the real ledger: `catalog_at(seq)` (nearest stored snapshot + the events after
    /// it) equals a fold of the log from seq 1, at every seq, with snapshots every 3 events.
    #[test]
    fn ledger_snapshots_agree_with_full_folds(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::init(
            dir.path().join("l.db"),
            MasterKey::generate(),
            LedgerSettings { snapshot_interval: 3, ..LedgerSettings::default() },
        ).unwrap();
        for (n, op) in ops.iter().enumerate() {
            match command(op, n) {
                // Invalid commands (unknown name, clash) are rejected; that is part of the test too.
                Some(c) => { let _ = ledger.execute("p", vec![c]); }
                None => { ledger.rotate_key("p", MasterKey::generate(), &mut |_| Ok(())).unwrap(); }
            }
        }
        let head = ledger.head().unwrap().seq;
        let snapshots: u64 = rusqlite::Connection::open(dir.path().join("l.db")).unwrap()
            .query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0)).unwrap();
        prop_assert!(head < 3 || snapshots > 0, "no snapshot stored in {} events", head);
        let mut all = Vec::new();
        ledger.log().scan(1, head, &mut |e| { all.push(e); Ok(true) }).unwrap();
        for seq in 0..=head {
            let expected = fold(Catalog::default(), &all[..seq as usize]);
            prop_assert_eq!(ledger.catalog_at(seq).unwrap(), expected);
        }
    }
}
