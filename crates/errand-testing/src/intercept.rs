//! [`Intercepted`]: a broker whose push, scheduled push, unique push, fetch, completions,
//! registration, shutdown requeue, paused-queue reads and metrics writes a test can replace
//! (to perform jobs inline, or to inject a fault such as a lost reply, a failed write or a
//! backend that stops answering), with every other step of the contract passed through to the
//! wrapped broker unchanged.

use async_trait::async_trait;
use errand::WireProfile;
use errand::broker::{
    Broker, BrokerResult, Capabilities, Completion, Coordination, Enqueue, FetchRequest, Fetched,
    Fleet, Heartbeat, JobQueue, OnceClaim, OnceCompletion, OnceRequest, PermitGrant, PermitRenewal,
    PermitRequest, RateRequest, RemoteSignal, RescuePolicy, ScheduledJob, UniquePush, UniquePushed,
};
use errand::broker::{Cancelled, PeriodicEntry, PeriodicRecord, TickClaim};
use errand::metrics::ClassMetrics;
use std::sync::Arc;
use std::time::Duration;

/// What an [`Intercepted`] broker does instead of the wrapped broker's steps. Each method
/// defaults to passing the call through to `inner`.
#[async_trait]
pub trait Intercept: Send + Sync + 'static {
    /// Replaces [`JobQueue::push`].
    async fn push(&self, inner: &dyn Broker, jobs: &[Enqueue]) -> BrokerResult<()> {
        inner.push(jobs).await
    }

    /// Replaces [`JobQueue::push_scheduled`].
    async fn push_scheduled(&self, inner: &dyn Broker, jobs: &[ScheduledJob]) -> BrokerResult<()> {
        inner.push_scheduled(jobs).await
    }

    /// Replaces [`Coordination::push_unique`].
    async fn push_unique(
        &self,
        inner: &dyn Broker,
        req: UniquePush<'_>,
    ) -> BrokerResult<UniquePushed> {
        inner.push_unique(req).await
    }

    /// Replaces [`JobQueue::fetch`].
    async fn fetch(&self, inner: &dyn Broker, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        inner.fetch(req).await
    }

    /// Replaces [`JobQueue::complete_many`].
    async fn complete_many(
        &self,
        inner: &dyn Broker,
        batch: &[Completion<'_>],
    ) -> BrokerResult<Vec<bool>> {
        inner.complete_many(batch).await
    }

    /// Replaces [`Fleet::register`].
    async fn register(
        &self,
        inner: &dyn Broker,
        identity: &str,
        queues: &[String],
    ) -> BrokerResult<()> {
        inner.register(identity, queues).await
    }

    /// Replaces [`Fleet::paused_queues`].
    async fn paused_queues(&self, inner: &dyn Broker) -> BrokerResult<Vec<String>> {
        inner.paused_queues().await
    }

    /// Replaces [`Fleet::record_metrics`].
    async fn record_metrics(
        &self,
        inner: &dyn Broker,
        minute: i64,
        classes: &[ClassMetrics],
    ) -> BrokerResult<()> {
        inner.record_metrics(minute, classes).await
    }

    /// Replaces [`Fleet::requeue_in_flight`].
    async fn requeue_in_flight(
        &self,
        inner: &dyn Broker,
        identity: &str,
        queues: &[String],
    ) -> BrokerResult<usize> {
        inner.requeue_in_flight(identity, queues).await
    }
}

/// `inner` with the steps [`Intercept`] names going through `hooks`.
pub struct Intercepted<I> {
    inner: Arc<dyn Broker>,
    hooks: I,
}

impl<I: Intercept> Intercepted<I> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Broker>, hooks: I) -> Self {
        Self { inner, hooks }
    }

    /// The hooks (for a test to read what they counted).
    pub fn hooks(&self) -> &I {
        &self.hooks
    }
}

