//! Tamper evidence: with the append-only triggers dropped, any single change to the stored
//! events makes `sledger verify` fail and name the first bad seq; a truncated or rewritten
//! tail is caught with `--anchor`, and without one by the anchors the sinks witnessed.

mod common;

use common::Env;
use rusqlite::types::Value;

const INTEGRITY: i32 = 5;

const COLUMNS: &[&str] = &[
    "seq",
    "event_id",
    "recorded_at",
    "actor",
    "secret_id",
    "event_type",
    "event_version",
    "payload",
    "prev_hash",
    "hash",
];

/// A ledger with every kind of event, including a ledger-level one (NULL secret_id).
fn sample() -> (Env, u64) {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=1", "--label", "l=1"]);
    env.ok(&["secret", "create", "b", "--value", "k=2"]);
    env.ok(&["secret", "update", "a", "--value", "k=3"]);
    env.ok(&["key", "rotate"]);
    env.ok(&["secret", "rename", "b", "c"]);
    env.ok(&["secret", "delete", "c"]);
    env.ok(&["secret", "undelete", "c"]);
    env.ok(&["secret", "purge", "c", "--yes"]);
    let url = env.sqlite_url("bk.db");
    env.ok(&["sink", "add", "bk", &url]);
    env.ok(&["sink", "set-role", "bk", "replica"]);
    env.ok(&["sink", "remove", "bk"]);
    env.ok(&["secret", "create", "late", "--value", "k=1"]);
    env.ok(&["restore", "--seq", "3"]);
    let events = env.json(&["verify"])["events"].as_u64().unwrap();
    // Fold the WAL into the main file so a copy of it is the whole ledger.
    rusqlite::Connection::open(&env.ledger)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    (env, events)
}

/// A copy of `env`'s ledger (and key) to tamper with.
fn copy_of(env: &Env) -> Env {
    let copy = Env::empty();
    std::fs::copy(&env.ledger, &copy.ledger).unwrap();
    std::fs::copy(&env.key, &copy.key).unwrap();
    copy
}

/// A different value of the same column's kind.
fn altered(value: &Value, column: &str, events: u64) -> Value {
    match (column, value) {
        ("seq", _) => Value::Integer(events as i64 + 100),
        ("secret_id", Value::Null) => Value::Blob(vec![7; 16]),
        ("secret_id", _) => Value::Null,
        (_, Value::Integer(i)) => Value::Integer(i + 1),
        (_, Value::Text(t)) => Value::Text(format!("{t}x")),
        (_, Value::Blob(b)) if b.is_empty() => Value::Blob(vec![0]),
        (_, Value::Blob(b)) => {
            let mut b = b.clone();
            let last = b.len() - 1;
            b[last] ^= 1;
            Value::Blob(b)
        }
        (_, other) => panic!("unexpected value {other:?} in {column}"),
    }
}

fn assert_broken_at(env: &Env, seq: u64, what: &str) {
    let err = env.fails(&["verify"], INTEGRITY);
    assert!(
        err.contains(&format!("broken at seq {seq}:")),
        "{what}: verify should name seq {seq}, said: {err}"
    );
}

#[test]
fn changing_any_column_of_any_event_is_detected() {
    let (env, events) = sample();
    for seq in 1..=events {
        for column in COLUMNS {
            let copy = copy_of(&env);
            let raw = copy.raw();
            let value: Value = raw
                .query_row(
                    &format!("SELECT {column} FROM events WHERE seq = ?1"),
                    [seq as i64],
                    |r| r.get(0),
                )
                .unwrap();
            let new = altered(&value, column, events);
            raw.execute(
                &format!("UPDATE events SET {column} = ?1 WHERE seq = ?2"),
                rusqlite::params![new, seq as i64],
            )
            .unwrap();
            drop(raw);
            // Moving the last event away leaves a gap only an anchor sees; covered below.
            if *column == "seq" && seq == events {
                let err = copy.fails(&["verify"], INTEGRITY);
                assert!(err.contains("broken at seq"), "{err}");
                continue;
            }
            assert_broken_at(&copy, seq, &format!("changing {column} of event {seq}"));
        }
    }
}

