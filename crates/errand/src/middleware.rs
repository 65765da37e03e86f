//! Server middleware: code that wraps every job attempt (logging, timing, tracing, metrics).
//!
//! A middleware receives the job's context and a [`Next`] to call the rest of the chain; it may
//! act before and after, change the result, or return early without running the job.

use crate::{JobContext, JobErrorKind, JobResult};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Instant;

/// Wraps each job attempt.
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// Runs around one attempt; call `next.run().await` to continue the chain.
    async fn call(&self, cx: &JobContext, next: Next<'_>) -> JobResult;
}

/// The rest of the middleware chain, ending in the job itself.
pub struct Next<'a> {
    rest: &'a [Arc<dyn Middleware>],
    job: BoxFuture<'a, JobResult>,
    cx: &'a JobContext,
}

impl<'a> Next<'a> {
    pub(crate) fn new(
        rest: &'a [Arc<dyn Middleware>],
        job: BoxFuture<'a, JobResult>,
        cx: &'a JobContext,
    ) -> Self {
        Self { rest, job, cx }
    }

    /// Runs the remaining middleware and the job.
    pub async fn run(self) -> JobResult {
        match self.rest.split_first() {
            Some((m, rest)) => m.call(self.cx, Next::new(rest, self.job, self.cx)).await,
            None => self.job.await,
        }
    }
}

/// Logs each attempt's start and end with its jid, class and queue, and how long it took.
/// Installed by default.
#[derive(Debug, Default, Clone, Copy)]
pub struct Logging;

#[async_trait]
impl Middleware for Logging {
    async fn call(&self, cx: &JobContext, next: Next<'_>) -> JobResult {
        let start = Instant::now();
        tracing::debug!(
            jid = cx.jid(),
            class = cx.class(),
            queue = cx.queue(),
            "start"
        );
        let result = next.run().await;
        let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok(()) => tracing::info!(jid = cx.jid(), class = cx.class(), elapsed_ms, "done"),
            // Expected outcomes, not failures: a discard (declined card) or a snooze.
            Err(e) if matches!(e.kind(), JobErrorKind::Discard | JobErrorKind::Snooze(_)) => {
                tracing::info!(
                    jid = cx.jid(),
                    class = cx.class(),
                    elapsed_ms,
                    outcome = %e,
                    "done without success"
                )
            }
            Err(e) => tracing::warn!(
                jid = cx.jid(),
                class = cx.class(),
                elapsed_ms,
                error = %e,
                "fail"
            ),
        }
        result
    }
}
