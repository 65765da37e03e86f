//! Batches under crashes, with real worker processes on a real Redis: a batch of 10,000 jobs
//! on three workers, one of them killed again and again (between finishing a job and recording
//! it in the batch, between recording and acking, and at random), fires `complete` and
//! `success` exactly once each, after its last job, with exact counts; and a hundred last jobs
//! finishing at the same instant on three processes fire each callback once.

use errand::redis::RedisBroker;
use errand::{Batch, Client};
use errand_tests::{RedisServer, Worker, wait_until_sync};
use redis::Commands;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_errand-test-worker");
/// Ledger offsets of the worker's `BatchDone` callback.
const CALLBACK: u64 = 6_000_000;
const CALLBACK_EARLY: u64 = 7_000_000;
/// The ledger entry `Gated` jobs wait for.
const GATE: u64 = 8_000_000;

// The worker's jobs, pushed by name.
#[derive(Serialize, Deserialize)]
struct Paced(u64);
impl errand::Job for Paced {
    const NAME: &'static str = "Paced";
    async fn perform(self, _: &errand::JobContext) -> errand::JobResult {
        unreachable!("run by the worker process")
    }
}

#[derive(Serialize, Deserialize)]
struct Gated(u64);
impl errand::Job for Gated {
    const NAME: &'static str = "Gated";
    async fn perform(self, _: &errand::JobContext) -> errand::JobResult {
        unreachable!("run by the worker process")
    }
}

#[derive(Serialize, Deserialize)]
struct BatchDone(u64);
impl errand::Job for BatchDone {
    const NAME: &'static str = "BatchDone";
    async fn perform(self, _: &errand::JobContext) -> errand::JobResult {
        unreachable!("run by the worker process")
    }
}

/// A worker on `url` working `queues`, armed with `failpoints` when given.
fn spawn(url: &str, concurrency: usize, queues: &str, failpoints: Option<&str>) -> Worker {
    let mut cmd = Command::new(BIN);
    cmd.args([url, &concurrency.to_string(), "5000"])
        .env_remove("FAILPOINTS")
        .env("ERRAND_TEST_QUEUES", queues)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
        );
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
    Worker(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start errand-test-worker"),
    )
}

fn ledger(conn: &mut redis::Connection, n: u64) -> u64 {
    conn.hget::<_, _, Option<u64>>("ledger", n)
        .unwrap()
        .unwrap_or(0)
}

