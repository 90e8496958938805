//! The replays: diff, reconcile, backup, migrate, and restore to a point.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DiffBody {
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
pub(super) async fn diff(
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
pub(super) struct ReconcileBody {
    sink: String,
    #[serde(default)]
    force_ledger: bool,
}

/// Make a sink match the ledger's head: the resync's documents (what it found, what it did).
pub(super) async fn reconcile(
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
pub(super) struct BackupBody {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    delete_secrets: bool,
}

/// Resync every backup sink (and with `delete_secrets`, empty the primary of what they hold).
pub(super) async fn backup(
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
pub(super) struct MigrateBody {
    #[serde(flatten)]
    to: orchestrate::MigrateTo,
    #[serde(default)]
    dry_run: bool,
}

/// Move the primary with no downtime (attach, catch up, verify, promote): the steps as they
/// happened, or the plan with `dry_run`.
pub(super) async fn migrate(
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
pub(super) struct RestoreBody {
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
pub(super) async fn restore(
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
