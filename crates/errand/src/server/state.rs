//! State shared by every task of one server process: its parts (broker, registry, config),
//! identity, counters, running jobs, cancellation tokens, and the completer.

use super::Config;
use super::completer::Completer;
use super::{DeathHandler, RetryDelay};
use crate::context::Control;
use crate::middleware::Middleware;
use crate::registry::Registry;
use crate::{Client, Data};
use errand_core::broker::{Broker, Fetched};
use errand_core::metrics::ClassMetrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) struct Parts {
    pub broker: Arc<dyn Broker>,
    pub client: Client,
    pub registry: Registry,
    pub data: Arc<Data>,
    pub middleware: Vec<Arc<dyn Middleware>>,
    pub death_handlers: Vec<DeathHandler>,
    pub retry_delay: Option<RetryDelay>,
    pub clock: errand_core::Clock,
    pub config: Config,
}

/// One running job, for the Busy page and for aborting at the shutdown deadline.
pub(crate) struct Running {
    pub job: Arc<Fetched>,
    /// When it started, epoch seconds (Sidekiq's `run_at`).
    pub run_at: i64,
    pub abort: Option<AbortHandle>,
    /// Its cancellation and progress, shared with its context.
    pub control: Arc<Control>,
}

/// State shared by every task of one server process.
pub(crate) struct Shared {
    pub parts: Parts,
    pub identity: String,
    pub info: String,
    pub processed: AtomicU64,
    pub failed: AtomicU64,
    /// Jobs that ended cancelled, since the last beat.
    pub cancelled: AtomicU64,
    /// Jobs dropped unrun past their deadline, since the last beat.
    pub expired: AtomicU64,
    pub running: Mutex<HashMap<u64, Running>>,
    /// Cancelled to stop fetching (quiet, or the first step of stopping).
    pub quiet: CancellationToken,
    /// Cancelled to stop the process.
    pub stop: CancellationToken,
    /// Cancelled when the shutdown deadline passes; jobs see it as their shutdown token.
    pub deadline: CancellationToken,
    pub jobs: TaskTracker,
    /// Queues paused from the dashboard or CLI, refreshed at each heartbeat.
    pub paused: Mutex<Vec<String>>,
    /// Execution metrics per class since the last heartbeat flushed them.
    pub metrics: Mutex<HashMap<String, ClassMetrics>>,
    /// Writes every finished attempt's outcome to the backend, in batches.
    pub completer: Completer,
    /// Groups the batch records of attempts (written before their completions).
    pub recorder: super::recorder::Recorder,
    /// The backend's clock minus this server's, in microseconds ([`Shared::sync_clock`]).
    pub clock_offset_us: AtomicI64,
}

impl Shared {
    pub(crate) fn config(&self) -> &Config {
        &self.parts.config
    }

    pub(crate) fn broker(&self) -> &dyn Broker {
        &*self.parts.broker
    }

    /// The time, float epoch seconds: the server's clock, corrected by the backend's (unless the
    /// server was given a clock of its own): retries, snoozes, deaths and the dead set's trim
    /// are dated by it.
    pub(crate) fn now(&self) -> f64 {
        let local = (self.parts.clock)();
        if self.config().own_clock {
            return local;
        }
        local + self.clock_offset_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Measures how far the backend's clock is from this server's (half a round trip either
    /// way) and corrects [`Shared::now`] by it. Called before the first beat and at every beat;
    /// on a backend error the last offset stays.
    pub(crate) async fn sync_clock(&self, broker: &dyn Broker) {
        if self.config().own_clock {
            return;
        }
        let before = (self.parts.clock)();
        let Ok(backend) = broker.now().await else {
            return;
        };
        let after = (self.parts.clock)();
        let offset = backend - (before + after) / 2.0;
        self.clock_offset_us
            .store((offset * 1e6) as i64, Ordering::Relaxed);
    }

    pub(crate) fn busy(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Counts one attempt of `class` that took `ms` for the Metrics page.
    pub(crate) fn record_metric(&self, class: &str, ms: u64, failed: bool) {
        let Ok(mut m) = self.metrics.lock() else {
            return;
        };
        match m.get_mut(class) {
            Some(c) => c.record(ms, failed),
            None => {
                let mut c = ClassMetrics::new(class);
                c.record(ms, failed);
                m.insert(class.to_string(), c);
            }
        }
    }
}
