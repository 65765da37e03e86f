//! Primitives that jobs coordinate with: once-only records (`JobContext::once`), permit sets
//! (the fenced `Mutex`, unique jobs, concurrency limiters) and rate counters (bucket and
//! sliding-window limiters). All are measured on the backend's clock, never the caller's.
//!
//! A backend may leave this topic out: every method has a default that fails with
//! [`BrokerError::Unsupported`](crate::BrokerError::Unsupported), and [`Coordination::capabilities`]
//! says what is there, so callers can refuse early with a clear message.

use super::batch::{BatchFired, BatchRecord, BatchStatus, MemberState, NewBatch};
use super::periodic::{PeriodicEntry, PeriodicRecord, TickClaim};
use super::queue::{Enqueue, ScheduledJob};
use crate::BrokerError;
use crate::error::BrokerResult;
use async_trait::async_trait;
use std::time::Duration;

/// Which coordination primitives a backend provides ([`Coordination::capabilities`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Once-only records (`once_*`).
    pub once: bool,
    /// Permit sets with fencing tokens (`permit_*`).
    pub permits: bool,
    /// Rate counters and the limiters' refusal counts (`rate_take`, `refusal_*`).
    pub rates: bool,
    /// The periodic entries' registry and tick claims (`periodic_*`).
    pub periodic: bool,
    /// Job control: cancelling jobs by jid (`cancel_job`, `cancelled`) and kept results
    /// (`result_put`, `result_get`).
    pub control: bool,
    /// Batches and workflow steps (`batch_*`).
    pub batches: bool,
}

impl Capabilities {
    /// Every primitive.
    pub const ALL: Capabilities = Capabilities {
        once: true,
        permits: true,
        rates: true,
        periodic: true,
        control: true,
        batches: true,
    };

    /// None: a backend that implements only the queue and fleet topics.
    pub const NONE: Capabilities = Capabilities {
        once: false,
        permits: false,
        rates: false,
        periodic: false,
        control: false,
        batches: false,
    };
}

/// What [`Coordination::once_claim`] found for a once-only step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnceClaim {
    /// No finished record and no live claim: the caller now holds the step for its TTL.
    Claimed,
    /// The step already ran to completion; its recorded output (JSON).
    Done(String),
    /// Another attempt holds a live claim on the step.
    Busy,
}

/// A claim on once-only step `key` by `owner` ([`Coordination::once_claim`],
/// [`Coordination::once_renew`]).
#[derive(Debug, Clone, Copy)]
pub struct OnceRequest<'a> {
    /// The step's record key (`errand:once:<jid>:<step>`).
    pub key: &'a str,
    /// The claiming attempt (a random id per attempt).
    pub owner: &'a str,
    /// How long the claim lasts unless renewed.
    pub ttl: Duration,
}

/// A finished once-only step ([`Coordination::once_complete`]).
#[derive(Debug, Clone, Copy)]
pub struct OnceCompletion<'a> {
    /// The step's record key.
    pub key: &'a str,
    /// The attempt that must still hold the claim.
    pub owner: &'a str,
    /// The step's output, JSON.
    pub output: &'a str,
    /// How long the record is kept.
    pub keep: Duration,
}

/// A request for a permit in a permit set ([`Coordination::permit_acquire`]): a set of at most
/// `max` holders, each with a TTL, that a mutex (`max` 1), a unique job or a concurrency
/// limiter is built on.
#[derive(Debug, Clone, Copy)]
pub struct PermitRequest<'a> {
    /// The permit set (`mutex:<name>`, `unique:<digest>`, `limit:<name>:<key>`).
    pub key: &'a str,
    /// Who takes the permit (a guard's random id, a job id).
    pub holder: &'a str,
    /// How many holders the set allows at once (1 for a mutex).
    pub max: u32,
    /// How long the permit lasts unless renewed, on the backend's clock.
    pub ttl: Duration,
    /// Whether to hand out a fencing token: strictly increasing per key, kept forever (one
    /// counter per key), so only locks that protect a resource should ask for one.
    pub fence: bool,
}

