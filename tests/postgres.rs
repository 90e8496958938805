//! A ledger in PostgreSQL (DESIGN §13), through the CLI as a user runs it, against a real
//! PostgreSQL cluster the test starts (tests/common/pg.rs).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::pg::Postgres;
use common::{tour, Env};
use sledger::{keyfile, Command, Ledger, Scope, SecretValues};

/// An env whose ledger is database `db` of `server`, initialised with a sqlite primary.
fn pg_env(server: &Postgres, db: &str) -> Env {
    let mut env = Env::empty();
    env.ledger = PathBuf::from(server.database(db));
    env.ok(&["init", "--primary", &env.sqlite_url("ledger.sink.db")]);
    env
}

#[test]
fn the_cli_tour_passes_on_a_postgres_ledger() {
    let server = Postgres::start();
    for (db, part) in [
        ("tour1", tour::create_get_update_round_trip as fn(&Env)),
        ("tour2", tour::rename_delete_undelete_purge),
        ("tour3", tour::list_filters_by_label_and_history_shows_changes),
    ] {
        let env = pg_env(&server, db);
        part(&env);
        let verified = env.json(&["verify"]);
        assert_eq!(verified["ok"], true, "{db}: {verified}");
    }
}

/// Load `count` creates into the file ledger of `env`, a thousand per append.
fn load(env: &Env, count: usize) -> u64 {
    let mut ledger = Ledger::open(&env.ledger).unwrap();
    keyfile::unlock(&mut ledger, &env.key).unwrap();
    let names: Vec<usize> = (0..count).collect();
    for batch in names.chunks(1000) {
        let commands = batch
            .iter()
            .map(|i| {
                let mut values = SecretValues::new();
                values.insert("v", format!("value-{i}"));
                Command::Create {
                    name: format!("s/{i:06}"),
                    scope: Scope::Workspace,
                    labels: BTreeMap::new(),
                    values,
                }
            })
            .collect();
        ledger.execute("alice", commands).unwrap();
    }
    ledger.head().unwrap().seq
}

/// `sledger ledger copy` moves a 100 000-event log from a file into PostgreSQL and back: every
/// copy ends at the same head hash, verifies with the master key, and serves the same values;
/// a second copy resumes where the first ended; a target holding another ledger is refused.
#[test]
fn ledger_copy_moves_a_log_to_postgres_and_back() {
    let server = Postgres::start();
    let env = Env::new();
    let head = load(&env, 100_000);
    let source = env.json(&["verify"]);

    let pg = server.database("copied");
    let there = env.json(&["ledger", "copy", "--to", &pg]);
    assert_eq!(there["copy"]["head"], head);
    assert_eq!(there["copy"]["events_copied"], head);
    assert_eq!(
        there["copy"]["head_hash"], source["head"]["hash"],
        "{there}\n{source}"
    );

    let key = env.key.to_str().unwrap();
    let verify_at = |ledger: &str| env.json(&["--ledger", ledger, "--key-file", key, "verify"]);
    let in_pg = verify_at(&pg);
    assert_eq!(in_pg["ok"], true, "{in_pg}");
    assert_eq!(in_pg["head"], source["head"]);
    let got = env.json(&[
        "--ledger",
        &pg,
        "--key-file",
        key,
        "secret",
        "get",
        "s/099999",
        "--from",
        "ledger",
    ]);
    assert_eq!(got["values"]["v"], "value-99999");

    let back = env.path("back.db");
    let back = back.to_str().unwrap();
    env.ok(&["ledger", "copy", "--from", &pg, "--to", back]);
    let round_trip = verify_at(back);
    assert_eq!(round_trip["ok"], true, "{round_trip}");
    assert_eq!(round_trip["head"], source["head"]);

    // Resumed: only what was appended since the last copy moves.
    env.ok(&["secret", "create", "later", "--value", "k=v"]);
    let resumed = env.json(&["ledger", "copy", "--to", &pg]);
    assert_eq!(resumed["copy"]["resumed_from"], head);
    assert_eq!(resumed["copy"]["events_copied"], 1);

    // Another ledger's copy is never mixed into this one.
    let other = Env::new();
    let refused = other.fails(&["ledger", "copy", "--to", &pg], 2);
    assert!(refused.contains("another ledger"), "{refused}");
    assert_eq!(verify_at(&pg)["head"]["seq"], head + 1);
}

/// Credentials never ride in the ledger URL, and a missing or unreachable database says what
/// to do; nothing is created by a refused command.
#[test]
fn bad_postgres_ledger_urls_are_refused_clearly() {
    let server = Postgres::start();
    let env = Env::empty();
    let with_password = format!("postgres://postgres:hunter2@127.0.0.1:{}/postgres", server.port);
    let refused = env.fails(&["--ledger", &with_password, "secret", "list"], 2);
    assert!(refused.contains("PGPASSWORD"), "{refused}");
    assert!(!refused.contains("hunter2"), "the password is echoed: {refused}");

    let url = server.database("noprimary");
    let refused = env.fails(
        &["--ledger", &url, "--key-file", env.key.to_str().unwrap(), "init"],
        2,
    );
    assert!(refused.contains("--primary"), "{refused}");
    assert!(!env.key.exists(), "a refused init leaves no key file");

    let missing = env.fails(&["--ledger", &url, "secret", "list"], 3);
    assert!(missing.contains("sledger init"), "{missing}");

    let unreachable = "postgres://postgres@127.0.0.1:1/sledger";
    let down = env.fails(&["--ledger", unreachable, "secret", "list"], 7);
    assert!(
        down.contains("cannot connect to postgres://postgres@127.0.0.1:1/sledger"),
        "{down}"
    );
}
