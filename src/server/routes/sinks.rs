//! Sinks: attach, list, promote, change role, remove, check, retry.

use super::*;

pub(super) async fn list_sinks(State(state): Shared, Extension(caller): Extension<Caller>) -> ApiResult {
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
pub(super) struct NewSink {
    name: String,
    url: String,
    #[serde(default = "backup_role")]
    role: SinkRole,
}

fn backup_role() -> SinkRole {
    SinkRole::Backup
}

pub(super) async fn add_sink(
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

pub(super) async fn promote_sink(
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
pub(super) struct RoleBody {
    role: SinkRole,
}

pub(super) async fn set_sink_role(
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

pub(super) async fn remove_sink(
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

pub(super) async fn check_sink(
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

pub(super) async fn retry_sink(
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
