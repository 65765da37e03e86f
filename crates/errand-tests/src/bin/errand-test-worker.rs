//! A worker process for the crash and shutdown tests, so they can SIGKILL or SIGTERM a real
//! process. Usage: `errand-test-worker <backend> <concurrency> <shutdown-timeout-ms>
//! [<ledger-redis-url>]`, where the backend is a Redis URL, `sqlite:<path>` or a
//! `postgres://` URL.
//!
//! Jobs: `Noop(n)` does nothing; `Ledger(n)` counts one execution of `n` in the ledger;
//! `Sleepy(ms)` sleeps, then counts `ms`; `OnceEffect(n)` has a once-only effect and waits to
//! be killed on its first run (see the type); `ProcessOrder(id, mutex)` charges an order once
//! (with or without a mutex); `UniqueSleepy(ms)` is unique for 5 s; `Abort(n)` aborts the
//! process (a poison pill); `Sum(numbers)` takes big arguments; `Fenced(n, ms)` writes to a fenced store; `StartedAt(n)` records its start by Redis's
//! clock; `Flaky(n)` fails its first run; `Charge(n)` applies an effect once by its
//! idempotency key; `BatchDone(code)` is a batch callback that counts its runs; `Gated(n)`
//! waits for the ledger's gate entry; `Paced(n)` sleeps 5 ms and counts `n`. `ERRAND_TEST_QUEUES` lists the queues to work. `ERRAND_TEST_CLOCK_SKEW_S` skews the worker's clock,
//! `ERRAND_TEST_RETRY_DELAY_MS` replaces the retry backoff, `ERRAND_TEST_MAX_RECOVERIES` the
//! poison-pill threshold, and `FAILPOINTS` arms the crash
//! points of `errand`'s `failpoints` feature (`after_fetch=20*off->return`: the 21st pass exits
//! with status 137). The ledger is the Redis hash `ledger`, or for SQLite the table `ledger(n, runs)`
//! in the file `<path>.ledger`. The process TTL is short (3 s) so recovery is quick to test.

use errand::broker::Broker;
use errand::redis::RedisBroker;
use errand::{Job, JobContext, JobError, JobResult, Server};
use errand_sqlite::SqliteBroker;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where job effects are counted: outside the job system, as a real side effect would be.
#[derive(Clone)]
enum LedgerStore {
    Redis(ConnectionManager),
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    /// The table `public.ledger(n, runs)` of the job database.
    Postgres(Arc<errand::postgres::tokio_postgres::Client>),
}

/// Connects to the PostgreSQL ledger (the table is made by the test before the workers start).
async fn postgres_ledger(url: &str) -> anyhow::Result<errand::postgres::tokio_postgres::Client> {
    use errand::postgres::tokio_postgres;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Opens the SQLite ledger next to the job file (shared by every worker process).
fn sqlite_ledger(path: &str) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(format!("{path}.ledger"))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS ledger (n INTEGER PRIMARY KEY, runs INTEGER NOT NULL)",
    )?;
    Ok(conn)
}

#[derive(Serialize, Deserialize)]
struct Ledger(u64);

impl Job for Ledger {
    const NAME: &'static str = "Ledger";
    async fn perform(self, cx: &JobContext) -> JobResult {
        count(cx, self.0).await
    }
}

/// Does nothing: for throughput measurements of the job system alone.
#[derive(Serialize, Deserialize)]
struct Noop(u64);

