//! Runs one fetched job: parse, resolve its class, run the middleware chain and the job under
//! its timeout with panics caught, then ack or hand the failure to `retry`.

use super::state::{Running, Shared};
use super::{batch, retry};
use crate::context::Control;
use crate::job::{EXPIRES_AT, KEEP_RESULT};
use crate::middleware::Next;
use crate::registry::Handler;
use crate::{JobContext, JobError, JobErrorKind, JobResult};
use errand_core::broker::{BatchOutcome, Fetched, Settle};
use errand_core::{Payload, activejob};
use futures::FutureExt;
use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::OwnedSemaphorePermit;

pub(crate) fn spawn(s: &Arc<Shared>, job: Fetched, tid: u64, permit: OwnedSemaphorePermit) {
    // The Busy page's entry is serialized at heartbeat time, not here on the hot path.
    let job = Arc::new(job);
    let control = Arc::new(Control::default());
    let running = Running {
        job: job.clone(),
        run_at: s.now() as i64,
        abort: None,
        control: control.clone(),
    };
    if let Ok(mut r) = s.running.lock() {
        r.insert(tid, running);
    }
    let task_s = s.clone();
    let handle = s.jobs.spawn(async move {
        process(&task_s, &job, control).await;
        if let Ok(mut r) = task_s.running.lock() {
            r.remove(&tid);
        }
        drop(permit);
    });
    if let Ok(mut r) = s.running.lock()
        && let Some(entry) = r.get_mut(&tid)
    {
        entry.abort = Some(handle.abort_handle());
    }
}

