//! Transactional enqueue (issue 15): `Client::push_tx` (SQLite) and `Client::push_pg_tx`
//! (PostgreSQL, on a server the test starts) write the job inside the application's own
//! transaction. A rolled-back transaction leaves neither the business row nor the job; a
//! committed one leaves both and the job runs; a process SIGKILLed between the write and the
//! commit leaves neither.

use errand::sqlite::SqliteBroker;
use errand::sqlite::rusqlite::{Connection, OptionalExtension};
use errand::{Client, Job, JobContext, JobOptions, JobResult, Push, Server};
use errand_tests::wait_until;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct SendReceipt {
    order_id: i64,
}

/// The receipts sent, by order.
#[derive(Default)]
struct Sent(Mutex<Vec<i64>>);

impl Job for SendReceipt {
    const NAME: &'static str = "SendReceipt";
    async fn perform(self, cx: &JobContext) -> JobResult {
        cx.data::<Arc<Sent>>()
            .expect("sent")
            .0
            .lock()
            .unwrap()
            .push(self.order_id);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct UniqueReceipt;

impl Job for UniqueReceipt {
    const NAME: &'static str = "UniqueReceipt";
    fn options() -> JobOptions {
        JobOptions::default().unique_for(Duration::from_secs(60))
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Ok(())
    }
}

fn jobs_in(path: &std::path::Path) -> i64 {
    let db = Connection::open(path).unwrap();
    db.query_row("SELECT count(*) FROM jobs WHERE state IN (0, 2)", [], |r| {
        r.get(0)
    })
    .unwrap()
}

fn order(path: &std::path::Path, id: i64) -> Option<i64> {
    let db = Connection::open(path).unwrap();
    db.query_row("SELECT total FROM orders WHERE id = ?1", [id], |r| r.get(0))
        .optional()
        .unwrap()
}

async fn setup() -> (tempfile::TempDir, std::path::PathBuf, SqliteBroker) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sqlite");
    let broker = SqliteBroker::open(&path).await.unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL)")
        .unwrap();
    (dir, path, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_exists_if_and_only_if_its_transaction_commits() {
    let (_dir, path, broker) = setup().await;
    let client = Client::new(broker.clone());
    let mut db = Connection::open(&path).unwrap();

    // Rolled back: neither the order nor its job.
    let tx = db.transaction().unwrap();
    tx.execute("INSERT INTO orders(id, total) VALUES (1, 4500)", [])
        .unwrap();
    client.push_tx(&tx, SendReceipt { order_id: 1 }).unwrap();
    let jids = client
        .push_bulk_tx(&tx, (10..13).map(|order_id| SendReceipt { order_id }))
        .unwrap();
    assert_eq!(jids.len(), 3);
    tx.rollback().unwrap();
    assert_eq!(order(&path, 1), None);
    assert_eq!(jobs_in(&path), 0, "the jobs went with the rollback");

    // Committed: both; a scheduled push in the same transaction too.
    let tx = db.transaction().unwrap();
    tx.execute("INSERT INTO orders(id, total) VALUES (2, 990)", [])
        .unwrap();
    let jid = client.push_tx(&tx, SendReceipt { order_id: 2 }).unwrap();
    client
        .push_tx_with(
            &tx,
            SendReceipt { order_id: 3 },
            Push::new().delay(Duration::from_millis(300)),
        )
        .unwrap();
    client
        .push_bulk_tx(&tx, (4..7).map(|order_id| SendReceipt { order_id }))
        .unwrap();
    assert_eq!(jobs_in(&path), 0, "not visible before the commit");
    tx.commit().unwrap();
    assert_eq!(order(&path, 2), Some(990));
    assert_eq!(jobs_in(&path), 5);
    assert_eq!(jid.len(), 24);

    // Unique jobs take their key through the backend: refused here, with the reason.
    let tx = db.transaction().unwrap();
    let err = client.push_tx(&tx, UniqueReceipt).unwrap_err().to_string();
    assert!(err.contains("unique or debounced"), "{err}");
    drop(tx);

    let sent = Arc::new(Sent::default());
    let server = Server::builder(broker)
        .register::<SendReceipt>()
        .data(sent.clone())
        .poll_interval(Duration::from_millis(100))
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    wait_until(
        "the five committed jobs to run",
        Duration::from_secs(20),
        || async { sent.0.lock().unwrap().len() == 5 },
    )
    .await;
    handle.stop();
    running.await.unwrap().unwrap();
    let mut ran = sent.0.lock().unwrap().clone();
    ran.sort();
    assert_eq!(
        ran,
        vec![2, 3, 4, 5, 6],
        "the rolled-back transaction's receipts never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_commit_leaves_neither_the_row_nor_the_job() {
    let (_dir, path, _broker) = setup().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_errand-tx-crash"))
        .arg(&path)
        .arg("7")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("written"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "killed before the commit: {:?}",
        out.status
    );
    assert_eq!(order(&path, 7), None);
    assert_eq!(
        jobs_in(&path),
        0,
        "the job went with the uncommitted transaction"
    );
    // The file is usable: the lock the dead process held is gone.
    let client = Client::new(SqliteBroker::open(&path).await.unwrap());
    let mut db = Connection::open(&path).unwrap();
    let tx = db.transaction().unwrap();
    tx.execute("INSERT INTO orders(id, total) VALUES (7, 4500)", [])
        .unwrap();
    client.push_tx(&tx, SendReceipt { order_id: 7 }).unwrap();
    tx.commit().unwrap();
    assert_eq!(jobs_in(&path), 1);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

use errand::postgres::{PostgresBroker, tokio_postgres};
use errand_tests::PostgresServer;

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// The orders with id `order`, and every job stored.
async fn pg_counts(db: &tokio_postgres::Client, order: i64) -> (i64, i64) {
    let orders: i64 = db
        .query_one("SELECT count(*) FROM orders WHERE id = $1", &[&order])
        .await
        .unwrap()
        .get(0);
    // Every job of the test's schema (each test has its own server).
    let jobs: i64 = db
        .query_one("SELECT count(*) FROM errand.jobs", &[])
        .await
        .unwrap()
        .get(0);
    (orders, jobs)
}

async fn pg_setup() -> (PostgresServer, PostgresBroker, tokio_postgres::Client) {
    let server = PostgresServer::start();
    let pg = PostgresBroker::connect(&server.url()).await.unwrap();
    let db = pg_client(&server.url()).await;
    db.batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, total bigint NOT NULL)")
        .await
        .unwrap();
    (server, pg, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_job_exists_if_and_only_if_its_transaction_commits() {
    let (server, pg, mut db) = pg_setup().await;
    let observer = pg_client(&server.url()).await;
    let client = Client::new(pg.clone());

    let tx = db.transaction().await.unwrap();
    tx.execute("INSERT INTO orders(id, total) VALUES (1, 4500)", &[])
        .await
        .unwrap();
    client
        .push_pg_tx(&pg, &tx, SendReceipt { order_id: 1 })
        .await
        .unwrap();
    client
        .push_bulk_pg_tx(&pg, &tx, (10..13).map(|order_id| SendReceipt { order_id }))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        pg_counts(&observer, 1).await,
        (0, 0),
        "the job went with the rollback"
    );

    let tx = db.transaction().await.unwrap();
    tx.execute("INSERT INTO orders(id, total) VALUES (2, 990)", &[])
        .await
        .unwrap();
    client
        .push_pg_tx(&pg, &tx, SendReceipt { order_id: 2 })
        .await
        .unwrap();
    client
        .push_pg_tx_with(
            &pg,
            &tx,
            SendReceipt { order_id: 3 },
            Push::new().delay(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let jids = client
        .push_bulk_pg_tx(&pg, &tx, (4..7).map(|order_id| SendReceipt { order_id }))
        .await
        .unwrap();
    assert_eq!(jids.len(), 3);
    assert_eq!(
        pg_counts(&observer, 2).await,
        (0, 0),
        "not visible before the commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        pg_counts(&observer, 2).await,
        (1, 5),
        "the order and its five jobs"
    );

    let tx = db.transaction().await.unwrap();
    let err = client
        .push_pg_tx(&pg, &tx, UniqueReceipt)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unique or debounced"), "{err}");
    drop(tx);

    let sent = Arc::new(Sent::default());
    let server = Server::builder(pg)
        .register::<SendReceipt>()
        .data(sent.clone())
        .poll_interval(Duration::from_millis(100))
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    wait_until(
        "the five committed jobs to run",
        Duration::from_secs(20),
        || async { sent.0.lock().unwrap().len() == 5 },
    )
    .await;
    handle.stop();
    running.await.unwrap().unwrap();
    let mut ran = sent.0.lock().unwrap().clone();
    ran.sort();
    assert_eq!(
        ran,
        vec![2, 3, 4, 5, 6],
        "the rolled-back transaction's receipts never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_crash_before_the_commit_leaves_neither_the_row_nor_the_job() {
    let (server, _pg, db) = pg_setup().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_errand-tx-crash"))
        .arg(server.url())
        .arg("7")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("written"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "killed before the commit");
    // The server rolls the dead client's transaction back when its connection closes.
    wait_until(
        "the dead transaction to be gone",
        Duration::from_secs(20),
        || async {
            let open: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            open == 0
        },
    )
    .await;
    assert_eq!(pg_counts(&db, 7).await, (0, 0));
}
