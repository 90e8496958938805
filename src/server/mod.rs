//! `sledger serve` (ARCHITECTURE.md, server): the HTTP API over one [`LedgerHandle`], with
//! token authentication, roles on name patterns, a fail-closed access log, limits, metrics,
//! and every sink's projector running in the same process.
//!
//! The routes live in [`routes`], each declared once in [`routes::ROUTES`] with the action it
//! needs; the OpenAPI document at `/v1/openapi.json` is generated from that same table.

mod auth;
mod body;
mod connection;
mod metrics;
pub mod routes;
mod sink_policy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use crate::error::{Error, ErrorClass, Result};
use crate::project::service::{self, FollowOptions, ProjectorEvent};
use crate::project::PrimaryWait;
use crate::LedgerHandle;

pub use crate::keys::KeyReloader;
pub use auth::RateLimit;

/// How often the server looks whether `sledger key rotate`, run beside it, replaced the
/// ledger's master key.
const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key; without them only loopback is served.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Largest request body; larger ones get 413 and change nothing.
    pub body_limit: usize,
    /// Longest a request may take, from its headers to its response.
    pub request_timeout: Duration,
    /// Longest a client may take to send its request headers.
    pub header_timeout: Duration,
    /// Requests served at once; more wait.
    pub max_in_flight: usize,
    /// Connections open at once; more are closed as they come.
    pub max_connections: usize,
    /// Longest a connection may stay silent (no byte either way) once its first request
    /// began: keep-alive connections after a response included. Open log streams send a blank
    /// line a third of it apart. Longer than `request_timeout`, so no request is cut by it.
    pub idle_timeout: Duration,
    /// Requests per second (and burst) per token.
    pub rate_limit: RateLimit,
    /// The projectors that run in the server.
    pub follow: FollowOptions,
    /// Where to find the master key after a rotation by another process. Without it, a
    /// rotated key is reported in the log and the server must be restarted with the new one.
    pub reload_key: Option<KeyReloader>,
    /// The directory (or a folder under it) that sqlite sinks attached through the API must
    /// be in. `None`: the ledger file's directory; a PostgreSQL ledger then takes no sqlite
    /// sink over the API. A token may not make the server write files anywhere it can.
    pub sink_dir: Option<PathBuf>,
    /// `HOST` or `HOST:PORT`: where a Vault, or a cloud sink's `endpoint=`, attached through
    /// the API may be. The clouds' own endpoints need no entry; a Vault always does.
    pub sink_hosts: Vec<String>,
}

impl ServeOptions {
    pub fn new(listen: SocketAddr) -> Self {
        ServeOptions {
            listen,
            tls: None,
            body_limit: 1 << 20,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_in_flight: 512,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            rate_limit: RateLimit {
                per_second: 1000.0,
                burst: 2000.0,
            },
            follow: FollowOptions::default(),
            reload_key: None,
            sink_dir: None,
            sink_hosts: Vec::new(),
        }
    }