/// A write extends the chain from the last event a key holder saw: that event's columns must
/// still hash to its stored hash, or the write would build on an edited event.
#[test]
fn a_write_refuses_to_extend_an_edited_head_event() {
    let (env, events) = sample();
    for column in ["recorded_at", "actor", "payload"] {
        let copy = copy_of(&env);
        let raw = copy.raw();
        raw.execute_batch("DROP TRIGGER IF EXISTS events_are_append_only_update")
            .unwrap();
        let value: Value = raw
            .query_row(
                &format!("SELECT {column} FROM events WHERE seq = ?1"),
                [events as i64],
                |r| r.get(0),
            )
            .unwrap();
        raw.execute(
            &format!("UPDATE events SET {column} = ?1 WHERE seq = ?2"),
            rusqlite::params![altered(&value, column, events), events as i64],
        )
        .unwrap();
        drop(raw);
        let err = copy.fails(&["secret", "create", "after", "--value", "k=v"], INTEGRITY);
        assert!(
            err.contains(&format!("broken at seq {events}")),
            "{column}: {err}"
        );
        let head: i64 = copy
            .raw()
            .query_row("SELECT max(seq) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(head as u64, events, "{column}: nothing was appended");
    }
}

#[test]
fn deleting_an_event_is_detected() {
    let (env, events) = sample();
    for seq in 1..events {
        let copy = copy_of(&env);
        copy.raw()
            .execute("DELETE FROM events WHERE seq = ?1", [seq as i64])
            .unwrap();
        assert_broken_at(&copy, seq, &format!("deleting event {seq}"));
    }
}

#[test]
fn swapping_two_events_is_detected() {
    let (env, events) = sample();
    for (i, j) in [(1, 2), (2, 5), (3, events)] {
        let copy = copy_of(&env);
        let raw = copy.raw();
        let rest = &COLUMNS[1..];
        let row = |seq: u64| -> Vec<Value> {
            raw.query_row(
                &format!("SELECT {} FROM events WHERE seq = ?1", rest.join(",")),
                [seq as i64],
                |r| (0..rest.len()).map(|k| r.get(k)).collect(),
            )
            .unwrap()
        };
        let (ri, rj) = (row(i), row(j));
        // event_id is UNIQUE: park one row's id first.
        raw.execute("UPDATE events SET event_id = x'00' WHERE seq = ?1", [i as i64])
            .unwrap();
        let set = rest
            .iter()
            .enumerate()
            .map(|(k, c)| format!("{c} = ?{}", k + 2))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!("UPDATE events SET {set} WHERE seq = ?1");
        let write = |seq: u64, vals: &[Value]| {
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![];
            let seq = seq as i64;
            params.push(&seq);
            params.extend(vals.iter().map(|v| v as &dyn rusqlite::ToSql));
            raw.execute(&sql, params.as_slice()).unwrap();
        };
        write(j, &ri);
        write(i, &rj);
        drop(raw);
        assert_broken_at(&copy, i, &format!("swapping events {i} and {j}"));
    }
}

#[test]
fn truncated_or_rewritten_tail_is_caught_by_the_anchor() {
    let (env, events) = sample();
    let anchor = env.path("anchor.json");
    env.ok(&["verify", "--save-anchor", anchor.to_str().unwrap()]);
    env.ok(&["verify", "--anchor", anchor.to_str().unwrap()]);

    // Truncation: the remaining chain is internally valid. A key holder notices on their own
    // (the last event a key holder saw is gone); an auditor without the key needs the anchor.
    let copy = copy_of(&env);
    copy.raw()
        .execute("DELETE FROM events WHERE seq >= ?1", [events as i64 - 1])
        .unwrap();
    let err = copy.fails(&["verify"], INTEGRITY);
    assert!(err.contains("truncated"), "{err}");
    let no_key = copy.path("no-key");
    let auditor = |args: &[&str]| {
        copy.cmd()
            .env("SLEDGER_KEY_FILE", &no_key)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(auditor(&["verify"]).status.success());
    let out = auditor(&["verify", "--anchor", anchor.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(INTEGRITY));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));

    // Rewriting: truncate, drop the trusted point too, then append new events until the log
    // is as long again. The primary sink (shared with the original: its URL is in the ledger)
    // witnessed the lost head, so the first write is refused until a key holder accepts the
    // ledger; after that, only the anchor file can tell.
    let copy = copy_of(&env);
    let raw = copy.raw();
    raw.execute("DELETE FROM events WHERE seq >= ?1", [events as i64 - 1])
        .unwrap();
    raw.execute("DELETE FROM ledger_meta WHERE key = 'mac_trusted'", [])
        .unwrap();
    drop(raw);
    let err = copy.fails(&["secret", "create", "x", "--value", "k=forged"], INTEGRITY);
    assert!(err.contains("sink local witnessed seq"), "{err}");
    copy.ok(&["anchors", "reset", "--yes"]);
    copy.ok(&["secret", "create", "x", "--value", "k=forged"]);
    copy.ok(&["secret", "create", "y", "--value", "k=forged"]);
    copy.ok(&["verify"]);
    let err = copy.fails(&["verify", "--anchor", anchor.to_str().unwrap()], INTEGRITY);
    assert!(err.contains("rewritten"), "{err}");

    // An anchor from another ledger is refused, not silently accepted.
    let other = Env::new();
    let err = other.fails(&["verify", "--anchor", anchor.to_str().unwrap()], INTEGRITY);
    assert!(err.contains("another ledger"), "{err}");
}

#[test]
fn the_database_itself_refuses_updates_and_deletes() {
    let (env, _) = sample();
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    let err = raw
        .execute("UPDATE events SET actor = 'mallory' WHERE seq = 1", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = raw.execute("DELETE FROM events WHERE seq = 1", []).unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

/// An edited catalog row is never used: reads and writes resolve a name through the catalog,
/// and refuse a row the secret's own events do not fold into (exit 5), before any value is
/// served or merged. `verify` names it, and `--rebuild-catalog` repairs it.
#[test]
fn editing_the_derived_catalog_is_caught_and_repairable() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=one"]);
    env.ok(&["secret", "update", "a", "--value", "k=two"]);
    // b's value has letters no hex id or hash in an error can hold.
    env.ok(&["secret", "create", "b", "--value", "k=buzz"]);
    // Point a's catalog row at b's metadata: `get a` would serve another secret's values.
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    raw.execute(
        "UPDATE catalog SET meta = (SELECT meta FROM catalog WHERE name = 'b') WHERE name = 'a'",
        [],
    )
    .unwrap();
    drop(raw);
    for args in [
        &["secret", "get", "a"][..],
        &["secret", "get", "a", "--from", "ledger"],
        &["secret", "update", "a", "--value", "other=1"],
    ] {
        let err = env.fails(args, INTEGRITY);
        assert!(err.contains("catalog row"), "{args:?}: {err}");
        assert!(!err.contains("buzz"), "b's value leaked: {err}");
    }
    let err = env.fails(&["verify"], INTEGRITY);
    assert!(
        err.contains("catalog row") && err.contains("--rebuild-catalog"),
        "{err}"
    );
    env.ok(&["verify", "--rebuild-catalog"]);
    assert_eq!(env.ok(&["secret", "get", "a", "--key", "k"]), "two\n");
    env.ok(&["verify"]);
}

/// The columns lookups by name use (name, status) edited beside an untouched meta: `verify`
/// names the row, and `--rebuild-catalog` repairs it.
#[test]
fn editing_a_catalog_rows_name_or_status_column_is_caught_by_verify() {
    for edit in [
        "UPDATE catalog SET status = 'deleted' WHERE name = 'x/b'",
        "UPDATE catalog SET name = 'x/c' WHERE name = 'x/b'",
    ] {
        let env = Env::new();
        env.ok(&["secret", "create", "x/b", "--value", "k=one"]);
        let raw = rusqlite::Connection::open(&env.ledger).unwrap();
        raw.execute(edit, []).unwrap();
        drop(raw);
        let err = env.fails(&["verify"], INTEGRITY);
        assert!(
            err.contains("catalog row") && err.contains("--rebuild-catalog"),
            "{edit}: {err}"
        );
        env.ok(&["verify", "--rebuild-catalog"]);
        env.ok(&["verify"]);
        assert_eq!(env.ok(&["secret", "get", "x/b", "--key", "k"]), "one\n");
    }
}

/// `--rebuild-catalog` folds only a log that verifies: an event edited by hand is reported,
/// and the catalog is left as it was rather than rebuilt from the forgery.
#[test]
fn a_catalog_is_never_rebuilt_from_a_log_that_does_not_verify() {
    let env = Env::new();
    env.ok(&["secret", "create", "app/s", "--value", "k=v"]);
    let raw = env.raw();
    raw.execute(
        "UPDATE events SET actor = 'mallory@test' WHERE seq = (SELECT max(seq) FROM events)",
        [],
    )
    .unwrap();
    drop(raw);
    let out = env.cmd().args(["verify", "--rebuild-catalog"]).output().unwrap();
    assert_eq!(out.status.code(), Some(INTEGRITY));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("catalog rebuilt"), "{said}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken at seq"));
}

