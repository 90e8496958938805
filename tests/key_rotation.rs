//! Key rotation is crash-safe: whatever point a rotation stops at, a key file opens the ledger.

mod common;

use common::Env;
use sledger::{keyfile, Ledger, MasterKey};

fn pending(env: &Env) -> std::path::PathBuf {
    env.path("ledger.key.new")
}

#[test]
fn a_rotation_committed_but_not_renamed_is_finished_on_next_open() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=v1"]);
    let mut ledger = Ledger::open(&env.ledger).unwrap();
    keyfile::unlock(&mut ledger, &env.key).unwrap();
    // Stop right after the commit: the new key is only in <key>.new.
    let path = pending(&env);
    let mut persist = |new: &MasterKey| new.write_new_file(&path);
    ledger
        .rotate_key("alice@test", MasterKey::generate(), &mut persist)
        .unwrap();
    drop(ledger);
    assert!(pending(&env).exists());

    assert_eq!(env.ok(&["secret", "get", "db", "--key", "pw"]), "v1\n");
    assert!(!pending(&env).exists(), "the interrupted rotation was finished");
    assert_eq!(env.ok(&["secret", "get", "db", "--key", "pw"]), "v1\n");
}

#[test]
fn a_rotation_that_never_committed_changes_nothing() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=v1"]);
    let mut ledger = Ledger::open(&env.ledger).unwrap();
    keyfile::unlock(&mut ledger, &env.key).unwrap();
    let path = pending(&env);
    let mut fail_after_writing = |new: &MasterKey| {
        new.write_new_file(&path)?;
        Err(sledger::Error::InvalidInput(
            "simulated crash before commit".into(),
        ))
    };
    assert!(ledger
        .rotate_key("alice@test", MasterKey::generate(), &mut fail_after_writing)
        .is_err());
    drop(ledger);
    // The old key still opens everything; readers leave the stray file alone.
    assert_eq!(env.ok(&["secret", "get", "db", "--key", "pw"]), "v1\n");
    assert!(pending(&env).exists());
    // The next rotation replaces it and works.
    env.ok(&["key", "rotate"]);
    assert!(!pending(&env).exists());
    assert_eq!(env.ok(&["secret", "get", "db", "--key", "pw"]), "v1\n");
}

#[test]
fn a_process_holding_a_rotated_key_cannot_write() {
    let env = Env::new();
    env.ok(&["secret", "create", "db", "--value", "pw=v1"]);
    let mut stale = Ledger::open(&env.ledger).unwrap();
    keyfile::unlock(&mut stale, &env.key).unwrap();
    env.ok(&["key", "rotate"]);
    let mut values = sledger::SecretValues::new();
    values.insert("pw", "v2");
    let err = stale
        .execute(
            "alice@test",
            vec![sledger::Command::Create {
                name: "new".into(),
                scope: sledger::Scope::Workspace,
                labels: Default::default(),
                values,
            }],
        )
        .unwrap_err();
    assert!(matches!(err, sledger::Error::KeyRotated), "{err}");
    env.ok(&["verify"]);
}

/// Writes racing key rotations by another process wait them out instead of failing (issue:
/// 3 of 160 writes used to fail with exit 6 and "run the command again").
#[test]
fn writes_during_key_rotations_all_succeed() {
    let env = std::sync::Arc::new(Env::new());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let env = env.clone();
            std::thread::spawn(move || {
                for i in 0..15 {
                    let out = env.run(&[
                        "--wait",
                        "0",
                        "secret",
                        "create",
                        &format!("w{w}/{i}"),
                        "--value",
                        "k=v",
                    ]);
                    assert!(
                        out.status.success(),
                        "write w{w}/{i} failed ({:?}): {}",
                        out.status.code(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            })
        })
        .collect();
    for _ in 0..3 {
        env.ok(&["key", "rotate"]);
    }
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(env.json(&["secret", "list"]).as_array().unwrap().len(), 60);
    env.ok(&["verify"]);
}