/// A renewal of a held permit ([`Coordination::permit_renew`]).
#[derive(Debug, Clone, Copy)]
pub struct PermitRenewal<'a> {
    /// The permit set.
    pub key: &'a str,
    /// The holder.
    pub holder: &'a str,
    /// The new TTL, from now on the backend's clock.
    pub ttl: Duration,
}

/// What [`Coordination::permit_acquire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermitGrant {
    /// The holder has a permit; `token` is its fencing token (0 when none was asked for).
    Granted {
        /// The fencing token.
        token: u64,
    },
    /// Every permit is taken by live holders; `holder` is one of them (the one whose permit
    /// ends first).
    Full {
        /// A current holder.
        holder: String,
    },
}

/// The two kinds of rate limit [`Coordination::rate_take`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// At most `limit` per interval, intervals aligned to the epoch (a fixed window: a burst
    /// at the end of one interval and the start of the next can reach twice the limit).
    Bucket,
    /// At most `limit` in any interval-long span (a sliding window).
    Window,
}

/// One use of a rate limit ([`Coordination::rate_take`]).
#[derive(Debug, Clone, Copy)]
pub struct RateRequest<'a> {
    /// The counter's key (`rate:<name>:<key>`).
    pub key: &'a str,
    /// Fixed or sliding window.
    pub kind: RateKind,
    /// Uses allowed per interval.
    pub limit: u32,
    /// The interval.
    pub interval: Duration,
}

fn unsupported<T>(what: &'static str) -> BrokerResult<T> {
    Err(BrokerError::Unsupported(what))
}

/// How long a permit set's fencing counter outlives the permit it was last taken with. Tokens
/// are the larger of the last token plus one and the backend's time in milliseconds, so they
/// keep growing after the counter is gone (unless the backend's clock steps back by more than
/// this, or more than one token per millisecond was handed out for this long): a permit set per
/// order leaves nothing behind a day after its last use.
pub const FENCE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// A job pushed under a unique permit ([`Coordination::push_unique`]).
#[derive(Debug, Clone, Copy)]
pub struct UniquePush<'a> {
    /// The permit set of the job's unique key (`unique:<class>:<key or digest>`).
    pub key: &'a str,
    /// The job's id, the permit's holder.
    pub jid: &'a str,
    /// How long the permit lasts: the unique period, plus the delay of a scheduled push.
    pub ttl: Duration,
    /// The job's queue (registered, and pushed onto when `at` is `None`).
    pub queue: &'a str,
    /// The job, as stored.
    pub payload: &'a str,
    /// When set, the job goes into the schedule set at this time (epoch seconds) instead.
    pub at: Option<f64>,
}

/// What [`Coordination::push_unique`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UniquePushed {
    /// The job is stored and holds the permit (now, or since an earlier call with its jid).
    Pushed,
    /// Another job holds the permit: nothing was stored.
    Duplicate {
        /// The jid of the job that holds it.
        holder: String,
    },
}

/// A job pushed in place of the waiting job of the same key ([`Coordination::push_replacing`]).
#[derive(Debug, Clone, Copy)]
pub struct ReplacePush<'a> {
    /// The job's debounce key (`debounce:<class>:<key or digest>`).
    pub key: &'a str,
    /// The job's id.
    pub jid: &'a str,
    /// How long the key remembers this job (longer than it can wait).
    pub ttl: Duration,
    /// The job's queue (registered, and pushed onto when `at` is `None`).
    pub queue: &'a str,
    /// The job, as stored.
    pub payload: &'a str,
    /// When set, the job goes into the schedule set at this time (epoch seconds) instead.
    pub at: Option<f64>,
}

/// Where [`Coordination::cancel_job`] found a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// It was waiting in queue `.0`, and is removed.
    Queued(String),
    /// It was scheduled, and is removed from the schedule set.
    Scheduled,
    /// It was waiting for a retry, and is removed from the retry set.
    Retrying,
    /// It is running on process `.0`, which sees the cancellation at its next heartbeat.
    Running(String),
    /// Neither waiting nor running: it finished (or died, or was never pushed). Only the
    /// cancellation mark is left, so a copy of it that turns up later (a recovered in-flight
    /// job) is cancelled too.
    NotFound,
}