    /// Refuse options the server cannot run safely with: plain HTTP off loopback (tokens and
    /// values would cross the network in clear text), an idle timeout that would cut requests.
    pub fn check(&self) -> Result<()> {
        if self.idle_timeout <= self.request_timeout {
            return Err(Error::invalid(format!(
                "--idle-timeout ({:?}) must be longer than --request-timeout ({:?}), or it would cut requests short",
                self.idle_timeout, self.request_timeout
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::invalid("--max-connections must be at least 1"));
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(Error::invalid(format!(
                "refusing to serve plain HTTP on {}: tokens and secret values would cross the network unencrypted; \
                 pass --tls-cert and --tls-key, or listen on a loopback address (127.0.0.1:PORT)",
                self.listen
            )));
        }
        Ok(())
    }

    /// [`ServeOptions::sink_dir`] as a path without symlinks, or the ledger file's directory.
    fn sink_dir(&self, ledger: &crate::store::Location) -> Result<Option<PathBuf>> {
        let dir = match (&self.sink_dir, ledger) {
            (Some(dir), _) => dir.clone(),
            (None, crate::store::Location::File(path)) => match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                _ => PathBuf::from("."),
            },
            #[cfg(feature = "postgres")]
            (None, crate::store::Location::Postgres(_)) => return Ok(None),
        };
        dir.canonicalize().map(Some).map_err(|e| {
            Error::invalid(format!(
                "the sink directory {} cannot be used ({e}); pass --sink-dir with an existing directory",
                dir.display()
            ))
        })
    }
}

/// What the handlers share.
pub(crate) struct AppState {
    pub handle: LedgerHandle,
    pub auth: auth::Auth,
    pub metrics: metrics::Metrics,
    /// Each sink's checkpoint as its projector reports it, for writes that wait for the primary.
    pub checkpoints: watch::Sender<BTreeMap<String, u64>>,
    /// Turns true when the server is asked to stop: responses that never end on their own
    /// (`/v1/log/stream`) end then, so they do not hold the shutdown for its whole grace.
    pub stopping: watch::Sender<bool>,
    /// Which sinks a token may attach.
    pub sink_policy: sink_policy::SinkPolicy,
    /// How often an open log stream with nothing to send sends a blank line, so the
    /// connection is never silent for [`ServeOptions::idle_timeout`].
    pub heartbeat: Duration,
}

impl AppState {
    /// Wait up to `wait` for the primary sink to apply the event at `seq` (its own event, not
    /// whatever others appended since), then report the primary's state, with the `written`
    /// secrets it did not take ([`crate::project::shadowed_writes`]). `None` without a
    /// primary.
    pub async fn wait_for_primary(
        &self,
        seq: u64,
        wait: Duration,
        written: Vec<crate::ledger::Outcome>,
    ) -> Result<Option<PrimaryWait>> {
        let Some((name, checkpoint)) = self
            .handle
            .read(|l| {
                match l
                    .sinks()?
                    .into_values()
                    .find(|s| s.role == crate::event::SinkRole::Primary)
                {
                    Some(primary) => Ok(Some((primary.name.clone(), l.checkpoint(&primary.name)?))),
                    None => Ok(None),
                }
            })
            .await?
        else {
            return Ok(None);
        };
        if checkpoint < seq {
            let mut reported = self.checkpoints.subscribe();
            let applied = reported.wait_for(|c| c.get(&name).is_some_and(|c| *c >= seq));
            let _ = tokio::time::timeout(wait, applied).await;
        }
        let runtime = tokio::runtime::Handle::current();
        let primary = self
            .handle
            .read(move |l| {
                let progress = l.checkpoint(&name)?;
                let status = l.sink_status()?.into_iter().find(|s| s.name == name);
                let (read_back, unread) = if progress >= seq {
                    runtime.block_on(crate::project::shadowed_in(l, &name, &written))
                } else {
                    (Default::default(), None)
                };
                Ok(PrimaryWait {
                    shadowed: read_back.shadowed,
                    stale: read_back.stale,
                    applied: progress >= seq,
                    lag: seq.saturating_sub(progress),
                    parked: status.as_ref().map_or(0, |s| s.parked),
                    error: if progress >= seq {
                        unread
                    } else {
                        status.and_then(|s| s.last_error)
                    },
                    name,
                })
            })
            .await?;
        Ok(Some(primary))
    }
}

/// Serve until `shutdown` resolves: stop accepting, finish requests in flight, let the
/// projectors finish their batch, flush the access log (the writer thread drains its queue),
/// and return.
pub async fn serve(
    handle: LedgerHandle,
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr) + Send,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    options.check()?;
    let sink_policy = sink_policy::SinkPolicy {
        dir: options.sink_dir(handle.location())?,
        hosts: options
            .sink_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    };
    let state = Arc::new(AppState {
        auth: auth::Auth::load(&handle, options.rate_limit).await?,
        metrics: metrics::Metrics::default(),
        handle: handle.clone(),
        checkpoints: watch::Sender::new(BTreeMap::new()),
        stopping: watch::Sender::new(false),
        sink_policy,
        heartbeat: options.idle_timeout / 3,
    });
    let app = routes::router(state.clone(), &options);

