//! A client of `sledger serve` (what the CLI uses with `--server URL`): the same commands and
//! reads as a local ledger, answered with the same JSON documents the local commands render;
//! the server's errors come back as [`Error::Remote`] with the class the server named, so they
//! map onto the same exit codes.
//!
//! Blocking: each call runs on the client's own single-threaded runtime (like
//! `reqwest::blocking`), so it must not be called from inside an async runtime.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::access_log::AccessFilter;
use crate::error::{Error, ErrorClass, Result};
use crate::read::ReadFrom;
use crate::server::routes::NEXT_AFTER_HEADER;
use crate::{Command, ListQuery, LogFilter, ReadPoint, Status};

/// Where the token comes from when not from a file.
pub const TOKEN_ENV: &str = "SLEDGER_TOKEN";

/// The class of a server error code (the same classes as local errors).
fn class_of(code: &str) -> ErrorClass {
    match code {
        "invalid" | "too_large" => ErrorClass::Invalid,
        "not_found" => ErrorClass::NotFound,
        "already_exists" => ErrorClass::AlreadyExists,
        "integrity" => ErrorClass::Integrity,
        "key" => ErrorClass::Key,
        "unavailable" | "sink_unavailable" | "audit_unavailable" | "rate_limited" => ErrorClass::Unavailable,
        "incompatible" => ErrorClass::Incompatible,
        "backend_refused" => ErrorClass::Backend,
        "out_of_sync" => ErrorClass::OutOfSync,
        "unauthenticated" => ErrorClass::Unauthenticated,
        "forbidden" => ErrorClass::Denied,
        _ => ErrorClass::Internal,
    }
}

fn not_json(e: reqwest::Error) -> Error {
    Error::Remote {
        class: ErrorClass::Internal,
        message: format!("the server's answer is not JSON: {e}"),
    }
}

/// A connection to one `sledger serve`, with its token.
pub struct Client {
    /// One runtime for every request, so the client's connections live across calls.
    runtime: tokio::runtime::Runtime,
    base: Url,
    token: Zeroizing<String>,
    client: reqwest::Client,
}

