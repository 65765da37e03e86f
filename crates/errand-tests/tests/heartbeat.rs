//! A live process never looks dead (issue 13, item 5): jobs that block every thread of the job
//! runtime (a `std::thread::sleep`, a blocking driver) used to starve the heartbeat task and the
//! connection it wrote through, so the process's heartbeat expired while its jobs ran, and
//! recovery would have run them a second time. The heartbeat now runs on a thread and runtime
//! of its own with a Redis connection of its own.

use errand::redis::RedisBroker;
use errand::{Client, Job, JobContext, JobResult, Server};
use errand_tests::{RedisServer, wait_until_sync};
use redis::Commands;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Blocks its worker thread (not just its task) for the time given.
#[derive(Serialize, Deserialize)]
struct Blocker(u64);

impl Job for Blocker {
    const NAME: &'static str = "Blocker";
    async fn perform(self, cx: &JobContext) -> JobResult {
        cx.data::<Arc<AtomicUsize>>()
            .expect("counter")
            .fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(self.0));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_block_every_runtime_thread_do_not_stop_the_heartbeat() {
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    let ttl = Duration::from_secs(2);
    let block = ttl * 3;
    let client = Client::new(broker.clone());
    for _ in 0..2 {
        client
            .push(Blocker(block.as_millis() as u64))
            .await
            .unwrap();
    }
    let started = Arc::new(AtomicUsize::new(0));
    let server = Server::builder(broker)
        .register::<Blocker>()
        .data(started.clone())
        .concurrency(2)
        .heartbeat_interval(Duration::from_millis(250))
        .process_ttl(ttl)
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let identity = handle.identity().to_string();
    let running = tokio::spawn(server.run());

    // From here on both runtime threads sleep inside the jobs: this test body (on the test's
    // own thread) reads Redis through a blocking connection of its own.
    let mut conn = redis.conn();
    wait_until_sync("both jobs to start", Duration::from_secs(10), || {
        started.load(Ordering::SeqCst) == 2
    });
    let first_beat: f64 = conn.hget(&identity, "beat").unwrap();
    let until = Instant::now() + block - Duration::from_millis(500);
    let mut last_beat = first_beat;
    while Instant::now() < until {
        let alive: bool = conn.exists(&identity).unwrap();
        assert!(
            alive,
            "the heartbeat of a process running blocking jobs expired after {:?}",
            Instant::now() - (until - block + Duration::from_millis(500))
        );
        last_beat = conn.hget(&identity, "beat").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        last_beat - first_beat >= (block - ttl).as_secs_f64(),
        "the process kept beating while its jobs blocked ({first_beat} → {last_beat})"
    );
    handle.stop();
    running.await.unwrap().unwrap();
}

/// Each beat sends the running jobs to Redis once: into `<identity>:work` (Sidekiq 6.5+),
/// copied by the server into `<identity>:workers` (Sidekiq 6.4). It used to send them twice.
#[tokio::test]
async fn a_beat_sends_the_running_jobs_once() {
    use errand::broker::{Fleet, Heartbeat, WorkEntry};
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    let mut conn = redis.conn();
    let big = "x".repeat(100_000);
    let work: Vec<WorkEntry> = (0..4)
        .map(|i| WorkEntry {
            tid: format!("t{i}"),
            json: serde_json::json!({"queue": "default", "payload": big, "run_at": 1}).to_string(),
        })
        .collect();
    let sent: usize = work.iter().map(|w| w.json.len()).sum();
    let input = |conn: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(conn).unwrap();
        info.lines()
            .find_map(|l| l.trim_end().strip_prefix("total_net_input_bytes:"))
            .unwrap()
            .parse()
            .unwrap()
    };
    let identity = "host:1:beat";
    let before = input(&mut conn);
    broker
        .heartbeat(&Heartbeat {
            identity,
            info: r#"{"queues":["default"]}"#,
            busy: work.len(),
            concurrency: 5,
            beat: 1.0,
            quiet: false,
            rss_kb: 0,
            work: &work,
            processed: 0,
            failed: 0,
            cancelled: 0,
            expired: 0,
            ttl: Duration::from_secs(60),
        })
        .await
        .unwrap();
    let received = input(&mut conn) - before;
    assert!(
        (received as f64) < sent as f64 * 1.2,
        "Redis received {received} bytes for {sent} bytes of running jobs"
    );
    let copy: std::collections::HashMap<String, String> =
        conn.hgetall(format!("{identity}:workers")).unwrap();
    let original: std::collections::HashMap<String, String> =
        conn.hgetall(format!("{identity}:work")).unwrap();
    assert_eq!(copy.len(), 4);
    assert_eq!(copy, original, "Sidekiq 6.4's hash holds the same jobs");
    let ttl: i64 = conn.ttl(format!("{identity}:workers")).unwrap();
    assert!((1..=60).contains(&ttl), "and expires with the beat: {ttl}");
}
