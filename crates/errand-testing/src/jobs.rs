//! [`TestJobs`]: test code that enqueues jobs, and the jobs themselves, with no Redis and no
//! running server.
//!
//! Three modes, as Sidekiq's testing API has them:
//! - **fake** ([`TestJobs::new`], [`TestJobs::with_server`]): pushes are collected in memory;
//!   a test asserts on them ([`TestJobs::assert_enqueued`], [`TestJobs::enqueued`]) and
//!   [`TestJobs::drain`]s them when it wants them run;
//! - **inline** ([`TestJobs::inline`]): a push performs the job at once, and a failing job's
//!   error comes back from the push;
//! - **direct**: [`TestJobs::perform`] runs one job through the middleware with a test context.
//!
//! Time is a [`ManualClock`]: scheduled jobs and retries become due when the test moves it
//! ([`TestJobs::advance`]), so a test steps through a job's retries without waiting.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use errand::{Job, JobContext, JobResult};
//! use errand_testing::TestJobs;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Welcome {
//!     user_id: u64,
//! }
//!
//! impl Job for Welcome {
//!     const NAME: &'static str = "Welcome";
//!     async fn perform(self, _cx: &JobContext) -> JobResult {
//!         Ok(())
//!     }
//! }
//!
//! let jobs = TestJobs::with_server(|s| s.register::<Welcome>());
//! jobs.client().push(Welcome { user_id: 7 }).await.unwrap();
//! jobs.assert_enqueued(&Welcome { user_id: 7 });
//! assert_eq!(jobs.drain().await.performed, 1);
//! assert!(jobs.enqueued::<Welcome>().is_empty());
//! # });
//! ```

use crate::intercept::{Intercept, Intercepted};
use crate::{ManualClock, MemoryBroker};
use async_trait::async_trait;
use errand::broker::{
    Broker, BrokerResult, Enqueue, PermitGrant, PermitRequest, ScheduledJob, UniquePush,
    UniquePushed,
};
use errand::{Client, Drained, Job, JobResult, Payload, Push, Server, ServerBuilder};
use errand_core::BrokerError;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

type Configure = Arc<dyn Fn(ServerBuilder) -> ServerBuilder + Send + Sync>;

/// Jobs under test: a [`MemoryBroker`] on a [`ManualClock`], a client for it, and a server
/// (configured by the test) that performs what was enqueued when asked: fake mode
/// ([`TestJobs::with_server`]), inline mode ([`TestJobs::inline`]) and direct
/// ([`TestJobs::perform`]).
pub struct TestJobs {
    broker: MemoryBroker,
    clock: ManualClock,
    client: Client,
    configure: Configure,
    /// Inline mode's server, shared with the inline broker behind `client`.
    inline: Option<Arc<InlineInner>>,
}

