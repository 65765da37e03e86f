//! Crash points inside the server (RELIABILITY-PLAN R15, R16), with the `fail` crate: worker
//! processes armed with `FAILPOINTS=<point>=<k>*off->return` exit with status 137 on the
//! point's (k+1)-th pass — as a SIGKILL at that line would end them: no shutdown, no requeue —
//! and are restarted by a supervisor loop; live workers recover the dead ones' jobs. At every
//! point no job is lost; a crash before a job runs repeats nothing, a crash after it ran and
//! before its ack repeats that job once, a crash on the way to the retry set leaves the job in
//! flight (un-acked) to be recovered, and a crash at the reaper leaves the orphans for the next
//! reaper. With an idempotency key the effect of a job applies once however often it runs.
//!
//! The matrix workers run one job at a time, so each crash involves exactly the job at the
//! point and its figures are exact; R16 runs five at a time.

use errand::redis::RedisBroker;
use errand::{Client, Job, JobContext, JobResult};
use errand_tests::{Ledger, RedisServer, Worker, wait_until_sync};
use redis::Commands;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_errand-test-worker");
/// Jobs per point of the matrix.
const JOBS: u64 = 1_000;
/// Where `Flaky` counts its runs in the ledger (as in the worker binary).
const FLAKY_RUNS: u64 = 8_000_000;

/// The worker binary's `Flaky(n)` (fails its first run), as a client pushes it.
#[derive(Serialize, Deserialize)]
struct Flaky(u64);

impl Job for Flaky {
    const NAME: &'static str = "Flaky";
    async fn perform(self, _cx: &JobContext) -> JobResult {
        unreachable!("run by errand-test-worker processes")
    }
}

/// The worker binary's `Charge(n)` (an effect applied once by its idempotency key).
#[derive(Serialize, Deserialize)]
struct Charge(u64);

impl Job for Charge {
    const NAME: &'static str = "Charge";
    async fn perform(self, _cx: &JobContext) -> JobResult {
        unreachable!("run by errand-test-worker processes")
    }
}

/// Pushes `jobs` to the Redis at `url` (on a runtime of its own: the tests are blocking).
fn push<J: Job>(url: &str, jobs: impl IntoIterator<Item = J>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        Client::new(RedisBroker::connect(url).await.unwrap())
            .push_bulk(jobs)
            .await
            .unwrap();
    });
}

/// A worker on `url` with `concurrency`, armed with `failpoints` (a `FAILPOINTS` value) when
/// given, with `env` set; it logs errors only unless `RUST_LOG` says otherwise.
fn spawn(url: &str, concurrency: usize, failpoints: Option<&str>, env: &[(&str, &str)]) -> Worker {
    let mut cmd = Command::new(BIN);
    cmd.args([url, &concurrency.to_string(), "5000"])
        .env_remove("FAILPOINTS")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
        );
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Worker(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start errand-test-worker"),
    )
}

/// The in-flight jobs held by the process with `pid` (its `errand:inflight:<host>:<pid>:…`
/// hashes), read after it died: nobody removes them until its heartbeat expires. Each field is
/// the attempt's fencing token and its value the job; the jobs are returned.
fn held_by(conn: &mut redis::Connection, pid: u32) -> Vec<String> {
    let pid = pid.to_string();
    let keys: Vec<String> = conn.keys("errand:inflight:*").unwrap();
    keys.into_iter()
        .filter(|k| k.split(':').nth(3) == Some(pid.as_str()))
        .flat_map(|k| conn.hgetall::<_, Vec<(String, String)>>(k).unwrap())
        .map(|(token, job)| {
            assert!(token.parse::<u64>().is_ok(), "{token}");
            job
        })
        .collect()
}

/// Jobs in any process's in-flight hashes.
fn in_flight(conn: &mut redis::Connection) -> usize {
    let keys: Vec<String> = conn.keys("errand:inflight:*").unwrap();
    keys.iter().map(|k| conn.hlen::<_, usize>(k).unwrap()).sum()
}

/// Nothing queued, retrying, scheduled or in flight.
fn settled(conn: &mut redis::Connection) -> bool {
    conn.llen::<_, usize>("queue:default").unwrap() == 0
        && conn.zcard::<_, usize>("retry").unwrap() == 0
        && conn.zcard::<_, usize>("schedule").unwrap() == 0
        && in_flight(conn) == 0
}

/// `n` pseudo-random crash positions in `lo..hi` (xorshift, fixed seed: runs are repeatable).
fn positions(n: usize, lo: u32, hi: u32, mut seed: u64) -> Vec<u32> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            lo + (seed % u64::from(hi - lo)) as u32
        })
        .collect()
}

