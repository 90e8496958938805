//! The routes: one table ([`ROUTES`]) names each route's method, path, operation and the
//! action its caller's token must allow; the router, the authorization checks and the OpenAPI
//! document all come from it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::auth::{self, Caller, Refusal};
use super::body::JsonBody;
use super::{error_response, ApiError, AppState, ServeOptions};
use crate::access_log::AccessFilter;
use crate::access_log::AccessOutcome;
use crate::error::{Error, Result};
use crate::event::{Millis, Scope, SinkRole};
use crate::identity::{Action, Role};
use crate::ledger::ID_REF_PREFIX;
use crate::read::{read_latest, ReadFrom, Served};
use crate::replay::orchestrate;
use crate::validate::unique_keys;
use crate::{Command, Ledger, ListQuery, LogFilter, Outcome, ReadPoint, SecretValues, Status, ThroughHandle};

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    /// The name requests are recorded under in the access log and metrics.
    pub operation: &'static str,
    /// What the caller's token must allow; `None` for the public routes.
    pub action: Option<Action>,
    pub summary: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    operation: &'static str,
    action: Option<Action>,
    summary: &'static str,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        operation,
        action,
        summary,
    }
}

use Action::*;

mod logs;
mod replays;
mod secrets;
mod sinks;
mod tokens;

use logs::*;
use replays::*;
use secrets::*;
pub use secrets::{MAX_LIST_PAGE, NEXT_AFTER_HEADER};
use sinks::*;
use tokens::*;