/// The marks of cancelled jobs live this long by default: longer than any job should run.
pub const CANCEL_MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// A backend's coordination primitives.
#[async_trait]
pub trait Coordination: Send + Sync + 'static {
    /// Which primitives this backend provides. Defaults to none; a backend that implements the
    /// methods below says so here.
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    /// Claims once-only step `req.key` for `req.owner` for `req.ttl`, in one atomic step:
    /// returns the recorded output when the step already completed, [`OnceClaim::Busy`] while
    /// another owner's claim is live, and otherwise records the claim. A claim whose TTL ran
    /// out (its holder died) counts as absent. Claiming again as the same owner extends it.
    async fn once_claim(&self, req: OnceRequest<'_>) -> BrokerResult<OnceClaim> {
        let _ = req;
        unsupported("once-only records")
    }

    /// Extends `req.owner`'s live claim on `req.key` to `req.ttl` from now. False when the
    /// claim is no longer the owner's (it expired and another took it, or the step completed).
    async fn once_renew(&self, req: OnceRequest<'_>) -> BrokerResult<bool> {
        let _ = req;
        unsupported("once-only records")
    }

    /// Marks `done.key` completed with `done.output`, kept for `done.keep`, if `done.owner`
    /// still holds the claim; false (and nothing written) otherwise.
    async fn once_complete(&self, done: OnceCompletion<'_>) -> BrokerResult<bool> {
        let _ = done;
        unsupported("once-only records")
    }

    /// Drops `owner`'s claim on `key` (the step failed and may run again). Does nothing when
    /// the claim is not `owner`'s or the step completed.
    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()> {
        let _ = (key, owner);
        unsupported("once-only records")
    }

    /// Takes a permit in set `req.key` for `req.holder`, in one atomic step: holders whose
    /// permit ran out are dropped first; a holder already in the set has its permit extended
    /// (and gets a new token); otherwise the holder gets a permit when fewer than `req.max`
    /// are taken. A fencing token is the larger of the set's last token plus one and the
    /// backend's time in milliseconds; the set's counter is kept for [`FENCE_GRACE`] after the
    /// permit it was taken with. TTLs are measured on the backend's clock (Redis's `TIME`), never the
    /// caller's, so a worker with a skewed clock cannot hold a permit longer than it should.
    async fn permit_acquire(&self, req: PermitRequest<'_>) -> BrokerResult<PermitGrant> {
        let _ = req;
        unsupported("permit sets")
    }

    /// Takes unique permit `req.key` (at most one holder) for `req.jid` and stores the job, as
    /// one atomic step: both happen or neither, so a crash cannot leave a permit without its
    /// job, and a lost reply cannot make the caller give up the permit of a stored job.
    /// Expired permits are dropped first (on the backend's clock). While another job's permit
    /// is live nothing is stored. When `req.jid` already holds the permit (this is a retry of
    /// a call whose reply was lost) the job is already stored: nothing is written again and
    /// the answer is [`UniquePushed::Pushed`].
    async fn push_unique(&self, req: UniquePush<'_>) -> BrokerResult<UniquePushed> {
        let _ = req;
        unsupported("permit sets")
    }

    /// Extends `req.holder`'s live permit in `req.key` to `req.ttl` from now. False when it has
    /// none (its permit ran out, or it released it).
    async fn permit_renew(&self, req: PermitRenewal<'_>) -> BrokerResult<bool> {
        let _ = req;
        unsupported("permit sets")
    }

    /// Gives up `holder`'s permit in `key`. False when it held none.
    async fn permit_release(&self, key: &str, holder: &str) -> BrokerResult<bool> {
        let _ = (key, holder);
        unsupported("permit sets")
    }

    /// The live holders of permit set `key` with the epoch seconds their permits end, soonest
    /// first.
    async fn permit_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>> {
        let _ = key;
        unsupported("permit sets")
    }

    /// Declares periodic entries: a new entry is added (unpaused, its `last_tick` set to `now`,
    /// so it starts with the next tick after its registration); a known one gets the new
    /// definition and keeps its state (paused, last tick, last run). Every entry's `seen_at`
    /// becomes `now`.
    async fn periodic_upsert(&self, entries: &[PeriodicEntry], now: f64) -> BrokerResult<()> {
        let _ = (entries, now);
        unsupported("periodic entries")
    }

    /// Every periodic entry with its state, sorted by name.
    async fn periodic_list(&self) -> BrokerResult<Vec<PeriodicRecord>> {
        unsupported("periodic entries")
    }

    /// Pauses or resumes entry `name`. False when there is no such entry.
    async fn periodic_pause(&self, name: &str, paused: bool) -> BrokerResult<bool> {
        let _ = (name, paused);
        unsupported("periodic entries")
    }

    /// Claims tick `claim.at` of entry `claim.name` and enqueues its job, as one atomic step:
    /// only when the entry exists, is not paused, and `claim.at` is later than its last tick.
    /// The tick then becomes the entry's last (with `claim.jid` and `claim.now`). So each
    /// (entry, scheduled time) is enqueued at most once, however many processes claim it and
    /// in whatever order they wake; an older tick than the last one is never enqueued.
    async fn periodic_claim(&self, claim: TickClaim<'_>) -> BrokerResult<bool> {
        let _ = claim;
        unsupported("periodic entries")
    }

    /// Removes the entries no process has declared since `before` (epoch seconds): entries
    /// removed from the code. Returns how many went.
    async fn periodic_prune(&self, before: f64) -> BrokerResult<usize> {
        let _ = before;
        unsupported("periodic entries")
    }

    /// Counts one use of rate limit `req.key` if it is under the limit, atomically, on the
    /// backend's clock. Returns `None` when counted, or how long until a use would be let
    /// through (nothing counted).
    async fn rate_take(&self, req: RateRequest<'_>) -> BrokerResult<Option<Duration>> {
        let _ = req;
        unsupported("rate counters")
    }

    /// Adds one to limiter `limiter`'s count of uses turned away (shown by dashboards and
    /// metrics).
    async fn refusal_add(&self, limiter: &str) -> BrokerResult<()> {
        let _ = limiter;
        unsupported("rate counters")
    }

    /// Every limiter's count of uses turned away, by limiter name.
    async fn refusal_counts(&self) -> BrokerResult<Vec<(String, u64)>> {
        unsupported("rate counters")
    }

    /// Cancels job `jid`: first marks it cancelled for `keep` (what [`Coordination::cancelled`]
    /// reads), then removes it from wherever it waits — a queue, the schedule set, the retry
    /// set (each removal one atomic step, so a job is removed or fetched, never both) — or
    /// finds the process running it. The dead set is left alone (a dead job is not going to
    /// run; delete it there). Scans the queues and sets (as Sidekiq's API does to find a job):
    /// an administrative operation, not one for the hot path.
    async fn cancel_job(&self, jid: &str, keep: Duration) -> BrokerResult<Cancelled> {
        let _ = (jid, keep);
        unsupported("job cancellation")
    }

    /// Which of `jids` are marked cancelled (by [`Coordination::cancel_job`], within its
    /// `keep`), in the same order. One round trip, read by each process at each heartbeat for
    /// the jobs it is running.
    async fn cancelled(&self, jids: &[&str]) -> BrokerResult<Vec<bool>> {
        let _ = jids;
        unsupported("job cancellation")
    }

    /// Pushes `req.payload` and, in the same atomic step, removes the job last pushed under
    /// `req.key` if it is still waiting (in its queue or the schedule set, byte for byte as
    /// pushed): the last push wins (debouncing, BullMQ's debounce, graphile-worker's
    /// `job_key` replace). Returns the removed job's jid; `None` when there was none or it had
    /// already been fetched (it runs; so does this one).
    async fn push_replacing(&self, req: ReplacePush<'_>) -> BrokerResult<Option<String>> {
        let _ = req;
        unsupported("replacing pushes")
    }

    /// Keeps job `jid`'s result (`value`, JSON text) for `keep`, replacing an earlier one.
    async fn result_put(&self, jid: &str, value: &str, keep: Duration) -> BrokerResult<()> {
        let _ = (jid, value, keep);
        unsupported("job results")
    }

    /// Job `jid`'s kept result, if one was kept and has not expired.
    async fn result_get(&self, jid: &str) -> BrokerResult<Option<String>> {
        let _ = jid;
        unsupported("job results")
    }

    /// Creates batch `batch` with [`BUILDING`](super::BUILDING) and its waiting steps as
    /// pending members, and (in the same step) adds `child:<bid>` to its parent's pending
    /// members. Fails with [`BrokerError::BatchClosed`](crate::BrokerError::BatchClosed) when the parent does not
    /// exist or has completed. Creating a batch that exists already changes nothing.
    async fn batch_create(&self, batch: &NewBatch<'_>) -> BrokerResult<()> {
        let _ = batch;
        unsupported("batches")
    }

    /// Adds jobs to batch `bid` and stores them, in one atomic step: `jids[i]` is the jid of
    /// the i-th job of `now` followed by `later`. The jobs become pending members before any
    /// of them can run, so a member can never finish before it counts. Fails with
    /// [`BrokerError::BatchClosed`](crate::BrokerError::BatchClosed) (nothing stored) when the batch does not
    /// exist or has completed.
    async fn batch_add(
        &self,
        bid: &str,
        jids: &[&str],
        now: &[Enqueue],
        later: &[ScheduledJob],
    ) -> BrokerResult<()> {
        let _ = (bid, jids, now, later);
        unsupported("batches")
    }

    /// Records one member's outcome and, in the same atomic step, everything it causes: the
    /// callbacks it enqueues, the workflow steps it pushes or cancels, and the same for the
    /// ancestors it completes (see [`crate::broker::batch`]). A member that is not pending is
    /// left alone, so a repeated record changes nothing. A batch that is gone (expired) is
    /// ignored.
    async fn batch_record(&self, record: BatchRecord<'_>) -> BrokerResult<BatchFired> {
        let _ = record;
        unsupported("batches")
    }

    /// Records many outcomes, in order, each as [`Coordination::batch_record`] would (each one
    /// atomic step; a backend may apply them all in one). Returns what each caused, in order.
    /// Servers record the outcomes of many attempts this way, in one round trip.
    async fn batch_record_many(
        &self,
        records: &[BatchRecord<'_>],
    ) -> BrokerResult<Vec<BatchFired>> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            out.push(self.batch_record(*r).await?);
        }
        Ok(out)
    }

    /// Batch `bid`'s state, if it exists.
    async fn batch_status(&self, bid: &str) -> BrokerResult<Option<BatchStatus>> {
        let _ = bid;
        unsupported("batches")
    }

    /// Batches, newest first: `limit` of them from `offset`, and how many there are.
    async fn batch_list(
        &self,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<(Vec<BatchStatus>, usize)> {
        let _ = (offset, limit);
        unsupported("batches")
    }

    /// Batch `bid`'s members in `state`, sorted, `limit` from `offset` ([`BUILDING`](super::BUILDING)
    /// is not listed).
    async fn batch_members(
        &self,
        bid: &str,
        state: MemberState,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<Vec<String>> {
        let _ = (bid, state, offset, limit);
        unsupported("batches")
    }
}

/// Whether the job `raw` has id `jid` (a payload that does not parse has none).
pub fn has_jid(raw: &str, jid: &str) -> bool {
    raw.contains(jid)
        && serde_json::from_str::<serde_json::Value>(raw)
            .ok()
            .and_then(|v| v.get("jid")?.as_str().map(|j| j == jid))
            .unwrap_or(false)
}

/// Whether a Busy-page work entry (`{"queue", "payload": "<raw job>", "run_at"}`; `payload` may
/// also be an object, as Sidekiq 8 writes it) is job `jid`.
pub fn work_has_jid(work: &str, jid: &str) -> bool {
    if !work.contains(jid) {
        return false;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(work) else {
        return false;
    };
    match v.get("payload") {
        Some(serde_json::Value::String(raw)) => has_jid(raw, jid),
        Some(p) => p.get("jid").and_then(|j| j.as_str()) == Some(jid),
        None => false,
    }
}
