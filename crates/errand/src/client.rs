//! [`Client`]: enqueue jobs now, later, in bulk, or by class name for other languages.

use crate::client_middleware::{self, Accept, ClientMiddleware, Outgoing, PushKind, Store};
use crate::{Error, Job, encode_args};
use async_trait::async_trait;
use errand_core::broker::{Broker, Enqueue, ReplacePush, ScheduledJob, UniquePush, UniquePushed};
use errand_core::{Clock, Payload, PayloadError, WireProfile, activejob};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A new job's payload, written in the key order `Client::push` produces.
#[derive(serde::Serialize)]
struct NewPayload<'a> {
    retry: &'a Value,
    queue: &'a str,
    args: Vec<Value>,
    class: &'a str,
    jid: &'a str,
    created_at: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_queue: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backtrace: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errand_keep_result: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errand_expires_at: Option<f64>,
    enqueued_at: &'a Value,
}

/// Pushes jobs to a backend. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    broker: Arc<dyn Broker>,
    profile: WireProfile,
    max_payload: usize,
    clock: Clock,
    middleware: Arc<[Arc<dyn ClientMiddleware>]>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("profile", &self.profile)
            .field("max_payload", &self.max_payload)
            .field("middleware", &self.middleware.len())
            .finish_non_exhaustive()
    }
}

/// What [`Client::push_debounced`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debounced {
    /// The pushed job's id.
    pub jid: String,
    /// The waiting job it replaced (removed before it ran), if any.
    pub replaced: Option<String>,
}

/// Per-push overrides: queue, time, and extra payload keys.
#[derive(Debug, Clone, Default)]
pub struct Push {
    queue: Option<String>,
    at: Option<f64>,
    delay: Option<Duration>,
    extra: Vec<(String, Value)>,
    jid: Option<String>,
}

impl Push {
    /// The jid this push sets, if it sets one.
    pub(crate) fn jid_override(&self) -> Option<&str> {
        self.jid.as_deref()
    }

    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Push to `queue` instead of the job's default.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Run after `delay` (Sidekiq's `perform_in`).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self.at = None;
        self
    }

    /// Run at `time` (Sidekiq's `perform_at`); a time in the past runs now.
    pub fn at(mut self, time: SystemTime) -> Self {
        self.at = Some(
            time.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        self.delay = None;
        self
    }

    /// Use this job id instead of a random one.
    pub fn jid(mut self, jid: impl Into<String>) -> Self {
        self.jid = Some(jid.into());
        self
    }

    /// Adds a top-level payload key (as Ruby client middleware would).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }
}

/// A job for a class that another process (Ruby, another language) runs.
#[derive(Debug, Clone)]
pub struct RawJob {
    /// The class name.
    pub class: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// The queue. Defaults to `default`.
    pub queue: String,
    /// Sidekiq's `retry` value (`true`, `false` or a count). Defaults to `true`.
    pub retry: Value,
}

impl RawJob {
    /// A raw job for `class` with `args` on the `default` queue, `retry: true`.
    pub fn new(class: impl Into<String>, args: Vec<Value>) -> Self {
        Self {
            class: class.into(),
            args,
            queue: "default".into(),
            retry: Value::Bool(true),
        }
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }
}

impl Client {
    /// A client over `broker` with the default wire profile (Sidekiq 6/7 float timestamps) and
    /// payload limit (1 MiB).
    pub fn new<B: Broker>(broker: B) -> Self {
        Self::from_arc(Arc::new(broker))
    }