#[test]
fn redirecting_a_sink_in_the_derived_table_is_caught() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=one"]);
    // Someone with write access to the file, but not the key, points the primary elsewhere.
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    let evil = env.sqlite_url("evil.db");
    raw.execute("UPDATE sinks SET url = ?1 WHERE name = 'local'", [&evil])
        .unwrap();
    drop(raw);
    // Writes, projection and reads go by the log's sink events, never by that table: nothing
    // reaches the URL written there.
    env.ok(&["secret", "create", "b", "--value", "k=two"]);
    env.ok(&["project"]);
    assert_eq!(
        env.ok(&["secret", "get", "b", "--key", "k", "--from", "primary"]),
        "two\n"
    );
    assert!(!env.path("evil.db").exists(), "a value went to the edited URL");
    assert!(env.json(&["sink", "list"]).to_string().contains("ledger.sink.db"));
    let err = env.fails(&["verify"], INTEGRITY);
    assert!(
        err.contains("sinks table") && err.contains("--rebuild-catalog"),
        "{err}"
    );
    env.ok(&["verify", "--rebuild-catalog"]);
    let list = env.json(&["sink", "list"]);
    assert!(
        list[0]["url"].as_str().unwrap().ends_with("ledger.sink.db"),
        "{list}"
    );
    env.ok(&["verify"]);
}

/// A data key deleted by hand from `secret_keys` (outside the chain) is corruption, not a
/// purge: reads fail with exit 5, and `reconcile` deletes nothing from the sink.
#[test]
fn a_data_key_deleted_by_hand_is_corruption_not_a_purge() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=one"]);
    env.ok(&["secret", "create", "b", "--value", "k=two"]);
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    raw.execute("DELETE FROM secret_keys", []).unwrap();
    drop(raw);
    let err = env.fails(&["secret", "get", "a", "--from", "ledger"], INTEGRITY);
    assert!(err.contains("no purge"), "{err}");
    env.fails(&["reconcile", "local"], INTEGRITY);
    env.fails(&["replay", "--into", &env.sqlite_url("copy.db")], INTEGRITY);
    // The sink still holds both secrets.
    assert_eq!(
        env.ok(&["secret", "get", "a", "--key", "k", "--from", "primary"]),
        "one\n"
    );
    assert_eq!(
        env.ok(&["secret", "get", "b", "--key", "k", "--from", "primary"]),
        "two\n"
    );
    // `verify` names it too, with where the values still are.
    let err = env.fails(&["verify"], INTEGRITY);
    assert!(
        err.contains("data key of secret \"a\"") && err.contains("--from"),
        "{err}"
    );
}

