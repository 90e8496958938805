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

// Secrets.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSecret {
    name: String,
    #[serde(default = "workspace")]
    scope: Scope,
    #[serde(default, deserialize_with = "unique_keys")]
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "unique_keys")]
    values: BTreeMap<String, Zeroizing<String>>,
}

fn workspace() -> Scope {
    Scope::Workspace
}

async fn create_secret(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(wait): Query<WaitQuery>,
    JsonBody(body): JsonBody<NewSecret>,
) -> ApiResult {
    allow(&state, &caller, "secret.create", Some(&body.name)).await?;
    let command = Command::Create {
        name: body.name,
        scope: body.scope,
        labels: body.labels,
        values: values_from(body.values)?,
    };
    execute(&state, &caller, "created", vec![command], wait).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecret {
    #[serde(default = "workspace")]
    scope: Scope,
    #[serde(default, deserialize_with = "unique_keys")]
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "unique_keys")]
    values: BTreeMap<String, Zeroizing<String>>,
}

async fn put_secret(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(wait): Query<WaitQuery>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<PutSecret>,
) -> ApiResult {
    let name = allow_secret(&state, &caller, "secret.put", &name).await?;
    let command = Command::Put {
        name,
        scope: body.scope,
        labels: body.labels,
        values: values_from(body.values)?,
    };
    execute(&state, &caller, "put", vec![command], wait).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UpdateSecret {
    #[serde(default, deserialize_with = "unique_keys")]
    values: BTreeMap<String, Zeroizing<String>>,
    #[serde(default)]
    remove_keys: Vec<String>,
    #[serde(default, deserialize_with = "unique_keys")]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    remove_labels: Vec<String>,
}

async fn update_secret(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(wait): Query<WaitQuery>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpdateSecret>,
) -> ApiResult {
    let name = allow_secret(&state, &caller, "secret.update", &name).await?;
    if body.values.is_empty()
        && body.remove_keys.is_empty()
        && body.labels.is_empty()
        && body.remove_labels.is_empty()
    {
        return Err(
            Error::invalid("nothing to update: give values, remove_keys, labels or remove_labels").into(),
        );
    }
    let command = Command::Update {
        name,
        set_values: values_from(body.values)?,
        remove_keys: body.remove_keys,
        set_labels: body.labels,
        remove_labels: body.remove_labels,
    };
    execute(&state, &caller, "updated", vec![command], wait).await
}

async fn delete_secret(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(wait): Query<WaitQuery>,
    Path(name): Path<String>,
) -> ApiResult {
    let name = allow_secret(&state, &caller, "secret.delete", &name).await?;
    execute(&state, &caller, "deleted", vec![Command::Delete { name }], wait).await
}

async fn undelete_secret(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(wait): Query<WaitQuery>,
    Path(name): Path<String>,
) -> ApiResult {
    let name = allow_secret(&state, &caller, "secret.undelete", &name).await?;
    execute(
        &state,
        &caller,
        "undeleted",
        vec![Command::Undelete { name }],
        wait,
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    new_name: String,
}

async fn rename_secret(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(wait): Query<WaitQuery>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<RenameBody>,
) -> ApiResult {
    let name = allow_secret(&state, &caller, "secret.rename", &name).await?;
    // A name no secret can have is a bad request, not one the token's patterns refuse.
    crate::validate::secret_name(&body.new_name)?;
    allow(&state, &caller, "secret.rename", Some(&body.new_name)).await?;
    let command = Command::Rename {
        name,
        new_name: body.new_name,
    };
    execute(&state, &caller, "renamed", vec![command], wait).await
}

async fn purge_secret(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(wait): Query<WaitQuery>,
    Path(name): Path<String>,
) -> ApiResult {
    let name = allow_secret(&state, &caller, "secret.purge", &name).await?;
    execute(&state, &caller, "purged", vec![Command::Purge { name }], wait).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    version: Option<u32>,
    at: Option<String>,
    from: Option<String>,
}

fn parse_time(field: &str, text: &str) -> Result<Millis> {
    crate::event::parse_millis(text).ok_or_else(|| {
        Error::invalid(format!(
            "{field} {text:?} is not an RFC 3339 time; write it like 2026-11-28T12:00:00Z"
        ))
    })
}

/// A value read: authorized on the secret's real name, served from the best source, and
/// returned only once its access record is durable (fail-closed).
async fn get_secret(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<ReadQuery>,
) -> ApiResult {
    let name = allow_secret(&state, &caller, "secret.get", &name).await?;
    let point = match (query.version, query.at.as_deref()) {
        (Some(v), _) => Some(ReadPoint::Version(v)),
        (None, Some(at)) => Some(ReadPoint::At(parse_time("at", at)?)),
        (None, None) => None,
    };
    let from = match query.from.as_deref() {
        None | Some("auto") => ReadFrom::Auto,
        Some("primary") => ReadFrom::Primary,
        Some("backup") => ReadFrom::Backup,
        Some("ledger") => ReadFrom::Ledger,
        Some(other) => {
            return Err(Error::invalid(format!("from={other:?}: use auto, primary, backup or ledger")).into())
        }
    };
    let actor = caller.principal();
    let runtime = tokio::runtime::Handle::current();
    let served = state
        .handle
        .read(move |l| match point {
            Some(point) => Ok(Served::from_ledger(l.read(&actor, &name, point)?)),
            None => runtime.block_on(read_latest(l, &actor, &name, from)),
        })
        .await?;
    let read = &served.read;
    if !caller.token.covers(&read.meta.name) {
        // A version from before a rename may carry a name outside the token's patterns.
        auth::authorize(
            &state.handle,
            &caller,
            "secret.get",
            Action::ReadValue,
            Some(&read.meta.name),
        )
        .await?;
    }
    let mut record = auth::record(
        &caller.principal(),
        caller.client,
        "secret.get",
        AccessOutcome::Served,
        Some(&read.meta.name),
    );
    record.secret_id = Some(read.meta.id);
    record.version = Some(read.version);
    record.source = Some(match &served.source {
        crate::read::Source::Sink { name, .. } => format!("sink:{name}"),
        crate::read::Source::Ledger => "ledger".into(),
    });
    state.handle.record_access(vec![record]).await?;
    Ok(Json(served.to_json()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    label: Option<String>,
    #[serde(default)]
    deleted: bool,
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// The largest page a list request gets, so one request never holds a million secrets.
pub const MAX_LIST_PAGE: usize = 1000;

/// The response header naming the last secret of a page that has a next one (pass it as
/// `after=`).
pub const NEXT_AFTER_HEADER: &str = "sledger-next-after";

async fn list_secrets(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(params): Query<ListParams>,
) -> ApiResult {
    allow(&state, &caller, "secret.list", None).await?;
    let mut query = ListQuery::new(if params.deleted {
        Status::Deleted
    } else {
        Status::Live
    });
    for pair in params.label.iter().flat_map(|l| l.split(',')) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("label filter {pair:?} is not KEY=VALUE")))?;
        query.labels.insert(k.to_owned(), v.to_owned());
    }
    query.prefix = params.prefix;
    query.after = params.after;
    if params.limit == Some(0) {
        return Err(Error::invalid("limit must be at least 1").into());
    }
    let limit = params.limit.unwrap_or(MAX_LIST_PAGE).min(MAX_LIST_PAGE);
    let actor = caller.principal();
    let token = caller.token.clone();
    let page = state
        .handle
        .read(move |l| l.list_page(&actor, &query, limit, &|m| token.covers(&m.name)))
        .await?;
    let shown: Vec<Value> = page.secrets.iter().map(|m| m.to_json()).collect();
    let mut response = Json(shown).into_response();
    if let Some(after) = page.next_after {
        if let Ok(value) = axum::http::HeaderValue::from_str(&after) {
            response.headers_mut().insert(NEXT_AFTER_HEADER, value);
        }
    }
    Ok(response)
}

async fn history(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    let name = allow_secret(&state, &caller, "secret.history", &name).await?;
    let actor = caller.principal();
    let entries = state.handle.read(move |l| l.history(&actor, &name)).await?;
    Ok(Json(entries.iter().map(|e| e.to_json()).collect::<Vec<_>>()).into_response())
}

// The logs.

async fn query_log(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(mut filter): Query<LogFilter>,
) -> ApiResult {
    allow(&state, &caller, "log.query", None).await?;
    // One request reads at most 10 000 entries (1 000 unless asked): a tail, or a forward page.
    match filter.tail {
        Some(tail) => filter.tail = Some(tail.min(10_000)),
        None => filter.limit = Some(filter.limit.unwrap_or(1000).min(10_000)),
    }
    filter.viewer = Some(caller.principal());
    let actor = caller.principal();
    let entries = state.handle.read(move |l| l.log_entries(&actor, filter)).await?;
    Ok(Json(entries.iter().map(|e| e.to_json()).collect::<Vec<_>>()).into_response())
}

/// The audit log from `after_seq` on, then each new event as it is appended (woken by the
/// handle's commits, and every second for other processes' appends), one JSON document per
/// line.
async fn stream_log(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(filter): Query<LogFilter>,
) -> ApiResult {
    allow(&state, &caller, "log.stream", None).await?;
    let handle = state.handle.clone();
    let actor = caller.principal();
    // Read in pages from the start point (a forward read), so a stream from seq 0 of a long
    // log never holds more than a page.
    const PAGE: usize = 1000;
    let mut filter = LogFilter {
        after_seq: Some(filter.after_seq.unwrap_or(0)),
        limit: Some(PAGE),
        tail: None,
        viewer: Some(actor.clone()),
        ..filter
    };
    // A bad filter is refused now, not in the middle of the stream.
    let checked = filter.clone();
    let check_actor = actor.clone();
    handle
        .read(move |l| {
            l.scan_log(
                &check_actor,
                LogFilter {
                    limit: Some(0),
                    ..checked
                },
                &mut |_| Ok(false),
            )
        })
        .await?;
    let mut wake = handle.subscribe();
    let mut stopping = state.stopping.subscribe();
    let token = caller.token.name.clone();
    let state = state.clone();
    let stream = async_stream_lines(move |sender: tokio::sync::mpsc::Sender<String>| async move {
        let mut last_sent = Instant::now();
        loop {
            if *stopping.borrow_and_update() {
                return; // the server is stopping: the stream ends, the client reconnects elsewhere
            }
            // A revoked or expired token stops receiving at once, like any other request.
            if state.auth.refresh(&handle).await.is_err()
                || !state
                    .auth
                    .tokens()
                    .get(&token)
                    .is_some_and(|t| t.is_active(crate::ledger::now_ms()))
            {
                return;
            }
            let (query, actor) = (filter.clone(), actor.clone());
            let Ok((covered, lines)) = handle
                .read(move |l| {
                    let mut lines = Vec::new();
                    let covered = l.scan_log(&actor, query, &mut |e| {
                        lines.push(e.to_json().to_string() + "\n");
                        Ok(true)
                    })?;
                    Ok((covered, lines))
                })
                .await
            else {
                return;
            };
            filter.after_seq = Some(covered.max(filter.after_seq.unwrap_or(0)));
            let full_page = lines.len() == PAGE;
            if lines.is_empty() && last_sent.elapsed() >= state.heartbeat {
                // Not silent for the idle timeout; clients skip the blank line.
                if sender.send("\n".to_owned()).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
            for line in lines {
                if sender.send(line).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
            if full_page {
                continue;
            }
            tokio::select! {
                _ = tokio::time::timeout(std::time::Duration::from_secs(1), wake.changed()) => {}
                _ = stopping.changed() => {}
            }
        }
    });
    Ok((
        [("content-type", "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Lines produced by `produce` on a task of its own, as a response body stream that ends when
/// the client goes away.
fn async_stream_lines<F, Fut>(
    produce: F,
) -> impl futures::Stream<Item = std::result::Result<String, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, mut receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(sender));
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx).map(|line| line.map(Ok)))
}

async fn query_access_log(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(mut filter): Query<AccessFilter>,
) -> ApiResult {
    allow(&state, &caller, "access_log.query", None).await?;
    filter.limit = Some(filter.limit.unwrap_or(1000).min(10_000));
    filter.viewer = Some(caller.principal());
    let rows = state.handle.read(move |l| l.query_access(&filter)).await?;
    Ok(Json(rows).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    anchor: Option<crate::Anchor>,
}

/// Check the chain, the derived state, the access log and (if given) an anchor: the same
/// document `sledger verify --format json` prints.
async fn verify(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    body: Option<JsonBody<VerifyBody>>,
) -> ApiResult {
    allow(&state, &caller, "verify", None).await?;
    let anchor = body.and_then(|JsonBody(b)| b.anchor);
    let (location, master) = (state.handle.location().clone(), state.handle.master_key());
    let doc = state
        .handle
        .read(move |_| {
            let mut ledger = Ledger::open(location)?;
            ledger.unlock_to_verify(master)?;
            // On the blocking pool, so waiting on the sinks here holds no worker thread.
            tokio::runtime::Handle::current().block_on(crate::witness::verify(
                &mut ledger,
                anchor.as_ref(),
                &mut |_, _| {},
            ))
        })
        .await?;
    Ok(Json(doc).into_response())
}

// Sinks.

async fn list_sinks(State(state): Shared, Extension(caller): Extension<Caller>) -> ApiResult {
    allow(&state, &caller, "sink.list", None).await?;
    let runtime = tokio::runtime::Handle::current();
    let status = state
        .handle
        .read(move |l| runtime.block_on(crate::project::statuses_with_identities(l)))
        .await?;
    Ok(Json(status).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSink {
    name: String,
    url: String,
    #[serde(default = "backup_role")]
    role: SinkRole,
}

fn backup_role() -> SinkRole {
    SinkRole::Backup
}

async fn add_sink(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<NewSink>,
) -> ApiResult {
    allow(&state, &caller, "sink.add", None).await?;
    state.sink_policy.check(&body.url)?;
    let (shared, actor) = (state.clone(), caller.principal());
    let runtime = tokio::runtime::Handle::current();
    // On the blocking pool: making a sqlite sink's file is blocking work.
    let outcomes = state
        .handle
        .read(move |reader| {
            runtime.block_on(orchestrate::add_sink(
                &mut Metered::new(&shared, reader),
                &actor,
                &body.name,
                &body.url,
                body.role,
            ))
        })
        .await?;
    Ok(answer(
        "added",
        crate::project::write_docs("added", &outcomes, None),
    ))
}

async fn promote_sink(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    allow(&state, &caller, "sink.promote", None).await?;
    execute(
        &state,
        &caller,
        "promoted",
        vec![Command::PromoteSink { name }],
        WaitQuery::default(),
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: SinkRole,
}

async fn set_sink_role(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<RoleBody>,
) -> ApiResult {
    allow(&state, &caller, "sink.set_role", None).await?;
    execute(
        &state,
        &caller,
        "changed",
        vec![Command::SetSinkRole {
            name,
            role: body.role,
        }],
        WaitQuery::default(),
    )
    .await
}

async fn remove_sink(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    allow(&state, &caller, "sink.remove", None).await?;
    execute(
        &state,
        &caller,
        "removed",
        vec![Command::RemoveSink { name }],
        WaitQuery::default(),
    )
    .await
}

async fn check_sink(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    allow(&state, &caller, "sink.check", None).await?;
    let runtime = tokio::runtime::Handle::current();
    let identity = state
        .handle
        .read(move |l| runtime.block_on(crate::project::check_sink(l, &name)))
        .await?;
    Ok(Json(json!({"healthy": true, "identity": identity})).into_response())
}

async fn retry_sink(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    allow(&state, &caller, "sink.retry", None).await?;
    let runtime = tokio::runtime::Handle::current();
    let retried = state
        .handle
        .read(move |l| runtime.block_on(crate::project::retry_parked(l, &name)))
        .await?;
    Ok(Json(retried).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffBody {
    sink: String,
    seq: Option<u64>,
    at: Option<String>,
}

fn target(seq: Option<u64>, at: Option<&str>) -> Result<crate::replay::Target> {
    Ok(match (seq, at) {
        (Some(_), Some(_)) => return Err(Error::invalid("give at most one of seq and at")),
        (Some(seq), None) => crate::replay::Target::Seq(seq),
        (None, Some(at)) => crate::replay::Target::Time(parse_time("at", at)?),
        (None, None) => crate::replay::Target::Head,
    })
}

/// What a sink lacks, holds stale, holds extra or holds changed, against a point of the log:
/// the documents `sledger diff --format json` prints (an empty array when in sync).
async fn diff(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<DiffBody>,
) -> ApiResult {
    allow(&state, &caller, "diff", None).await?;
    let viewer = caller.principal();
    let target = target(body.seq, body.at.as_deref())?;
    let runtime = tokio::runtime::Handle::current();
    let docs = state
        .handle
        .read(move |l| {
            let seq = l.target_seq(target)?;
            let (_, sink) = l.open_sink(&body.sink)?;
            let desired = l.desired_at(seq)?;
            let differences = runtime.block_on(crate::replay::diff(&desired, &*sink, &|_, _| {}))?;
            let mut docs: Vec<_> = differences.iter().map(|d| d.to_json(&body.sink)).collect();
            hide_others_private_names(l, &viewer, &mut docs)?;
            Ok(docs)
        })
        .await?;
    Ok(Json(docs).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileBody {
    sink: String,
    #[serde(default)]
    force_ledger: bool,
}

/// Make a sink match the ledger's head: the resync's documents (what it found, what it did).
async fn reconcile(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<ReconcileBody>,
) -> ApiResult {
    allow(&state, &caller, "reconcile", None).await?;
    let (shared, actor) = (state.clone(), caller.principal());
    let runtime = tokio::runtime::Handle::current();
    let events = state
        .handle
        .read(move |reader| {
            let mut events = Vec::new();
            runtime.block_on(orchestrate::reconcile_attached(
                &mut Metered::new(&shared, reader),
                &actor,
                &body.sink,
                body.force_ledger,
                &|_, _, _| {},
                &mut |e| events.push(e.to_json()),
            ))?;
            hide_others_private_names_in_resyncs(reader, &actor, &mut events)?;
            Ok(events)
        })
        .await?;
    Ok(Json(json!({"events": events})).into_response())
}

/// [`hide_others_private_names`] in the differences resyncs found.
fn hide_others_private_names_in_resyncs(ledger: &Ledger, viewer: &str, events: &mut [Value]) -> Result<()> {
    for found in events {
        if let Some(Value::Array(differences)) = found.get_mut("differences") {
            hide_others_private_names(ledger, viewer, differences)?;
        }
    }
    Ok(())
}

/// A sink holds every secret, so its differences name other owners' private ones too: those
/// keep their id (a reconcile still repairs them) without their name.
fn hide_others_private_names(ledger: &Ledger, viewer: &str, differences: &mut [Value]) -> Result<()> {
    for difference in differences {
        let Some(id) = difference["id"]
            .as_str()
            .and_then(|id| crate::SecretId::parse_str(id).ok())
        else {
            continue;
        };
        if ledger.private_to_another(id, viewer)? {
            difference["name"] = Value::Null;
            difference["private"] = json!(true);
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    delete_secrets: bool,
}

/// Resync every backup sink (and with `delete_secrets`, empty the primary of what they hold).
async fn backup(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<BackupBody>,
) -> ApiResult {
    allow(&state, &caller, "backup", None).await?;
    let viewer = caller.principal();
    let runtime = tokio::runtime::Handle::current();
    let doc = state
        .handle
        .read(move |l| {
            let mut events = Vec::new();
            let report = runtime.block_on(orchestrate::backup(
                l,
                body.dry_run,
                body.delete_secrets,
                &|_, _, _| {},
                &mut |e| events.push(e.to_json()),
            ))?;
            hide_others_private_names_in_resyncs(l, &viewer, &mut events)?;
            let key = if body.dry_run { "would_delete" } else { "deleted" };
            let emptied = report
                .emptied
                .map(|(sink, deleted)| json!({"sink": sink, key: deleted}));
            Ok(json!({"events": events, "emptied": emptied}))
        })
        .await?;
    Ok(Json(doc).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateBody {
    #[serde(flatten)]
    to: orchestrate::MigrateTo,
    #[serde(default)]
    dry_run: bool,
}

/// Move the primary with no downtime (attach, catch up, verify, promote): the steps as they
/// happened, or the plan with `dry_run`.
async fn migrate(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<MigrateBody>,
) -> ApiResult {
    allow(&state, &caller, "migrate", None).await?;
    if body.to.to.contains("://") {
        state.sink_policy.check(&body.to.to)?;
    }
    let (shared, actor) = (state.clone(), caller.principal());
    let runtime = tokio::runtime::Handle::current();
    let doc = state
        .handle
        .read(move |reader| {
            if body.dry_run {
                let plan = runtime.block_on(orchestrate::plan_migration(reader, &body.to))?;
                return Ok(json!({"plan": plan}));
            }
            let mut steps = Vec::new();
            runtime.block_on(orchestrate::migrate(
                &mut Metered::new(&shared, reader),
                &actor,
                &body.to,
                &|_, _, _| {},
                &mut |step| steps.push(step),
            ))?;
            Ok(json!({"steps": steps}))
        })
        .await?;
    Ok(Json(doc).into_response())
}

// Restore.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    seq: Option<u64>,
    at: Option<String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    wait_ms: u64,
}

/// Roll secrets back to a point with compensating events (or plan it, with `dry_run`): the
/// plan's summary, plus the write documents when it ran.
async fn restore(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<RestoreBody>,
) -> ApiResult {
    allow(&state, &caller, "restore", None).await?;
    if body.seq.is_none() && body.at.is_none() {
        return Err(Error::invalid("give seq or at: the point to restore to").into());
    }
    let target = target(body.seq, body.at.as_deref())?;
    let actor = caller.principal();
    let only = body.secrets.clone();
    let mut plan = state
        .handle
        .read(move |l| {
            let seq = l.target_seq(target)?;
            l.plan_restore(&actor, seq, &only)
        })
        .await?;
    let mut summary = plan.summary(body.dry_run);
    let commands = plan.commands_to_run(body.dry_run)?;
    if commands.is_empty() {
        return Ok(Json(summary).into_response());
    }
    let wait = WaitQuery {
        wait_ms: body.wait_ms,
    };
    summary["outcomes"] = json!(execute_docs(&state, &caller, "restored", commands, wait).await?);
    Ok(Json(summary).into_response())
}

// Tokens.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: Role,
    patterns: Vec<String>,
    expires_in_seconds: Option<u64>,
}

async fn create_token(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<NewToken>,
) -> ApiResult {
    allow(&state, &caller, "token.create", None).await?;
    let doc = crate::identity::issue_token(
        &mut state.handle.clone(),
        &caller.principal(),
        &body.name,
        body.role,
        body.patterns,
        body.expires_in_seconds.map(std::time::Duration::from_secs),
    )
    .await?;
    state.auth.refresh(&state.handle).await?;
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

async fn list_tokens(State(state): Shared, Extension(caller): Extension<Caller>) -> ApiResult {
    allow(&state, &caller, "token.list", None).await?;
    state.auth.refresh(&state.handle).await?;
    let tokens: Vec<_> = state.auth.tokens().all().cloned().collect();
    Ok(Json(tokens).into_response())
}

async fn revoke_token(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    allow(&state, &caller, "token.revoke", None).await?;
    let outcome = execute(
        &state,
        &caller,
        "revoked",
        vec![Command::RevokeToken { name }],
        WaitQuery::default(),
    )
    .await;
    state.auth.refresh(&state.handle).await?;
    outcome
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
