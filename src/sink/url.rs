//! Sink URLs: the one place they are read. Each scheme's own part (location, parameters) is
//! parsed by its backend's module, found through [`SCHEMES`]; what every scheme shares
//! (`prefix`, `max_concurrency`, `max_rps`, refusing credentials) is parsed here.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "aws")]
use super::aws;
#[cfg(feature = "azure")]
use super::azure;
#[cfg(feature = "gcp")]
use super::gcp;
#[cfg(feature = "vault")]
use super::vault;
use super::{
    exec, layer, memory, sqlite, Capabilities, ExecSink, ForeignSecrets, MemorySink, Sink, SqliteSink,
    DEFAULT_PREFIX,
};
use crate::crypto::SinkSealKey;
use crate::error::{Error, Result};

/// A URL scheme and the parser of its own part.
pub(crate) struct Scheme {
    pub name: &'static str,
    pub parse: fn(&mut UrlParts<'_>) -> Result<Backend>,
}

/// Every scheme this build knows; a cloud sink left out of the build says which feature
/// brings it.
pub(crate) const SCHEMES: &[Scheme] = &[
    Scheme {
        name: "memory",
        parse: memory::from_url,
    },
    Scheme {
        name: "sqlite",
        parse: sqlite::from_url,
    },
    Scheme {
        name: "exec",
        parse: exec::from_url,
    },
    #[cfg(feature = "vault")]
    Scheme {
        name: "vault",
        parse: vault::from_url,
    },
    #[cfg(not(feature = "vault"))]
    Scheme {
        name: "vault",
        parse: |p| Err(p.bad("this build has no vault sink (cargo feature `vault`)")),
    },
    #[cfg(feature = "aws")]
    Scheme {
        name: "aws-sm",
        parse: aws::from_url,
    },
    #[cfg(not(feature = "aws"))]
    Scheme {
        name: "aws-sm",
        parse: |p| Err(p.bad("this build has no aws-sm sink (cargo feature `aws`)")),
    },
    #[cfg(feature = "gcp")]
    Scheme {
        name: "gcp-sm",
        parse: gcp::from_url,
    },
    #[cfg(not(feature = "gcp"))]
    Scheme {
        name: "gcp-sm",
        parse: |p| Err(p.bad("this build has no gcp-sm sink (cargo feature `gcp`)")),
    },
    #[cfg(feature = "azure")]
    Scheme {
        name: "azure-kv",
        parse: azure::from_url,
    },
    #[cfg(not(feature = "azure"))]
    Scheme {
        name: "azure-kv",
        parse: |p| Err(p.bad("this build has no azure-kv sink (cargo feature `azure`)")),
    },
];

/// A URL being parsed: a scheme's parser takes the parameters it knows; any left over are
/// refused as unknown.
pub(crate) struct UrlParts<'a> {
    pub url: &'a str,
    /// What follows `SCHEME://`, up to the query.
    pub location: &'a str,
    params: Vec<(String, String)>,
    pub prefix: String,
    pub max_concurrency: Option<usize>,
}

