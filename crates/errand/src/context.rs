//! What a running job can see: its payload, the application's shared data, a client, the
//! server's shutdown signal, and the idempotency tools (stable keys, once-only steps).

use crate::{Client, JobError};
use errand_core::Payload;
use errand_core::broker::{OnceClaim, OnceCompletion, OnceRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a once-only step's completion record is kept by default: 30 days, longer than
/// Sidekiq's 25 retries take (about 21 days).
pub const DEFAULT_ONCE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a claim on a once-only step lasts without renewal; renewed every third of it while
/// the step runs, so only a dead or stalled holder loses it.
const ONCE_LEASE: Duration = Duration::from_secs(30);

/// How long an attempt waits for another attempt's running step before it snoozes.
const ONCE_WAIT: Duration = Duration::from_secs(5);

/// Application state shared with every job (a database pool, an HTTP client), keyed by type.
#[derive(Default, Clone)]
pub struct Data {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data")
            .field("entries", &self.map.len())
            .finish()
    }
}

impl Data {
    /// Stores `value`, replacing any earlier value of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The stored value of type `T`.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.map.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

/// What a running job last said about its progress ([`JobContext::progress`]).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u8,
    /// What it is doing (at most [`PROGRESS_MESSAGE_MAX`] bytes are kept).
    pub message: String,
}

/// How much of a progress message is kept.
pub const PROGRESS_MESSAGE_MAX: usize = 200;

/// What a server and a running job share: the job's cancellation and its last progress.
#[derive(Debug, Default)]
pub(crate) struct Control {
    pub cancel: CancellationToken,
    pub progress: std::sync::Mutex<Option<Progress>>,
    /// The job's id, once its payload parsed (what the heartbeat asks about).
    pub jid: std::sync::OnceLock<String>,
    /// The result set with [`JobContext::set_result`], as JSON.
    pub result: std::sync::Mutex<Option<String>>,
}

/// The largest result [`JobContext::set_result`] keeps, in bytes of JSON: results are for
/// answers (a count, an id, a URL to a file), not for data.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// The context of one job attempt.
#[derive(Debug, Clone)]
pub struct JobContext {
    payload: Arc<Payload>,
    queue: Arc<str>,
    data: Arc<Data>,
    client: Client,
    shutdown: CancellationToken,
    once_ttl: Duration,
    fencing_token: u64,
    control: Arc<Control>,
}

impl JobContext {
    /// A context for running a job outside a server (tests, inline execution).
    pub fn new(payload: Payload, client: Client, data: Arc<Data>) -> Self {
        let queue = Arc::from(payload.queue());
        Self {
            payload: Arc::new(payload),
            queue,
            data,
            client,
            shutdown: CancellationToken::new(),
            once_ttl: DEFAULT_ONCE_TTL,
            fencing_token: 0,
            control: Arc::default(),
        }
    }

    pub(crate) fn with_control(mut self, control: Arc<Control>) -> Self {
        self.control = control;
        self
    }

