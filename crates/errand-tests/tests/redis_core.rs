//! The core job lifecycle on a real Redis: push, fetch, run, ack, retry, dead, drop, snooze,
//! poller, recovery, limits and bad input. Each test gets its own redis-server.

use errand::broker::DeadLimits;
use errand::redis::RedisBroker;
use errand::{
    Client, Job, JobContext, JobError, JobOptions, JobResult, Push, Server, ServerHandle,
};
use errand_tests::{RedisServer, init_tracing, wait_until};
use redis::Commands;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// What jobs did, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, prefix: &str) -> usize {
        self.all().iter().filter(|s| s.starts_with(prefix)).count()
    }
}

fn log(cx: &JobContext) -> Log {
    cx.data::<Log>().expect("log registered").clone()
}

#[derive(Serialize, Deserialize)]
struct Echo {
    id: u64,
    name: String,
}
impl Job for Echo {
    const NAME: &'static str = "Echo";
    async fn perform(self, cx: &JobContext) -> JobResult {
        log(cx).push(format!("echo:{}:{}:{}", self.id, self.name, cx.queue()));
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Fail(u64);
impl Job for Fail {
    const NAME: &'static str = "Fail";
    fn options() -> JobOptions {
        JobOptions::default().retry(3).backtrace(5)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        log(cx).push(format!("fail:{}", self.0));
        Err(std::io::Error::other(format!("boom {}", self.0)))?
    }
}

static EXHAUSTED: AtomicUsize = AtomicUsize::new(0);

#[derive(Serialize, Deserialize)]
struct FailZero(u64);
impl Job for FailZero {
    const NAME: &'static str = "FailZero";
    fn options() -> JobOptions {
        JobOptions::default().retry(0)
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Err(JobError::retry("always").with_class("Billing::Declined"))
    }
    fn retries_exhausted(payload: &errand::Payload, _error: &JobError) {
        // Tests run in parallel in one process: count only the one test's job.
        if payload.args() == [json!(1000)] {
            EXHAUSTED.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct NoRetry(u64);
impl Job for NoRetry {
    const NAME: &'static str = "NoRetry";
    fn options() -> JobOptions {
        JobOptions::default().no_retry()
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Err(JobError::retry("nope"))
    }
}

#[derive(Serialize, Deserialize)]
struct Outcome(String);
impl Job for Outcome {
    const NAME: &'static str = "Outcome";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let l = log(cx);
        l.push(format!("outcome:{}", self.0));
        match self.0.as_str() {
            "discard" => Err(JobError::discard("user is gone")),
            "dead" => Err(JobError::dead("card declined")),
            "panic" => panic!("job exploded"),
            "sleep" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            }
            "snooze" if l.count("outcome:snooze") == 1 => {
                Err(JobError::snooze(Duration::from_millis(300)))
            }
            _ => Ok(()),
        }
    }
}

struct H {
    redis: RedisServer,
    broker: RedisBroker,
    client: Client,
    log: Log,
    deaths: Arc<AtomicUsize>,
}

/// Pushes one job string onto `queue`, straight through the broker.
async fn push_one(broker: &RedisBroker, queue: &str, payload: &str) {
    use errand::broker::{Enqueue, JobQueue};
    broker
        .push(&[Enqueue {
            queue: queue.into(),
            payload: payload.into(),
        }])
        .await
        .unwrap();
}

async fn harness() -> H {
    init_tracing();
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    H {
        client: Client::new(broker.clone()),
        broker,
        redis,
        log: Log::default(),
        deaths: Arc::default(),
    }
}

impl H {
    fn server(&self) -> errand::ServerBuilder {
        let deaths = self.deaths.clone();
        Server::builder(self.broker.clone())
            .register::<Echo>()
            .register::<Fail>()
            .register::<FailZero>()
            .register::<NoRetry>()
            .register::<Outcome>()
            .data(self.log.clone())
            .death_handler(move |_p, _e| {
                deaths.fetch_add(1, Ordering::SeqCst);
            })
            .heartbeat_interval(Duration::from_millis(200))
            .poll_interval(Duration::from_millis(100))
            .rescue_interval(Duration::from_millis(200))
            .process_ttl(Duration::from_secs(2))
            .handle_signals(false)
    }

    fn start(&self, b: errand::ServerBuilder) -> (ServerHandle, tokio::task::JoinHandle<()>) {
        let server = b.build().unwrap();
        let handle = server.handle();
        let stop = handle.clone();
        let task = tokio::spawn(async move {
            server.run_until(std::future::pending()).await.unwrap();
        });
        let _ = stop;
        (handle, task)
    }

    fn zset(&self, key: &str) -> Vec<(Value, f64)> {
        let raw: Vec<(String, f64)> = self.redis.conn().zrange_withscores(key, 0, -1).unwrap();
        raw.into_iter()
            .map(|(s, score)| (serde_json::from_str(&s).unwrap(), score))
            .collect()
    }

    fn zcard(&self, key: &str) -> usize {
        self.redis.conn().zcard(key).unwrap()
    }

    async fn wait_zcard(&self, key: &str, n: usize) {
        wait_until(&format!("{key} to hold {n}"), T, || async {
            self.zcard(key) == n
        })
        .await;
    }

    async fn wait_log(&self, prefix: &str, n: usize) {
        wait_until(&format!("{n} log entries {prefix}"), T, || async {
            self.log.count(prefix) >= n
        })
        .await;
    }

    fn int(&self, key: &str) -> i64 {
        self.redis
            .conn()
            .get::<_, Option<i64>>(key)
            .unwrap()
            .unwrap_or(0)
    }
}

async fn stop(handle: ServerHandle, task: tokio::task::JoinHandle<()>) {
    handle.stop();
    tokio::time::timeout(T, task)
        .await
        .expect("server stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_run_ack_and_stats() {
    let h = harness().await;
    let jid = h
        .client
        .push(Echo {
            id: 1,
            name: "two".into(),
        })
        .await
        .unwrap();
    assert_eq!(jid.len(), 24);
    let raw: Vec<String> = h.redis.conn().lrange("queue:default", 0, -1).unwrap();
    let p: Value = serde_json::from_str(&raw[0]).unwrap();
    assert_eq!(p["args"], json!([1, "two"]));
    assert_eq!(p["class"], "Echo");
    assert_eq!(p["retry"], true);
    assert!(p["enqueued_at"].is_f64() && p["created_at"].is_f64());
    let queues: Vec<String> = h.redis.conn().smembers("queues").unwrap();
    assert_eq!(queues, vec!["default"]);

    let (handle, task) = h.start(h.server());
    h.wait_log("echo:1:two:default", 1).await;
    // Acked: nothing left in flight.
    let identity = handle.identity().to_string();
    wait_until("in-flight hash to empty", T, || async {
        let n: usize = h
            .redis
            .conn()
            .hlen(format!("errand:inflight:{identity}:default"))
            .unwrap();
        n == 0
    })
    .await;
    stop(handle, task).await;
    assert_eq!(h.int("stat:processed"), 1);
    assert_eq!(
        h.int(&format!(
            "stat:processed:{}",
            errand_core::utc_date(errand_core::now())
        )),
        1
    );
    assert_eq!(h.int("stat:failed"), 0);
    let members: Vec<String> = h.redis.conn().smembers("processes").unwrap();
    assert!(
        members.is_empty(),
        "a stopped process leaves the process set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_push_of_100k_jobs() {
    let h = harness().await;
    let jobs = (0..100_000u64).map(|i| Echo {
        id: i,
        name: "b".into(),
    });
    let jids = h.client.push_bulk(jobs).await.unwrap();
    assert_eq!(jids.len(), 100_000);
    let distinct: std::collections::HashSet<_> = jids.iter().collect();
    assert_eq!(distinct.len(), 100_000);
    let len: usize = h.redis.conn().llen("queue:default").unwrap();
    assert_eq!(len, 100_000);
    // FIFO: the oldest push is at the consuming (right) end.
    let oldest: String = h.redis.conn().lindex("queue:default", -1).unwrap();
    assert!(oldest.contains(&jids[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_and_strict_queue_order() {
    let h = harness().await;
    for queue in ["low", "high"] {
        for i in 0..3 {
            let job = Echo {
                id: i,
                name: queue.into(),
            };
            h.client
                .push_with(job, Push::new().queue(queue))
                .await
                .unwrap();
        }
    }
    let (handle, task) = h.start(h.server().queues(["high", "low"]).concurrency(1));
    h.wait_log("echo:", 6).await;
    stop(handle, task).await;
    let order: Vec<String> = h.log.all();
    assert_eq!(
        order,
        vec![
            "echo:0:high:high",
            "echo:1:high:high",
            "echo:2:high:high",
            "echo:0:low:low",
            "echo:1:low:low",
            "echo:2:low:low"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_jobs_run_when_due_and_not_before() {
    let h = harness().await;
    let start = Instant::now();
    h.client
        .push_in(
            Duration::from_secs(1),
            Echo {
                id: 9,
                name: "later".into(),
            },
        )
        .await
        .unwrap();
    let entries = h.zset("schedule");
    assert_eq!(entries.len(), 1);
    assert!(entries[0].0.get("enqueued_at").is_none());
    assert!(entries[0].0.get("at").is_none());
    let (handle, task) = h.start(h.server());
    h.wait_log("echo:9:later", 1).await;
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "ran before it was due"
    );
    stop(handle, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_goes_to_retry_with_sidekiq_fields_and_unknown_keys_kept() {
    let h = harness().await;
    let push = Push::new().set("bid", "abc").set("foo", json!({"bar": []}));
    h.client.push_with(Fail(1), push).await.unwrap();
    let (handle, task) = h.start(h.server());
    h.wait_zcard("retry", 1).await;
    let before = errand_core::now();
    stop(handle, task).await;
    let (p, score) = h.zset("retry").remove(0);
    assert_eq!(p["retry_count"], 0);
    assert_eq!(p["error_class"], "std::io::error::Error");
    assert_eq!(p["error_message"], "boom 1");
    assert!(p["failed_at"].is_f64());
    assert!(p.get("retried_at").is_none());
    assert!(p["error_backtrace"].is_string());
    assert_eq!(p["bid"], "abc");
    assert_eq!(p["foo"], json!({"bar": []}));
    assert_eq!(p["queue"], "default");
    let delay = score - p["failed_at"].as_f64().unwrap();
    assert!(
        (15.0..=24.5).contains(&delay),
        "first retry after 15..24 s, got {delay}"
    );
    assert!(score > before);
    assert_eq!(h.int("stat:failed"), 1);
    assert_eq!(h.deaths.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_retries_are_promoted_and_exhaust_into_dead() {
    let h = harness().await;
    // A job on its last retry (retry: 3, retry_count: 2), already due.
    let mut conn = h.redis.conn();
    let entry = json!({"retry": 3, "queue": "default", "args": [7], "class": "Fail",
        "jid": "0123456789abcdef01234567", "created_at": 1.0, "retry_count": 2,
        "failed_at": 2.5, "error_class": "X", "error_message": "y", "cattr": {"u": 1}});
    let _: () = conn
        .zadd("retry", entry.to_string(), errand_core::now() - 1.0)
        .unwrap();
    let (handle, task) = h.start(h.server());
    h.wait_zcard("dead", 1).await;
    stop(handle, task).await;
    assert_eq!(h.zcard("retry"), 0);
    let (p, _) = h.zset("dead").remove(0);
    assert_eq!(p["retry_count"], 3);
    assert!(p["retried_at"].is_f64());
    assert_eq!(p["failed_at"], 2.5);
    assert_eq!(p["cattr"], json!({"u": 1}));
    assert!(p["enqueued_at"].is_f64(), "the poller stamps enqueued_at");
    assert_eq!(h.deaths.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_zero_dies_at_once_with_hooks_called_once() {
    let h = harness().await;
    h.client.push(FailZero(1000)).await.unwrap();
    let (handle, task) = h.start(h.server());
    h.wait_zcard("dead", 1).await;
    wait_until("death handler", T, || async {
        h.deaths.load(Ordering::SeqCst) == 1
    })
    .await;
    stop(handle, task).await;
    assert_eq!(h.zcard("retry"), 0);
    let (p, _) = h.zset("dead").remove(0);
    assert_eq!(p["retry_count"], 0);
    assert_eq!(p["error_class"], "Billing::Declined");
    assert_eq!(h.deaths.load(Ordering::SeqCst), 1);
    assert_eq!(EXHAUSTED.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_false_is_dropped_counted_and_reported() {
    let h = harness().await;
    h.client.push(NoRetry(1)).await.unwrap();
    let (handle, task) = h.start(h.server());
    wait_until("death handler", T, || async {
        h.deaths.load(Ordering::SeqCst) == 1
    })
    .await;
    stop(handle, task).await;
    assert_eq!(h.zcard("retry"), 0);
    assert_eq!(h.zcard("dead"), 0);
    assert_eq!(h.int("stat:failed"), 1);
    assert_eq!(h.int("stat:processed"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_dead_now_panic_and_snooze() {
    let h = harness().await;
    for o in ["discard", "dead", "panic", "snooze"] {
        h.client.push(Outcome(o.into())).await.unwrap();
    }
    let (handle, task) = h.start(h.server().concurrency(4));
    h.wait_log("outcome:snooze", 2).await;
    h.wait_zcard("dead", 1).await;
    h.wait_zcard("retry", 1).await;
    stop(handle, task).await;
    // discard: no retry, no dead, no death handler. dead: dead now. panic: a retry.
    let (dead, _) = h.zset("dead").remove(0);
    assert_eq!(dead["args"], json!(["dead"]));
    assert_eq!(dead["error_message"], "card declined");
    let (retry, _) = h.zset("retry").remove(0);
    assert_eq!(retry["args"], json!(["panic"]));
    assert_eq!(retry["error_class"], "Errand::Panic");
    assert_eq!(retry["error_message"], "job exploded");
    assert_eq!(h.deaths.load(Ordering::SeqCst), 1);
    assert_eq!(h.zcard("schedule"), 0, "the snoozed job ran again");
    // discard, dead and panic count as failed; snooze does not.
    assert_eq!(h.int("stat:failed"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_timeout_is_a_failed_attempt() {
    let h = harness().await;
    h.client.push(Outcome("sleep".into())).await.unwrap();
    let (handle, task) = h.start(h.server().job_timeout(Duration::from_millis(200)));
    h.wait_zcard("retry", 1).await;
    stop(handle, task).await;
    let (p, _) = h.zset("retry").remove(0);
    assert_eq!(p["error_class"], "Errand::Timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_loses_nothing_and_crashes_nothing() {
    let h = harness().await;
    let mut conn = h.redis.conn();
    let _: () = conn.lpush("queue:default", "not json").unwrap();
    let _: () = conn.lpush("queue:default", r#"{"class":"Echo"}"#).unwrap();
    h.client
        .push_raw(errand::RawJob::new("Nope", vec![json!(1)]), Push::new())
        .await
        .unwrap();
    h.client
        .push_raw(errand::RawJob::new("Echo", vec![json!("x")]), Push::new())
        .await
        .unwrap();
    h.client
        .push(Echo {
            id: 5,
            name: "after".into(),
        })
        .await
        .unwrap();
    let (handle, task) = h.start(h.server());
    h.wait_log("echo:5:after", 1).await;
    h.wait_zcard("dead", 2).await;
    h.wait_zcard("retry", 2).await;
    stop(handle, task).await;
    let dead = h.zset("dead");
    let raws: Vec<&str> = dead
        .iter()
        .map(|(p, _)| p["raw"].as_str().unwrap())
        .collect();
    assert!(raws.contains(&"not json"));
    assert!(raws.contains(&r#"{"class":"Echo"}"#));
    for (p, _) in &dead {
        assert_eq!(p["error_class"], "Errand::InvalidPayload");
        assert!(
            p["error_message"]
                .as_str()
                .unwrap()
                .contains("not a runnable job")
        );
    }
    let retry = h.zset("retry");
    let msgs: Vec<String> = retry
        .iter()
        .map(|(p, _)| p["error_message"].to_string())
        .collect();
    assert!(msgs.iter().any(|m| m.contains("class Nope")), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.contains("arguments do not fit Echo")),
        "{msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_set_is_trimmed_by_size_and_age() {
    let h = harness().await;
    let mut conn = h.redis.conn();
    let old = json!({"class": "Old", "args": [], "jid": "old"}).to_string();
    let _: () = conn.zadd("dead", old, errand_core::now() - 7200.0).unwrap();
    for i in 0..5 {
        h.client.push(FailZero(i)).await.unwrap();
    }
    let limits = DeadLimits {
        max_jobs: 3,
        max_age: Duration::from_secs(3600),
    };
    let (handle, task) = h.start(h.server().dead_limits(limits).concurrency(1));
    wait_until("five deaths", T, || async {
        h.deaths.load(Ordering::SeqCst) == 5
    })
    .await;
    stop(handle, task).await;
    let dead = h.zset("dead");
    assert_eq!(dead.len(), 3, "keeps exactly max_jobs");
    assert!(
        dead.iter().all(|(p, _)| p["class"] == "FailZero"),
        "the old entry aged out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_jobs_of_a_dead_process_are_recovered() {
    let h = harness().await;
    let mut conn = h.redis.conn();
    let payload = h
        .client
        .build(
            &Echo {
                id: 3,
                name: "orphan".into(),
            },
            &Push::new(),
        )
        .unwrap()
        .to_json();
    // A process of an older version that died: registered, a job in its in-flight *list* (the
    // layout before in-flight hashes), heartbeat hash expired (absent). Recovered all the same.
    let _: () = conn
        .hset(
            "errand:processes",
            "deadhost:1:abc",
            r#"{"queues":["default"]}"#,
        )
        .unwrap();
    let _: () = conn
        .lpush("errand:inflight:deadhost:1:abc:default", &payload)
        .unwrap();
    let (handle, task) = h.start(h.server());
    h.wait_log("echo:3:orphan", 1).await;
    stop(handle, task).await;
    let left: usize = conn.llen("errand:inflight:deadhost:1:abc:default").unwrap();
    assert_eq!(left, 0);
    let registered: bool = conn.hexists("errand:processes", "deadhost:1:abc").unwrap();
    assert!(!registered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_writes_sidekiq_process_state_and_obeys_remote_quiet() {
    let h = harness().await;
    h.client.push(Outcome("sleep".into())).await.unwrap();
    let (handle, task) = h.start(
        h.server()
            .tag("t1")
            .shutdown_timeout(Duration::from_millis(300)),
    );
    let id = handle.identity().to_string();
    let mut conn = h.redis.conn();
    wait_until("busy 1 in the process hash", T, || async {
        h.redis
            .conn()
            .hget::<_, _, Option<String>>(&id, "busy")
            .unwrap()
            .as_deref()
            == Some("1")
    })
    .await;
    let info: String = conn.hget(&id, "info").unwrap();
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["tag"], "t1");
    assert_eq!(info["queues"], json!(["default"]));
    assert_eq!(info["concurrency"], 10);
    let ttl: i64 = conn.ttl(&id).unwrap();
    assert!(ttl > 0 && ttl <= 2);
    for suffix in ["workers", "work"] {
        let work: std::collections::HashMap<String, String> =
            conn.hgetall(format!("{id}:{suffix}")).unwrap();
        assert_eq!(work.len(), 1, "{suffix}");
        let entry: Value = serde_json::from_str(work.values().next().unwrap()).unwrap();
        let inner: Value = serde_json::from_str(entry["payload"].as_str().unwrap()).unwrap();
        assert_eq!(inner["class"], "Outcome");
    }
    let _: () = conn.lpush(format!("{id}-signals"), "TSTP").unwrap();
    wait_until("quiet=true", T, || async {
        h.redis
            .conn()
            .hget::<_, _, Option<String>>(&id, "quiet")
            .unwrap()
            .as_deref()
            == Some("true")
    })
    .await;
    let _: () = conn.lpush(format!("{id}-signals"), "TERM").unwrap();
    // The remote stop shuts the server down on its own: the sleeping job is put back.
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("remote TERM stops")
        .unwrap();
    let _ = handle;
    let queued: Vec<String> = conn.lrange("queue:default", 0, -1).unwrap();
    assert_eq!(queued.len(), 1, "the unfinished job is back on its queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_refuses_bad_arguments_and_oversized_payloads() {
    let h = harness().await;
    #[derive(Serialize, Deserialize)]
    struct BadKeys(std::collections::HashMap<(u8, u8), u8>);
    impl Job for BadKeys {
        const NAME: &'static str = "BadKeys";
        async fn perform(self, _cx: &JobContext) -> JobResult {
            Ok(())
        }
    }
    let mut m = std::collections::HashMap::new();
    m.insert((1, 2), 3);
    let e = h.client.push(BadKeys(m)).await.unwrap_err();
    assert!(e.to_string().contains("invalid job"), "{e}");
    let small = h.client.clone().max_payload_size(200);
    let e = small
        .push(Echo {
            id: 1,
            name: "x".repeat(500),
        })
        .await
        .unwrap_err();
    assert!(format!("{:?}", e).contains("TooLarge"));
    let len: usize = h.redis.conn().llen("queue:default").unwrap();
    assert_eq!(len, 0, "nothing was pushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_profile_v8_writes_integer_millis() {
    let h = harness().await;
    let client = h.client.clone().wire_profile(errand::WireProfile::V8);
    client
        .push(Echo {
            id: 1,
            name: "v8".into(),
        })
        .await
        .unwrap();
    let raw: String = h.redis.conn().lindex("queue:default", 0).unwrap();
    let p: Value = serde_json::from_str(&raw).unwrap();
    assert!(p["created_at"].is_u64() && p["enqueued_at"].as_u64().unwrap() > 1_000_000_000_000);
}

#[derive(Serialize, Deserialize)]
struct SlowBackoff(u64);
impl Job for SlowBackoff {
    const NAME: &'static str = "SlowBackoff";
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Err(JobError::retry("later"))
    }
    fn retry_in(count: u32, _error: &JobError) -> Option<Duration> {
        Some(Duration::from_secs(1000 + u64::from(count)))
    }
}

/// Records around each job, and short-circuits jobs whose first argument is "blocked".
struct Around(Log);

#[errand::async_trait]
impl errand::middleware::Middleware for Around {
    async fn call(&self, cx: &JobContext, next: errand::middleware::Next<'_>) -> JobResult {
        if cx.payload().args().first() == Some(&json!("blocked")) {
            self.0.push("mw:blocked".into());
            return Err(JobError::discard("blocked by middleware"));
        }
        self.0.push(format!("mw:before:{}", cx.class()));
        let r = next.run().await;
        self.0.push(format!("mw:after:{}", r.is_ok()));
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_custom_backoff_and_a_panicking_death_handler() {
    let h = harness().await;
    h.client.push(Outcome("ok".into())).await.unwrap();
    h.client.push(Outcome("blocked".into())).await.unwrap();
    h.client.push(SlowBackoff(1)).await.unwrap();
    h.client.push(FailZero(7)).await.unwrap();
    let second = Arc::new(AtomicUsize::new(0));
    let counter = second.clone();
    let b = h
        .server()
        .register::<SlowBackoff>()
        .middleware(Around(h.log.clone()))
        .death_handler(|_p, _e| panic!("a broken alerting hook"))
        .death_handler(move |p, e| {
            assert_eq!(p.class(), "FailZero");
            assert_eq!(e.message(), "always");
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .concurrency(1);
    let (handle, task) = h.start(b);
    h.wait_zcard("retry", 1).await;
    h.wait_zcard("dead", 1).await;
    wait_until("the later death handler", T, || async {
        second.load(Ordering::SeqCst) == 1
    })
    .await;
    stop(handle, task).await;
    let log = h.log.all();
    assert!(log.contains(&"mw:blocked".to_string()));
    assert!(
        !log.contains(&"outcome:blocked".to_string()),
        "the middleware stopped the job"
    );
    let i = log.iter().position(|s| s == "mw:before:Outcome").unwrap();
    assert_eq!(log[i + 1], "outcome:ok");
    assert_eq!(log[i + 2], "mw:after:true");
    let (p, score) = h.zset("retry").remove(0);
    assert_eq!(p["class"], "SlowBackoff");
    let delay = score - p["failed_at"].as_f64().unwrap();
    assert!(
        (1000.0..=1009.5).contains(&delay),
        "custom delay plus jitter, got {delay}"
    );
    assert_eq!(
        h.deaths.load(Ordering::SeqCst),
        1,
        "the first handler still ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_protected_redis_url() {
    init_tracing();
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query(&mut conn)
        .unwrap();
    let url = redis.url().replace("redis://", "redis://:s3cret@");
    let broker = RedisBroker::connect(&url).await.unwrap();
    Client::new(broker)
        .push(Echo {
            id: 1,
            name: "pw".into(),
        })
        .await
        .unwrap();
    let wrong = redis.url().replace("redis://", "redis://:wrong@");
    assert!(
        RedisBroker::connect(&wrong).await.is_err(),
        "a wrong password is refused"
    );
    let mut authed = redis::Client::open(url).unwrap().get_connection().unwrap();
    let len: usize = authed.llen("queue:default").unwrap();
    assert_eq!(len, 1);
}

/// R13 (dead set bounds at scale): 15,000 jobs that die at once leave exactly the default
/// 10,000 newest in the dead set; the oldest 5,000 were trimmed first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_thousand_deaths_keep_the_newest_ten_thousand() {
    let h = harness().await;
    h.client
        .push_bulk((2_000..17_000).map(FailZero))
        .await
        .unwrap();
    let server = h
        .server()
        .clear_middleware()
        .concurrency(1)
        .build()
        .unwrap();
    let drained = server.drain().await.unwrap();
    assert_eq!(drained.performed, 15_000);
    let mut conn = h.redis.conn();
    let size: usize = conn.zcard("dead").unwrap();
    assert_eq!(size, 10_000, "the default bound, exactly");
    let dead: Vec<String> = conn.zrange("dead", 0, -1).unwrap();
    let mut kept: Vec<u64> = dead
        .iter()
        .map(|raw| {
            serde_json::from_str::<Value>(raw).unwrap()["args"][0]
                .as_u64()
                .unwrap()
        })
        .collect();
    kept.sort_unstable();
    assert_eq!(kept.first(), Some(&7_000), "the oldest 5,000 went first");
    assert_eq!(kept.last(), Some(&16_999));
}

/// A waiting fetch takes its job and its fencing token in one step (issue 13, item 9): it used
/// to move the job into flight with BLMOVE and then take the token with a separate INCR, so a
/// failed INCR (here: refused by the ACL) left the job stranded in flight while the fetch
/// reported an error, and a stall between the two gave the stale attempt the larger token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_takes_job_and_token_in_one_step() {
    use errand::broker::{FetchRequest, Fleet, JobQueue};
    let server = RedisServer::start();
    server.acl_setuser(
        "fetcher",
        &["reset", "on", ">pw", "~*", "&*", "+@all", "-incr"],
    );
    let broker = RedisBroker::connect(&server.url_as("fetcher", "pw"))
        .await
        .unwrap();
    let queues = vec!["default".to_string()];
    let waiting = {
        let broker = broker.clone();
        let queues = queues.clone();
        tokio::spawn(async move {
            broker
                .fetch(FetchRequest {
                    identity: "host:1:waiter",
                    queues: &queues,
                    max: 1,
                    wait: Duration::from_secs(10),
                })
                .await
        })
    };
    // Push once the fetch has found nothing and is blocked waiting.
    wait_until("the fetch to block", Duration::from_secs(10), || async {
        server.info_field("clients", "blocked_clients").as_deref() == Some("1")
    })
    .await;
    let payload = r#"{"class":"Noop","args":[],"jid":"waited","queue":"default"}"#;
    push_one(&broker, "default", payload).await;
    let got = waiting
        .await
        .unwrap()
        .expect("the waiting fetch gets the job");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].raw, payload);
    assert!(got[0].token > 0, "a fencing token: {}", got[0].token);
    let held = broker.held("host:1:waiter", &queues).await.unwrap();
    assert_eq!(held.len(), 1, "held exactly once");
    assert!(broker.ack(&got[0]).await.unwrap());
}

/// A fetch over several queues waits for a job on any of them: each of the queues is watched
/// by a blocking wait of its own, so a job pushed to the last queue wakes the fetch at once.
/// (It used to wait on the first queue only, for at most 100 ms, and return empty: a job on a
/// later queue of an idle server waited up to 100 ms, and an idle server polled ten times a
/// second.) A second fetch finds the first's pending waits still there and adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_over_several_queues_wakes_for_a_job_on_any_of_them() {
    use errand::broker::{FetchRequest, JobQueue};
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    let queues: Vec<String> = ["critical", "default", "mailers"]
        .map(String::from)
        .to_vec();
    let fetch = |wait: Duration| {
        let broker = broker.clone();
        let queues = queues.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = broker
                .fetch(FetchRequest {
                    identity: "host:1:waiter",
                    queues: &queues,
                    max: 5,
                    wait,
                })
                .await;
            (got, started.elapsed())
        })
    };
    let blocked = || server.info_field("clients", "blocked_clients");

    // An empty round: every queue watched, nothing found when the wait ends.
    let (got, _) = fetch(Duration::from_millis(300)).await.unwrap();
    assert!(got.unwrap().is_empty());

    let waiting = fetch(Duration::from_secs(10));
    wait_until("a wait on each queue", Duration::from_secs(10), || async {
        blocked().as_deref() == Some("3")
    })
    .await;
    let pushed_at = Instant::now();
    let payload = r#"{"class":"Noop","args":[],"jid":"late","queue":"mailers"}"#;
    push_one(&broker, "mailers", payload).await;
    let (got, waited) = waiting.await.unwrap();
    let got = got.expect("the waiting fetch gets the job");
    assert_eq!(got.len(), 1, "the job on the last queue wakes the fetch");
    assert_eq!(got[0].raw, payload);
    assert_eq!(got[0].queue, "mailers");
    eprintln!(
        "woken {:?} after the push ({:?} into the fetch)",
        pushed_at.elapsed(),
        waited
    );
    // The other two waits are still pending on their own connections; a new fetch adds none.
    assert_eq!(blocked().as_deref(), Some("2"));
    let again = fetch(Duration::from_secs(10));
    wait_until("the mailers wait back", Duration::from_secs(10), || async {
        blocked().as_deref() == Some("3")
    })
    .await;
    push_one(
        &broker,
        "critical",
        r#"{"class":"Noop","args":[],"jid":"first","queue":"critical"}"#,
    )
    .await;
    let (got, _) = again.await.unwrap();
    assert_eq!(got.unwrap()[0].queue, "critical");
}

/// A fencing counter expires a day after the permit it was taken with (a mutex per order
/// leaves no key behind), and a token taken after it is gone is still larger than every token
/// before (issue 13, item 13).
#[tokio::test]
async fn fence_counters_expire_and_tokens_still_grow() {
    use errand::broker::{Coordination, FENCE_GRACE, PermitGrant, PermitRequest};
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    let mut conn = redis.conn();
    let take = |holder: &'static str| {
        let b = broker.clone();
        async move {
            match b
                .permit_acquire(PermitRequest {
                    key: "mutex:order-1001",
                    holder,
                    max: 1,
                    ttl: Duration::from_secs(30),
                    fence: true,
                })
                .await
                .unwrap()
            {
                PermitGrant::Granted { token } => token,
                PermitGrant::Full { holder } => panic!("held by {holder}"),
            }
        }
    };
    let t1 = take("a").await;
    let t2 = take("a").await;
    assert!(t2 > t1, "{t1} {t2}");
    let pttl: i64 = conn.pttl("errand:fence:mutex:order-1001").unwrap();
    let life = (FENCE_GRACE + Duration::from_secs(30)).as_millis() as i64;
    assert!(
        (life - 5_000..=life).contains(&pttl),
        "the counter lives a day past the permit: {pttl} ms"
    );
    // As if the day had passed: the counter is gone, and Redis's clock is past the last token
    // (a day later it is far past it).
    let _: () = conn.del("errand:fence:mutex:order-1001").unwrap();
    wait_until(
        "Redis's clock to pass the last token",
        Duration::from_secs(5),
        || {
            let b = broker.clone();
            async move { (errand::broker::JobQueue::now(&b).await.unwrap() * 1000.0) as u64 > t2 }
        },
    )
    .await;
    assert!(
        broker
            .permit_release("mutex:order-1001", "a")
            .await
            .unwrap()
    );
    let t3 = take("b").await;
    assert!(
        t3 > t2,
        "a token after the counter expired is still newer: {t2} → {t3}"
    );
}

/// What once-only records cost (the figure docs/patterns.md quotes): a completed step's record
/// (`errand:once:<jid>:<step>`, a hash with its owner and output, kept 30 days by default).
#[tokio::test]
async fn once_records_cost_under_three_hundred_bytes_each() {
    use errand::broker::{Coordination, OnceCompletion, OnceRequest};
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    let mut conn = redis.conn();
    let used = |conn: &mut redis::Connection| -> i64 {
        let info: String = redis::cmd("INFO").arg("memory").query(conn).unwrap();
        info.lines()
            .find_map(|l| l.trim_end().strip_prefix("used_memory:"))
            .unwrap()
            .parse()
            .unwrap()
    };
    const N: usize = 2_000;
    let before = used(&mut conn);
    for i in 0..N {
        // A 24-character jid and a short step name, as `cx.once("charge", ..)` writes them.
        let key = format!("errand:once:{i:024x}:charge");
        let owner = format!("{i:032x}");
        broker
            .once_claim(OnceRequest {
                key: &key,
                owner: &owner,
                ttl: Duration::from_secs(30),
            })
            .await
            .unwrap();
        broker
            .once_complete(OnceCompletion {
                key: &key,
                owner: &owner,
                output: "null",
                keep: Duration::from_secs(30 * 24 * 3600),
            })
            .await
            .unwrap();
    }
    let per_record = (used(&mut conn) - before) as f64 / N as f64;
    eprintln!("once record: {per_record:.0} bytes each");
    assert!(
        (150.0..=300.0).contains(&per_record),
        "a completed once record costs {per_record:.0} bytes"
    );
}