/// A token file must be readable by its owner only, as ssh demands of keys.
fn read_token_file(path: &Path) -> Result<Zeroizing<String>> {
    let unreadable = |e| Error::io(format!("cannot read token file {}", path.display()), e);
    if let Some(mode) = crate::private_file::loose_mode(path).map_err(unreadable)? {
        return Err(Error::invalid(format!(
            "token file {} is readable by others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(unreadable)?);
    Ok(Zeroizing::new(text.trim().to_owned()))
}

impl Client {
    /// A client of the server at `server` (https://, or http:// to a loopback address only),
    /// with the token from `token_file` (owner-only) or else `env_token`; `ca_file` adds a CA
    /// to trust.
    pub fn new(
        server: &str,
        token_file: Option<&Path>,
        env_token: Option<Zeroizing<String>>,
        ca_file: Option<&Path>,
    ) -> Result<Client> {
        let mut base = Url::parse(server).map_err(|e| {
            Error::invalid(format!(
                "--server {server:?} is not a URL ({e}); write it like https://sledger.example:8420"
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::invalid(format!(
                "--server {server:?} must be an http:// or https:// URL"
            )));
        }
        let loopback = match base.host_str() {
            Some("localhost") => true,
            Some(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        if base.scheme() == "http" && !loopback {
            return Err(Error::invalid(format!(
                "--server {server:?} is plain http to another host: the token would cross the network unencrypted; use https://"
            )));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(Error::invalid(
                "--server must not carry credentials; pass the token with SLEDGER_TOKEN or --token-file",
            ));
        }
        base.set_path("");
        let token = match (token_file, env_token) {
            (Some(path), _) => read_token_file(path)?,
            (None, Some(token)) => token,
            (None, None) => {
                return Err(Error::invalid(format!(
                    "--server needs a token: set {TOKEN_ENV} or pass --token-file PATH (a 0600 file)"
                )))
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the HTTP client's runtime", e))?;
        let _inside = runtime.enter();
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(300));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| Error::io(format!("cannot read --ca-file {}", path.display()), e))?;
            let ca = reqwest::Certificate::from_pem(&pem).map_err(|_| {
                Error::invalid(format!("--ca-file {} is not a PEM certificate", path.display()))
            })?;
            client = client.add_root_certificate(ca);
        }
        let client = client.build().map_err(|e| Error::Remote {
            class: ErrorClass::Internal,
            message: format!("cannot set up the HTTP client: {e}"),
        })?;
        drop(_inside);
        Ok(Client {
            runtime,
            base,
            token,
            client,
        })
    }

    /// `/v1/` + the path segments, each percent-encoded (a secret name keeps its slashes).
    /// (Names with `.` or `..` segments are refused before this: a URL normalises them away.)
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("http URLs have paths");
            path.clear().push("v1");
            for segment in segments {
                path.extend(segment.split('/'));
            }
        }
        url
    }

    fn send(
        &self,
        method: Method,
        url: Url,
        query: &impl Serialize,
        body: Option<Value>,
    ) -> Result<reqwest::Response> {
        let mut request = self
            .client
            .request(method, url)
            .bearer_auth(self.token.as_str())
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = self
            .runtime
            .block_on(async { request.send().await })
            .map_err(|e| {
                let mut message = format!("cannot reach the server at {}: {e}", self.base);
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    message.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                Error::Remote {
                    class: ErrorClass::Unavailable,
                    message,
                }
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = self
            .runtime
            .block_on(async { response.json().await })
            .unwrap_or(Value::Null);
        if let (Some(code), Some(message)) =
            (body["error"]["code"].as_str(), body["error"]["message"].as_str())
        {
            return Err(Error::Remote {
                class: class_of(code),
                message: message.to_owned(),
            });
        }
        // Answers made before a route ran (a limit layer) carry no error document.
        let (class, message) = match status {
            StatusCode::PAYLOAD_TOO_LARGE => (
                ErrorClass::Invalid,
                "the request is larger than the server takes (its --body-limit, 1 MiB unless set); \
                 send smaller values, or raise the limit on the server"
                    .to_owned(),
            ),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => (
                ErrorClass::Unavailable,
                format!("the server answered {status}; try again"),
            ),
            StatusCode::REQUEST_TIMEOUT => (
                ErrorClass::Unavailable,
                "the request took longer than the server allows; a write may or may not have been \
                 recorded: look (`sledger secret history`) before sending it again"
                    .to_owned(),
            ),
            status if status.is_client_error() => (
                ErrorClass::Invalid,
                format!("the server refused the request ({status})"),
            ),
            _ => (ErrorClass::Internal, format!("the server answered {status}")),
        };
        Err(Error::Remote { class, message })
    }

    fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &impl Serialize,
        body: Option<Value>,
    ) -> Result<Value> {
        if let Some(bad) = segments
            .iter()
            .flat_map(|s| s.split('/'))
            .find(|p| *p == "." || *p == "..")
        {
            return Err(Error::invalid(format!(
                "a name with a {bad:?} path segment cannot be sent to a server (a URL would drop it); name the secret as id:UUID (`sledger secret list --format json` shows it), or rename it"
            )));
        }
        let response = self.send(method, self.url(segments), query, body)?;
        self.runtime
            .block_on(async { response.json().await })
            .map_err(not_json)
    }

    /// One document, or each of an array's.
    fn docs(value: Value) -> Vec<Value> {
        match value {
            Value::Array(docs) => docs,
            doc => vec![doc],
        }
    }

    /// Apply one command; the answer is one document per changed secret.
    pub fn execute(&self, command: Command, wait: Duration) -> Result<Vec<Value>> {
        let wait = [("wait_ms", wait.as_millis() as u64)];
        let values = |v: &crate::SecretValues| -> Value {
            v.iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let (method, segments, body) = match command {
            Command::Create {
                name,
                scope,
                labels,
                values: v,
            } => (
                Method::POST,
                vec!["secrets".to_owned()],
                json!({"name": name, "scope": scope, "labels": labels, "values": values(&v)}),
            ),
            Command::Put {
                name,
                scope,
                labels,
                values: v,
            } => (
                Method::PUT,
                vec!["secrets".to_owned(), name],
                json!({"scope": scope, "labels": labels, "values": values(&v)}),
            ),
            Command::Update {
                name,
                set_values,
                remove_keys,
                set_labels,
                remove_labels,
            } => (
                Method::PATCH,
                vec!["secrets".to_owned(), name],
                json!({"values": values(&set_values), "remove_keys": remove_keys, "labels": set_labels, "remove_labels": remove_labels}),
            ),
            Command::Rename { name, new_name } => (
                Method::POST,
                vec!["rename".to_owned(), name],
                json!({"new_name": new_name}),
            ),
            Command::Delete { name } => (Method::DELETE, vec!["secrets".to_owned(), name], Value::Null),
            Command::Undelete { name } => (Method::POST, vec!["undelete".to_owned(), name], Value::Null),
            Command::Purge { name } => (Method::POST, vec!["purge".to_owned(), name], Value::Null),
            _ => return Err(Error::invalid("this command is not available through the server")),
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let body = (!body.is_null()).then_some(body);
        Ok(Self::docs(self.call(method, &segments, &wait, body)?))
    }

    pub fn read(&self, name: &str, point: Option<ReadPoint>, from: ReadFrom) -> Result<Value> {
        let mut query: Vec<(&str, String)> = Vec::new();
        match point {
            Some(ReadPoint::Version(v)) => query.push(("version", v.to_string())),
            Some(ReadPoint::At(ms)) => query.push(("at", crate::event::format_millis(ms))),
            Some(ReadPoint::Latest) | None => {}
        }
        let from = match from {
            ReadFrom::Auto => None,
            ReadFrom::Primary => Some("primary"),
            ReadFrom::Backup => Some("backup"),
            ReadFrom::Ledger => Some("ledger"),
        };
        if let Some(from) = from {
            query.push(("from", from.to_owned()));
        }
        self.call(Method::GET, &["secrets", name], &query, None)
    }

    /// One page of secrets (the server caps its size), and where the next one starts.
    pub fn list(&self, query: &ListQuery, limit: Option<usize>) -> Result<(Vec<Value>, Option<String>)> {
        let mut params: Vec<(&str, String)> =
            vec![("deleted", (query.status == Status::Deleted).to_string())];
        if !query.labels.is_empty() {
            let filter: Vec<String> = query.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            params.push(("label", filter.join(",")));
        }
        params.extend(query.prefix.clone().map(|p| ("prefix", p)));
        params.extend(query.after.clone().map(|a| ("after", a)));
        params.extend(limit.map(|l| ("limit", l.to_string())));
        let response = self.send(Method::GET, self.url(&["secrets"]), &params, None)?;
        let next = response
            .headers()
            .get(NEXT_AFTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let docs: Value = self
            .runtime
            .block_on(async { response.json().await })
            .map_err(not_json)?;
        Ok((Self::docs(docs), next))
    }

    pub fn history(&self, name: &str) -> Result<Vec<Value>> {
        Ok(Self::docs(self.call(
            Method::GET,
            &["history", name],
            &(),
            None,
        )?))
    }

    /// The entries `filter` keeps, handed to `each` as pages arrive; without a limit or tail,
    /// every one, a page at a time. Returns the last seq shown.
    pub fn log(&self, filter: &LogFilter, each: &mut dyn FnMut(&Value)) -> Result<Option<u64>> {
        const PAGE: usize = 1000;
        let paging = filter.limit.is_none() && filter.tail.is_none();
        let mut page = filter.clone();
        if paging {
            page.after_seq = Some(filter.after_seq.unwrap_or(0));
            page.limit = Some(PAGE);
        }
        let mut last = None;
        loop {
            let docs = Self::docs(self.call(Method::GET, &["log"], &page, None)?);
            docs.iter().for_each(&mut *each);
            last = docs.last().and_then(|e| e["seq"].as_u64()).or(last);
            if !paging || docs.len() < PAGE {
                return Ok(last);
            }
            page.after_seq = last;
        }
    }

    /// Follow the audit log from `after`, calling `each` per entry, until the connection ends.
    pub fn follow_log(
        &self,
        filter: &LogFilter,
        after: Option<u64>,
        each: &mut dyn FnMut(Value),
    ) -> Result<()> {
        let filter = LogFilter {
            after_seq: after.or(filter.after_seq),
            limit: None,
            tail: None,
            ..filter.clone()
        };
        let mut response = self.send(Method::GET, self.url(&["log", "stream"]), &filter, None)?;
        let mut pending = Vec::new();
        while let Some(chunk) = self
            .runtime
            .block_on(async { response.chunk().await })
            .map_err(|e| Error::Remote {
                class: ErrorClass::Unavailable,
                message: format!("the server's stream broke off: {e}"),
            })?
        {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(doc) = serde_json::from_slice(&line) {
                    each(doc);
                }
            }
        }
        Ok(())
    }

    pub fn access_log(&self, filter: &AccessFilter) -> Result<Vec<Value>> {
        Ok(Self::docs(self.call(
            Method::GET,
            &["access-log"],
            filter,
            None,
        )?))
    }

    pub fn get(&self, segments: &[&str]) -> Result<Value> {
        self.call(Method::GET, segments, &(), None)
    }

    pub fn post(&self, segments: &[&str], body: Value) -> Result<Value> {
        self.call(Method::POST, segments, &(), Some(body))
    }

    pub fn put(&self, segments: &[&str], body: Value) -> Result<Value> {
        self.call(Method::PUT, segments, &(), Some(body))
    }

    pub fn delete(&self, segments: &[&str]) -> Result<Value> {
        self.call(Method::DELETE, segments, &(), None)
    }
}
