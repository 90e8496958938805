//! Helpers for driving the real `sledger` binary against a ledger in a temp dir.
#![allow(dead_code)]

pub mod azure;
pub mod drongo;
pub mod moto;
pub mod openbao;
pub mod pg;
pub mod serve;
pub mod servers;
pub mod tour;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use tempfile::TempDir;

pub struct Env {
    pub dir: TempDir,
    pub ledger: PathBuf,
    pub key: PathBuf,
    /// A `sledger serve` URL and token: every command goes there (the remote CLI).
    pub remote: Option<(String, String)>,
}

impl Env {
    /// A temp dir with no ledger yet.
    pub fn empty() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger.db");
        let key = dir.path().join("ledger.key");
        Env {
            dir,
            ledger,
            key,
            remote: None,
        }
    }

    /// A temp dir with an initialised ledger.
    pub fn new() -> Env {
        let env = Env::empty();
        env.ok(&["init"]);
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The URL of a sqlite sink file in this env's directory.
    pub fn sqlite_url(&self, file: &str) -> String {
        format!("sqlite://{}", self.path(file).display())
    }

    /// `sledger` with this env's ledger, a fixed actor, and no inherited key.
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("sledger").unwrap();
        c.env("SLEDGER_LEDGER", &self.ledger)
            .env("SLEDGER_ACTOR", "alice@test")
            .env_remove("SLEDGER_MASTER_KEY")
            .env_remove("SLEDGER_KEY_FILE")
            .env_remove("SLEDGER_LOG")
            // Tables fit it when set; a test that wants that sets it on its own command.
            .env_remove("COLUMNS")
            // A test that sets it for its own process must not lend it to the others' children.
            .env_remove("VAULT_TOKEN")
            .env_remove("SLEDGER_SERVER")
            .env_remove("SLEDGER_TOKEN");
        if let Some((server, token)) = &self.remote {
            c.env("SLEDGER_SERVER", server).env("SLEDGER_TOKEN", token);
        }
        if self.in_postgres() {
            // A ledger in a database has no file to keep its key beside.
            c.env("SLEDGER_KEY_FILE", &self.key);
        }
        c
    }

    /// The ledger as the library names it: a file or a database.
    pub fn location(&self) -> sledger::store::Location {
        sledger::store::Location::parse(self.ledger.to_str().unwrap()).unwrap()
    }

    /// Whether the ledger is a postgres:// URL rather than a file.
    pub fn in_postgres(&self) -> bool {
        self.ledger.to_str().is_some_and(|l| l.starts_with("postgres://"))
    }

    /// `sledger ARGS` started in the background like [`Env::cmd`], with `vars` set and its
    /// output discarded: for tests that kill it or wait on it.
    pub fn spawn(&self, vars: &[(&str, &str)], args: &[&str]) -> std::process::Child {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("sledger"))
            .env("SLEDGER_LEDGER", &self.ledger)
            .env("SLEDGER_ACTOR", "alice@test")
            .env_remove("SLEDGER_MASTER_KEY")
            .env_remove("SLEDGER_KEY_FILE")
            .env_remove("SLEDGER_LOG")
            .env_remove("VAULT_TOKEN")
            .envs(vars.iter().copied())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// `sledger ARGS` started in the background like [`Env::cmd`], its stdout piped to the
    /// caller: for commands that run until stopped (`--follow`).
    pub fn spawn_piped(&self, args: &[&str]) -> std::process::Child {
        let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("sledger"));
        command
            .env("SLEDGER_LEDGER", &self.ledger)
            .env("SLEDGER_ACTOR", "alice@test")
            .env_remove("SLEDGER_MASTER_KEY")
            .env_remove("SLEDGER_KEY_FILE")
            .env_remove("SLEDGER_LOG")
            .env_remove("SLEDGER_SERVER")
            .env_remove("SLEDGER_TOKEN");
        if self.in_postgres() {
            command.env("SLEDGER_KEY_FILE", &self.key);
        }
        command
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Run, expect success, return stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "sledger {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run, expect exit `code`, return stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "sledger {args:?}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    /// Run with `--format json`, parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// What `sledger diff SINK` reports, one JSON object per differing object (exit 0 when
    /// there is none, and then one `{"sink", "in_sync": true}` document; 10 otherwise).
    pub fn differences(&self, sink: &str) -> Vec<serde_json::Value> {
        self.differences_with(&[], sink)
    }

    /// `differences` with `vars` set (a sink's credentials).
    pub fn differences_with(&self, vars: &[(&str, &str)], sink: &str) -> Vec<serde_json::Value> {
        let out = self
            .cmd()
            .envs(vars.iter().copied())
            .args(["--format", "json", "diff", sink])
            .output()
            .unwrap();
        // A diff that finds differences ends, like every failing command in JSON mode, with
        // an {"error": …} document.
        let found: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|d| d.get("error").is_none() && d.get("in_sync").is_none())
            .collect();
        let expected = if found.is_empty() { 0 } else { 10 };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        found
    }

    /// JSON lines output.
    pub fn json_lines(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        self.ok(&a)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every byte sledger keeps on disk for this ledger (db, WAL, key file excluded).
    pub fn ledger_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.ledger.clone().into_os_string();
            p.push(suffix);
            if let Ok(b) = std::fs::read(Path::new(&p)) {
                all.extend(b);
            }
        }
        all
    }

    /// Open the ledger with plain SQLite, triggers dropped, for tamper tests.
    pub fn raw(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.ledger).unwrap();
        c.execute_batch(
            "DROP TRIGGER IF EXISTS events_are_append_only_update; DROP TRIGGER IF EXISTS events_are_append_only_delete;",
        )
        .unwrap();
        c
    }
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The example exec plug-in (examples/exec_sink_dir.rs), built by `cargo test` beside the tests.
pub fn example_plugin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("exec_sink_dir");
    assert!(
        path.exists(),
        "example plug-in not built at {}; run `cargo build --examples`",
        path.display()
    );
    path
}

