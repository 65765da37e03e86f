//! What a failed attempt leads to (spec §3.4): the retry set with Sidekiq's backoff, the dead
//! set when retries run out, or nothing for `retry: false` — with death handlers and the
//! retries-exhausted hook called exactly once per death.

use super::launcher::Shared;
use crate::JobError;
use crate::registry::Handler;
use errand_core::broker::{BrokerResult, Fetched, Settle};
use errand_core::{Failure, Payload, RetrySetting, backoff};
use serde_json::Value;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// Runs a broker step, retrying connection errors with backoff: a job's transition must not be
/// dropped because Redis blinked. Gives up after about a minute (the job stays in flight and is
/// recovered by the shutdown requeue or orphan recovery).
pub(crate) async fn persist<F, Fut>(s: &Shared, what: &str, op: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = BrokerResult<bool>>,
{
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=12 {
        match op().await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(what, identity = %s.identity, "job was no longer held in flight (lease lost to recovery); change rejected");
                return;
            }
            Err(e) if e.is_connection_error() && attempt < 12 => {
                tracing::warn!(what, error = %e, attempt, "backend unavailable, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                tracing::error!(what, error = %e, "backend step failed; the job stays in flight and will be recovered");
                return;
            }
        }
    }
}

/// Frees a unique job's key (its `unique_key` lease, held by its jid) when the job is done
/// with it. Releasing is best effort: the lease expires by itself after `unique_for`.
pub(crate) async fn release_unique(s: &Shared, payload: &Payload) {
    if !unique_until_start(payload) {
        free_unique_key(s, payload).await;
    }
}

/// Frees a unique job's key whatever its `unique_until` (at the start of a `start` job).
pub(crate) async fn free_unique_key(s: &Shared, payload: &Payload) {
    let Some(key) = payload.get("unique_key").and_then(Value::as_str) else {
        return;
    };
    if let Err(e) = s.broker().lease_release(key, payload.jid()).await {
        tracing::warn!(jid = payload.jid(), key, error = %e, "releasing a unique lock failed; it expires by itself");
    }
}

/// Whether a unique job's key is released when it starts rather than when it succeeds.
pub(crate) fn unique_until_start(payload: &Payload) -> bool {
    payload.get("unique_until").and_then(Value::as_str) == Some("start")
}

fn run_death_handlers(s: &Shared, payload: &Payload, err: &JobError) {
    for h in &s.parts.death_handlers {
        if std::panic::catch_unwind(AssertUnwindSafe(|| h(payload, err))).is_err() {
            tracing::error!(jid = payload.jid(), "a death handler panicked");
        }
    }
}

pub(crate) async fn handle_failure(
    s: &Shared,
    job: &Fetched,
    mut payload: Payload,
    handler: Option<&dyn Handler>,
    err: &JobError,
) {
    let c = s.config();
    let setting = match payload.retry() {
        // An absent `retry` takes the job's own option; for an unknown class, Errand retries
        // by default (Sidekiq would drop it), so a lagging deploy can still run it later.
        RetrySetting::Absent => match handler.map(|h| h.options().retry_option()) {
            Some(crate::Retry::Disabled) => RetrySetting::Disabled,
            Some(crate::Retry::Count(n)) => RetrySetting::Count(n),
            _ => RetrySetting::Default,
        },
        other => other,
    };
    if setting == RetrySetting::Disabled {
        tracing::warn!(jid = payload.jid(), class = payload.display_class(), error = %err, "failed with retry disabled; dropped");
        run_death_handlers(s, &payload, err);
        persist(s, "ack", || s.broker().ack(job)).await;
        release_unique(s, &payload).await;
        return;
    }
    let max = match setting {
        RetrySetting::Count(n) => n,
        _ => c.max_retries,
    };
    // A retry_count that is not a count (1e300, "NaN", true, an integer past i64) cannot be
    // trusted to end the retries: the job is treated as exhausted.
    let bad_count = payload
        .get("retry_count")
        .is_some_and(|v| v.as_i64().is_none_or(|n| n < -1));
    if bad_count {
        tracing::warn!(
            jid = payload.jid(),
            "invalid retry_count; treated as exhausted"
        );
    }
    let now = s.now();
    let count = payload.record_failure(&Failure {
        class: err.class(),
        message: err.message(),
        backtrace: err.backtrace(),
        fetched_from: &job.queue,
        now,
        profile: c.profile,
    });
    let exhausted = count >= max || err.kind() == crate::JobErrorKind::Dead || bad_count;
    if !exhausted {
        let custom = handler.and_then(|h| h.retry_in(count, err));
        let delay = match (custom, &s.parts.retry_delay) {
            (Some(d), _) => backoff::delay(c.profile, count, Some(d.as_secs())) as f64,
            (None, Some(f)) => f(count).as_secs_f64(),
            (None, None) => backoff::delay(c.profile, count, None) as f64,
        };
        let to = Settle::Retry {
            payload: payload.to_json(),
            at: now + delay,
        };
        tracing::info!(
            jid = payload.jid(),
            count,
            delay_s = delay,
            "retry scheduled"
        );
        #[cfg(feature = "failpoints")]
        super::launcher::crash_point("inside_retry_write");
        persist(s, "retry", || s.broker().settle(job, to.clone())).await;
        return;
    }
    if let Some(h) = handler
        && std::panic::catch_unwind(AssertUnwindSafe(|| h.retries_exhausted(&payload, err)))
            .is_err()
    {
        tracing::error!(jid = payload.jid(), "retries_exhausted hook panicked");
    }
    if payload.get("dead") == Some(&Value::Bool(false)) {
        persist(s, "ack", || s.broker().ack(job)).await;
    } else {
        let to = Settle::Dead {
            payload: payload.to_json(),
            now,
            limits: c.dead_limits,
        };
        persist(s, "kill", || s.broker().settle(job, to.clone())).await;
    }
    tracing::warn!(jid = payload.jid(), class = payload.display_class(), error = %err, "job died");
    run_death_handlers(s, &payload, err);
    release_unique(s, &payload).await;
}

pub(crate) async fn bury_malformed(s: &Shared, job: &Fetched, reason: &str) {
    let p = errand_core::malformed_entry(&job.raw, &job.queue, reason, s.config().profile, s.now());
    tracing::error!(queue = %job.queue, reason, "malformed queue entry moved to the dead set");
    let to = Settle::Dead {
        payload: p.to_json(),
        now: s.now(),
        limits: s.config().dead_limits,
    };
    persist(s, "kill", || s.broker().settle(job, to.clone())).await;
}
