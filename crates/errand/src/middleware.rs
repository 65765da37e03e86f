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

/// The `tracing` target of [`Logging`]'s events, for filters (`RUST_LOG=errand::job=info`) and
/// log pipelines.
pub const LOG_TARGET: &str = "errand::job";

/// Logs each attempt: a debug `start` line, then ONE event for its outcome (target
/// [`LOG_TARGET`]) with the fields
///
/// - `jid`, `class`, `queue`;
/// - `attempt`: 1 for the first run, 2 for the first retry, ... ([`JobContext::attempt`]);
/// - `duration_ms`: how long the attempt took, in milliseconds (a float);
/// - `outcome`: `done`, `discarded` ([`JobError::discard`](crate::JobError::discard)),
///   `snoozed` (with `snooze_ms`), `cancelled` (an error returned after a cancel), `failed`
///   (a retryable error, a panic or a timeout: retried while retries remain), `dead`
///   ([`JobError::dead`](crate::JobError::dead): no more retries) or `interrupted` (stopped by
///   the shutdown deadline and requeued);
/// - `error` (the message) and `error_class`: on every outcome but `done` and `snoozed`.
///
/// `done`, `discarded`, `snoozed` and `cancelled` are logged at info, the others at warn.
/// Installed by default, outermost.
///
/// Two outcomes never reach the middleware chain, so the server logs them itself, on the same
/// target with the same fields (`duration_ms` 0), whatever the chain holds: `expired` (a job
/// past its `expires_at`, dropped without running; info, with `late_by_s`) and a `failed`
/// attempt of a class this process does not know (`error_class` `Errand::UnknownJob`; warn).
#[derive(Debug, Default, Clone, Copy)]
pub struct Logging;

/// Logs one outcome event with the fields every outcome has, then `$extra`.
macro_rules! outcome {
    ($level:expr, $cx:expr, $ms:expr, $outcome:literal, $msg:literal $(, $($extra:tt)+)?) => {
        tracing::event!(
            target: $crate::middleware::LOG_TARGET,
            $level,
            jid = $cx.jid(),
            class = $cx.class(),
            queue = $cx.queue(),
            attempt = $cx.attempt(),
            duration_ms = $ms,
            outcome = $outcome,
            $($($extra)+,)?
            $msg
        )
    };
}
pub(crate) use outcome;

/// Milliseconds since `start`, to the microsecond.
fn millis_since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Logs the outcome of an attempt whose future was dropped before it finished: the job's
/// timeout passed (the server then records an `Errand::Timeout` failure), or the shutdown
/// deadline did (the job goes back to its queue).
struct Unfinished<'a> {
    cx: &'a JobContext,
    start: Instant,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (cx, ms) = (self.cx, millis_since(self.start));
        if cx.shutdown_token().is_cancelled() {
            outcome!(
                tracing::Level::WARN,
                cx,
                ms,
                "interrupted",
                "job interrupted",
                error = "stopped by the shutdown deadline; the job goes back to its queue",
                error_class = "Errand::Shutdown"
            );
        } else {
            outcome!(
                tracing::Level::WARN,
                cx,
                ms,
                "failed",
                "job failed",
                error = "job ran longer than its timeout",
                error_class = "Errand::Timeout"
            );
        }
    }
}

#[async_trait]
impl Middleware for Logging {
    async fn call(&self, cx: &JobContext, next: Next<'_>) -> JobResult {
        use futures::FutureExt;
        use tracing::Level;
        let start = Instant::now();
        tracing::debug!(
            target: LOG_TARGET,
            jid = cx.jid(),
            class = cx.class(),
            queue = cx.queue(),
            attempt = cx.attempt(),
            "start"
        );
        let mut unfinished = Unfinished {
            cx,
            start,
            armed: true,
        };
        // A panic is logged here and passed on (the server turns it into an `Errand::Panic`
        // failure), so a panicking attempt has its outcome line too.
        let run = std::panic::AssertUnwindSafe(next.run())
            .catch_unwind()
            .await;
        unfinished.armed = false;
        let ms = millis_since(start);
        let result = match run {
            Ok(result) => result,
            Err(panic) => {
                let message = crate::error::panic_message(&*panic).unwrap_or("job panicked");
                outcome!(
                    Level::WARN,
                    cx,
                    ms,
                    "failed",
                    "job failed",
                    error = message,
                    error_class = "Errand::Panic"
                );
                std::panic::resume_unwind(panic);
            }
        };
        let Err(e) = &result else {
            outcome!(Level::INFO, cx, ms, "done", "job done");
            return result;
        };
        let (error, error_class) = (e.message(), e.class());
        match e.kind() {
            // As the server decides: an error returned after a cancel ends the job, whatever
            // its kind.
            _ if cx.is_cancelled() => outcome!(
                Level::INFO,
                cx,
                ms,
                "cancelled",
                "job cancelled",
                error,
                error_class
            ),
            // Expected outcomes, not failures: a discard (declined card) or a snooze.
            JobErrorKind::Snooze(delay) => outcome!(
                Level::INFO,
                cx,
                ms,
                "snoozed",
                "job snoozed",
                snooze_ms = delay.as_millis() as u64
            ),
            JobErrorKind::Discard => outcome!(
                Level::INFO,
                cx,
                ms,
                "discarded",
                "job discarded",
                error,
                error_class
            ),
            JobErrorKind::Dead => {
                outcome!(Level::WARN, cx, ms, "dead", "job dead", error, error_class)
            }
            JobErrorKind::Retry => outcome!(
                Level::WARN,
                cx,
                ms,
                "failed",
                "job failed",
                error,
                error_class
            ),
        }
        result
    }
}
