//! Golden replay scenarios: every folder in replay/scenarios/ holds
//!
//! - `scenario.toml`: `description`, `action` (restore | migrate | backup | replay | none),
//!   `at` (a mark, for restore and replay), `to` (the sink to migrate to), `ledger` (start from
//!   a fixture ledger in replay/fixtures/ instead of `sledger init`), `actor`;
//! - `events.jsonl`: what happens before the action, one operation per line: create, update,
//!   rename, delete, undelete, purge (as the CLI does them), `mark` (remember this point as
//!   `label`), `sink_add` (a sqlite sink), `stray` (an object put into a sink behind the
//!   ledger's back); lines with `"during": true` run concurrently with the action;
//! - `expected.json`: `secrets` (name → values of every live secret afterwards) and `sinks`
//!   (sink → name → values it holds; each must also be in sync with the ledger's head).
//!
//! One test runs them all, so a new scenario is a new folder.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Env;
use serde_json::{json, Value};
use sledger::sink::SinkRecord;
use sledger::{keyfile, Ledger, Scope, SecretId, SecretValues};

struct Run {
    env: Env,
    actor: String,
    marks: BTreeMap<String, u64>,
}

impl Run {
    fn ok(&self, args: &[&str]) -> String {
        let out = self
            .env
            .cmd()
            .env("SLEDGER_ACTOR", &self.actor)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sledger {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn ledger(&self) -> Ledger {
        let mut ledger = Ledger::open(self.env.location()).unwrap();
        keyfile::unlock(&mut ledger, &self.env.key).unwrap();
        ledger
    }

    fn sink_url(&self, name: &str) -> String {
        format!("sqlite://{}", self.env.path(&format!("{name}.db")).display())
    }

    fn apply(&mut self, op: &Value) {
        let s = |k: &str| {
            op[k]
                .as_str()
                .unwrap_or_else(|| panic!("{op}: no {k}"))
                .to_owned()
        };
        let pairs = |k: &str, flag: &str| -> Vec<String> {
            op[k]
                .as_object()
                .map(|m| {
                    m.iter()
                        .flat_map(|(k, v)| [flag.to_owned(), format!("{k}={}", v.as_str().unwrap())])
                        .collect()
                })
                .unwrap_or_default()
        };
        match s("op").as_str() {
            "create" | "update" => {
                let mut args = vec!["secret".to_owned(), s("op"), s("name")];
                args.extend(pairs("values", "--value"));
                args.extend(pairs("labels", "--label"));
                for key in op["remove_keys"].as_array().into_iter().flatten() {
                    args.extend(["--remove-key".to_owned(), key.as_str().unwrap().to_owned()]);
                }
                self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
            }
            "rename" => {
                self.ok(&["secret", "rename", &s("name"), &s("to")]);
            }
            "delete" | "undelete" => {
                self.ok(&["secret", &s("op"), &s("name")]);
            }
            "purge" => {
                self.ok(&["secret", "purge", &s("name"), "--yes"]);
            }
            "mark" => {
                // Marks are seqs: exact, where a wall-clock time would depend on timing.
                let head = self.json(&["verify"])["events"].as_u64().unwrap();
                self.marks.insert(s("label"), head);
            }
            "sink_add" => {
                let role = op["role"].as_str().unwrap_or("backup");
                self.ok(&[
                    "sink",
                    "add",
                    &s("name"),
                    &self.sink_url(&s("name")),
                    "--role",
                    role,
                ]);
            }
            "stray" => {
                let ledger = self.ledger();
                let (_, sink) = ledger.open_sink(&s("sink")).unwrap();
                let mut values = SecretValues::new();
                for (k, v) in op["values"].as_object().unwrap() {
                    values.insert(k.as_str(), v.as_str().unwrap());
                }
                let record = SinkRecord {
                    id: SecretId::now_v7(),
                    name: s("name"),
                    scope: Scope::Workspace,
                    owner: String::new(),
                    labels: BTreeMap::new(),
                    seq: 1,
                    version: 1,
                    values,
                };
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(sink.put(&record))
                    .unwrap();
            }
            other => panic!("unknown op {other:?} in {op}"),
        }
    }

    /// name → values of every object a sink holds.
    fn sink_contents(&self, name: &str) -> BTreeMap<String, Value> {
        let ledger = self.ledger();
        let (_, sink) = ledger.open_sink(name).unwrap();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut out = BTreeMap::new();
            for entry in sink.list().await.unwrap() {
                let record = sink.get(entry.id).await.unwrap().unwrap();
                let values: serde_json::Map<String, Value> = record
                    .values
                    .iter()
                    .map(|(k, v)| (k.to_owned(), json!(v)))
                    .collect();
                out.insert(record.name.clone(), Value::Object(values));
            }
            out
        })
    }

