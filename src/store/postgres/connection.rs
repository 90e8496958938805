//! Reaching the database: the checked `postgres://` URL with its password from the
//! environment or the password file, TLS, blocking calls over the async driver, the LISTEN that
//! wakes projectors, and the driver's errors as the library's.

use super::*;

/// A `postgres://` ledger URL, checked: no password in it, every option one the driver knows.
#[derive(Clone)]
pub struct PgUrl {
    url: String,
    config: tokio_postgres::Config,
}

impl PartialEq for PgUrl {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl Eq for PgUrl {}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl PgUrl {
    pub fn parse(url: &str) -> Result<PgUrl> {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| {
            Error::invalid(format!(
                "ledger URL is not a valid PostgreSQL URL ({e}); the form is postgres://USER@HOST:PORT/DATABASE?sslmode=require"
            ))
        })?;
        if config.get_password().is_some() {
            return Err(Error::invalid(
                "a ledger URL must not carry a password (it would be recorded and shown); remove it and set \
                 PGPASSWORD or use a password file (~/.pgpass or PGPASSFILE)",
            ));
        }
        // What the URL shows is where it connects: a parameter would override its user, host
        // or database behind the name that messages and the default key file use.
        let query = url.split_once('?').map_or("", |(_, q)| q);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            // Decoded as the driver decodes it (`db%6Eame` is `dbname`).
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let key = crate::sink::url::percent_decode(url, key)?;
            if ["user", "host", "hostaddr", "port", "dbname"].contains(&key.as_str()) {
                return Err(Error::invalid(format!(
                    "a ledger URL names its user, host, port and database in its place \
                     (postgres://USER@HOST:PORT/DATABASE), not with ?{key}=; move it there"
                )));
            }
        }
        Ok(PgUrl {
            url: url.to_owned(),
            config,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The driver's configuration with the defaults and the password libpq would use.
    fn config(&self) -> Result<tokio_postgres::Config> {
        let mut config = self.config.clone();
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if config.get_user().is_none() {
            let user = env("PGUSER").or_else(|| env("USER")).ok_or_else(|| {
                Error::invalid(
                    "the ledger URL names no user; put one in it (postgres://USER@HOST/DB) or set PGUSER",
                )
            })?;
            config.user(&user);
        }
        if config.get_hosts().is_empty() {
            config.host(env("PGHOST").unwrap_or_else(|| "localhost".into()));
        }
        if config.get_ports().is_empty() {
            if let Some(port) = env("PGPORT").and_then(|p| p.parse().ok()) {
                config.port(port);
            }
        }
        if config.get_dbname().is_none() {
            if let Some(db) = env("PGDATABASE") {
                config.dbname(&db);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        config.application_name("sledger");
        if let Some(password) = env("PGPASSWORD").or_else(|| password_file_entry(&config)) {
            config.password(password);
        }
        Ok(config)
    }

    pub(super) fn connect(&self) -> Result<Client> {
        let config = self.config()?;
        let has_password = config.get_password().is_some();
        // The driver's connect_timeout bounds only the socket's connect: a server that accepts
        // and never answers (stopped, overloaded) would hang every command without this.
        let limit = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(std::time::Duration::from_secs(10));
        match Client::connect(config, tls()?, limit) {
            Ok(Some(client)) => Ok(client),
            Ok(None) => Err(Error::LedgerDatabase {
                message: format!(
                    "cannot connect to {}: no answer within {limit:?} (connect_timeout=SECONDS in the URL sets it); \
                     is the database server up and reachable?",
                    self.url
                ),
                temporary: true,
            }),
            Err(e) if !has_password && e.to_string().starts_with("invalid configuration") => Err(Error::invalid(format!(
                "cannot connect to {}: the server asks for a password and none was found; set PGPASSWORD, or \
                 put it in ~/.pgpass or the file PGPASSFILE names (mode 0600: a file others may read is ignored)",
                self.url
            ))),
            Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => Err(Error::invalid(format!(
                "cannot connect to {}: the server refused the password; check PGPASSWORD or the password file \
                 (~/.pgpass or PGPASSFILE)",
                self.url
            ))),
            Err(e) => Err(self.failure("cannot connect to", e)),
        }
    }

    pub(super) fn failure(&self, doing: &str, e: tokio_postgres::Error) -> Error {
        let mut error = map_error(e);
        if let Error::LedgerDatabase { message, .. } = &mut error {
            *message = format!("{doing} {}: {message}", self.url);
        }
        error
    }
}

fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::invalid(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The password for `config` from the password file, as libpq reads it: `PGPASSFILE`, else
/// `~/.pgpass`; lines `host:port:database:user:password`, `*` matching anything, `\` escaping;
/// a file others may read is ignored (with a warning), as libpq does.
fn password_file_entry(config: &tokio_postgres::Config) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
    if crate::private_file::loose_mode(&path).ok()?.is_some() {
        tracing::warn!(file = %path.display(), "password file ignored: others may read it (chmod 0600 it)");
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = config.get_user().unwrap_or_default();
    let db = config.get_dbname().unwrap_or(user);
    let wanted = [host.as_str(), port.as_str(), db, user];
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let fields = split_pgpass(line);
            let matches = fields.len() == 5
                && fields[..4]
                    .iter()
                    .zip(wanted)
                    .all(|(field, want)| field == "*" || field == want);
            matches.then(|| fields[4].clone())
        })
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// Wait for a request on this thread. Store calls block their own thread on a reply (like
/// SQLite's calls), so they work from any thread, in an async runtime or not; the connection
/// itself runs on the library's I/O runtime ([`crate::blocking`]), never the caller's.
pub(super) fn wait<F: std::future::Future>(request: F) -> F::Output {
    futures::executor::block_on(request)
}

/// A connection with blocking calls (see [`wait`]).
pub(super) struct Client(pub(super) tokio_postgres::Client);

pub(super) type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;

impl Client {
    /// A connection, or `None` when the server did not finish the handshake within `limit`.
    pub(super) fn connect(
        config: tokio_postgres::Config,
        tls: tokio_postgres_rustls::MakeRustlsConnect,
        limit: std::time::Duration,
    ) -> PgResult<Option<Client>> {
        crate::blocking::run(async move {
            let Ok(connected) = tokio::time::timeout(limit, config.connect(tls)).await else {
                return Ok(None);
            };
            let (client, connection) = connected?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "a PostgreSQL connection ended");
                }
            });
            Ok(Some(Client(client)))
        })
    }