    /// A client over a shared broker.
    pub fn from_arc(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            profile: WireProfile::default(),
            max_payload: 1024 * 1024,
            clock: errand_core::system_clock(),
            middleware: default_middleware(),
        }
    }

    /// Adds a client middleware around every push ([`ClientMiddleware`]);
    /// the first added runs outermost. With the feature `spans`, a
    /// `errand::trace::PushSpans` middleware is installed first by default.
    pub fn client_middleware<M: ClientMiddleware>(mut self, m: M) -> Self {
        let mut chain = self.middleware.to_vec();
        chain.push(Arc::new(m));
        self.middleware = chain.into();
        self
    }

    /// Removes every client middleware added so far, the default ones included.
    pub fn clear_client_middleware(mut self) -> Self {
        self.middleware = Arc::new([]);
        self
    }

    /// Reads the time from `clock` (for delays and `enqueued_at`) instead of the wall clock:
    /// a controllable clock in tests. Defaults to the system clock.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The time on this client's clock, float epoch seconds.
    pub fn now(&self) -> f64 {
        (self.clock)()
    }

    /// When `push` says the job should run (`None`: now).
    pub(crate) fn run_at(&self, push: &Push) -> Option<f64> {
        push.at
            .or_else(|| push.delay.map(|d| self.now() + d.as_secs_f64()))
    }

    /// Writes timestamps in `profile`. Defaults to [`WireProfile::V7`].
    pub fn wire_profile(mut self, profile: WireProfile) -> Self {
        self.profile = profile;
        self
    }

    /// Refuses payloads larger than `bytes`. Defaults to 1 MiB.
    pub fn max_payload_size(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The payload size limit in bytes ([`Client::max_payload_size`]); servers bury larger
    /// queue entries without decoding them.
    pub fn payload_limit(&self) -> usize {
        self.max_payload
    }

    /// The backend behind this client.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The wire profile in use.
    pub fn profile(&self) -> WireProfile {
        self.profile
    }

    /// Builds the payload `push` would store, without pushing it.
    ///
    /// # Errors
    /// Arguments that are not JSON-serializable, an empty queue name, or a payload above the
    /// size limit.
    pub fn build<J: Job>(&self, job: &J, push: &Push) -> Result<Payload, Error> {
        let args = encode_args(job)?;
        let opts = J::options();
        let queue = push.queue.as_deref().unwrap_or(&opts.queue);
        let mut p = Payload::new(J::NAME, args, queue, self.profile);
        opts.apply(&mut p);
        p.set("queue", queue);
        if opts.unique_for.is_some() {
            let key = unique_key(J::NAME, queue, p.args(), job.unique_key());
            p.set("unique_key", key);
        }
        if opts.debounce.is_some() {
            let key = unique_key(J::NAME, queue, p.args(), job.unique_key());
            p.set(
                crate::job::DEBOUNCE_KEY,
                key.replacen("unique:", "debounce:", 1),
            );
        }
        if let Some(period) = opts.expires_in {
            let due = push
                .at
                .or_else(|| push.delay.map(|d| self.now() + d.as_secs_f64()))
                .unwrap_or_else(|| self.now());
            p.set(crate::job::EXPIRES_AT, due + period.as_secs_f64());
        }
        self.finish(p, push)
    }

    fn finish(&self, mut p: Payload, push: &Push) -> Result<Payload, Error> {
        if p.queue().is_empty() {
            return Err(PayloadError::EmptyQueue.into());
        }
        if let Some(jid) = &push.jid {
            p.set("jid", jid.as_str());
        }
        for (k, v) in &push.extra {
            p.set(k, v.clone());
        }
        Ok(p)
    }

    pub(crate) fn check_size(&self, json: String) -> Result<String, Error> {
        if json.len() > self.max_payload {
            return Err(PayloadError::TooLarge {
                size: json.len(),
                limit: self.max_payload,
            }
            .into());
        }
        Ok(json)
    }

    /// Cancels job `jid`. A job waiting in a queue, scheduled or waiting for a retry is removed
    /// and will not run; a running job is told at its process's next heartbeat (5 s by
    /// default) through [`JobContext::cancelled`](crate::JobContext::cancelled), and when it
    /// stops with an error it ends as cancelled (not retried, counted). The answer says where
    /// the job was; [`Cancelled::NotFound`] means it already finished (or died, or never
    /// existed) — or started in the last moments before its process's next heartbeat, in
    /// which case that heartbeat still cancels it: the cancellation is kept for a day
    /// ([`CANCEL_MARK_TTL`](errand_core::broker::CANCEL_MARK_TTL)). A dead job is left in the
    /// dead set.
    ///
    /// # Errors
    /// A backend failure, or a backend without cancellation ([`BrokerError::Unsupported`]).
    ///
    /// [`Cancelled::NotFound`]: errand_core::broker::Cancelled::NotFound
    /// [`BrokerError::Unsupported`]: errand_core::BrokerError::Unsupported
    pub async fn cancel(&self, jid: &str) -> Result<errand_core::broker::Cancelled, Error> {
        Ok(self
            .broker
            .cancel_job(jid, errand_core::broker::CANCEL_MARK_TTL)
            .await?)
    }

    /// The result job `jid` kept ([`JobOptions::keep_result`](crate::JobOptions::keep_result),
    /// [`JobContext::set_result`](crate::JobContext::set_result)), decoded as `T`: `None` while
    /// the job has not succeeded, when it set none, or after the result expired.
    ///
    /// # Errors
    /// A backend failure, or a result that does not decode as `T` ([`Error::Result`]).
    pub async fn result<T: serde::de::DeserializeOwned>(
        &self,
        jid: &str,
    ) -> Result<Option<T>, Error> {
        match self.broker.result_get(jid).await? {
            Some(json) => Ok(Some(serde_json::from_str(&json).map_err(Error::Result)?)),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for job `jid`'s result ([`Client::result`]), asking every 10 ms at
    /// first and then less often (up to every 500 ms). `None` when none came in time.
    ///
    /// # Errors
    /// As [`Client::result`].
    pub async fn wait<T: serde::de::DeserializeOwned>(
        &self,
        jid: &str,
        timeout: Duration,
    ) -> Result<Option<T>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(found) = self.result(jid).await? {
                return Ok(Some(found));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Batch `bid`'s state ([`crate::batch`]): its counts, times and callbacks; `None` when it
    /// does not exist or expired.
    ///
    /// # Errors
    /// A backend failure, or a backend without batches.
    pub async fn batch_status(
        &self,
        bid: &str,
    ) -> Result<Option<errand_core::broker::BatchStatus>, Error> {
        Ok(self.broker.batch_status(bid).await?)
    }

    /// Stores a built payload: on its queue now, or in the schedule set when `at` is in the
    /// future. Returns the job id.
    ///
    /// # Errors
    /// A payload above the size limit, or a backend failure.
    pub async fn push_payload(&self, p: Payload, at: Option<f64>) -> Result<String, Error> {
        let mut out = Outgoing::new(vec![p], at, PushKind::One);
        self.send(&Plain, &mut out).await?;
        Ok(out.jobs[0].jid().to_string())
    }

    /// Runs `out` through the client middleware into `store`; straight into the store when
    /// none has work ([`ClientMiddleware::active`]).
    async fn send(&self, store: &dyn Store, out: &mut Outgoing) -> Result<(), Error> {
        if !client_middleware::any_active(&self.middleware) {
            return store.store(self, out).await;
        }
        client_middleware::send(&self.middleware, self, store, out).await
    }

    /// Runs the client middleware over jobs another step stores (a batch's, a workflow's):
    /// their payloads as the chain left them. [`Error::NotPushed`] when a middleware stopped
    /// the push.
    pub(crate) async fn accept(
        &self,
        jobs: Vec<Payload>,
        at: Option<f64>,
        kind: PushKind,
    ) -> Result<Vec<Payload>, Error> {
        let mut out = Outgoing::new(jobs, at, kind);
        self.send(&Accept, &mut out).await?;
        Ok(out.jobs)
    }

    /// [`Client::accept`] for a push that cannot wait (inside a SQLite transaction): every
    /// middleware must finish without waiting on I/O, or the push is refused.
    #[cfg(feature = "sqlite")]
    fn accept_now(&self, jobs: Vec<Payload>, at: Option<f64>) -> Result<Vec<Payload>, Error> {
        use futures::FutureExt;
        self.accept(jobs, at, PushKind::Transaction)
            .now_or_never()
            .unwrap_or_else(|| {
                Err(Error::Config(
                    "a client middleware waited during push_tx: the SQLite transaction's push \
                     cannot wait; push after the commit, or use a middleware that does no I/O"
                        .into(),
                ))
            })
    }

    /// What a push of `p` stores: its queue, its time when that is still ahead (the schedule
    /// set), and the payload as written (stamped `enqueued_at` when it goes straight to the
    /// queue), checked against the size limit.
    pub(crate) fn stored(
        &self,
        mut p: Payload,
        at: Option<f64>,
    ) -> Result<(String, Option<f64>, String), Error> {
        self.stored_mut(&mut p, at)
    }

    /// [`Client::stored`], stamping `p` in place.
    pub(crate) fn stored_mut(
        &self,
        p: &mut Payload,
        at: Option<f64>,
    ) -> Result<(String, Option<f64>, String), Error> {
        let now = self.now();
        let at = at.filter(|t| *t > now);
        if at.is_none() {
            p.stamp_enqueued(self.profile, now);
        }
        let queue = p.queue().to_string();
        let payload = self.check_size(p.to_json())?;
        Ok((queue, at, payload))
    }

    /// Enqueues `job` on its queue. Returns the job id.
    ///
    /// # Errors
    /// Arguments that are not JSON-serializable, a payload above the size limit, or a backend
    /// failure (never swallowed).
    pub async fn push<J: Job>(&self, job: J) -> Result<String, Error> {
        self.push_with(job, Push::new()).await
    }

    /// Enqueues `job` with per-push overrides.
    ///
    /// # Errors
    /// As for [`Client::push`].
    pub async fn push_with<J: Job>(&self, job: J, push: Push) -> Result<String, Error> {
        let opts = J::options();
        if let Some(window) = opts.debounce {
            return Ok(self.replace_waiting(job, push, window).await?.jid);
        }
        let p = self.build(&job, &push)?;
        let at = self.run_at(&push);
        match opts.unique_for {
            Some(period) => self.push_unique(p, at, period).await,
            None => self.push_payload(p, at).await,
        }
    }

    /// Pushes a job whose options debounce it ([`JobOptions::debounce`](crate::JobOptions::debounce))
    /// and says which waiting job it replaced, if any. A job without `debounce` is pushed as
    /// by [`Client::push_with`] (nothing replaced).
    ///
    /// # Errors
    /// As for [`Client::push`]; a job that is both `unique_for` and `debounce` is refused
    /// ([`Error::Config`]): one keeps the first push, the other the last.
    pub async fn push_debounced<J: Job>(&self, job: J, push: Push) -> Result<Debounced, Error> {
        match J::options().debounce {
            Some(window) => self.replace_waiting(job, push, window).await,
            None => Ok(Debounced {
                jid: self.push_with(job, push).await?,
                replaced: None,
            }),
        }
    }

    /// Pushes `job` to run after `window` (or at the push's time), replacing the waiting job
    /// of its debounce key, in one step.
    async fn replace_waiting<J: Job>(
        &self,
        job: J,
        push: Push,
        window: Duration,
    ) -> Result<Debounced, Error> {
        if J::options().unique_for.is_some() {
            return Err(Error::Config(format!(
                "job {} is both unique_for (keep the first push) and debounce (keep the last): \
                 choose one",
                J::NAME
            )));
        }
        let p = self.build(&job, &push)?;
        let now = self.now();
        let at = self
            .run_at(&push)
            .or_else(|| (!window.is_zero()).then_some(now + window.as_secs_f64()));
        let store = Debounce {
            now,
            replaced: std::sync::Mutex::new(None),
        };
        let mut out = Outgoing::new(vec![p], at, PushKind::Debounced);
        self.send(&store, &mut out).await?;
        let replaced = store.replaced.lock().ok().and_then(|mut r| r.take());
        Ok(Debounced {
            jid: out.jobs[0].jid().to_string(),
            replaced,
        })
    }

    /// Takes the unique lock of payload `p` (its `unique_key`) for `period` (plus the delay
    /// of a scheduled push) and pushes it, in one step; a held lock is a [`Error::Duplicate`].
    async fn push_unique(
        &self,
        p: Payload,
        at: Option<f64>,
        period: Duration,
    ) -> Result<String, Error> {
        let mut out = Outgoing::new(vec![p], at, PushKind::Unique);
        self.send(&Unique { period }, &mut out).await?;
        Ok(out.jobs[0].jid().to_string())
    }

    /// Pushes `job` inside `tx`, the application's own transaction on a connection to the
    /// SQLite backend's file (open it with `errand::sqlite::rusqlite`, the version the backend
    /// uses): the job exists if and only if `tx` commits, together with the business rows
    /// written in it — no dual write, no outbox. Servers see it once it commits (within their
    /// 5 ms poll of the file). Returns the job id.
    ///
    /// ```rust,no_run
    /// # use errand::{Client, Job, JobContext, JobResult};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct SendReceipt { order_id: i64 }
    /// # impl Job for SendReceipt { const NAME: &'static str = "SendReceipt";
    /// #   async fn perform(self, _: &JobContext) -> JobResult { Ok(()) } }
    /// # fn demo(client: &Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut db = errand::sqlite::rusqlite::Connection::open("app.sqlite")?;
    /// let tx = db.transaction()?;
    /// tx.execute("INSERT INTO orders(id, total) VALUES (?1, ?2)", (7, 4500))?;
    /// client.push_tx(&tx, SendReceipt { order_id: 7 })?;
    /// tx.commit()?; // the order and its job, or neither
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As for [`Client::push`]; a unique or debounced job is refused ([`Error::Config`]: those
    /// take their key through the backend in one step of their own), and so is a file that
    /// was never opened with `SqliteBroker::open`.
    #[cfg(feature = "sqlite")]
    pub fn push_tx<J: Job>(
        &self,
        tx: &errand_sqlite::rusqlite::Transaction<'_>,
        job: J,
    ) -> Result<String, Error> {
        self.push_tx_with(tx, job, Push::new())
    }

    /// [`Client::push_tx`] with per-push overrides (queue, delay, time, extra keys).
    ///
    /// # Errors
    /// As for [`Client::push_tx`].
    #[cfg(feature = "sqlite")]
    pub fn push_tx_with<J: Job>(
        &self,
        tx: &errand_sqlite::rusqlite::Transaction<'_>,
        job: J,
        push: Push,
    ) -> Result<String, Error> {
        let at = self.run_at(&push);
        let jobs = self.accept_now(vec![self.for_tx(&job, &push)?], at)?;
        let (mut jids, jobs) = self.rows_for_tx(jobs, at)?;
        jobs.write_sqlite(tx)?;
        Ok(jids.remove(0))
    }

    /// [`Client::push_bulk`] inside `tx` (see [`Client::push_tx`]): every job exists if and
    /// only if `tx` commits. Returns the job ids in order.
    ///
    /// # Errors
    /// As for [`Client::push_tx`]; nothing is written when any job is refused.
    #[cfg(feature = "sqlite")]
    pub fn push_bulk_tx<J, I>(
        &self,
        tx: &errand_sqlite::rusqlite::Transaction<'_>,
        jobs: I,
    ) -> Result<Vec<String>, Error>
    where
        J: Job,
        I: IntoIterator<Item = J>,
    {
        let jobs = self.accept_now(self.all_for_tx(jobs)?, None)?;
        let (jids, out) = self.rows_for_tx(jobs, None)?;
        out.write_sqlite(tx)?;
        Ok(jids)
    }

    /// Builds every job of `jobs` for an application transaction ([`Client::for_tx`]).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    fn all_for_tx<J, I>(&self, jobs: I) -> Result<Vec<Payload>, Error>
    where
        J: Job,
        I: IntoIterator<Item = J>,
    {
        let push = Push::new();
        jobs.into_iter()
            .map(|job| self.for_tx(&job, &push))
            .collect()
    }

    /// Builds `job` for an application transaction. Unique and debounced jobs are refused:
    /// their key is taken through the backend in one step of its own, which an application
    /// transaction cannot join.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    fn for_tx<J: Job>(&self, job: &J, push: &Push) -> Result<Payload, Error> {
        let opts = J::options();
        if opts.unique_for.is_some() || opts.debounce.is_some() {
            return Err(Error::Config(format!(
                "job {} is unique or debounced: push it with Client::push (its key is taken \
                 through the backend, not inside an application transaction)",
                J::NAME
            )));
        }
        self.build(job, push)
    }

    /// The rows to write for `jobs` (to run at `at`, or now): their ids in order, and the
    /// jobs to run now and later.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    fn rows_for_tx(
        &self,
        jobs: Vec<Payload>,
        at: Option<f64>,
    ) -> Result<(Vec<String>, TxJobs), Error> {
        let mut into = TxJobs::default();
        let mut jids = Vec::with_capacity(jobs.len());
        for p in jobs {
            jids.push(p.jid().to_string());
            let (queue, at, payload) = self.stored(p, at)?;
            match at {
                Some(at) => into.later.push(ScheduledJob { at, payload }),
                None => into.now.push(Enqueue { queue, payload }),
            }
        }
        Ok((jids, into))
    }

    /// Pushes `job` inside `tx`, the application's own transaction on the database of `pg`
    /// (open it with `errand::postgres::tokio_postgres`, the version the backend uses): the job
    /// exists if and only if `tx` commits, together with the business rows written in it. Idle
    /// workers are woken by the NOTIFY delivered at the commit. Returns the job id.
    ///
    /// ```rust,no_run
    /// # use errand::{Client, Job, JobContext, JobResult};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct SendReceipt { order_id: i64 }
    /// # impl Job for SendReceipt { const NAME: &'static str = "SendReceipt";
    /// #   async fn perform(self, _: &JobContext) -> JobResult { Ok(()) } }
    /// # async fn demo(client: &Client, pg: &errand::postgres::PostgresBroker,
    /// #   db: &mut errand::postgres::tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let tx = db.transaction().await?;
    /// tx.execute("INSERT INTO orders(id, total) VALUES ($1, $2)", &[&7_i64, &4500_i64]).await?;
    /// client.push_pg_tx(pg, &tx, SendReceipt { order_id: 7 }).await?;
    /// tx.commit().await?; // the order and its job, or neither
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As for [`Client::push`]; a unique or debounced job is refused ([`Error::Config`]).
    #[cfg(feature = "postgres")]
    pub async fn push_pg_tx<J: Job>(
        &self,
        pg: &errand_postgres::PostgresBroker,
        tx: &errand_postgres::tokio_postgres::Transaction<'_>,
        job: J,
    ) -> Result<String, Error> {
        self.push_pg_tx_with(pg, tx, job, Push::new()).await
    }

    /// [`Client::push_pg_tx`] with per-push overrides (queue, delay, time, extra keys).
    ///
    /// # Errors
    /// As for [`Client::push_pg_tx`].
    #[cfg(feature = "postgres")]
    pub async fn push_pg_tx_with<J: Job>(
        &self,
        pg: &errand_postgres::PostgresBroker,
        tx: &errand_postgres::tokio_postgres::Transaction<'_>,
        job: J,
        push: Push,
    ) -> Result<String, Error> {
        let at = self.run_at(&push);
        let jobs = self
            .accept(vec![self.for_tx(&job, &push)?], at, PushKind::Transaction)
            .await?;
        let (mut jids, jobs) = self.rows_for_tx(jobs, at)?;
        pg.push_in(tx, &jobs.now, &jobs.later).await?;
        Ok(jids.remove(0))
    }

    /// [`Client::push_bulk`] inside `tx` (see [`Client::push_pg_tx`]): every job exists if
    /// and only if `tx` commits; the rows go in with one statement whatever their number.
    /// Returns the job ids in order.
    ///
    /// # Errors
    /// As for [`Client::push_pg_tx`]; nothing is written when any job is refused.
    #[cfg(feature = "postgres")]
    pub async fn push_bulk_pg_tx<J, I>(
        &self,
        pg: &errand_postgres::PostgresBroker,
        tx: &errand_postgres::tokio_postgres::Transaction<'_>,
        jobs: I,
    ) -> Result<Vec<String>, Error>
    where
        J: Job,
        I: IntoIterator<Item = J>,
    {
        let jobs = self
            .accept(self.all_for_tx(jobs)?, None, PushKind::Transaction)
            .await?;
        let (jids, out) = self.rows_for_tx(jobs, None)?;
        pg.push_in(tx, &out.now, &out.later).await?;
        Ok(jids)
    }

    /// Runs `job` after `delay` (Sidekiq's `perform_in`).
    ///
    /// # Errors
    /// As for [`Client::push`].
    pub async fn push_in<J: Job>(&self, delay: Duration, job: J) -> Result<String, Error> {
        self.push_with(job, Push::new().delay(delay)).await
    }

    /// Runs `job` at `time` (Sidekiq's `perform_at`).
    ///
    /// # Errors
    /// As for [`Client::push`].
    pub async fn push_at<J: Job>(&self, time: SystemTime, job: J) -> Result<String, Error> {
        self.push_with(job, Push::new().at(time)).await
    }

    /// Enqueues many jobs in pipelined round trips (100,000 in one call is fine). Every payload
    /// is built and checked before anything is pushed, so a bad one pushes nothing. Returns the
    /// job ids in order.
    ///
    /// # Errors
    /// As for [`Client::push`].
    pub async fn push_bulk<J, I>(&self, jobs: I) -> Result<Vec<String>, Error>
    where
        J: Job,
        I: IntoIterator<Item = J>,
    {
        // The options, queue and timestamps are the same for every job of the call: build
        // them once, and write each payload straight from a struct (same keys, same order as
        // `Client::push`) instead of through an ordered map.
        let opts = J::options();
        if opts.queue.is_empty() {
            return Err(PayloadError::EmptyQueue.into());
        }
        if opts.unique_for.is_some() || opts.debounce.is_some() {
            // Unique and debounced jobs take their key one by one; a duplicate is skipped and
            // the job that holds its key is reported in its place.
            let mut jids = Vec::new();
            for job in jobs {
                match self.push(job).await {
                    Ok(jid) => jids.push(jid),
                    Err(Error::Duplicate { existing_jid }) => jids.push(existing_jid),
                    Err(e) => return Err(e),
                }
            }
            return Ok(jids);
        }
        let now = self.now();
        let stamp = self.profile.encode(now);
        let retry = match opts.retry {
            crate::Retry::Default => Value::Bool(true),
            crate::Retry::Count(n) => Value::from(n),
            crate::Retry::Disabled => Value::Bool(false),
        };
        let jobs = jobs.into_iter();
        let mut jids = Vec::with_capacity(jobs.size_hint().0);
        let mut batch = Vec::with_capacity(jobs.size_hint().0);
        let mut built = Vec::new();
        let chain = client_middleware::any_active(&self.middleware);
        for job in jobs {
            let jid = errand_core::id::new_jid();
            let new = NewPayload {
                retry: &retry,
                queue: &opts.queue,
                args: encode_args(&job)?,
                class: J::NAME,
                jid: &jid,
                created_at: &stamp,
                retry_queue: opts.retry_queue.as_deref(),
                backtrace: opts.backtrace,
                tags: (!opts.tags.is_empty()).then_some(&opts.tags),
                dead: (!opts.dead).then_some(false),
                errand_keep_result: opts.keep_result.map(|k| k.as_secs_f64()),
                errand_expires_at: opts.expires_in.map(|d| now + d.as_secs_f64()),
                enqueued_at: &stamp,
            };
            if chain {
                // For the chain: the same payload as an object, checked when stored.
                let map = match serde_json::to_value(&new) {
                    Ok(Value::Object(map)) => map,
                    Ok(_) => return Err(PayloadError::NotAnObject.into()),
                    Err(e) => return Err(PayloadError::NotSerializable(e.to_string()).into()),
                };
                built.push(Payload::from_map(map)?);
                continue;
            }
            let payload = serde_json::to_string(&new)
                .map_err(|e| PayloadError::NotSerializable(e.to_string()))?;
            batch.push(Enqueue {
                queue: opts.queue.clone(),
                payload: self.check_size(payload)?,
            });
            jids.push(jid);
        }
        if chain {
            let mut out = Outgoing::new(built, None, PushKind::Bulk);
            self.send(&Plain, &mut out).await?;
            return Ok(out.jobs.iter().map(|p| p.jid().to_string()).collect());
        }
        self.broker.push(&batch).await?;
        Ok(jids)
    }

    /// Enqueues a job by class name and JSON arguments, for jobs run by other languages.
    ///
    /// # Errors
    /// As for [`Client::push`].
    pub async fn push_raw(&self, job: RawJob, push: Push) -> Result<String, Error> {
        let queue = push.queue.as_deref().unwrap_or(&job.queue);
        let mut p = Payload::new(&job.class, job.args, queue, self.profile);
        p.set("retry", job.retry);
        let p = self.finish(p, &push)?;
        self.push_payload(p, self.run_at(&push)).await
    }

    /// Enqueues a job for a Ruby ActiveJob class (`perform_later`), in the wrapped form Rails'
    /// Sidekiq adapter writes.
    ///
    /// # Errors
    /// As for [`Client::push`].
    pub async fn push_active_job(
        &self,
        job_class: &str,
        arguments: &[Value],
        queue: &str,
    ) -> Result<String, Error> {
        let p = activejob::wrap(job_class, arguments, queue, self.profile);
        let p = self.finish(p, &Push::new())?;
        self.push_payload(p, None).await
    }
}

/// The lease key of a unique job: `unique:<class>:<named key>`, or for jobs that name none
/// `unique:<class>:<digest>` with the first 128 bits of SHA-256 over the queue and the
/// arguments' JSON (stable across processes, versions and languages).
pub(crate) fn unique_key(
    class: &str,
    queue: &str,
    args: &[Value],
    named: Option<String>,
) -> String {
    use sha2::{Digest, Sha256};
    if let Some(named) = named {
        return format!("unique:{class}:{named}");
    }
    let mut h = Sha256::new();
    h.update(queue.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_string(args).unwrap_or_default().as_bytes());
    let digest = h.finalize();
    let mut hex = String::with_capacity(32);
    for b in &digest[..16] {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("unique:{class}:{hex}")
}

/// Jobs built for an application transaction: to run now, and to run later.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Default)]
struct TxJobs {
    now: Vec<Enqueue>,
    later: Vec<ScheduledJob>,
}

#[cfg(feature = "sqlite")]
impl TxJobs {
    fn write_sqlite(&self, tx: &errand_sqlite::rusqlite::Transaction<'_>) -> Result<(), Error> {
        if !self.now.is_empty() {
            errand_sqlite::push_in(tx, &self.now)?;
        }
        if !self.later.is_empty() {
            errand_sqlite::push_scheduled_in(tx, &self.later)?;
        }
        Ok(())
    }
}

/// The client middleware a new [`Client`] starts with: the push spans with the feature
/// `spans`, none without.
fn default_middleware() -> Arc<[Arc<dyn ClientMiddleware>]> {
    #[cfg(feature = "spans")]
    {
        Arc::new([Arc::new(crate::trace::PushSpans) as Arc<dyn ClientMiddleware>])
    }
    #[cfg(not(feature = "spans"))]
    {
        Arc::new([])
    }
}

/// Stores jobs on their queues now, or in the schedule set when their time is ahead.
struct Plain;

#[async_trait]
impl Store for Plain {
    async fn store(&self, client: &Client, out: &mut Outgoing) -> Result<(), Error> {
        let (mut now, mut later) = (Vec::new(), Vec::new());
        for p in &mut out.jobs {
            let (queue, at, payload) = client.stored_mut(p, out.at)?;
            match at {
                Some(at) => later.push(ScheduledJob { at, payload }),
                None => now.push(Enqueue { queue, payload }),
            }
        }
        if !later.is_empty() {
            client.broker.push_scheduled(&later).await?;
        }
        if !now.is_empty() {
            client.broker.push(&now).await?;
        }
        out.stored = true;
        Ok(())
    }
}

/// Takes the unique lock of the job (its `unique_key`) for `period` (plus the delay of a
/// scheduled push) and stores it, in one step; a held lock is a [`Error::Duplicate`].
struct Unique {
    period: Duration,
}

#[async_trait]
impl Store for Unique {
    async fn store(&self, client: &Client, out: &mut Outgoing) -> Result<(), Error> {
        for p in &mut out.jobs {
            let key = p
                .get("unique_key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let delay = out.at.map_or(0.0, |at| (at - client.now()).max(0.0));
            let ttl = self.period + Duration::from_secs_f64(delay);
            let jid = p.jid().to_string();
            let (queue, at, payload) = client.stored_mut(p, out.at)?;
            let req = UniquePush {
                key: &key,
                jid: &jid,
                ttl,
                queue: &queue,
                payload: &payload,
                at,
            };
            // One atomic step: no crash can leave the lock without its job, and an error (a
            // lost reply among them) never frees the lock of a job that may be stored.
            if let UniquePushed::Duplicate { holder } = client.broker.push_unique(req).await? {
                return Err(Error::Duplicate {
                    existing_jid: holder,
                });
            }
        }
        out.stored = true;
        Ok(())
    }
}

/// Stores the job, replacing the waiting job of its debounce key, in one step; says which it
/// replaced.
struct Debounce {
    now: f64,
    replaced: std::sync::Mutex<Option<String>>,
}

#[async_trait]
impl Store for Debounce {
    async fn store(&self, client: &Client, out: &mut Outgoing) -> Result<(), Error> {
        for p in &mut out.jobs {
            let key = p
                .get(crate::job::DEBOUNCE_KEY)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let jid = p.jid().to_string();
            let (queue, at, payload) = client.stored_mut(p, out.at)?;
            // The key outlives any wait in the schedule, plus a day in a queue's backlog.
            let wait = at.map_or(0.0, |at| (at - self.now).max(0.0));
            let ttl = Duration::from_secs_f64(wait) + Duration::from_secs(24 * 3600);
            let replaced = client
                .broker
                .push_replacing(ReplacePush {
                    key: &key,
                    jid: &jid,
                    ttl,
                    queue: &queue,
                    payload: &payload,
                    at,
                })
                .await?;
            if let Some(old) = &replaced {
                tracing::debug!(jid, replaced = %old, key, "debounced: the waiting job was replaced");
            }
            if let Ok(mut slot) = self.replaced.lock() {
                *slot = replaced;
            }
        }
        out.stored = true;
        Ok(())
    }
}
