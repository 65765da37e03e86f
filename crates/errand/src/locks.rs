//! Concurrency control on the job backend, for jobs and for any other code: a distributed
//! [`Mutex`] with fencing tokens, and [`Limiter`]s (concurrent, bucket, sliding window), each
//! per key.
//!
//! # Why a lock needs a fencing token
//! A lock with a time-to-live is not enough on its own to protect a resource. The holder can
//! be paused for longer than the TTL — a long GC-like stall, a `SIGSTOP`, a VM migration, a
//! network partition, a clock jump — and then carry on, believing it still holds the lock,
//! while the lock expired and another worker took it. Both now write. Renewing the lease in
//! the background narrows the window but cannot close it: the pause can strike between the
//! last check and the write.
//!
//! The fix is to make the resource check. Every acquisition of a [`Mutex`] hands out a
//! **fencing token**, strictly increasing per lock name (kept by the backend, on its own
//! clock). Send the token with every write to the protected resource, and have the resource
//! refuse a write whose token is older than the newest it has seen:
//!
//! ```sql
//! -- the resource remembers the newest token per order, and rejects older ones
//! UPDATE orders SET status = 'charged', fence = :token
//!  WHERE id = :order_id AND fence < :token;   -- 0 rows: a newer holder got there first
//! ```
//!
//! A stalled holder that wakes up then has its write rejected instead of corrupting state.
//! Within a job, also stop work when [`MutexGuard::is_lost`] turns true.

use crate::{JobContext, JobError};
use errand_core::BrokerError;
use errand_core::broker::{
    Broker, PermitGrant, PermitRenewal, PermitRequest, RateKind, RateRequest,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A lease held in the backend: renewed in the background, released on drop.
struct Held {
    broker: Arc<dyn Broker>,
    key: String,
    holder: String,
    lost: Arc<Lost>,
    renewal: Option<JoinHandle<()>>,
    released: bool,
}

/// Set once when a lease is lost; waiters are woken.
#[derive(Default)]
struct Lost {
    flag: AtomicBool,
    notify: Notify,
}

impl Lost {
    fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

impl Held {
    fn start(broker: Arc<dyn Broker>, key: String, holder: String, ttl: Duration) -> Self {
        let lost = Arc::new(Lost::default());
        let renewal = tokio::spawn(renew(
            broker.clone(),
            key.clone(),
            holder.clone(),
            ttl,
            lost.clone(),
        ));
        Self {
            broker,
            key,
            holder,
            lost,
            renewal: Some(renewal),
            released: false,
        }
    }

    async fn release(mut self) -> Result<bool, BrokerError> {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        self.released = true;
        self.broker.permit_release(&self.key, &self.holder).await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        if self.released {
            return;
        }
        // Release in the background; without a runtime the lease simply expires.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (broker, key, holder) = (
                self.broker.clone(),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.holder),
            );
            rt.spawn(async move {
                if let Err(e) = broker.permit_release(&key, &holder).await {
                    tracing::warn!(key, error = %e, "releasing a lease failed; it expires by itself");
                }
            });
        }
    }
}

/// Extends the lease every third of its ttl; marks it lost when the backend says it is gone,
/// or when renewals have failed for longer than the ttl.
async fn renew(
    broker: Arc<dyn Broker>,
    key: String,
    holder: String,
    ttl: Duration,
    lost: Arc<Lost>,
) {
    let period = (ttl / 3).max(Duration::from_millis(10));
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(period).await;
        let renewal = PermitRenewal {
            key: &key,
            holder: &holder,
            ttl,
        };
        match broker.permit_renew(renewal).await {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => {
                tracing::warn!(key, "lease lost: another holder may have it now");
                lost.set();
                return;
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "renewing a lease failed");
                if last_ok.elapsed() >= ttl {
                    lost.set();
                    return;
                }
            }
        }
    }
}

/// A distributed mutex: at most one holder per name across every process sharing the
/// backend, with a fencing token per acquisition. See the [module docs](self) for why the
/// token matters.
///
/// The lease lasts `ttl` and is renewed in the background while the guard lives, so `ttl`
/// bounds how long a crashed holder blocks others, not how long the work may take.
#[derive(Clone)]
pub struct Mutex {
    broker: Arc<dyn Broker>,
    key: String,
    ttl: Duration,
}

