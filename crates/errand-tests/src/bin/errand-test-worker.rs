//! A worker process for the crash and shutdown tests, so they can SIGKILL or SIGTERM a real
//! process. Usage: `errand-test-worker <redis-url> <concurrency> <shutdown-timeout-ms>`.
//!
//! Jobs: `Ledger(n)` counts one execution of `n` in the hash `ledger`; `Sleepy(ms)` sleeps,
//! then counts `ms` in `ledger`. The process TTL is short (3 s) so recovery is quick to test.

use errand::redis::RedisBroker;
use errand::{Job, JobContext, JobError, JobResult, Server};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct Ledger(u64);

impl Job for Ledger {
    const NAME: &'static str = "Ledger";
    async fn perform(self, cx: &JobContext) -> JobResult {
        count(cx, self.0).await
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

async fn count(cx: &JobContext, n: u64) -> JobResult {
    let mut conn = cx
        .data::<ConnectionManager>()
        .ok_or_else(|| JobError::dead("no ledger connection"))?
        .clone();
    redis::cmd("HINCRBY")
        .arg("ledger")
        .arg(n)
        .arg(1)
        .query_async::<i64>(&mut conn)
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    errand_tests::init_tracing();
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let concurrency: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let shutdown_ms: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(25_000);
    let broker = RedisBroker::connect(&url).await?;
    let ledger = redis::Client::open(url.as_str())?
        .get_connection_manager()
        .await?;
    Server::builder(broker)
        .register::<Ledger>()
        .register::<Sleepy>()
        .data(ledger)
        .concurrency(concurrency)
        .heartbeat_interval(Duration::from_millis(500))
        .process_ttl(Duration::from_secs(3))
        .rescue_interval(Duration::from_secs(1))
        .poll_interval(Duration::from_secs(1))
        .shutdown_timeout(Duration::from_millis(shutdown_ms))
        .clear_middleware()
        .build()?
        .run()
        .await?;
    Ok(())
}