/// Append `event` after the head with a correct (unkeyed) chain, as someone who can write the
/// file but has no master key can.
fn forge(env: &Env, event: sledger::Event) -> u64 {
    let raw = env.raw();
    let (seq, hash, at): (i64, Vec<u8>, i64) = raw
        .query_row(
            "SELECT seq, hash, recorded_at FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let (event_type, event_version, payload) = sledger::event::encode(&event);
    let mut row = sledger::StoredEvent {
        seq: seq as u64 + 1,
        event_id: uuid::Uuid::now_v7(),
        recorded_at: at,
        actor: "alice@test".into(),
        secret_id: None,
        event_type: event_type.into(),
        event_version,
        payload,
        prev_hash: hash.try_into().unwrap(),
        hash: [0; 32],
        mac: None,
    };
    row.hash = sledger::event::event_hash(&row);
    raw.execute(
        "INSERT INTO events (seq, event_id, recorded_at, actor, secret_id, event_type, event_version, payload, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7, ?8, ?9)",
        rusqlite::params![
            row.seq as i64,
            row.event_id.as_bytes().as_slice(),
            row.recorded_at,
            row.actor,
            row.event_type,
            row.event_version,
            row.payload,
            row.prev_hash.as_slice(),
            row.hash.as_slice()
        ],
    )
    .unwrap();
    row.seq
}

#[test]
fn a_forged_event_is_rejected_by_the_next_write_and_by_verify() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=x"]);
    let plugin = env.path("ran");
    let forged = forge(
        &env,
        sledger::Event::SinkAdded {
            name: "evil".into(),
            url: format!("exec:///usr/bin/touch?arg={}", plugin.display()),
            role: sledger::event::SinkRole::Backup,
        },
    );
    // The chain itself is intact: without the key, only the structure can be checked.
    let auditor = env
        .cmd()
        .env("SLEDGER_KEY_FILE", env.path("no-key"))
        .args(["verify"])
        .output()
        .unwrap();
    assert!(
        auditor.status.success(),
        "{}",
        String::from_utf8_lossy(&auditor.stderr)
    );
    assert!(String::from_utf8_lossy(&auditor.stdout).contains("not checked"));
    // A key holder's next command refuses, before anything reaches a sink or a program.
    let err = env.fails(&["secret", "create", "other", "--value", "k=v"], INTEGRITY);
    assert!(
        err.contains(&format!("seq {forged}")) && err.contains("MAC"),
        "{err}"
    );
    env.fails(&["project"], INTEGRITY);
    assert!(!plugin.exists(), "the forged sink's program ran");
    let err = env.fails(&["verify"], INTEGRITY);
    assert!(err.contains(&format!("seq {forged}")), "{err}");
}

#[test]
fn a_rewritten_and_rechained_event_is_rejected() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=1"]);
    env.ok(&["secret", "create", "b", "--value", "k=2"]);
    env.ok(&["secret", "update", "a", "--value", "k=3"]);
    // Fake the actor of event 2 and rebuild the chain from there, as an editor without the key.
    let raw = env.raw();
    let mut rows: Vec<sledger::StoredEvent> = Vec::new();
    {
        let mut stmt = raw
            .prepare("SELECT seq, event_id, recorded_at, actor, secret_id, event_type, event_version, payload, prev_hash, hash FROM events ORDER BY seq")
            .unwrap();
        let mut q = stmt.query([]).unwrap();
        while let Some(r) = q.next().unwrap() {
            let id: Option<Vec<u8>> = r.get(4).unwrap();
            rows.push(sledger::StoredEvent {
                seq: r.get::<_, i64>(0).unwrap() as u64,
                event_id: uuid::Uuid::from_slice(&r.get::<_, Vec<u8>>(1).unwrap()).unwrap(),
                recorded_at: r.get(2).unwrap(),
                actor: r.get(3).unwrap(),
                secret_id: id.map(|b| uuid::Uuid::from_slice(&b).unwrap()),
                event_type: r.get(5).unwrap(),
                event_version: r.get(6).unwrap(),
                payload: r.get(7).unwrap(),
                prev_hash: r.get::<_, Vec<u8>>(8).unwrap().try_into().unwrap(),
                hash: r.get::<_, Vec<u8>>(9).unwrap().try_into().unwrap(),
                mac: None,
            });
        }
    }
    rows[1].actor = "mallory@test".into();
    for i in 1..rows.len() {
        rows[i].prev_hash = rows[i - 1].hash;
        rows[i].hash = sledger::event::event_hash(&rows[i]);
        raw.execute(
            "UPDATE events SET actor = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![
                rows[i].actor,
                rows[i].prev_hash.as_slice(),
                rows[i].hash.as_slice(),
                rows[i].seq as i64
            ],
        )
        .unwrap();
    }
    drop(raw);
    let err = env.fails(&["secret", "get", "a"], INTEGRITY);
    assert!(err.contains("rewritten"), "{err}");
    let err = env.fails(&["verify"], INTEGRITY);
    assert!(err.contains("seq 2"), "{err}");
}

