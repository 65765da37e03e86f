//! The poller, which moves due scheduled and retry jobs to their queues, and the orphan
//! rescuer, which returns the in-flight jobs of dead processes to their queues.
//!
//! Poll intervals scale with the number of processes like Sidekiq's (`5 s × processes` on
//! average, drawn at random around that), so a large fleet polls Redis about every 5 s in total
//! instead of stampeding it.

use super::launcher::Shared;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

const AVERAGE_SCHEDULED_POLL: Duration = Duration::from_secs(5);

async fn average_interval(s: &Shared) -> Duration {
    if let Some(fixed) = s.config().poll_interval {
        return fixed;
    }
    let processes = s.broker().process_count().await.unwrap_or(1).max(1);
    AVERAGE_SCHEDULED_POLL * processes as u32
}

fn random_around(average: Duration, processes_hint_large: bool) -> Duration {
    let mut rng = rand::rng();
    let factor = if processes_hint_large {
        rng.random_range(0.0..2.0)
    } else {
        rng.random_range(0.5..1.5)
    };
    average.mul_f64(factor)
}

pub(crate) async fn run(s: Arc<Shared>) {
    let first = average_interval(&s).await;
    // Spread the first polls of processes started together.
    let mut wait = first.mul_f64(rand::rng().random_range(0.0..1.0));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = s.quiet.cancelled() => break,
        }
        match s
            .broker()
            .promote_due(errand_core::now(), s.config().profile)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(jobs = n, "enqueued due jobs"),
            Err(e) => tracing::error!(error = %e, "moving due jobs failed"),
        }
        let average = average_interval(&s).await;
        let large = s.config().poll_interval.is_none() && average >= AVERAGE_SCHEDULED_POLL * 10;
        wait = random_around(average, large);
    }
}

pub(crate) async fn rescue(s: Arc<Shared>) {
    loop {
        match s.broker().rescue_orphans().await {
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
