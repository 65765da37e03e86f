//! The JSON API behind every page (described in `openapi.json`), and the operations the pages'
//! forms share with it.

use crate::params::{ListQuery, Posted};
use crate::{AppState, set_slug};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use errand::api::{self, Action, BatchDetail, Entry, Window};
use errand_core::BrokerError;
use errand_core::admin::{Order, QueueRange, SetName};
use errand_core::broker::{BatchStatus, MemberState, RemoteSignal};
use serde_json::{Value, json};
use std::time::Duration;

/// The value of a backend call, or (from the handler) the error reply.
macro_rules! or_err {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return err(e),
        }
    };
}

/// The OpenAPI description of this API.
pub(crate) const OPENAPI: &str = include_str!("../openapi.json");

fn err(e: BrokerError) -> Response {
    tracing::error!(error = %e, "dashboard API request failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "backend", "message": e.to_string()})),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "message": what})),
    )
        .into_response()
}

fn bad(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "bad_request", "message": msg})),
    )
        .into_response()
}

/// `GET /api/stats`: the totals and what the backend is.
pub(crate) async fn stats(State(st): State<AppState>) -> Response {
    let overview = or_err!(api::overview(&*st.admin).await);
    let info = or_err!(st.admin.backend_info().await);
    let facts: serde_json::Map<String, Value> = info
        .facts
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Json(json!({"stats": overview, "backend": {"kind": info.kind, "facts": facts}})).into_response()
}

