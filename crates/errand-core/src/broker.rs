//! The contract between Errand's server and a storage backend: the hot path (push, fetch, ack,
//! settle) and the process-level duties (poller, heartbeat, orphan recovery).
//!
//! Every method that moves a job is one atomic step in the backend (a Lua script or MULTI on
//! Redis), so a crash between two steps never loses a job. Payload JSON is built and edited in
//! Rust; backends move the strings they are given and never re-encode them.
//!
//! This trait is ours to reshape before 1.0.

use crate::{BrokerError, WireProfile};
use async_trait::async_trait;
use std::time::Duration;

/// Result of a broker operation.
pub type BrokerResult<T> = Result<T, BrokerError>;

/// A job to push onto its queue now.
#[derive(Debug, Clone)]
pub struct Enqueue {
    /// Queue name without the `queue:` prefix.
    pub queue: String,
    /// The payload JSON, with `enqueued_at` already set.
    pub payload: String,
}

/// A job to store in the `schedule` set until `at`.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// When to enqueue it, in float epoch seconds.
    pub at: f64,
    /// The payload JSON (no `at`, no `enqueued_at`).
    pub payload: String,
}

/// What a fetch asks for.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    /// The fetching process's identity; in-flight jobs are held under it.
    pub identity: &'a str,
    /// Queue names in the order to try them (already weighted and shuffled by the caller).
    pub queues: &'a [String],
    /// At most this many jobs.
    pub max: usize,
    /// How long to wait for a job when every queue is empty.
    pub wait: Duration,
}

/// A job taken from a queue and held in flight until it is acked or settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The queue it came from.
    pub queue: String,
    /// The exact string that was on the queue.
    pub raw: String,
    /// Backend-private reference to where the in-flight copy is held.
    pub lease: String,
    /// This attempt's fencing token: strictly increasing across every fetch on the backend, so
    /// a job recovered from a stalled worker and fetched again carries a larger token than the
    /// stalled attempt. Jobs pass it to the resources they write (`JobContext::lease_token`).
    /// 0 where unknown ([`Broker::held`]).
    pub token: u64,
}

/// Bounds of the dead set, applied on every insert (as Sidekiq does): entries past the age
/// limit stay until the next job dies, then go in the same step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeadLimits {
    /// Keep at most this many entries (the newest). Defaults to 10,000.
    pub max_jobs: u64,
    /// Drop entries older than this. Defaults to 180 days.
    pub max_age: Duration,
}

impl Default for DeadLimits {
    fn default() -> Self {
        Self {
            max_jobs: 10_000,
            max_age: Duration::from_secs(180 * 24 * 3600),
        }
    }
}

/// Where a failed, snoozed or dead in-flight job goes.
#[derive(Debug, Clone)]
pub enum Settle {
    /// Into the `retry` set, due at `at`.
    Retry {
        /// The rewritten payload (error fields, counts).
        payload: String,
        /// Due time, float epoch seconds.
        at: f64,
    },
    /// Into the `schedule` set, due at `at` (a snooze).
    Schedule {
        /// The payload to store.
        payload: String,
        /// Due time, float epoch seconds.
        at: f64,
    },
    /// Into the `dead` set, trimmed to `limits`.
    Dead {
        /// The payload with its error fields.
        payload: String,
        /// Time of death, float epoch seconds (the score).
        now: f64,
        /// Size and age bounds to trim to.
        limits: DeadLimits,
    },
}

/// One running job, as shown in Sidekiq's Busy page.
#[derive(Debug, Clone)]
pub struct WorkEntry {
    /// A short id for the worker slot (Sidekiq's `tid`).
    pub tid: String,
    /// The JSON `{"queue", "payload" (the raw job as a string), "run_at"}`.
    pub json: String,
}

