//! An example `exec` sink plug-in: keeps each object as a JSON file in a directory.
//!
//!     sledger sink add files 'exec:///path/to/exec_sink_dir?arg=--dir&arg=/var/lib/sledger-files'
//!
//! Options: `--dir DIR` (required), `--sleep-ms N` (wait N ms per request, to stand in for
//! network latency in benchmarks), `--fail-if-exists FILE` (answer every request with a
//! temporary error while FILE exists, to stand in for an outage), `--refuse-if-exists FILE`
//! (while FILE exists, refuse puts of secrets whose name contains "poison" with a permanent
//! error, to stand in for a backend rejecting one secret).
//!
//! The protocol is documented in README.md ("The exec plug-in protocol") and src/sink/exec.rs.

use std::io::{BufRead, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

struct Options {
    dir: PathBuf,
    sleep_ms: u64,
    fail_if_exists: Option<PathBuf>,
    refuse_if_exists: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut sleep_ms, mut fail_if_exists, mut refuse_if_exists) = (None, 0, None, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--sleep-ms" => sleep_ms = value()?.parse().map_err(|_| "--sleep-ms needs a number")?,
            "--fail-if-exists" => fail_if_exists = Some(PathBuf::from(value()?)),
            "--refuse-if-exists" => refuse_if_exists = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Options {
        dir: dir.ok_or("--dir is required")?,
        sleep_ms,
        fail_if_exists,
        refuse_if_exists,
    })
}

/// Object names come from sledger (prefix + uuid); refuse anything that could escape the dir.
fn object_path(dir: &Path, object: &str) -> Result<PathBuf, String> {
    if object.is_empty()
        || !object
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || object.starts_with('.')
    {
        return Err(format!("bad object name {object:?}"));
    }
    Ok(dir.join(format!("{object}.json")))
}

fn read(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Files holding values are private to this user: 0600, in a 0700 directory.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn write_atomically(path: &Path, value: &Value) -> Result<(), String> {
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let mut f = private_file(&tmp).map_err(|e| e.to_string())?;
    f.write_all(value.to_string().as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// Several copies of this program run at once (one per concurrent request): an exclusive lock
/// per object makes each read-compare-write atomic.
fn lock(path: &Path) -> Result<std::fs::File, String> {
    let f = private_file(&path.with_extension("lock")).map_err(|e| e.to_string())?;
    f.lock().map_err(|e| e.to_string())?;
    Ok(f)
}

/// The seq an object (or its tombstone) is at.
fn stored_seq(stored: &Value) -> u64 {
    stored["seq"].as_u64().unwrap_or(0)
}

fn handle(o: &Options, req: &Value) -> Result<Value, String> {
    let object = || {
        req["object"]
            .as_str()
            .ok_or("missing object")
            .map(|s| s.to_owned())
    };
    match req["op"].as_str().unwrap_or("") {
        "health" => Ok(json!({"ok": true})),
        "put" => {
            let path = object_path(&o.dir, &object()?)?;
            let _guard = lock(&path)?;
            let record = &req["record"];
            let poisoned = record["name"].as_str().is_some_and(|n| n.contains("poison"));
            if poisoned && o.refuse_if_exists.as_ref().is_some_and(|f| f.exists()) {
                return Err("this backend refuses secrets named *poison*".into());
            }
            // Never let an older record overwrite a newer one, or a later delete's tombstone.
            if read(&path)?.is_some_and(|old| stored_seq(&old) > record["seq"].as_u64().unwrap_or(0)) {
                return Ok(json!({"ok": true}));
            }
            write_atomically(
                &path,
                &json!({"seq": record["seq"], "deleted": false, "record": record}),
            )?;
            Ok(json!({"ok": true}))
        }
        "get" => {
            let stored = read(&object_path(&o.dir, &object()?)?)?;
            let record = stored
                .filter(|s| s["deleted"] != json!(true))
                .map(|s| s["record"].clone());
            Ok(json!({"ok": true, "record": record}))
        }
        "delete" => {
            let path = object_path(&o.dir, &object()?)?;
            let seq = req["seq"].as_u64().ok_or("missing seq")?;
            let _guard = lock(&path)?;
            let stored = read(&path)?;
            let newest = stored.as_ref().map_or(seq, |s| stored_seq(s).max(seq));
            let tombstone = match (req["mode"].as_str(), stored) {
                // A purge keeps nothing of the values, whatever order requests arrive in.
                (Some("purge"), _) | (_, None) => json!({"seq": newest, "deleted": true, "record": null}),
                (_, Some(stored)) if stored_seq(&stored) > seq => return Ok(json!({"ok": true})),
                (_, Some(mut stored)) => {
                    stored["seq"] = json!(seq);
                    stored["deleted"] = json!(true);
                    stored
                }
            };
            write_atomically(&path, &tombstone)?;
            Ok(json!({"ok": true}))
        }
        "erase" => {
            let path = object_path(&o.dir, &object()?)?;
            let _guard = lock(&path)?;
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(json!({"ok": true})),
            }
        }
        "list" => {
            let prefix = req["prefix"].as_str().ok_or("missing prefix")?;
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(&o.dir).map_err(|e| e.to_string())? {
                let name = entry
                    .map_err(|e| e.to_string())?
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                let Some(object) = name.strip_suffix(".json") else {
                    continue;
                };
                let Some(rest) = object.strip_prefix(prefix) else {
                    continue;
                };
                if rest.len() != 36 || rest.contains(|c: char| !(c.is_ascii_hexdigit() || c == '-')) {
                    continue; // another prefix that happens to start with this one
                }
                if let Some(stored) = read(&o.dir.join(&name))? {
                    if stored["deleted"] != json!(true) {
                        entries.push(json!({"id": stored["record"]["id"], "seq": stored["seq"]}));
                    }
                }
            }
            Ok(json!({"ok": true, "entries": entries}))
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("exec_sink_dir: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&o.dir)
    {
        eprintln!("exec_sink_dir: cannot create {}: {e}", o.dir.display());
        std::process::exit(2);
    }
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if o.sleep_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(o.sleep_ms));
        }
        let reply = if o.fail_if_exists.as_ref().is_some_and(|f| f.exists()) {
            json!({"ok": false, "error": "backend is down (fail file present)", "temporary": true})
        } else {
            match serde_json::from_str::<Value>(&line) {
                Ok(req) => {
                    handle(&o, &req).unwrap_or_else(|e| json!({"ok": false, "error": e, "temporary": false}))
                }
                Err(_) => json!({"ok": false, "error": "request is not JSON", "temporary": false}),
            }
        };
        if writeln!(stdout, "{reply}").and_then(|_| stdout.flush()).is_err() {
            break;
        }
    }
}