/// MACs cannot be switched off by deleting their bookkeeping: where they start is bound into
/// the sealed fingerprint key.
#[test]
fn deleting_the_mac_records_does_not_switch_macs_off() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=x"]);
    let raw = env.raw();
    raw.execute(
        "DELETE FROM ledger_meta WHERE key IN ('mac_from', 'mac_trusted')",
        [],
    )
    .unwrap();
    drop(raw);
    forge(
        &env,
        sledger::Event::SinkAdded {
            name: "evil".into(),
            url: "exec:///bin/true".into(),
            role: sledger::event::SinkRole::Backup,
        },
    );
    let err = env.fails(&["secret", "get", "db"], INTEGRITY);
    assert!(err.contains("MACs start"), "{err}");
    env.fails(&["verify"], INTEGRITY);
}

/// Every event after `seq` gone, as someone with sqlite3 would cut the tail.
fn truncate_after(env: &Env, seq: u64) {
    let raw = env.raw();
    raw.execute("DELETE FROM events WHERE seq > ?1", [seq as i64])
        .unwrap();
    raw.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
}

fn head(env: &Env) -> u64 {
    env.json(&["verify"])["events"].as_u64().unwrap()
}

#[test]
fn a_ledger_put_back_from_an_older_copy_is_refused_until_accepted() {
    let env = Env::new();
    env.ok(&["secret", "create", "kept", "--value", "k=1"]);
    let backup = env.path("ledger.db.bak");
    std::fs::copy(&env.ledger, &backup).unwrap();
    for i in 0..10 {
        env.ok(&["secret", "create", &format!("lost/{i}"), "--value", "k=1"]);
    }
    let witnessed = head(&env);
    let anchors = env.json(&["anchors"]);
    assert_eq!(anchors[0]["anchor"]["seq"], witnessed, "{anchors}");
    assert_eq!(anchors[0]["verdict"]["status"], "matches", "{anchors}");

    // The file backup goes back in place (WAL gone with it).
    std::fs::copy(&backup, &env.ledger).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.ledger.display()));
    }
    let err = env.fails(&["secret", "create", "new", "--value", "k=1"], INTEGRITY);
    assert!(
        err.contains(&format!("sink local witnessed seq {witnessed}")) && err.contains("anchors reset --yes"),
        "{err}"
    );
    let err = env.fails(&["verify"], INTEGRITY);
    assert!(err.contains("sink local witnessed seq"), "{err}");
    // The refused write appended nothing. (`project` has nothing to write here, the copy's
    // checkpoint being its head; the test after this one makes projection reach the anchor.)
    let tail = env.json_lines(&["log", "--tail", "1"]);
    assert_eq!(tail[0]["seq"].as_u64(), Some(witnessed - 10), "{tail:?}");
    env.ok(&["project"]);
    assert_eq!(env.json(&["anchors"])[0]["verdict"]["status"], "ahead");

    env.fails(&["anchors", "reset"], 2);
    env.ok(&["anchors", "reset", "--yes"]);
    assert_eq!(env.json(&["anchors"])[0]["verdict"]["status"], "superseded");
    env.ok(&["secret", "create", "new", "--value", "k=1"]);
    env.ok(&["verify"]);
    let anchors = env.json(&["anchors"]);
    assert_eq!(anchors[0]["anchor"]["seq"], head(&env), "{anchors}");
    assert_eq!(anchors[0]["verdict"]["status"], "matches", "{anchors}");
    let log = env.json_lines(&["log", "--type", "anchors.reset"]);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["actor"], "alice@test");
}

/// Someone who controls this machine puts back an older copy of the ledger **and** of the local
/// primary sink: writes go on, since the primary's anchor agrees. The backup, another trust
/// domain (here a plug-in), still holds the newer anchor: `verify` names it, projection refuses
/// to overwrite it, and once the rolled-back ledger reaches that seq with other events its
/// hash tells them apart.
#[test]
fn a_backup_witness_catches_a_rollback_of_the_ledger_and_its_primary() {
    let env = Env::new();
    let store = env.path("plugin");
    env.ok(&["sink", "add", "offsite", &common::exec_url(&store, &[])]);
    env.ok(&["secret", "create", "kept", "--value", "k=1"]);
    env.ok(&["project"]);
    // Written and applied by the primary, not yet projected to the backup: the copy's
    // checkpoint for "offsite" is then behind its head, so a projection would have work to do.
    env.ok(&["secret", "create", "pending", "--value", "k=1"]);
    let sink_file = env.path("ledger.sink.db");
    let copies = [
        (env.ledger.clone(), env.path("ledger.db.bak")),
        (sink_file.clone(), env.path("ledger.sink.db.bak")),
    ];
    for (file, copy) in &copies {
        std::fs::copy(file, copy).unwrap();
    }
    for i in 0..10 {
        env.ok(&["secret", "create", &format!("lost/{i}"), "--value", "k=1"]);
    }
    env.ok(&["project"]);
    let witnessed = head(&env);
    for (file, copy) in &copies {
        std::fs::copy(copy, file).unwrap();
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }
    let verdict = |env: &Env, sink: &str| {
        let anchors = env.json(&["anchors"]);
        anchors
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["sink"] == sink)
            .unwrap_or_else(|| panic!("no anchor of {sink}: {anchors}"))
            .clone()
    };

    // The primary agrees with the rolled-back ledger, so a write goes through …
    env.ok(&["secret", "create", "after", "--value", "k=1"]);
    assert_eq!(verdict(&env, "local")["verdict"]["status"], "matches");
    // … but the backup saw more, and says so.
    let err = env.fails(&["verify"], INTEGRITY);
    assert!(
        err.contains(&format!("sink offsite witnessed seq {witnessed}")),
        "{err}"
    );
    let offsite = verdict(&env, "offsite");
    assert_eq!(offsite["verdict"]["status"], "ahead", "{offsite}");

    // Projecting the rolled-back ledger into that backup would overwrite the evidence: refused,
    // and the anchor stays.
    let err = env.fails(&["project", "--sink", "offsite"], INTEGRITY);
    assert!(
        err.contains(&format!("sink offsite witnessed seq {witnessed}")),
        "{err}"
    );
    let offsite = verdict(&env, "offsite");
    assert_eq!(offsite["anchor"]["seq"], witnessed, "{offsite}");
    assert_eq!(offsite["verdict"]["status"], "ahead", "{offsite}");

    // The rolled-back ledger grows past the witnessed seq with other events: the anchor's hash
    // is not its event's.
    for i in 0..10 {
        env.ok(&["secret", "create", &format!("other/{i}"), "--value", "k=1"]);
    }
    let seq = env.json_lines(&["log", "--tail", "1"])[0]["seq"]
        .as_u64()
        .unwrap();
    assert!(seq > witnessed, "{seq} {witnessed}");
    assert_eq!(verdict(&env, "offsite")["verdict"]["status"], "diverged");
    let err = env.fails(&["verify"], INTEGRITY);
    assert!(
        err.contains(&format!("sink offsite witnessed seq {witnessed}")) && err.contains("another hash"),
        "{err}"
    );
}