#[async_trait]
impl<I: Intercept> JobQueue for Intercepted<I> {
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()> {
        self.hooks.push(&*self.inner, jobs).await
    }
    async fn push_scheduled(&self, jobs: &[ScheduledJob]) -> BrokerResult<()> {
        self.hooks.push_scheduled(&*self.inner, jobs).await
    }
    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        self.hooks.fetch(&*self.inner, req).await
    }
    async fn complete_many(&self, batch: &[Completion<'_>]) -> BrokerResult<Vec<bool>> {
        self.hooks.complete_many(&*self.inner, batch).await
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
}

#[async_trait]
impl<I: Intercept> Fleet for Intercepted<I> {
    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()> {
        self.hooks.register(&*self.inner, identity, queues).await
    }
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>> {
        self.inner.heartbeat(beat).await
    }
    async fn unregister(&self, identity: &str) -> BrokerResult<()> {
        self.inner.unregister(identity).await
    }
    async fn requeue_in_flight(&self, identity: &str, queues: &[String]) -> BrokerResult<usize> {
        self.hooks
            .requeue_in_flight(&*self.inner, identity, queues)
            .await
    }
    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>> {
        self.inner.held(identity, queues).await
    }
    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize> {
        self.inner.rescue_orphans(policy).await
    }
    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool> {
        self.inner.claim_poll(window).await
    }
    async fn process_count(&self) -> BrokerResult<usize> {
        self.inner.process_count().await
    }
    async fn paused_queues(&self) -> BrokerResult<Vec<String>> {
        self.hooks.paused_queues(&*self.inner).await
    }
    async fn record_metrics(&self, minute: i64, classes: &[ClassMetrics]) -> BrokerResult<()> {
        self.hooks
            .record_metrics(&*self.inner, minute, classes)
            .await
    }
}

#[async_trait]
impl<I: Intercept> Coordination for Intercepted<I> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn once_claim(&self, req: OnceRequest<'_>) -> BrokerResult<OnceClaim> {
        self.inner.once_claim(req).await
    }
    async fn once_renew(&self, req: OnceRequest<'_>) -> BrokerResult<bool> {
        self.inner.once_renew(req).await
    }
    async fn once_complete(&self, done: OnceCompletion<'_>) -> BrokerResult<bool> {
        self.inner.once_complete(done).await
    }
    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()> {
        self.inner.once_release(key, owner).await
    }
    async fn permit_acquire(&self, req: PermitRequest<'_>) -> BrokerResult<PermitGrant> {
        self.inner.permit_acquire(req).await
    }
    async fn push_unique(&self, req: UniquePush<'_>) -> BrokerResult<UniquePushed> {
        self.hooks.push_unique(&*self.inner, req).await
    }
    async fn cancel_job(&self, jid: &str, keep: Duration) -> BrokerResult<Cancelled> {
        self.inner.cancel_job(jid, keep).await
    }
    async fn cancelled(&self, jids: &[&str]) -> BrokerResult<Vec<bool>> {
        self.inner.cancelled(jids).await
    }
    async fn push_replacing(
        &self,
        req: errand::broker::ReplacePush<'_>,
    ) -> BrokerResult<Option<String>> {
        self.inner.push_replacing(req).await
    }
    async fn result_put(&self, jid: &str, value: &str, keep: Duration) -> BrokerResult<()> {
        self.inner.result_put(jid, value, keep).await
    }
    async fn result_get(&self, jid: &str) -> BrokerResult<Option<String>> {
        self.inner.result_get(jid).await
    }
    async fn periodic_upsert(&self, entries: &[PeriodicEntry], now: f64) -> BrokerResult<()> {
        self.inner.periodic_upsert(entries, now).await
    }
    async fn periodic_list(&self) -> BrokerResult<Vec<PeriodicRecord>> {
        self.inner.periodic_list().await
    }
    async fn periodic_pause(&self, name: &str, paused: bool) -> BrokerResult<bool> {
        self.inner.periodic_pause(name, paused).await
    }
    async fn periodic_claim(&self, claim: TickClaim<'_>) -> BrokerResult<bool> {
        self.inner.periodic_claim(claim).await
    }
    async fn periodic_prune(&self, before: f64) -> BrokerResult<usize> {
        self.inner.periodic_prune(before).await
    }
    async fn permit_renew(&self, req: PermitRenewal<'_>) -> BrokerResult<bool> {
        self.inner.permit_renew(req).await
    }
    async fn permit_release(&self, key: &str, holder: &str) -> BrokerResult<bool> {
        self.inner.permit_release(key, holder).await
    }
    async fn permit_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>> {
        self.inner.permit_holders(key).await
    }
    async fn rate_take(&self, req: RateRequest<'_>) -> BrokerResult<Option<Duration>> {
        self.inner.rate_take(req).await
    }
    async fn refusal_add(&self, limiter: &str) -> BrokerResult<()> {
        self.inner.refusal_add(limiter).await
    }
    async fn refusal_counts(&self) -> BrokerResult<Vec<(String, u64)>> {
        self.inner.refusal_counts().await
    }
}
