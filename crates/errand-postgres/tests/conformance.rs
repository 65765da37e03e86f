//! The backend conformance suites (the broker's and the admin side's) on PostgreSQL: each case
//! on a server of its own (`initdb` + `pg_ctl` in a temporary folder, a free port), each
//! backend it asks for in a schema of its own.

use async_trait::async_trait;
use errand_backend_tests::{AdminBackend, AdminFactory, BackendFactory, Inspect, TestBackend};
use errand_core::admin::Admin;
use errand_core::broker::Broker;
use errand_postgres::{PostgresBroker, PostgresConfig};
use errand_tests::PostgresServer;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Made once per case: its server, stopped when the case ends.
struct Postgres {
    server: PostgresServer,
    opened: Mutex<u32>,
}

impl Postgres {
    fn new() -> Self {
        Self {
            server: PostgresServer::start(),
            opened: Mutex::new(0),
        }
    }

    /// A broker on a new schema of its own.
    async fn open_new(&self) -> (PostgresBroker, String) {
        let n = {
            let mut opened = self.opened.lock().unwrap();
            *opened += 1;
            *opened
        };
        let schema = format!("errand_{n}");
        let broker = PostgresBroker::connect_with(
            PostgresConfig::new(self.server.url()).schema(schema.clone()),
        )
        .await
        .expect("connect to postgres");
        (broker, schema)
    }
}

struct PostgresInspect {
    broker: PostgresBroker,
    url: String,
    schema: String,
}

#[async_trait]
impl Inspect for PostgresInspect {
    fn admin(&self) -> &dyn Admin {
        &self.broker
    }
    fn broker(&self) -> &dyn Broker {
        &self.broker
    }
    async fn push_signal(&self, identity: &str, name: &str) -> bool {
        // Any name, as a foreign writer could leave it: the admin API sends only known ones.
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .execute(
                &format!(
                    "INSERT INTO \"{}\".signals(identity, name) VALUES ($1, $2)",
                    self.schema
                ),
                &[&identity, &name],
            )
            .await
            .expect("insert a signal");
        true
    }
    async fn let_time_pass(&self, _by: Duration) {
        // Real time (the server's clock): the cases wait on conditions with deadlines.
    }
}

#[async_trait]
impl BackendFactory for Postgres {
    fn name(&self) -> &str {
        "postgres"
    }
    async fn new_backend(&self) -> TestBackend {
        let (broker, schema) = self.open_new().await;
        TestBackend {
            broker: Arc::new(broker.clone()),
            inspect: Arc::new(PostgresInspect {
                broker,
                url: self.server.url(),
                schema,
            }),
        }
    }
}

#[async_trait]
impl AdminFactory for Postgres {
    async fn new_admin_backend(&self) -> AdminBackend {
        let (broker, schema) = self.open_new().await;
        AdminBackend::new(
            Arc::new(broker.clone()),
            Arc::new(PostgresInspect {
                broker,
                url: self.server.url(),
                schema,
            }),
        )
    }
}

errand_backend_tests::conformance_tests!(Postgres::new());
errand_backend_tests::admin_conformance_tests!(Postgres::new());
