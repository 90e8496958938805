//! The audit log (a query and a live stream), the access log, and verify.

use super::*;

pub(super) async fn query_log(
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
pub(super) async fn stream_log(
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

pub(super) async fn query_access_log(
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
pub(super) struct VerifyBody {
    anchor: Option<crate::Anchor>,
}

/// Check the chain, the derived state, the access log and (if given) an anchor: the same
/// document `sledger verify --format json` prints.
pub(super) async fn verify(
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