impl Job for Noop {
    const NAME: &'static str = "Noop";
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Sleepy(u64);

impl Job for Sleepy {
    const NAME: &'static str = "Sleepy";
    async fn perform(self, cx: &JobContext) -> JobResult {
        tokio::time::sleep(Duration::from_millis(self.0)).await;
        count(cx, self.0).await
    }
}

/// A job with a once-only effect that waits to be killed on its first run: runs are counted
/// at ledger entry `RUNS + n`, the effect (inside `cx.once`) at `EFFECT + n`, and a finished
/// run at `DONE + n`. The crash test SIGKILLs the worker after the effect, before the job
/// completes, and checks that the retry on another worker does not repeat the effect.
#[derive(Serialize, Deserialize)]
struct OnceEffect(u64);

/// Ledger offsets of [`OnceEffect`]'s counters.
const EFFECT: u64 = 1_000_000;
const RUNS: u64 = 2_000_000;
const DONE: u64 = 3_000_000;

impl Job for OnceEffect {
    const NAME: &'static str = "OnceEffect";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let runs = bump(cx, RUNS + self.0).await?;
        cx.once("effect", async { bump(cx, EFFECT + self.0).await })
            .await?;
        if runs == 1 {
            // Killed here by the test: after the effect, before the job completes.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        bump(cx, DONE + self.0).await?;
        Ok(())
    }
}

/// Charges order `0` once unless it was already charged (check, a 2 ms "API call", then
/// record): a check-then-act race when copies of the job run at once. With `1 == true` the
/// job holds the mutex `order-<id>` around it. Charges count at ledger entry `CHARGED + id`.
#[derive(Serialize, Deserialize)]
struct ProcessOrder(u64, bool);

/// Ledger offsets of [`ProcessOrder`]'s counters.
const CHARGED: u64 = 4_000_000;
const PAID: u64 = 5_000_000;

impl Job for ProcessOrder {
    const NAME: &'static str = "ProcessOrder";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let _guard = if self.1 {
            let name = format!("order-{}", self.0);
            Some(
                cx.lock_wait(&name, Duration::from_secs(10), Duration::from_secs(30))
                    .await?,
            )
        } else {
            None
        };
        if read(cx, PAID + self.0).await? > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        bump(cx, CHARGED + self.0).await?;
        bump(cx, PAID + self.0).await?;
        Ok(())
    }
}

/// A unique job (unique for 5 s) that sleeps `0` ms, then counts it.
#[derive(Serialize, Deserialize)]
struct UniqueSleepy(u64);

impl Job for UniqueSleepy {
    const NAME: &'static str = "UniqueSleepy";
    fn options() -> errand::JobOptions {
        errand::JobOptions::default().unique_for(Duration::from_secs(5))
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        tokio::time::sleep(Duration::from_millis(self.0)).await;
        count(cx, self.0).await
    }
}

/// Kills its own process (`abort`): a poison pill, as an OOM kill or a crash in native code
/// would be.
#[derive(Serialize, Deserialize)]
struct Abort(u64);

impl Job for Abort {
    const NAME: &'static str = "Abort";
    async fn perform(self, cx: &JobContext) -> JobResult {
        bump(cx, ABORTS + self.0).await?;
        std::process::abort();
    }
}

/// Works for `1` ms, then writes job `0`'s result to a fenced store (Redis hashes `fence`,
/// `ledger`, `stale`): accepted only with a lease token larger than any seen for the job,
/// otherwise counted in `stale`. A stalled attempt that wakes up after its job was recovered
/// and finished elsewhere is refused there.
#[derive(Serialize, Deserialize)]
struct Fenced(u64, u64);

impl Job for Fenced {
    const NAME: &'static str = "Fenced";
    async fn perform(self, cx: &JobContext) -> JobResult {
        tokio::time::sleep(Duration::from_millis(self.1)).await;
        let Some(LedgerStore::Redis(conn)) = cx.data::<LedgerStore>() else {
            return Err(JobError::dead("Fenced needs a Redis ledger"));
        };
        let script = redis::Script::new(
            r"local seen = tonumber(redis.call('HGET', 'fence', ARGV[1]) or '0')
              if tonumber(ARGV[2]) <= seen then
                redis.call('HINCRBY', 'stale', ARGV[1], 1)
                return 0
              end
              redis.call('HSET', 'fence', ARGV[1], ARGV[2])
              redis.call('HINCRBY', 'ledger', ARGV[1], 1)
              return 1",
        );
        script
            .arg(self.0)
            .arg(cx.fencing_token())
            .invoke_async::<i64>(&mut conn.clone())
            .await?;
        Ok(())
    }
}

/// Records when it started, by the ledger Redis's clock (`TIME`), in hash `started`, and
/// counts the run: for the clock-skew test.
#[derive(Serialize, Deserialize)]
struct StartedAt(u64);