/// Waits until nothing is waiting, scheduled, retrying or in flight: every rerun has run.
fn wait_quiet(conn: &mut redis::Connection) {
    wait_until_sync(
        "every queue and set to drain",
        Duration::from_secs(120),
        || {
            let inflight: Vec<String> = conn.keys("errand:inflight:*").unwrap();
            let held: usize = inflight
                .iter()
                .map(|k| conn.hlen::<_, usize>(k).unwrap())
                .sum();
            held == 0
                && conn.llen::<_, usize>("queue:default").unwrap() == 0
                && conn.llen::<_, usize>("queue:callbacks").unwrap() == 0
                && conn.zcard::<_, usize>("retry").unwrap() == 0
                && conn.zcard::<_, usize>("schedule").unwrap() == 0
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_counts_exactly_and_calls_back_once_while_a_worker_is_killed_again_and_again() {
    const JOBS: u64 = 10_000;
    const VICTIM_CONCURRENCY: usize = 10;
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    let batch = Batch::new(&client)
        .description("crash test")
        .on_complete(BatchDone(1))
        .on_success(BatchDone(2))
        .open()
        .await
        .unwrap();
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(1_000) {
        batch
            .push_bulk(chunk.iter().map(|&n| Paced(n)))
            .await
            .unwrap();
    }
    let bid = batch.seal().await.unwrap();
    let mut conn = redis.conn();
    // The survivors also work the callbacks queue; the victim only the batch's jobs, so a
    // callback is never killed halfway (a callback is a job: at least once, like any other).
    let mut survivors = [
        spawn(&url, 2, "default,callbacks", None),
        spawn(&url, 2, "default,callbacks", None),
    ];
    // Kills: at the 30th pass of a crash point (after the job ran and before its batch record;
    // after the record and before the ack), or a plain SIGKILL after 300 more jobs ran.
    let plans: [Option<&str>; 9] = [
        Some("after_execute_before_ack=30*off->return"),
        Some("after_batch_record=30*off->return"),
        None,
        Some("after_batch_record=30*off->return"),
        Some("after_execute_before_ack=30*off->return"),
        None,
        Some("after_batch_record=30*off->return"),
        Some("after_execute_before_ack=30*off->return"),
        None,
    ];
    let mut kills_while_open = 0;
    for plan in plans {
        let before = conn.hlen::<_, u64>("ledger").unwrap();
        let mut victim = spawn(&url, VICTIM_CONCURRENCY, "default", plan);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if victim.0.try_wait().unwrap().is_some() {
                break;
            }
            if plan.is_none() && conn.hlen::<_, u64>("ledger").unwrap() >= before + 300 {
                victim.kill().unwrap();
                victim.wait().unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "the victim never crashed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = client.batch_status(&bid).await.unwrap().unwrap();
        if status.complete_at.is_none() {
            kills_while_open += 1;
        }
    }
    for s in &mut survivors {
        s.assert_running();
    }
    wait_until_sync("both callbacks to run", Duration::from_secs(120), || {
        ledger(&mut conn, CALLBACK + 1) >= 1 && ledger(&mut conn, CALLBACK + 2) >= 1
    });
    wait_quiet(&mut conn);
    let runs: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    let ran = (0..JOBS).filter(|n| runs.contains_key(n)).count() as u64;
    let duplicates: u64 = (0..JOBS)
        .map(|n| runs.get(&n).copied().unwrap_or(0))
        .sum::<u64>()
        - ran;
    eprintln!(
        "batch crash test: {kills_while_open} kills while the batch was open, {duplicates} duplicate runs"
    );
    assert_eq!(ran, JOBS, "every job ran");
    assert!(
        kills_while_open >= 6,
        "the kills must land while the batch runs: {kills_while_open}"
    );
    assert_eq!(ledger(&mut conn, CALLBACK + 1), 1, "on_complete ran once");
    assert_eq!(ledger(&mut conn, CALLBACK + 2), 1, "on_success ran once");
    assert_eq!(
        ledger(&mut conn, CALLBACK_EARLY + 1),
        0,
        "on_complete after the last job"
    );
    assert_eq!(
        ledger(&mut conn, CALLBACK_EARLY + 2),
        0,
        "on_success after the last job"
    );
    let status = client.batch_status(&bid).await.unwrap().unwrap();
    assert_eq!(
        (status.total, status.pending, status.failed, status.dead),
        (JOBS, 0, 0, 0),
        "exact counts"
    );
    assert!(status.complete_at.is_some() && status.success_at.is_some());
    assert!(
        duplicates <= kills_while_open as u64 * VICTIM_CONCURRENCY as u64,
        "{duplicates} duplicates: more than the jobs held by the killed processes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_last_jobs_finishing_at_once_on_three_processes_call_back_once() {
    const JOBS: u64 = 100;
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    let mut conn = redis.conn();
    let mut workers = [
        spawn(&url, 40, "default,callbacks", None),
        spawn(&url, 40, "default,callbacks", None),
        spawn(&url, 40, "default,callbacks", None),
    ];
    let batch = Batch::new(&client)
        .on_complete(BatchDone(1))
        .on_success(BatchDone(2))
        .open()
        .await
        .unwrap();
    batch.push_bulk((0..JOBS).map(Gated)).await.unwrap();
    let bid = batch.seal().await.unwrap();
    // Every job running, on all three processes, before the gate opens.
    wait_until_sync(
        "all hundred jobs to be running",
        Duration::from_secs(60),
        || {
            let inflight: Vec<String> = conn.keys("errand:inflight:*").unwrap();
            let per_process: Vec<usize> = inflight
                .iter()
                .map(|k| conn.hlen::<_, usize>(k).unwrap())
                .filter(|&n| n > 0)
                .collect();
            per_process.iter().sum::<usize>() == JOBS as usize && per_process.len() == 3
        },
    );
    let _: () = conn.hset("ledger", GATE, 1).unwrap();
    wait_until_sync("both callbacks to run", Duration::from_secs(60), || {
        ledger(&mut conn, CALLBACK + 1) >= 1 && ledger(&mut conn, CALLBACK + 2) >= 1
    });
    wait_quiet(&mut conn);
    for w in &mut workers {
        w.assert_running();
    }
    assert_eq!(ledger(&mut conn, CALLBACK + 1), 1, "on_complete ran once");
    assert_eq!(ledger(&mut conn, CALLBACK + 2), 1, "on_success ran once");
    assert_eq!(ledger(&mut conn, CALLBACK_EARLY + 1), 0);
    assert_eq!(ledger(&mut conn, CALLBACK_EARLY + 2), 0);
    assert!(
        (0..JOBS).all(|n| ledger(&mut conn, n) == 1),
        "each job ran once"
    );
    let status = client.batch_status(&bid).await.unwrap().unwrap();
    assert_eq!((status.total, status.pending), (JOBS, 0));
}
