//! Pattern: classify errors — retry the ones time can fix, record and discard the ones it
//! cannot.
//!
//! Why: a dropped connection to the card processor says nothing about the payment; the same
//! request a few seconds later usually goes through, so `?` on the `io::Error` retries the job.
//! A declined card is an answer, not a failure: charging it again 25 times over three weeks
//! would annoy the bank and the customer and change nothing. The job records the decline on
//! the payment (so the app can ask for another card) and returns `JobError::discard`: counted
//! as failed and logged, never retried, never in the dead set.
//!
//! Run: `cargo run -p errand-examples --bin error_classification`

use errand::admin::{Admin, SetName};
use errand::{Client, Job, JobContext, JobError, JobResult, Server};
use errand_examples::{Scratch, entries, init_logging, quick, run_until};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the application's database lives, shared with the jobs.
struct AppDb(PathBuf);

/// A stand-in for the card processor's API: cards ending in 0002 are declined, and the
/// connection drops once, during the first charge of a 4242 card (a load balancer restart).
#[derive(Default)]
struct Gateway {
    dropped: AtomicBool,
}

enum Charge {
    Approved,
    Declined(&'static str),
}

impl Gateway {
    fn charge(&self, card: &str) -> io::Result<Charge> {
        if card.starts_with("4242") && !self.dropped.swap(true, Ordering::SeqCst) {
            let reset = io::ErrorKind::ConnectionReset;
            return Err(io::Error::new(reset, "connection reset by peer"));
        }
        if card.ends_with("0002") {
            return Ok(Charge::Declined("insufficient_funds"));
        }
        Ok(Charge::Approved)
    }
}

/// Charges payment `payment_id`.
#[derive(Serialize, Deserialize)]
struct ChargePayment {
    payment_id: i64,
}

impl Job for ChargePayment {
    const NAME: &'static str = "ChargePayment";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let id = self.payment_id;
        let db = rusqlite::Connection::open(&cx.data::<AppDb>().expect("registered").0)?;
        db.busy_timeout(Duration::from_secs(5))?;
        db.execute(
            "UPDATE payments SET attempts = attempts + 1 WHERE id = ?1",
            [id],
        )?;
        let card: String = db.query_row("SELECT card FROM payments WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
        // A network error is transient: `?` on the `io::Error` makes it a retryable failure
        // (error class `std::io::error::Error` in the Web UI). A real call would also send
        // `cx.idempotency_key("charge")`, so that a retried request the processor did receive
        // is not charged twice.
        let gateway = cx.data::<Gateway>().expect("registered");
        let outcome = gateway
            .charge(&card)
            .inspect_err(|e| println!("payment {id}: {e}; will retry"))?;
        match outcome {
            Charge::Approved => {
                db.execute("UPDATE payments SET status = 'paid' WHERE id = ?1", [id])?;
                println!("payment {id}: paid");
                Ok(())
            }
            Charge::Declined(reason) => {
                // Record the answer, so the app can ask the customer for another card.
                db.execute(
                    "UPDATE payments SET status = 'declined' WHERE id = ?1",
                    [id],
                )?;
                println!("payment {id}: declined ({reason}); not retried");
                Err(JobError::discard(format!("card declined: {reason}"))
                    .with_class("Payments::CardDeclined"))
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let db = scratch.app_db()?;
    db.execute_batch(
        "CREATE TABLE payments (id INTEGER PRIMARY KEY, card TEXT NOT NULL,
                                status TEXT NOT NULL DEFAULT 'pending',
                                attempts INTEGER NOT NULL DEFAULT 0);
         INSERT INTO payments (id, card) VALUES (1, '4242424242424242'), (2, '4000000000000002');",
    )?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());
    client.push(ChargePayment { payment_id: 1 }).await?;
    client.push(ChargePayment { payment_id: 2 }).await?;

    let server = quick(Server::builder(broker.clone()))
        .register::<ChargePayment>()
        .data(AppDb(scratch.path("app.sqlite")))
        .data(Gateway::default())
        // Retry after 100 ms so the example finishes fast; production keeps Sidekiq's backoff.
        .retry_delay(|_| Duration::from_millis(100))
        .build()?;
    let app = &db;
    run_until(server, Duration::from_secs(30), || async move {
        let sql = "SELECT COUNT(*) FROM payments WHERE status != 'pending'";
        app.query_row(sql, [], |r| r.get::<_, i64>(0))
            .is_ok_and(|n| n == 2)
    })
    .await?;

    let mut rows = db.prepare("SELECT id, status, attempts FROM payments ORDER BY id")?;
    let rows: Vec<(i64, String, i64)> = rows
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (id, status, attempts) in &rows {
        println!("payment {id}: {status}, attempts: {attempts}");
    }
    let want = vec![(1, "paid".to_string(), 2), (2, "declined".to_string(), 1)];
    assert_eq!(
        rows, want,
        "the network error was retried; the decline was not"
    );
    let retries = entries(&broker, SetName::Retry).await?.len();
    let dead = entries(&broker, SetName::Dead).await?.len();
    assert_eq!((retries, dead), (0, 0), "nothing waiting, nothing dead");
    let stats = broker.counters().await?;
    assert_eq!(
        (stats.processed, stats.failed),
        (3, 2),
        "3 attempts, 2 of them failed"
    );
    println!(
        "ok: network error retried once, then paid; card declined: 1 attempt, 0 retries, 0 dead"
    );
    Ok(())
}