impl std::fmt::Debug for TestJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestJobs")
            .field("clock", &self.clock.now())
            .field("inline", &self.inline.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for TestJobs {
    fn default() -> Self {
        Self::new()
    }
}

impl TestJobs {
    /// Fake mode with no jobs registered: pushes are collected for assertions. Use
    /// [`TestJobs::with_server`] to be able to drain them.
    pub fn new() -> Self {
        Self::with_server(|s| s)
    }

    /// Fake mode: pushes are collected; [`TestJobs::drain`] runs them on a server set up by
    /// `configure` (register jobs, share data, add middleware and death handlers).
    pub fn with_server<F>(configure: F) -> Self
    where
        F: Fn(ServerBuilder) -> ServerBuilder + Send + Sync + 'static,
    {
        let clock = ManualClock::starting_now();
        let broker = MemoryBroker::with_manual_clock(&clock);
        let client = Client::new(broker.clone()).clock(clock.clock());
        Self {
            broker,
            clock,
            client,
            configure: Arc::new(configure),
            inline: None,
        }
    }

    /// Inline mode: every push (including pushes from inside jobs, and scheduled pushes)
    /// performs the job at once, before the push returns, on a server set up by `configure`.
    /// A job that fails makes its push return the error; nothing is left in any queue or set.
    ///
    /// # Panics
    /// When `configure` leaves the server invalid (no job registered).
    pub fn inline<F>(configure: F) -> Self
    where
        F: Fn(ServerBuilder) -> ServerBuilder + Send + Sync + 'static,
    {
        let mut this = Self::with_server(configure);
        let inner = Arc::new(InlineInner {
            server: OnceLock::new(),
        });
        let handle = Arc::new(Intercepted::new(
            Arc::new(this.broker.clone()),
            Inline {
                inner: Arc::downgrade(&inner),
            },
        ));
        let client = Client::from_arc(handle).clock(this.clock.clock());
        let server = this
            .builder()
            .client(client.clone())
            .build()
            .expect("the inline server's configuration is valid");
        let _ = inner.server.set(server);
        this.client = client;
        this.inline = Some(inner);
        this
    }

    fn builder(&self) -> ServerBuilder {
        let base = Server::builder(self.broker.clone())
            .clock(self.clock.clock())
            .handle_signals(false);
        (self.configure)(base)
    }

    /// A client whose pushes go to this harness (collected, or performed in inline mode).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The in-memory backend, for inspection ([`MemoryBroker::set`], [`MemoryBroker::stats`]).
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    /// The harness's clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Moves the clock forward: scheduled jobs and retries whose time has come become due for
    /// the next [`TestJobs::drain`].
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Every job waiting to run, in the order a worker would take them per queue (queues by
    /// name), then the scheduled ones by time.
    pub fn enqueued_payloads(&self) -> Vec<Payload> {
        let mut out = Vec::new();
        for q in self.broker.known_queues() {
            for raw in self.broker.queue(&q) {
                out.extend(Payload::parse(&raw).ok());
            }
        }
        for (_, raw) in self.broker.set("schedule") {
            out.extend(Payload::parse(&raw).ok());
        }
        out
    }

    /// The waiting (queued or scheduled) jobs of type `J`, decoded from their arguments.
    ///
    /// # Panics
    /// When a payload of class `J::NAME` does not decode as `J`.
    pub fn enqueued<J: Job>(&self) -> Vec<J> {
        self.enqueued_payloads()
            .iter()
            .filter(|p| p.class() == J::NAME)
            .map(|p| {
                errand::decode_args(p.args()).unwrap_or_else(|e| {
                    panic!(
                        "an enqueued {} does not decode: {e}: {}",
                        J::NAME,
                        p.to_json()
                    )
                })
            })
            .collect()
    }

    /// Asserts that a job of type `J` with exactly `job`'s arguments is waiting to run.
    ///
    /// # Panics
    /// When there is none; the message lists what is enqueued.
    pub fn assert_enqueued<J: Job>(&self, job: &J) {
        let want = errand::encode_args(job).expect("the job's arguments are JSON");
        let payloads = self.enqueued_payloads();
        if !payloads
            .iter()
            .any(|p| p.class() == J::NAME && p.args() == want.as_slice())
        {
            let listed: Vec<String> = payloads
                .iter()
                .map(|p| {
                    format!(
                        "{}{}",
                        p.class(),
                        serde_json::Value::from(p.args().to_vec())
                    )
                })
                .collect();
            panic!(
                "expected {}{} to be enqueued; enqueued: [{}]",
                J::NAME,
                serde_json::Value::from(want),
                listed.join(", ")
            );
        }
    }

    /// Asserts that no job of type `J` is waiting to run.
    ///
    /// # Panics
    /// When one is; the message shows their arguments.
    pub fn assert_none_enqueued<J: Job>(&self) {
        let found: Vec<String> = self
            .enqueued_payloads()
            .iter()
            .filter(|p| p.class() == J::NAME)
            .map(|p| serde_json::Value::from(p.args().to_vec()).to_string())
            .collect();
        assert!(
            found.is_empty(),
            "expected no {} enqueued; found {}",
            J::NAME,
            found.join(", ")
        );
    }

    /// Empties every queue and the schedule, retry and dead sets.
    pub fn clear(&self) {
        self.broker.clear();
    }

    /// The jobs waiting in the retry set, soonest first.
    pub fn retries(&self) -> Vec<Payload> {
        self.set_payloads("retry")
    }

    /// The jobs in the dead set, oldest first.
    pub fn dead(&self) -> Vec<Payload> {
        self.set_payloads("dead")
    }

    fn set_payloads(&self, name: &str) -> Vec<Payload> {
        self.broker
            .set(name)
            .into_iter()
            .filter_map(|(_, raw)| Payload::parse(&raw).ok())
            .collect()
    }

    /// Performs every job that is due now (in every queue), and the jobs those jobs enqueue,
    /// one at a time, until nothing due is left; failures follow the normal retry rules on the
    /// harness clock. Returns what ran.
    ///
    /// # Panics
    /// When the server configuration is invalid (no job registered) or the memory backend
    /// fails (it does not).
    pub async fn drain(&self) -> Drained {
        let mut total = Drained::default();
        loop {
            let mut queues = self.broker.known_queues();
            if queues.is_empty() {
                queues.push("default".into());
            }
            let server = self
                .builder()
                .queues(queues.clone())
                .build()
                .expect("TestJobs::with_server configures a valid server (register a job)");
            let round = server
                .drain()
                .await
                .expect("the memory backend does not fail");
            total.performed += round.performed;
            total.failed += round.failed;
            // Jobs may have pushed to queues nobody had used before: drain those too.
            if self
                .broker
                .known_queues()
                .iter()
                .all(|q| queues.contains(q))
            {
                return total;
            }
        }
    }

    /// Runs `job` now through the server's middleware with a test context (the harness's
    /// client and the configured shared data), without enqueuing it; returns its result.
    ///
    /// # Panics
    /// When the server configuration is invalid or the arguments are not JSON.
    pub async fn perform<J: Job>(&self, job: J) -> JobResult {
        let payload = self
            .client
            .build(&job, &Push::new())
            .expect("the job's arguments are JSON");
        self.perform_payload(payload).await
    }

    /// Runs a payload (e.g. one a Ruby app would enqueue) now, as [`TestJobs::perform`] does.
    ///
    /// # Panics
    /// When the server configuration is invalid.
    pub async fn perform_payload(&self, payload: Payload) -> JobResult {
        match &self.inline {
            Some(inner) => inner.server().perform(payload).await,
            None => {
                let server = self
                    .builder()
                    .build()
                    .expect("TestJobs::with_server configures a valid server (register a job)");
                server.perform(payload).await
            }
        }
    }
}

/// Inline mode's server, reachable from the inline hooks without a reference cycle (the
/// server's client holds the hooks; the hooks hold only a weak reference back).
struct InlineInner {
    server: OnceLock<Server>,
}

impl InlineInner {
    fn server(&self) -> &Server {
        self.server.get().expect("set when the harness is built")
    }
}

/// The hooks behind an inline client: pushes and scheduled pushes perform the jobs at once;
/// everything else is the memory broker.
struct Inline {
    inner: Weak<InlineInner>,
}

/// Why an inline-mode push failed: the job it performed failed. Reaches the caller as the
/// source of a [`BrokerError::Command`] (downcast it to read the fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFailure {
    /// The job's class.
    pub class: String,
    /// The failure's class (`RuntimeError`, `Errand::Panic`, ...).
    pub error_class: String,
    /// The failure's message.
    pub message: String,
}

impl std::fmt::Display for InlineFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "inline job {} failed: {}: {}",
            self.class, self.error_class, self.message
        )
    }
}

