//! The crash and shutdown suites on PostgreSQL (issue 15), with the worker processes the Redis
//! and SQLite suites use (`errand-test-worker` on a `postgres://` URL, its ledger the table
//! `public.ledger(n, runs)` of the job database), on a server each test starts:
//!
//! - crash points (`FAILPOINTS`, as in tests/failpoints.rs): a worker that dies right after a
//!   fetch or before a job runs repeats nothing; one that dies after the job ran and before
//!   its ack repeats exactly that job, once; nothing is lost at any point;
//! - SIGTERM with ten long jobs: the process exits within the deadline and every job is back
//!   on its queue byte for byte;
//! - SIGKILL with ten long jobs: a live worker finds them by the dead process's expired row
//!   and runs them, within TTL + scan.

use errand::admin::{Admin, Order, QueueRange};
use errand::broker::Fleet;
use errand::postgres::{PostgresBroker, tokio_postgres};
use errand::{Client, Job, JobContext, JobResult};
use errand_tests::{Ledger, PostgresServer, Worker};
use serde::{Deserialize, Serialize};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_errand-test-worker");
/// Jobs per crash point.
const JOBS: u64 = 1_000;
/// Six crashes, at passes spread over the run (as on Redis).
const PLAN: [u32; 6] = [20, 45, 90, 150, 70, 30];

/// The worker binary's `Sleepy(ms)` (sleeps, then counts itself in the ledger).
#[derive(Serialize, Deserialize)]
struct Sleepy(u64);

impl Job for Sleepy {
    const NAME: &'static str = "Sleepy";
    async fn perform(self, _cx: &JobContext) -> JobResult {
        unreachable!("run by errand-test-worker processes")
    }
}

/// A PostgreSQL server with the ledger table, a broker on it, and a plain client for the
/// test's own reads.
struct Setup {
    server: PostgresServer,
    broker: PostgresBroker,
    sql: tokio_postgres::Client,
}

impl Setup {
    async fn start() -> Self {
        let server = PostgresServer::start();
        let broker = PostgresBroker::connect(&server.url()).await.unwrap();
        let (sql, conn) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        sql.batch_execute(
            "CREATE TABLE public.ledger (n bigint PRIMARY KEY, runs bigint NOT NULL)",
        )
        .await
        .unwrap();
        Setup {
            server,
            broker,
            sql,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// A count from the test's own SQL.
    async fn count(&self, sql: &str) -> u64 {
        self.sql.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) as u64
    }

    /// Runs per job `0..n` (0: it never finished).
    async fn runs(&self, n: u64) -> Vec<u64> {
        let mut runs = vec![0; n as usize];
        for row in self
            .sql
            .query(
                "SELECT n, runs FROM public.ledger WHERE n < $1",
                &[&(n as i64)],
            )
            .await
            .unwrap()
        {
            runs[row.get::<_, i64>(0) as usize] = row.get::<_, i64>(1) as u64;
        }
        runs
    }

    /// Nothing queued, retrying, scheduled or in flight (rows in any of those states).
    async fn settled(&self) -> bool {
        self.count("SELECT count(*) FROM errand.jobs WHERE state < 4")
            .await
            == 0
    }

    /// The identity of the live process with `pid` (waits up to 20 s for it to register).
    async fn identity(&self, worker: &mut Worker) -> String {
        let pid = worker.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            worker.assert_running();
            if let Some(id) = self.identity_of_pid(&pid).await {
                return id;
            }
            assert!(Instant::now() < deadline, "worker {pid} never registered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn identity_of_pid(&self, pid: &str) -> Option<String> {
        self.broker
            .processes()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.identity)
            .find(|i| i.split(':').nth(1) == Some(pid))
    }

    /// The jobs the process with `pid` holds (its rows in flight), read after it died: they
    /// stay where they are until its row expires.
    async fn held_by_pid(&self, pid: u32) -> Vec<String> {
        let Some(identity) = self.identity_of_pid(&pid.to_string()).await else {
            return Vec::new();
        };
        self.broker
            .held(&identity, &["default".to_string()])
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.raw)
            .collect()
    }

    /// The `default` queue, oldest first.
    async fn queued(&self) -> Vec<String> {
        self.broker
            .queue_page(QueueRange {
                queue: "default",
                offset: 0,
                limit: 1_000,
                order: Order::Asc,
            })
            .await
            .unwrap()
    }
}