impl UrlParts<'_> {
    /// Remove parameter `key`; given more than once, the last one counts.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.take_all(key).pop()
    }

    /// Every value of a repeatable parameter, in order.
    pub fn take_all(&mut self, key: &str) -> Vec<String> {
        let (taken, rest) = std::mem::take(&mut self.params)
            .into_iter()
            .partition(|(k, _)| k == key);
        self.params = rest;
        taken.into_iter().map(|(_, v): (String, String)| v).collect()
    }

    /// A numeric parameter within `range`; `Err(())` if present but not such a number.
    pub fn take_number<T>(
        &mut self,
        key: &str,
        range: RangeInclusive<T>,
    ) -> std::result::Result<Option<T>, ()>
    where
        T: std::str::FromStr + PartialOrd,
    {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .ok()
                .filter(|n| range.contains(n))
                .map(Some)
                .ok_or(()),
        }
    }

    /// `KEY=NAME` naming the environment variable a credential is read from when the sink
    /// connects: the URL (and so the ledger) records the name, never the value.
    #[cfg(any(feature = "aws", feature = "azure", feature = "vault"))]
    pub fn take_env_name(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(name) => self.check_env_name(key, &name).map(|()| Some(name)),
        }
    }

    /// `name`, given as `key=`, must be an environment variable's name, and not one holding
    /// sledger's own master key.
    pub fn check_env_name(&self, key: &str, name: &str) -> Result<()> {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(self.bad(format!(
                "{key}= takes the name of an environment variable (letters, digits and _), not a value"
            )));
        }
        if name == crate::crypto::MASTER_KEY_ENV {
            return Err(self.bad(format!(
                "{key}={name} would hand sledger's master key to a backend; it is never passed on"
            )));
        }
        Ok(())
    }

    /// `endpoint=`: an https URL, or plain http to this machine only (an emulator): anywhere
    /// else, credentials and values would cross the network in the clear.
    #[cfg(any(feature = "aws", feature = "gcp"))]
    pub fn take_endpoint(&mut self) -> Result<Option<String>> {
        match self.take("endpoint") {
            Some(v) if v.starts_with("https://") => Ok(Some(v)),
            Some(v) => match v.strip_prefix("http://") {
                Some(rest) if is_loopback(rest.split('/').next().unwrap_or(rest)) => Ok(Some(v)),
                Some(_) => Err(self
                    .bad("a plain http:// endpoint is allowed only on loopback (an emulator); use https://")),
                None => Err(self.bad("endpoint must be an http:// or https:// URL")),
            },
            None => Ok(None),
        }
    }

    /// The location as an absolute path (`SCHEME:///absolute/path`).
    pub fn absolute_path(&self, scheme: &str) -> Result<PathBuf> {
        if !self.location.starts_with('/') || self.location.len() < 2 {
            return Err(self.bad(format!("expected an absolute path: {scheme}:///absolute/path")));
        }
        Ok(PathBuf::from(percent_decode(self.url, self.location)?))
    }

    /// The prefix, checked against a backend's object names: only the characters `allowed`
    /// accepts (`rule` says which in words), and short enough that prefix + secret id fits
    /// `max_name_chars`.
    #[cfg(any(feature = "gcp", feature = "azure"))]
    pub fn prefix_within(
        &self,
        service: &str,
        allowed: impl Fn(char) -> bool,
        rule: &str,
        max_name_chars: usize,
    ) -> Result<String> {
        if !self.prefix.chars().all(allowed) {
            return Err(self.bad(format!("a {service} prefix may hold only {rule}")));
        }
        let longest = max_name_chars - crate::SecretId::nil().to_string().len();
        if self.prefix.len() > longest {
            return Err(self.bad(format!(
                "{service} names hold {max_name_chars} characters, so the prefix may have at most {longest}"
            )));
        }
        Ok(self.prefix.clone())
    }

    pub fn concurrency(&self, default: usize) -> usize {
        self.max_concurrency.unwrap_or(default)
    }

    pub fn bad(&self, why: impl fmt::Display) -> Error {
        bad_url(self.url, why)
    }
}

/// A parsed sink URL: the backend and how hard any sledger process may drive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkUrl {
    pub backend: Backend,
    /// `max_rps=N`: at most N sink operations per second from one process (the backend's quota).
    pub max_rps: Option<u32>,
}

/// Where a sink's objects live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Memory {
        store: String,
        prefix: String,
        max_concurrency: usize,
    },
    Sqlite {
        path: PathBuf,
        prefix: String,
        max_concurrency: usize,
    },
    Exec {
        program: PathBuf,
        args: Vec<String>,
        /// Environment variables the plug-in gets besides PATH, HOME and LANG (names only).
        env: Vec<String>,
        prefix: String,
        max_concurrency: usize,
    },
    #[cfg(feature = "vault")]
    Vault(vault::VaultConfig),
    #[cfg(feature = "aws")]
    Aws(aws::AwsConfig),
    #[cfg(feature = "gcp")]
    Gcp(gcp::GcpConfig),
    #[cfg(feature = "azure")]
    Azure(azure::AzureConfig),
}

impl Backend {
    /// A memory sink lives inside one process: useless to the next command or to a server's
    /// clients.
    pub fn is_memory(&self) -> bool {
        matches!(self, Backend::Memory { .. })
    }
}

