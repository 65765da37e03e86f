//! The hot path: pushing jobs, fetching them into flight, and completing them.

use crate::WireProfile;
use crate::error::BrokerResult;
use async_trait::async_trait;
use std::time::Duration;

/// A job to push onto its queue now.
#[derive(Debug, Clone)]
pub struct Enqueue {
    /// Queue name without the `queue:` prefix.
    pub queue: String,
    /// The payload JSON, with `enqueued_at` already set.
    pub payload: String,
}

/// A job to keep in the scheduled set (Sidekiq's `schedule` key) until `at`.
#[derive(Debug, Clone)]
pub struct ScheduledJob {
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

/// A job taken from a queue and held in flight until it is completed or released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The queue it came from.
    pub queue: String,
    /// The exact string that was on the queue.
    pub raw: String,
    /// Backend-private reference to where the in-flight copy is held (Redis: the in-flight
    /// list's key; SQLite: the row and its owner).
    pub location: String,
    /// This attempt's fencing token: strictly increasing across every fetch on the backend, so
    /// a job recovered from a stalled worker and fetched again carries a larger token than the
    /// stalled attempt. Jobs pass it to the resources they write (`JobContext::fencing_token`).
    /// 0 for an in-flight entry written before tokens were (an older version).
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

/// Where a failed, snoozed or dead in-flight job goes: one variant per sorted set.
#[derive(Debug, Clone)]
pub enum Settle {
    /// Into the retry set, due at `at`.
    Retry {
        /// The rewritten payload (error fields, counts).
        payload: String,
        /// Due time, float epoch seconds.
        at: f64,
    },
    /// Into the scheduled set, due at `at` (a snooze).
    Scheduled {
        /// The payload to store.
        payload: String,
        /// Due time, float epoch seconds.
        at: f64,
    },
    /// Into the dead set, trimmed to `limits`.
    Dead {
        /// The payload with its error fields.
        payload: String,
        /// Time of death, float epoch seconds (the score).
        now: f64,
        /// Size and age bounds to trim to.
        limits: DeadLimits,
    },
}

/// How one in-flight job ends, in a [`JobQueue::complete_many`] batch.
#[derive(Debug, Clone, Copy)]
pub enum Completion<'a> {
    /// It finished: remove it from flight.
    Ack(&'a Fetched),
    /// Remove it from flight and store it in the set `Settle` names, in one atomic step.
    Settle(&'a Fetched, &'a Settle),
}

impl Completion<'_> {
    /// The in-flight job this completes.
    pub fn job(&self) -> &Fetched {
        match self {
            Completion::Ack(job) | Completion::Settle(job, _) => job,
        }
    }
}

/// The hot path of a backend.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Pushes jobs onto their queues (registering the queue names).
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()>;

    /// Stores jobs in the scheduled set until they are due.
    async fn push_scheduled(&self, jobs: &[ScheduledJob]) -> BrokerResult<()>;

    /// Moves up to `max` jobs from the queues into the process's in-flight store, trying queues
    /// in the given order, and waits up to `wait` when all are empty.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled fetch may have moved jobs in flight; they stay in the
    /// in-flight store and are returned to their queues by
    /// [`crate::broker::Fleet::requeue_in_flight`] or orphan recovery.
    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>>;

    /// Completes a batch of in-flight jobs in one round trip (a pipeline, a transaction): each
    /// ack removes its job from flight, each settle moves its job to a set in one atomic step.
    /// Returns, in order, whether each job was still held: a job whose in-flight copy was lost
    /// to recovery is `false`, and nothing is stored for it. A batch is not all-or-nothing:
    /// after an error some completions may have been applied, and retrying them returns
    /// `false` for those.
    async fn complete_many(&self, batch: &[Completion<'_>]) -> BrokerResult<Vec<bool>>;

    /// Completes one job ([`JobQueue::complete_many`] with one ack). Servers batch their
    /// completions instead; this is for tools and tests.
    async fn ack(&self, job: &Fetched) -> BrokerResult<bool> {
        Ok(self
            .complete_many(&[Completion::Ack(job)])
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// Settles one job ([`JobQueue::complete_many`] with one settle).
    async fn settle(&self, job: &Fetched, to: &Settle) -> BrokerResult<bool> {
        Ok(self
            .complete_many(&[Completion::Settle(job, to)])
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// Puts one in-flight job back at the consuming end of its queue, unchanged, if it is still
    /// held. Returns false when it was not.
    async fn release(&self, job: &Fetched) -> BrokerResult<bool>;

    /// The backend's clock, float epoch seconds (Redis: `TIME`; SQLite and memory: the one
    /// machine's clock). Servers promote due jobs by it, so a worker with a skewed clock
    /// neither runs scheduled jobs early nor holds them back.
    async fn now(&self) -> BrokerResult<f64>;

    /// Moves due jobs from the retry and scheduled sets to their queues, stamping
    /// `enqueued_at`. Returns how many moved.
    async fn promote_due(&self, now: f64, profile: WireProfile) -> BrokerResult<usize>;
}