#[test]
fn a_truncated_tail_is_named_by_its_witness_without_an_anchor_file() {
    let env = Env::new();
    for i in 0..5 {
        env.ok(&["secret", "create", &format!("s{i}"), "--value", "k=1"]);
    }
    let witnessed = head(&env);
    truncate_after(&env, witnessed - 2);
    let err = env.fails(&["verify"], INTEGRITY);
    assert!(
        err.contains(&format!("sink local witnessed seq {witnessed}"))
            && err.contains(&format!("this ledger ends at seq {}", witnessed - 2)),
        "{err}"
    );
}

/// The example plug-in's file for the anchor (its objects are plain JSON, so it can be edited).
fn anchor_file(dir: &std::path::Path) -> std::path::PathBuf {
    let name = format!("{}.json", uuid::Uuid::max());
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(&name))
        .unwrap_or_else(|| panic!("no anchor object in {}", dir.display()))
}

#[test]
fn an_anchor_forged_without_the_master_key_is_not_believed() {
    let env = Env::new();
    let store = env.path("plugin");
    env.ok(&["sink", "add", "plug", &common::exec_url(&store, &[])]);
    for i in 0..3 {
        env.ok(&["secret", "create", &format!("s{i}"), "--value", "k=1"]);
    }
    env.ok(&["project"]);
    let status = |env: &Env| {
        let anchors = env.json(&["anchors"]);
        anchors
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["sink"] == "plug")
            .unwrap()["verdict"]
            .clone()
    };
    assert_eq!(status(&env)["status"], "matches");

    // A higher seq written into the anchor without the key: its MAC no longer matches, so it
    // is not taken for proof that the ledger lost events.
    let path = anchor_file(&store);
    let genuine = std::fs::read_to_string(&path).unwrap();
    let forged = genuine.replace(&format!("\"seq\":\"{}\"", head(&env)), "\"seq\":\"999\"");
    assert_ne!(forged, genuine, "the anchor's seq was not found in {genuine}");
    std::fs::write(&path, &forged).unwrap();
    let verdict = status(&env);
    assert_eq!(verdict["status"], "invalid", "{verdict}");
    assert!(verdict["reason"].as_str().unwrap().contains("MAC"), "{verdict}");
    env.ok(&["verify"]);
    env.ok(&["secret", "create", "after", "--value", "k=1"]);

    // Another ledger's genuine anchor, copied in, is not believed either.
    let other = Env::new();
    let other_store = other.path("plugin");
    other.ok(&["sink", "add", "plug", &common::exec_url(&other_store, &[])]);
    other.ok(&["secret", "create", "x", "--value", "k=1"]);
    other.ok(&["project"]);
    std::fs::copy(anchor_file(&other_store), &path).unwrap();
    assert_eq!(status(&env)["status"], "invalid");
    env.ok(&["verify"]);

    // The projector's next batch replaces it with a genuine one.
    env.ok(&["secret", "create", "later", "--value", "k=1"]);
    env.ok(&["project"]);
    assert_eq!(status(&env)["status"], "matches");
    // The anchor is never taken for a secret: `diff` lists the sink's objects, and would
    // report one the ledger does not have (the conformance suite checks `list` directly).
    assert!(anchor_file(&store).exists());
    env.ok(&["diff", "plug"]);
}

/// A checkpoint raised by hand (the `sink_state` table is outside the chain) is not believed:
/// the projector starts over instead of skipping events, so a new secret still reaches the
/// sink.
#[test]
fn a_raised_checkpoint_does_not_make_the_projector_skip_events() {
    let env = Env::new();
    env.ok(&["secret", "create", "a", "--value", "k=one"]);
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    raw.execute("UPDATE sink_state SET checkpoint = 1000 WHERE name = 'local'", [])
        .unwrap();
    drop(raw);
    env.ok(&["secret", "create", "b", "--value", "k=two", "--wait", "0"]);
    env.ok(&["project"]);
    assert_eq!(
        env.ok(&["secret", "get", "b", "--key", "k", "--from", "primary"]),
        "two\n"
    );
    let status = env.json(&["sink", "status"]);
    assert_eq!(status[0]["checkpoint"], 3, "{status}");
}

