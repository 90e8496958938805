//! Reads that stay flat at size (issue 18), at a size that runs quickly: list pages that are
//! complete and ordered while writes happen between them, and a streamed log that equals the
//! whole-catalog fold it replaced.

use std::collections::{BTreeMap, BTreeSet};

use sledger::{
    Command, Ledger, LedgerSettings, ListQuery, LogFilter, MasterKey, Scope, SecretValues, Status,
};

fn create(name: &str, scope: Scope, team: usize) -> Command {
    let mut values = SecretValues::new();
    values.insert("v", name);
    Command::Create {
        name: name.to_owned(),
        scope,
        labels: BTreeMap::from([("team".to_owned(), format!("t{team}"))]),
        values,
    }
}

fn new_ledger(dir: &tempfile::TempDir) -> Ledger {
    let path = dir.path().join("ledger.db");
    let master = MasterKey::generate();
    Ledger::init(&path, master.clone(), LedgerSettings::default()).unwrap();
    Ledger::open_with_key(&path, master).unwrap()
}

/// Load `count` secrets named `s/00000`…, in batches (one append each), a few private.
fn load(ledger: &mut Ledger, count: usize) {
    let names: Vec<usize> = (0..count).collect();
    for batch in names.chunks(1000) {
        let commands = batch
            .iter()
            .map(|i| {
                let scope = if i % 97 == 0 {
                    Scope::Private
                } else {
                    Scope::Workspace
                };
                create(&format!("s/{i:05}"), scope, i % 7)
            })
            .collect();
        ledger.execute("alice", commands).unwrap();
    }
}

/// Paging through 10 000 secrets, with creates, deletes and renames between the pages: every
/// secret that was there the whole time is listed exactly once, names strictly increase, and
/// nothing before a page's cursor is ever listed again.
#[test]
fn list_pages_are_complete_and_ordered_while_writes_happen_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = new_ledger(&dir);
    load(&mut ledger, 10_000);
    for (round, labels) in [
        BTreeMap::new(),
        BTreeMap::from([("team".to_owned(), "t3".to_owned())]),
    ]
    .into_iter()
    .enumerate()
    {
        let query = ListQuery {
            labels: labels.clone(),
            ..ListQuery::new(Status::Live)
        };
        let before: BTreeSet<String> = ledger
            .list("alice", Status::Live)
            .unwrap()
            .into_iter()
            .filter(|m| labels.iter().all(|(k, v)| m.labels.get(k) == Some(v)))
            .map(|m| m.name)
            .collect();
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut cursor = query.clone();
        let mut page_number = 0;
        loop {
            let page = ledger.list_page("alice", &cursor, 97, &|_| true).unwrap();
            assert!(
                page.secrets.len() <= 98,
                "a page exceeds its size only to keep one name whole"
            );
            seen.extend(page.secrets.iter().map(|m| (m.name.clone(), m.namespace())));
            let Some(after) = page.next_after else { break };
            // Writes between pages: a new secret before the cursor (not listed: the cursor has
            // passed), one after it (may be listed), a delete and a rename after it.
            page_number += 1;
            let n = page_number;
            let mut writes = vec![
                create(&format!("s/0000{n}-new{round}"), Scope::Workspace, 3),
                create(&format!("s/99999-new{round}-{n}"), Scope::Workspace, 3),
            ];
            let victim = format!("s/{:05}", (n * 211 + 5000) % 10_000);
            if victim.as_str() > after.as_str() && before.contains(&victim) && !touched.contains(&victim) {
                writes.push(Command::Delete { name: victim.clone() });
                touched.insert(victim);
            }
            let moved = format!("s/{:05}", (n * 307 + 6000) % 10_000);
            if moved.as_str() > after.as_str() && before.contains(&moved) && !touched.contains(&moved) {
                writes.push(Command::Rename {
                    name: moved.clone(),
                    new_name: format!("{moved}-renamed"),
                });
                touched.insert(moved);
            }
            for w in writes {
                let _ = ledger.execute("alice", vec![w]);
            }
            cursor.after = Some(after);
        }
        let names: Vec<&String> = seen.iter().map(|(n, _)| n).collect();
        let pairs: BTreeSet<&(String, String)> = seen.iter().collect();
        assert_eq!(pairs.len(), seen.len(), "a secret was listed twice");
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "pages are in (name, namespace) order across their boundaries"
        );
        let listed: BTreeSet<&String> = names.iter().copied().collect();
        for name in before.iter().filter(|n| !touched.contains(*n)) {
            assert!(
                listed.contains(name),
                "{name} was there the whole time but was not listed"
            );
        }
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("s/0000") && n.ends_with(&format!("-new{round}"))),
            "a secret created before the cursor appeared in a later page"
        );
        assert!(page_number > 10, "the list spanned many pages");
    }
}

