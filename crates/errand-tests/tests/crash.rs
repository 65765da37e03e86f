//! Crash safety with real processes: a SIGKILLed worker loses no job, a SIGTERMed one puts
//! its unfinished job back on the queue after the shutdown deadline, a once-only effect
//! done before a SIGKILL is not repeated by the retry, and a job that kills its worker every
//! time goes to the dead set after three recoveries instead of crash-looping the fleet.

use errand::admin::Admin;
use errand::broker::Fleet;
use errand::redis::RedisBroker;
use errand::{Client, RawJob};
use errand_tests::{Ledger, RedisServer, Worker, wait_until_sync};
use redis::Commands;
use serde_json::json;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

fn worker(url: &str, concurrency: usize, shutdown_ms: u64) -> Worker {
    Worker::start(
        env!("CARGO_BIN_EXE_errand-test-worker"),
        url,
        concurrency,
        shutdown_ms,
        None,
    )
}

fn identity_of(conn: &mut redis::Connection, worker: &mut Worker) -> String {
    worker.identity(conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_no_job() {
    const JOBS: u64 = 20_000;
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    client.push_bulk((0..JOBS).map(Ledger)).await.unwrap();
    // A raw push, as another language would make it, runs the same way.
    client
        .push_raw(
            RawJob::new("Ledger", vec![json!(JOBS)]),
            errand::Push::new(),
        )
        .await
        .unwrap();

    let mut victim = worker(&url, 20, 25_000);
    let mut survivor = worker(&url, 20, 25_000);
    let mut conn = redis.conn();
    let victim_id = identity_of(&mut conn, &mut victim);
    identity_of(&mut conn, &mut survivor);

    wait_until_sync(
        "a quarter of the jobs to run",
        Duration::from_secs(60),
        || conn.hlen::<_, u64>("ledger").unwrap() >= JOBS / 4,
    );
    victim.kill().expect("SIGKILL");
    victim.wait().unwrap();
    // Frozen until the survivor sees the victim's heartbeat expire (3 s).
    let in_flight: u64 = conn
        .hlen(format!("errand:inflight:{victim_id}:default"))
        .unwrap();
    assert!(
        in_flight <= 20,
        "never more in flight than the concurrency: {in_flight}"
    );

    wait_until_sync("every job to run", Duration::from_secs(120), || {
        conn.hlen::<_, u64>("ledger").unwrap() == JOBS + 1
    });
    // The victim's jobs that ran but were not acked go back to the queue when its heartbeat
    // expires, and run again: wait for that too (the survivor may have run every other job
    // before it), then count.
    wait_until_sync(
        "the victim's jobs recovered and run again",
        Duration::from_secs(30),
        || {
            let registered: Vec<String> = conn.hkeys("errand:processes").unwrap();
            let holders: Vec<String> = conn.keys("errand:inflight:*").unwrap();
            let held: u64 = holders
                .iter()
                .map(|k| conn.hlen::<_, u64>(k).unwrap())
                .sum();
            !registered.contains(&victim_id)
                && held == 0
                && conn.llen::<_, u64>("queue:default").unwrap() == 0
        },
    );
    let ledger: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    assert_eq!(ledger.len() as u64, JOBS + 1, "every job ran at least once");
    assert!((0..=JOBS).all(|n| ledger.get(&n).copied().unwrap_or(0) >= 1));
    let runs: u64 = ledger.values().sum();
    let duplicates = runs - (JOBS + 1);
    eprintln!("crash test: {in_flight} in flight at the kill, {duplicates} duplicate runs");
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates > {in_flight} in flight at the kill"
    );
    survivor.kill().unwrap();
    survivor.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_requeues_a_long_job_after_the_deadline() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let raw = json!({"retry": true, "queue": "default", "args": [60_000], "class": "Sleepy",
        "jid": "aaaaaaaaaaaaaaaaaaaaaaaa", "created_at": 1.5, "enqueued_at": 1.5, "tracing": {"t": []}})
    .to_string();
    let _: () = conn.lpush("queue:default", &raw).unwrap();
    let mut w = worker(&url, 2, 500);
    let id = identity_of(&mut conn, &mut w);
    wait_until_sync("the job to start", Duration::from_secs(20), || {
        conn.hlen::<_, u64>(format!("errand:inflight:{id}:default"))
            .unwrap()
            == 1
    });
    let status = Command::new("kill")
        .args(["-TERM", &w.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exited = None;
    wait_until_sync("the worker to exit", Duration::from_secs(20), || {
        exited = w.try_wait().unwrap();
        exited.is_some()
    });
    assert!(exited.unwrap().success());
    let back: Option<String> = conn.lindex("queue:default", -1).unwrap();
    assert_eq!(
        back.as_deref(),
        Some(raw.as_str()),
        "the exact original string is back at the consuming end"
    );
    let in_flight: u64 = conn.hlen(format!("errand:inflight:{id}:default")).unwrap();
    assert_eq!(in_flight, 0);
    let members: Vec<String> = conn.smembers("processes").unwrap();
    assert!(
        !members.contains(&id),
        "the stopped process left the process set"
    );
    let ran: Option<u64> = conn.hget("ledger", 60_000).unwrap();
    assert_eq!(ran, None, "the job did not finish");
}

/// The identity of the worker with `pid` in the SQLite file's process table.
fn sqlite_identity(path: &std::path::Path, worker: &mut Worker) -> String {
    let pid = worker.id();
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut found = None;
    wait_until_sync("the worker to beat", Duration::from_secs(20), || {
        worker.assert_running();
        let ids: Vec<String> = conn
            .prepare("SELECT identity FROM processes WHERE beat IS NOT NULL")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        found = ids
            .into_iter()
            .find(|m| m.split(':').nth(1) == Some(pid.to_string().as_str()));
        found.is_some()
    });
    found.unwrap()
}

/// The SQLite ledger next to the job file, created (in WAL mode) before the workers start so
/// they only open it: processes switching a fresh file to WAL together can refuse each other.
fn sqlite_ledger(path: &std::path::Path) -> rusqlite::Connection {
    let ledger = rusqlite::Connection::open(format!("{}.ledger", path.display())).unwrap();
    ledger.busy_timeout(Duration::from_secs(10)).unwrap();
    ledger.pragma_update(None, "journal_mode", "WAL").unwrap();
    ledger
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS ledger (n INTEGER PRIMARY KEY, runs INTEGER NOT NULL)",
        )
        .unwrap();
    ledger
}

fn ledger_counts(ledger: &rusqlite::Connection) -> (u64, u64) {
    ledger
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(runs), 0) FROM ledger",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .unwrap_or((0, 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_mid_run_loses_no_job() {
    const JOBS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    let broker = errand_sqlite::SqliteBroker::open(&path).await.unwrap();
    Client::new(broker.clone())
        .push_bulk((0..JOBS).map(Ledger))
        .await
        .unwrap();

    let ledger = sqlite_ledger(&path);

    let backend = format!("sqlite:{}", path.display());
    let mut victim = worker(&backend, 20, 25_000);
    let mut survivor = worker(&backend, 20, 25_000);
    let victim_id = sqlite_identity(&path, &mut victim);
    sqlite_identity(&path, &mut survivor);
    wait_until_sync(
        "a quarter of the jobs to run",
        Duration::from_secs(120),
        || ledger_counts(&ledger).0 >= JOBS / 4,
    );
    victim.kill().expect("SIGKILL");
    victim.wait().unwrap();
    let in_flight = broker
        .held(&victim_id, &["default".to_string()])
        .await
        .unwrap()
        .len() as u64;
    assert!(
        in_flight <= 20,
        "never more in flight than the concurrency: {in_flight}"
    );

    wait_until_sync("every job to run", Duration::from_secs(300), || {
        ledger_counts(&ledger).0 == JOBS
    });
    let (distinct, runs) = ledger_counts(&ledger);
    assert_eq!(distinct, JOBS, "every job ran at least once");
    let duplicates = runs - JOBS;
    eprintln!("sqlite crash test: {in_flight} in flight at the kill, {duplicates} duplicate runs");
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates > {in_flight} in flight at the kill"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !broker
        .held(&victim_id, &["default".to_string()])
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the victim's jobs were not recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued: u64 = broker.queues().await.unwrap().iter().map(|q| q.size).sum();
    assert_eq!(queued, 0);
    survivor.kill().unwrap();
    survivor.wait().unwrap();
}

/// Runs `OnceEffect(7)` on a worker, SIGKILLs it after the once-only effect and before the job
/// completes, lets a second worker recover and finish the job, and checks the effect count is
/// still 1. `ledger(n)` reads ledger entry `n`.
fn once_effect_survives_sigkill(
    backend: &str,
    mut identity: impl FnMut(&mut Worker) -> String,
    mut ledger: impl FnMut(u64) -> u64,
) {
    const EFFECT: u64 = 1_000_007;
    const RUNS: u64 = 2_000_007;
    const DONE: u64 = 3_000_007;
    let mut victim = worker(backend, 2, 25_000);
    identity(&mut victim);
    wait_until_sync("the effect to happen", Duration::from_secs(30), || {
        victim.assert_running();
        ledger(EFFECT) == 1
    });
    assert_eq!(
        ledger(DONE),
        0,
        "the first run is still in the job when killed"
    );
    victim.kill().expect("SIGKILL");
    victim.wait().unwrap();

    let mut survivor = worker(backend, 2, 25_000);
    identity(&mut survivor);
    wait_until_sync(
        "the recovered job to finish",
        Duration::from_secs(60),
        || {
            survivor.assert_running();
            ledger(DONE) == 1
        },
    );
    assert_eq!(ledger(RUNS), 2, "the job ran again after the kill");
    assert_eq!(ledger(EFFECT), 1, "the once-only effect was not repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_effect_survives_sigkill_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    client
        .push_raw(
            RawJob::new("OnceEffect", vec![json!(7)]),
            errand::Push::new(),
        )
        .await
        .unwrap();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut reader = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    tokio::task::block_in_place(|| {
        once_effect_survives_sigkill(
            &url,
            |w| identity_of(&mut conn, w),
            |n| {
                reader
                    .hget::<_, _, Option<u64>>("ledger", n)
                    .unwrap()
                    .unwrap_or(0)
            },
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_effect_survives_sigkill_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    let broker = errand_sqlite::SqliteBroker::open(&path).await.unwrap();
    Client::new(broker)
        .push_raw(
            RawJob::new("OnceEffect", vec![json!(7)]),
            errand::Push::new(),
        )
        .await
        .unwrap();
    let ledger = sqlite_ledger(&path);
    let backend = format!("sqlite:{}", path.display());
    tokio::task::block_in_place(|| {
        once_effect_survives_sigkill(
            &backend,
            |w| sqlite_identity(&path, w),
            |n| {
                ledger
                    .query_row("SELECT runs FROM ledger WHERE n = ?1", [n as i64], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map(|v| v as u64)
                    .unwrap_or(0)
            },
        )
    });
}

/// R14 (poison pill): 2,000 normal jobs and one that aborts its process, on two supervised
/// workers (restarted when they die). The pill is recovered twice, buried on its third
/// recovery as `Errand::PoisonPill`, and every normal job completes; none is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_pill_is_buried_after_three_recoveries() {
    poison_pill_is_buried(RawJob::new("Abort", vec![json!(1)]), 6_000_001, |url| {
        worker(url, 1, 5_000)
    })
    .await;
}

/// The out-of-memory pill (issue 13, item 19): workers whose address space is limited to
/// 1 GiB, and one job that allocates 2 GiB. Each of its runs kills its worker (the allocation
/// fails and the process aborts, as the OOM killer would end it under a container's limit); it
/// is buried after three recoveries like the abort pill, and every other job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_memory_pill_is_buried_after_three_recoveries() {
    poison_pill_is_buried(
        RawJob::new("Hog", vec![json!(1), json!(2048)]),
        9_000_001,
        |url| Worker::start_limited(env!("CARGO_BIN_EXE_errand-test-worker"), url, 1, 1 << 30),
    )
    .await;
}

/// 2,000 normal jobs and `pill` (which counts its runs at ledger entry `pill_runs`) on two
/// workers made by `spawn`, restarted when they die: the pill runs three times, is buried as
/// `Errand::PoisonPill`, and every normal job runs.
async fn poison_pill_is_buried(pill: RawJob, pill_runs: u64, spawn: impl Fn(&str) -> Worker) {
    const JOBS: u64 = 2_000;
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    client.push_bulk((0..JOBS / 2).map(Ledger)).await.unwrap();
    let pill = client.push_raw(pill, errand::Push::new()).await.unwrap();
    client
        .push_bulk((JOBS / 2..JOBS).map(Ledger))
        .await
        .unwrap();

    let mut conn = redis.conn();
    // Concurrency 1: a job held in flight next to the pill dies with it and is recovered with
    // it, so it would share the pill's recovery count (as in Sidekiq Pro's super_fetch) and
    // could be buried too after three shared crashes — a known limit, in docs/guarantees.md.
    let mut workers = vec![spawn(&url), spawn(&url)];
    let mut restarts = 0;
    tokio::task::block_in_place(|| {
        wait_until_sync(
            "the pill buried and every job run",
            Duration::from_secs(120),
            || {
                // The supervisor: a worker that died is replaced.
                for w in &mut workers {
                    if w.try_wait().unwrap().is_some() {
                        *w = spawn(&url);
                        restarts += 1;
                    }
                }
                let ran: usize = conn.hlen("ledger").unwrap();
                let dead: usize = conn.zcard("dead").unwrap();
                // Normal jobs use ledger entries 0..JOBS; the pill counts its runs apart.
                ran as u64 > JOBS && dead == 1
            },
        )
    });
    let runs: Option<u64> = conn.hget("ledger", pill_runs).unwrap();
    assert_eq!(
        runs,
        Some(3),
        "the pill ran (and killed its worker) three times"
    );
    assert_eq!(restarts, 3, "one restart per crash");
    let dead: Vec<String> = conn.zrange("dead", 0, -1).unwrap();
    let entry = errand::Payload::parse(&dead[0]).unwrap();
    assert_eq!(entry.jid(), pill);
    assert_eq!(entry.get("error_class"), Some(&json!("Errand::PoisonPill")));
    let ran: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    assert!(
        (0..JOBS).all(|n| ran.contains_key(&n)),
        "every normal job ran"
    );
    let queued: usize = conn.llen("queue:default").unwrap();
    assert_eq!(queued, 0);
}

/// R4 (lease expiry, pause, fencing): worker A holds jobs of 3 s when it is SIGSTOPped past
/// its heartbeat; worker B recovers and finishes them. When A is continued, its late writes to
/// the fenced store are refused by their older lease tokens (one per job A held), its late
/// acks change nothing, and every job's effect is recorded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_is_fenced_off_when_it_wakes() {
    const JOBS: u64 = 20;
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    let jobs: Vec<RawJob> = (0..JOBS)
        .map(|n| RawJob::new("Fenced", vec![json!(n), json!(3_000)]))
        .collect();
    for job in jobs {
        client.push_raw(job, errand::Push::new()).await.unwrap();
    }
    let mut conn = redis.conn();
    let mut a = worker(&url, 10, 5_000);
    let a_id = identity_of(&mut conn, &mut a);
    let in_flight_key = format!("errand:inflight:{a_id}:default");
    let mut frozen = 0;
    tokio::task::block_in_place(|| {
        wait_until_sync("A to hold ten jobs", Duration::from_secs(20), || {
            frozen = conn.hlen(&in_flight_key).unwrap();
            frozen == 10
        })
    });
    let pid = a.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut b = worker(&url, 10, 5_000);
    identity_of(&mut conn, &mut b);
    tokio::task::block_in_place(|| {
        wait_until_sync(
            "B to finish every job, A's included",
            Duration::from_secs(60),
            || conn.hlen::<_, u64>("ledger").unwrap() == JOBS,
        )
    });
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::task::block_in_place(|| {
        wait_until_sync(
            "A's late writes to be refused",
            Duration::from_secs(30),
            || {
                let stale: HashMap<u64, u64> = conn.hgetall("stale").unwrap();
                stale.values().sum::<u64>() as usize == frozen
            },
        )
    });
    // A's late acks find nothing to remove: its in-flight copies went back with the recovery.
    let ledger: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    assert_eq!(ledger.len() as u64, JOBS);
    assert!(
        ledger.values().all(|r| *r == 1),
        "each job's effect exactly once: {ledger:?}"
    );
    assert!(a.try_wait().unwrap().is_none(), "A carries on after waking");
    tokio::task::block_in_place(|| {
        wait_until_sync(
            "A's in-flight hash to stay empty",
            Duration::from_secs(10),
            || conn.hlen::<_, usize>(&in_flight_key).unwrap() == 0,
        )
    });
    let queued: usize = conn.llen("queue:default").unwrap();
    let retry: usize = conn.zcard("retry").unwrap();
    let dead: usize = conn.zcard("dead").unwrap();
    assert_eq!(
        (queued, retry, dead),
        (0, 0, 0),
        "nothing re-queued or failed by A's late acks"
    );
    eprintln!(
        "fencing: A froze holding {frozen} jobs; B finished them; A's {frozen} late writes refused"
    );
}

/// Ten jobs of 30 s on one worker, as a fetched batch (plan R5/R6 share this setup).
fn ten_long_jobs(conn: &mut redis::Connection) -> Vec<String> {
    let jobs: Vec<String> = (0..10)
        .map(|n| {
            json!({"retry": true, "queue": "default", "args": [30_000 + n], "class": "Sleepy",
                   "jid": format!("long{n:020}"), "created_at": 1.5, "enqueued_at": 1.5})
            .to_string()
        })
        .collect();
    let _: () = conn.lpush("queue:default", &jobs).unwrap();
    jobs
}

/// R5 (graceful shutdown): ten jobs of 30 s, a 5 s shutdown timeout, SIGTERM: the process
/// exits within 8 s and every job is back on its queue, byte for byte, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_ten_long_jobs_exits_in_time_and_requeues_all() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let jobs = ten_long_jobs(&mut conn);
    let mut w = worker(&url, 10, 5_000);
    let id = identity_of(&mut conn, &mut w);
    let in_flight = format!("errand:inflight:{id}:default");
    wait_until_sync("all ten to start", Duration::from_secs(20), || {
        conn.hlen::<_, usize>(&in_flight).unwrap() == 10
    });
    let pid = w.id().to_string();
    let sent = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut exited = None;
    wait_until_sync("the worker to exit", Duration::from_secs(20), || {
        exited = w.try_wait().unwrap();
        exited.is_some()
    });
    let took = sent.elapsed();
    assert!(exited.unwrap().success());
    assert!(
        took <= Duration::from_secs(8),
        "exited {took:?} after SIGTERM"
    );
    let mut back: Vec<String> = conn.lrange("queue:default", 0, -1).unwrap();
    back.sort();
    let mut expected = jobs.clone();
    expected.sort();
    assert_eq!(back, expected, "every job back, unchanged");
    assert_eq!(conn.hlen::<_, usize>(&in_flight).unwrap(), 0);
    let ran: usize = conn.hlen("ledger").unwrap();
    assert_eq!(ran, 0, "none finished (each needed 30 s)");
}

/// R6 (a) (orphan recovery latency): ten jobs of 30 s in flight when their worker is
/// SIGKILLed; with a 3 s heartbeat TTL and a 1 s orphan scan, all ten are back on the queue
/// within TTL + scan + 2 s, and a second worker runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_jobs_are_requeued_within_ttl_and_scan() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    ten_long_jobs(&mut conn);
    let mut victim = worker(&url, 10, 5_000);
    let id = identity_of(&mut conn, &mut victim);
    let in_flight = format!("errand:inflight:{id}:default");
    wait_until_sync("all ten to start", Duration::from_secs(20), || {
        conn.hlen::<_, usize>(&in_flight).unwrap() == 10
    });
    // The survivor starts first, so only the recovery latency is measured.
    let mut survivor = worker(&url, 10, 5_000);
    identity_of(&mut conn, &mut survivor);
    victim.kill().expect("SIGKILL");
    victim.wait().unwrap();
    let killed = std::time::Instant::now();
    wait_until_sync(
        "the ten jobs to be recovered",
        Duration::from_secs(30),
        || conn.hlen::<_, usize>(&in_flight).unwrap() == 0,
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(6),
        "recovered {took:?} after the kill"
    );
    eprintln!("orphan recovery: 10 jobs back {took:?} after SIGKILL (TTL 3 s, scan 1 s)");
}

/// The same crash test on PostgreSQL (a server the test starts): two worker processes, 20,000
/// jobs, one SIGKILLed at a quarter; every job runs, duplicates bounded by what the victim held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_mid_run_loses_no_job() {
    use errand::postgres::{PostgresBroker, tokio_postgres};
    const JOBS: u64 = 20_000;
    let server = errand_tests::PostgresServer::start();
    let url = server.url();
    let broker = PostgresBroker::connect(&url).await.unwrap();
    let (ledger, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    ledger
        .batch_execute("CREATE TABLE public.ledger (n bigint PRIMARY KEY, runs bigint NOT NULL)")
        .await
        .unwrap();
    Client::new(broker.clone())
        .push_bulk((0..JOBS).map(Ledger))
        .await
        .unwrap();
    let counts = || async {
        let row = ledger
            .query_one(
                "SELECT count(*), coalesce(sum(runs), 0)::bigint FROM public.ledger",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
    };

    let mut victim = worker(&url, 20, 25_000);
    let mut survivor = worker(&url, 20, 25_000);
    let pid = victim.id().to_string();
    let mut victim_id = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while victim_id.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the victim never beat"
        );
        victim.assert_running();
        survivor.assert_running();
        victim_id = broker
            .processes()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.identity)
            .find(|i| i.split(':').nth(1) == Some(pid.as_str()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim_id = victim_id.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while counts().await.0 < JOBS / 4 {
        assert!(std::time::Instant::now() < deadline, "a quarter never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.kill().expect("SIGKILL");
    victim.wait().unwrap();
    let in_flight = broker
        .held(&victim_id, &["default".to_string()])
        .await
        .unwrap()
        .len() as u64;
    assert!(
        in_flight <= 20,
        "never more in flight than the concurrency: {in_flight}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while counts().await.0 < JOBS {
        assert!(std::time::Instant::now() < deadline, "not every job ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (distinct, runs) = counts().await;
    assert_eq!(distinct, JOBS, "every job ran at least once");
    let duplicates = runs - JOBS;
    eprintln!(
        "postgres crash test: {in_flight} in flight at the kill, {duplicates} duplicate runs"
    );
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates > {in_flight} in flight at the kill"
    );
    let queued: u64 = broker.queues().await.unwrap().iter().map(|q| q.size).sum();
    assert_eq!(queued, 0);
    survivor.kill().unwrap();
    survivor.wait().unwrap();
}