    pub(super) fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    pub(super) fn batch_execute(&self, sql: &str) -> PgResult<()> {
        wait(self.0.batch_execute(sql))
    }

    pub(super) fn prepare(&self, sql: &str) -> PgResult<Statement> {
        wait(self.0.prepare(sql))
    }

    pub(super) fn query<T: ?Sized + ToStatement>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> PgResult<Vec<Row>> {
        wait(self.0.query(statement, params))
    }

    pub(super) fn query_one<T: ?Sized + ToStatement>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> PgResult<Row> {
        wait(self.0.query_one(statement, params))
    }

    /// Whether the database holds a sledger ledger's schema.
    pub(super) fn has_ledger(&self) -> PgResult<bool> {
        self.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'sledger')",
            &[],
        )?
        .try_get(0)
    }
}

/// A counter that moves whenever any connection commits an append to the ledger at `url`
/// (and when the listening connection was lost and found again, since appends may have gone
/// unheard meanwhile). The listener runs on the library's I/O runtime until every receiver
/// is dropped.
pub fn watch_appends(url: &PgUrl) -> Result<tokio::sync::watch::Receiver<u64>> {
    let (config, tls) = (url.config()?, tls()?);
    let (signal, appended) = tokio::sync::watch::channel(0u64);
    crate::blocking::runtime().spawn(async move {
        while !signal.is_closed() {
            if let Err(e) = listen(&config, tls.clone(), &signal).await {
                tracing::debug!(error = %e, "the append listener lost its connection");
            }
            signal.send_modify(|n| *n += 1);
            tokio::select! {
                _ = signal.closed() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    });
    Ok(appended)
}

async fn listen(
    config: &tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    signal: &tokio::sync::watch::Sender<u64>,
) -> PgResult<()> {
    use futures::StreamExt;
    let (client, mut connection) = config.connect(tls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = format!("LISTEN {APPENDED_CHANNEL}");
    let listening = client.batch_execute(&listen);
    tokio::pin!(listening);
    let mut listened = false;
    loop {
        tokio::select! {
            done = &mut listening, if !listened => {
                done?;
                listened = true;
                // An append committed while LISTEN was on its way was not heard: whoever
                // waits looks at the head again, now that no later one can be missed.
                signal.send_modify(|n| *n += 1);
            }
            message = messages.next() => match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => signal.send_modify(|n| *n += 1),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            _ = signal.closed() => return Ok(()),
        }
    }
}

/// PostgreSQL's errors as the library's: lock waits and serialization failures are `Busy`,
/// a lost connection is temporary, everything else internal.
fn map_error(e: tokio_postgres::Error) -> Error {
    if let Some(code) = e.code() {
        if [
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ]
        .contains(code)
        {
            return Error::Busy;
        }
    }
    let temporary = e.is_closed()
        || e.code().is_some_and(|c| {
            [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
            ]
            .contains(c)
        })
        || (e.code().is_none() && e.as_db_error().is_none());
    let message = match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    };
    Error::LedgerDatabase { message, temporary }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        map_error(e)
    }
}