impl std::error::Error for InlineFailure {}

impl Inline {
    async fn perform_all<'a>(&self, raws: impl Iterator<Item = &'a str>) -> BrokerResult<()> {
        let inner = self
            .inner
            .upgrade()
            .ok_or_else(|| BrokerError::Config("the TestJobs harness was dropped".into()))?;
        for raw in raws {
            let payload = Payload::parse(raw).map_err(|e| BrokerError::Command(Box::new(e)))?;
            let class = payload.display_class().to_string();
            if let Err(e) = inner.server().perform(payload).await {
                return Err(BrokerError::Command(Box::new(InlineFailure {
                    class,
                    error_class: e.class().to_string(),
                    message: e.message().to_string(),
                })));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Intercept for Inline {
    async fn push(&self, _inner: &dyn Broker, jobs: &[Enqueue]) -> BrokerResult<()> {
        self.perform_all(jobs.iter().map(|j| j.payload.as_str()))
            .await
    }
    async fn push_scheduled(&self, _inner: &dyn Broker, jobs: &[ScheduledJob]) -> BrokerResult<()> {
        self.perform_all(jobs.iter().map(|j| j.payload.as_str()))
            .await
    }
    /// The permit is taken in the backend, as a real push takes it; the job then runs here.
    async fn push_unique(
        &self,
        inner: &dyn Broker,
        req: UniquePush<'_>,
    ) -> BrokerResult<UniquePushed> {
        let grant = inner
            .permit_acquire(PermitRequest {
                key: req.key,
                holder: req.jid,
                max: 1,
                ttl: req.ttl,
                fence: false,
            })
            .await?;
        if let PermitGrant::Full { holder } = grant {
            return Ok(UniquePushed::Duplicate { holder });
        }
        if let Err(e) = self.perform_all(std::iter::once(req.payload)).await {
            // The push fails as a whole, as it would have on a backend: free the key.
            inner.permit_release(req.key, req.jid).await?;
            return Err(e);
        }
        Ok(UniquePushed::Pushed)
    }
}
