//! Tokens: issue, list, revoke.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    name: String,
    role: Role,
    patterns: Vec<String>,
    expires_in_seconds: Option<u64>,
}

pub(super) async fn create_token(
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

pub(super) async fn list_tokens(State(state): Shared, Extension(caller): Extension<Caller>) -> ApiResult {
    allow(&state, &caller, "token.list", None).await?;
    state.auth.refresh(&state.handle).await?;
    let tokens: Vec<_> = state.auth.tokens().all().cloned().collect();
    Ok(Json(tokens).into_response())
}

pub(super) async fn revoke_token(
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