/// A ledger with a snapshot every 2 events and 8 secrets (`s0` … `s7`), closed; its path.
fn snapshotted_ledger(dir: &std::path::Path, master: &sledger::MasterKey) -> std::path::PathBuf {
    use sledger::{Command, Ledger, LedgerSettings, Scope, SecretValues};
    let path = dir.join("ledger.db");
    let settings = LedgerSettings {
        snapshot_interval: 2,
        ..Default::default()
    };
    Ledger::init(&path, master.clone(), settings).unwrap();
    let mut ledger = Ledger::open_with_key(&path, master.clone()).unwrap();
    for i in 0..8 {
        let mut values = SecretValues::new();
        values.insert("k", "v");
        let create = Command::Create {
            name: format!("s{i}"),
            scope: Scope::Workspace,
            labels: Default::default(),
            values,
        };
        ledger.execute("alice", vec![create]).unwrap();
    }
    ledger.verify(&mut |_, _| {}).unwrap();
    path
}

/// Replace the state of the latest snapshot, as someone who can write the file would; returns
/// that snapshot's seq and its stored bytes before the edit.
fn replace_latest_snapshot(path: &std::path::Path, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) -> (u64, Vec<u8>) {
    let raw = rusqlite::Connection::open(path).unwrap();
    let (seq, state): (i64, Vec<u8>) = raw
        .query_row(
            "SELECT seq, state FROM snapshots ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the ledger took a snapshot");
    raw.execute_batch("DROP TRIGGER IF EXISTS snapshots_are_append_only_update")
        .unwrap();
    raw.execute(
        "UPDATE snapshots SET state = ?1 WHERE seq = ?2",
        rusqlite::params![edit(state.clone()), seq],
    )
    .unwrap();
    (seq as u64, state)
}

/// A snapshot edited in the file (derived state, outside the chain) fails `verify`, which
/// compares each stored snapshot with the fold of the log (by digest, reading it in pieces),
/// and a point-in-time replay refuses it: its MAC no longer matches.
#[test]
fn an_edited_snapshot_is_caught_by_verify_and_by_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let master = sledger::MasterKey::generate();
    let path = snapshotted_ledger(dir.path(), &master);
    let (seq, _) = replace_latest_snapshot(&path, |mut state| {
        let middle = state.len() / 2;
        state[middle] ^= 0x01;
        state
    });
    let mut ledger = sledger::Ledger::open_with_key(&path, master).unwrap();
    let err = ledger.desired_at(seq).unwrap_err();
    assert!(matches!(err, sledger::Error::Corrupt(_)), "{err}");
    assert!(
        err.to_string().contains(&format!("snapshot at seq {seq}")),
        "{err}"
    );
    let err = ledger.verify(&mut |_, _| {}).unwrap_err();
    assert!(matches!(err, sledger::Error::Corrupt(_)), "{err}");
}

/// A snapshot forged whole, as a well-formed encoding of a catalog without `s0` (which has no
/// MAC, like the snapshots sledger stored before they carried one). Trusting it would make a
/// point-in-time restore delete `s0` from the sink. It is not trusted: the replay folds the
/// log instead, and `verify` names it.
#[test]
fn a_forged_snapshot_never_reaches_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let master = sledger::MasterKey::generate();
    let path = snapshotted_ledger(dir.path(), &master);
    let (seq, _) = replace_latest_snapshot(&path, |state| state);
    let ledger = sledger::Ledger::open_with_key(&path, master.clone()).unwrap();
    let mut forged = ledger.catalog_at(seq).unwrap();
    let s0 = forged
        .secrets
        .values()
        .find(|m| m.name == "s0")
        .expect("s0 exists")
        .id;
    forged.secrets.remove(&s0);
    drop(ledger);
    replace_latest_snapshot(&path, |_| forged.to_snapshot());

    let mut ledger = sledger::Ledger::open_with_key(&path, master).unwrap();
    let desired = ledger.desired_at(seq).unwrap();
    assert!(
        matches!(desired.objects.get(&s0), Some(sledger::project::Op::Put(_))),
        "s0 must be put: {:?}",
        desired.objects.get(&s0).map(|_| "not a put")
    );
    let err = ledger.verify(&mut |_, _| {}).unwrap_err();
    assert!(
        err.to_string().contains(&format!("snapshot at seq {seq}")),
        "{err}"
    );
}

/// A catalog row edited in the file (it carries no MAC) is never sealed into a snapshot: the
/// snapshots a key holder takes later are folded from the log. Here `s0`'s row is removed, the
/// key holder writes on until a new snapshot is taken, and a replay of the head still puts `s0`.
#[test]
fn an_edited_catalog_row_is_not_sealed_into_the_next_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let master = sledger::MasterKey::generate();
    let path = snapshotted_ledger(dir.path(), &master);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let snapshots = |raw: &rusqlite::Connection| -> i64 {
        raw.query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0))
            .unwrap()
    };
    let before = snapshots(&raw);
    assert_eq!(
        raw.execute("DELETE FROM catalog WHERE name = 's0'", []).unwrap(),
        1
    );

    let mut ledger = sledger::Ledger::open_with_key(&path, master).unwrap();
    common::update_rounds(&mut ledger, "s1", 20);
    assert!(snapshots(&raw) > before, "a snapshot was taken since the edit");
    let head = ledger.head().unwrap().seq;
    let desired = ledger.desired_at(head).unwrap();
    let puts = desired
        .objects
        .values()
        .filter(|op| matches!(op, sledger::project::Op::Put(_)))
        .count();
    assert_eq!(puts, 8, "every secret, s0 too, is put");
}

