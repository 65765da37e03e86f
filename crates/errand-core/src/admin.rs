//! The admin side of a backend: what the dashboard, the JSON API, `/metrics` and the ops CLI
//! read and change (listing and paging queues and sets, counting, moving and deleting jobs,
//! processes and their signals, execution metrics).
//!
//! The [`Admin`] trait holds small primitives, each one atomic step in the backend; the
//! composite operations a person asks for (retry a dead job now, kill a retry, retry with edited
//! arguments, filter a set) are built on them once, in the web and CLI layers, so every backend
//! behaves the same. Backends never re-encode payloads: the exact string in a set or queue is
//! what [`Admin::set_remove`] and [`Admin::queue_delete`] are given back.
//!
//! Execution metrics ([`ClassMetrics`]) are written by servers through
//! [`crate::broker::Fleet::record_metrics`] and read here.

use crate::broker::{BrokerResult, DeadLimits, RemoteSignal};
use crate::metrics::ClassMetrics;
use async_trait::async_trait;

/// One of the three sorted sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetName {
    /// Failed jobs waiting for their next attempt (`retry`), scored by when it is due.
    Retry,
    /// Jobs pushed to run later, and snoozed jobs (`schedule`), scored by when they are due.
    Scheduled,
    /// Jobs that ran out of retries or were killed (`dead`), scored by time of death.
    Dead,
}

impl SetName {
    /// Every set, in the dashboard's order.
    pub const ALL: [SetName; 3] = [SetName::Retry, SetName::Scheduled, SetName::Dead];

    /// The Redis key (Sidekiq's name): `retry`, `schedule`, `dead`.
    pub fn key(self) -> &'static str {
        match self {
            SetName::Retry => "retry",
            SetName::Scheduled => "schedule",
            SetName::Dead => "dead",
        }
    }

    /// The set named by its key or by its plural page name (`retries`, `scheduled`, `dead`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "retry" | "retries" => Some(SetName::Retry),
            "schedule" | "scheduled" => Some(SetName::Scheduled),
            "dead" | "morgue" => Some(SetName::Dead),
            _ => None,
        }
    }
}

/// Which end a page starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Sets: lowest score first (soonest due, oldest death). Queues: next to run first.
    #[default]
    Asc,
    /// Sets: highest score first. Queues: newest pushed first.
    Desc,
}

/// One member of a sorted set.
#[derive(Debug, Clone, PartialEq)]
pub struct SetEntry {
    /// Its score: float epoch seconds (due time, or time of death).
    pub score: f64,
    /// The exact stored string (usually a job payload; possibly not JSON at all).
    pub raw: String,
}

/// A queue as the Queues page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSummary {
    /// Name without the `queue:` prefix.
    pub name: String,
    /// Jobs waiting.
    pub size: u64,
    /// The next job to run (the oldest), exactly as stored: its `enqueued_at` gives the
    /// queue's latency. `None` when the queue is empty.
    pub oldest: Option<String>,
    /// Whether servers skip this queue (paused from the dashboard or the CLI).
    pub paused: bool,
}

/// A live server process, from its heartbeat (Errand's or Ruby Sidekiq's: same hash).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRecord {
    /// `host:pid:nonce`.
    pub identity: String,
    /// The `info` JSON (hostname, pid, tag, queues, concurrency, started_at, ...).
    pub info: String,
    /// Jobs running at the last beat.
    pub busy: u64,
    /// Worker slots (the hash's `concurrency` field; 0 when the process did not write it, as
    /// Sidekiq 6.4 does not: read `info.concurrency` then).
    pub concurrency: u64,
    /// Time of the last beat, float epoch seconds.
    pub beat: f64,
    /// Whether the process is quiet (or stopping).
    pub quiet: bool,
    /// Resident memory in KB.
    pub rss_kb: u64,
    /// Running jobs as `(tid, json)`, the JSON being `{"queue", "payload" (the job as a
    /// string), "run_at"}` (Sidekiq's work hash), longest running (oldest `run_at`) first:
    /// see [`sort_work`].
    pub work: Vec<(String, String)>,
}

