//! [`MemoryBroker`]: the in-memory reference backend. Its state (the Redis data model in plain
//! collections) and inspection helpers live here; each topic of the contract is implemented in
//! its own module (`queue`, `fleet`, `coordination`, `admin`), every method one step under the
//! state's mutex.

mod admin;
mod coordination;
mod fleet;
mod queue;

use crate::ManualClock;
use errand_core::Clock;
use errand_core::Payload;
use errand_core::admin::Counters;
use errand_core::broker::{FetchRequest, Fetched, RescuePolicy};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Notify;

/// Locks a mutex, ignoring poisoning (a panicking test must not hide the state from others).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A sorted-set score with a total order.
#[derive(Debug, Clone, Copy)]
struct Score(f64);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A Redis-style sorted set: members unique, ordered by (score, member).
#[derive(Debug, Default)]
struct ZSet {
    ordered: BTreeSet<(Score, String)>,
    scores: HashMap<String, f64>,
}

impl ZSet {
    /// `ZADD`: adds `member`, or moves it to `score` when already present.
    fn add(&mut self, score: f64, member: &str) {
        if let Some(old) = self.scores.insert(member.to_string(), score) {
            self.ordered.remove(&(Score(old), member.to_string()));
        }
        self.ordered.insert((Score(score), member.to_string()));
    }

    /// `ZREM`: true when `member` was there.
    fn remove(&mut self, member: &str) -> bool {
        match self.scores.remove(member) {
            Some(score) => {
                self.ordered.remove(&(Score(score), member.to_string()));
                true
            }
            None => false,
        }
    }