impl std::fmt::Debug for Mutex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Mutex {
    /// The mutex `name` on `broker` (e.g. `client.broker().clone()`), with leases of `ttl`.
    pub fn new(broker: Arc<dyn Broker>, name: &str, ttl: Duration) -> Self {
        Self {
            broker,
            key: format!("mutex:{name}"),
            ttl,
        }
    }

    /// Takes the lock if it is free.
    ///
    /// # Errors
    /// A backend failure.
    pub async fn try_lock(&self) -> Result<Option<MutexGuard>, BrokerError> {
        let holder = errand_core::id::new_jid();
        let req = PermitRequest {
            key: &self.key,
            holder: &holder,
            max: 1,
            ttl: self.ttl,
            fence: true,
        };
        Ok(match self.broker.permit_acquire(req).await? {
            PermitGrant::Granted { token } => Some(MutexGuard {
                token,
                held: Held::start(self.broker.clone(), self.key.clone(), holder, self.ttl),
            }),
            PermitGrant::Full { .. } => None,
        })
    }

    /// Takes the lock, waiting up to `wait` for it to come free (polling with backoff from
    /// 10 to 250 ms). `None` when it did not.
    ///
    /// # Errors
    /// A backend failure.
    pub async fn lock(&self, wait: Duration) -> Result<Option<MutexGuard>, BrokerError> {
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(guard) = self.try_lock().await? {
                return Ok(Some(guard));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// The processes' holders of this lock now (holder id, lease end in epoch seconds).
    ///
    /// # Errors
    /// A backend failure.
    pub async fn holders(&self) -> Result<Vec<(String, f64)>, BrokerError> {
        self.broker.permit_holders(&self.key).await
    }
}

/// A held [`Mutex`]: renews its lease in the background and releases it when dropped (or
/// explicitly with [`MutexGuard::release`]).
pub struct MutexGuard {
    token: u64,
    held: Held,
}

impl std::fmt::Debug for MutexGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutexGuard")
            .field("key", &self.held.key)
            .field("token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl MutexGuard {
    /// This acquisition's fencing token: larger than every token handed out for this lock
    /// before. Send it with every write to the protected resource.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// True once the lease was lost (a renewal found another holder, or renewals failed for
    /// longer than the ttl): stop working on the protected resource.
    pub fn is_lost(&self) -> bool {
        self.held.lost.flag.load(Ordering::SeqCst)
    }

    /// Completes when the lease is lost; `select!` on it to abandon work at once.
    pub async fn lost(&self) {
        loop {
            let notified = self.held.lost.notify.notified();
            if self.is_lost() {
                return;
            }
            notified.await;
        }
    }

    /// Stops renewing without releasing: the lease runs out after its ttl, as if this process
    /// had stalled. For tests of what the protected resource does with a stale token.
    pub fn stop_renewing(&mut self) {
        if let Some(r) = self.held.renewal.take() {
            r.abort();
        }
    }

    /// Releases the lock now. Returns false when the lease had already been lost.
    ///
    /// # Errors
    /// A backend failure (the lease then expires by itself).
    pub async fn release(self) -> Result<bool, BrokerError> {
        self.held.release().await
    }
}

/// What a [`Limiter`] counts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Concurrent {
        max: u32,
        lease: Duration,
    },
    Rate {
        kind: RateKind,
        limit: u32,
        interval: Duration,
    },
}

/// A limit per key (a customer, an API host) shared by every process on the backend:
/// - [`Limiter::concurrent`]: at most N holders at once; a holder that dies frees its slot
///   when its lease runs out;
/// - [`Limiter::bucket`]: at most N per interval (intervals aligned to the clock);
/// - [`Limiter::window`]: at most N in any interval-long span (sliding window).
///
/// In a job, [`JobContext::limit`] turns "over the limit" into a snooze: the job runs again
/// later and no failure is counted. Each refusal adds one to the limiter's counter
/// (`Broker::limit_hits`), so dashboards can show how often a limit bites.
#[derive(Clone)]
pub struct Limiter {
    broker: Arc<dyn Broker>,
    name: String,
    kind: Kind,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

/// The answer of [`Limiter::acquire`].
#[derive(Debug)]
pub enum Admission {
    /// Under the limit: go ahead (and keep the permit while working, for a concurrent limit).
    Admitted(Permit),
    /// Over the limit; for rate limits, how long until a use would be let through (a
    /// concurrent limit cannot know and says `None`).
    Over {
        /// The wait, when known.
        retry_after: Option<Duration>,
    },
}

/// Permission from a [`Limiter`]. For a concurrent limit it holds a slot (renewed in the
/// background) until dropped; for rate limits it holds nothing.
pub struct Permit {
    held: Option<Held>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("slot", &self.held.as_ref().map(|h| h.key.as_str()))
            .finish()
    }
}