/// Every route the server has.
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/healthz", "healthz", None, "The process is up."),
    route(
        "GET",
        "/readyz",
        "readyz",
        None,
        "The ledger is open and the primary sink reachable.",
    ),
    route("GET", "/metrics", "metrics", None, "Prometheus metrics."),
    route("GET", "/v1/openapi.json", "openapi", None, "This document."),
    route(
        "GET",
        "/v1/secrets",
        "secret.list",
        Some(ReadMeta),
        "List secrets the token's patterns match, in name order, a page at a time (label=K=V, \
         prefix=P, deleted=true, after=NAME, limit=N up to 1000); the sledger-next-after header \
         names where the next page starts.",
    ),
    route(
        "POST",
        "/v1/secrets",
        "secret.create",
        Some(Mutate),
        "Create a secret: {name, scope, labels, values}.",
    ),
    route(
        "GET",
        "/v1/secrets/{*name}",
        "secret.get",
        Some(ReadValue),
        "Read a secret's values (latest, version=N or at=RFC3339).",
    ),
    route(
        "PUT",
        "/v1/secrets/{*name}",
        "secret.put",
        Some(Mutate),
        "Create the secret or replace all its values and labels.",
    ),
    route(
        "PATCH",
        "/v1/secrets/{*name}",
        "secret.update",
        Some(Mutate),
        "Change some values or labels: {values, remove_keys, labels, remove_labels}.",
    ),
    route(
        "DELETE",
        "/v1/secrets/{*name}",
        "secret.delete",
        Some(Mutate),
        "Soft-delete a secret (undelete brings it back).",
    ),
    route(
        "POST",
        "/v1/undelete/{*name}",
        "secret.undelete",
        Some(Mutate),
        "Bring a deleted secret back.",
    ),
    route(
        "POST",
        "/v1/rename/{*name}",
        "secret.rename",
        Some(Mutate),
        "Rename a secret: {new_name}.",
    ),
    route(
        "POST",
        "/v1/purge/{*name}",
        "secret.purge",
        Some(Mutate),
        "Destroy every version of a secret for good.",
    ),
    route(
        "GET",
        "/v1/history/{*name}",
        "secret.history",
        Some(ReadMeta),
        "A secret's events, never its values.",
    ),
    route(
        "GET",
        "/v1/log",
        "log.query",
        Some(Audit),
        "The audit log (type, actor, secret, since, until; after_seq with limit for a forward page, or tail for the last N), at most 10 000 entries a request.",
    ),
    route(
        "GET",
        "/v1/log/stream",
        "log.stream",
        Some(Audit),
        "The audit log as it grows, one JSON document per line.",
    ),
    route(
        "GET",
        "/v1/access-log",
        "access_log.query",
        Some(Audit),
        "The access log: reads, denials, failed authentications.",
    ),
    route(
        "POST",
        "/v1/verify",
        "verify",
        Some(Audit),
        "Check the event chain, the derived state and the access log's chain.",
    ),
    route(
        "GET",
        "/v1/sinks",
        "sink.list",
        Some(Audit),
        "Attached sinks and their projection state.",
    ),
    route(
        "POST",
        "/v1/sinks",
        "sink.add",
        Some(Administer),
        "Attach a sink: {name, url, role}.",
    ),
    route(
        "POST",
        "/v1/sinks/{name}/promote",
        "sink.promote",
        Some(Administer),
        "Make a sink the primary.",
    ),
    route(
        "PUT",
        "/v1/sinks/{name}/role",
        "sink.set_role",
        Some(Administer),
        "Change a sink's role: {role}.",
    ),
    route(
        "DELETE",
        "/v1/sinks/{name}",
        "sink.remove",
        Some(Administer),
        "Detach a sink.",
    ),
    route(
        "POST",
        "/v1/sinks/{name}/check",
        "sink.check",
        Some(Administer),
        "Check that a sink's backend answers.",
    ),
    route(
        "POST",
        "/v1/sinks/{name}/retry",
        "sink.retry",
        Some(Administer),
        "Re-apply a sink's parked secrets.",
    ),
    route(
        "POST",
        "/v1/diff",
        "diff",
        Some(Administer),
        "What a sink lacks, holds stale or holds extra: {sink, seq | at}.",
    ),
    route(
        "POST",
        "/v1/reconcile",
        "reconcile",
        Some(Administer),
        "Make a sink match the ledger's head: {sink}.",
    ),
    route(
        "POST",
        "/v1/backup",
        "backup",
        Some(Administer),
        "Resync every backup sink: {dry_run, delete_secrets}.",
    ),
    route(
        "POST",
        "/v1/migrate",
        "migrate",
        Some(Administer),
        "Move the primary with no downtime: {to, name, delete_secrets, dry_run}.",
    ),
    route(
        "POST",
        "/v1/restore",
        "restore",
        Some(Administer),
        "Restore secrets to an earlier seq or time: {seq | at, secrets, dry_run}.",
    ),
    route(
        "GET",
        "/v1/tokens",
        "token.list",
        Some(Administer),
        "Every token issued (never the tokens themselves).",
    ),
    route(
        "POST",
        "/v1/tokens",
        "token.create",
        Some(Administer),
        "Issue a token: {name, role, patterns, expires_in_seconds}; it is shown once.",
    ),
    route(
        "DELETE",
        "/v1/tokens/{name}",
        "token.revoke",
        Some(Administer),
        "Revoke a token from its next request on.",
    ),
];

fn spec(operation: &str) -> &'static RouteSpec {
    ROUTES
        .iter()
        .find(|r| r.operation == operation)
        .expect("every handler's operation is in ROUTES")
}

type Shared = State<Arc<AppState>>;
type ApiResult<T = Response> = std::result::Result<T, ApiError>;

