//! The worker process: [`Server`] and its builder.
//!
//! Module map (after Sidekiq): `launcher` runs everything and shuts down, `manager` fetches
//! and dispatches jobs, `processor` runs one job, `retry` decides what a failure leads to,
//! `completer` writes every outcome to the backend in batches, `batch` records each outcome in
//! the job's batch first (grouped by `recorder`), `scheduler` moves due jobs to
//! their queues and recovers dead processes' jobs, `heartbeat` reports the process and its
//! stats; `state` holds what they share. Each part imports `state`, none imports the
//! launcher.

mod batch;
mod completer;
#[cfg(feature = "failpoints")]
mod crash;
mod heartbeat;
mod launcher;
mod manager;
mod periodic;
mod processor;
mod recorder;
mod retry;
mod scheduler;
mod state;

use crate::middleware::{Logging, Middleware};
use crate::registry::Registry;
use crate::{Client, Data, Error, Job, JobError};
use errand_core::broker::{Broker, DeadLimits};
use errand_core::{Clock, Payload, WireProfile};
use std::sync::Arc;
use std::time::Duration;

pub use launcher::{Drained, Server, ServerHandle};

/// A function called with the payload and the error when a job dies: when its retries run out,
/// on `retry(0)`, on [`JobError::dead`], and for `retry(false)` jobs that are dropped.
pub type DeathHandler = Arc<dyn Fn(&Payload, &JobError) + Send + Sync>;

/// Replaces Sidekiq's backoff for jobs that define no `retry_in`: the delay before retry
/// number `count`, with no jitter added.
pub type RetryDelay = Arc<dyn Fn(u32) -> Duration + Send + Sync>;

/// The order in which a weighted server tries `queues` on one fetch: each queue comes first with
/// probability weight ÷ total (Sidekiq's expand, shuffle, de-duplicate).
pub fn weighted_order(queues: &[(String, u32)]) -> Vec<String> {
    manager::queue_order(&QueueMode::Weighted, queues)
}

/// The names of `queues`, each once, in their first order.
pub(crate) fn unique_names(queues: &[(String, u32)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(queues.len());
    for (q, _) in queues {
        if !out.contains(q) {
            out.push(q.clone());
        }
    }
    out
}

/// How a server orders its queues on each fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueueMode {
    /// Always in the given order: earlier queues starve later ones.
    Strict,
    /// Weighted random: a queue comes first with probability weight ÷ total, like Sidekiq.
    Weighted,
}

/// Every setting of a server, validated by [`ServerBuilder::build`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub queues: Vec<(String, u32)>,
    pub mode: QueueMode,
    pub concurrency: usize,
    pub job_timeout: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub max_retries: u32,
    pub dead_limits: DeadLimits,
    pub profile: WireProfile,
    pub heartbeat_interval: Duration,
    pub process_ttl: Duration,
    pub poll_interval: Option<Duration>,
    pub fetch_wait: Duration,
    pub rescue_interval: Duration,
    /// The queue names of `queues`, each once, in order (filled in by `build`).
    pub queue_names: Vec<String>,
    pub tag: String,
    pub labels: Vec<String>,
    pub handle_signals: bool,
    pub once_ttl: Duration,
    pub max_recoveries: u32,
    /// Set by [`ServerBuilder::clock`]: the given clock is the server's time, uncorrected.
    pub own_clock: bool,
    /// Periodic entries declared with [`ServerBuilder::periodic`], as the backend stores them.
    pub periodic: Vec<errand_core::broker::PeriodicEntry>,
    /// How long the periodic scheduler's leader lease lasts without renewal.
    pub periodic_lease: Duration,
    /// How long an entry no server declares any more stays in the backend.
    pub periodic_grace: Duration,
    /// How an attempt's span relates to the trace context its payload carries.
    #[cfg(feature = "spans")]
    pub propagation: crate::trace::Propagation,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            queues: vec![("default".into(), 1)],
            mode: QueueMode::Strict,
            concurrency: 10,
            job_timeout: None,
            shutdown_timeout: Duration::from_secs(25),
            max_retries: errand_core::backoff::DEFAULT_MAX_RETRIES,
            dead_limits: DeadLimits::default(),
            profile: WireProfile::default(),
            heartbeat_interval: Duration::from_secs(5),
            process_ttl: Duration::from_secs(60),
            poll_interval: None,
            fetch_wait: Duration::from_secs(2),
            rescue_interval: Duration::from_secs(30),
            queue_names: vec!["default".into()],
            tag: String::new(),
            labels: Vec::new(),
            handle_signals: true,
            once_ttl: crate::context::DEFAULT_ONCE_TTL,
            max_recoveries: 3,
            own_clock: false,
            #[cfg(feature = "spans")]
            propagation: crate::trace::Propagation::default(),
            periodic: Vec::new(),
            periodic_lease: Duration::from_secs(5),
            periodic_grace: Duration::from_secs(3600),
        }
    }
}