/// One heartbeat of a server process.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    /// The process identity (`host:pid:nonce`).
    pub identity: &'a str,
    /// The static `info` JSON.
    pub info: &'a str,
    /// Jobs running now.
    pub busy: usize,
    /// Worker slots.
    pub concurrency: usize,
    /// Time of this beat, float epoch seconds.
    pub beat: f64,
    /// Whether the process is quiet or stopping.
    pub quiet: bool,
    /// Resident memory in KB.
    pub rss_kb: u64,
    /// The running jobs.
    pub work: &'a [WorkEntry],
    /// Jobs executed since the last flushed beat.
    pub processed: u64,
    /// Jobs failed since the last flushed beat.
    pub failed: u64,
    /// How long the process's liveness key lives without a new beat.
    pub ttl: Duration,
}

/// A command sent to a process through Sidekiq's `<identity>-signals` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteSignal {
    /// `TSTP`: stop fetching, finish running jobs.
    Quiet,
    /// `TERM`: shut down gracefully.
    Stop,
    /// `TTIN`: log what every worker is doing.
    Dump,
}

impl RemoteSignal {
    /// Maps Sidekiq's signal names; unknown names are ignored (`None`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "TSTP" => Some(Self::Quiet),
            "TERM" | "INT" => Some(Self::Stop),
            "TTIN" | "INFO" => Some(Self::Dump),
            _ => None,
        }
    }
}

/// The `queues` listed in a process's `info` JSON (empty when absent or unreadable): where
/// recovery looks for the process's in-flight jobs.
pub fn info_queues(info: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(info)
        .ok()
        .and_then(|v| {
            v.get("queues")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|q| q.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// What [`Broker::once_claim`] found for a once-only step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnceClaim {
    /// No finished record and no live claim: the caller now holds the step for its lease.
    Claimed,
    /// The step already ran to completion; its recorded output (JSON).
    Done(String),
    /// Another attempt holds a live claim on the step.
    Busy,
}

/// How orphan recovery ([`Broker::rescue_orphans`]) treats the jobs it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RescuePolicy {
    /// A job recovered from dead processes this many times is a poison pill (it kills its
    /// worker: an abort, an OOM kill) and goes to the dead set instead of back to its queue.
    /// Recoveries are counted per job id; a clean shutdown's requeue does not count.
    pub max_recoveries: u32,
    /// The dead set's bounds, applied when a poison pill is buried.
    pub dead_limits: DeadLimits,
    /// The timestamp format of the dead entry's `failed_at`.
    pub profile: WireProfile,
}

impl Default for RescuePolicy {
    fn default() -> Self {
        Self {
            max_recoveries: 3,
            dead_limits: DeadLimits::default(),
            profile: WireProfile::default(),
        }
    }
}

/// The dead-set entry of a poison pill: `raw` with the failure fields of an
/// `Errand::PoisonPill` error naming how many times the job's worker died. `None` when `raw`
/// is not a job payload (it goes back to its queue, where the malformed-entry path buries it).
pub fn poison_entry(raw: &str, recoveries: u32, now: f64, profile: WireProfile) -> Option<String> {
    let mut p = crate::Payload::parse(raw).ok()?;
    let queue = p.queue().to_string();
    let message = format!(
        "the job's worker process died while running it {recoveries} times (an abort, an OOM \
         kill, a crash); it was moved to the dead set instead of being run again"
    );
    p.record_failure(&crate::Failure {
        class: "Errand::PoisonPill",
        message: &message,
        backtrace: &[],
        fetched_from: &queue,
        now,
        profile,
    });
    Some(p.to_json())
}

/// A request to take a slot in a lease set (see [`Broker::lease_acquire`]).
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    /// The lease set (`mutex:<name>`, `unique:<digest>`, `limit:<name>:<key>`).
    pub key: &'a str,
    /// Who takes the slot (a guard's random id, a job id).
    pub holder: &'a str,
    /// How many holders the set allows at once (1 for a mutex).
    pub max: u32,
    /// How long the slot lasts unless renewed, on the backend's clock.
    pub ttl: Duration,
    /// Whether to hand out a fencing token: strictly increasing per key, kept forever (one
    /// counter per key), so only locks that protect a resource should ask for one.
    pub fence: bool,
}