    /// Members with a score at most `max`, lowest first.
    fn up_to(&self, max: f64) -> Vec<String> {
        self.ordered
            .iter()
            .take_while(|(s, _)| s.0 <= max)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// `ZREMRANGEBYSCORE -inf (before`: drops members scored strictly below `before`.
    fn remove_below(&mut self, before: f64) {
        while let Some((s, m)) = self.ordered.first().cloned() {
            if s.0 >= before {
                break;
            }
            self.ordered.pop_first();
            self.scores.remove(&m);
        }
    }

    /// Keeps the `keep` highest-ranked members, as `ZREMRANGEBYRANK 0 -(keep + 1)` does.
    fn keep_newest(&mut self, keep: u64) {
        while self.ordered.len() as u64 > keep {
            if let Some((_, m)) = self.ordered.pop_first() {
                self.scores.remove(&m);
            }
        }
    }

    fn entries(&self) -> Vec<(f64, String)> {
        self.ordered.iter().map(|(s, m)| (s.0, m.clone())).collect()
    }
}

/// The process hash a heartbeat writes (Sidekiq's `<identity>` hash).
#[derive(Debug, Clone)]
pub struct ProcessState {
    /// The static `info` JSON.
    pub info: String,
    /// Jobs running at the last beat.
    pub busy: usize,
    /// Worker slots.
    pub concurrency: usize,
    /// Time of the last beat, float epoch seconds.
    pub beat: f64,
    /// Whether the process reported itself quiet.
    pub quiet: bool,
    /// Resident memory in KB.
    pub rss_kb: u64,
    /// The running jobs as `(tid, json)`.
    pub work: Vec<(String, String)>,
    /// When the hash expires, on the broker's clock.
    pub expires_at: f64,
}

#[derive(Debug, Default)]
struct State {
    /// Queue lists: front = `LPUSH` end, back = consuming end.
    queues: HashMap<String, VecDeque<String>>,
    /// The `queues` set.
    known_queues: BTreeSet<String>,
    /// `retry`, `schedule`, `dead`.
    sets: HashMap<String, ZSet>,
    /// In-flight lists per (identity, queue): front = newest fetched.
    /// `(identity, queue)` → the jobs held, newest fetched first, each with its fencing token.
    in_flight: BTreeMap<(String, String), VecDeque<(u64, String)>>,
    /// Errand's registry: identity → `info` JSON.
    registry: BTreeMap<String, String>,
    /// Sidekiq's `processes` set.
    processes: BTreeSet<String>,
    /// Process hashes, with their expiry.
    beats: HashMap<String, ProcessState>,
    /// `<identity>-signals` lists: front = `LPUSH` end.
    signals: HashMap<String, VecDeque<String>>,
    /// `stat:*` counters by key name without the `stat:` prefix.
    stats: HashMap<String, u64>,
    /// Until when the current poll turn is held. Real time, not the injectable clock: servers
    /// running on the broker promote by the wall clock, and a frozen manual clock would never
    /// free the turn.
    poll_until: Option<Instant>,
    /// Once-only step records by key.
    once: HashMap<String, OnceRecord>,
    /// Lease sets: key → holder → when its lease ends (broker clock).
    leases: HashMap<String, HashMap<String, f64>>,
    /// Permit set → its last fencing token and when the counter expires.
    fences: HashMap<String, (u64, f64)>,
    /// Bucket rate limits: key → (interval number, uses in it).
    buckets: HashMap<String, (i64, u32)>,
    /// Window rate limits: key → times of the uses in the window.
    windows: HashMap<String, VecDeque<f64>>,
    /// Uses turned away per limiter.
    limit_hits: BTreeMap<String, u64>,
    /// Periodic entries with their state, by name.
    periodic: BTreeMap<String, errand_core::broker::PeriodicRecord>,
    /// Times each job (by jid) was recovered from a dead process.
    recoveries: HashMap<String, u32>,
    /// Cancelled jobs by jid, with when the mark expires (broker clock).
    cancels: HashMap<String, f64>,
    /// Debounce keys: the job last pushed under each (jid, payload, scheduled?) and when the
    /// key expires (broker clock).
    replacing: HashMap<String, (String, String, bool, f64)>,
    /// Kept results by jid: the JSON and when it expires (broker clock).
    results: HashMap<String, (String, f64)>,
    /// The last fencing token handed out by a fetch.
    lease_seq: u64,
    /// Paused queue names.
    paused: BTreeSet<String>,
    /// Execution metrics per (minute, class).
    metrics: BTreeMap<(i64, String), errand_core::metrics::ClassMetrics>,
    /// All-time execution metrics per class.
    metrics_totals: BTreeMap<String, errand_core::metrics::ClassMetrics>,
    /// Batches by bid (expired ones are dropped as they are next looked at).
    batches: HashMap<String, BatchState>,
    /// The last batch creation number: orders batches created at the same instant.
    batch_seq: u64,
}

/// A batch and its members (the model of [`errand_core::broker::batch`]).
#[derive(Debug)]
struct BatchState {
    parent: Option<String>,
    description: String,
    /// Broker-clock creation time, and the creation number after it.
    created_at: f64,
    seq: u64,
    callbacks: Vec<errand_core::broker::BatchCallback>,
    /// How long it is kept after it completes.
    keep: f64,
    policy: errand_core::broker::FailurePolicy,
    workflow: Option<String>,
    /// Every member ever added (not `building`): `total` is its size.
    members: BTreeSet<String>,
    /// Not succeeded nor dead (with `building` while it is filled; a superset of `failed`
    /// and of `waiting`'s keys).
    pending: BTreeSet<String>,
    failed: BTreeSet<String>,
    dead: BTreeSet<String>,
    cancelled: BTreeSet<String>,
    /// Workflow steps not pushed yet, by jid.
    waiting: BTreeMap<String, errand_core::broker::WaitingStep>,
    complete_at: Option<f64>,
    success_at: Option<f64>,
    death_at: Option<f64>,
}

impl BatchState {
    /// Whether it is still kept at `now`: `keep` after it completed, or
    /// [`BATCH_MAX_AGE`](errand_core::broker::batch::BATCH_MAX_AGE) after its creation while it has not.
    fn alive(&self, now: f64) -> bool {
        match self.complete_at {
            Some(at) => at + self.keep > now,
            None => self.created_at + errand_core::broker::batch::BATCH_MAX_AGE.as_secs_f64() > now,
        }
    }
}

/// A once-only step's record: a claim until `output` is set, then the completed step.
#[derive(Debug, Clone)]
struct OnceRecord {
    owner: String,
    output: Option<String>,
    /// Broker-clock seconds after which the record is gone.
    expires: f64,
}

impl State {
    fn lpush(&mut self, queue: &str, payload: String) {
        self.queues
            .entry(queue.to_string())
            .or_default()
            .push_front(payload);
    }

    fn set_mut(&mut self, name: &str) -> &mut ZSet {
        self.sets.entry(name.to_string()).or_default()
    }