/// The in-flight jobs of each crashed process at its death, in crash order.
type Crashes = Vec<Vec<String>>;

/// Runs `workers` worker processes of `concurrency` under a supervisor that restarts any that
/// exits. The first `plan.len()` processes started are armed: the i-th exits (status 137) on
/// pass `plan[i] + 1` of `point`; later ones are not. Returns once every planned crash happened
/// and `done` holds.
///
/// # Panics
/// When an unarmed worker exits, an armed one exits otherwise than by its point, or `timeout`
/// passes.
#[allow(clippy::too_many_arguments)]
fn supervise(
    url: &str,
    conn: &mut redis::Connection,
    point: &str,
    plan: &[u32],
    workers: usize,
    concurrency: usize,
    env: &[(&str, &str)],
    timeout: Duration,
    mut done: impl FnMut(&mut redis::Connection) -> bool,
) -> Crashes {
    let mut next = 0;
    let start = |next: &mut usize| {
        let armed = plan.get(*next).map(|k| format!("{point}={k}*off->return"));
        *next += usize::from(armed.is_some());
        (
            spawn(url, concurrency, armed.as_deref(), env),
            armed.is_some(),
        )
    };
    let mut slots: Vec<(Worker, bool)> = (0..workers).map(|_| start(&mut next)).collect();
    let mut crashes = Crashes::new();
    let deadline = Instant::now() + timeout;
    loop {
        for slot in &mut slots {
            if let Some(status) = slot.0.try_wait().unwrap() {
                assert!(slot.1, "an unarmed worker exited: {status}");
                assert_eq!(
                    status.code(),
                    Some(137),
                    "an armed worker exited by its crash point at {point}"
                );
                crashes.push(held_by(conn, slot.0.id()));
                *slot = start(&mut next);
            }
        }
        if crashes.len() == plan.len() && done(conn) {
            return crashes;
        }
        assert!(
            Instant::now() < deadline,
            "{point}: timed out after {timeout:?} with {} of {} crashes",
            crashes.len(),
            plan.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ledger entries `0..n`: runs of job `n` (absent: it never finished).
fn runs(conn: &mut redis::Connection, n: u64) -> Vec<u64> {
    let ledger: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    (0..n)
        .map(|i| ledger.get(&i).copied().unwrap_or(0))
        .collect()
}

/// Whether every job `0..n` has a ledger entry (ran to completion at least once).
fn all_ran(conn: &mut redis::Connection, n: u64) -> bool {
    runs(conn, n).iter().all(|r| *r >= 1)
}

/// Six crashes, at passes spread over the run, for a matrix point.
const PLAN: [u32; 6] = [20, 45, 90, 150, 70, 30];

/// A matrix point on `Ledger` jobs: returns (crashes, duplicates), having checked none lost,
/// none dead, and each crashed process holding exactly the job at the point.
fn ledger_point(point: &str) -> (Crashes, u64) {
    let redis = RedisServer::start();
    let url = redis.url();
    push(&url, (0..JOBS).map(Ledger));
    let mut conn = redis.conn();
    let crashes = supervise(
        &url,
        &mut conn,
        point,
        &PLAN,
        2,
        1,
        &[],
        Duration::from_secs(60),
        |c| settled(c) && all_ran(c, JOBS),
    );
    let runs = runs(&mut conn, JOBS);
    let lost = runs.iter().filter(|r| **r == 0).count();
    let duplicates: u64 = runs.iter().map(|r| r.saturating_sub(1)).sum();
    let dead: usize = conn.zcard("dead").unwrap();
    assert_eq!((lost, dead), (0, 0), "{point}: none lost, none dead");
    for held in &crashes {
        assert_eq!(
            held.len(),
            1,
            "{point}: the crashed process held exactly the job at the point: {held:?}"
        );
    }
    assert!(
        runs.iter().all(|r| *r <= 2),
        "{point}: no job ran more than twice"
    );
    (crashes, duplicates)
}

#[test]
fn crash_after_fetch_loses_nothing_and_repeats_nothing() {
    let t = Instant::now();
    let (crashes, duplicates) = ledger_point("after_fetch");
    eprintln!(
        "after_fetch: {JOBS} jobs, {} crashes, 0 lost, {duplicates} duplicates, {:?}",
        crashes.len(),
        t.elapsed()
    );
    assert_eq!(duplicates, 0, "a job fetched but not run runs once");
}

#[test]
fn crash_before_execute_loses_nothing_and_repeats_nothing() {
    let t = Instant::now();
    let (crashes, duplicates) = ledger_point("before_execute");
    eprintln!(
        "before_execute: {JOBS} jobs, {} crashes, 0 lost, {duplicates} duplicates, {:?}",
        crashes.len(),
        t.elapsed()
    );
    assert_eq!(duplicates, 0, "a job that had not started runs once");
}

#[test]
fn crash_after_execute_before_ack_repeats_only_that_job_once() {
    let t = Instant::now();
    let (crashes, duplicates) = ledger_point("after_execute_before_ack");
    eprintln!(
        "after_execute_before_ack: {JOBS} jobs, {} crashes, 0 lost, {duplicates} duplicates (≤ 1 per job), {:?}",
        crashes.len(),
        t.elapsed()
    );
    assert_eq!(
        duplicates,
        crashes.len() as u64,
        "each crash repeats the one job it had run and not acked, once"
    );
}

/// Every job fails its first run; the crash comes inside the retry write: Redis has moved the
/// job from flight into the retry set (one script), and the worker dies before it reads the
/// reply. Nothing is left in flight, the retry comes due and runs, and nothing is lost or runs
/// a third time. (Before, the crash point fired before the write, so this only repeated
/// `after_execute_before_ack`.)
#[test]
fn crash_inside_retry_write_leaves_the_retry_written() {
    let t = Instant::now();
    let redis = RedisServer::start();
    let url = redis.url();
    push(&url, (0..JOBS).map(Flaky));
    let mut conn = redis.conn();
    let crashes = supervise(
        &url,
        &mut conn,
        "inside_retry_write",
        &PLAN,
        2,
        1,
        &[("ERRAND_TEST_RETRY_DELAY_MS", "0")],
        Duration::from_secs(60),
        |c| settled(c) && all_ran(c, JOBS),
    );
    for held in &crashes {
        assert!(
            held.is_empty(),
            "the retry was written before the crash: nothing left in flight: {held:?}"
        );
    }
    let done = runs(&mut conn, JOBS);
    let ledger: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    let attempts: Vec<u64> = (0..JOBS)
        .map(|n| ledger.get(&(FLAKY_RUNS + n)).copied().unwrap_or(0))
        .collect();
    let lost = done.iter().filter(|r| **r == 0).count();
    let dead: usize = conn.zcard("dead").unwrap();
    eprintln!(
        "inside_retry_write: {JOBS} jobs (each failing once), {} crashes, {lost} lost, {} completions repeated, {:?}",
        crashes.len(),
        done.iter().map(|r| r.saturating_sub(1)).sum::<u64>(),
        t.elapsed()
    );
    assert_eq!((lost, dead), (0, 0), "none lost, none dead");
    assert!(done.iter().all(|r| *r == 1), "each job completed once");
    assert!(
        attempts.iter().all(|a| *a == 2),
        "each job ran twice: the failed run and its retry"
    );
}

/// Two workers die right after fetching ten jobs each; once their heartbeats have expired, a
/// reaper crashes inside orphan recovery, after it recovered one dead process's jobs and
/// before the other's: exactly one victim's jobs are back on the queue (once each) and the
/// other's are untouched. A second reaper recovers those and crashes too; a third worker runs
/// everything, each job once.
#[test]
fn crash_inside_reaper_requeue_leaves_the_rest_for_the_next_reaper() {
    let t = Instant::now();
    let redis = RedisServer::start();
    let url = redis.url();
    push(&url, (0..JOBS).map(Ledger));
    let mut conn = redis.conn();
    // Each victim fetches a batch of ten (all its slots are free) and dies before running any.
    let mut victims: Vec<Worker> = (0..2)
        .map(|_| spawn(&url, 10, Some("after_fetch=return"), &[]))
        .collect();
    let mut orphans = Vec::new();
    for v in &mut victims {
        assert_eq!(v.0.wait().unwrap().code(), Some(137));
        let held = held_by(&mut conn, v.0.id());
        assert_eq!(held.len(), 10, "the victim died holding its batch");
        orphans.push(held);
    }
    let identities: Vec<String> = conn
        .keys::<_, Vec<String>>("errand:inflight:*")
        .unwrap()
        .into_iter()
        .map(|k| {
            k.trim_start_matches("errand:inflight:")
                .rsplit_once(':')
                .unwrap()
                .0
                .to_string()
        })
        .collect();
    assert_eq!(identities.len(), 2);
    wait_until_sync(
        "the victims' heartbeats to expire",
        Duration::from_secs(20),
        || {
            identities
                .iter()
                .all(|id| !conn.exists::<_, bool>(id).unwrap())
        },
    );
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    // The first reaper: one victim recovered, then the crash.
    let mut reaper = spawn(&url, 1, Some("inside_reaper_requeue=return"), &[]);
    assert_eq!(
        reaper.0.wait().unwrap().code(),
        Some(137),
        "the reaper crashed at its point"
    );
    let left: Vec<Vec<String>> = victims
        .iter()
        .map(|v| sorted(held_by(&mut conn, v.0.id())))
        .collect();
    let (recovered, untouched) = if left[0].is_empty() { (0, 1) } else { (1, 0) };
    assert!(
        left[recovered].is_empty(),
        "one victim's jobs were recovered: {left:?}"
    );
    assert_eq!(
        left[untouched],
        sorted(orphans[untouched].clone()),
        "the other victim's jobs were not touched"
    );
    // A reaper is a worker too: it may have fetched (and even run) a job, a recovered one
    // among them, before it crashed.
    let mut reaped = held_by(&mut conn, reaper.0.id());
    let queued: Vec<String> = conn.lrange("queue:default", 0, -1).unwrap();
    for job in &orphans[recovered] {
        let copies = queued.iter().chain(&reaped).filter(|q| *q == job).count();
        assert_eq!(copies, 1, "a recovered job is back once");
    }
    // The second reaper recovers the rest, and crashes after it too.
    let mut reaper = spawn(&url, 1, Some("inside_reaper_requeue=return"), &[]);
    assert_eq!(reaper.0.wait().unwrap().code(), Some(137));
    assert!(held_by(&mut conn, victims[untouched].0.id()).is_empty());
    reaped.extend(held_by(&mut conn, reaper.0.id()));
    let _survivor = spawn(&url, 5, None, &[]);
    wait_until_sync("every job to run", Duration::from_secs(30), || {
        settled(&mut conn) && all_ran(&mut conn, JOBS)
    });
    let runs = runs(&mut conn, JOBS);
    let duplicates: u64 = runs.iter().map(|r| r.saturating_sub(1)).sum();
    let dead: usize = conn.zcard("dead").unwrap();
    eprintln!(
        "inside_reaper_requeue: {JOBS} jobs, 2 × 10 orphans, 2 reaper crashes (holding {} jobs), 0 lost, {duplicates} duplicates, {:?}",
        reaped.len(),
        t.elapsed()
    );
    assert_eq!(dead, 0);
    assert!(
        duplicates <= reaped.len() as u64,
        "the orphans had not run, so only a job a reaper held when it crashed may run twice: {duplicates} > {}",
        reaped.len()
    );
}

/// R16: 10,000 jobs whose effect carries an idempotency key; the workers (two, five jobs at a
/// time) crash after a job ran and before its ack at least 50 times, so jobs run again — the
/// crashed one and any other in flight with it — and each effect still applies exactly once.
#[test]
fn idempotency_keys_apply_each_effect_once_under_forced_duplicates() {
    const CHARGES: u64 = 10_000;
    const CRASHES: usize = 60;
    let t = Instant::now();
    let redis = RedisServer::start();
    let url = redis.url();
    push(&url, (0..CHARGES).map(Charge));
    let mut conn = redis.conn();
    let plan = positions(CRASHES, 40, 200, 0x9e37_79b9_7f4a_7c15);
    // Recoveries are counted against every job in flight at a crash; with sixty crashes of
    // five a job may share three by chance and be buried as a poison pill (R14's subject, not
    // this test's), so the threshold is lifted here.
    let crashes = supervise(
        &url,
        &mut conn,
        "after_execute_before_ack",
        &plan,
        2,
        5,
        &[("ERRAND_TEST_MAX_RECOVERIES", "1000")],
        Duration::from_secs(120),
        |c| settled(c) && c.hlen::<_, u64>("ledger").unwrap() == CHARGES,
    );
    let effects: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    let executions: HashMap<u64, u64> = conn.hgetall("runs").unwrap();
    let applied: u64 = conn.hlen("applied").unwrap();
    let ran: u64 = executions.values().sum();
    let repeated = executions.values().filter(|r| **r > 1).count();
    let dead: usize = conn.zcard("dead").unwrap();
    eprintln!(
        "idempotency: {CHARGES} jobs, {} crashes before ack, {} executions ({} duplicate, {repeated} jobs ran more than once), {} effects, {:?}",
        crashes.len(),
        ran,
        ran - CHARGES,
        effects.values().sum::<u64>(),
        t.elapsed()
    );
    assert!(crashes.len() >= 50, "at least 50 crashes before an ack");
    assert!(
        ran - CHARGES >= crashes.len() as u64,
        "every crash forced a duplicate run"
    );
    assert_eq!(dead, 0);
    assert_eq!(applied, CHARGES, "one idempotency key per job");
    assert!(
        (0..CHARGES).all(|n| effects.get(&n) == Some(&1)),
        "each job's effect applied exactly once"
    );
}