    // Bound before anything starts, so a taken port is the only thing reported.
    let bind_error = |e: std::io::Error| Error::io(format!("cannot listen on {}", options.listen), e);
    let listener = std::net::TcpListener::bind(options.listen).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;

    let (stop_projectors, stop) = watch::channel(false);
    let projectors = tokio::spawn(project(
        state.clone(),
        options.follow.clone(),
        options.reload_key.clone(),
        stop,
    ));

    let server_handle = axum_server::Handle::new();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let guard = connection::GuardedAcceptor::new(
        options.max_connections,
        options.header_timeout,
        options.idle_timeout,
    );
    let served = {
        let server_handle = server_handle.clone();
        let (header_timeout, tls) = (options.header_timeout, options.tls.clone());
        async move {
            match &tls {
                Some((cert, key)) => {
                    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                        .await
                        .map_err(|e| {
                            Error::invalid(format!(
                                "cannot use --tls-cert {} / --tls-key {}: {e}",
                                cert.display(),
                                key.display()
                            ))
                        })?;
                    let tls = axum_server::tls_rustls::RustlsAcceptor::new(config)
                        .handshake_timeout(header_timeout)
                        .acceptor(guard);
                    let mut server = axum_server::from_tcp(listener)
                        .acceptor(tls)
                        .handle(server_handle);
                    server
                        .http_builder()
                        .http1()
                        .timer(hyper_util_timer())
                        .header_read_timeout(header_timeout);
                    server.serve(service).await
                }
                None => {
                    let mut server = axum_server::from_tcp(listener)
                        .acceptor(guard)
                        .handle(server_handle);
                    server
                        .http_builder()
                        .http1()
                        .timer(hyper_util_timer())
                        .header_read_timeout(header_timeout);
                    server.serve(service).await
                }
            }
            .map_err(|e| Error::io("the server stopped", e))
        }
    };
    ready(local);
    tracing::info!(address = %local, tls = options.tls.is_some(), "serving");
    let graceful = {
        let (server_handle, state) = (server_handle.clone(), state.clone());
        let grace = options.request_timeout;
        async move {
            shutdown.await;
            tracing::info!("shutting down: finishing requests in flight");
            state.stopping.send_replace(true);
            server_handle.graceful_shutdown(Some(grace));
        }
    };
    let (result, ()) = tokio::join!(served, graceful);
    let _ = stop_projectors.send(true);
    match projectors.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "projectors stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "projector task failed"),
        Ok(Ok(())) => {}
    }
    handle.close();
    result
}

/// Run every sink's projector until `stop`, and follow a rotation of the master key by another
/// process: the handle and the projectors go on with the new key (they would otherwise fail
/// every write and every projection until a restart).
async fn project(
    state: Arc<AppState>,
    follow: FollowOptions,
    reload_key: Option<KeyReloader>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let location = state.handle.location().clone();
    let mut told_to_restart = false;
    loop {
        let (stop_these, these_stop) = watch::channel(false);
        let (reporting, master) = (state.clone(), state.handle.master_key());
        let running = service::follow(
            &location,
            &master,
            follow.clone(),
            Some(state.handle.subscribe()),
            these_stop,
            move |event| {
                reporting.metrics.projector(&event);
                match &event {
                    // The key opened this ledger when the server started: another process
                    // rotated it, and the key check below loads the new one within a second.
                    ProjectorEvent::Failed {
                        sink,
                        error: Error::WrongKey | Error::KeyRotated,
                    } => tracing::info!(sink = %sink, "projector waits for the rotated master key"),
                    ProjectorEvent::Failed { sink, error } => {
                        tracing::warn!(sink = %sink, error = %error, "projector failed; retrying")
                    }
                    ProjectorEvent::Projected { sink, report } => reporting.checkpoints.send_modify(|c| {
                        let at = c.entry(sink.clone()).or_default();
                        *at = (*at).max(report.checkpoint);
                    }),
                }
            },
        );
        tokio::pin!(running);
        loop {
            tokio::select! {
                result = &mut running => return result,
                _ = stop.changed() => {
                    let _ = stop_these.send(true);
                    return running.await;
                }
                _ = tokio::time::sleep(KEY_CHECK_INTERVAL) => {
                    if follow_key_rotation(&state.handle, reload_key.as_ref(), &mut told_to_restart).await {
                        break;
                    }
                }
            }
        }
        // Projectors opened with the replaced key: start them again with the new one.
        let _ = stop_these.send(true);
        running.await?;
    }
}