    /// Adds `payload` to the dead set at `now` and trims it to `limits`.
    fn bury(&mut self, payload: &str, now: f64, limits: errand_core::broker::DeadLimits) {
        let dead = self.set_mut("dead");
        dead.add(now, payload);
        dead.remove_below(now - limits.max_age.as_secs_f64());
        dead.keep_newest(limits.max_jobs);
    }

    /// Drops process hashes whose TTL has passed (Redis's expiry).
    fn expire(&mut self, now: f64) {
        self.beats.retain(|_, p| p.expires_at > now);
    }

    /// Moves one process's in-flight jobs back to the consuming end of their queues (the
    /// queues named in its `info`), oldest fetched consumed first, as `rescue.lua` does.
    /// Recovers a dead process's jobs: as [`State::requeue`], but counting each job's
    /// recoveries and burying poison pills in the dead set.
    fn recover(
        &mut self,
        identity: &str,
        queues: &[String],
        policy: &RescuePolicy,
        now: f64,
    ) -> usize {
        let mut n = 0;
        for queue in queues {
            let Some(list) = self
                .in_flight
                .get_mut(&(identity.to_string(), queue.clone()))
            else {
                continue;
            };
            let moved: Vec<String> = list.drain(..).map(|(_, raw)| raw).collect();
            n += moved.len();
            for raw in moved {
                let jid = Payload::parse(&raw).ok().map(|p| p.jid().to_string());
                let count = jid.as_ref().map(|jid| {
                    let c = self.recoveries.entry(jid.clone()).or_insert(0);
                    *c += 1;
                    *c
                });
                let entry = count
                    .filter(|c| *c >= policy.max_recoveries.max(1))
                    .and_then(|c| errand_core::broker::poison_entry(&raw, c, now, policy.profile));
                match entry {
                    Some(entry) => {
                        if let Some(jid) = &jid {
                            self.recoveries.remove(jid);
                        }
                        self.bury(&entry, now, policy.dead_limits);
                    }
                    None => self.queues.entry(queue.clone()).or_default().push_back(raw),
                }
            }
        }
        n
    }

    fn requeue(&mut self, identity: &str, queues: &[String]) -> usize {
        let mut n = 0;
        for queue in queues.iter().cloned() {
            let Some(list) = self
                .in_flight
                .get_mut(&(identity.to_string(), queue.clone()))
            else {
                continue;
            };
            let moved: Vec<String> = list.drain(..).map(|(_, raw)| raw).collect();
            n += moved.len();
            let target = self.queues.entry(queue).or_default();
            // LMOVE LEFT RIGHT: the newest fetched goes to the consuming end first, so the
            // oldest ends up last there and is consumed first.
            for raw in moved {
                target.push_back(raw);
            }
        }
        n
    }

    fn lease_list(&mut self, lease: &str) -> Option<&mut VecDeque<(u64, String)>> {
        let key: (String, String) = serde_json::from_str(lease).ok()?;
        self.in_flight.get_mut(&key)
    }