/// The credential in the environment variable `var`, which a `kind` sink's URL names (as
/// `token_env=`, `client_secret_env=`, …). Unset or empty is an error naming the variable.
#[cfg_attr(
    not(any(feature = "aws", feature = "azure", feature = "vault")),
    allow(dead_code)
)]
pub(crate) fn credential_from_env(kind: &str, var: &str) -> Result<zeroize::Zeroizing<String>> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Ok(zeroize::Zeroizing::new(value)),
        _ => Err(Error::sink(
            kind,
            format!("${var}, named by this sink's URL, is not set"),
            false,
        )),
    }
}

/// The contents of a credential file a sink URL names (`token_file=`, `client_certificate=`),
/// refused if group or others may read it, as ssh refuses a loose key. Errors name the file,
/// never its text.
#[cfg(any(feature = "azure", feature = "vault"))]
pub(crate) fn private_credential_file(
    kind: &str,
    path: &std::path::Path,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let unusable = |why: String| Error::sink(kind, format!("{}: {why}", path.display()), false);
    let loose =
        crate::private_file::loose_mode(path).map_err(|e| unusable(format!("cannot read it ({e})")))?;
    if let Some(mode) = loose {
        return Err(unusable(format!(
            "it holds a credential and may be read by others (mode {mode:o}); `chmod 600` it"
        )));
    }
    std::fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| unusable(format!("cannot read it ({e})")))
}

/// Whether `host` (`HOST`, `HOST:PORT`, `[V6]:PORT`) is this machine: the only place a sink
/// may be reached without TLS (a dev server, an emulator).
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure", feature = "vault"))]
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn bad_url(url: &str, why: impl fmt::Display) -> Error {
    Error::InvalidInput(format!("invalid sink URL {:?}: {why}", redacted(url)))
}

/// Query parameters whose values are credentials: refused, and never echoed.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "password",
    "secret",
    "secret_id",
    "secret-id",
    "access_key",
    "secret_key",
    "key",
    "credentials",
];

/// `url` with any user info and every parameter value other than `prefix`,
/// `max_concurrency` and `max_rps` replaced by `***`, so an error about a URL never repeats a credential,
/// whatever the parameter carrying it is called.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (location, query) = rest.split_once('?').map_or((rest, None), |(l, q)| (l, Some(q)));
    let location = match location.rsplit_once('@') {
        Some((_, host)) if !location.starts_with('/') => format!("***@{host}"),
        _ => location.to_owned(),
    };
    let mut out = if scheme.is_empty() {
        location
    } else {
        format!("{scheme}://{location}")
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if !matches!(k, "prefix" | "max_concurrency" | "max_rps") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// Whether a parameter value carries a credential: a URL with user info
/// (`https://KEY:SECRET@host`), or a plug-in argument that names one (`--token=…`, `--password`).
fn carries_credential(value: &str) -> bool {
    if let Some((_, rest)) = value.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return true;
        }
    }
    let Some(flag) = value.strip_prefix('-') else {
        return false;
    };
    let name = flag
        .trim_start_matches('-')
        .split('=')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
        .replace('-', "_");
    [
        "token",
        "password",
        "passwd",
        "secret",
        "credential",
        "api_key",
        "apikey",
        "access_key",
    ]
    .iter()
    .any(|word| name.contains(word))
        && !name.ends_with("_env")
        && !name.ends_with("_file")
}

const CREDENTIALS_HINT: &str = "credentials never go in a sink URL (it is recorded in the ledger); \
they come from the backend's own chain (environment, profile, instance identity) or from \
environment variables named in the sink configuration";

/// Split `a=b&c=d` into pairs, percent-decoding values.
fn query_pairs(url: &str, query: &str) -> Result<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((k.to_owned(), percent_decode(url, v)?))
        })
        .collect()
}

pub(crate) fn percent_decode(url: &str, s: &str) -> Result<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s.as_bytes()[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .ok_or_else(|| bad_url(url, "a % escape is cut short"))?;
                let byte = u8::from_str_radix(hex, 16)
                    .map_err(|_| bad_url(url, format!("%{hex} is not a valid escape")))?;
                out.push(byte);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad_url(url, "an escape does not decode to UTF-8"))
}

impl SinkUrl {
    /// The `sqlite://` URL of an absolute path, escaping what the parser would otherwise read
    /// as a query or an escape (`%`, `?`, `#`, `&`).
    pub fn sqlite_url(path: &Path) -> String {
        let mut url = String::from("sqlite://");
        for c in path.to_string_lossy().chars() {
            match c {
                '%' | '?' | '#' | '&' => url.push_str(&format!("%{:02X}", c as u32)),
                c => url.push(c),
            }
        }
        url
    }