/// `GET /api/history?days=N` (1..=180).
pub(crate) async fn history(State(st): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    match api::history(&*st.admin, q.days()).await {
        Ok(days) => Json(json!({
            "days": days.into_iter().map(|(date, processed, failed)| json!({"date": date, "processed": processed, "failed": failed})).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => err(e),
    }
}

/// `GET /api/stream?interval=S`: server-sent `stats` events with the totals every S seconds
/// (2..=60).
pub(crate) async fn stream(State(st): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let every = Duration::from_secs(q.interval());
    // One permit per open stream, held by the stream and given back when it is dropped.
    let Ok(permit) = st.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            Json(json!({"error": "too many live-update streams are open; try again later"})),
        )
            .into_response();
    };
    let events = futures::stream::unfold(
        (st, None::<tokio::time::Interval>, permit),
        move |(st, tick, permit)| async move {
            let mut tick = match tick {
                Some(t) => t,
                None => {
                    let mut t = tokio::time::interval(every);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                }
            };
            tick.tick().await;
            let event = match api::overview(&*st.admin).await {
                Ok(o) => Event::default()
                    .event("stats")
                    .json_data(&o)
                    .unwrap_or_else(|_| Event::default().comment("unserializable")),
                Err(e) => Event::default().event("error").data(e.to_string()),
            };
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (st, Some(tick), permit),
            ))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /api/busy`: processes and running jobs.
pub(crate) async fn busy(State(st): State<AppState>) -> Response {
    match api::busy(&*st.admin).await {
        Ok((processes, work)) => {
            Json(json!({"processes": processes, "work": work})).into_response()
        }
        Err(e) => err(e),
    }
}

/// `POST /api/busy/{quiet|stop}` with `identity` (or `all`).
pub(crate) async fn busy_action(
    State(st): State<AppState>,
    Path(action): Path<String>,
    posted: Posted,
) -> Response {
    let signal = match action.as_str() {
        "quiet" => RemoteSignal::Quiet,
        "stop" => RemoteSignal::Stop,
        _ => return not_found("no such action"),
    };
    match api::send_signal(&*st.admin, posted.get("identity").unwrap_or(""), signal).await {
        Ok(n) => Json(json!({"signalled": n})).into_response(),
        Err(e) => err(e),
    }
}

/// `POST /api/jobs/{jid}/cancel`: cancels a job wherever it is; says where it was.
pub(crate) async fn cancel_job(
    State(st): State<AppState>,
    Path(jid): Path<String>,
    // Read (even when empty) for its CSRF check.
    _posted: Posted,
) -> Response {
    match api::cancel(&*st.broker, &jid).await {
        Ok(found) => {
            let (code, text) = api::cancel_outcome(&found);
            let mut body = json!({"jid": jid, "cancelled": code, "message": text});
            match &found {
                errand::Cancelled::Queued(q) => body["queue"] = json!(q),
                errand::Cancelled::Running(p) => body["process"] = json!(p),
                _ => {}
            }
            Json(body).into_response()
        }
        Err(e) => err(e),
    }
}

/// `GET /api/jobs/{jid}/result`: the job's kept result (`null` when none is kept).
pub(crate) async fn job_result(State(st): State<AppState>, Path(jid): Path<String>) -> Response {
    match st.broker.result_get(&jid).await {
        Ok(found) => {
            let result = found
                .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
                .unwrap_or(serde_json::Value::Null);
            Json(json!({"jid": jid, "result": result})).into_response()
        }
        Err(e) => err(e),
    }
}

/// `GET /api/queues`.
pub(crate) async fn queues(State(st): State<AppState>) -> Response {
    match api::queues(&*st.admin).await {
        Ok(q) => Json(json!({"queues": q})).into_response(),
        Err(e) => err(e),
    }
}

/// `GET /api/queues/{name}?page&per_page&sort`: a queue's jobs.
pub(crate) async fn queue(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let per_page = q.per_page();
    let page = q.page();
    let order = q.order(Order::Asc);
    let offset = ((page - 1) * per_page).min(api::MAX_OFFSET);
    let size = match st.admin.queues().await {
        Ok(all) => all
            .into_iter()
            .find(|x| x.name == name)
            .map_or(0, |x| x.size),
        Err(e) => return err(e),
    };
    match st.admin.queue_page(QueueRange { queue: &name, offset, limit: per_page, order }).await {
        Ok(entries) => Json(json!({
            "queue": name,
            "size": size,
            "page": page,
            "per_page": per_page,
            "jobs": entries.iter().map(|raw| json!({"job": api::JobView::new(raw), "raw": raw})).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => err(e),
    }
}

/// Runs a queue action; `None` for an unknown action. Returns the redirect code and count.
pub(crate) async fn queue_op(
    st: &AppState,
    name: &str,
    action: &str,
    raw: Option<&str>,
) -> Result<Option<(&'static str, u64)>, BrokerError> {
    Ok(Some(match action {
        "pause" => {
            st.admin.set_paused(name, true).await?;
            ("paused", 1)
        }
        "resume" => {
            st.admin.set_paused(name, false).await?;
            ("resumed", 1)
        }
        "clear" => ("cleared", st.admin.queue_clear(name).await?),
        "delete" => match st.admin.queue_delete(name, raw.unwrap_or("")).await? {
            true => ("delete", 1),
            false => ("gone", 0),
        },
        _ => return Ok(None),
    }))
}

/// `POST /api/queues/{name}/{pause|resume|clear|delete}` (`delete` takes `raw`).
pub(crate) async fn queue_action(
    State(st): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    posted: Posted,
) -> Response {
    match queue_op(&st, &name, &action, posted.get("raw")).await {
        Ok(Some((done, n))) => Json(json!({"done": done, "count": n})).into_response(),
        Ok(None) => not_found("no such action"),
        Err(e) => err(e),
    }
}

/// `GET /api/{set}?page&per_page&sort&class&queue&error&q`.
pub(crate) async fn set_list(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
    set: SetName,
) -> Response {
    let default = if set == SetName::Dead {
        Order::Desc
    } else {
        Order::Asc
    };
    match api::set_page(
        &*st.admin,
        set,
        q.page(),
        q.per_page(),
        q.order(default),
        &q.filter(),
    )
    .await
    {
        Ok(p) => Json(json!({"set": set_slug(set), "page": p})).into_response(),
        Err(e) => err(e),
    }
}

/// An entry for the API; `trace_url` is the configured trace link template.
fn entry_json(e: &Entry, trace_url: Option<&str>) -> Value {
    json!({
        "key": e.key,
        "score": e.score,
        "job": e.job,
        "raw": e.raw,
        "backtrace": api::backtrace(&e.raw),
        "trace": crate::trace::json_of(&e.raw, trace_url),
    })
}

/// `GET /api/{set}/job?key=…`.
pub(crate) async fn set_job(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
    set: SetName,
) -> Response {
    match api::find(&*st.admin, set, q.key.as_deref().unwrap_or("")).await {
        Ok(Some(e)) => Json(entry_json(&e, st.config.trace_url.as_deref())).into_response(),
        Ok(None) => not_found("no such job in this set"),
        Err(e) => err(e),
    }
}

/// `POST /api/{set}/job/{retry|delete|kill|edit}` with `key` (and `args` for `edit`).
pub(crate) async fn set_job_action(
    State(st): State<AppState>,
    Path(action): Path<String>,
    posted: Posted,
    set: SetName,
) -> Response {
    let entry = match api::find(&*st.admin, set, posted.get("key").unwrap_or("")).await {
        Ok(Some(e)) => e,
        Ok(None) => return not_found("no such job in this set"),
        Err(e) => return err(e),
    };
    if action == "edit" {
        if set != SetName::Dead {
            return not_found("arguments are edited on dead jobs");
        }
        return match api::retry_with_args(
            &*st.admin,
            st.actions(),
            set,
            &entry.raw,
            posted.get("args").unwrap_or(""),
        )
        .await
        {
            Ok(true) => Json(json!({"done": "retry", "count": 1})).into_response(),
            Ok(false) => not_found("no such job in this set"),
            Err(msg) => bad(&msg),
        };
    }
    let Some(act) = Action::parse(&action) else {
        return not_found("no such action");
    };
    match api::apply(&*st.admin, st.actions(), set, &entry.raw, act).await {
        Ok(true) => Json(json!({"done": act, "count": 1})).into_response(),
        Ok(false) => (
            StatusCode::CONFLICT,
            Json(json!({"error": "conflict", "message": format!("the job could not be {}", act.done())})),
        )
            .into_response(),
        Err(e) => err(e),
    }
}

/// Applies `action` to the entries `keys` address. Returns how many changed.
pub(crate) async fn bulk(
    st: &AppState,
    set: SetName,
    action: Action,
    keys: &[&str],
) -> Result<u64, BrokerError> {
    let mut n = 0;
    for key in keys.iter().take(api::MAX_PER_PAGE * 10) {
        if let Some(e) = api::find(&*st.admin, set, key).await?
            && api::apply(&*st.admin, st.actions(), set, &e.raw, action).await?
        {
            n += 1;
        }
    }
    Ok(n)
}

/// `POST /api/{set}/bulk` with `action` and `keys` (an array).
pub(crate) async fn set_bulk(State(st): State<AppState>, posted: Posted, set: SetName) -> Response {
    let Some(action) = posted.get("action").and_then(Action::parse) else {
        return bad("action must be retry, delete or kill");
    };
    let mut keys = posted.all("keys");
    keys.extend(posted.all("key"));
    match bulk(&st, set, action, &keys).await {
        Ok(n) => Json(json!({"done": action, "count": n})).into_response(),
        Err(e) => err(e),
    }
}

/// `POST /api/{set}/all` with `action` and optional filter fields.
pub(crate) async fn set_all(State(st): State<AppState>, posted: Posted, set: SetName) -> Response {
    let Some(action) = posted.get("action").and_then(Action::parse) else {
        return bad("action must be retry, delete or kill");
    };
    match api::apply_all(&*st.admin, st.actions(), set, action, &posted.filter()).await {
        Ok(a) => Json(json!({"done": action, "count": a.done, "more": a.more})).into_response(),
        Err(e) => err(e),
    }
}

/// `GET /api/metrics?window=hour|day`.
pub(crate) async fn metrics(State(st): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let window = Window::parse(q.window.as_deref());
    match api::class_metrics(&*st.admin, window).await {
        Ok(rows) => Json(json!({"window": window, "classes": rows})).into_response(),
        Err(e) => err(e),
    }
}

/// `GET /api/openapi.json`.
pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Pauses, resumes or runs periodic entry `name` now: `Some((done code, n))`, `None` for an
/// unknown action; `done` is `gone` when there is no such entry.
pub(crate) async fn periodic_op(
    st: &AppState,
    name: &str,
    action: &str,
) -> Result<Option<(&'static str, u64)>, BrokerError> {
    Ok(Some(match action {
        "pause" | "resume" => match st.broker.periodic_pause(name, action == "pause").await? {
            true if action == "pause" => ("periodic-paused", 1),
            true => ("periodic-resumed", 1),
            false => ("periodic-gone", 0),
        },
        "run" => match api::periodic_run_now(&*st.broker, name, st.config.profile).await {
            Ok(Some(_)) => ("periodic-run", 1),
            Ok(None) => ("periodic-gone", 0),
            Err(errand::Error::Broker(e)) => return Err(e),
            Err(e) => return Err(BrokerError::Command(Box::new(e))),
        },
        _ => return Ok(None),
    }))
}

/// `GET /api/periodic`: every periodic entry with its next and last run.
pub(crate) async fn periodic(State(st): State<AppState>) -> Response {
    let now = errand_core::now();
    match api::periodic(&*st.broker, now).await {
        Ok(entries) => Json(json!({ "periodic": entries })).into_response(),
        Err(e) => err(e),
    }
}

/// `POST /api/periodic/{name}/{pause|resume|run}`.
pub(crate) async fn periodic_action(
    State(st): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    _posted: Posted,
) -> Response {
    match periodic_op(&st, &name, &action).await {
        Ok(Some(("periodic-gone", _))) => not_found("no such periodic entry"),
        Ok(Some((done, n))) => Json(json!({"done": done, "count": n})).into_response(),
        Ok(None) => not_found("no such action"),
        Err(e) => err(e),
    }
}

/// A batch's status as JSON, with its `state` and the `percent` of its members done.
fn batch_json(s: &BatchStatus) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("state".into(), json!(s.state()));
        o.insert("percent".into(), json!(s.done().1));
    }
    v
}

/// How many of a batch's members are in `state`.
pub(crate) fn member_count(s: &BatchStatus, state: MemberState) -> u64 {
    match state {
        MemberState::Pending => s.pending,
        MemberState::Failed => s.failed,
        MemberState::Waiting => s.waiting,
        MemberState::Dead => s.dead,
        MemberState::Cancelled => s.cancelled,
    }
}

/// Members `offset..offset + limit` of batch `d` in `state`: from the lists `d` holds when they
/// are whole or reach that far, else from the backend.
pub(crate) async fn member_page(
    st: &AppState,
    d: &BatchDetail,
    state: MemberState,
    offset: usize,
    limit: usize,
) -> Result<Vec<String>, BrokerError> {
    let held = d
        .members
        .get(state.as_str())
        .map(Vec::as_slice)
        .unwrap_or_default();
    if held.len() < api::MAX_BATCH_MEMBERS || offset + limit <= held.len() {
        return Ok(held.iter().skip(offset).take(limit).cloned().collect());
    }
    st.broker
        .batch_members(&d.batch.bid, state, offset, limit)
        .await
}

fn unsupported(what: &str) -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        Json(json!({"error": "unsupported", "message": format!("this backend does not keep {what}")})),
    )
        .into_response()
}

/// `GET /api/batches?page&per_page`: batches, newest first.
pub(crate) async fn batches(State(st): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    if !st.broker.capabilities().batches {
        return unsupported("batches");
    }
    let per_page = q.per_page();
    let page = q.page();
    let offset = ((page - 1) * per_page).min(api::MAX_OFFSET);
    let (list, total) = or_err!(st.broker.batch_list(offset, per_page).await);
    Json(json!({
        "page": page,
        "per_page": per_page,
        "total": total,
        "batches": list.iter().map(batch_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `GET /api/batches/{bid}?page&per_page`: a batch's status, its members per state (each list
/// paged alike) and, for a workflow, its steps with their states ([`api::batch_detail`]).
pub(crate) async fn batch(
    State(st): State<AppState>,
    Path(bid): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if !st.broker.capabilities().batches {
        return unsupported("batches");
    }
    let Some(detail) = or_err!(api::batch_detail(&*st.broker, &bid).await) else {
        return not_found("no such batch (it never existed, or it completed and expired)");
    };
    let per_page = q.per_page();
    let page = q.page();
    let offset = ((page - 1) * per_page).min(api::MAX_OFFSET);
    let mut members = serde_json::Map::new();
    for state in MemberState::ALL {
        let list = or_err!(member_page(&st, &detail, state, offset, per_page).await);
        members.insert(state.as_str().into(), json!(list));
    }
    Json(json!({
        "batch": batch_json(&detail.batch),
        "page": page,
        "per_page": per_page,
        "members": members,
        "steps": detail.steps,
    }))
    .into_response()
}
