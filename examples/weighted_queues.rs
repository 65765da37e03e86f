//! Pattern: weighted queues, so a million-row bulk export does not delay critical jobs.
//!
//! Why: a bulk job split into a thousand chunks puts a thousand jobs in front of anything
//! pushed after it. On one shared queue, a password reset requested during the export would
//! wait for all of them, and the user would give up. On its own `critical` queue, with
//! `weighted_queues`, each fetch tries `critical` first with probability 10/16 (and before
//! `bulk` 10 times in 11), so the reset starts within a fetch or two, while `bulk` still gets
//! every slot the other queues leave free and is never starved.
//!
//! Run: `cargo run -p errand-examples --bin weighted_queues`

use errand::{Client, Job, JobContext, JobOptions, JobResult, Server};
use errand_examples::{Scratch, init_logging, quick, run_until};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ROWS: u64 = 1_000_000;
const CHUNK: u64 = 1_000;
const CHUNKS: u64 = ROWS / CHUNK;

/// What the jobs report, shared with `main`.
#[derive(Default)]
struct Progress {
    chunks: AtomicU64,
    rows: AtomicU64,
    row_id_sum: AtomicU64,
    bytes: AtomicU64,
    /// Chunks done when the reset started, and its wait from enqueue to start in ms.
    reset: Mutex<Option<(u64, f64)>>,
}

/// Splits an export of `rows` rows into chunk jobs on the `bulk` queue.
#[derive(Serialize, Deserialize)]
struct BulkExport {
    rows: u64,
}

impl Job for BulkExport {
    const NAME: &'static str = "BulkExport";
    fn options() -> JobOptions {
        JobOptions::default().queue("bulk")
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let chunks = (0..self.rows)
            .step_by(CHUNK as usize)
            .map(|first_row| ExportChunk {
                first_row,
                rows: CHUNK.min(self.rows - first_row),
            });
        cx.client().push_bulk(chunks).await?;
        Ok(())
    }
}

/// Formats rows `first_row..first_row + rows` as CSV (a stand-in for writing a file part).
#[derive(Serialize, Deserialize)]
struct ExportChunk {
    first_row: u64,
    rows: u64,
}

impl Job for ExportChunk {
    const NAME: &'static str = "ExportChunk";
    fn options() -> JobOptions {
        JobOptions::default().queue("bulk")
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let mut csv = String::with_capacity(32 * self.rows as usize);
        let mut id_sum = 0;
        for id in self.first_row..self.first_row + self.rows {
            writeln!(csv, "{id},customer{id}@example.com,{}", id % 997)?;
            id_sum += id;
        }
        let progress = cx.data::<Arc<Progress>>().expect("registered");
        progress.rows.fetch_add(self.rows, Relaxed);
        progress.row_id_sum.fetch_add(id_sum, Relaxed);
        progress.bytes.fetch_add(csv.len() as u64, Relaxed);
        progress.chunks.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// Emails a password reset link: a user is waiting for it.
#[derive(Serialize, Deserialize)]
struct PasswordReset {
    user_id: i64,
}

impl Job for PasswordReset {
    const NAME: &'static str = "PasswordReset";
    fn options() -> JobOptions {
        JobOptions::default().queue("critical")
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let progress = cx.data::<Arc<Progress>>().expect("registered");
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        let waited = now - cx.payload().time("enqueued_at").unwrap_or(now);
        let chunks = progress.chunks.load(Relaxed);
        *progress.reset.lock().unwrap() = Some((chunks, waited * 1000.0));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());
    let progress = Arc::new(Progress::default());
    client.push(BulkExport { rows: ROWS }).await?;

    // A user asks for a password reset once the export is under way.
    let (watch, pusher) = (progress.clone(), client.clone());
    let reset_pushed = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while watch.chunks.load(Relaxed) < 20 {
            anyhow::ensure!(Instant::now() < deadline, "the export did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let done = watch.chunks.load(Relaxed);
        pusher.push(PasswordReset { user_id: 42 }).await?;
        anyhow::Ok(done)
    });

    let server = quick(Server::builder(broker.clone()))
        .register::<BulkExport>()
        .register::<ExportChunk>()
        .register::<PasswordReset>()
        .data(progress.clone())
        .weighted_queues([("critical", 10), ("default", 5), ("bulk", 1)])
        .build()?;
    let started = Instant::now();
    run_until(server, Duration::from_secs(120), || async {
        progress.rows.load(Relaxed) == ROWS && progress.reset.lock().unwrap().is_some()
    })
    .await?;
    let elapsed = started.elapsed();

    let pushed_after = reset_pushed.await??;
    let (started_after, wait_ms) = progress.reset.lock().unwrap().expect("ran");
    let rows = progress.rows.load(Relaxed);
    let mb = progress.bytes.load(Relaxed) as f64 / 1e6;
    let secs = elapsed.as_secs_f64();
    println!("password reset pushed after {pushed_after} chunks, started after {started_after}");
    println!("password reset waited {wait_ms:.1} ms from enqueue to start");
    println!("exported {rows} rows ({mb:.1} MB of CSV) in {CHUNKS} chunks in {secs:.1} s");
    // Every row exactly once: the count and the sum of the ids 0..ROWS both match.
    let id_sum = progress.row_id_sum.load(Relaxed);
    assert_eq!((rows, id_sum), (ROWS, ROWS * (ROWS - 1) / 2));
    // A wide margin: in practice the reset starts within a fetch or two of its push.
    assert!(
        started_after < CHUNKS / 2,
        "it waited for {started_after} chunks"
    );
    println!("ok: {ROWS} rows exported; the password reset did not wait for the export");
    Ok(())
}
