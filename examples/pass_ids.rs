//! Pattern: pass IDs, not objects — and a record deleted before its job runs ends the job
//! cleanly, with no retry.
//!
//! Why: a job's arguments are stored as JSON and may run minutes (or, after retries, days)
//! later. A serialized copy of the user would be stale by then, and large; the ID lets the job
//! load the current record when it runs. When the record is gone (the user deleted their
//! account in the meantime), there is nothing left to do: retrying cannot bring the user back,
//! so the job returns `Ok(())` and says so in the log, instead of failing 25 times.
//!
//! Run: `cargo run -p errand-examples --bin pass_ids`

use errand::admin::{Admin, SetName};
use errand::{Client, Job, JobContext, JobResult, Server};
use errand_examples::{Scratch, entries, init_logging, quick, run_until};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Where the application's database lives, shared with the jobs.
struct AppDb(PathBuf);

/// Sends the welcome email to user `user_id`. Only the ID travels.
#[derive(Serialize, Deserialize)]
struct WelcomeEmail {
    user_id: i64,
}

impl Job for WelcomeEmail {
    const NAME: &'static str = "WelcomeEmail";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let db = rusqlite::Connection::open(&cx.data::<AppDb>().expect("registered").0)?;
        // Load the record as it is now, not as it was when the job was enqueued.
        let email: Option<String> = match db.query_row(
            "SELECT email FROM users WHERE id = ?1",
            [self.user_id],
            |r| r.get(0),
        ) {
            Ok(email) => Some(email),
            Err(rusqlite::Error::QueryReturnedNoRows) => None,
            Err(e) => return Err(e.into()), // a real database error: retry
        };
        let Some(email) = email else {
            println!(
                "user {} was deleted before the job ran; nothing to send",
                self.user_id
            );
            return Ok(());
        };
        db.execute(
            "INSERT INTO outbox(user_id, address) VALUES (?1, ?2)",
            (self.user_id, &email),
        )?;
        println!("sent a welcome email to {email}");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let db = scratch.app_db()?;
    db.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
         CREATE TABLE outbox (user_id INTEGER NOT NULL, address TEXT NOT NULL);
         INSERT INTO users VALUES (1, 'ada@example.com'), (2, 'grace@example.com');",
    )?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());
    client.push(WelcomeEmail { user_id: 1 }).await?;
    client.push(WelcomeEmail { user_id: 2 }).await?;
    // User 2 deletes their account while the jobs wait in the queue.
    db.execute("DELETE FROM users WHERE id = 2", [])?;

    let server = quick(Server::builder(broker.clone()))
        .register::<WelcomeEmail>()
        .data(AppDb(scratch.path("app.sqlite")))
        .build()?;
    let stats = broker.clone();
    run_until(server, Duration::from_secs(30), || async {
        stats
            .counters()
            .await
            .map(|s| s.processed == 2)
            .unwrap_or(false)
    })
    .await?;

    let sent: i64 = db.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    let retries = entries(&broker, SetName::Retry).await?.len();
    let dead = entries(&broker, SetName::Dead).await?.len();
    assert_eq!(sent, 1, "one email, to the user who still exists");
    assert_eq!(
        (retries, dead),
        (0, 0),
        "the deleted user's job ended cleanly"
    );
    println!("ok: 1 email sent, 0 retries, 0 dead");
    Ok(())
}
