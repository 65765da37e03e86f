// The apalis side of scripts/bench-vs-pg-peers: the same phases as scripts/pg-peers-bench.mjs
// (bulk enqueue, one-at-a-time enqueue, drain, latency at a paced rate, worker CPU per 100k
// jobs) against apalis 1.0 with its PostgreSQL storage (the `apalis-postgres` 1.0 crate; the
// older `apalis-sql` postgres backend is superseded by it), on the database at URL. Prints one
// JSON object with the keys pg-peers-bench.mjs prints.
//
// Usage: apalis-bench URL JOBS SINGLE CONCURRENCY RATE SECONDS
//
// Only the crates' public APIs are used: `PostgresStorage` (`setup`, `push_bulk`, `push`), its
// `Config` and `Pubsub` (LISTEN/NOTIFY), and apalis's `WorkerBuilder` and poll strategies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_postgres::{Config, PostgresStorage, Pubsub};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Semaphore;

const BATCH: usize = 10_000;
const QUEUE: &str = "noop";
const WORKERS: usize = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    n: u64,
    /// Wall-clock push time in ms since the epoch, set only in the latency phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<f64>,
}

static DONE: AtomicUsize = AtomicUsize::new(0);
static LATENCIES: Mutex<Vec<f64>> = Mutex::new(Vec::new());

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn cpu_s() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as isize - 1).max(0) as usize;
    sorted[i]
}

