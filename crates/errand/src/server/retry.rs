//! What a failed attempt leads to (spec §3.4): the retry set with Sidekiq's backoff, the dead
//! set when retries run out, or nothing for `retry: false` — with death handlers and the
//! retries-exhausted hook called exactly once per death.

use super::state::Shared;
use crate::JobError;
use crate::registry::Handler;
use errand_core::broker::{BatchOutcome, Fetched, Settle};
use errand_core::{Failure, Payload, RetrySetting, backoff};
use serde_json::Value;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

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
    if let Err(e) = s.broker().permit_release(key, payload.jid()).await {
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
    job: &Arc<Fetched>,
    mut payload: Payload,
    handler: Option<&dyn Handler>,
    err: &JobError,
) {
    let c = s.config();
    let setting = match payload.retry() {
        // An absent `retry` takes the job's own option; for an unknown class, Errand retries
        // by default (Sidekiq would drop it), so a lagging deploy can still run it later.
        RetrySetting::Absent => match handler.map(|h| h.options().retry) {
            Some(crate::Retry::Disabled) => RetrySetting::Disabled,
            Some(crate::Retry::Count(n)) => RetrySetting::Count(n),
            _ => RetrySetting::Default,
        },
        other => other,
    };
    if setting == RetrySetting::Disabled {
        tracing::warn!(jid = payload.jid(), class = payload.display_class(), error = %err, "failed with retry disabled; dropped");
        run_death_handlers(s, &payload, err);
        if !super::batch::record(s, &payload, BatchOutcome::Died).await {
            return;
        }
        s.completer.finish(job, None, "ack").await;
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
        if !super::batch::record(s, &payload, BatchOutcome::Failed).await {
            return;
        }
        s.completer.finish(job, Some(to), "retry").await;
        return;
    }
    if let Some(h) = handler
        && std::panic::catch_unwind(AssertUnwindSafe(|| h.retries_exhausted(&payload, err)))
            .is_err()
    {
        tracing::error!(jid = payload.jid(), "retries_exhausted hook panicked");
    }
    if !super::batch::record(s, &payload, BatchOutcome::Died).await {
        return;
    }
    if payload.get("dead") == Some(&Value::Bool(false)) {
        s.completer.finish(job, None, "ack").await;
    } else {
        let to = Settle::Dead {
            payload: payload.to_json(),
            now,
            limits: c.dead_limits,
        };
        s.completer.finish(job, Some(to), "kill").await;
    }
    tracing::warn!(jid = payload.jid(), class = payload.display_class(), error = %err, "job died");
    run_death_handlers(s, &payload, err);
    release_unique(s, &payload).await;
}

pub(crate) async fn bury_malformed(s: &Shared, job: &Arc<Fetched>, reason: &str) {
    let p = errand_core::malformed_entry(&job.raw, &job.queue, reason, s.config().profile, s.now());
    tracing::error!(queue = %job.queue, reason, "malformed queue entry moved to the dead set");
    let to = Settle::Dead {
        payload: p.to_json(),
        now: s.now(),
        limits: s.config().dead_limits,
    };
    s.completer.finish(job, Some(to), "kill").await;
}