/// Orders a process's running jobs as [`ProcessRecord::work`] lists them: oldest `run_at`
/// first (an entry whose `run_at` cannot be read counts as 0), then by tid.
pub fn sort_work(work: &mut [(String, String)]) {
    fn run_at(json: &str) -> f64 {
        serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v.get("run_at")?.as_f64())
            .unwrap_or(0.0)
    }
    work.sort_by_cached_key(|(tid, json)| (OrdF64(run_at(json)), tid.clone()));
}

/// An `f64` ordered by [`f64::total_cmp`], as a sort key.
#[derive(PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Totals per UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Jobs executed (`stat:processed`).
    pub processed: u64,
    /// Jobs failed (`stat:failed`).
    pub failed: u64,
    /// Jobs cancelled while running (`errand:stat:cancelled`; totals only, 0 per day).
    pub cancelled: u64,
    /// Jobs dropped unrun past their deadline (`errand:stat:expired`; totals only, 0 per day).
    pub expired: u64,
}

/// What a backend says about itself for the dashboard (Redis: version, memory, clients).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendInfo {
    /// `redis`, `sqlite` or `memory`.
    pub kind: String,
    /// Labelled facts, in display order (`("version", "7.0.15")`, ...).
    pub facts: Vec<(String, String)>,
}

/// A range of a queue ([`Admin::queue_page`]).
#[derive(Debug, Clone, Copy)]
pub struct QueueRange<'a> {
    /// The queue, without the `queue:` prefix.
    pub queue: &'a str,
    /// Entries to skip from the start `order` names.
    pub offset: usize,
    /// At most this many entries.
    pub limit: usize,
    /// `Asc`: the next to run first.
    pub order: Order,
}

/// A range of a sorted set ([`Admin::set_page`]).
#[derive(Debug, Clone, Copy)]
pub struct SetRange {
    /// The set.
    pub set: SetName,
    /// Entries to skip from the start `order` names.
    pub offset: usize,
    /// At most this many entries.
    pub limit: usize,
    /// `Asc`: the lowest score first.
    pub order: Order,
}

/// Moves a set member to a queue ([`Admin::set_to_queue`]): retry now, run now.
#[derive(Debug, Clone, Copy)]
pub struct MoveToQueue<'a> {
    /// The set it is in.
    pub set: SetName,
    /// The exact stored member.
    pub member: &'a str,
    /// The queue to push onto.
    pub queue: &'a str,
    /// What to push (the member, rewritten: `enqueued_at`, a decremented `retry_count`).
    pub payload: &'a str,
}

/// Moves a set member to the dead set ([`Admin::set_to_dead`]): kill.
#[derive(Debug, Clone, Copy)]
pub struct MoveToDead<'a> {
    /// The set it is in.
    pub set: SetName,
    /// The exact stored member.
    pub member: &'a str,
    /// What to store in the dead set.
    pub payload: &'a str,
    /// Time of death, float epoch seconds (the score).
    pub now: f64,
    /// The dead set's bounds, applied in the same step.
    pub limits: DeadLimits,
}

/// A backend seen from both sides: its runtime contract ([`crate::broker::Broker`]) and its
/// admin side ([`Admin`]), as the dashboard takes it (it pauses and runs periodic entries,
/// which are part of the runtime contract). Every type that implements both is a `Store`.
pub trait Store: crate::broker::Broker + Admin {}

impl<T: crate::broker::Broker + Admin + ?Sized> Store for T {}

