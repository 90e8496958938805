//! `migrate` and `backup` SIGKILLed at random points, then re-run: they end in the right state,
//! and the ledger verifies after every kill.

mod common;

use std::time::Duration;

use common::Env;
use rand::Rng;
use serde_json::{json, Value};

const SECRETS: usize = 3000;

fn env_with_secrets() -> Env {
    let env = Env::new();
    let lines: String = (0..SECRETS)
        .map(|i| format!("{{\"name\": \"s{i}\", \"values\": {{\"k\": \"v{i}\"}}}}\n"))
        .collect();
    std::fs::write(env.path("seed.jsonl"), lines).unwrap();
    env.ok(&[
        "--wait",
        "0",
        "import",
        "--file",
        env.path("seed.jsonl").to_str().unwrap(),
    ]);
    env.ok(&["project"]);
    env
}

/// Run `args` and SIGKILL it after a random pause, `kills` times (pauses that outlast the
/// command don't count); the ledger must verify after each. Returns how many kills landed.
fn kill_repeatedly(env: &Env, args: &[&str], kills: usize) -> usize {
    let mut rng = rand::thread_rng();
    let (mut landed, mut tries) = (0, 0);
    while landed < kills && tries < kills * 4 {
        tries += 1;
        let mut child = env.spawn(&[], args);
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..700)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            landed += 1;
        }
        child.wait().unwrap();
        env.ok(&["verify"]);
    }
    landed
}

fn role(env: &Env, name: &str) -> Value {
    let status = env.json(&["sink", "status"]);
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["role"]
        .clone()
}

#[test]
fn migrate_killed_at_random_points_then_rerun_ends_migrated() {
    let env = env_with_secrets();
    let url = env.sqlite_url("new.db");
    let args = ["migrate", "--to", &url, "--name", "new"];
    let landed = kill_repeatedly(&env, &args, 8);
    env.ok(&args);
    assert!(landed >= 3, "only {landed} kills landed while migrate ran");
    assert_eq!(
        (role(&env, "new"), role(&env, "local")),
        (json!("primary"), json!("backup"))
    );
    env.ok(&["project"]);
    env.ok(&["diff", "new"]);
    env.ok(&["diff", "local"]);
    assert_eq!(env.json(&["secret", "get", "s2999"])["source"]["name"], "new");
    // Exactly one attachment and one promotion, however often it was interrupted.
    assert_eq!(env.json_lines(&["log", "--type", "sink.added"]).len(), 2);
    assert_eq!(env.json_lines(&["log", "--type", "sink.role_changed"]).len(), 2);
}

#[test]
fn backup_killed_at_random_points_then_rerun_ends_backed_up() {
    let env = env_with_secrets();
    env.ok(&["sink", "add", "bk", &env.sqlite_url("bk.db")]);
    let landed = kill_repeatedly(&env, &["backup"], 6);
    env.ok(&["backup"]);
    env.ok(&["diff", "bk"]);
    // With --delete-secrets: interrupted deletions from the primary finish on the re-run.
    let landed_deleting = kill_repeatedly(&env, &["backup", "--delete-secrets"], 6);
    env.ok(&["backup", "--delete-secrets"]);
    assert!(
        landed + landed_deleting >= 3,
        "only {} kills landed",
        landed + landed_deleting
    );
    env.ok(&["diff", "bk"]);
    assert_eq!(env.differences("local").len(), SECRETS, "the primary is empty");
    assert_eq!(env.json(&["secret", "get", "s7"])["source"]["name"], "bk");
    env.ok(&["restore"]);
    env.ok(&["diff", "local"]);
}