    /// Completes when the job is cancelled ([`crate::Client::cancel`], the dashboard's Cancel
    /// button, `errand ops job cancel`): the job's process learns of it at its next heartbeat
    /// (5 s by default). Cancellation is cooperative: select on this future beside the work,
    /// stop, and return an error; the attempt then ends as cancelled (acked, not retried,
    /// counted). A job that finishes its work anyway ends as done.
    ///
    /// ```rust,ignore
    /// tokio::select! {
    ///     _ = cx.cancelled() => return Err(JobError::discard("cancelled")),
    ///     done = export(&rows) => done?,
    /// }
    /// ```
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.control.cancel.cancelled()
    }

    /// Whether the job has been cancelled (see [`JobContext::cancelled`]): for loops that check
    /// between steps.
    pub fn is_cancelled(&self) -> bool {
        self.control.cancel.is_cancelled()
    }

    /// Reports progress: `percent` (capped at 100) and what the job is doing. Shown on the
    /// dashboard's Busy page, in its API and in `errand ops processes`. Kept in memory and sent
    /// with the process's next heartbeat, so calling it often costs no backend write; the
    /// message is cut to [`PROGRESS_MESSAGE_MAX`] bytes.
    pub fn progress(&self, percent: u8, message: impl Into<String>) {
        let mut message = message.into();
        if message.len() > PROGRESS_MESSAGE_MAX {
            let mut cut = PROGRESS_MESSAGE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        if let Ok(mut p) = self.control.progress.lock() {
            *p = Some(Progress {
                percent: percent.min(100),
                message,
            });
        }
    }

    /// Sets this attempt's result: kept when the attempt succeeds, for as long as the job's
    /// [`JobOptions::keep_result`](crate::JobOptions::keep_result) says (nothing is kept for a
    /// job pushed without it), and read with [`crate::Client::result`] or
    /// [`crate::Client::wait`]. A later call replaces the value.
    ///
    /// # Errors
    /// A value that does not serialize, or whose JSON is over [`MAX_RESULT_BYTES`]: a
    /// [`JobError::dead`] naming the size, since a retry would make the same result (store
    /// large outputs elsewhere and return where they are).
    pub fn set_result<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), JobError> {
        let json = serde_json::to_string(value)
            .map_err(|e| JobError::dead(format!("the job's result does not serialize: {e}")))?;
        if json.len() > MAX_RESULT_BYTES {
            return Err(JobError::dead(format!(
                "the job's result is {} bytes of JSON, over the limit of {MAX_RESULT_BYTES} \
                 bytes: keep large outputs elsewhere and return where they are",
                json.len()
            ))
            .with_class("Errand::ResultTooLarge"));
        }
        if let Ok(mut r) = self.control.result.lock() {
            *r = Some(json);
        }
        Ok(())
    }

    /// The progress last reported with [`JobContext::progress`].
    pub fn last_progress(&self) -> Option<Progress> {
        self.control.progress.lock().ok().and_then(|p| p.clone())
    }

    /// Sets the attempt's fencing token (the server does, from the fetch).
    pub fn with_fencing_token(mut self, token: u64) -> Self {
        self.fencing_token = token;
        self
    }

    /// This attempt's fencing token, from the fetch that handed the job to this process:
    /// strictly increasing across fetches, so if this worker stalls past its heartbeat and the
    /// job is recovered and fetched by another, the new attempt's token is larger. Send it with
    /// writes to resources that can refuse an older token than they have seen (see
    /// [`crate::locks`]); a stalled attempt that wakes up is then refused. 0 outside a server.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// Keeps once-only step records for `keep` instead of [`DEFAULT_ONCE_TTL`].
    pub fn with_once_ttl(mut self, keep: Duration) -> Self {
        self.once_ttl = keep;
        self
    }

    pub(crate) fn with_shutdown(mut self, token: CancellationToken, queue: &str) -> Self {
        self.shutdown = token;
        self.queue = Arc::from(queue);
        self
    }

    /// Takes the payload back once the attempt is over (copies it only if a clone of this
    /// context is still alive, e.g. held by a task the job spawned).
    pub(crate) fn into_payload(self) -> Payload {
        Arc::try_unwrap(self.payload).unwrap_or_else(|shared| (*shared).clone())
    }

    /// The job id.
    pub fn jid(&self) -> &str {
        self.payload.jid()
    }

    /// The job's class name (`wrapped` for ActiveJob payloads).
    pub fn class(&self) -> &str {
        self.payload.display_class()
    }

    /// The queue the job was fetched from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// How many times the job has failed before (`None` on the first attempt).
    pub fn retry_count(&self) -> Option<u32> {
        self.payload.retry_count()
    }

    /// Which attempt this is: 1 for the first run, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.payload.attempt()
    }

    /// How many times this job has snoozed so far (for backoff between snoozes).
    pub fn snoozes(&self) -> u32 {
        self.payload
            .get("snoozes")
            .and_then(serde_json::Value::as_u64)
            .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32)
    }

    /// When the job was last put on its queue (`enqueued_at`, epoch seconds), if recorded.
    pub fn enqueued_at(&self) -> Option<f64> {
        self.payload.time("enqueued_at")
    }

    /// When a periodic job's tick was scheduled (epoch seconds): the time the entry's cron
    /// expression named, not when the job was enqueued or started. `None` for other jobs.
    pub fn scheduled_at(&self) -> Option<f64> {
        self.payload.time(crate::periodic::SCHEDULED_AT_KEY)
    }

    /// The periodic entry that enqueued this job, if one did.
    pub fn periodic(&self) -> Option<&str> {
        self.payload.str(crate::periodic::PERIODIC_KEY)
    }

    /// The whole payload as stored (including keys added by other systems).
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Shared application data of type `T`, registered with `ServerBuilder::data`.
    pub fn data<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.data.get::<T>()
    }

    /// A client for enqueuing further jobs.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The batch this job belongs to, to add jobs to it while it runs (the batch cannot
    /// complete before this job has finished). `None` for a job outside any batch.
    pub fn batch(&self) -> Option<crate::BatchHandle> {
        crate::batch::bid_of(&self.payload).map(|bid| crate::BatchHandle::new(&self.client, bid))
    }

    /// For a batch callback: the batch it runs for and its event (read the batch's state with
    /// [`Client::batch_status`]). `None` for any other job.
    pub fn batch_callback(&self) -> Option<(String, errand_core::broker::BatchEvent)> {
        let cb = self.payload.get(crate::batch::CALLBACK)?;
        let bid = cb.get("bid")?.as_str()?.to_string();
        let event = errand_core::broker::BatchEvent::parse(cb.get("event")?.as_str()?)?;
        Some((bid, event))
    }

    /// For a workflow step: its name. `None` for any other job.
    pub fn step(&self) -> Option<&str> {
        self.payload.get(crate::batch::STEP)?.get("step")?.as_str()
    }

    /// The result that step `parent` of this workflow step kept with
    /// [`JobContext::set_result`], decoded as `T`. `None` when that step set none (or the
    /// result expired: [`Workflow::keep_results`](crate::Workflow::keep_results)).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when `parent` is not a step this one comes
    /// after; a backend failure; a result that does not decode as `T`.
    pub async fn parent_output<T: DeserializeOwned>(
        &self,
        parent: &str,
    ) -> Result<Option<T>, crate::Error> {
        let jid = self
            .payload
            .get(crate::batch::STEP)
            .and_then(|s| s.get("parents")?.get(parent)?.as_str())
            .ok_or_else(|| {
                crate::Error::Config(format!(
                    "`{parent}` is not a step that {} comes after",
                    self.step().unwrap_or("this job")
                ))
            })?;
        self.client.result(jid).await
    }

    /// Cancelled when the server's shutdown deadline passes; long jobs can stop early and
    /// return an error so they are retried.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// A key for `scope` that is the same in every attempt of this job (every retry, and a
    /// run after a crash) and different for every other job: `errand:<jid>:<scope>`. Derived,
    /// never random, so it is the thing to pass as an external API's idempotency key.
    ///
    /// ```rust,ignore
    /// // Stripe (or any API with idempotency keys) applies a retried charge only once.
    /// let key = cx.idempotency_key("charge");
    /// payments.charge(order.total, &key).await?;
    /// ```
    ///
    /// Use one scope per distinct effect (`"charge"`, `"refund"`): two effects sharing a key
    /// would be taken for one by the API. A job enqueued again is a new job with a new key;
    /// when the same business operation may be enqueued twice, build the key from its own
    /// identity (`format!("order-{id}-charge")`) instead, or make the job unique.
    pub fn idempotency_key(&self, scope: &str) -> String {
        format!("errand:{}:{}", self.jid(), scope)
    }

    /// Runs `effect` at most once to completion for this job, across retries and crashes,
    /// and returns its output; a later attempt gets the recorded output without running it.
    ///
    /// `step` names the effect within the job (`"send-email"`). Before running, the attempt
    /// claims the step in the backend (a record keyed by job id and step, written atomically);
    /// the claim is renewed while the effect runs. Then:
    /// - the effect succeeds: its output is recorded (JSON) and kept for the server's
    ///   `once_ttl` (default 30 days), so a retry after a later failure skips the step;
    /// - the effect fails: the claim is dropped and the error returned, so a retry runs the
    ///   step again;
    /// - another attempt holds the claim (two workers racing on one job after a recovery):
    ///   this one waits up to 5 s for it to finish, then snoozes (runs again later, not a
    ///   failure). The two never run the effect at the same time.
    ///
    /// What it cannot do: if the process dies *during* the effect, after the outside world
    /// saw it but before the record was written, the claim expires (30 s) and a retry runs the
    /// effect again. Pair `once` with an idempotency key ([`JobContext::idempotency_key`])
    /// where the other side supports one, to close that window too.
    ///
    /// # Errors
    /// The effect's error; a backend error (retried by the job's retry policy); a snooze while
    /// another attempt runs the step.
    pub async fn once<T, E, F>(&self, step: &str, effect: F) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        E: Into<JobError>,
        F: Future<Output = Result<T, E>>,
    {
        let broker = self.client.broker().clone();
        let key = format!("{}:{}", self.jid(), step);
        let owner = errand_core::id::new_jid();
        let backend = |e: errand_core::BrokerError| {
            JobError::retry(format!("once-only step {step}: {e}")).with_class("Errand::Backend")
        };
        let waiting_until = Instant::now() + ONCE_WAIT;
        loop {
            match broker
                .once_claim(OnceRequest {
                    key: &key,
                    owner: &owner,
                    ttl: ONCE_LEASE,
                })
                .await
                .map_err(backend)?
            {
                OnceClaim::Claimed => break,
                OnceClaim::Done(output) => {
                    tracing::debug!(jid = self.jid(), step, "once-only step already done");
                    return serde_json::from_str(&output).map_err(|e| {
                        JobError::dead(format!(
                            "once-only step {step}: the recorded output does not fit the type \
                             asked for: {e}"
                        ))
                        .with_class("Errand::OnceOutput")
                    });
                }
                OnceClaim::Busy if Instant::now() < waiting_until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                OnceClaim::Busy => {
                    tracing::info!(
                        jid = self.jid(),
                        step,
                        "once-only step held by another attempt; snoozing"
                    );
                    return Err(JobError::snooze(ONCE_LEASE));
                }
            }
        }
        let renew = async {
            let mut ticker = tokio::time::interval(ONCE_LEASE / 3);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let claim = OnceRequest {
                    key: &key,
                    owner: &owner,
                    ttl: ONCE_LEASE,
                };
                match broker.once_renew(claim).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            jid = self.jid(),
                            step,
                            "once-only step's claim was lost while it ran"
                        );
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        tracing::warn!(jid = self.jid(), step, error = %e, "renewing a once-only claim failed")
                    }
                }
            }
        };
        let result = tokio::select! {
            r = effect => r,
            () = renew => unreachable!("renewal never ends"),
        };
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                if let Err(re) = broker.once_release(&key, &owner).await {
                    tracing::warn!(jid = self.jid(), step, error = %re, "releasing a failed once-only step failed (it frees itself when the claim expires)");
                }
                return Err(e.into());
            }
        };
        let output = serde_json::to_string(&value).map_err(|e| {
            JobError::dead(format!("once-only step {step}: output is not JSON: {e}"))
        })?;
        let done = OnceCompletion {
            key: &key,
            owner: &owner,
            output: &output,
            keep: self.once_ttl,
        };
        match crate::reconnect::retry("once_complete", 6, || broker.once_complete(done)).await {
            Ok(true) => Ok(value),
            Ok(false) => {
                tracing::warn!(
                    jid = self.jid(),
                    step,
                    "once-only step finished after its claim was lost; another attempt may run it too"
                );
                Ok(value)
            }
            Err(e) => Err(backend(e)),
        }
    }
}