/// The no-op handler: counts itself and, for the latency phase's jobs, records now − push time.
async fn noop(job: Job) -> Result<(), BoxDynError> {
    if let Some(t) = job.t {
        LATENCIES.lock().unwrap().push(now_ms() - t);
    }
    DONE.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

async fn wait_for(n: usize, limit_s: u64) -> Result<(), BoxDynError> {
    let deadline = Instant::now() + Duration::from_secs(limit_s);
    while DONE.load(Ordering::SeqCst) < n {
        if Instant::now() > deadline {
            let done = DONE.load(Ordering::SeqCst);
            return Err(format!("only {done} of {n} jobs ran in {limit_s} s").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// The LISTEN/NOTIFY wake-up, as a poll strategy that takes every notification waiting and so
/// always leaves its waker with the listener. `PostgresStorage::with_pubsub` wraps the same
/// `Pubsub` stream in apalis's `StreamStrategy`, which takes one notification per poll: when that
/// poll's fetch comes back empty (the fetch raced the insert), the worker parks with the next
/// notifications already queued and nothing to wake it, and the jobs wait for the next interval
/// poll (measured: p50 ~200 ms, max ~1 s at 1000 jobs/s with a 1 s interval; stalls as long as
/// the interval with a longer one).
struct Drain<S>(S);

impl<S: Stream + Unpin> PollStrategy for Drain<S> {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut woken = false;
        loop {
            match self.0.poll_next_unpin(cx) {
                Poll::Ready(Some(_)) => woken = true,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending if woken => return Poll::Ready(Some(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize)]
struct Out {
    system: &'static str,
    bulk_jobs_s: f64,
    single_jobs_s: f64,
    drain_jobs_s: f64,
    cpu_s_per_100k: f64,
    latency_ms: Latency,
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: apalis-bench URL JOBS SINGLE CONCURRENCY RATE SECONDS (bad {name})");
        std::process::exit(2)
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxDynError> {
    let args: Vec<String> = std::env::args().collect();
    let url: String = arg(&args, 1, "URL");
    let jobs: usize = arg(&args, 2, "JOBS");
    let single: usize = arg(&args, 3, "SINGLE");
    let concurrency: usize = arg(&args, 4, "CONCURRENCY");
    let rate: f64 = arg(&args, 5, "RATE");
    let seconds: f64 = arg(&args, 6, "SECONDS");

    // Room for the workers' fetches and acknowledgements, their LISTEN connections and the
    // latency phase's 64 pushes in flight (sqlx's default pool holds 10).
    let pool = PgPoolOptions::new()
        .max_connections((2 * WORKERS + 64 + 5) as u32)
        .connect(&url)
        .await?;
    PostgresStorage::setup(&pool).await?;
    let config = Config::default().queue(QUEUE);
    let mut storage: PostgresStorage<Job> = PostgresStorage::new(&pool).with_config(config.clone());

    // Bulk enqueue: batches of BATCH jobs, each one `push_bulk` (one multi-row INSERT).
    let t = Instant::now();
    let mut i = 0;
    while i < jobs {
        let batch = (i..(i + BATCH).min(jobs))
            .map(|n| Job {
                n: n as u64,
                t: None,
            })
            .collect();
        storage.push_bulk(batch).await?;
        i += BATCH;
    }
    let bulk_jobs_s = jobs as f64 / t.elapsed().as_secs_f64();

    // One-at-a-time enqueue.
    let t = Instant::now();
    for n in 0..single {
        storage
            .push(Job {
                n: n as u64,
                t: None,
            })
            .await?;
    }
    let single_jobs_s = single as f64 / t.elapsed().as_secs_f64();

    // Drain. An apalis worker fetches a batch, runs its tasks concurrently (up to the
    // `concurrency` layer's limit) and writes their locks and results back in batched statements,
    // one step at a time; separate workers fetch and acknowledge in parallel. The shape is
    // pg-boss's in pg-peers-bench.mjs: WORKERS workers, each fetching up to CONCURRENCY × 4 jobs,
    // here with CONCURRENCY jobs in flight in all. Measured on the 2-core machine (20k jobs, 1000
    // jobs/s latency phase, a few runs each, noisy): this drained 12–19k jobs/s at p50 85–170 ms;
    // one worker fetching 100 drained 6–10k jobs/s at p50 13–46 ms; one worker fetching 25, or
    // CONCURRENCY workers fetching 10 or 25, drained 2–7k jobs/s at p50 85–740 ms.
    //
    // Each worker is woken by LISTEN/NOTIFY on new jobs (`Drain`, above), with a 1 s interval
    // poll as a safety net (graphile-worker's pollInterval in pg-peers-bench.mjs).
    let cpu0 = cpu_s();
    let t = Instant::now();
    for w in 0..WORKERS {
        let backend = PostgresStorage::<Job>::new(&pool)
            .with_config(config.clone().batch_size(concurrency * 4))
            .poll_with_strategy(Drain(Pubsub::new(pool.clone(), QUEUE.to_string())))
            .poll_with_strategy(Strategy::new().interval(Duration::from_secs(1)));
        let worker = WorkerBuilder::new(format!("bench-{w}"))
            .backend(backend)
            .concurrency(concurrency.div_ceil(WORKERS))
            .build(noop);
        tokio::spawn(async move {
            if let Err(e) = worker.run().await {
                eprintln!("apalis worker {w}: {e}");
                std::process::exit(1);
            }
        });
    }
    wait_for(jobs + single, 600).await?;
    let drain_s = t.elapsed().as_secs_f64();
    let drain_jobs_s = (jobs + single) as f64 / drain_s;
    let cpu_s_per_100k = (cpu_s() - cpu0) * 100_000.0 / (jobs + single) as f64;

    // Latency: paced pushes at RATE jobs/s for SECONDS, up to 64 in flight.
    LATENCIES.lock().unwrap().clear();
    let before = DONE.load(Ordering::SeqCst);
    let total = (rate * seconds).round() as usize;
    let in_flight = Arc::new(Semaphore::new(64));
    let start = Instant::now();
    let mut pushes = Vec::with_capacity(total);
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let mut s = storage.clone();
        let job = Job {
            n: n as u64,
            t: Some(now_ms()),
        };
        pushes.push(tokio::spawn(async move {
            let r = s.push(job).await;
            drop(permit);
            r
        }));
    }
    for p in pushes {
        p.await??;
    }
    wait_for(before + total, 120).await?;
    let mut sorted = std::mem::take(&mut *LATENCIES.lock().unwrap());
    sorted.sort_by(|a, b| a.total_cmp(b));
    let latency_ms = Latency {
        p50: pct(&sorted, 0.5),
        p99: pct(&sorted, 0.99),
        max: *sorted.last().unwrap(),
    };

    let out = Out {
        system: "apalis",
        bulk_jobs_s,
        single_jobs_s,
        drain_jobs_s,
        cpu_s_per_100k,
        latency_ms,
    };
    println!("{}", serde_json::to_string(&out)?);
    std::process::exit(0);
}