impl Permit {
    /// Gives the slot back now (a concurrent limit; nothing for rate limits).
    ///
    /// # Errors
    /// A backend failure (the slot then frees when its lease runs out).
    pub async fn release(self) -> Result<(), BrokerError> {
        if let Some(h) = self.held {
            h.release().await?;
        }
        Ok(())
    }
}

impl Limiter {
    /// At most `max` holders per key at once; a holder's slot lasts `lease` unless renewed
    /// (renewed in the background while the permit lives), so a dead holder frees it.
    pub fn concurrent(broker: Arc<dyn Broker>, name: &str, max: u32, lease: Duration) -> Self {
        Self {
            broker,
            name: name.to_string(),
            kind: Kind::Concurrent { max, lease },
        }
    }

    /// At most `limit` uses per key in each `interval` (aligned to the clock: a burst at the
    /// end of one interval and the start of the next can reach twice the limit).
    pub fn bucket(broker: Arc<dyn Broker>, name: &str, limit: u32, interval: Duration) -> Self {
        Self {
            broker,
            name: name.to_string(),
            kind: Kind::Rate {
                kind: RateKind::Bucket,
                limit,
                interval,
            },
        }
    }

    /// At most `limit` uses per key in any `interval`-long span.
    pub fn window(broker: Arc<dyn Broker>, name: &str, limit: u32, interval: Duration) -> Self {
        Self {
            broker,
            name: name.to_string(),
            kind: Kind::Rate {
                kind: RateKind::Window,
                limit,
                interval,
            },
        }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn slot_key(&self, key: &str) -> String {
        format!("limit:{}:{key}", self.name)
    }

    /// Asks for one use under `key`. A refusal is counted in the limiter's hit counter.
    ///
    /// # Errors
    /// A backend failure.
    pub async fn acquire(&self, key: &str) -> Result<Admission, BrokerError> {
        let admission = self.try_acquire(key).await?;
        if matches!(admission, Admission::Over { .. }) {
            self.broker.refusal_add(&self.name).await?;
        }
        Ok(admission)
    }

    /// One attempt, without counting a refusal.
    async fn try_acquire(&self, key: &str) -> Result<Admission, BrokerError> {
        let slot = self.slot_key(key);
        let admission = match self.kind {
            Kind::Concurrent { max, lease } => {
                let holder = errand_core::id::new_jid();
                let req = PermitRequest {
                    key: &slot,
                    holder: &holder,
                    max,
                    ttl: lease,
                    fence: false,
                };
                match self.broker.permit_acquire(req).await? {
                    PermitGrant::Granted { .. } => Admission::Admitted(Permit {
                        held: Some(Held::start(self.broker.clone(), slot, holder, lease)),
                    }),
                    PermitGrant::Full { .. } => Admission::Over { retry_after: None },
                }
            }
            Kind::Rate {
                kind,
                limit,
                interval,
            } => match self
                .broker
                .rate_take(RateRequest {
                    key: &slot,
                    kind,
                    limit,
                    interval,
                })
                .await?
            {
                None => Admission::Admitted(Permit { held: None }),
                Some(wait) => Admission::Over {
                    retry_after: Some(wait),
                },
            },
        };
        Ok(admission)
    }

    /// Asks for one use under `key`, waiting up to `wait` while over the limit (rate limits
    /// sleep until their window frees; concurrent limits poll with backoff from 10 to
    /// 250 ms). Returns the last refusal when `wait` runs out.
    ///
    /// # Errors
    /// A backend failure.
    pub async fn acquire_wait(&self, key: &str, wait: Duration) -> Result<Admission, BrokerError> {
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        loop {
            let admission = self.try_acquire(key).await?;
            let Admission::Over { retry_after } = &admission else {
                return Ok(admission);
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // One refusal counted per call, however many times it looked.
                self.broker.refusal_add(&self.name).await?;
                return Ok(admission);
            }
            let nap = retry_after.unwrap_or(pause).min(left);
            tokio::time::sleep(nap).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// The current holders of a concurrent limit's `key` (empty for rate limits).
    ///
    /// # Errors
    /// A backend failure.
    pub async fn holders(&self, key: &str) -> Result<Vec<(String, f64)>, BrokerError> {
        match self.kind {
            Kind::Concurrent { .. } => self.broker.permit_holders(&self.slot_key(key)).await,
            Kind::Rate { .. } => Ok(Vec::new()),
        }
    }
}

/// The snooze for a job turned away by a lock or limit: `hint` (when the limit knows when a
/// slot frees) or a backoff doubling with the job's earlier snoozes (1 s, 2 s, 4 s … up to
/// 5 minutes), plus up to 50% jitter so contending jobs spread out.
fn contention_delay(cx: &JobContext, hint: Option<Duration>) -> Duration {
    let base = hint.unwrap_or_else(|| {
        let n = cx.snoozes().min(8);
        Duration::from_secs(1 << n).min(Duration::from_secs(300))
    });
    let jitter = rand::random::<f64>() * 0.5;
    base.mul_f64(1.0 + jitter)
}

impl JobContext {
    /// Takes mutex `name` (leases of `ttl`, renewed while held) for this job, or — when another
    /// holder has it — returns a snooze so the job runs again later without counting a
    /// failure (backing off with each snooze). Use the guard's [`MutexGuard::token`] with the
    /// resource you protect (see [`crate::locks`]).
    ///
    /// # Errors
    /// The snooze when contended; a backend failure (retried).
    pub async fn lock(&self, name: &str, ttl: Duration) -> Result<MutexGuard, JobError> {
        self.lock_wait(name, ttl, Duration::ZERO).await
    }

    /// As [`JobContext::lock`], but first waits up to `wait` for the mutex to come free.
    ///
    /// # Errors
    /// The snooze when still contended after `wait`; a backend failure (retried).
    pub async fn lock_wait(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<MutexGuard, JobError> {
        let mutex = Mutex::new(self.client().broker().clone(), name, ttl);
        match mutex.lock(wait).await.map_err(backend)? {
            Some(guard) => Ok(guard),
            None => {
                let _ = self.client().broker().refusal_add(&mutex.key).await;
                tracing::debug!(jid = self.jid(), name, "mutex held elsewhere; snoozing");
                Err(JobError::snooze(contention_delay(self, None)))
            }
        }
    }

    /// Asks `limiter` for one use under `key`; over the limit, returns a snooze (the limit's
    /// own wait for rate limits, a backoff for concurrent ones) so the job runs again later
    /// without counting a failure. Keep the permit while doing the limited work.
    ///
    /// # Errors
    /// The snooze when over the limit; a backend failure (retried).
    pub async fn limit(&self, limiter: &Limiter, key: &str) -> Result<Permit, JobError> {
        self.limit_wait(limiter, key, Duration::ZERO).await
    }

    /// As [`JobContext::limit`], but first waits up to `wait` for the limit to admit the use.
    ///
    /// # Errors
    /// The snooze when still over the limit after `wait`; a backend failure (retried).
    pub async fn limit_wait(
        &self,
        limiter: &Limiter,
        key: &str,
        wait: Duration,
    ) -> Result<Permit, JobError> {
        match limiter.acquire_wait(key, wait).await.map_err(backend)? {
            Admission::Admitted(permit) => Ok(permit),
            Admission::Over { retry_after } => {
                tracing::debug!(
                    jid = self.jid(),
                    limiter = limiter.name(),
                    key,
                    "over the limit; snoozing"
                );
                Err(JobError::snooze(contention_delay(self, retry_after)))
            }
        }
    }
}

fn backend(e: BrokerError) -> JobError {
    JobError::retry(format!("lock backend: {e}")).with_class("Errand::Backend")
}