/// Runs `job`, with `control` shared with the heartbeat (cancellation, progress).
pub(crate) async fn process(s: &Shared, job: &Arc<Fetched>, control: Arc<Control>) {
    // Checked before parsing, so a 10 MB entry is never decoded.
    let limit = s.parts.client.payload_limit();
    if job.raw.len() > limit {
        let reason = format!(
            "payload of {} bytes is over the limit of {limit} bytes",
            job.raw.len()
        );
        return retry::bury_malformed(s, job, &reason).await;
    }
    let payload = match Payload::parse(&job.raw) {
        Ok(p) => p,
        Err(e) => return retry::bury_malformed(s, job, &e.to_string()).await,
    };
    if let Some(reason) = invalid_jid(&payload) {
        return retry::bury_malformed(s, job, reason).await;
    }
    if let Some(deadline) = payload.get(EXPIRES_AT).and_then(serde_json::Value::as_f64)
        && s.now() > deadline
    {
        s.expired.fetch_add(1, Ordering::Relaxed);
        // Never reaches the middleware chain: its outcome line is written here.
        tracing::info!(
            target: crate::middleware::LOG_TARGET,
            jid = payload.jid(),
            class = payload.display_class(),
            queue = payload.queue(),
            attempt = payload.attempt(),
            duration_ms = 0.0,
            outcome = "expired",
            late_by_s = s.now() - deadline,
            "job expired: dropped without running"
        );
        if !batch::record(s, &payload, BatchOutcome::Died).await {
            return;
        }
        s.completer.finish(job, None, "ack").await;
        retry::release_unique(s, &payload).await;
        return;
    }
    let _ = control.jid.set(payload.jid().to_string());
    s.processed.fetch_add(1, Ordering::Relaxed);
    // The context owns the payload for the attempt; it is taken back afterwards for the retry
    // bookkeeping, so the hot path never copies it.
    if retry::unique_until_start(&payload) {
        retry::free_unique_key(s, &payload).await;
    }
    let cx = JobContext::new(payload, s.parts.client.clone(), s.parts.data.clone())
        .with_shutdown(s.deadline.clone(), &job.queue)
        .with_once_ttl(s.config().once_ttl)
        .with_fencing_token(job.token)
        .with_control(control.clone());
    let (handler, result) = match resolve(s, cx.payload()) {
        Err(e) => {
            // Never reaches the middleware chain (nor the attempt span): written here.
            crate::middleware::outcome!(
                tracing::Level::WARN,
                cx,
                0.0,
                "failed",
                "job failed",
                error = e.message(),
                error_class = e.class()
            );
            #[cfg(feature = "spans")]
            crate::trace::record_outcome(
                &crate::trace::attempt_span(cx.payload(), cx.attempt(), s.config().propagation),
                Err(&e),
                false,
            );
            (None, Err(e))
        }
        Ok(Resolved {
            handler,
            class,
            args,
        }) => {
            #[cfg(feature = "failpoints")]
            super::crash::crash_point("before_execute");
            let started = std::time::Instant::now();
            let result = attempt(s, handler.as_ref(), &args, &cx).await;
            let failed = result
                .as_ref()
                .is_err_and(|e| !matches!(e.kind(), JobErrorKind::Snooze(_)))
                && !control.cancel.is_cancelled();
            s.record_metric(&class, started.elapsed().as_millis() as u64, failed);
            (Some(handler), result)
        }
    };
    let payload = cx.into_payload();
    if result.is_ok() {
        keep_result(s, &payload, &control).await;
    }
    let Err(err) = result else {
        #[cfg(feature = "failpoints")]
        super::crash::crash_point("after_execute_before_ack");
        if !batch::record(s, &payload, BatchOutcome::Succeeded).await {
            return;
        }
        s.completer.finish(job, None, "ack").await;
        retry::release_unique(s, &payload).await;
        return;
    };
    if control.cancel.is_cancelled() {
        // Cancelled and stopped: over, not retried (nor snoozed).
        s.cancelled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            jid = payload.jid(),
            class = payload.display_class(),
            error = err.message(),
            "cancelled"
        );
        if !batch::record(s, &payload, BatchOutcome::Died).await {
            return;
        }
        s.completer.finish(job, None, "ack").await;
        retry::release_unique(s, &payload).await;
        return;
    }
    match err.kind() {
        JobErrorKind::Snooze(delay) => {
            // Count the snooze in the payload, so lock and limit contention can back off.
            let mut payload = payload;
            let snoozes = payload
                .get("snoozes")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            payload.set("snoozes", snoozes + 1);
            let to = Settle::Scheduled {
                payload: payload.to_json(),
                at: s.now() + delay.as_secs_f64(),
            };
            s.completer.finish(job, Some(to), "snooze").await;
        }
        JobErrorKind::Discard => {
            s.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                jid = payload.jid(),
                class = payload.display_class(),
                reason = err.message(),
                "discarded"
            );
            if !batch::record(s, &payload, BatchOutcome::Succeeded).await {
                return;
            }
            s.completer.finish(job, None, "ack").await;
            retry::release_unique(s, &payload).await;
        }
        _ => {
            s.failed.fetch_add(1, Ordering::Relaxed);
            retry::handle_failure(s, job, payload, handler.as_deref(), &err).await;
        }
    }
}

/// Stores the result the attempt set, when the job asks for results to be kept; before the
/// ack, so a job seen done has its result readable. Retried through a connection loss; given
/// up (logged) only after that.
async fn keep_result(s: &Shared, payload: &errand_core::Payload, control: &Control) {
    let Some(keep) = payload
        .get(KEEP_RESULT)
        .and_then(serde_json::Value::as_f64)
        .filter(|k| *k > 0.0)
    else {
        return;
    };
    let Some(value) = control.result.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    let keep = std::time::Duration::from_secs_f64(keep.min(1e9));
    let broker = s.broker();
    let jid = payload.jid();
    if let Err(e) = crate::reconnect::retry("keeping a job result", 8, || {
        broker.result_put(jid, &value, keep)
    })
    .await
    {
        tracing::error!(jid, error = %e, "the job's result could not be kept");
    }
}

