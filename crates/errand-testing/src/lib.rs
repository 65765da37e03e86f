//! Test support for Errand: [`TestJobs`] to test jobs and the code that enqueues them with
//! no Redis and no running server (fake, drain, inline and direct modes on a manual clock; see
//! [`jobs`]), and [`MemoryBroker`], an in-memory reference implementation of
//! [`errand_core::broker::Broker`].
//!
//! # Overview
//! [`MemoryBroker`] keeps the Redis backend's data model in plain collections behind one mutex,
//! so every trait method is one atomic step, as a Lua script is on Redis:
//! - queues are double-ended lists with Redis's ends: pushes go to the front (`LPUSH`), fetches
//!   take from the back (`RPOP`), so a queue is FIFO;
//! - `retry`, `schedule` and `dead` are sorted sets ordered by (score, member), a member stored
//!   at most once;
//! - in-flight jobs are held in one list per (process identity, queue);
//! - the process registry maps an identity to its `info` JSON, whose `queues` tell recovery
//!   which in-flight lists to look at;
//! - heartbeats expire `ttl` after they were written, measured on an injectable clock
//!   ([`ManualClock`]), so orphan recovery is testable without sleeping; the same clock is the
//!   backend clock servers promote due jobs by;
//! - `stat:processed` / `stat:failed` counters, total and per UTC day.
//!
//! Read-only inspection helpers ([`MemoryBroker::queue`], [`MemoryBroker::set`],
//! [`MemoryBroker::in_flight`], [`MemoryBroker::stats`], ...) let tests assert what a backend
//! holds, and [`MemoryBroker::push_signal`] plays the Web UI sending a remote signal.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use errand_core::broker::{Broker, Enqueue};
//! use errand_testing::MemoryBroker;
//!
//! let broker = MemoryBroker::new();
//! let job = r#"{"class":"Hello","args":[1]}"#.to_string();
//! broker.push(&[Enqueue { queue: "default".into(), payload: job.clone() }]).await.unwrap();
//! assert_eq!(broker.queue("default"), vec![job]);
//! # });
//! ```

mod admin;
pub mod intercept;
pub mod jobs;
pub use intercept::{Intercept, Intercepted};
pub use jobs::TestJobs;

use async_trait::async_trait;
use errand_core::broker::{
    Broker, BrokerResult, Enqueue, FetchRequest, Fetched, Heartbeat, LeaseGrant, LeaseRequest,
    OnceClaim, RateKind, RemoteSignal, RescuePolicy, Scheduled, Settle, WorkEntry,
};
use errand_core::{Payload, WireProfile};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub use errand_core::Clock;

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<f64>>,
}

impl ManualClock {
    /// A clock standing at `start` (float epoch seconds).
    pub fn new(start: f64) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A clock standing at the current wall-clock time.
    pub fn starting_now() -> Self {
        Self::new(errand_core::now())
    }

    /// The time it shows.
    pub fn now(&self) -> f64 {
        *lock(&self.now)
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *lock(&self.now) += by.as_secs_f64();
    }

    /// Sets the clock to `secs` (float epoch seconds).
    pub fn set(&self, secs: f64) {
        *lock(&self.now) = secs;
    }

