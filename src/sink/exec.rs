//! `exec:///path/to/program?arg=…&arg=…`: the custom-backend plug-in.
//!
//! sledger starts the program (up to `max_concurrency` copies, kept running) and speaks one
//! JSON object per line on its stdin/stdout. Requests:
//!
//! ```text
//! {"op":"put","object":"sledger-<id>","record":{"id","name","scope","owner","labels","seq","version","values":{…}}}
//! {"op":"get","object":"sledger-<id>"}
//! {"op":"delete","object":"sledger-<id>","seq":N,"mode":"soft"|"purge"}
//! {"op":"list","prefix":"sledger-"}
//! {"op":"health"}
//! ```
//!
//! Replies: `{"ok":true}` plus `"record":{…}|null` for get and `"entries":[{"id","seq"}]` for
//! list; failures are `{"ok":false,"error":"…","temporary":true|false}`. The same rules as for
//! every sink apply (see [`super::Sink`]). The program's stderr is discarded.
//!
//! The program starts with a cleared environment: `PATH`, `HOME` and `LANG`, plus only the
//! variables its URL names (`env=NAME`, repeatable). A third-party plug-in never sees sledger's
//! master key or any cloud credential it was not given.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, Semaphore};
use zeroize::Zeroizing;

use super::{object_name, Capabilities, DeleteMode, RecordMeta, Sink, SinkEntry, SinkRecord};
use crate::crypto::SecretValues;
use crate::error::{Error, Result};
use crate::SecretId;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reply line read from a plug-in: one record (the ledger refuses values over 16 MiB)
/// with room for its metadata. A `list` reply, one line for every object, may be longer.
const MAX_REPLY_BYTES: u64 = 32 << 20;
const MAX_LIST_REPLY_BYTES: u64 = 512 << 20;

/// What every plug-in inherits; anything else it must be given by name (`env=NAME`).
const ALWAYS_PASSED: &[&str] = &["PATH", "HOME", "LANG"];

/// Never passed to a plug-in, even when named.
struct Worker {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// A sink backed by an external program.
pub struct ExecSink {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<String>,
    prefix: String,
    max_concurrency: usize,
    idle: Mutex<Vec<Worker>>,
    slots: Semaphore,
}

impl std::fmt::Debug for ExecSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSink")
            .field("program", &self.program)
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct WireRecord {
    #[serde(flatten)]
    meta: RecordMeta,
    values: std::collections::BTreeMap<String, Zeroizing<String>>,
}

#[derive(Deserialize)]
pub(crate) struct Reply {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    temporary: bool,
    #[serde(default)]
    record: Option<WireRecord>,
    #[serde(default)]
    entries: Option<Vec<SinkEntry>>,
}

fn failure(message: impl Into<String>, temporary: bool) -> Error {
    Error::sink("exec", message, temporary)
}

/// One reply line as the protocol defines it. The error gives only the position of a parse
/// error: the line may hold values.
pub(crate) fn parse_reply(program: &Path, line: &str) -> Result<Reply> {
    serde_json::from_str(line).map_err(|e| {
        failure(
            format!(
                "plug-in {} sent a reply that is not protocol JSON (column {})",
                program.display(),
                e.column()
            ),
            false,
        )
    })
}

impl ExecSink {
    pub fn new(
        program: &Path,
        args: &[String],
        env: &[String],
        prefix: &str,
        max_concurrency: usize,
    ) -> Self {
        ExecSink {
            program: program.to_path_buf(),
            args: args.to_vec(),
            env: env.to_vec(),
            prefix: prefix.to_owned(),
            max_concurrency,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(max_concurrency.max(1)),
        }
    }

    fn spawn(&self) -> Result<Worker> {
        let mut command = Command::new(&self.program);
        command.env_clear();
        for name in ALWAYS_PASSED
            .iter()
            .copied()
            .chain(self.env.iter().map(String::as_str))
        {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        let mut child = command
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                failure(
                    format!("cannot start plug-in {}: {e}", self.program.display()),
                    true,
                )
            })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        Ok(Worker {
            _child: child,
            stdin,
            stdout,
        })
    }

    /// Send one request and read its reply, on an idle worker (or a new one).
    async fn call(&self, request: Value) -> Result<Reply> {
        self.call_within(request, MAX_REPLY_BYTES).await
    }

