//! A fetch whose reply is lost after the backend moved jobs in flight (the connection broke on
//! the way back) must not strand those jobs in a live process: once fetching works again the
//! server puts back what it holds but is not running, and every job runs.

use async_trait::async_trait;
use errand::broker::{
    Broker, BrokerResult, Enqueue, FetchRequest, Fetched, Heartbeat, LeaseGrant, LeaseRequest,
    OnceClaim, RateKind, RemoteSignal, RescuePolicy, Scheduled, Settle,
};
use errand::{Client, Job, JobContext, JobResult, Server, WireProfile};
use errand_core::BrokerError;
use errand_testing::MemoryBroker;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The memory broker, except that the first fetch that moves jobs reports a connection error
/// instead of returning them (they stay in flight, as after a lost Redis reply).
struct LosesOneReply {
    inner: MemoryBroker,
    lost: AtomicUsize,
}

#[async_trait]
impl Broker for LosesOneReply {
    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        let jobs = self.inner.fetch(req).await?;
        if !jobs.is_empty() && self.lost.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(BrokerError::Connection("reply lost in transit".into()));
        }
        Ok(jobs)
    }
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()> {
        self.inner.push(jobs).await
    }
    async fn schedule(&self, jobs: &[Scheduled]) -> BrokerResult<()> {
        self.inner.schedule(jobs).await
    }
    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()> {
        self.inner.register(identity, queues).await
    }
    async fn ack(&self, job: &Fetched) -> BrokerResult<bool> {
        self.inner.ack(job).await
    }
    async fn settle(&self, job: &Fetched, to: Settle) -> BrokerResult<bool> {
        self.inner.settle(job, to).await
    }
    async fn requeue_in_flight(&self, identity: &str) -> BrokerResult<usize> {
        self.inner.requeue_in_flight(identity).await
    }
    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>> {
        self.inner.held(identity, queues).await
    }
    async fn release(&self, job: &Fetched) -> BrokerResult<bool> {
        self.inner.release(job).await
    }
    async fn now(&self) -> BrokerResult<f64> {
        self.inner.now().await
    }
    async fn promote_due(&self, now: f64, profile: WireProfile) -> BrokerResult<usize> {
        self.inner.promote_due(now, profile).await
    }
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>> {
        self.inner.heartbeat(beat).await
    }
    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize> {
        self.inner.rescue_orphans(policy).await
    }
    async fn unregister(&self, identity: &str) -> BrokerResult<()> {
        self.inner.unregister(identity).await
    }
    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool> {
        self.inner.claim_poll(window).await
    }
    async fn process_count(&self) -> BrokerResult<usize> {
        self.inner.process_count().await
    }
    async fn once_claim(&self, key: &str, owner: &str, lease: Duration) -> BrokerResult<OnceClaim> {
        self.inner.once_claim(key, owner, lease).await
    }
    async fn once_renew(&self, key: &str, owner: &str, lease: Duration) -> BrokerResult<bool> {
        self.inner.once_renew(key, owner, lease).await
    }
    async fn once_complete(
        &self,
        key: &str,
        owner: &str,
        output: &str,
        keep: Duration,
    ) -> BrokerResult<bool> {
        self.inner.once_complete(key, owner, output, keep).await
    }
    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()> {
        self.inner.once_release(key, owner).await
    }
    async fn lease_acquire(&self, req: LeaseRequest<'_>) -> BrokerResult<LeaseGrant> {
        self.inner.lease_acquire(req).await
    }
    async fn lease_renew(&self, key: &str, holder: &str, ttl: Duration) -> BrokerResult<bool> {
        self.inner.lease_renew(key, holder, ttl).await
    }
    async fn lease_release(&self, key: &str, holder: &str) -> BrokerResult<bool> {
        self.inner.lease_release(key, holder).await
    }
    async fn lease_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>> {
        self.inner.lease_holders(key).await
    }
    async fn rate_take(
        &self,
        key: &str,
        kind: RateKind,
        limit: u32,
        interval: Duration,
    ) -> BrokerResult<Option<Duration>> {
        self.inner.rate_take(key, kind, limit, interval).await
    }
    async fn limit_hit(&self, name: &str) -> BrokerResult<()> {
        self.inner.limit_hit(name).await
    }
    async fn limit_hits(&self) -> BrokerResult<Vec<(String, u64)>> {
        self.inner.limit_hits().await
    }
}

#[derive(Serialize, Deserialize)]
struct Count(u64);

impl Job for Count {
    const NAME: &'static str = "Count";
    async fn perform(self, cx: &JobContext) -> JobResult {
        cx.data::<Arc<AtomicUsize>>()
            .expect("counter")
            .fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_stranded_by_a_lost_fetch_reply_are_put_back_and_run() {
    let memory = MemoryBroker::new();
    let broker = Arc::new(LosesOneReply {
        inner: memory.clone(),
        lost: AtomicUsize::new(0),
    });
    Client::new(memory.clone())
        .push_bulk((0..20).map(Count))
        .await
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let server = Server::builder_arc(broker.clone())
        .register::<Count>()
        .data(ran.clone())
        .concurrency(5)
        .fetch_wait(Duration::from_millis(100))
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    let deadline = Instant::now() + Duration::from_secs(20);
    while ran.load(Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} of 20 ran: the lost reply's jobs were stranded",
            ran.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop();
    running.await.unwrap().unwrap();
    assert!(
        broker.lost.load(Ordering::SeqCst) > 1,
        "the reply was lost once"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 20, "each job ran once");
    assert!(memory.queue("default").is_empty());
}
