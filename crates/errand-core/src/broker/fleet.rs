//! A server process's duties toward the fleet: registering, beating, recovering the in-flight
//! jobs of dead processes, taking turns to promote due jobs, and the dashboard's inputs
//! (paused queues, execution metrics).

use super::queue::{DeadLimits, Fetched};
use crate::WireProfile;
use crate::error::BrokerResult;
use crate::metrics::ClassMetrics;
use async_trait::async_trait;
use std::time::Duration;

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
    /// Jobs cancelled while running since the last flushed beat (not also failed).
    pub cancelled: u64,
    /// Jobs dropped unrun past their `expires_in` since the last flushed beat.
    pub expired: u64,
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

/// How orphan recovery ([`Fleet::rescue_orphans`]) treats the jobs it recovers.
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

/// A backend's fleet duties.
#[async_trait]
pub trait Fleet: Send + Sync + 'static {
    /// Records that `identity` is a server working `queues`, so its in-flight jobs can be found
    /// and recovered if it dies. Call it after the process's first [`Fleet::heartbeat`] and
    /// before its first fetch: a registered process without a live heartbeat counts as dead to
    /// [`Fleet::rescue_orphans`]. Every heartbeat re-asserts the registration from its `info`.
    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()>;

    /// Writes a heartbeat (process hash, work hash, stats) and returns a remote signal if one
    /// was waiting. Keeps the process alive for `beat.ttl` and re-asserts its registration;
    /// `beat.info` must list every queue the process fetches from under `queues`, since that is
    /// where recovery finds its in-flight jobs.
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>>;

    /// A handle on the same backend with connections of its own, made on the calling task's
    /// runtime. The server runs its heartbeat on a thread and runtime of its own through it,
    /// so jobs that block their threads or fill the shared connection cannot keep a live
    /// process from beating (and get it rescued while it runs). `None`, the default, when the
    /// backend has no connection to isolate: the caller then uses this handle.
    async fn isolated(&self) -> BrokerResult<Option<std::sync::Arc<dyn super::Broker>>> {
        Ok(None)
    }

    /// Removes a cleanly stopped process's registration and heartbeat.
    async fn unregister(&self, identity: &str) -> BrokerResult<()>;

    /// Puts every job `identity` holds in flight from `queues` back at the consuming end of its
    /// queue, unchanged (the oldest fetched is consumed first), whether or not the process is
    /// still registered (a process whose registration was removed by a rescue while it stalled
    /// still gets its jobs back out). Returns how many were moved.
    async fn requeue_in_flight(&self, identity: &str, queues: &[String]) -> BrokerResult<usize>;

    /// The jobs `identity` holds in flight from `queues`, as a fetch returned them (with their
    /// fencing tokens).
    /// With [`crate::broker::JobQueue::release`], lets a live process find jobs stranded in its
    /// in-flight store by a fetch whose reply was lost (the connection broke after the backend
    /// moved them).
    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>>;

    /// Returns the in-flight jobs of processes whose heartbeat has expired to their queues,
    /// except poison pills: a job recovered `policy.max_recoveries` times goes to the dead set
    /// as [`poison_entry`]. Returns how many jobs were recovered (requeued or buried).
    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize>;

    /// Claims the cluster-wide turn to move due jobs for `window`: true for exactly one caller
    /// per window across every process sharing the backend, so the fleet as a whole promotes
    /// about once a window whatever its size (instead of each process polling on its own).
    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool>;

    /// Number of server processes that have sent a heartbeat and not unregistered (Sidekiq's
    /// `processes` set, for poll interval scaling).
    async fn process_count(&self) -> BrokerResult<usize>;

    /// The queues paused from the dashboard or the CLI ([`crate::admin::Admin::set_paused`]):
    /// servers leave them out of their fetches. Read once per heartbeat.
    async fn paused_queues(&self) -> BrokerResult<Vec<String>>;

    /// Adds one minute's execution metrics (`minute` = minutes since the epoch, UTC) to the
    /// per-minute records and to the all-time totals ([`crate::admin::Admin::metrics`],
    /// [`crate::admin::Admin::metrics_totals`]). Servers call it at each heartbeat with what
    /// ran since the last one.
    async fn record_metrics(&self, minute: i64, classes: &[ClassMetrics]) -> BrokerResult<()>;
}
