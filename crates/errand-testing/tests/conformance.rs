//! The backend conformance suite on [`MemoryBroker`], on the wall clock plus an offset that
//! `let_time_pass` moves forward: time flows as it does for a real server (whose retries and
//! schedules are written by the wall clock and promoted by the backend's clock), and the
//! cases can still skip ahead without sleeping.
//!
//! The admin suite runs here too, and runs against deliberately broken admin sides
//! ([`Broken`]) to show that its cases catch the bugs they are meant to.

use async_trait::async_trait;
use errand::admin::{
    Admin, BackendInfo, Counters, MoveToDead, MoveToQueue, ProcessRecord, QueueRange, QueueSummary,
    SetEntry, SetName, SetRange,
};
use errand::broker::{Broker, BrokerResult, RemoteSignal};
use errand::metrics::ClassMetrics;
use errand_backend_tests::{AdminBackend, AdminFactory, BackendFactory, Inspect, TestBackend};
use errand_testing::{ManualClock, MemoryBroker};

/// The wall clock plus an offset (the offset is a manual clock started at 0).
fn offset_clock(offset: &ManualClock) -> errand_testing::Clock {
    let offset = offset.clone();
    Arc::new(move || errand_core::now() + offset.now())
}
use std::sync::Arc;
use std::time::Duration;

struct Memory;

struct MemoryInspect {
    broker: MemoryBroker,
    clock: ManualClock,
}

#[async_trait]
impl Inspect for MemoryInspect {
    fn admin(&self) -> &dyn Admin {
        &self.broker
    }
    fn broker(&self) -> &dyn Broker {
        &self.broker
    }
    async fn push_signal(&self, identity: &str, name: &str) -> bool {
        self.broker.push_signal(identity, name);
        true
    }
    async fn let_time_pass(&self, by: Duration) {
        self.clock.advance(by);
    }
}

#[async_trait]
impl BackendFactory for Memory {
    fn name(&self) -> &str {
        "memory"
    }
    async fn new_backend(&self) -> TestBackend {
        let (broker, inspect) = memory();
        TestBackend {
            broker: Arc::new(broker),
            inspect,
        }
    }
}

/// A new MemoryBroker on its own offset clock, and its inspection view.
fn memory() -> (MemoryBroker, Arc<dyn Inspect>) {
    let clock = ManualClock::new(0.0);
    let broker = MemoryBroker::with_clock(offset_clock(&clock));
    let inspect = Arc::new(MemoryInspect {
        broker: broker.clone(),
        clock,
    });
    (broker, inspect)
}

#[async_trait]
impl AdminFactory for Memory {
    async fn new_admin_backend(&self) -> AdminBackend {
        let (broker, inspect) = memory();
        AdminBackend::new(Arc::new(broker), inspect)
    }
}

errand_backend_tests::conformance_tests!(Memory);
errand_backend_tests::admin_conformance_tests!(Memory);

// ---------------------------------------------------------------------------------------------
// Broken admin sides: each must fail the case written to catch its bug.

/// A bug planted in an otherwise correct admin side.
#[derive(Clone, Copy)]
enum Bug {
    /// `set_to_queue` pushes the member it removed, not the new payload (edits are lost).
    PushesTheOldMember,
    /// `queue_delete` removes every equal entry (`LREM 0`), not one.
    DeletesEveryCopy,
}

/// A MemoryBroker whose admin side has `.0`.
struct Broken(Bug);

/// MemoryBroker's admin side with a bug.
struct BrokenAdmin {
    inner: MemoryBroker,
    bug: Bug,
}

#[async_trait]
impl BackendFactory for Broken {
    fn name(&self) -> &str {
        "broken memory"
    }
    async fn new_backend(&self) -> TestBackend {
        Memory.new_backend().await
    }
}

#[async_trait]
impl AdminFactory for Broken {
    async fn new_admin_backend(&self) -> AdminBackend {
        let (broker, inspect) = memory();
        AdminBackend {
            broker: Arc::new(broker.clone()),
            admin: Arc::new(BrokenAdmin {
                inner: broker,
                bug: self.0,
            }),
            inspect,
        }
    }
}