/// Who `sink status --format json` says the sink `name` runs as ("" if it does not say).
pub fn sink_identity(status: &serde_json::Value, name: &str) -> String {
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sink {name} in {status}"))["identity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The files the example plug-in keeps for secrets in `dir` (not the sink's anchor).
pub fn plugin_secret_files(dir: &Path) -> Vec<PathBuf> {
    let anchor = uuid::Uuid::max().to_string();
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.to_string_lossy().contains(&anchor))
        .collect()
}

/// An exec sink URL on the example plug-in keeping its objects in `dir`, with extra plug-in args.
pub fn exec_url(dir: &Path, extra: &[&str]) -> String {
    let mut url = format!(
        "exec://{}?arg=--dir&arg={}",
        example_plugin().display(),
        dir.display()
    );
    for a in extra {
        url.push_str("&arg=");
        url.push_str(a);
    }
    url
}

/// Run sledger with extra environment (a backend's credentials); expect success, return stdout.
pub fn ok_with(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> String {
    let out = env.cmd().envs(vars.iter().copied()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "sledger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The walk every cloud sink goes through, named `sink` at `url`: added as a backup;
/// create, update, delete, purge; caught up (lag 0, no difference, reads from it); then made
/// the primary by `migrate` while another process keeps writing, after which it serves every
/// secret, the last one written included, and `diff` is clean; then three processes update
/// one secret at once and the primary ends with the newest value.
pub fn cloud_sink_walkthrough(vars: &'static [(&'static str, &'static str)], sink: &str, url: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let env = Arc::new(Env::new());
    let run = |args: &[&str]| ok_with(&env, vars, args);
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&ok_with(&env, vars, &all)).unwrap()
    };
    run(&["sink", "add", sink, url]);
    for i in 0..10 {
        run(&[
            "secret",
            "create",
            &format!("app/s{i}"),
            "--value",
            &format!("pw=v{i}"),
        ]);
    }
    run(&["secret", "update", "app/s1", "--value", "pw=changed"]);
    run(&["secret", "delete", "app/s2"]);
    run(&["secret", "purge", "app/s3", "--yes"]);
    run(&["project"]);
    let status = json(&["sink", "status"]);
    let row = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == sink)
        .unwrap()
        .clone();
    assert_eq!(row["lag"], 0, "{row}");
    // The backend keeps the anchor the projector left (the ledger's head, MAC'd) and gives it
    // back; `diff` passing shows it is not listed as a secret.
    let anchors = json(&["anchors"]);
    let witness = anchors
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["sink"] == sink)
        .unwrap();
    assert_eq!(witness["verdict"]["status"], "matches", "{witness}");
    assert_eq!(witness["anchor"]["seq"], row["checkpoint"], "{witness}");
    run(&["diff", sink]);
    let got = json(&["secret", "get", "app/s1", "--from", "backup"]);
    assert_eq!(
        (got["values"]["pw"].as_str(), got["source"]["name"].as_str()),
        (Some("changed"), Some(sink))
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (env, stop) = (env.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                ok_with(
                    &env,
                    vars,
                    &["secret", "create", &format!("during/{n}"), "--value", "k=v"],
                );
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    run(&["migrate", "--to", sink]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    run(&["project"]);
    run(&["diff", sink]);
    let last = json(&["secret", "get", &format!("during/{}", written - 1)]);
    assert_eq!(last["source"]["name"], sink, "{last}");

    // Three processes updating one secret at once, each writing into the (now) primary as its
    // write waits for it: the newest value ends up there, with no `project` after them.
    run(&["secret", "create", "hot", "--value", "n=0"]);
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let env = env.clone();
            std::thread::spawn(move || {
                for i in 0..8 {
                    ok_with(
                        &env,
                        vars,
                        &["secret", "update", "hot", "--value", &format!("n={w}-{i}")],
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    run(&["diff", sink]);
    let (ledger, served) = (
        json(&["secret", "get", "hot", "--from", "ledger"]),
        json(&["secret", "get", "hot", "--from", "primary"]),
    );
    assert_eq!(ledger["values"], served["values"]);
}

/// What every backend test seeds into its backend with the backend's own API before
/// [`adopt_walkthrough`]: `app/db` as a JSON object, `app/token` as plain text (Vault, which
/// holds only maps, seeds it as `{"value": …}`), and `other/x` outside the imported prefix.
/// Backends whose names hold no `/` (GCP, Azure) use `-`: `app-db`, `app-token`, `other-x`.
pub const FOREIGN_DB: &str = r#"{"user":"admin","password":"pw1"}"#;
pub const FOREIGN_TOKEN: &str = "tok-123";
pub const FOREIGN_OTHER: &str = r#"{"k":"v"}"#;

/// `import --from` on a backend holding the seeded secrets and, once this adds it as two backups
/// (prefixes `sledger-` and `zz-`) and projects, sledger's own objects: a dry run lists the
/// foreign secrets only and changes
/// nothing; `--prefix app/` adopts exactly those with their values; a second import changes
/// nothing; a prefix matching nothing is an error.
pub fn adopt_walkthrough(vars: &[(&str, &str)], url: &str, sep: &str) {
    let name = |n: &str| n.replace('/', sep);
    let app = name("app/");
    let env = Env::new();
    let run = |args: &[&str]| ok_with(&env, vars, args);
    run(&["sink", "add", "cloud", url]);
    // sledger's objects under another prefix are known by their metadata.
    run(&["sink", "add", "cloud2", &format!("{url}&prefix=zz-")]);
    run(&["secret", "create", "mine", "--value", "k=1"]);
    run(&["project"]);
    let events = env.json(&["verify"])["events"].clone();

    let dry = run(&["import", "--from", url, "--all", "--dry-run"]);
    for n in ["app/db", "app/token", "other/x"] {
        assert!(dry.contains(&format!("would import {} ", name(n))), "{dry}");
    }
    assert_eq!(
        dry.matches("would import").count(),
        3,
        "only the seeded secrets: {dry}"
    );
    assert_eq!(
        env.json(&["verify"])["events"],
        events,
        "a dry run appends nothing"
    );

    let imported = run(&["import", "--from", url, "--prefix", &app]);
    assert!(imported.contains("imported: 2 events appended"), "{imported}");
    let db = env.json(&["secret", "get", &name("app/db")]);
    assert_eq!(
        (db["values"]["user"].as_str(), db["values"]["password"].as_str()),
        (Some("admin"), Some("pw1"))
    );
    let token = env.json(&["secret", "get", &name("app/token")]);
    assert_eq!(token["values"]["value"], FOREIGN_TOKEN, "{token}");
    let other = env
        .cmd()
        .envs(vars.iter().copied())
        .args(["secret", "get", &name("other/x")])
        .output()
        .unwrap();
    assert!(!other.status.success(), "other/x is outside --prefix app/");

    let again = run(&["import", "--from", url, "--prefix", &app]);
    assert!(
        again.contains("imported: 0 events appended, 2 secrets unchanged"),
        "{again}"
    );
    let none = env
        .cmd()
        .envs(vars.iter().copied())
        .args(["import", "--from", url, "--prefix", "nope/"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&none.stderr);
    assert_eq!(none.status.code(), Some(2), "{err}");
    assert!(err.contains("holds no secrets starting with \"nope/\""), "{err}");
}

/// The backend dies while `sledger project` is writing to it: that run fails (exit 7), the
/// sink's error naming `address` shows in `sink status` and the lag stays, writes stay durable;
/// once the backend is back (empty: the test servers keep nothing) `reconcile` and `project`
/// converge and `diff` is clean. `server(false)` kills the backend, `server(true)` restarts it.
pub fn outage_mid_projection(vars: &[(&str, &str)], url: &str, address: &str, server: &mut dyn FnMut(bool)) {
    let env = Env::new();
    let run = |args: &[&str]| ok_with(&env, vars, args);
    run(&["sink", "add", "cloud", url]);
    let file = env.path("many.jsonl");
    let lines: Vec<String> = (0..400)
        .map(|i| format!(r#"{{"name": "bulk/{i}", "values": {{"k": "v{i}"}}}}"#))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    run(&["import", "--file", file.to_str().unwrap()]);
    let status = |env: &Env| -> serde_json::Value {
        let all: serde_json::Value =
            serde_json::from_str(&ok_with(env, vars, &["--format", "json", "sink", "status"])).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "cloud")
            .unwrap()
            .clone()
    };
    let mut projecting = env.spawn(vars, &["project", "--batch-events", "10"]);
    // Kill it once the projection is under way, well before it is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while status(&env)["checkpoint"].as_u64().unwrap() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "the projection never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server(false);
    let exit = projecting.wait().unwrap();
    assert_eq!(exit.code(), Some(7), "project with its backend gone mid-run");
    let row = status(&env);
    assert!(row["lag"].as_u64().unwrap() > 0, "{row}");
    let error = row["last_error"].as_str().unwrap_or_default();
    assert!(error.contains(address), "{row}");
    run(&["secret", "update", "bulk/0", "--value", "k=changed"]);

    server(true);
    run(&["reconcile", "cloud"]);
    run(&["project"]);
    run(&["diff", "cloud"]);
    assert_eq!(status(&env)["lag"], 0);
    let got: serde_json::Value = serde_json::from_str(&run(&[
        "--format", "json", "secret", "get", "bulk/0", "--from", "backup",
    ]))
    .unwrap();
    assert_eq!(got["values"]["k"], "changed", "{got}");
    run(&["verify"]);
}

/// A ledger lost, rebuilt from one sink with `sledger recover`: every live secret comes back
/// with its latest values, labels, scope and owner (deleted ones do not), the log starts with a
/// `ledger.recovered` event naming the source, `verify` passes, and the new primary is in sync.
/// `source` is `None` for the ledger's own default sqlite sink, or a backend URL attached as a
/// backup first (with `vars` for its credentials).
pub fn recover_walkthrough(vars: &[(&str, &str)], source: Option<&str>) {
    let env = Env::new();
    let run = |args: &[&str]| ok_with(&env, vars, args);
    let source_url = match source {
        Some(url) => {
            run(&["sink", "add", "dr", url]);
            url.to_owned()
        }
        None => env.sqlite_url("ledger.sink.db"),
    };
    run(&[
        "secret", "create", "db", "--value", "user=u", "--value", "pw=one", "--label", "env=prod",
    ]);
    run(&["secret", "update", "db", "--value", "pw=two"]);
    run(&["secret", "create", "old-name", "--value", "k=renamed"]);
    run(&["secret", "rename", "old-name", "new-name"]);
    run(&["secret", "create", "gone", "--value", "k=v"]);
    run(&["secret", "delete", "gone"]);
    run(&["secret", "create", "mine", "--private", "--value", "k=alice's"]);
    run(&[
        "--actor",
        "bob@test",
        "secret",
        "create",
        "mine",
        "--private",
        "--value",
        "k=bob's",
    ]);
    run(&["project"]);
    // The machine is lost with the ledger; the key was kept elsewhere, the sink survived.
    for suffix in ["", "-wal", "-shm"] {
        let mut file = env.ledger.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(file));
    }
    // A cloud sink's values need no key: the key may be lost too, and the new ledger gets a
    // new one. A sqlite sink's open only with the key.
    if source.is_some() {
        std::fs::remove_file(&env.key).unwrap();
    }
    let primary = env.sqlite_url("rebuilt.sink.db");
    let said = run(&["recover", "--from", &source_url, "--primary", &primary]);
    assert!(said.contains("recovered 4 secrets"), "{said}");
    assert_eq!(said.contains("master key: a new one"), source.is_some(), "{said}");
    let get = |actor: &str, name: &str, key: &str| {
        run(&[
            "--actor", actor, "secret", "get", name, "--key", key, "--from", "primary",
        ])
    };
    assert_eq!(get("alice@test", "db", "pw"), "two\n", "the latest values");
    assert_eq!(get("alice@test", "db", "user"), "u\n");
    assert_eq!(
        get("alice@test", "new-name", "k"),
        "renamed\n",
        "the current name"
    );
    assert_eq!(
        get("alice@test", "mine", "k"),
        "alice's\n",
        "each owner's private secret"
    );
    assert_eq!(get("bob@test", "mine", "k"), "bob's\n");
    env.fails(&["secret", "get", "gone"], 3);
    let db = &env.json(&["secret", "list", "--label", "env=prod"])[0];
    assert_eq!(db["name"], "db", "labels came back");
    let first = &env.json_lines(&["log", "--limit", "1", "--after-seq", "0"])[0];
    assert_eq!(first["event_type"], "ledger.recovered");
    assert!(
        first["detail"]
            .as_str()
            .unwrap()
            .contains("history before this event"),
        "{first}"
    );
    run(&["verify"]);
    assert!(
        env.differences("local").is_empty(),
        "the new primary holds every secret"
    );
    let sinks = env.json(&["sink", "list"]);
    assert!(
        sinks.to_string().contains("standby") && sinks.to_string().contains("recovered-from"),
        "the source is kept, as a standby nothing writes: {sinks}"
    );
}

/// Update `name` (through the library, as `alice`) `rounds` times, with a new value each time.
pub fn update_rounds(ledger: &mut sledger::Ledger, name: &str, rounds: usize) {
    for round in 0..rounds {
        let mut values = sledger::SecretValues::new();
        values.insert("k", format!("v{round}"));
        let update = sledger::Command::Update {
            name: name.into(),
            set_values: values,
            remove_keys: Vec::new(),
            set_labels: Default::default(),
            remove_labels: Vec::new(),
        };
        ledger.execute("alice", vec![update]).unwrap();
    }
}
