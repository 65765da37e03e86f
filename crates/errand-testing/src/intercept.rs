//! [`Intercepted`]: a broker whose push, schedule and fetch a test can replace (to perform
//! jobs inline, or to inject a fault such as a lost reply), with every other step of the
//! contract passed through to the wrapped broker unchanged.

use async_trait::async_trait;
use errand::WireProfile;
use errand::broker::{
    Broker, BrokerResult, Enqueue, FetchRequest, Fetched, Heartbeat, LeaseGrant, LeaseRequest,
    OnceClaim, RateKind, RemoteSignal, RescuePolicy, Scheduled, Settle,
};
use std::sync::Arc;
use std::time::Duration;

/// What an [`Intercepted`] broker does instead of the wrapped broker's push, schedule and
/// fetch. Each method defaults to passing the call through to `inner`.
#[async_trait]
pub trait Intercept: Send + Sync + 'static {
    /// Replaces [`Broker::push`].
    async fn push(&self, inner: &dyn Broker, jobs: &[Enqueue]) -> BrokerResult<()> {
        inner.push(jobs).await
    }

    /// Replaces [`Broker::schedule`].
    async fn schedule(&self, inner: &dyn Broker, jobs: &[Scheduled]) -> BrokerResult<()> {
        inner.schedule(jobs).await
    }

    /// Replaces [`Broker::fetch`].
    async fn fetch(&self, inner: &dyn Broker, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        inner.fetch(req).await
    }
}

/// `inner` with push, schedule and fetch going through `hooks`.
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
impl<I: Intercept> Broker for Intercepted<I> {
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()> {
        self.hooks.push(&*self.inner, jobs).await
    }
    async fn schedule(&self, jobs: &[Scheduled]) -> BrokerResult<()> {
        self.hooks.schedule(&*self.inner, jobs).await
    }
    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        self.hooks.fetch(&*self.inner, req).await
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
    async fn paused_queues(&self) -> BrokerResult<Vec<String>> {
        self.inner.paused_queues().await
    }
    async fn record_metrics(
        &self,
        minute: i64,
        classes: &[errand::admin::ClassMetrics],
    ) -> BrokerResult<()> {
        self.inner.record_metrics(minute, classes).await
    }
}