#[async_trait]
impl Admin for BrokenAdmin {
    async fn counters(&self) -> BrokerResult<Counters> {
        self.inner.counters().await
    }
    async fn daily_counters(&self, dates: &[String]) -> BrokerResult<Vec<Counters>> {
        self.inner.daily_counters(dates).await
    }
    async fn backend_info(&self) -> BrokerResult<BackendInfo> {
        self.inner.backend_info().await
    }
    async fn queues(&self) -> BrokerResult<Vec<QueueSummary>> {
        self.inner.queues().await
    }
    async fn queue_page(&self, range: QueueRange<'_>) -> BrokerResult<Vec<String>> {
        let QueueRange {
            queue,
            offset,
            limit,
            order,
        } = range;
        self.inner
            .queue_page(QueueRange {
                queue,
                offset,
                limit,
                order,
            })
            .await
    }
    async fn queue_delete(&self, queue: &str, raw: &str) -> BrokerResult<bool> {
        let found = self.inner.queue_delete(queue, raw).await?;
        if found && matches!(self.bug, Bug::DeletesEveryCopy) {
            while self.inner.queue_delete(queue, raw).await? {}
        }
        Ok(found)
    }
    async fn queue_clear(&self, queue: &str) -> BrokerResult<u64> {
        self.inner.queue_clear(queue).await
    }
    async fn set_paused(&self, queue: &str, paused: bool) -> BrokerResult<()> {
        self.inner.set_paused(queue, paused).await
    }
    async fn set_size(&self, set: SetName) -> BrokerResult<u64> {
        self.inner.set_size(set).await
    }
    async fn set_page(&self, range: SetRange) -> BrokerResult<Vec<SetEntry>> {
        let SetRange {
            set,
            offset,
            limit,
            order,
        } = range;
        self.inner
            .set_page(SetRange {
                set,
                offset,
                limit,
                order,
            })
            .await
    }
    async fn set_at_score(&self, set: SetName, score: f64) -> BrokerResult<Vec<SetEntry>> {
        self.inner.set_at_score(set, score).await
    }
    async fn set_remove(&self, set: SetName, member: &str) -> BrokerResult<bool> {
        self.inner.set_remove(set, member).await
    }
    async fn set_to_queue(&self, mv: MoveToQueue<'_>) -> BrokerResult<bool> {
        let MoveToQueue {
            set,
            member,
            queue,
            payload,
        } = mv;
        let payload = match self.bug {
            Bug::PushesTheOldMember => member,
            _ => payload,
        };
        self.inner
            .set_to_queue(MoveToQueue {
                set,
                member,
                queue,
                payload,
            })
            .await
    }
    async fn set_to_dead(&self, mv: MoveToDead<'_>) -> BrokerResult<bool> {
        let MoveToDead {
            set,
            member,
            payload,
            now,
            limits,
        } = mv;
        self.inner
            .set_to_dead(MoveToDead {
                set,
                member,
                payload,
                now,
                limits,
            })
            .await
    }
    async fn set_clear(&self, set: SetName) -> BrokerResult<u64> {
        self.inner.set_clear(set).await
    }
    async fn processes(&self) -> BrokerResult<Vec<ProcessRecord>> {
        self.inner.processes().await
    }
    async fn signal(&self, identity: &str, signal: RemoteSignal) -> BrokerResult<()> {
        self.inner.signal(identity, signal).await
    }
    async fn metrics(&self, from_minute: i64, to_minute: i64) -> BrokerResult<Vec<ClassMetrics>> {
        self.inner.metrics(from_minute, to_minute).await
    }
    async fn metrics_totals(&self) -> BrokerResult<Vec<ClassMetrics>> {
        self.inner.metrics_totals().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "the new payload is pushed, not the member")]
async fn broken_set_to_queue_that_pushes_the_old_member_is_caught() {
    errand_backend_tests::admin_set_to_queue_moves_once_with_the_new_payload(&Broken(
        Bug::PushesTheOldMember,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "exactly one of the two copies went")]
async fn broken_queue_delete_that_removes_every_copy_is_caught() {
    errand_backend_tests::admin_queue_delete_removes_one_copy(&Broken(Bug::DeletesEveryCopy)).await;
}