impl Job for StartedAt {
    const NAME: &'static str = "StartedAt";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let Some(LedgerStore::Redis(conn)) = cx.data::<LedgerStore>() else {
            return Err(JobError::dead("StartedAt needs a Redis ledger"));
        };
        let mut conn = conn.clone();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        redis::cmd("HSET")
            .arg("started")
            .arg(self.0)
            .arg(secs as f64 + micros as f64 / 1e6)
            .query_async::<i64>(&mut conn)
            .await?;
        count(cx, self.0).await
    }
}

/// Adds up its numbers and counts one run at ledger entry `SUMS` (big but legal arguments).
#[derive(Serialize, Deserialize)]
struct Sum(Vec<u64>);

/// Ledger entry of [`Sum`]'s runs.
const SUMS: u64 = 7_000_000;

impl Job for Sum {
    const NAME: &'static str = "Sum";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let total: u64 = self.0.iter().fold(0u64, |a, b| a.wrapping_add(*b));
        tracing::debug!(total, n = self.0.len(), "sum");
        count(cx, SUMS).await
    }
}

/// Fails its first run (runs counted at ledger entry `FLAKY_RUNS + n`) and counts a finished
/// run at entry `n`: every job takes the retry path once.
#[derive(Serialize, Deserialize)]
struct Flaky(u64);

/// Ledger offset of [`Flaky`]'s runs.
const FLAKY_RUNS: u64 = 8_000_000;

impl Job for Flaky {
    const NAME: &'static str = "Flaky";
    async fn perform(self, cx: &JobContext) -> JobResult {
        if bump(cx, FLAKY_RUNS + self.0).await? == 1 {
            return Err(JobError::retry("first run fails"));
        }
        count(cx, self.0).await
    }
}

/// Charges `n` once however often the job runs: one Lua step on the ledger Redis counts the
/// run (hash `runs`) and, only if the job's idempotency key is new (hash `applied`), applies
/// the effect (ledger entry `n`), as an API taking an idempotency key would.
#[derive(Serialize, Deserialize)]
struct Charge(u64);

impl Job for Charge {
    const NAME: &'static str = "Charge";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let Some(LedgerStore::Redis(conn)) = cx.data::<LedgerStore>() else {
            return Err(JobError::dead("Charge needs a Redis ledger"));
        };
        let script = redis::Script::new(
            r"redis.call('HINCRBY', 'runs', ARGV[2], 1)
              if redis.call('HSETNX', 'applied', ARGV[1], ARGV[2]) == 1 then
                redis.call('HINCRBY', 'ledger', ARGV[2], 1)
                return 1
              end
              return 0",
        );
        script
            .arg(cx.idempotency_key("charge"))
            .arg(self.0)
            .invoke_async::<i64>(&mut conn.clone())
            .await?;
        Ok(())
    }
}

/// Ledger offset of [`Abort`]'s runs.
const ABORTS: u64 = 6_000_000;

/// Counts its run, then allocates `1` MiB and touches every page: past the worker's memory
/// limit, the allocation fails and the process aborts (as an OOM kill would end it).
#[derive(Serialize, Deserialize)]
struct Hog(u64, usize);

impl Job for Hog {
    const NAME: &'static str = "Hog";
    async fn perform(self, cx: &JobContext) -> JobResult {
        bump(cx, HOGS + self.0).await?;
        let mut memory: Vec<u8> = Vec::with_capacity(self.1 << 20);
        memory.resize(self.1 << 20, 1);
        std::hint::black_box(&memory);
        Ok(())
    }
}

/// A periodic entry's job: records its tick (set `ticks`) and, per tick, the jids enqueued for
/// it (set `tick:<scheduled second>`): a tick enqueued twice shows two jids, a job merely run
/// twice (recovered from a killed worker) one.
#[derive(Serialize, Deserialize)]
struct Tick;

impl Job for Tick {
    const NAME: &'static str = "Tick";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let Some(LedgerStore::Redis(conn)) = cx.data::<LedgerStore>() else {
            return Err(JobError::dead("Tick needs a Redis ledger"));
        };
        let at = cx
            .scheduled_at()
            .ok_or_else(|| JobError::dead("not enqueued by a periodic entry"))?;
        let second = at.round() as i64;
        redis::pipe()
            .cmd("SADD")
            .arg("ticks")
            .arg(second)
            .ignore()
            .cmd("SADD")
            .arg(format!("tick:{second}"))
            .arg(cx.jid())
            .ignore()
            .query_async::<()>(&mut conn.clone())
            .await?;
        Ok(())
    }
}