/// What [`Broker::lease_acquire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    /// The holder has a slot; `token` is its fencing token (0 when none was asked for).
    Granted {
        /// The fencing token.
        token: u64,
    },
    /// Every slot is taken by live holders; `holder` is one of them (the one whose lease
    /// ends first).
    Full {
        /// A current holder.
        holder: String,
    },
}

/// The two kinds of rate limit [`Broker::rate_take`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// At most `limit` per interval, intervals aligned to the epoch (a fixed window: a burst
    /// at the end of one interval and the start of the next can reach twice the limit).
    Bucket,
    /// At most `limit` in any interval-long span (a sliding window).
    Window,
}

/// A storage backend's hot path and process duties.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Pushes jobs onto their queues (registering the queue names).
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()>;

    /// Stores jobs in the schedule set.
    async fn schedule(&self, jobs: &[Scheduled]) -> BrokerResult<()>;

    /// Records that `identity` is a server working `queues`, so its in-flight jobs can be found
    /// and recovered if it dies. Call it after the process's first [`Broker::heartbeat`] and
    /// before its first fetch: a registered process without a live heartbeat counts as dead to
    /// [`Broker::rescue_orphans`]. Every heartbeat re-asserts the registration from its `info`.
    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()>;

    /// Moves up to `max` jobs from the queues into the process's in-flight store, trying queues
    /// in the given order, and waits up to `wait` when all are empty.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled fetch may have moved jobs in flight; they stay in the
    /// in-flight store and are returned to their queues by [`Broker::requeue_in_flight`] or
    /// orphan recovery.
    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>>;

    /// Removes a finished job from flight. Returns false when it was no longer held (its lease
    /// was lost to recovery).
    async fn ack(&self, job: &Fetched) -> BrokerResult<bool>;

    /// Atomically removes a job from flight and stores it in the retry, schedule or dead set.
    /// Returns false (and stores nothing) when it was no longer held.
    async fn settle(&self, job: &Fetched, to: Settle) -> BrokerResult<bool>;

    /// Puts every in-flight job of `identity` back at the consuming end of its queue, unchanged
    /// (the oldest fetched is consumed first). Needs the registration: call it before
    /// [`Broker::unregister`]. Returns how many were moved.
    async fn requeue_in_flight(&self, identity: &str) -> BrokerResult<usize>;

    /// The jobs `identity` holds in flight from `queues`, as [`Broker::fetch`] returned them.
    /// With [`Broker::release`], lets a live process find jobs stranded in its in-flight store
    /// by a fetch whose reply was lost (the connection broke after the backend moved them).
    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>>;

    /// Puts one in-flight job back at the consuming end of its queue, unchanged, if it is still
    /// held. Returns false when it was not.
    async fn release(&self, job: &Fetched) -> BrokerResult<bool>;

    /// The backend's clock, float epoch seconds (Redis: `TIME`; SQLite and memory: the one
    /// machine's clock). Servers promote due jobs by it, so a worker with a skewed clock
    /// neither runs scheduled jobs early nor holds them back.
    async fn now(&self) -> BrokerResult<f64>;

    /// Moves due jobs from the retry and schedule sets to their queues, stamping `enqueued_at`.
    /// Returns how many moved.
    async fn promote_due(&self, now: f64, profile: WireProfile) -> BrokerResult<usize>;

    /// Writes a heartbeat (process hash, work hash, stats) and returns a remote signal if one
    /// was waiting. Keeps the process alive for `beat.ttl` and re-asserts its registration;
    /// `beat.info` must list every queue the process fetches from under `queues`, since that is
    /// where recovery finds its in-flight jobs.
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>>;

    /// Returns the in-flight jobs of processes whose heartbeat has expired to their queues,
    /// except poison pills: a job recovered `policy.max_recoveries` times goes to the dead set
    /// as [`poison_entry`]. Returns how many jobs were recovered (requeued or buried).
    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize>;

    /// Removes a cleanly stopped process's registration and heartbeat.
    async fn unregister(&self, identity: &str) -> BrokerResult<()>;

    /// Claims the cluster-wide turn to move due jobs for `window`: true for exactly one caller
    /// per window across every process sharing the backend, so the fleet as a whole promotes
    /// about once a window whatever its size (instead of each process polling on its own).
    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool>;

    /// Number of server processes that have sent a heartbeat and not unregistered (Sidekiq's
    /// `processes` set, for poll interval scaling).
    async fn process_count(&self) -> BrokerResult<usize>;

    /// Claims once-only step `key` for `owner` for `lease`, in one atomic step: returns the
    /// recorded output when the step already completed, [`OnceClaim::Busy`] while another
    /// owner's claim is live, and otherwise records the claim. A claim whose lease ran out
    /// (its holder died) counts as absent. Claiming again as the same owner extends the lease.
    async fn once_claim(&self, key: &str, owner: &str, lease: Duration) -> BrokerResult<OnceClaim>;

    /// Extends `owner`'s live claim on `key` to `lease` from now. False when the claim is no
    /// longer `owner`'s (it expired and another took it, or the step completed).
    async fn once_renew(&self, key: &str, owner: &str, lease: Duration) -> BrokerResult<bool>;

    /// Marks `key` completed with `output` (JSON), kept for `keep`, if `owner` still holds the
    /// claim; false (and nothing written) otherwise.
    async fn once_complete(
        &self,
        key: &str,
        owner: &str,
        output: &str,
        keep: Duration,
    ) -> BrokerResult<bool>;

    /// Drops `owner`'s claim on `key` (the step failed and may run again). Does nothing when
    /// the claim is not `owner`'s or the step completed.
    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()>;

    /// Takes a slot in lease set `req.key` for `req.holder`, in one atomic step: holders whose
    /// lease ran out are dropped first; a holder already in the set has its lease extended
    /// (and gets a new token); otherwise the holder gets a slot when fewer than `req.max` are
    /// taken. Lease times are measured on the backend's clock (Redis's `TIME`), never the
    /// caller's, so a worker with a skewed clock cannot hold a lease longer than it should.
    async fn lease_acquire(&self, req: LeaseRequest<'_>) -> BrokerResult<LeaseGrant>;

    /// Extends `holder`'s live lease in `key` to `ttl` from now. False when it has none (its
    /// lease ran out, or it released it).
    async fn lease_renew(&self, key: &str, holder: &str, ttl: Duration) -> BrokerResult<bool>;

    /// Gives up `holder`'s slot in `key`. False when it held none.
    async fn lease_release(&self, key: &str, holder: &str) -> BrokerResult<bool>;

    /// The live holders of lease set `key` with the epoch seconds their leases end, soonest
    /// first.
    async fn lease_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>>;

    /// Counts one use of rate limit `key` (`limit` per `interval`, of `kind`) if it is under
    /// the limit, atomically, on the backend's clock. Returns `None` when counted, or how long
    /// until a use would be let through (nothing counted).
    async fn rate_take(
        &self,
        key: &str,
        kind: RateKind,
        limit: u32,
        interval: Duration,
    ) -> BrokerResult<Option<Duration>>;

    /// Adds one to limiter `name`'s count of uses turned away (shown by dashboards and
    /// metrics).
    async fn limit_hit(&self, name: &str) -> BrokerResult<()>;

    /// Every limiter's count of uses turned away, by name.
    async fn limit_hits(&self) -> BrokerResult<Vec<(String, u64)>>;

    /// The queues paused from the dashboard or the CLI ([`crate::admin::Admin::set_paused`]):
    /// servers leave them out of their fetches. Read once per heartbeat.
    async fn paused_queues(&self) -> BrokerResult<Vec<String>>;

    /// Adds one minute's execution metrics (`minute` = minutes since the epoch, UTC) to the
    /// per-minute records and to the all-time totals ([`crate::admin::Admin::metrics`],
    /// [`crate::admin::Admin::metrics_totals`]). Servers call it at each heartbeat with what
    /// ran since the last one.
    async fn record_metrics(
        &self,
        minute: i64,
        classes: &[crate::admin::ClassMetrics],
    ) -> BrokerResult<()>;
}
