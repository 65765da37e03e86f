//! The poller, which moves due scheduled and retry jobs to their queues, and the orphan
//! rescuer, which returns the in-flight jobs of dead processes to their queues.
//!
//! Sidekiq spreads polls by making each process wait `5 s × processes` on average, so the
//! cluster polls about every 5 s and a due job waits 2.5 s on average, more with bad luck.
//! Errand instead takes turns: every process asks the backend for the cluster-wide turn once
//! per window ([`Fleet::claim_poll`](errand_core::broker::Fleet::claim_poll), a `SET NX PX` on
//! Redis), and only the winner promotes. The fleet promotes about once a window (500 ms by
//! default) whatever its size, and the backend sees one cheap claim per process per window.

use super::state::Shared;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

/// The default promotion window.
pub(crate) const DEFAULT_POLL_WINDOW: Duration = Duration::from_millis(500);

pub(crate) async fn run(s: Arc<Shared>) {
    let window = s.config().poll_interval.unwrap_or(DEFAULT_POLL_WINDOW);
    loop {
        // A little jitter so processes started together do not claim in lockstep.
        let wait = window.mul_f64(rand::rng().random_range(0.9..1.1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = s.quiet.cancelled() => break,
        }
        match s.broker().claim_poll(window).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(error = %e, "claiming the poll turn failed");
                continue;
            }
        }
        match promote(&s).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(jobs = n, "enqueued due jobs"),
            Err(e) => tracing::error!(error = %e, "moving due jobs failed"),
        }
    }
}

pub(crate) async fn rescue(s: Arc<Shared>) {
    loop {
        let policy = errand_core::broker::RescuePolicy {
            max_recoveries: s.config().max_recoveries,
            dead_limits: s.config().dead_limits,
            profile: s.config().profile,
        };
        match s.broker().rescue_orphans(&policy).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "recovered jobs of dead processes"),
            Err(e) => tracing::error!(error = %e, "orphan recovery failed"),
        }
        let wait = s
            .config()
            .rescue_interval
            .mul_f64(rand::rng().random_range(0.5..1.5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = s.quiet.cancelled() => break,
        }
    }
}

/// Moves due jobs to their queues by the backend's clock, not this worker's (which may be
/// skewed): a job scheduled for 12:00 runs at 12:00 by the backend, whatever the worker's
/// clock says. (The memory backend's clock is the one tests control.)
pub(crate) async fn promote(s: &Shared) -> errand_core::broker::BrokerResult<usize> {
    let now = match s.broker().now().await {
        Ok(backend) => backend,
        Err(_) => s.now(),
    };
    s.broker().promote_due(now, s.config().profile).await
}
