//! Pattern: a distributed lock around order processing, with its fencing token checked by the
//! database.
//!
//! Why: two workers may process the same order at the same moment (the job was enqueued twice,
//! or a stalled worker's job was recovered and runs elsewhere). "Check whether the order is
//! paid, then charge it" is a race: both see "unpaid" and both charge. `cx.lock_wait` holds a
//! mutex named after the order across every process on the backend, so the second copy waits,
//! then sees "paid" and stops. A lock with a time-to-live alone is not enough, though: a holder
//! paused past its lease (a long stall, a SIGSTOP) wakes up still believing it holds the lock.
//! So the write also carries the guard's fencing token, which only grows, and the table refuses
//! a write whose token is older than the last one it accepted (`WHERE fence < ?token`).
//!
//! Run: `cargo run -p errand-examples --bin order_lock`

use errand::{Client, Job, JobContext, JobResult, Server};
use errand_examples::{Scratch, init_logging, quick, run_until};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Where the application's database lives, shared with the jobs.
struct AppDb(PathBuf);

/// Calls to the payment provider, and jobs finished.
#[derive(Default)]
struct Counters {
    charges: AtomicUsize,
    finished: AtomicUsize,
}

/// Charges order `order_id` unless it is already paid.
#[derive(Serialize, Deserialize)]
struct ProcessOrder {
    order_id: i64,
}

impl Job for ProcessOrder {
    const NAME: &'static str = "ProcessOrder";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let counters = cx.data::<Arc<Counters>>().expect("registered");
        // Held across every worker process; renewed while held; released when dropped. If
        // another copy holds it, wait up to 10 s, then snooze (run later, not a failure).
        let guard = cx
            .lock_wait(
                &format!("order-{}", self.order_id),
                Duration::from_secs(30),
                Duration::from_secs(10),
            )
            .await?;
        let db = rusqlite::Connection::open(&cx.data::<AppDb>().expect("registered").0)?;
        db.busy_timeout(Duration::from_secs(5))?;
        let paid: bool = db.query_row(
            "SELECT status = 'paid' FROM orders WHERE id = ?1",
            [self.order_id],
            |r| r.get(0),
        )?;
        if paid {
            println!("order {}: already paid, nothing to do", self.order_id);
        } else {
            // The payment call takes a moment: the window in which a second copy would charge.
            counters.charges.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            // The fenced write: refused if a newer holder has written since this one locked.
            let token = guard.token() as i64;
            let updated = db.execute(
                "UPDATE orders SET status = 'paid', fence = ?2 WHERE id = ?1 AND fence < ?2",
                (self.order_id, token),
            )?;
            assert_eq!(updated, 1, "this holder's token is the newest");
            println!("order {}: charged under lock token {token}", self.order_id);
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
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL,
                              fence INTEGER NOT NULL DEFAULT 0);
         INSERT INTO orders (id, status) VALUES (1001, 'unpaid'), (1002, 'unpaid');",
    )?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());
    // Each order enqueued three times (a double-submitted form, a retried webhook).
    for order_id in [1001, 1002] {
        for _ in 0..3 {
            client.push(ProcessOrder { order_id }).await?;
        }
    }
    let counters = Arc::new(Counters::default());
    // Ten workers: the three copies of an order run at the same moment.
    let server = quick(Server::builder(broker))
        .register::<ProcessOrder>()
        .data(AppDb(scratch.path("app.sqlite")))
        .data(counters.clone())
        .concurrency(10)
        .build()?;
    let done = counters.clone();
    run_until(server, Duration::from_secs(30), || {
        let done = done.clone();
        async move { done.finished.load(Ordering::SeqCst) == 6 }
    })
    .await?;

    let charges = counters.charges.load(Ordering::SeqCst);
    let paid: i64 = db.query_row(
        "SELECT COUNT(*) FROM orders WHERE status = 'paid'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(charges, 2, "one charge per order");
    assert_eq!(paid, 2);
    println!("ok: 6 jobs for 2 orders, 2 charges");
    Ok(())
}