/// Builds a [`Server`]. Setters consume and return the builder; [`ServerBuilder::build`]
/// validates everything once.
pub struct ServerBuilder {
    broker: Arc<dyn Broker>,
    registry: Registry,
    data: Data,
    middleware: Vec<Arc<dyn Middleware>>,
    death_handlers: Vec<DeathHandler>,
    retry_delay: Option<RetryDelay>,
    clock: Clock,
    client: Option<Client>,
    config: Config,
    errors: Vec<String>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    pub(crate) fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            registry: Registry::default(),
            data: Data::default(),
            middleware: vec![Arc::new(Logging)],
            death_handlers: Vec::new(),
            retry_delay: None,
            clock: errand_core::system_clock(),
            client: None,
            config: Config::default(),
            errors: Vec::new(),
        }
    }

    /// Runs jobs of type `J` (dispatched by `J::NAME`).
    pub fn register<J: Job>(mut self) -> Self {
        self.registry.register::<J>();
        self
    }

    /// Works these queues in strict order: a later queue is fetched from only when every earlier
    /// one is empty. Defaults to `["default"]`.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.queues = queues.into_iter().map(|q| (q.into(), 1)).collect();
        self.config.mode = QueueMode::Strict;
        self
    }

    /// Works these queues by weight (`[("critical", 10), ("default", 5), ("bulk", 1)]`): each
    /// fetch tries a queue first with probability weight ÷ total, as Sidekiq does, so low
    /// weights are slowed but never starved.
    pub fn weighted_queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        self.config.queues = queues.into_iter().map(|(q, w)| (q.into(), w)).collect();
        self.config.mode = QueueMode::Weighted;
        self
    }

    /// How many jobs run at once. Defaults to 10.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// Shares `value` with every job (`cx.data::<T>()`): a database pool, an HTTP client.
    pub fn data<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.data.insert(value);
        self
    }

    /// Adds a server middleware around each job; the first added runs outermost. A
    /// [`Logging`] middleware is installed first by default.
    pub fn middleware<M: Middleware>(mut self, m: M) -> Self {
        self.middleware.push(Arc::new(m));
        self
    }

    /// Removes every middleware added so far, including the default [`Logging`].
    pub fn clear_middleware(mut self) -> Self {
        self.middleware.clear();
        self
    }

    /// Adds a death handler. Every handler runs for every death; one that panics is logged and
    /// does not stop the others.
    pub fn death_handler<F>(mut self, f: F) -> Self
    where
        F: Fn(&Payload, &JobError) + Send + Sync + 'static,
    {
        self.death_handlers.push(Arc::new(f));
        self
    }

    /// Replaces Sidekiq's backoff (`count⁴ + 15` s plus jitter) for jobs that define no
    /// `retry_in`, e.g. `|_| Duration::from_secs(1)` for a demo or a test. Defaults to Sidekiq's.
    pub fn retry_delay<F>(mut self, f: F) -> Self
    where
        F: Fn(u32) -> Duration + Send + Sync + 'static,
    {
        self.retry_delay = Some(Arc::new(f));
        self
    }

    /// Fails an attempt that runs longer than this (unless the job sets its own). Defaults to
    /// no timeout.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.config.job_timeout = Some(timeout);
        self
    }

    /// On shutdown, how long running jobs may finish before they are put back on their
    /// queues. Defaults to 25 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// The number of retries for jobs with `retry: true`. Defaults to 25.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.max_retries = n;
        self
    }

    /// Bounds of the dead set (size and age), applied on every insert. Defaults to 10,000
    /// jobs and 180 days.
    pub fn dead_limits(mut self, limits: DeadLimits) -> Self {
        self.config.dead_limits = limits;
        self
    }

    /// The timestamp format written into payloads. Defaults to [`WireProfile::V7`].
    pub fn wire_profile(mut self, profile: WireProfile) -> Self {
        self.config.profile = profile;
        self
    }

    /// How often the process reports itself and flushes stats. Defaults to 5 s.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// How long after its last heartbeat a process counts as dead, and its in-flight jobs are
    /// recovered by others. Must exceed the heartbeat interval. Defaults to 60 s (Sidekiq's).
    pub fn process_ttl(mut self, ttl: Duration) -> Self {
        self.config.process_ttl = ttl;
        self
    }

    /// How often the cluster as a whole moves due scheduled and retry jobs to their queues.
    /// Every process asks for the turn once per interval and one wins, so a fleet of any size
    /// promotes about once per interval (a due job starts within about one interval) and the
    /// backend sees one cheap claim per process per interval. Defaults to 500 ms.
    pub fn poll_interval(mut self, average: Duration) -> Self {
        self.config.poll_interval = Some(average);
        self
    }

    /// How long an idle fetch waits for a job before it looks again. Stopping an idle Redis
    /// server can take up to this long (its blocking wait is not abandoned, so that no job it
    /// moves arrives after the final requeue). Defaults to 2 s (Sidekiq's).
    pub fn fetch_wait(mut self, wait: Duration) -> Self {
        self.config.fetch_wait = wait;
        self
    }

    /// How often to look for dead processes' in-flight jobs. Defaults to 30 s.
    pub fn rescue_interval(mut self, interval: Duration) -> Self {
        self.config.rescue_interval = interval;
        self
    }

    /// A tag shown in the Web UI's Busy page. Defaults to empty.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.config.tag = tag.into();
        self
    }

    /// Reads the time from `clock` instead of the wall clock: when retries and snoozes are due,
    /// which scheduled jobs are due, the timestamps written into payloads. For tests with a
    /// controllable clock (`errand_testing::ManualClock`); leave it alone in production, where
    /// the server reads the wall clock corrected to the backend's (measured at each heartbeat),
    /// so a worker whose clock is off neither burns its retries early nor trims the dead set
    /// by a wrong date. A clock given here is used as it is.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.config.own_clock = true;
        self
    }

    /// How an attempt's span relates to the trace context its payload carries (feature
    /// `spans`; the context is read with `opentelemetry`): a child of the push's span by
    /// default ([`Propagation`](crate::trace::Propagation)).
    #[cfg(feature = "spans")]
    pub fn trace_propagation(mut self, how: crate::trace::Propagation) -> Self {
        self.config.propagation = how;
        self
    }

    /// The client jobs get from `cx.client()` to enqueue further jobs. Defaults to a client on
    /// the server's backend, with the server's wire profile and clock. Set it to send jobs'
    /// pushes elsewhere (another backend, or a test harness that runs them inline).
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// How many times a job may be recovered from dead processes before it counts as a poison
    /// pill (it kills its worker: an abort, an OOM kill) and goes to the dead set as
    /// `Errand::PoisonPill` instead of crash-looping the fleet. Defaults to 3; at least 1.
    pub fn max_recoveries(mut self, n: u32) -> Self {
        self.config.max_recoveries = n.max(1);
        self
    }

    /// How long a once-only step's completion record is kept (see [`crate::JobContext::once`]):
    /// retries of the job within this time skip the step. Defaults to 30 days.
    pub fn once_ttl(mut self, keep: Duration) -> Self {
        self.config.once_ttl = keep;
        self
    }

    /// Enqueues `job` on cron expression `spec` (UTC), as entry `J::NAME`: see
    /// [`crate::periodic`]. For a name of its own, a time zone, options or a missed-tick
    /// policy, use [`ServerBuilder::periodic_entry`].
    pub fn periodic<J: crate::Job>(self, spec: impl Into<String>, job: J) -> Self {
        self.periodic_entry(crate::Periodic::new(J::NAME, spec, job))
    }

    /// Declares periodic entry `entry` (see [`crate::periodic`]); an invalid expression, time
    /// zone or argument, or a name used twice, is reported by [`ServerBuilder::build`].
    pub fn periodic_entry(mut self, entry: crate::Periodic) -> Self {
        match entry.declare(self.config.profile) {
            Ok(declared) if self.config.periodic.iter().any(|e| e.name == declared.name) => {
                self.errors
                    .push(format!("periodic entry {} declared twice", declared.name));
            }
            Ok(declared) => self.config.periodic.push(declared),
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// How long the periodic scheduler's leader lease lasts unless renewed (renewed every
    /// second; another server takes over this long after the leader stops). Defaults to 5 s.
    pub fn periodic_leader_ttl(mut self, ttl: Duration) -> Self {
        self.config.periodic_lease = ttl.max(Duration::from_secs(1));
        self
    }

    /// How long a periodic entry that no server declares any more (removed from the code)
    /// stays listed before the leader removes it. Defaults to an hour.
    pub fn periodic_grace(mut self, grace: Duration) -> Self {
        self.config.periodic_grace = grace;
        self
    }

    /// Whether [`Server::run`] listens for SIGTERM/SIGINT (stop) and SIGTSTP (quiet).
    /// Defaults to true.
    pub fn handle_signals(mut self, yes: bool) -> Self {
        self.config.handle_signals = yes;
        self
    }

    /// Validates the settings and builds the server.
    ///
    /// # Errors
    /// [`Error::Config`] naming each invalid setting.
    pub fn build(mut self) -> Result<Server, Error> {
        let c = &self.config;
        if c.queues.is_empty() {
            self.errors.push("no queues".into());
        }
        if c.queues.iter().any(|(q, _)| q.is_empty()) {
            self.errors.push("empty queue name".into());
        }
        if c.concurrency == 0 {
            self.errors.push("concurrency must be at least 1".into());
        }
        if c.process_ttl <= c.heartbeat_interval {
            self.errors
                .push("process_ttl must be longer than heartbeat_interval".into());
        }
        if self.registry.names().next().is_none() {
            self.errors.push("no jobs registered".into());
        }
        if !self.errors.is_empty() {
            return Err(Error::Config(self.errors.join("; ")));
        }
        self.config.queue_names = unique_names(&self.config.queues);
        let client = self.client.unwrap_or_else(|| {
            Client::from_arc(self.broker.clone())
                .wire_profile(self.config.profile)
                .clock(self.clock.clone())
        });
        Ok(Server::new(state::Parts {
            broker: self.broker,
            client,
            registry: self.registry,
            data: Arc::new(self.data),
            middleware: self.middleware,
            death_handlers: self.death_handlers,
            retry_delay: self.retry_delay,
            clock: self.clock,
            config: self.config,
        }))
    }
}