/// Runs two one-at-a-time workers under a supervisor that restarts any that exits; the i-th
/// started is armed to exit (status 137, as a SIGKILL would end it: no shutdown, no requeue)
/// on pass `PLAN[i] + 1` of `point`. Returns each crashed process's held jobs at its death
/// once every planned crash happened and every job ran with nothing left anywhere.
async fn supervise(setup: &Setup, point: &str) -> Vec<Vec<String>> {
    let url = setup.url();
    let mut next = 0;
    let start = |next: &mut usize| {
        let armed = PLAN.get(*next).map(|k| format!("{point}={k}*off->return"));
        *next += usize::from(armed.is_some());
        let mut env = vec![("RUST_LOG", "error")];
        if let Some(f) = armed.as_deref() {
            env.push(("FAILPOINTS", f));
        }
        (
            Worker::start_env(BIN, &url, 1, 5_000, &env),
            armed.is_some(),
        )
    };
    let mut slots: Vec<(Worker, bool)> = (0..2).map(|_| start(&mut next)).collect();
    let mut crashes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for slot in &mut slots {
            if let Some(status) = slot.0.try_wait().unwrap() {
                assert!(slot.1, "an unarmed worker exited: {status}");
                assert_eq!(
                    status.code(),
                    Some(137),
                    "exited by its crash point {point}"
                );
                crashes.push(setup.held_by_pid(slot.0.id()).await);
                *slot = start(&mut next);
            }
        }
        if crashes.len() == PLAN.len()
            && setup.settled().await
            && setup.runs(JOBS).await.iter().all(|r| *r >= 1)
        {
            return crashes;
        }
        assert!(
            Instant::now() < deadline,
            "{point}: timed out with {} of {} crashes",
            crashes.len(),
            PLAN.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A crash point on `Ledger` jobs: returns (crashes, duplicates), having checked that none
/// was lost or buried, that each crashed process held exactly the job at the point, and that
/// no job ran more than twice.
async fn ledger_point(point: &str) -> (usize, u64) {
    let setup = Setup::start().await;
    Client::new(setup.broker.clone())
        .push_bulk((0..JOBS).map(Ledger))
        .await
        .unwrap();
    let t = Instant::now();
    let crashes = supervise(&setup, point).await;
    let runs = setup.runs(JOBS).await;
    let lost = runs.iter().filter(|r| **r == 0).count();
    let duplicates: u64 = runs.iter().map(|r| r.saturating_sub(1)).sum();
    let dead = setup
        .count("SELECT count(*) FROM errand.jobs WHERE state = 4")
        .await;
    assert_eq!((lost, dead), (0, 0), "{point}: none lost, none dead");
    for held in &crashes {
        assert_eq!(
            held.len(),
            1,
            "{point}: the crashed process held exactly one job: {held:?}"
        );
    }
    assert!(
        runs.iter().all(|r| *r <= 2),
        "{point}: none ran more than twice"
    );
    eprintln!(
        "postgres {point}: {JOBS} jobs, {} crashes, 0 lost, {duplicates} duplicates, {:?}",
        crashes.len(),
        t.elapsed()
    );
    (crashes.len(), duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_after_fetch_loses_nothing_and_repeats_nothing() {
    let (_, duplicates) = ledger_point("after_fetch").await;
    assert_eq!(duplicates, 0, "a job fetched but not run runs once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_before_execute_loses_nothing_and_repeats_nothing() {
    let (_, duplicates) = ledger_point("before_execute").await;
    assert_eq!(duplicates, 0, "a job that had not started runs once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_after_execute_before_ack_repeats_only_that_job_once() {
    let (crashes, duplicates) = ledger_point("after_execute_before_ack").await;
    assert_eq!(
        duplicates, crashes as u64,
        "each crash repeats the one job it had run and not acked, once"
    );
}

/// Ten jobs of 30 s, pushed raw (as another language would), so their bytes can be compared.
async fn ten_long_jobs(setup: &Setup) -> Vec<String> {
    let client = Client::new(setup.broker.clone());
    for n in 0..10 {
        client.push(Sleepy(30_000 + n)).await.unwrap();
    }
    let mut jobs = setup.queued().await;
    jobs.sort();
    assert_eq!(jobs.len(), 10);
    jobs
}

/// Waits until the process `identity` holds `n` jobs.
async fn wait_held(setup: &Setup, identity: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while setup
        .broker
        .held(identity, &["default".to_string()])
        .await
        .unwrap()
        .len()
        != n
    {
        assert!(Instant::now() < deadline, "{identity} never held {n} jobs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// R5 on PostgreSQL: ten jobs of 30 s, a 5 s shutdown timeout, SIGTERM: the process exits
/// within 8 s, every job is back on its queue unchanged, none finished, the process row gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigterm_with_ten_long_jobs_exits_in_time_and_requeues_all() {
    let setup = Setup::start().await;
    let jobs = ten_long_jobs(&setup).await;
    let mut w = Worker::start(BIN, &setup.url(), 10, 5_000, None);
    let id = setup.identity(&mut w).await;
    wait_held(&setup, &id, 10).await;
    let sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = w.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker never exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = sent.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took <= Duration::from_secs(8),
        "exited {took:?} after SIGTERM"
    );
    let mut back = setup.queued().await;
    back.sort();
    assert_eq!(back, jobs, "every job back, unchanged");
    assert_eq!(
        setup
            .count("SELECT count(*) FROM errand.jobs WHERE state = 1")
            .await,
        0,
        "nothing left in flight"
    );
    assert!(
        setup.identity_of_pid(&w.id().to_string()).await.is_none(),
        "the stopped process left the process table"
    );
    assert_eq!(
        setup.count("SELECT count(*) FROM public.ledger").await,
        0,
        "none finished (each needed 30 s)"
    );
    eprintln!("postgres SIGTERM: exited {took:?} after the signal, 10 of 10 jobs back");
}

/// R6 (a) on PostgreSQL: ten jobs of 30 s in flight when their worker is SIGKILLed; with a
/// 3 s process TTL and a 1 s rescue scan a second worker takes all ten within TTL + scan + 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_workers_jobs_are_recovered_within_ttl_and_scan() {
    let setup = Setup::start().await;
    ten_long_jobs(&setup).await;
    let mut victim = Worker::start(BIN, &setup.url(), 10, 5_000, None);
    let victim_id = setup.identity(&mut victim).await;
    wait_held(&setup, &victim_id, 10).await;
    let mut survivor = Worker::start(BIN, &setup.url(), 10, 5_000, None);
    let survivor_id = setup.identity(&mut survivor).await;
    victim.kill().expect("SIGKILL");
    victim.wait().unwrap();
    let killed = Instant::now();
    wait_held(&setup, &survivor_id, 10).await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(6),
        "recovered {took:?} after the kill"
    );
    assert_eq!(
        setup
            .broker
            .held(&victim_id, &["default".to_string()])
            .await
            .unwrap()
            .len(),
        0,
        "nothing left with the dead process"
    );
    eprintln!(
        "postgres orphan recovery: 10 jobs running again {took:?} after SIGKILL (TTL 3 s, scan 1 s)"
    );
}
