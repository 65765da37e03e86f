//! Starts a server's parts (manager, scheduler, heartbeat, orphan recovery) and shuts them down
//! in Sidekiq's order: quiet (stop fetching), wait for running jobs up to the deadline, put
//! unfinished jobs back on their queues, unregister.

use super::completer::Completer;
use super::state::{Parts, Shared};
use super::{Config, ServerBuilder};
use crate::Error;
use errand_core::broker::{Broker, FetchRequest};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A handle to quiet or stop a running [`Server`] from elsewhere in the program.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("identity", &self.shared.identity)
            .finish()
    }
}

impl ServerHandle {
    /// Stops fetching new jobs; running jobs finish. Idempotent.
    pub fn quiet(&self) {
        self.shared.quiet.cancel();
    }

    /// Starts a graceful shutdown (quiet, wait up to the shutdown timeout, requeue the rest).
    /// Idempotent.
    pub fn stop(&self) {
        self.shared.quiet.cancel();
        self.shared.stop.cancel();
    }

    /// The process identity, as listed in Sidekiq's `processes` set.
    pub fn identity(&self) -> &str {
        &self.shared.identity
    }

    /// Number of jobs running now.
    pub fn busy(&self) -> usize {
        self.shared.busy()
    }
}

/// What [`Server::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// Jobs fetched and run (malformed entries moved to the dead set count too).
    pub performed: usize,
    /// Of those, the attempts that failed (retried, dead, dropped or discarded).
    pub failed: usize,
}

/// A worker process: fetches jobs from its queues and runs them.
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("identity", &self.shared.identity)
            .finish()
    }
}

fn info_json(identity: &str, c: &Config, started_at: f64) -> String {
    let weights: serde_json::Map<String, serde_json::Value> = c
        .queues
        .iter()
        .map(|(q, w)| (q.clone(), serde_json::Value::from(*w)))
        .collect();
    let mode = match c.mode {
        super::QueueMode::Strict => "strict",
        super::QueueMode::Weighted => "weighted",
    };
    serde_json::json!({
        "hostname": errand_core::id::hostname(),
        "started_at": started_at,
        "pid": std::process::id(),
        "tag": c.tag,
        "concurrency": c.concurrency,
        "queues": c.queue_names,
        "weights": [weights],
        "capsules": {"default": {"concurrency": c.concurrency, "mode": mode, "weights": weights}},
        "labels": c.labels,
        "identity": identity,
        "version": concat!("errand ", env!("CARGO_PKG_VERSION")),
        "embedded": false,
    })
    .to_string()
}

impl Server {
    /// A builder for a server on `broker`.
    pub fn builder<B: Broker>(broker: B) -> ServerBuilder {
        ServerBuilder::new(Arc::new(broker))
    }

    /// A builder for a server on a shared broker.
    pub fn builder_arc(broker: Arc<dyn Broker>) -> ServerBuilder {
        ServerBuilder::new(broker)
    }