/// The router with every route, the authentication and metrics middleware, and the limits.
pub(crate) fn router(state: Arc<AppState>, options: &ServeOptions) -> Router {
    let api = Router::new()
        .route("/v1/secrets", get(list_secrets).post(create_secret))
        .route(
            "/v1/secrets/{*name}",
            get(get_secret)
                .put(put_secret)
                .patch(update_secret)
                .delete(delete_secret),
        )
        .route("/v1/undelete/{*name}", post(undelete_secret))
        .route("/v1/rename/{*name}", post(rename_secret))
        .route("/v1/purge/{*name}", post(purge_secret))
        .route("/v1/history/{*name}", get(history))
        .route("/v1/log", get(query_log))
        .route("/v1/log/stream", get(stream_log))
        .route("/v1/access-log", get(query_access_log))
        .route("/v1/verify", post(verify))
        .route("/v1/sinks", get(list_sinks).post(add_sink))
        .route("/v1/sinks/{name}/promote", post(promote_sink))
        .route("/v1/sinks/{name}/role", put(set_sink_role))
        .route("/v1/sinks/{name}", delete(remove_sink))
        .route("/v1/sinks/{name}/check", post(check_sink))
        .route("/v1/sinks/{name}/retry", post(retry_sink))
        .route("/v1/restore", post(restore))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{name}", delete(revoke_token))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            options.request_timeout,
        ));
    // Replays walk whole sinks and may take minutes: no request timeout, like the CLI.
    let replays = Router::new()
        .route("/v1/diff", post(diff))
        .route("/v1/reconcile", post(reconcile))
        .route("/v1/backup", post(backup))
        .route("/v1/migrate", post(migrate))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(|| async { Json(openapi()) }))
        .merge(api)
        .merge(replays)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(options.body_limit))
        .layer(axum::extract::DefaultBodyLimit::max(options.body_limit))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            options.max_in_flight,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Errors answered before a handler ran (an unknown route, a bad query string, a body over the
/// limit, a request that took too long) in the API's error format, like every other error.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let said = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|text| String::from_utf8_lossy(&text).trim().to_owned())
        .unwrap_or_default();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (
            "not_found",
            "no such route; /v1/openapi.json lists them".to_owned(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "invalid",
            "this route does not take that method; /v1/openapi.json lists them".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            "the request body is larger than the server takes (its --body-limit)".to_owned(),
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "unavailable",
            "the request took longer than the server's --request-timeout; a write may or may not \
             have been recorded: look before sending it again"
                .to_owned(),
        ),
        // A query string or path the route could not take (axum names the parameter).
        status if status.is_client_error() && !said.is_empty() => ("invalid", said),
        status if status.is_client_error() => {
            ("invalid", format!("the server refused the request ({status})"))
        }
        StatusCode::SERVICE_UNAVAILABLE => (
            "unavailable",
            "the server cannot answer now; try again".to_owned(),
        ),
        status => ("internal", format!("the server failed ({status})")),
    };
    super::error_response(status, code, &message)
}

/// Count and time every request by its route template (never by its concrete path, which
/// would put secret names in the metrics).
async fn observe(State(state): Shared, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Every `/v1/` route but the OpenAPI document needs a valid token; a request without one gets
/// 401 with no detail about what was wrong, and is recorded in the access log.
async fn authenticate(
    State(state): Shared,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let operation = operation_of(&request);
    let (mut parts, body) = request.into_parts();
    let secret = secret_named_in(&mut parts).await;
    let mut request = Request::from_parts(parts, body);
    match state
        .auth
        .authenticate(&state.handle, request.headers(), client)
        .await
    {
        Ok(caller) => {
            // The role is checked here, before the body is even read; the name patterns, which
            // may need the body or a lookup, in the handler.
            if let Some(action) = ROUTES
                .iter()
                .find(|r| r.operation == operation)
                .and_then(|r| r.action)
            {
                if !caller.token.role.allows(action) {
                    let name = secret.as_deref();
                    if let Err(e) = auth::authorize(&state.handle, &caller, operation, action, name).await {
                        return ApiError(e).into_response();
                    }
                }
            }
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(Refusal::Unauthenticated) => {
            // Guessing is limited per client address, before it costs an access-log write.
            if !state.auth.take_anonymous(client) {
                return error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many failed authentications from this address; wait and retry",
                );
            }
            let record = auth::record(
                "anonymous",
                client,
                operation,
                AccessOutcome::Unauthenticated,
                None,
            );
            if let Err(e) = state.handle.record_access(vec![record]).await {
                tracing::error!(error = %e, "a failed authentication could not be recorded");
            }
            ApiError(Error::Unauthenticated).into_response()
        }
        Err(Refusal::RateLimited) => error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this token is over its request rate; slow down and retry",
        ),
        Err(Refusal::Failed(e)) => ApiError(e).into_response(),
    }
}

