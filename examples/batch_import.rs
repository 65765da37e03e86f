//! Pattern: import a file as a batch — one job per row, a report when the last row is done,
//! an alert at the first row that cannot be imported.
//!
//! Why: a CSV upload of 500 rows is 500 jobs, but the person who uploaded it wants one answer:
//! "done: 499 imported, 1 rejected". A callback that counts finished rows itself races with the
//! rows (two last rows finishing at once both see "all done", or neither does); a batch records
//! each row's outcome in one atomic step with the callback's push, so the report is enqueued
//! exactly once, after the last row, with exact counts — even when a row needed a retry, and
//! even when a worker dies between running a row and recording it.
//!
//! Here the file is split by a job of the batch itself (`cx.batch()` adds the rows while the
//! batch runs), two rows fail once on a flaky lookup and succeed on their retry, and row 250
//! has an invalid email and dies. The report and the alert read the batch's status.
//!
//! Run: `cargo run -p errand-examples --bin batch_import`

use errand::{Batch, Client, Job, JobContext, JobError, JobOptions, JobResult, Server};
use errand_examples::{Scratch, init_logging, quick, run_until};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROWS: u64 = 500;

/// The application's database: imported customers and import reports.
#[derive(Clone)]
struct App(Arc<Mutex<rusqlite::Connection>>);

/// Splits an uploaded file into one `ImportRow` job per row, added to its own batch.
#[derive(Serialize, Deserialize)]
struct SplitFile {
    upload_id: u64,
    rows: u64,
}

impl Job for SplitFile {
    const NAME: &'static str = "SplitFile";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let batch = cx.batch().ok_or_else(|| JobError::dead("not in a batch"))?;
        let rows = (1..=self.rows).map(|row| ImportRow {
            upload_id: self.upload_id,
            row,
        });
        batch.push_bulk(rows).await?;
        Ok(())
    }
}

/// Imports one row (an upsert, so a rerun is harmless).
#[derive(Serialize, Deserialize)]
struct ImportRow {
    upload_id: u64,
    row: u64,
}

impl Job for ImportRow {
    const NAME: &'static str = "ImportRow";
    fn options() -> JobOptions {
        JobOptions::default().retry(3)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        if self.row == 250 {
            return Err(JobError::dead(format!(
                "row {}: invalid email \"bob@\"",
                self.row
            )));
        }
        // Rows 17 and 333 hit a flaky lookup on their first attempt.
        if (self.row == 17 || self.row == 333) && cx.retry_count().is_none() {
            return Err(JobError::retry("lookup service timed out"));
        }
        let app = cx.data::<App>().expect("app db");
        app.0.lock().unwrap().execute(
            "INSERT INTO customers (upload_id, row) VALUES (?1, ?2)
             ON CONFLICT (upload_id, row) DO NOTHING",
            (self.upload_id as i64, self.row as i64),
        )?;
        Ok(())
    }
}

/// The batch's `complete` callback: writes the import's report from the batch's status.
#[derive(Serialize, Deserialize)]
struct ImportReport {
    upload_id: u64,
}

impl Job for ImportReport {
    const NAME: &'static str = "ImportReport";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let (bid, event) = cx
            .batch_callback()
            .ok_or_else(|| JobError::dead("not a callback"))?;
        let status = cx
            .client()
            .batch_status(&bid)
            .await?
            .ok_or_else(|| JobError::dead("batch expired"))?;
        let app = cx.data::<App>().expect("app db");
        app.0.lock().unwrap().execute(
            "INSERT INTO reports (upload_id, event, total, pending, dead) VALUES (?1, ?2, ?3, ?4, ?5)",
            (
                self.upload_id as i64,
                event.as_str(),
                status.total as i64,
                status.pending as i64,
                status.dead as i64,
            ),
        )?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());
    let db = scratch.app_db()?;
    db.execute_batch(
        "CREATE TABLE customers (upload_id INTEGER, row INTEGER, PRIMARY KEY (upload_id, row));
         CREATE TABLE reports (upload_id INTEGER, event TEXT, total INTEGER, pending INTEGER,
                               dead INTEGER);",
    )?;
    let app = App(Arc::new(Mutex::new(db)));

    let upload_id = 7;
    let batch = Batch::new(&client)
        .description(format!("upload {upload_id}: customers.csv"))
        .on_complete(ImportReport { upload_id })
        .on_success(ImportReport { upload_id })
        .on_death(ImportReport { upload_id })
        .open()
        .await?;
    batch
        .push(SplitFile {
            upload_id,
            rows: ROWS,
        })
        .await?;
    let bid = batch.seal().await?;

    // Callbacks go to the `callbacks` queue, so a report never waits behind other imports.
    let server = quick(Server::builder(broker.clone()))
        .queues(["default", "callbacks"])
        // Retries come back fast in the example (Sidekiq's backoff waits 15 s or more).
        .retry_delay(|_| Duration::from_millis(100))
        .register::<SplitFile>()
        .register::<ImportRow>()
        .register::<ImportReport>()
        .data(app.clone())
        .build()?;
    let (client2, app2, bid2) = (client.clone(), app.clone(), bid.clone());
    run_until(server, Duration::from_secs(60), move || {
        let (client, app, bid) = (client2.clone(), app2.clone(), bid2.clone());
        async move {
            let complete = client
                .batch_status(&bid)
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.complete_at.is_some());
            let reports: i64 = app
                .0
                .lock()
                .unwrap()
                .query_row("SELECT count(*) FROM reports", [], |r| r.get(0))
                .unwrap_or(0);
            complete && reports >= 2
        }
    })
    .await?;

    let (imported, reports) = {
        let db = app.0.lock().unwrap();
        let imported: i64 = db.query_row("SELECT count(*) FROM customers", [], |r| r.get(0))?;
        let reports: Vec<(String, i64, i64, i64)> = db
            .prepare("SELECT event, total, pending, dead FROM reports ORDER BY event")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        (imported as u64, reports)
    };
    for (event, total, pending, dead) in &reports {
        println!("{event} callback: {total} jobs, {pending} pending, {dead} dead");
    }
    let status = client.batch_status(&bid).await?.expect("kept for a week");
    println!(
        "batch {}: {} jobs, {} pending, {} failed, {} dead ({})",
        status.description,
        status.total,
        status.pending,
        status.failed,
        status.dead,
        status.state()
    );
    assert_eq!(imported, ROWS - 1, "every row but the invalid one");
    assert_eq!(
        (status.total, status.pending, status.dead),
        (ROWS + 1, 0, 1),
        "the split job, its rows, the one dead row"
    );
    let events: Vec<&str> = reports.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        events,
        vec!["complete", "death"],
        "complete and death once each; no success (a row is dead)"
    );
    let complete = &reports[0];
    assert_eq!(
        (complete.2, complete.3),
        (0, 1),
        "complete ran after the last row"
    );
    println!(
        "ok: {imported} of {ROWS} rows imported, 1 dead (row 250: invalid email), rows 17 and 333 \
         retried once; the report ran once after the last row and the alert once; no success"
    );
    Ok(())
}