/// The streamed log (range scans, one secret's events through its index, a bounded cache of
/// recent states) shows exactly what the fold of the whole catalog shows, for every filter.
#[test]
fn the_streamed_log_equals_the_whole_catalog_fold() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = new_ledger(&dir);
    load(&mut ledger, 3_000);
    for i in (0..3_000).step_by(3) {
        let name = format!("s/{i:05}");
        let mut values = SecretValues::new();
        values.insert("v", "changed");
        let command = match i % 4 {
            0 => Command::Update {
                name,
                set_values: values,
                remove_keys: vec![],
                set_labels: BTreeMap::from([("zone".to_owned(), "eu".to_owned())]),
                remove_labels: vec!["team".to_owned()],
            },
            1 => Command::Rename {
                new_name: format!("{name}-b"),
                name,
            },
            2 => Command::Delete { name },
            _ => Command::Purge { name },
        };
        let actor = if i % 2 == 1 && i % 97 != 0 { "bob" } else { "alice" };
        ledger.execute(actor, vec![command]).unwrap();
    }
    let mut folded = Vec::new();
    ledger
        .audit(&mut Default::default(), &mut |e| {
            folded.push(e.to_json());
            Ok(true)
        })
        .unwrap();
    let streamed = |filter: LogFilter| -> Vec<serde_json::Value> {
        ledger
            .log_entries("alice", filter)
            .unwrap()
            .iter()
            .map(|e| e.to_json())
            .collect()
    };
    assert_eq!(streamed(LogFilter::default()), folded, "the whole log");
    let matching = |keep: &dyn Fn(&serde_json::Value) -> bool| -> Vec<serde_json::Value> {
        folded.iter().filter(|e| keep(e)).cloned().collect()
    };
    let by_type = LogFilter {
        event_type: Some("secret.renamed".into()),
        ..Default::default()
    };
    assert_eq!(
        streamed(by_type),
        matching(&|e| e["event_type"] == "secret.renamed")
    );
    let by_actor = LogFilter {
        actor: Some("bob".into()),
        ..Default::default()
    };
    assert_eq!(streamed(by_actor), matching(&|e| e["actor"] == "bob"));
    let one_secret = LogFilter {
        secret: Some("s/00009-b".into()),
        ..Default::default()
    };
    let id = folded.iter().find(|e| e["name"] == "s/00009-b").unwrap()["secret_id"].clone();
    assert_eq!(streamed(one_secret), matching(&|e| e["secret_id"] == id));
    let middle = folded[folded.len() / 2]["seq"].as_u64().unwrap();
    let page = LogFilter {
        after_seq: Some(middle),
        limit: Some(500),
        ..Default::default()
    };
    let after_middle = matching(&|e| e["seq"].as_u64().unwrap() > middle);
    assert_eq!(streamed(page), after_middle[..500]);
    let tail = LogFilter {
        tail: Some(250),
        ..Default::default()
    };
    assert_eq!(streamed(tail), folded[folded.len() - 250..]);
}

/// A page that a filter (a token's patterns) ends has no next page: `next_after` names one
/// only when a secret the filter keeps follows.
#[test]
fn a_filtered_last_page_says_there_is_no_next() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = new_ledger(&dir);
    for name in ["app/a", "app/b", "zz/hidden"] {
        ledger
            .execute("alice", vec![create(name, Scope::Workspace, 1)])
            .unwrap();
    }
    let query = ListQuery::new(Status::Live);
    let apps = |m: &sledger::SecretMeta| m.name.starts_with("app/");
    let page = ledger.list_page("alice", &query, 2, &apps).unwrap();
    assert_eq!(page.secrets.len(), 2);
    assert_eq!(page.next_after, None);
    let page = ledger.list_page("alice", &query, 2, &|_| true).unwrap();
    assert_eq!(page.next_after.as_deref(), Some("app/b"));
    let page = ledger.list_page("alice", &query, 1, &apps).unwrap();
    assert_eq!(page.next_after.as_deref(), Some("app/a"));
}