/// After a ledger put back from an older copy is accepted (`anchors reset --yes`), the sink
/// still holds what the lost events wrote, at seqs beyond the ledger's head. sledger says so
/// everywhere: reads skip that record (with an honest time), `diff` calls it `ahead`, a write it
/// would shadow fails with exit 5 instead of reporting success, plain `reconcile` refuses, and
/// `reconcile --force-ledger` makes the ledger the truth again, recorded in the log.
#[test]
fn a_sink_ahead_of_an_accepted_older_ledger_shadows_no_write_silently() {
    let env = Env::new();
    env.ok(&["secret", "create", "kept", "--value", "k=1"]);
    let backup = env.path("ledger.db.bak");
    std::fs::copy(&env.ledger, &backup).unwrap();
    for v in 2..=4 {
        env.ok(&["secret", "update", "kept", "--value", &format!("k={v}")]);
    }
    std::fs::copy(&backup, &env.ledger).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.ledger.display()));
    }
    env.ok(&["anchors", "reset", "--yes"]);

    let got = env.json(&["secret", "get", "kept"]);
    assert_eq!(got["values"]["k"], "1", "{got}");
    assert_eq!(got["source"]["kind"], "ledger", "{got}");
    assert!(
        got["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("beyond the ledger's head"),
        "{got}"
    );
    assert!(!got["recorded_at"].as_str().unwrap().starts_with("1970"), "{got}");
    let kinds: Vec<_> = env
        .differences("local")
        .iter()
        .map(|d| d["kind"].clone())
        .collect();
    assert_eq!(kinds, ["ahead"]);

    let err = env.fails(&["secret", "update", "kept", "--value", "k=5"], INTEGRITY);
    assert!(
        err.contains("did not take the write") && err.contains("reconcile local --force-ledger"),
        "{err}"
    );
    // The write is in the ledger, and reads serve it, never the shadowing record.
    assert_eq!(env.ok(&["secret", "get", "kept", "--key", "k"]), "5\n");

    let err = env.fails(&["reconcile", "local"], 10);
    assert!(
        err.contains("beyond the ledger's head") && err.contains("--force-ledger"),
        "{err}"
    );
    let out = env.ok(&["reconcile", "local", "--force-ledger"]);
    assert!(out.contains("1 ahead of the ledger erased"), "{out}");
    // Overwriting what a sink holds is the user's decision: the log says who made it.
    let log = env.json_lines(&["log", "--type", "sink.forced"]);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["actor"], "alice@test");
    assert!(
        log[0]["detail"].as_str().unwrap().contains("sink local"),
        "{log:?}"
    );
    env.ok(&["diff", "local"]);
    let got = env.json(&["secret", "get", "kept", "--from", "primary"]);
    assert_eq!(got["values"]["k"], "5", "{got}");
    env.ok(&["secret", "update", "kept", "--value", "k=6"]);
    assert_eq!(
        env.ok(&["secret", "get", "kept", "--key", "k", "--from", "primary"]),
        "6\n"
    );
}

/// A ledger file cut short (a copy interrupted, a full disk) is reported as a damaged ledger
/// (exit 5, saying how to get it back), not as a file of some other kind.
#[test]
fn a_ledger_file_cut_short_is_reported_damaged() {
    let (env, _) = sample();
    let copy = copy_of(&env);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&copy.ledger)
        .unwrap();
    let length = file.metadata().unwrap().len();
    file.set_len(length - 4096).unwrap();
    drop(file);
    let err = copy.fails(&["verify"], 5);
    assert!(
        err.contains("is damaged") && err.contains("sledger recover"),
        "{err}"
    );
}

/// A primary object whose seq column was raised behind sledger's back refuses every later
/// write of that secret without an error: the write says so (a note, and `stale` in JSON),
/// instead of reporting it applied and nothing more.
#[test]
fn a_write_the_primary_silently_skipped_is_noted() {
    let env = Env::new();
    env.ok(&["secret", "create", "s", "--value", "k=1"]);
    rusqlite::Connection::open(env.path("ledger.sink.db"))
        .unwrap()
        .execute("UPDATE objects SET seq = 99 WHERE meta LIKE '%\"s\"%'", [])
        .unwrap();
    let out = env
        .cmd()
        .args(["secret", "update", "s", "--value", "k=2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("\"s\" cannot be read back") && said.contains("drifted"),
        "{said}"
    );
    let doc = env.json(&["secret", "update", "s", "--value", "k=3"]);
    assert_eq!(doc["primary"]["stale"].as_array().map(Vec::len), Some(1), "{doc}");
    // A write the primary took has no such note.
    env.ok(&["secret", "create", "t", "--value", "k=1"]);
    let doc = env.json(&["secret", "update", "t", "--value", "k=2"]);
    assert!(doc["primary"].get("stale").is_none(), "{doc}");
}