    /// One request and its reply line, read up to `max_reply` bytes: a plug-in that sends
    /// more is broken (or hostile), not a reason to hold unbounded memory.
    async fn call_within(&self, request: Value, max_reply: u64) -> Result<Reply> {
        let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
        let worker = self.idle.lock().await.pop();
        let mut worker = match worker {
            Some(w) => w,
            None => self.spawn()?,
        };
        let mut line = Zeroizing::new(serde_json::to_vec(&request).expect("requests serialise"));
        line.push(b'\n');
        let exchange = async {
            worker.stdin.write_all(&line).await?;
            worker.stdin.flush().await?;
            let mut reply = Zeroizing::new(String::new());
            let n = (&mut worker.stdout).take(max_reply).read_line(&mut reply).await?;
            Ok::<_, std::io::Error>((n, reply))
        };
        let (n, reply) = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Err(_) => {
                return Err(failure(
                    format!(
                        "plug-in {} did not answer within {REQUEST_TIMEOUT:?}",
                        self.program.display()
                    ),
                    true,
                ))
            }
            Ok(Err(e)) => {
                return Err(failure(
                    format!("plug-in {} failed: {e}", self.program.display()),
                    true,
                ))
            }
            Ok(Ok(r)) => r,
        };
        if n == 0 {
            return Err(failure(
                format!("plug-in {} exited", self.program.display()),
                true,
            ));
        }
        if !reply.ends_with('\n') && n as u64 >= max_reply {
            // The rest of the line is still unread: this worker is dropped (and killed).
            return Err(failure(
                format!(
                    "plug-in {} sent a reply longer than {max_reply} bytes",
                    self.program.display()
                ),
                false,
            ));
        }
        let reply = parse_reply(&self.program, &reply)?;
        self.idle.lock().await.push(worker);
        if !reply.ok {
            return Err(failure(
                reply
                    .error
                    .clone()
                    .unwrap_or_else(|| "the plug-in reported an error".into()),
                reply.temporary,
            ));
        }
        Ok(reply)
    }
}

#[async_trait]
impl Sink for ExecSink {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::unlimited(self.max_concurrency)
    }

    async fn put(&self, record: &SinkRecord) -> Result<()> {
        let values: std::collections::BTreeMap<&str, &str> = record.values.iter().collect();
        let mut wire = serde_json::to_value(record.meta()).expect("metadata serialises");
        wire["values"] = json!(values);
        self.call(json!({"op": "put", "object": object_name(&self.prefix, record.id), "record": wire}))
            .await
            .map(|_| ())
    }

    async fn get(&self, id: SecretId) -> Result<Option<SinkRecord>> {
        let reply = self
            .call(json!({"op": "get", "object": object_name(&self.prefix, id)}))
            .await?;
        let Some(wire) = reply.record else {
            return Ok(None);
        };
        if wire.meta.id != id {
            return Err(failure(
                format!(
                    "plug-in {} answered a read of {id} with the record of {}",
                    self.program.display(),
                    wire.meta.id
                ),
                false,
            ));
        }
        let mut values = SecretValues::new();
        for (k, v) in &wire.values {
            values.insert(k.as_str(), v.as_str());
        }
        Ok(Some(SinkRecord::from_meta(wire.meta, values)))
    }

    async fn delete(&self, id: SecretId, seq: u64, how: DeleteMode) -> Result<()> {
        self.call(json!({"op": "delete", "object": object_name(&self.prefix, id), "seq": seq, "mode": how}))
            .await
            .map(|_| ())
    }

    async fn erase(&self, id: SecretId) -> Result<()> {
        self.call(json!({"op": "erase", "object": object_name(&self.prefix, id)}))
            .await
            .map(|_| ())
    }

    async fn list(&self) -> Result<Vec<SinkEntry>> {
        let reply = self
            .call_within(json!({"op": "list", "prefix": self.prefix}), MAX_LIST_REPLY_BYTES)
            .await?;
        let entries = reply
            .entries
            .ok_or_else(|| failure("list reply has no entries", false))?;
        Ok(entries)
    }

    async fn health(&self) -> Result<()> {
        self.call(json!({"op": "health"})).await.map(|_| ())
    }
}

/// `exec:///absolute/path/program?arg=A&arg=B`.
pub(super) fn from_url(parts: &mut super::url::UrlParts<'_>) -> crate::Result<super::Backend> {
    let env = parts.take_all("env");
    for name in &env {
        parts.check_env_name("env", name)?;
    }
    Ok(super::Backend::Exec {
        program: parts.absolute_path("exec")?,
        args: parts.take_all("arg"),
        env,
        prefix: parts.prefix.clone(),
        max_concurrency: parts.concurrency(16),
    })
}