    pub(crate) fn new(parts: Parts) -> Self {
        let identity = errand_core::id::new_identity();
        let info = info_json(&identity, &parts.config, (parts.clock)());
        let completer = Completer::new(parts.broker.clone(), identity.clone());
        let recorder = super::recorder::Recorder::new(parts.broker.clone());
        Self {
            shared: Arc::new(Shared {
                completer,
                recorder,
                clock_offset_us: AtomicI64::new(0),
                parts,
                identity,
                info,
                processed: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                expired: AtomicU64::new(0),
                running: Mutex::new(HashMap::new()),
                quiet: CancellationToken::new(),
                stop: CancellationToken::new(),
                deadline: CancellationToken::new(),
                jobs: TaskTracker::new(),
                paused: Mutex::new(Vec::new()),
                metrics: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Runs every job that is due now on this server's queues, one at a time, until none is
    /// left, and returns what it did: jobs those jobs enqueue run too, failures go through the
    /// normal retry rules (a retry whose time has not come stays in the retry set), scheduled
    /// jobs run once due on the server's clock. For tests and one-shot batch runs; `drain`
    /// does not register the process or write heartbeats.
    ///
    /// A job that keeps enqueuing itself keeps `drain` going: bound such loops in the job.
    ///
    /// # Errors
    /// A backend failure while fetching or promoting.
    pub async fn drain(&self) -> Result<Drained, Error> {
        let s = &self.shared;
        let mut done = Drained::default();
        loop {
            super::scheduler::promote(s).await?;
            let req = FetchRequest {
                identity: &s.identity,
                queues: &s.config().queue_names,
                max: 1,
                wait: std::time::Duration::ZERO,
            };
            let Some(job) = s.broker().fetch(req).await?.pop() else {
                return Ok(done);
            };
            let job = Arc::new(job);
            let failed = s.failed.load(Ordering::Relaxed);
            super::processor::process(s, &job, Default::default()).await;
            done.performed += 1;
            if s.failed.load(Ordering::Relaxed) != failed {
                done.failed += 1;
            }
        }
    }

    /// Runs `payload`'s job now, in this process, through the middleware chain and the job
    /// timeout (panics caught), without touching the backend: nothing is fetched, acked,
    /// retried or counted, and the job's outcome is returned as is. Inline execution for tests
    /// and scripts; an unknown class is an `Errand::UnknownJob` error (a failed attempt).
    pub async fn perform(&self, payload: errand_core::Payload) -> crate::JobResult {
        super::processor::perform_now(&self.shared, payload).await
    }

    /// A handle to quiet or stop this server.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs until stopped by a signal (SIGTERM/SIGINT stop, SIGTSTP quiets), a remote `TERM`
    /// from Sidekiq's API or Web UI, or [`ServerHandle::stop`].
    ///
    /// # Errors
    /// Installing signal handlers failed. Backend failures while running are logged and
    /// retried with backoff, never returned.
    pub async fn run(self) -> Result<(), Error> {
        if self.shared.config().handle_signals {
            spawn_signal_listener(self.handle()).map_err(Error::Signal)?;
        }
        self.run_inner().await
    }

    /// Runs until `shutdown` completes (or another stop request), then shuts down gracefully.
    /// Does not listen for OS signals.
    ///
    /// # Errors
    /// As for [`Server::run`].
    pub async fn run_until<F>(self, shutdown: F) -> Result<(), Error>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = self.handle();
        tokio::spawn(async move {
            shutdown.await;
            handle.stop();
        });
        self.run_inner().await
    }

    async fn run_inner(self) -> Result<(), Error> {
        let s = self.shared;
        tracing::info!(identity = %s.identity, concurrency = s.config().concurrency, "errand server starting");
        // The first beat comes before the first fetch, so the process is alive (and its
        // in-flight jobs recoverable) from the start; and nothing is fetched until the process
        // is registered, since recovery finds a dead process's jobs through its registration.
        super::heartbeat::beat(&s, s.broker()).await;
        if !register(&s).await {
            tracing::info!("stopped before the process could register");
            return Ok(());
        }
        let background = TaskTracker::new();
        let bg_stop = CancellationToken::new();
        background.spawn(super::heartbeat::run(s.clone(), bg_stop.clone()));
        background.spawn(super::scheduler::run(s.clone()));
        background.spawn(super::scheduler::rescue(s.clone()));
        if !s.config().periodic.is_empty() {
            background.spawn(super::periodic::run(s.clone()));
        }
        let manager = tokio::spawn(super::manager::run(s.clone()));

        s.stop.cancelled().await;
        tracing::info!("shutting down");
        s.quiet.cancel();
        let _ = manager.await;
        s.jobs.close();
        let timeout = s.config().shutdown_timeout;
        if tokio::time::timeout(timeout, s.jobs.wait()).await.is_err() {
            s.deadline.cancel();
            let aborted: Vec<AbortHandle> = s
                .running
                .lock()
                .map(|mut r| r.drain().filter_map(|(_, j)| j.abort).collect())
                .unwrap_or_default();
            tracing::warn!(
                jobs = aborted.len(),
                "shutdown deadline passed, requeueing unfinished jobs"
            );
            for a in &aborted {
                a.abort();
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), s.jobs.wait()).await;
        }
        let queues = &s.config().queue_names;
        let requeued = crate::reconnect::retry("requeue", REQUEUE_ATTEMPTS, || {
            s.broker().requeue_in_flight(&s.identity, queues)
        })
        .await;
        let all_back = match requeued {
            Ok(0) => true,
            Ok(n) => {
                tracing::info!(jobs = n, "pushed unfinished jobs back to their queues");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "requeueing unfinished jobs failed; the process stays registered, so a live process recovers them once its heartbeat expires");
                false
            }
        };
        bg_stop.cancel();
        background.close();
        background.wait().await;
        // Final stats flush, then leave the process set: only with nothing held, since
        // recovery finds a dead process's jobs through its registration.
        super::heartbeat::beat(&s, s.broker()).await;
        if all_back && let Err(e) = s.broker().unregister(&s.identity).await {
            tracing::error!(error = %e, "unregistering the process failed");
        }
        let processed = s.processed.load(Ordering::Relaxed);
        tracing::info!(processed, "errand server stopped");
        Ok(())
    }
}

/// How many times the shutdown requeue is tried while the backend is unreachable (about 43 s).
const REQUEUE_ATTEMPTS: usize = 12;

/// Registers the process, retrying with backoff until it works. False when the process was
/// stopped first.
async fn register(s: &Shared) -> bool {
    let mut delays = crate::reconnect::delays(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(5),
        None,
    );
    loop {
        match s
            .broker()
            .register(&s.identity, &s.config().queue_names)
            .await
        {
            Ok(()) => return true,
            Err(e) => {
                let wait = delays.next().unwrap_or(std::time::Duration::from_secs(5));
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "registering the process failed; not fetching until it works");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = s.stop.cancelled() => return false,
                }
            }
        }
    }
}

fn spawn_signal_listener(handle: ServerHandle) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tstp = signal(SignalKind::from_raw(libc::SIGTSTP))?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); handle.stop(); }
                _ = int.recv() => { tracing::info!("SIGINT"); handle.stop(); }
                _ = tstp.recv() => { tracing::info!("SIGTSTP: quiet"); handle.quiet(); }
            }
        }
    });
    Ok(())
}