/// Ledger offset of [`Hog`]'s runs.
const HOGS: u64 = 9_000_000;

/// Reads ledger entry `n` (0 when absent).
async fn read(cx: &JobContext, n: u64) -> Result<u64, JobError> {
    let store = cx
        .data::<LedgerStore>()
        .ok_or_else(|| JobError::dead("no ledger"))?
        .clone();
    match store {
        LedgerStore::Redis(mut conn) => Ok(redis::cmd("HGET")
            .arg("ledger")
            .arg(n)
            .query_async::<Option<u64>>(&mut conn)
            .await?
            .unwrap_or(0)),
        LedgerStore::Sqlite(conn) => {
            let runs = tokio::task::spawn_blocking(move || {
                conn.lock().unwrap_or_else(|p| p.into_inner()).query_row(
                    "SELECT COALESCE(MAX(runs), 0) FROM ledger WHERE n = ?1",
                    [n as i64],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .map_err(JobError::retry)??;
            Ok(runs as u64)
        }
        LedgerStore::Postgres(client) => {
            let runs: i64 = client
                .query_one(
                    "SELECT coalesce(max(runs), 0) FROM public.ledger WHERE n = $1",
                    &[&(n as i64)],
                )
                .await
                .map_err(JobError::retry)?
                .get(0);
            Ok(runs as u64)
        }
    }
}

async fn count(cx: &JobContext, n: u64) -> JobResult {
    bump(cx, n).await.map(drop)
}

/// Adds one to ledger entry `n`; returns the new count.
async fn bump(cx: &JobContext, n: u64) -> Result<u64, JobError> {
    let store = cx
        .data::<LedgerStore>()
        .ok_or_else(|| JobError::dead("no ledger"))?
        .clone();
    match store {
        LedgerStore::Redis(mut conn) => Ok(redis::cmd("HINCRBY")
            .arg("ledger")
            .arg(n)
            .arg(1)
            .query_async::<u64>(&mut conn)
            .await?),
        LedgerStore::Sqlite(conn) => {
            let runs = tokio::task::spawn_blocking(move || {
                conn.lock().unwrap_or_else(|p| p.into_inner()).query_row(
                    "INSERT INTO ledger(n, runs) VALUES (?1, 1)
                     ON CONFLICT(n) DO UPDATE SET runs = runs + 1 RETURNING runs",
                    [n as i64],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .map_err(JobError::retry)??;
            Ok(runs as u64)
        }
        LedgerStore::Postgres(client) => {
            let runs: i64 = client
                .query_one(
                    "INSERT INTO public.ledger AS l (n, runs) VALUES ($1, 1)
                     ON CONFLICT (n) DO UPDATE SET runs = l.runs + 1 RETURNING runs",
                    &[&(n as i64)],
                )
                .await
                .map_err(JobError::retry)?
                .get(0);
            Ok(runs as u64)
        }
    }
}

/// A batch callback (the batch crash tests): counts its run at `CALLBACK + code`, and at
/// `CALLBACK_EARLY + code` when its batch still had pending or dead jobs when it ran.
#[derive(Serialize, Deserialize)]
struct BatchDone(u64);

/// Ledger offsets of [`BatchDone`]'s counters.
const CALLBACK: u64 = 6_000_000;
const CALLBACK_EARLY: u64 = 7_000_000;

impl Job for BatchDone {
    const NAME: &'static str = "BatchDone";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let (bid, _) = cx
            .batch_callback()
            .ok_or_else(|| JobError::dead("not a batch callback"))?;
        let status = cx
            .client()
            .batch_status(&bid)
            .await?
            .ok_or_else(|| JobError::dead("the batch is gone"))?;
        if status.pending > 0 || status.dead > 0 {
            bump(cx, CALLBACK_EARLY + self.0).await?;
        }
        bump(cx, CALLBACK + self.0).await?;
        Ok(())
    }
}

/// Sleeps 5 ms, then counts `n`: a job slow enough that a test's kills land while a batch of
/// them runs.
#[derive(Serialize, Deserialize)]
struct Paced(u64);

impl Job for Paced {
    const NAME: &'static str = "Paced";
    async fn perform(self, cx: &JobContext) -> JobResult {
        tokio::time::sleep(Duration::from_millis(5)).await;
        count(cx, self.0).await
    }
}

/// Waits until the ledger's entry `GATE` is set (polling every 2 ms), then counts `n`: many
/// of them finish at one instant when the test sets the gate.
#[derive(Serialize, Deserialize)]
struct Gated(u64);

/// The ledger entry [`Gated`] jobs wait for.
const GATE: u64 = 8_000_000;

impl Job for Gated {
    const NAME: &'static str = "Gated";
    async fn perform(self, cx: &JobContext) -> JobResult {
        while read(cx, GATE).await? == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        count(cx, self.0).await
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    errand_tests::init_tracing();
    // Arms the crash points named in `FAILPOINTS` (none when it is unset).
    let _failpoints = fail::FailScenario::setup();
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let concurrency: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let shutdown_ms: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(25_000);
    // The ledger may live on a Redis of its own, so a fault on the job Redis leaves it intact.
    let ledger_url = args.get(4).cloned().unwrap_or_else(|| url.clone());
    let (broker, ledger): (Arc<dyn Broker>, LedgerStore) = match url.strip_prefix("sqlite:") {
        Some(path) => (
            Arc::new(SqliteBroker::open(path).await?),
            LedgerStore::Sqlite(Arc::new(Mutex::new(sqlite_ledger(path)?))),
        ),
        None if url.starts_with("postgres://") => (
            Arc::new(errand::postgres::PostgresBroker::connect(&url).await?),
            LedgerStore::Postgres(Arc::new(postgres_ledger(&url).await?)),
        ),
        None => (
            Arc::new(RedisBroker::connect(&url).await?),
            LedgerStore::Redis(
                redis::Client::open(ledger_url.as_str())?
                    .get_connection_manager()
                    .await?,
            ),
        ),
    };
    // A worker whose clock is off by this many seconds (the clock-skew test).
    let skew: Option<f64> = std::env::var("ERRAND_TEST_CLOCK_SKEW_S")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut builder = Server::builder_arc(broker);
    if let Some(skew) = skew {
        builder = builder.clock(Arc::new(move || errand_core::now() + skew));
    }
    if let Some(ms) = std::env::var("ERRAND_TEST_RETRY_DELAY_MS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        builder = builder.retry_delay(move |_| Duration::from_millis(ms));
    }
    if let Some(n) = std::env::var("ERRAND_TEST_MAX_RECOVERIES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        builder = builder.max_recoveries(n);
    }
    // A periodic entry on this cron expression (the periodic test), with a short leader lease.
    if let Ok(spec) = std::env::var("ERRAND_TEST_PERIODIC") {
        builder = builder
            .periodic_entry(errand::Periodic::new("tick", spec, Tick))
            .periodic_leader_ttl(Duration::from_secs(2));
    }
    // The queues to work (comma-separated; `default` when unset).
    if let Ok(queues) = std::env::var("ERRAND_TEST_QUEUES") {
        builder = builder.queues(queues.split(',').map(str::to_string));
    }
    builder
        .register::<Tick>()
        .register::<BatchDone>()
        .register::<Gated>()
        .register::<Paced>()
        .register::<Ledger>()
        .register::<Sleepy>()
        .register::<Noop>()
        .register::<OnceEffect>()
        .register::<ProcessOrder>()
        .register::<UniqueSleepy>()
        .register::<Abort>()
        .register::<Hog>()
        .register::<Sum>()
        .register::<Fenced>()
        .register::<StartedAt>()
        .register::<Flaky>()
        .register::<Charge>()
        .data(ledger)
        .concurrency(concurrency)
        .heartbeat_interval(Duration::from_millis(500))
        .process_ttl(Duration::from_secs(3))
        .rescue_interval(Duration::from_secs(1))
        .shutdown_timeout(Duration::from_millis(shutdown_ms))
        .clear_middleware()
        .build()?
        .run()
        .await?;
    Ok(())
}