/// The secret a request's path names (`/v1/…/{*name}`), as given (an `id:` reference is not
/// resolved: a refusal must not reveal the name behind it).
async fn secret_named_in(parts: &mut axum::http::request::Parts) -> Option<String> {
    use axum::extract::FromRequestParts as _;
    let secret_route = parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|p| p.as_str().ends_with("/{*name}"));
    if !secret_route {
        return None;
    }
    let params = axum::extract::RawPathParams::from_request_parts(parts, &())
        .await
        .ok()?;
    params
        .iter()
        .find(|(key, _)| *key == "name")
        .map(|(_, name)| name.to_owned())
}

fn operation_of(request: &Request) -> &'static str {
    let path = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    ROUTES
        .iter()
        .find(|r| r.path == path && r.method == request.method().as_str())
        .map(|r| r.operation)
        .unwrap_or("unknown")
}

async fn allow(state: &AppState, caller: &Caller, operation: &str, name: Option<&str>) -> Result<()> {
    let action = spec(operation).action.expect("API routes need an action");
    auth::authorize(&state.handle, caller, operation, action, name).await
}

/// Authorize `operation` on the secret `name` refers to (a name, or `id:<uuid>` of a secret in
/// any state); returns the reference as given, for the command to resolve itself.
async fn allow_secret(state: &AppState, caller: &Caller, operation: &str, name: &str) -> Result<String> {
    if !name.starts_with(ID_REF_PREFIX) {
        // Checked before any lookup, so a refusal says nothing about whether the secret exists.
        allow(state, caller, operation, Some(name)).await?;
        return Ok(name.to_owned());
    }
    let (actor, reference) = (caller.principal(), name.to_owned());
    let resolved = state
        .handle
        .read(move |l| Ok(l.find_any(&actor, &reference)?.name))
        .await?;
    let action = spec(operation).action.expect("API routes need an action");
    if !caller.token.permits(action, Some(&resolved)) {
        // Recorded under the reference as given, never the name behind it, and answered as an
        // id no secret has: a 403 would tell a token which ids exist outside its names.
        auth::authorize(&state.handle, caller, operation, action, Some(name))
            .await
            .map_err(|e| match e {
                Error::Denied { .. } => Error::no_such_secret(name),
                other => other,
            })?;
    }
    Ok(name.to_owned())
}

/// How long a write waits for the primary sink to apply it (`?wait_ms=`; 0 by default, and
/// at most a minute).
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    #[serde(default)]
    wait_ms: u64,
}

impl WaitQuery {
    fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.wait_ms.min(60_000))
    }
}

/// Apply `commands` as the caller; the answer is the documents the CLI prints for them (one
/// per secret changed, or per sink event), with the primary's state when asked to wait.
async fn execute(
    state: &AppState,
    caller: &Caller,
    verb: &str,
    commands: Vec<Command>,
    wait: WaitQuery,
) -> ApiResult {
    Ok(answer(
        verb,
        execute_docs(state, caller, verb, commands, wait).await?,
    ))
}

/// A write's documents as an answer: one document alone, several as an array.
fn answer(verb: &str, docs: Vec<Value>) -> Response {
    let status = if verb == "created" && !docs.is_empty() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = match <[Value; 1]>::try_from(docs) {
        Ok([one]) => one,
        Err(many) => Value::Array(many),
    };
    (status, Json(body)).into_response()
}

/// Reads through one of the handle's read connections and appends through its group commit,
/// as [`ThroughHandle`] does, timing each append that succeeds in the append histogram as
/// [`execute_docs`] does: what the server runs for a caller (attaching a sink, a migration, a
/// forced reconcile) counts there like any write.
struct Metered<'a> {
    through: ThroughHandle<'a>,
    metrics: &'a super::metrics::Metrics,
}