    /// Removes the entry of this attempt (its fencing token and job), if still held.
    fn take_in_flight(&mut self, job: &Fetched) -> bool {
        let Some(list) = self.lease_list(&job.location) else {
            return false;
        };
        match list
            .iter()
            .rposition(|(token, raw)| *token == job.token && *raw == job.raw)
        {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        }
    }
}

/// An in-memory [`Broker`](errand_core::broker::Broker) with the Redis backend's semantics. Cheap to clone; clones share
/// state.
///
/// Differences from Redis worth knowing:
/// - a fetch that waits on several empty queues takes a job pushed to any of them (Redis blocks
///   on the first queue only and polls the others every 100 ms);
/// - a waiting fetch may return up to `max` jobs (Redis's blocking move returns one).
#[derive(Clone)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
    pushed: Arc<Notify>,
    clock: Clock,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("state", &*lock(&self.state))
            .finish_non_exhaustive()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// An empty broker on the wall clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(errand_core::now))
    }

    /// An empty broker on `clock`: heartbeat, lease and record expiry are measured on it, and
    /// it is the backend clock ([`JobQueue::now`](errand_core::broker::JobQueue::now)) that servers promote due jobs by — so a
    /// server writing retries by the wall clock needs a clock here that flows with it.
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            state: Default::default(),
            pushed: Arc::new(Notify::new()),
            clock,
        }
    }

    /// An empty broker on `clock`; advance it to expire heartbeats.
    pub fn with_manual_clock(clock: &ManualClock) -> Self {
        Self::with_clock(clock.clock())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Empties every queue and the `schedule`, `retry` and `dead` sets (processes, in-flight
    /// jobs, stats and once-only records stay).
    pub fn clear(&self) {
        let mut state = self.state();
        state.queues.clear();
        state.known_queues.clear();
        state.sets.clear();
    }

    /// The number of jobs waiting in queue `name`.
    pub fn queue_len(&self, name: &str) -> usize {
        self.state().queues.get(name).map_or(0, VecDeque::len)
    }

    /// The jobs waiting in queue `name`, the next to be fetched first.
    pub fn queue(&self, name: &str) -> Vec<String> {
        self.state()
            .queues
            .get(name)
            .map(|q| q.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// The `queues` set: every queue name pushed or promoted to, sorted.
    pub fn known_queues(&self) -> Vec<String> {
        self.state().known_queues.iter().cloned().collect()
    }

    /// The members of sorted set `name` (`retry`, `schedule` or `dead`) with their scores,
    /// lowest score first.
    pub fn set(&self, name: &str) -> Vec<(f64, String)> {
        self.state()
            .sets
            .get(name)
            .map(ZSet::entries)
            .unwrap_or_default()
    }

    /// The jobs `identity` holds in flight as `(queue, raw)`, by queue name, oldest fetched
    /// first within a queue.
    pub fn in_flight(&self, identity: &str) -> Vec<(String, String)> {
        self.state()
            .in_flight
            .iter()
            .filter(|((id, _), _)| id == identity)
            .flat_map(|((_, q), list)| list.iter().rev().map(|(_, raw)| (q.clone(), raw.clone())))
            .collect()
    }

    /// The total `stat:processed` and `stat:failed` counters.
    pub fn stats(&self) -> Counters {
        self.daily("")
    }

    /// The counters of one UTC day (`YYYY-MM-DD`, as [`errand_core::utc_date`] gives).
    pub fn daily_stats(&self, date: &str) -> Counters {
        self.daily(&format!(":{date}"))
    }

    fn daily(&self, suffix: &str) -> Counters {
        let s = self.state();
        let get = |name: &str| {
            s.stats
                .get(&format!("{name}{suffix}"))
                .copied()
                .unwrap_or(0)
        };
        Counters {
            processed: get("processed"),
            failed: get("failed"),
            // Kept as totals only: 0 for a day.
            cancelled: get("cancelled"),
            expired: get("expired"),
        }
    }

    /// The identities in the registry recovery works from.
    pub fn registered(&self) -> Vec<String> {
        self.state().registry.keys().cloned().collect()
    }

    /// The process hash of `identity`, if its heartbeat has not expired.
    pub fn process(&self, identity: &str) -> Option<ProcessState> {
        let now = (self.clock)();
        let mut s = self.state();
        s.expire(now);
        s.beats.get(identity).cloned()
    }

    /// Queues a remote signal (`TSTP`, `TERM`, `TTIN`, ...) for `identity`, as Sidekiq's Web
    /// UI does with `LPUSH <identity>-signals`. The next heartbeat returns it.
    pub fn push_signal(&self, identity: &str, name: &str) {
        self.state()
            .signals
            .entry(identity.to_string())
            .or_default()
            .push_front(name.to_string());
    }

    /// One non-blocking fetch round.
    fn take(&self, req: &FetchRequest<'_>) -> Vec<Fetched> {
        let mut s = self.state();
        let mut out = Vec::new();
        for queue in req.queues {
            if out.len() >= req.max {
                break;
            }
            let Some(list) = s.queues.get_mut(queue) else {
                continue;
            };
            let n = (req.max - out.len()).min(list.len());
            let taken: Vec<String> = (0..n).filter_map(|_| list.pop_back()).collect();
            if taken.is_empty() {
                continue;
            }
            let key = (req.identity.to_string(), queue.clone());
            let location = serde_json::to_string(&key).unwrap_or_default();
            for raw in taken {
                s.lease_seq += 1;
                let token = s.lease_seq;
                s.in_flight
                    .entry(key.clone())
                    .or_default()
                    .push_front((token, raw.clone()));
                out.push(Fetched {
                    queue: queue.clone(),
                    raw,
                    location: location.clone(),
                    token,
                });
            }
        }
        out
    }
}
