//! Pattern: an email sent once — a side effect that cannot be undone runs inside
//! `cx.once(..)`, and also writes a unique record, so a retry of the job does not send it again.
//!
//! Why: when a job fails *after* it sent an email, Sidekiq retries the whole job, and a naive
//! job sends the email again on every retry (customers get the same receipt 3 times).
//! `cx.once("send-email", ..)` records in the job backend that the step completed, with its
//! output; the retry skips the step and gets that output back. One window remains: a crash
//! after the send but before the record is written. The unique record closes it: the outbox row
//! is keyed by `cx.idempotency_key("send-email")`, the same in every attempt, so a second send
//! would hit `ON CONFLICT DO NOTHING` (with a mail API, pass the key as its idempotency key).
//!
//! Run: `cargo run -p errand-examples --bin email_once`

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

/// How many times the job ran, and how many times the email step ran.
#[derive(Default)]
struct Counters {
    attempts: AtomicUsize,
    sends: AtomicUsize,
}

/// Emails the receipt of order `order_id`, tells the CRM, and records the message on the order.
#[derive(Serialize, Deserialize)]
struct SendReceipt {
    order_id: i64,
}

impl Job for SendReceipt {
    const NAME: &'static str = "SendReceipt";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let counters = cx.data::<Arc<Counters>>().expect("registered");
        counters.attempts.fetch_add(1, Ordering::SeqCst);
        let path = &cx.data::<AppDb>().expect("registered").0;
        let key = cx.idempotency_key("send-email");
        // Step 1, at most once per job: "send" the email (queue it in the outbox).
        let message_id: i64 = cx
            .once("send-email", async {
                counters.sends.fetch_add(1, Ordering::SeqCst);
                let db = rusqlite::Connection::open(path)?;
                let address: String = db.query_row(
                    "SELECT email FROM orders WHERE id = ?1",
                    [self.order_id],
                    |r| r.get(0),
                )?;
                db.execute(
                    "INSERT INTO outbox (job_key, address, subject) VALUES (?1, ?2, ?3)
                     ON CONFLICT(job_key) DO NOTHING",
                    (
                        &key,
                        &address,
                        format!("Your receipt for order {}", self.order_id),
                    ),
                )?;
                println!("sent the receipt to {address}");
                db.query_row("SELECT id FROM outbox WHERE job_key = ?1", [&key], |r| {
                    r.get(0)
                })
            })
            .await?;
        // Step 2: the CRM is down on the first attempt, so the job fails after the email went
        // out and is retried; the retry skips step 1 and gets message_id back from the record.
        if cx.retry_count().is_none() {
            println!("the CRM is down; the job will be retried");
            return Err(JobError::retry("CRM returned 503").with_class("Crm::Unavailable"));
        }
        let db = rusqlite::Connection::open(path)?;
        db.execute(
            "UPDATE orders SET receipt_message_id = ?1 WHERE id = ?2",
            (message_id, self.order_id),
        )?;
        println!(
            "order {} marked as receipted (message {message_id})",
            self.order_id
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let db = scratch.app_db()?;
    db.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, email TEXT NOT NULL,
                              receipt_message_id INTEGER);
         CREATE TABLE outbox (id INTEGER PRIMARY KEY, job_key TEXT NOT NULL UNIQUE,
                              address TEXT NOT NULL, subject TEXT NOT NULL);
         INSERT INTO orders (id, email) VALUES (7, 'ada@example.com');",
    )?;
    let broker = scratch.broker().await?;
    Client::new(broker.clone())
        .push(SendReceipt { order_id: 7 })
        .await?;

    let counters = Arc::new(Counters::default());
    let server = quick(Server::builder(broker.clone()))
        .register::<SendReceipt>()
        .data(AppDb(scratch.path("app.sqlite")))
        .data(counters.clone())
        // Retry after 100 ms so the example finishes fast; production keeps Sidekiq's backoff.
        .retry_delay(|_| Duration::from_millis(100))
        .build()?;
    let app = &db;
    run_until(server, Duration::from_secs(30), || async move {
        app.query_row(
            "SELECT receipt_message_id IS NOT NULL FROM orders WHERE id = 7",
            [],
            |r| r.get(0),
        )
        .unwrap_or(false)
    })
    .await?;

    let emails: i64 = db.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    let attempts = counters.attempts.load(Ordering::SeqCst);
    let sends = counters.sends.load(Ordering::SeqCst);
    println!("the job ran {attempts} times; the email step ran {sends} time");
    assert_eq!(attempts, 2, "a failed attempt and a successful retry");
    assert_eq!((sends, emails), (1, 1), "one email, sent once");
    assert_eq!(entries(&broker, SetName::Retry).await?.len(), 0);
    println!("ok: 1 email in the outbox, sent once, job ran 2 times");
    Ok(())
}
