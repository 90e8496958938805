//! Secrets: create, read, change, list, and each one's history.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSecret {
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

pub(super) async fn create_secret(
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
pub(super) struct PutSecret {
    #[serde(default = "workspace")]
    scope: Scope,
    #[serde(default, deserialize_with = "unique_keys")]
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "unique_keys")]
    values: BTreeMap<String, Zeroizing<String>>,
}

pub(super) async fn put_secret(
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
pub(super) struct UpdateSecret {
    #[serde(default, deserialize_with = "unique_keys")]
    values: BTreeMap<String, Zeroizing<String>>,
    #[serde(default)]
    remove_keys: Vec<String>,
    #[serde(default, deserialize_with = "unique_keys")]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    remove_labels: Vec<String>,
}

pub(super) async fn update_secret(
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

pub(super) async fn delete_secret(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(wait): Query<WaitQuery>,
    Path(name): Path<String>,
) -> ApiResult {
    let name = allow_secret(&state, &caller, "secret.delete", &name).await?;
    execute(&state, &caller, "deleted", vec![Command::Delete { name }], wait).await
}

pub(super) async fn undelete_secret(
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
pub(super) struct RenameBody {
    new_name: String,
}

pub(super) async fn rename_secret(
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

pub(super) async fn purge_secret(
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
pub(super) struct ReadQuery {
    version: Option<u32>,
    at: Option<String>,
    from: Option<String>,
}

pub(super) fn parse_time(field: &str, text: &str) -> Result<Millis> {
    crate::event::parse_millis(text).ok_or_else(|| {
        Error::invalid(format!(
            "{field} {text:?} is not an RFC 3339 time; write it like 2026-11-28T12:00:00Z"
        ))
    })
}

/// A value read: authorized on the secret's real name, served from the best source, and
/// returned only once its access record is durable (fail-closed).
pub(super) async fn get_secret(
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
        // A version from before a rename may carry a name outside the token's patterns: the
        // refusal is recorded under that name, but the caller is not told it.
        auth::authorize(
            &state.handle,
            &caller,
            "secret.get",
            Action::ReadValue,
            Some(&read.meta.name),
        )
        .await
        .map_err(|_| Error::Denied {
            principal: caller.principal(),
            what: format!(
                "secret.get version {} (written under an earlier name its patterns do not cover)",
                read.version
            ),
        })?;
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
pub(super) struct ListParams {
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

pub(super) async fn list_secrets(
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

pub(super) async fn history(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    let name = allow_secret(&state, &caller, "secret.history", &name).await?;
    let actor = caller.principal();
    let mut entries = state.handle.read(move |l| l.history(&actor, &name)).await?;
    // Names it had before a rename may be outside the token's patterns.
    crate::ledger::AuditEntry::hide_names(&mut entries, &|n| caller.token.covers(n));
    Ok(Json(entries.iter().map(|e| e.to_json()).collect::<Vec<_>>()).into_response())
}
