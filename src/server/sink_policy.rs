//! Which sinks a token may attach through the API (`POST /v1/sinks`, `POST /v1/migrate`).
//!
//! A sink receives every secret's values and is reached with the server's own credentials, so
//! a sink URL from a client must not make the server run a program, write a file where it
//! should not, read its own files or environment into a credential, or send a credential or a
//! value to a host its operator did not name. Whoever runs the server attaches anything else on
//! its host with `sledger sink add`, and the server picks it up.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sink::{Backend, SinkUrl};

/// What the operator allows (`sledger serve --sink-dir`, `--sink-host`).
#[derive(Debug, Clone, Default)]
pub(crate) struct SinkPolicy {
    /// The folder sqlite sink files must be in, symlinks resolved; `None`: no sqlite sink.
    pub dir: Option<PathBuf>,
    /// `HOST` (any port) or `HOST:PORT`, lowercase: where a Vault, or a cloud sink's
    /// `endpoint=`, may be.
    pub hosts: Vec<String>,
}

/// Hosts every Azure Key Vault has, in each Azure cloud: a vault there needs no `--sink-host`.
const KEY_VAULT_SUFFIXES: &[&str] = &[
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".vault.microsoftazure.de",
];

/// How the files sledger keeps beside a ledger end: a key and its replacement during a
/// rotation, locks, and SQLite's journals.
const OWN_FILE_ENDINGS: &[&str] = &[".key", ".new", ".lock", "-wal", "-shm", "-journal"];

impl SinkPolicy {
    /// Refuse `url` unless a token may attach it, saying why and what to do instead.
    pub fn check(&self, url: &str) -> Result<()> {
        let parsed = SinkUrl::parse(url)?;
        if let Some(parameter) = local_credential_parameter(url) {
            return Err(Error::invalid(format!(
                "a sink attached through the API takes its credentials from the server's own chain: \
                 `{parameter}=` would read the server's files or environment into a credential. \
                 Attach it on the server's host with `sledger sink add`, or leave `{parameter}=` out"
            )));
        }
        match parsed.backend {
            Backend::Memory { .. } => Err(Error::invalid(
                "a memory:// sink would live only inside the server process; use sqlite:///PATH or a cloud sink",
            )),
            Backend::Exec { .. } => Err(Error::invalid(
                "an exec:// sink runs its program on the server's host, as the server: attach it there with \
                 `sledger sink add` (the server picks it up), not through the API",
            )),
            Backend::Sqlite { path, .. } => self.check_file(&path),
            #[cfg(feature = "vault")]
            Backend::Vault(config) => self.check_host(&config.address),
            #[cfg(feature = "aws")]
            Backend::Aws(config) => config.endpoint.as_deref().map_or(Ok(()), |e| self.check_host(e)),
            #[cfg(feature = "gcp")]
            Backend::Gcp(config) => config.endpoint.as_deref().map_or(Ok(()), |e| self.check_host(e)),
            #[cfg(feature = "azure")]
            Backend::Azure(config) => {
                let host = config.vault_host.to_ascii_lowercase();
                let bare = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
                if KEY_VAULT_SUFFIXES.iter().any(|suffix| bare.ends_with(suffix)) {
                    Ok(())
                } else {
                    self.check_host(&host)
                }
            }
        }
    }

    fn check_file(&self, path: &Path) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Err(Error::invalid(
                "this server takes no sqlite sink through the API: its ledger is not a file, so it has no \
                 default sink directory; restart it with --sink-dir DIR, or attach the sink on its host with `sledger sink add`",
            ));
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if OWN_FILE_ENDINGS.iter().any(|ending| name.ends_with(ending)) {
            return Err(Error::invalid(format!(
                "{name:?} is named like a file sledger keeps beside a ledger (a key, a lock, an SQLite journal), \
                 which the ledger may replace or remove; give the sink file another name, e.g. NAME.sink.db"
            )));
        }
        if crate::sink::url::resolved_path(path).is_some_and(|file| file.starts_with(dir)) {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "sqlite sink files attached through the API must be in the server's sink directory {}; \
             {} is not (symlinks followed). Use a path in it, restart the server with --sink-dir, \
             or attach the sink on the server's host with `sledger sink add`",
            dir.display(),
            path.display()
        )))
    }

    /// `address`: `HOST[:PORT]` or a URL.
    fn check_host(&self, address: &str) -> Result<()> {
        let authority = address
            .split_once("://")
            .map_or(address, |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) && !host.ends_with(':') => host,
            _ => authority.as_str(),
        };
        if self
            .hosts
            .iter()
            .any(|allowed| *allowed == authority || *allowed == host)
        {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "a sink attached through the API may reach only the hosts the server allows: {authority} is not one \
             of them (the server would send it every secret's values and its own credentials). Restart the server \
             with --sink-host {authority}, or attach the sink on the server's host with `sledger sink add`"
        )))
    }
}

/// The first query parameter of `url` that names a file or an environment variable of the
/// server (`token_file=`, `access_key_env=`, `ca-file=`, `credentials_file=`, …).
fn local_credential_parameter(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .map(|pair| pair.split_once('=').map_or(pair, |(k, _)| k).to_ascii_lowercase())
        .find(|key| {
            key.ends_with("_env")
                || key.ends_with("_file")
                || key.ends_with("-file")
                || key == "client_certificate"
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_with_or_without_their_port() {
        let policy = SinkPolicy {
            dir: None,
            hosts: vec!["vault.internal".into(), "127.0.0.1:8200".into()],
        };
        assert!(policy.check_host("https://vault.internal:8200").is_ok());
        assert!(policy.check_host("VAULT.internal").is_ok());
        assert!(policy.check_host("http://127.0.0.1:8200/v1").is_ok());
        assert!(policy.check_host("http://127.0.0.1:8201").is_err());
        assert!(policy.check_host("https://vault.internal.evil.example").is_err());
        assert!(policy.check_host("https://evil.example/vault.internal").is_err());
    }

    #[test]
    fn parameters_naming_server_files_or_variables_are_found() {
        for url in [
            "vault://h:1/kv?token_file=/etc/k",
            "aws-sm://r?access_key_env=HOME",
            "vault://h:1/kv?ca-file=/x",
            "azure-kv://v?CLIENT_CERTIFICATE=/c",
        ] {
            assert!(local_credential_parameter(url).is_some(), "{url}");
        }
        assert_eq!(
            local_credential_parameter("aws-sm://r?prefix=a_file/&max_rps=3"),
            None
        );
    }
}