/// The admin side of a backend. Every method is one atomic step; none re-encodes a payload.
///
/// Methods that take a `member` or `raw` take the exact stored string (as a page returned
/// it), so an entry that changed or moved since the page was read is simply not found
/// (`false`), never a different job.
#[async_trait]
pub trait Admin: Send + Sync + 'static {
    /// The `stat:processed` / `stat:failed` totals.
    async fn counters(&self) -> BrokerResult<Counters>;

    /// The counters of each UTC date given (`YYYY-MM-DD`), in the same order; zero for days
    /// with nothing recorded.
    async fn daily_counters(&self, dates: &[String]) -> BrokerResult<Vec<Counters>>;

    /// What the backend is, with a few facts for the dashboard.
    async fn backend_info(&self) -> BrokerResult<BackendInfo>;

    /// Every known queue (the `queues` set, plus any paused queue), sorted by name.
    async fn queues(&self) -> BrokerResult<Vec<QueueSummary>>;

    /// Up to `range.limit` entries of `range.queue` from position `range.offset`, exactly as
    /// stored. `Asc` starts from the next to run.
    async fn queue_page(&self, range: QueueRange<'_>) -> BrokerResult<Vec<String>>;

    /// Removes one entry equal to `raw` from `queue` (Sidekiq's `LREM queue 1 raw`). False
    /// when none was there.
    async fn queue_delete(&self, queue: &str, raw: &str) -> BrokerResult<bool>;

    /// Empties `queue` and forgets its name. Returns how many jobs were removed.
    async fn queue_clear(&self, queue: &str) -> BrokerResult<u64>;

    /// Pauses (`true`) or resumes a queue: servers stop fetching from a paused queue within a
    /// heartbeat ([`crate::broker::Fleet::paused_queues`]). Its jobs stay where they are.
    async fn set_paused(&self, queue: &str, paused: bool) -> BrokerResult<()>;

    /// How many entries `set` holds.
    async fn set_size(&self, set: SetName) -> BrokerResult<u64>;

    /// Up to `range.limit` entries of `range.set` from position `range.offset` in score order.
    async fn set_page(&self, range: SetRange) -> BrokerResult<Vec<SetEntry>>;

    /// Every entry of `set` whose score is exactly `score` (how Sidekiq addresses an entry:
    /// `<score>-<jid>`; the caller picks the one with the jid).
    async fn set_at_score(&self, set: SetName, score: f64) -> BrokerResult<Vec<SetEntry>>;

    /// The same backend's coordination side, when it has one: the admin actions that take a
    /// job of a batch out of its way (a delete, a kill) record it there as dead, so its batch
    /// still completes. `None` by default.
    fn coordination(&self) -> Option<&dyn crate::broker::Coordination> {
        None
    }

    /// Removes `member` from `set`. False when it was not there.
    async fn set_remove(&self, set: SetName, member: &str) -> BrokerResult<bool>;

    /// In one step: removes `mv.member` from `mv.set` and, if it was there, pushes `mv.payload`
    /// onto `mv.queue` (registering the queue name). False (and nothing pushed) when it was not.
    async fn set_to_queue(&self, mv: MoveToQueue<'_>) -> BrokerResult<bool>;

    /// In one step: removes `mv.member` from `mv.set` and, if it was there, adds `mv.payload` to
    /// the dead set at score `mv.now`, trimmed to `mv.limits`. False (and nothing added) when it
    /// was not.
    async fn set_to_dead(&self, mv: MoveToDead<'_>) -> BrokerResult<bool>;

    /// Empties `set`. Returns how many entries were removed.
    async fn set_clear(&self, set: SetName) -> BrokerResult<u64>;

    /// Every live process (one whose heartbeat has not expired), Errand's and Ruby Sidekiq's,
    /// sorted by identity.
    async fn processes(&self) -> BrokerResult<Vec<ProcessRecord>>;

    /// Sends `signal` to process `identity` through its `<identity>-signals` list (picked up
    /// at its next heartbeat).
    async fn signal(&self, identity: &str, signal: RemoteSignal) -> BrokerResult<()>;

    /// Execution metrics per class over the minutes `from_minute..=to_minute` (minutes since
    /// the epoch, UTC), merged per class and sorted by class. Backends keep at least the last
    /// 25 hours.
    async fn metrics(&self, from_minute: i64, to_minute: i64) -> BrokerResult<Vec<ClassMetrics>>;

    /// Execution metrics per class since the backend was new (monotonic counters, for
    /// Prometheus), sorted by class.
    async fn metrics_totals(&self) -> BrokerResult<Vec<ClassMetrics>>;
}

/// The name a remote signal travels under (`TSTP`, `TERM`, `TTIN`).
pub fn signal_name(signal: RemoteSignal) -> &'static str {
    match signal {
        RemoteSignal::Quiet => "TSTP",
        RemoteSignal::Stop => "TERM",
        RemoteSignal::Dump => "TTIN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_parse_both_spellings() {
        for set in SetName::ALL {
            assert_eq!(SetName::parse(set.key()), Some(set));
        }
        assert_eq!(SetName::parse("retries"), Some(SetName::Retry));
        assert_eq!(SetName::parse("nope"), None);
    }
}