    /// name → values of every live secret the actor sees, from the ledger.
    fn secrets(&self) -> BTreeMap<String, Value> {
        self.json(&["secret", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let name = s["name"].as_str().unwrap();
                (
                    name.to_owned(),
                    self.json(&["secret", "get", name, "--from", "ledger"])["values"].clone(),
                )
            })
            .collect()
    }
}

/// Run the scenario in `dir` on a ledger file, or in `database` (a PostgreSQL URL).
fn run_scenario(dir: &Path, database: Option<String>) {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display()))
    };
    let scenario: toml::Table = toml::from_str(&read("scenario.toml")).unwrap();
    let text = |k: &str| scenario.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let expected: Value = serde_json::from_str(&read("expected.json")).unwrap();
    let mut env = Env::empty();
    let file = env.ledger.clone();
    if let Some(url) = &database {
        env.ledger = url.into();
    }
    let mut run = Run {
        env,
        actor: text("actor").unwrap_or_else(|| "alice@test".into()),
        marks: BTreeMap::new(),
    };
    match text("ledger") {
        Some(fixture) => {
            let from = dir.join(fixture);
            std::fs::copy(from.join("ledger.db"), &file).unwrap();
            std::fs::copy(from.join("ledger.key"), &run.env.key).unwrap();
            // git keeps no 0600 mode, and sledger refuses a key file others can read.
            std::fs::set_permissions(&run.env.key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if let Some(url) = &database {
                run.ok(&["ledger", "copy", "--from", file.to_str().unwrap(), "--to", url]);
            }
        }
        None if database.is_some() => {
            let primary = run.env.sqlite_url("ledger.sink.db");
            run.ok(&["init", "--primary", &primary]);
        }
        None => {
            run.ok(&["init"]);
        }
    }
    let ops: Vec<Value> = read("events.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (during, before): (Vec<_>, Vec<_>) = ops.into_iter().partition(|op| op["during"] == true);
    for op in &before {
        run.apply(op);
    }
    let mark = |run: &Run| {
        let label = text("at").expect("this action needs at = \"<mark>\"");
        run.marks
            .get(&label)
            .unwrap_or_else(|| panic!("no mark {label:?}"))
            .to_string()
    };
    let action = text("action").unwrap_or_else(|| "none".into());
    let args: Vec<String> = match action.as_str() {
        "restore" => vec!["restore".into(), "--seq".into(), mark(&run)],
        "replay" => vec![
            "replay".into(),
            "--into".into(),
            run.sink_url("replayed"),
            "--seq".into(),
            mark(&run),
        ],
        "migrate" => {
            let to = text("to").expect("migrate needs to = \"<sink>\"");
            vec![
                "migrate".into(),
                "--to".into(),
                run.sink_url(&to),
                "--name".into(),
                to,
            ]
        }
        "backup" => vec!["backup".into()],
        "none" => vec![],
        other => panic!("unknown action {other:?}"),
    };
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut writer = Run {
                env: Env {
                    dir: tempfile::tempdir().unwrap(),
                    ledger: run.env.ledger.clone(),
                    key: run.env.key.clone(),
                    remote: None,
                },
                actor: run.actor.clone(),
                marks: BTreeMap::new(),
            };
            for op in &during {
                writer.apply(op);
            }
        });
        if !args.is_empty() {
            run.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        writer.join().unwrap();
    });
    if action == "replay" {
        run.ok(&[
            "sink",
            "add",
            "replayed",
            &run.sink_url("replayed"),
            "--role",
            "standby",
        ]);
    }
    run.ok(&["project"]);
    assert_eq!(
        json!(run.secrets()),
        expected["secrets"],
        "{}: the ledger's live secrets",
        dir.display()
    );
    for (sink, want) in expected["sinks"].as_object().into_iter().flatten() {
        assert_eq!(
            &json!(run.sink_contents(sink)),
            want,
            "{}: what sink {sink} holds",
            dir.display()
        );
        if action != "replay" {
            run.ok(&["diff", sink]);
        }
    }
    run.ok(&["verify"]);
}

fn scenario_dirs() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("replay/scenarios");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 6,
        "expected at least six scenarios in {}",
        root.display()
    );
    dirs
}

#[test]
fn every_golden_scenario_replays_to_its_expected_state() {
    for dir in scenario_dirs() {
        run_scenario(&dir, None);
    }
}

/// The same scenarios with the ledger in PostgreSQL (a fixture ledger is moved there with
/// `sledger ledger copy`).
#[test]
fn every_golden_scenario_replays_on_a_postgres_ledger() {
    let server = common::pg::Postgres::start();
    for (i, dir) in scenario_dirs().iter().enumerate() {
        run_scenario(dir, Some(server.database(&format!("scenario{i}"))));
    }
}
