//! The backend conformance suites (the broker's and the admin side's) on SQLite: each case on
//! its own file in its own temp dir.

use async_trait::async_trait;
use errand_backend_tests::{
    AdminBackend, AdminFactory, BackendFactory, Inspect, StatCounts, TestBackend,
};
use errand_sqlite::SqliteBroker;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Made once per case; keeps the case's temp dir (and so its file) alive until the case ends.
struct Sqlite {
    dir: tempfile::TempDir,
    opened: Mutex<u32>,
}

impl Sqlite {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            opened: Mutex::new(0),
        }
    }
}

impl Sqlite {
    /// A broker on a new file of its own in the case's temp dir.
    async fn open_new(&self) -> SqliteBroker {
        let n = {
            let mut opened = self.opened.lock().unwrap();
            *opened += 1;
            *opened
        };
        SqliteBroker::open(self.dir.path().join(format!("errand-{n}.sqlite")))
            .await
            .expect("open sqlite")
    }
}

struct SqliteInspect(SqliteBroker);

#[async_trait]
impl Inspect for SqliteInspect {
    async fn queue(&self, name: &str) -> Vec<String> {
        self.0.queue(name).await.expect("queue")
    }
    async fn queue_len(&self, name: &str) -> usize {
        self.0.queue_len(name).await.expect("queue_len")
    }
    async fn known_queues(&self) -> Vec<String> {
        self.0.known_queues().await.expect("known_queues")
    }
    async fn set(&self, name: &str) -> Vec<(f64, String)> {
        self.0.set(name).await.expect("set")
    }
    async fn in_flight(&self, identity: &str, queue: &str) -> Vec<String> {
        self.0.in_flight(identity, queue).await.expect("in_flight")
    }
    async fn stats(&self) -> StatCounts {
        let s = self.0.stats().await.expect("stats");
        StatCounts {
            processed: s.processed,
            failed: s.failed,
        }
    }
    async fn daily_stats(&self, date: &str) -> StatCounts {
        let s = self.0.daily_stats(date).await.expect("daily stats");
        StatCounts {
            processed: s.processed,
            failed: s.failed,
        }
    }
    async fn push_signal(&self, identity: &str, name: &str) -> bool {
        self.0
            .push_signal(identity, name)
            .await
            .expect("push_signal");
        true
    }
    async fn let_time_pass(&self, _by: Duration) {
        // Real time: the cases wait on conditions with deadlines.
    }
}

#[async_trait]
impl BackendFactory for Sqlite {
    fn name(&self) -> &str {
        "sqlite"
    }
    async fn new_backend(&self) -> TestBackend {
        let broker = self.open_new().await;
        TestBackend {
            broker: Arc::new(broker.clone()),
            inspect: Arc::new(SqliteInspect(broker)),
        }
    }
}

#[async_trait]
impl AdminFactory for Sqlite {
    async fn new_admin_backend(&self) -> AdminBackend {
        let broker = self.open_new().await;
        AdminBackend::new(Arc::new(broker.clone()), Arc::new(SqliteInspect(broker)))
    }
}

errand_backend_tests::conformance_tests!(Sqlite::new());
errand_backend_tests::admin_conformance_tests!(Sqlite::new());