    /// This clock as a [`Clock`] for [`MemoryBroker::with_clock`].
    pub fn clock(&self) -> Clock {
        let this = self.clone();
        Arc::new(move || this.now())
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test must not hide the state from others).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

/// The `stat:processed` and `stat:failed` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Jobs executed.
    pub processed: u64,
    /// Jobs failed.
    pub failed: u64,
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
    in_flight: BTreeMap<(String, String), VecDeque<String>>,
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
    /// Fencing counters by lease key.
    fences: HashMap<String, u64>,
    /// Bucket rate limits: key → (interval number, uses in it).
    buckets: HashMap<String, (i64, u32)>,
    /// Window rate limits: key → times of the uses in the window.
    windows: HashMap<String, VecDeque<f64>>,
    /// Uses turned away per limiter.
    limit_hits: BTreeMap<String, u64>,
    /// Times each job (by jid) was recovered from a dead process.
    recoveries: HashMap<String, u32>,
    /// The last fencing token handed out by a fetch.
    lease_seq: u64,
    /// Paused queue names.
    paused: BTreeSet<String>,
    /// Execution metrics per (minute, class).
    metrics: BTreeMap<(i64, String), errand_core::admin::ClassMetrics>,
    /// All-time execution metrics per class.
    metrics_totals: BTreeMap<String, errand_core::admin::ClassMetrics>,
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
    fn recover(&mut self, identity: &str, info: &str, policy: &RescuePolicy, now: f64) -> usize {
        let mut n = 0;
        for queue in errand_core::broker::info_queues(info) {
            let Some(list) = self
                .in_flight
                .get_mut(&(identity.to_string(), queue.clone()))
            else {
                continue;
            };
            let moved: Vec<String> = list.drain(..).collect();
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

    fn requeue(&mut self, identity: &str, info: &str) -> usize {
        let mut n = 0;
        for queue in errand_core::broker::info_queues(info) {
            let Some(list) = self
                .in_flight
                .get_mut(&(identity.to_string(), queue.clone()))
            else {
                continue;
            };
            let moved: Vec<String> = list.drain(..).collect();
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

    fn lease_list(&mut self, lease: &str) -> Option<&mut VecDeque<String>> {
        let key: (String, String) = serde_json::from_str(lease).ok()?;
        self.in_flight.get_mut(&key)
    }

    /// `LREM lease -1 raw`: removes the copy nearest the oldest end.
    fn take_in_flight(&mut self, job: &Fetched) -> bool {
        let Some(list) = self.lease_list(&job.lease) else {
            return false;
        };
        match list.iter().rposition(|r| *r == job.raw) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        }
    }
}

/// An in-memory [`Broker`] with the Redis backend's semantics. Cheap to clone; clones share
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
    /// it is the backend clock ([`Broker::now`]) that servers promote due jobs by — so a
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
            .flat_map(|((_, q), list)| list.iter().rev().map(|raw| (q.clone(), raw.clone())))
            .collect()
    }

    /// The total `stat:processed` and `stat:failed` counters.
    pub fn stats(&self) -> Stats {
        self.daily("")
    }

    /// The counters of one UTC day (`YYYY-MM-DD`, as [`errand_core::utc_date`] gives).
    pub fn daily_stats(&self, date: &str) -> Stats {
        self.daily(&format!(":{date}"))
    }

    fn daily(&self, suffix: &str) -> Stats {
        let s = self.state();
        let get = |name: &str| {
            s.stats
                .get(&format!("{name}{suffix}"))
                .copied()
                .unwrap_or(0)
        };
        Stats {
            processed: get("processed"),
            failed: get("failed"),
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
            let lease = serde_json::to_string(&key).unwrap_or_default();
            for raw in taken {
                s.lease_seq += 1;
                let token = s.lease_seq;
                s.in_flight
                    .entry(key.clone())
                    .or_default()
                    .push_front(raw.clone());
                out.push(Fetched {
                    queue: queue.clone(),
                    raw,
                    lease: lease.clone(),
                    token,
                });
            }
        }
        out
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        {
            let mut s = self.state();
            for job in jobs {
                s.known_queues.insert(job.queue.clone());
                s.lpush(&job.queue, job.payload.clone());
            }
        }
        self.pushed.notify_waiters();
        Ok(())
    }

    async fn schedule(&self, jobs: &[Scheduled]) -> BrokerResult<()> {
        let mut s = self.state();
        let set = s.set_mut("schedule");
        for job in jobs {
            set.add(job.at, &job.payload);
        }
        Ok(())
    }

    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()> {
        let info = serde_json::json!({ "queues": queues }).to_string();
        self.state()
            .registry
            .entry(identity.to_string())
            .or_insert(info);
        Ok(())
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        if req.queues.is_empty() || req.max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + req.wait;
        loop {
            // Listen before looking, so a push between the look and the wait is not missed.
            let pushed = self.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            let out = self.take(&req);
            let left = deadline.saturating_duration_since(Instant::now());
            if !out.is_empty() || left.is_zero() {
                return Ok(out);
            }
            let _ = tokio::time::timeout(left, pushed).await;
        }
    }

    async fn ack(&self, job: &Fetched) -> BrokerResult<bool> {
        Ok(self.state().take_in_flight(job))
    }

    async fn settle(&self, job: &Fetched, to: Settle) -> BrokerResult<bool> {
        let mut s = self.state();
        if !s.take_in_flight(job) {
            return Ok(false);
        }
        match to {
            Settle::Retry { payload, at } => s.set_mut("retry").add(at, &payload),
            Settle::Schedule { payload, at } => s.set_mut("schedule").add(at, &payload),
            Settle::Dead {
                payload,
                now,
                limits,
            } => s.bury(&payload, now, limits),
        }
        Ok(true)
    }

    async fn requeue_in_flight(&self, identity: &str) -> BrokerResult<usize> {
        let n = {
            let mut s = self.state();
            let Some(info) = s.registry.get(identity).cloned() else {
                return Ok(0);
            };
            s.requeue(identity, &info)
        };
        if n > 0 {
            self.pushed.notify_waiters();
        }
        Ok(n)
    }

    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>> {
        let s = self.state();
        let mut out = Vec::new();
        for q in queues {
            let key = (identity.to_string(), q.clone());
            let lease = serde_json::to_string(&key).unwrap_or_default();
            if let Some(list) = s.in_flight.get(&key) {
                out.extend(list.iter().rev().map(|raw| Fetched {
                    token: 0,
                    queue: q.clone(),
                    raw: raw.clone(),
                    lease: lease.clone(),
                }));
            }
        }
        Ok(out)
    }

    async fn release(&self, job: &Fetched) -> BrokerResult<bool> {
        let released = {
            let mut s = self.state();
            let held = s.take_in_flight(job);
            if held {
                s.queues
                    .entry(job.queue.clone())
                    .or_default()
                    .push_back(job.raw.clone());
            }
            held
        };
        if released {
            self.pushed.notify_waiters();
        }
        Ok(released)
    }

    async fn now(&self) -> BrokerResult<f64> {
        Ok((self.clock)())
    }

    async fn promote_due(&self, now: f64, profile: WireProfile) -> BrokerResult<usize> {
        let mut moved = 0;
        {
            let mut s = self.state();
            for set in ["retry", "schedule"] {
                let due = s.set_mut(set).up_to(now);
                for raw in due {
                    s.set_mut(set).remove(&raw);
                    let (payload, queue) = match Payload::parse(&raw) {
                        Ok(mut p) => {
                            p.stamp_enqueued(profile, now);
                            let queue = p.queue().to_string();
                            (p.to_json(), queue)
                        }
                        // As on Redis: unreadable members go to `default` unchanged.
                        Err(_) => (raw, "default".to_string()),
                    };
                    s.known_queues.insert(queue.clone());
                    s.lpush(&queue, payload);
                    moved += 1;
                }
            }
        }
        if moved > 0 {
            self.pushed.notify_waiters();
        }
        Ok(moved)
    }

    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>> {
        let now = (self.clock)();
        let mut s = self.state();
        if beat.processed > 0 || beat.failed > 0 {
            let date = errand_core::utc_date(beat.beat);
            for (name, n) in [("processed", beat.processed), ("failed", beat.failed)] {
                *s.stats.entry(name.to_string()).or_default() += n;
                *s.stats.entry(format!("{name}:{date}")).or_default() += n;
            }
        }
        // Redis's EXPIRE takes whole seconds, at least one.
        let ttl = beat.ttl.as_secs().max(1) as f64;
        let work = beat
            .work
            .iter()
            .map(|w: &WorkEntry| (w.tid.clone(), w.json.clone()))
            .collect();
        s.processes.insert(beat.identity.to_string());
        s.beats.insert(
            beat.identity.to_string(),
            ProcessState {
                info: beat.info.to_string(),
                busy: beat.busy,
                concurrency: beat.concurrency,
                beat: beat.beat,
                quiet: beat.quiet,
                rss_kb: beat.rss_kb,
                work,
                expires_at: now + ttl,
            },
        );
        s.registry
            .insert(beat.identity.to_string(), beat.info.to_string());
        let signal = s
            .signals
            .get_mut(beat.identity)
            .and_then(VecDeque::pop_back);
        Ok(signal.as_deref().and_then(RemoteSignal::from_name))
    }

    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize> {
        let now = (self.clock)();
        let total = {
            let mut s = self.state();
            s.expire(now);
            let registered: Vec<(String, String)> = s
                .registry
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut total = 0;
            for (identity, info) in registered {
                if s.beats.contains_key(&identity) {
                    continue;
                }
                total += s.recover(&identity, &info, policy, now);
                s.registry.remove(&identity);
                s.processes.remove(&identity);
            }
            total
        };
        if total > 0 {
            self.pushed.notify_waiters();
        }
        Ok(total)
    }

    async fn unregister(&self, identity: &str) -> BrokerResult<()> {
        let mut s = self.state();
        s.processes.remove(identity);
        s.registry.remove(identity);
        s.beats.remove(identity);
        Ok(())
    }

    async fn process_count(&self) -> BrokerResult<usize> {
        Ok(self.state().processes.len())
    }

    async fn once_claim(&self, key: &str, owner: &str, lease: Duration) -> BrokerResult<OnceClaim> {
        let now = (self.clock)();
        let mut state = self.state();
        if let Some(r) = state.once.get(key).filter(|r| r.expires > now) {
            if let Some(out) = &r.output {
                return Ok(OnceClaim::Done(out.clone()));
            }
            if r.owner != owner {
                return Ok(OnceClaim::Busy);
            }
        }
        state.once.insert(
            key.to_string(),
            OnceRecord {
                owner: owner.to_string(),
                output: None,
                expires: now + lease.as_secs_f64(),
            },
        );
        Ok(OnceClaim::Claimed)
    }

    async fn once_renew(&self, key: &str, owner: &str, lease: Duration) -> BrokerResult<bool> {
        let now = (self.clock)();
        let mut state = self.state();
        match state.once.get_mut(key) {
            Some(r) if r.expires > now && r.owner == owner && r.output.is_none() => {
                r.expires = now + lease.as_secs_f64();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn once_complete(
        &self,
        key: &str,
        owner: &str,
        output: &str,
        keep: Duration,
    ) -> BrokerResult<bool> {
        let now = (self.clock)();
        let mut state = self.state();
        match state.once.get_mut(key) {
            Some(r) if r.expires > now && r.owner == owner && r.output.is_none() => {
                r.output = Some(output.to_string());
                r.expires = now + keep.as_secs_f64();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()> {
        let mut state = self.state();
        if state
            .once
            .get(key)
            .is_some_and(|r| r.owner == owner && r.output.is_none())
        {
            state.once.remove(key);
        }
        Ok(())
    }

    async fn lease_acquire(&self, req: LeaseRequest<'_>) -> BrokerResult<LeaseGrant> {
        let now = (self.clock)();
        let mut state = self.state();
        let set = state.leases.entry(req.key.to_string()).or_default();
        set.retain(|_, until| *until > now);
        if !set.contains_key(req.holder) && set.len() >= req.max as usize {
            let first = set
                .iter()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(h, _)| h.clone())
                .unwrap_or_default();
            return Ok(LeaseGrant::Full { holder: first });
        }
        set.insert(req.holder.to_string(), now + req.ttl.as_secs_f64());
        let token = if req.fence {
            let last = state.fences.entry(req.key.to_string()).or_insert(0);
            *last += 1;
            *last
        } else {
            0
        };
        Ok(LeaseGrant::Granted { token })
    }

    async fn lease_renew(&self, key: &str, holder: &str, ttl: Duration) -> BrokerResult<bool> {
        let now = (self.clock)();
        let mut state = self.state();
        match state
            .leases
            .get_mut(key)
            .and_then(|set| set.get_mut(holder))
        {
            Some(until) if *until > now => {
                *until = now + ttl.as_secs_f64();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn lease_release(&self, key: &str, holder: &str) -> BrokerResult<bool> {
        let now = (self.clock)();
        let mut state = self.state();
        Ok(state
            .leases
            .get_mut(key)
            .and_then(|set| set.remove(holder))
            .is_some_and(|until| until > now))
    }

    async fn lease_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>> {
        let now = (self.clock)();
        let state = self.state();
        let mut held: Vec<(String, f64)> = state
            .leases
            .get(key)
            .map(|set| {
                set.iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(h, until)| (h.clone(), *until))
                    .collect()
            })
            .unwrap_or_default();
        held.sort_by(|a, b| a.1.total_cmp(&b.1));
        Ok(held)
    }

    async fn rate_take(
        &self,
        key: &str,
        kind: RateKind,
        limit: u32,
        interval: Duration,
    ) -> BrokerResult<Option<Duration>> {
        let now = (self.clock)();
        let interval = interval.as_secs_f64().max(0.001);
        let mut state = self.state();
        let wait = match kind {
            RateKind::Bucket => {
                let slot = (now / interval).floor() as i64;
                let entry = state.buckets.entry(key.to_string()).or_insert((slot, 0));
                if entry.0 != slot {
                    *entry = (slot, 0);
                }
                if entry.1 >= limit {
                    Some((slot + 1) as f64 * interval - now)
                } else {
                    entry.1 += 1;
                    None
                }
            }
            RateKind::Window => {
                let uses = state.windows.entry(key.to_string()).or_default();
                while uses.front().is_some_and(|at| *at <= now - interval) {
                    uses.pop_front();
                }
                if uses.len() >= limit as usize {
                    Some(uses.front().copied().unwrap_or(now) + interval - now)
                } else {
                    uses.push_back(now);
                    None
                }
            }
        };
        Ok(wait.map(|w| Duration::from_secs_f64(w.max(0.001))))
    }

    async fn limit_hit(&self, name: &str) -> BrokerResult<()> {
        *self.state().limit_hits.entry(name.to_string()).or_insert(0) += 1;
        Ok(())
    }

    async fn limit_hits(&self) -> BrokerResult<Vec<(String, u64)>> {
        Ok(self
            .state()
            .limit_hits
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }

    async fn paused_queues(&self) -> BrokerResult<Vec<String>> {
        Ok(self.state().paused.iter().cloned().collect())
    }

    async fn record_metrics(
        &self,
        minute: i64,
        classes: &[errand_core::admin::ClassMetrics],
    ) -> BrokerResult<()> {
        let mut s = self.state();
        for m in classes {
            s.metrics
                .entry((minute, m.class.clone()))
                .or_insert_with(|| errand_core::admin::ClassMetrics::new(&m.class))
                .merge(m);
            s.metrics_totals
                .entry(m.class.clone())
                .or_insert_with(|| errand_core::admin::ClassMetrics::new(&m.class))
                .merge(m);
        }
        // Keep 26 hours of minutes, as the other backends do.
        let keep_from = minute - 26 * 60;
        s.metrics.retain(|(m, _), _| *m >= keep_from);
        Ok(())
    }

    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool> {
        let now = Instant::now();
        let mut state = self.state();
        if state.poll_until.is_some_and(|until| until > now) {
            return Ok(false);
        }
        state.poll_until = Some(now + window);
        Ok(true)
    }
}
