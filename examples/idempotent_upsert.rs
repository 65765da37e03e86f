//! Pattern: idempotent database writes — write with an upsert keyed by the business identity,
//! so running the same job again leaves the same single row.
//!
//! Why: a job runs *at least* once, not exactly once. The same work arrives twice when it is
//! enqueued twice (a double-clicked button, a retried web request), and a job that fails after
//! its write is retried from the top, write included. A plain
//! `INSERT INTO order_totals (order_id, total_cents, items) VALUES (?1, ?2, ?3)` on a table
//! without a unique key would add a row on every run: below, 6 rows for 2 orders, and a revenue
//! report that counts order 1001 four times. A UNIQUE column plus
//! `INSERT ... ON CONFLICT(order_id) DO UPDATE` makes every run converge on one row holding the
//! current values.
//!
//! Run: `cargo run -p errand-examples --bin idempotent_upsert`

use errand::admin::SetName;
use errand::{Client, Job, JobContext, JobError, JobResult, Server};
use errand_examples::{Scratch, entries, init_logging, quick, run_until};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Where the application's database lives, shared with the jobs.
struct AppDb(PathBuf);

/// How many times the write ran, and how many jobs finished.
#[derive(Default)]
struct Counters {
    writes: AtomicUsize,
    finished: AtomicUsize,
}

/// Records the total of order `order_id` for reporting.
#[derive(Serialize, Deserialize)]
struct RecordOrderTotal {
    order_id: i64,
}

impl Job for RecordOrderTotal {
    const NAME: &'static str = "RecordOrderTotal";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let db = rusqlite::Connection::open(&cx.data::<AppDb>().expect("registered").0)?;
        // Jobs run concurrently: wait for another writer's lock instead of failing at once.
        db.busy_timeout(Duration::from_secs(5))?;
        let (total_cents, items): (i64, i64) = db.query_row(
            "SELECT SUM(price_cents * quantity), SUM(quantity) FROM order_lines WHERE order_id = ?1",
            [self.order_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        // The idempotent write: the first run inserts, every later run updates the same row.
        db.execute(
            "INSERT INTO order_totals (order_id, total_cents, items) VALUES (?1, ?2, ?3)
             ON CONFLICT(order_id) DO UPDATE SET total_cents = excluded.total_cents,
                                                 items = excluded.items",
            (self.order_id, total_cents, items),
        )?;
        let counters = cx.data::<Arc<Counters>>().expect("registered");
        counters.writes.fetch_add(1, Ordering::SeqCst);
        // A later step fails on each job's first attempt (the accounting service times out),
        // so the job is retried from the top and the write above runs again.
        if cx.retry_count().is_none() {
            return Err(
                JobError::retry("accounting service timed out").with_class("Ledger::Timeout")
            );
        }
        counters.finished.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let db = scratch.app_db()?;
    db.execute_batch(
        "CREATE TABLE order_lines (order_id INTEGER NOT NULL, price_cents INTEGER NOT NULL,
                                   quantity INTEGER NOT NULL);
         CREATE TABLE order_totals (order_id INTEGER NOT NULL UNIQUE,
                                    total_cents INTEGER NOT NULL, items INTEGER NOT NULL);
         INSERT INTO order_lines VALUES (1001, 1500, 2), (1001, 1500, 1), (1002, 1299, 1);",
    )?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());
    // The checkout page submitted order 1001 twice: two jobs for the same order.
    client.push(RecordOrderTotal { order_id: 1001 }).await?;
    client.push(RecordOrderTotal { order_id: 1001 }).await?;
    client.push(RecordOrderTotal { order_id: 1002 }).await?;

    let counters = Arc::new(Counters::default());
    let server = quick(Server::builder(broker.clone()))
        .register::<RecordOrderTotal>()
        .data(AppDb(scratch.path("app.sqlite")))
        .data(counters.clone())
        // Retry after 100 ms so the example finishes fast; production keeps Sidekiq's backoff.
        .retry_delay(|_| Duration::from_millis(100))
        .build()?;
    run_until(server, Duration::from_secs(30), || async {
        counters.finished.load(Ordering::SeqCst) == 3
    })
    .await?;

    let mut rows =
        db.prepare("SELECT order_id, total_cents, items FROM order_totals ORDER BY 1")?;
    let rows: Vec<(i64, i64, i64)> = rows
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (order, cents, items) in &rows {
        println!("order {order}: total {cents} cents, {items} items");
    }
    let writes = counters.writes.load(Ordering::SeqCst);
    println!("the write ran {writes} times for 3 jobs of 2 orders");
    assert_eq!(
        writes, 6,
        "each of the 3 jobs wrote on its failed attempt and on its retry"
    );
    assert_eq!(
        rows,
        vec![(1001, 4500, 3), (1002, 1299, 1)],
        "one row per order, with the current totals"
    );
    let retries = entries(&broker, SetName::Retry).await?.len();
    let dead = entries(&broker, SetName::Dead).await?.len();
    assert_eq!((retries, dead), (0, 0), "every job finished");
    println!("ok: 6 writes, 2 rows, one per order");
    Ok(())
}
