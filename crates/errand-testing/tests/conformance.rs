//! The backend conformance suite on [`MemoryBroker`], on the wall clock plus an offset that
//! `let_time_pass` moves forward: time flows as it does for a real server (whose retries and
//! schedules are written by the wall clock and promoted by the backend's clock), and the
//! cases can still skip ahead without sleeping.

use async_trait::async_trait;
use errand_backend_tests::{BackendFactory, Inspect, StatCounts, TestBackend};
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
    async fn queue(&self, name: &str) -> Vec<String> {
        self.broker.queue(name)
    }
    async fn known_queues(&self) -> Vec<String> {
        self.broker.known_queues()
    }
    async fn set(&self, name: &str) -> Vec<(f64, String)> {
        self.broker.set(name)
    }
    async fn in_flight(&self, identity: &str, queue: &str) -> Vec<String> {
        self.broker
            .in_flight(identity)
            .into_iter()
            .filter(|(q, _)| q == queue)
            .map(|(_, raw)| raw)
            .collect()
    }
    async fn stats(&self) -> StatCounts {
        let s = self.broker.stats();
        StatCounts {
            processed: s.processed,
            failed: s.failed,
        }
    }
    async fn daily_stats(&self, date: &str) -> StatCounts {
        let s = self.broker.daily_stats(date);
        StatCounts {
            processed: s.processed,
            failed: s.failed,
        }
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
        let clock = ManualClock::new(0.0);
        let broker = MemoryBroker::with_clock(offset_clock(&clock));
        TestBackend {
            broker: Arc::new(broker.clone()),
            inspect: Arc::new(MemoryInspect { broker, clock }),
        }
    }
}

errand_backend_tests::conformance_tests!(Memory);