/// Whether the ledger's master key was rotated since the handle was given its key, and the
/// handle now has the new one. Without a way to load the new key, says once that the server
/// must be restarted (`told_to_restart`).
async fn follow_key_rotation(
    handle: &LedgerHandle,
    reload_key: Option<&KeyReloader>,
    told_to_restart: &mut bool,
) -> bool {
    let current = handle.master_key();
    // One of the handle's read connections: no new connection a second. A connection that
    // had to be opened for it is opened with the current key, which fails if that is stale.
    let still_current = match handle.read(move |ledger| ledger.key_matches(&current)).await {
        Err(Error::WrongKey | Error::KeyRotated) => Ok(false),
        checked => checked,
    };
    if !matches!(still_current, Ok(false)) {
        return false;
    }
    let Some(reload) = reload_key else {
        if !std::mem::replace(told_to_restart, true) {
            tracing::error!(
                "the master key was rotated by another process: restart the server with the new key \
                 (writes fail until then)"
            );
        }
        return false;
    };
    let Some(new) = reload.reload_after_rotation().await else {
        return false;
    };
    match handle.rekey(new).await {
        Ok(()) => {
            tracing::info!("the master key was rotated by another process: now serving with the new key");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "the master key was rotated; the key loaded does not open the ledger yet");
            false
        }
    }
}

fn hyper_util_timer() -> hyper_util::rt::TokioTimer {
    hyper_util::rt::TokioTimer::new()
}

/// The API's error body: `{"error": {"code", "message"}}`, with the status from the class.
pub(crate) struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The HTTP status and stable code for an error class.
pub fn status_of(error: &Error) -> (StatusCode, &'static str) {
    match error {
        Error::ValueTooLarge { .. } | Error::TooLargeForSink { .. } | Error::SinkLimit { .. } => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        }
        Error::Sink { temporary: true, .. } => return (StatusCode::SERVICE_UNAVAILABLE, "sink_unavailable"),
        Error::AccessLogUnavailable { .. } => return (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
        _ => {}
    }
    match error.class() {
        ErrorClass::Invalid => (StatusCode::BAD_REQUEST, "invalid"),
        ErrorClass::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorClass::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
        ErrorClass::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        ErrorClass::Denied => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorClass::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ErrorClass::Backend => (StatusCode::UNPROCESSABLE_ENTITY, "backend_refused"),
        ErrorClass::OutOfSync => (StatusCode::CONFLICT, "out_of_sync"),
        // The codes tell a remote CLI which exit code to use, as a local one would.
        ErrorClass::Integrity => (StatusCode::INTERNAL_SERVER_ERROR, "integrity"),
        ErrorClass::Key => (StatusCode::INTERNAL_SERVER_ERROR, "key"),
        ErrorClass::Incompatible => (StatusCode::INTERNAL_SERVER_ERROR, "incompatible"),
        ErrorClass::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = status_of(&self.0);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.0, "request failed");
        }
        error_response(status, code, &self.0.to_string())
    }
}
