//! Pattern: a thin job around a service object — the job loads the record by id and hands it
//! to a service that does the real work.
//!
//! Why: the business logic (here: finishing a signup) then lives in a plain struct that a web
//! handler, a console or a test can call without any job machinery, and has one owner. The job
//! is left with what only a job needs to decide: which record, and what to do when it is gone
//! (return early: retrying cannot bring a deleted user back). Its tests, at the bottom of this
//! file, are short for the same reason: they check the wiring, not the signup rules.
//!
//! Run: `cargo run -p errand-examples --bin service_object`
//! Tests: `cargo test -p errand-examples --bin service_object`

use errand::admin::Admin;
use errand::{Client, Job, JobContext, JobResult, Server};
use errand_examples::{Scratch, init_logging, quick, run_until};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const SCHEMA: &str = "
    CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, active INTEGER NOT NULL);
    CREATE TABLE workspaces (owner_id INTEGER NOT NULL UNIQUE, name TEXT NOT NULL);
    CREATE TABLE outbox (user_id INTEGER NOT NULL, template TEXT NOT NULL);";

struct User {
    id: i64,
    name: String,
}

/// Finishes a signup: the user's first workspace, the welcome email, the account activated.
struct SignupService {
    db: PathBuf,
}

impl SignupService {
    fn connect(&self) -> rusqlite::Result<Connection> {
        let db = Connection::open(&self.db)?;
        db.busy_timeout(Duration::from_secs(5))?;
        Ok(db)
    }

    fn find_user(&self, id: i64) -> rusqlite::Result<Option<User>> {
        self.connect()?
            .query_row("SELECT id, name FROM users WHERE id = ?1", [id], |r| {
                Ok(User {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            })
            .optional()
    }

    /// All or nothing (one transaction), and only once per user: a retry or a duplicate job,
    /// even one running at the same time, changes nothing more.
    fn complete(&self, user: &User) -> rusqlite::Result<()> {
        let mut db = self.connect()?;
        let tx = db.transaction()?;
        // The activation is the guard: only the first run finds the user inactive.
        let activated = "UPDATE users SET active = 1 WHERE id = ?1 AND active = 0";
        if tx.execute(activated, [user.id])? == 0 {
            return Ok(()); // already done (dropping `tx` ends the transaction)
        }
        tx.execute(
            "INSERT INTO workspaces (owner_id, name) VALUES (?1, ?2)",
            (user.id, format!("{}'s workspace", user.name)),
        )?;
        tx.execute(
            "INSERT INTO outbox (user_id, template) VALUES (?1, 'welcome')",
            [user.id],
        )?;
        tx.commit()
    }
}

/// Completes the signup of user `user_id`.
#[derive(Serialize, Deserialize)]
struct CompleteSignup {
    user_id: i64,
}

impl Job for CompleteSignup {
    const NAME: &'static str = "CompleteSignup";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let signups = cx.data::<Arc<SignupService>>().expect("registered");
        let Some(user) = signups.find_user(self.user_id)? else {
            println!("user {} no longer exists; nothing to do", self.user_id);
            return Ok(());
        };
        signups.complete(&user)?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let db = scratch.app_db()?;
    db.execute_batch(SCHEMA)?;
    db.execute("INSERT INTO users VALUES (1, 'Ada', 0)", [])?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());
    client.push(CompleteSignup { user_id: 1 }).await?;
    // User 2 deleted their account before the job ran.
    client.push(CompleteSignup { user_id: 2 }).await?;

    let service = Arc::new(SignupService {
        db: scratch.path("app.sqlite"),
    });
    let server = quick(Server::builder(broker.clone()))
        .register::<CompleteSignup>()
        .data(service)
        .build()?;
    let stats = broker.clone();
    run_until(server, Duration::from_secs(30), || async {
        stats.counters().await.is_ok_and(|s| s.processed == 2)
    })
    .await?;

    let (workspace, active): (String, bool) = db.query_row(
        "SELECT w.name, u.active FROM workspaces w JOIN users u ON u.id = w.owner_id",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let emails: i64 = db.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    println!("user 1: active, {workspace:?} created, {emails} welcome email queued");
    assert!(active && emails == 1);
    assert_eq!(
        broker.counters().await?.failed,
        0,
        "the missing user ended the job cleanly"
    );
    println!("ok: signup completed for user 1, user 2 skipped, 0 failures");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use errand_testing::TestJobs;

    /// An app database with user 1 (not yet active), and a test harness whose jobs get the
    /// service over it.
    fn setup() -> (Scratch, Connection, TestJobs) {
        let scratch = Scratch::new().unwrap();
        let db = scratch.app_db().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        db.execute("INSERT INTO users VALUES (1, 'Ada', 0)", [])
            .unwrap();
        let service = Arc::new(SignupService {
            db: scratch.path("app.sqlite"),
        });
        let jobs =
            TestJobs::with_server(move |s| s.register::<CompleteSignup>().data(service.clone()));
        (scratch, db, jobs)
    }

    fn count(db: &Connection, sql: &str) -> i64 {
        db.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn calls_the_service() {
        let (_scratch, db, jobs) = setup();
        jobs.perform(CompleteSignup { user_id: 1 }).await.unwrap();
        assert_eq!(count(&db, "SELECT active FROM users WHERE id = 1"), 1);
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM workspaces WHERE owner_id = 1"),
            1
        );
    }

    #[tokio::test]
    async fn returns_early_when_the_user_is_missing() {
        let (_scratch, db, jobs) = setup();
        assert!(jobs.perform(CompleteSignup { user_id: 99 }).await.is_ok());
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM workspaces"),
            0,
            "nothing created"
        );
        assert_eq!(count(&db, "SELECT COUNT(*) FROM outbox"), 0, "nothing sent");
    }
}
