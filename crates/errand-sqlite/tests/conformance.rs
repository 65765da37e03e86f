//! The backend conformance suites (the broker's and the admin side's) on SQLite: each case on
//! its own file in its own temp dir.

use async_trait::async_trait;
use errand_backend_tests::{AdminBackend, AdminFactory, BackendFactory, Inspect, TestBackend};
use errand_core::admin::Admin;
use errand_core::broker::Broker;
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
    fn admin(&self) -> &dyn Admin {
        &self.0
    }
    fn broker(&self) -> &dyn Broker {
        &self.0
    }
    async fn push_signal(&self, identity: &str, name: &str) -> bool {
        // Any name, as a foreign writer could leave it: the admin API sends only known ones.
        let db = rusqlite::Connection::open(self.0.path()).expect("open the file");
        db.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        db.execute(
            "INSERT INTO signals(identity, name) VALUES (?1, ?2)",
            [identity, name],
        )
        .expect("insert a signal");
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