async fn attempt(
    s: &Shared,
    h: &dyn Handler,
    args: &[serde_json::Value],
    cx: &JobContext,
) -> JobResult {
    #[cfg(feature = "spans")]
    {
        use tracing::Instrument;
        let span = crate::trace::attempt_span(cx.payload(), cx.attempt(), s.config().propagation);
        let result = guarded_attempt(s, h, args, cx)
            .instrument(span.clone())
            .await;
        crate::trace::record_outcome(&span, result.as_ref().map(|_| ()), cx.is_cancelled());
        result
    }
    #[cfg(not(feature = "spans"))]
    guarded_attempt(s, h, args, cx).await
}

/// One attempt through the middleware chain, under the job's timeout, a panic caught as a
/// retryable failure.
async fn guarded_attempt(
    s: &Shared,
    h: &dyn Handler,
    args: &[serde_json::Value],
    cx: &JobContext,
) -> JobResult {
    let timeout = h.options().timeout.or(s.config().job_timeout);
    let chain = Next::new(&s.parts.middleware, h.perform(args, cx), cx).run();
    let guarded = AssertUnwindSafe(chain).catch_unwind();
    let outcome = match timeout {
        Some(t) => match tokio::time::timeout(t, guarded).await {
            Ok(o) => o,
            Err(_) => {
                return Err(JobError::retry(format!("job ran longer than {t:?}"))
                    .with_class("Errand::Timeout"));
            }
        },
        None => guarded.await,
    };
    outcome.unwrap_or_else(|panic| {
        let msg = crate::error::panic_message(&*panic).unwrap_or("job panicked");
        Err(JobError::retry(msg).with_class("Errand::Panic"))
    })
}

/// Runs `payload`'s job now in this process (middleware, timeout, panics caught) without the
/// backend: no fetch, no ack, no retry bookkeeping. The outcome is returned as is.
pub(crate) async fn perform_now(s: &Shared, payload: Payload) -> JobResult {
    let queue = payload.queue().to_string();
    let cx = JobContext::new(payload, s.parts.client.clone(), s.parts.data.clone())
        .with_shutdown(s.deadline.clone(), &queue)
        .with_once_ttl(s.config().once_ttl);
    let job = resolve(s, cx.payload())?;
    attempt(s, job.handler.as_ref(), &job.args, &cx).await
}

/// What a payload runs as: see [`resolve`].
struct Resolved<'p> {
    handler: Arc<dyn Handler>,
    class: Cow<'p, str>,
    args: Cow<'p, [serde_json::Value]>,
}

/// The handler a payload runs with (an ActiveJob wrapper is unwrapped to its job class), the
/// class it runs as, and its arguments; an unknown class is a failed attempt naming it
/// (`Errand::UnknownJob`), retried like any other so a lagging deploy can run it later.
fn resolve<'p>(s: &Shared, payload: &'p Payload) -> Result<Resolved<'p>, JobError> {
    let (class, args) = match activejob::unwrap(payload) {
        Some((class, args)) => (Cow::Owned(class), Cow::Owned(args)),
        None => (
            Cow::Borrowed(payload.class()),
            Cow::Borrowed(payload.args()),
        ),
    };
    match s.parts.registry.get(&class) {
        Some(h) => Ok(Resolved {
            handler: h.clone(),
            class,
            args,
        }),
        None => Err(JobError::retry(format!(
            "no job is registered for class {class} on this server"
        ))
        .with_class("Errand::UnknownJob")),
    }
}

/// Why a payload's `jid` cannot identify it (missing, not a string, or over 255 bytes), if so.
fn invalid_jid(payload: &Payload) -> Option<&'static str> {
    match payload.get("jid") {
        Some(serde_json::Value::String(j)) if !j.is_empty() && j.len() <= 255 => None,
        Some(serde_json::Value::String(j)) if j.is_empty() => Some("empty jid"),
        Some(serde_json::Value::String(_)) => Some("jid longer than 255 bytes"),
        Some(_) => Some("jid is not a string"),
        None => Some("no jid"),
    }
}
