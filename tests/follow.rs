//! `sledger project --follow` runs one projector per sink: a backend that hangs delays only
//! itself, and SIGTERM stops the whole service at once even while it hangs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::Env;

/// An exec plug-in that answers everything except `put`, on which it hangs forever.
fn hanging_plugin(env: &Env) -> String {
    let script = env.path("hang-on-put.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
while IFS= read -r line; do
  case "$line" in
    *'"op":"put"'*) exec sleep 100000 ;;
    *'"op":"list"'*) echo '{"ok":true,"entries":[]}' ;;
    *'"op":"get"'*) echo '{"ok":true,"record":null}' ;;
    *) echo '{"ok":true}' ;;
  esac
done
"#,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("exec://{}", script.display())
}

fn lag(env: &Env, sink: &str) -> u64 {
    let status = env.json(&["sink", "status"]);
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == sink)
        .unwrap_or_else(|| panic!("no sink {sink} in {status}"))["lag"]
        .as_u64()
        .unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_hanging_sink_delays_only_itself_and_sigterm_stops_follow_within_two_seconds() {
    let env = Env::new();
    env.ok(&["sink", "add", "hang", &hanging_plugin(&env), "--role", "replica"]);
    env.ok(&["sink", "add", "bk", &env.sqlite_url("bk.db")]);
    let mut follow = env.spawn(&[], &["project", "--follow"]);
    for i in 0..5 {
        env.ok(&["secret", "create", &format!("s{i}"), "--value", "k=v"]);
    }
    wait_for("the backup to catch up", || lag(&env, "bk") == 0);
    // Writes after the first batch hung keep reaching the backup (woken by polling the head).
    env.ok(&["secret", "update", "s1", "--value", "k=w"]);
    env.ok(&["secret", "create", "late", "--value", "k=v"]);
    wait_for("the backup to take the later writes", || lag(&env, "bk") == 0);
    assert_eq!(lag(&env, "local"), 0);
    assert!(
        lag(&env, "hang") > 0,
        "the hanging sink cannot have applied anything"
    );
    let read = env.json(&["secret", "get", "late", "--from", "backup"]);
    assert_eq!(read["values"]["k"], "v");

    let signalled = Instant::now();
    unsafe { libc::kill(follow.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "project --follow did not exit within 2 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "project --follow exited with {status}");
    // The hung batch was abandoned, not recorded as applied.
    assert!(lag(&env, "hang") > 0);
    env.ok(&["verify"]);
}

/// A sink removed and added again under the same name but another URL, while `--follow`
/// runs, gets its writes at the new URL (the projector does not keep the old backend).
#[test]
fn a_sink_added_again_elsewhere_is_projected_there() {
    let env = Env::new();
    env.ok(&["sink", "add", "bk", &env.sqlite_url("first.db")]);
    let said = env.path("follow.log");
    let mut follow = std::process::Command::new(assert_cmd::cargo::cargo_bin("sledger"))
        .env("SLEDGER_LEDGER", &env.ledger)
        .env_remove("SLEDGER_MASTER_KEY")
        .env_remove("SLEDGER_KEY_FILE")
        .env_remove("SLEDGER_LOG")
        .args(["project", "--follow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&said).unwrap())
        .spawn()
        .unwrap();
    env.ok(&["secret", "create", "s1", "--value", "k=v"]);
    wait_for("the first backup", || lag(&env, "bk") == 0);
    env.ok(&["sink", "remove", "bk"]);
    // The removed sink's projector leaves quietly: no "does not exist" failures and retries.
    std::thread::sleep(Duration::from_secs(2));
    env.ok(&["sink", "add", "bk", &env.sqlite_url("second.db")]);
    env.ok(&["secret", "create", "s2", "--value", "k=v"]);
    wait_for("the second backup", || lag(&env, "bk") == 0);
    assert!(env.differences("bk").is_empty(), "second.db holds every secret");
    unsafe { libc::kill(follow.id() as i32, libc::SIGTERM) };
    assert!(follow.wait().unwrap().success());
    let said = std::fs::read_to_string(&said).unwrap();
    assert!(!said.contains("does not exist"), "{said}");
}

/// `sledger key rotate` beside a running `project --follow`: the projectors find the key
/// replaced, load the new one from the key file, and go on projecting what is written after.
#[test]
fn follow_goes_on_across_a_key_rotation_beside_it() {
    let env = Env::new();
    env.ok(&["sink", "add", "bk", &env.sqlite_url("bk.db")]);
    let mut follow = env.spawn(&[], &["project", "--follow"]);
    env.ok(&["secret", "create", "before", "--value", "k=1", "--wait", "0"]);
    wait_for("the backup to catch up", || lag(&env, "bk") == 0);
    env.ok(&["key", "rotate"]);
    env.ok(&["secret", "create", "after", "--value", "k=2", "--wait", "0"]);
    wait_for("the sinks to take the writes after the rotation", || {
        lag(&env, "bk") == 0 && lag(&env, "local") == 0
    });
    let read = env.json(&["secret", "get", "after", "--from", "backup"]);
    assert_eq!(read["values"]["k"], "2");
    unsafe { libc::kill(follow.id() as i32, libc::SIGTERM) };
    assert!(follow.wait().unwrap().success());
}