impl<'a> Metered<'a> {
    fn new(state: &'a AppState, reader: &'a Ledger) -> Self {
        Metered {
            through: ThroughHandle {
                reader,
                handle: &state.handle,
            },
            metrics: &state.metrics,
        }
    }
}

impl crate::handle::Append for Metered<'_> {
    async fn append(&mut self, actor: &str, commands: Vec<Command>) -> Result<Vec<Outcome>> {
        let started = Instant::now();
        let outcomes = self.through.append(actor, commands).await?;
        self.metrics.append(started.elapsed().as_secs_f64());
        Ok(outcomes)
    }
}

impl crate::handle::ReadAppend for Metered<'_> {
    fn reader(&self) -> &Ledger {
        self.through.reader
    }
}

async fn execute_docs(
    state: &AppState,
    caller: &Caller,
    verb: &str,
    commands: Vec<Command>,
    wait: WaitQuery,
) -> Result<Vec<Value>> {
    let started = Instant::now();
    let outcomes = state.handle.execute(&caller.principal(), commands).await?;
    state.metrics.append(started.elapsed().as_secs_f64());
    let secrets = outcomes.iter().any(Outcome::is_about_a_secret);
    let primary = match outcomes.iter().filter_map(Outcome::seq).max() {
        Some(seq) if secrets && wait.wait_ms > 0 => {
            state
                .wait_for_primary(seq, wait.duration(), outcomes.clone())
                .await?
        }
        _ => None,
    };
    Ok(crate::project::write_docs(verb, &outcomes, primary.as_ref()))
}

fn values_from(map: BTreeMap<String, Zeroizing<String>>) -> Result<SecretValues> {
    let mut values = SecretValues::new();
    for (k, v) in map {
        values.insert(k, v.as_str());
    }
    Ok(values)
}

// Operations.

async fn ready(State(state): Shared) -> Response {
    let runtime = tokio::runtime::Handle::current();
    let checked = state
        .handle
        .read(move |l| {
            l.head()?;
            let primary = l.sinks()?.into_values().find(|s| s.role == SinkRole::Primary);
            if let Some(primary) = primary {
                let (_, sink) = l.open_sink(&primary.name)?;
                runtime.block_on(sink.health())?;
            }
            Ok(())
        })
        .await;
    match checked {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            // The reason goes to the server's log, not to an unauthenticated client.
            tracing::warn!(error = %e, "not ready");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the ledger or the primary sink is not available",
            )
        }
    }
}

async fn metrics(State(state): Shared) -> Response {
    let sinks = state.handle.read(|l| l.sink_status()).await.unwrap_or_default();
    let text = state.metrics.render(&sinks, state.handle.commit_stats());
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The OpenAPI 3.1 document, generated from [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let path = r.path.replace("{*name}", "{name}");
        let mut parameters = Vec::new();
        if path.contains("{name}") {
            parameters.push(json!({
                "name": "name", "in": "path", "required": true,
                "description": "A secret name (may contain '/') or id:<uuid>; for sinks and tokens, their name.",
                "schema": {"type": "string"}
            }));
        }
        let mut responses = serde_json::Map::new();
        responses.insert("200".into(), json!({"description": "OK"}));
        if r.action.is_some() {
            responses.insert("401".into(), json!({"description": "No valid token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
            responses.insert("403".into(), json!({"description": "The token's role or patterns do not allow this", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        }
        let mut operation = json!({
            "operationId": r.operation,
            "summary": r.summary,
            "parameters": parameters,
            "responses": responses,
            "x-sledger-action": r.action,
        });
        if r.action.is_some() {
            operation["security"] = json!([{"bearer": []}]);
        }
        paths
            .entry(path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path items are objects")
            .insert(r.method.to_ascii_lowercase(), operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "sledger", "version": env!("CARGO_PKG_VERSION"),
                 "description": "The sledger server: secrets, their audit log, sinks and replays."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}}}}}
        }
    })
}