    /// Parse and check a sink URL: the parts every scheme shares here, the rest by the
    /// scheme's own parser in its backend's module (see [`SCHEMES`]).
    pub fn parse(url: &str) -> Result<SinkUrl> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad_url(url, "expected SCHEME://…, e.g. sqlite:///var/lib/sledger/sink.db"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        // Network URLs name a host; file URLs (sqlite, exec) start with the path, where an
        // `@` is just a character. A password may hold `/`, so look at the whole location.
        if !location.starts_with('/') && location.contains('@') {
            return Err(bad_url(
                url,
                format!("it carries user:password@; {CREDENTIALS_HINT}"),
            ));
        }
        let params = query_pairs(url, query)?;
        if let Some((k, _)) = params
            .iter()
            .find(|(k, _)| SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()))
        {
            return Err(bad_url(
                url,
                format!("the {k}= parameter would put a credential in the ledger; {CREDENTIALS_HINT}"),
            ));
        }
        if let Some((k, _)) = params.iter().find(|(_, v)| carries_credential(v)) {
            return Err(bad_url(
                url,
                format!("the {k}= parameter carries a credential (user:password@ or a --token=-like flag); {CREDENTIALS_HINT}"),
            ));
        }
        let mut parts = UrlParts {
            url,
            location,
            params,
            prefix: DEFAULT_PREFIX.to_owned(),
            max_concurrency: None,
        };
        if let Some(prefix) = parts.take("prefix") {
            if prefix.is_empty()
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                return Err(parts.bad("prefix must be non-empty letters, digits and - _ . /"));
            }
            parts.prefix = prefix;
        }
        parts.max_concurrency = parts
            .take_number("max_concurrency", 1..=256usize)
            .map_err(|_| parts.bad("max_concurrency must be a number from 1 to 256"))?;
        let max_rps = parts
            .take_number("max_rps", 1..=100_000u32)
            .map_err(|_| parts.bad("max_rps must be a number from 1 to 100000"))?;
        let parse = SCHEMES
            .iter()
            .find(|s| s.name == scheme)
            .ok_or_else(|| {
                let known: Vec<&str> = SCHEMES.iter().map(|s| s.name).collect();
                bad_url(
                    url,
                    format!("unknown scheme {scheme:?}; known: {}", known.join(", ")),
                )
            })?
            .parse;
        let backend = parse(&mut parts)?;
        if let Some((other, _)) = parts.params.first() {
            return Err(bad_url(url, format!("unknown parameter {other:?}")));
        }
        Ok(SinkUrl { backend, max_rps })
    }

    /// Whether two URLs write the same objects: the same backend and prefix, whatever the
    /// spelling of the path or the tuning parameters (`max_concurrency`).
    pub fn same_objects(&self, other: &SinkUrl) -> bool {
        let canonical = |path: &Path| resolved_path(path).unwrap_or_else(|| path.to_path_buf());
        match (&self.backend, &other.backend) {
            (
                Backend::Memory {
                    store: a, prefix: pa, ..
                },
                Backend::Memory {
                    store: b, prefix: pb, ..
                },
            ) => a == b && pa == pb,
            (
                Backend::Sqlite {
                    path: a, prefix: pa, ..
                },
                Backend::Sqlite {
                    path: b, prefix: pb, ..
                },
            ) => canonical(a) == canonical(b) && pa == pb,
            (
                Backend::Exec {
                    program: a,
                    args: aa,
                    prefix: pa,
                    ..
                },
                Backend::Exec {
                    program: b,
                    args: ab,
                    prefix: pb,
                    ..
                },
            ) => canonical(a) == canonical(b) && aa == ab && pa == pb,
            #[cfg(feature = "vault")]
            (Backend::Vault(a), Backend::Vault(b)) => {
                let host = |c: &vault::VaultConfig| c.address.split_once("://").map(|(_, h)| h.to_owned());
                host(a) == host(b) && a.mount == b.mount && a.prefix == b.prefix
            }
            #[cfg(feature = "aws")]
            (Backend::Aws(a), Backend::Aws(b)) => {
                a.region == b.region && a.endpoint == b.endpoint && a.prefix == b.prefix
            }
            #[cfg(feature = "gcp")]
            (Backend::Gcp(a), Backend::Gcp(b)) => {
                a.project == b.project && a.endpoint == b.endpoint && a.prefix == b.prefix
            }
            #[cfg(feature = "azure")]
            (Backend::Azure(a), Backend::Azure(b)) => a.vault_host == b.vault_host && a.prefix == b.prefix,
            _ => false,
        }
    }

    /// Capabilities known from the URL alone (no connection), used to enforce limits before
    /// anything is appended.
    pub fn capabilities(&self) -> Capabilities {
        match &self.backend {
            // Local sinks take any size the ledger allows; cloud sinks bring their limits.
            Backend::Memory { max_concurrency, .. }
            | Backend::Sqlite { max_concurrency, .. }
            | Backend::Exec { max_concurrency, .. } => Capabilities::unlimited(*max_concurrency),
            #[cfg(feature = "vault")]
            Backend::Vault(config) => config.capabilities(),
            #[cfg(feature = "aws")]
            Backend::Aws(config) => config.capabilities(),
            #[cfg(feature = "gcp")]
            Backend::Gcp(config) => config.capabilities(),
            #[cfg(feature = "azure")]
            Backend::Azure(config) => config.capabilities(),
        }
    }

    /// The backend's own secrets, for adopting them (`import --from`).
    pub fn open_foreign(&self) -> Result<Arc<dyn ForeignSecrets>> {
        match &self.backend {
            #[cfg(feature = "vault")]
            Backend::Vault(config) => Ok(Arc::new(vault::VaultSink::new(config.clone()))),
            #[cfg(feature = "aws")]
            Backend::Aws(config) => Ok(Arc::new(aws::AwsSink::new(config.clone()))),
            #[cfg(feature = "gcp")]
            Backend::Gcp(config) => Ok(Arc::new(gcp::GcpSink::new(config.clone()))),
            #[cfg(feature = "azure")]
            Backend::Azure(config) => Ok(Arc::new(azure::AzureSink::new(config.clone()))),
            _ => Err(Error::InvalidInput(
                "import --from reads a vault://, aws-sm://, gcp-sm:// or azure-kv:// backend; \
                     sledger's own sinks are filled from a ledger with `sledger replay`"
                    .into(),
            )),
        }
    }

    /// The file of a sqlite sink, whose values only its seal key opens.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.backend {
            Backend::Sqlite { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Connect. `seal_key` seals values at rest in sinks that store them locally (sqlite).
    pub fn open(&self, seal_key: &SinkSealKey) -> Result<Arc<dyn Sink>> {
        let sink: Arc<dyn Sink> = match &self.backend {
            Backend::Memory {
                store,
                prefix,
                max_concurrency,
            } => Arc::new(MemorySink::named(store, prefix, *max_concurrency)),
            Backend::Sqlite {
                path,
                prefix,
                max_concurrency,
            } => Arc::new(SqliteSink::open(
                path,
                prefix,
                seal_key.clone(),
                *max_concurrency,
            )?),
            Backend::Exec {
                program,
                args,
                env,
                prefix,
                max_concurrency,
            } => Arc::new(ExecSink::new(program, args, env, prefix, *max_concurrency)),
            #[cfg(feature = "vault")]
            Backend::Vault(config) => Arc::new(vault::VaultSink::new(config.clone())),
            #[cfg(feature = "aws")]
            Backend::Aws(config) => Arc::new(aws::AwsSink::new(config.clone())),
            #[cfg(feature = "gcp")]
            Backend::Gcp(config) => Arc::new(gcp::GcpSink::new(config.clone())),
            #[cfg(feature = "azure")]
            Backend::Azure(config) => Arc::new(azure::AzureSink::new(config.clone())),
        };
        Ok(layer::Layers {
            max_rps: self.max_rps,
            ..Default::default()
        }
        .wrap(sink))
    }
}

/// Where `path` leads, symlinks followed: an existing file through every link to it, a file
/// still to be made by its folder (which must exist).
pub(crate) fn resolved_path(path: &Path) -> Option<PathBuf> {
    path.canonicalize().ok().or_else(|| {
        let folder = match path.parent()? {
            p if p.as_os_str().is_empty() => Path::new("."),
            p => p,
        };
        Some(folder.canonicalize().ok()?.join(path.file_name()?))
    })
}
