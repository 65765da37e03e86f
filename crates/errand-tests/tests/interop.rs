//! Interop tests: real Ruby Sidekiq 6.4 and Errand sharing a real `redis-server` (spec §6).
//!
//! Every test has its own Redis. The Errand server runs inside the test as a tokio task
//! (`run_until`), Ruby runs as short snippets (`ruby()`, client and API) or as a real `sidekiq`
//! process (`RubySidekiq`). Jobs report their executions to the test through a [`Recorder`]
//! shared with `.data(..)`.

use errand::redis::RedisBroker;
use errand::{Client, Job, JobContext, JobError, JobOptions, JobResult, Push, RawJob, Server};
use errand_tests::{RedisServer, RubySidekiq, ruby, ruby_dir, wait_until_sync};
use redis::Commands;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Generous: Ruby boots slowly and the machine is small.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------------------------

/// One execution of an Errand job, as the job saw it.
#[derive(Debug, Clone)]
struct Ran {
    class: String,
    jid: String,
    /// The typed arguments, re-encoded as JSON.
    args: Value,
    /// Epoch seconds when `perform` started.
    at: f64,
}

/// Executions shared between the jobs (through `.data(..)`) and the test.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Ran>>>);

impl Recorder {
    fn all(&self) -> Vec<Ran> {
        self.0.lock().unwrap().clone()
    }

    fn of(&self, class: &str) -> Vec<Ran> {
        self.all()
            .into_iter()
            .filter(|r| r.class == class)
            .collect()
    }

    fn by_jid(&self, jid: &str) -> Vec<Ran> {
        self.all().into_iter().filter(|r| r.jid == jid).collect()
    }
}

/// Records one execution of `J` with its typed arguments.
fn record<J: Job>(cx: &JobContext, job: &J) -> JobResult {
    let rec = cx
        .data::<Recorder>()
        .ok_or_else(|| JobError::dead("no recorder registered"))?;
    rec.0.lock().unwrap().push(Ran {
        class: J::NAME.to_string(),
        jid: cx.jid().to_string(),
        args: serde_json::to_value(job).unwrap_or(Value::Null),
        at: errand_core::now(),
    });
    Ok(())
}

/// Jobs whose whole work is recording their execution, named after their type.
macro_rules! recording_jobs {
    ($($job:ident),+) => {$(
        impl Job for $job {
            const NAME: &'static str = stringify!($job);
            async fn perform(self, cx: &JobContext) -> JobResult {
                record(cx, &self)
            }
        }
    )+};
}

recording_jobs!(TripleJob, FifoJob, LaterJob, QuickJob, UserWelcomeJob);

async fn broker(url: &str) -> RedisBroker {
    RedisBroker::connect(url).await.expect("connect broker")
}

/// A server with the test's short intervals.
fn builder(b: RedisBroker, rec: &Recorder) -> errand::ServerBuilder {
    Server::builder(b)
        .data(rec.clone())
        .heartbeat_interval(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(500))
        .process_ttl(Duration::from_secs(10))
        .shutdown_timeout(Duration::from_secs(2))
}

/// An Errand server running as a task of the test's runtime.
struct Running {
    handle: errand::ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), errand::Error>>,
}

fn spawn(b: errand::ServerBuilder) -> Running {
    let server = b.build().expect("valid server config");
    let handle = server.handle();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = rx.await;
    }));
    Running {
        handle,
        stop: Some(tx),
        task,
    }
}

impl Running {
    /// Stops the server and waits for its run future to complete.
    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked")
            .expect("server returned an error");
    }
}

/// Runs a Ruby snippet and parses the JSON it printed last.
fn ruby_json(url: &str, script: &str) -> Value {
    let out = ruby(url, script);
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("ruby printed no JSON ({e}): {out}"))
}

/// Ruby code that loads `ruby/app.rb` (the ActiveJob and Sidekiq job classes).
fn load_app() -> String {
    format!(
        "load {:?}\n",
        ruby_dir().join("app.rb").display().to_string()
    )
}

fn is_jid(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn zcard(conn: &mut redis::Connection, key: &str) -> usize {
    conn.zcard(key).expect("ZCARD")
}

fn ruby_ran(conn: &mut redis::Connection) -> Vec<Value> {
    let raw: Vec<String> = conn.lrange("ruby:ran", 0, -1).expect("LRANGE ruby:ran");
    raw.iter()
        .map(|s| serde_json::from_str(s).expect("ruby:ran entry is JSON"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct TripleJob {
    a: u64,
    b: String,
    c: Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct FifoJob(String);

#[derive(Debug, Serialize, Deserialize)]
struct LaterJob(u64);

/// Run by Ruby's `OkJob` (app.rb); Errand only pushes it.
#[derive(Debug, Serialize, Deserialize)]
struct OkJob {
    n: u64,
    s: String,
}

impl Job for OkJob {
    const NAME: &'static str = "OkJob";
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Err(JobError::dead("OkJob is Ruby's to run"))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct BulkJob(u64);

impl Job for BulkJob {
    const NAME: &'static str = "BulkJob";
    fn options() -> JobOptions {
        JobOptions::default().queue("bulk")
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        record(cx, &self)
    }
}

const FLAKY_BACKTRACE_LINES: usize = 8;

/// Always fails, with a recognizable class, message and an 8-line backtrace.
#[derive(Debug, Serialize, Deserialize)]
struct FlakyJob {
    n: u64,
}

impl Job for FlakyJob {
    const NAME: &'static str = "FlakyJob";
    fn options() -> JobOptions {
        JobOptions::default().retry(2).backtrace(5)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        record(cx, &self)?;
        Err(JobError::retry(format!("boom {}", self.n))
            .with_class("FlakyError")
            .with_backtrace(
                (0..FLAKY_BACKTRACE_LINES)
                    .map(|i| format!("src/flaky.rs:{i}:in `perform'"))
                    .collect(),
            ))
    }
}

/// Fails with `retry: 0`: straight to the dead set.
#[derive(Debug, Serialize, Deserialize)]
struct DoomedJob(u64);

impl Job for DoomedJob {
    const NAME: &'static str = "DoomedJob";
    fn options() -> JobOptions {
        JobOptions::default().retry(0)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        record(cx, &self)?;
        Err(JobError::retry("doomed").with_class("DoomedError"))
    }
}

/// Runs until the test opens the gate.
#[derive(Debug, Serialize, Deserialize)]
struct SlowJob(u64);

struct Gate(watch::Receiver<bool>);

impl Job for SlowJob {
    const NAME: &'static str = "SlowJob";
    async fn perform(self, cx: &JobContext) -> JobResult {
        record(cx, &self)?;
        let mut gate = cx
            .data::<Gate>()
            .ok_or_else(|| JobError::dead("no gate"))?
            .0
            .clone();
        gate.wait_for(|open| *open)
            .await
            .map_err(|_| JobError::retry("gate dropped"))?;
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct QuickJob(u64);

/// Fails without retries: counted as failed, then dropped.
#[derive(Debug, Serialize, Deserialize)]
struct FailJob(u64);

impl Job for FailJob {
    const NAME: &'static str = "FailJob";
    fn options() -> JobOptions {
        JobOptions::default().no_retry()
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        record(cx, &self)?;
        Err(JobError::retry("nope"))
    }
}

/// The Errand side of Ruby's ActiveJob `UserWelcomeJob` (app.rb).
#[derive(Debug, Serialize, Deserialize)]
struct UserWelcomeJob {
    user_id: u64,
}

// ---------------------------------------------------------------------------------------------
// 1. Ruby pushes, Errand runs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_pushes_errand_runs_typed_args_schedule_and_fifo() {
    errand_tests::init_tracing();
    let redis = RedisServer::start();
    let url = redis.url();

    let pushed = ruby_json(
        &url,
        r#"
        class TripleJob; include Sidekiq::Worker; end
        class FifoJob; include Sidekiq::Worker; end
        class LaterJob; include Sidekiq::Worker; end
        fifo = %w[A B C].map { |x| FifoJob.perform_async(x) }
        triple = TripleJob.perform_async(1, "two", {"x" => 3})
        t0 = Time.now.to_f
        later = LaterJob.perform_in(1, 5)
        entry, score = Sidekiq.redis { |r| r.zrange("schedule", 0, -1, with_scores: true) }.first
        puts JSON.generate("fifo" => fifo, "triple" => triple, "later" => later, "t0" => t0,
                           "entry" => JSON.parse(entry), "score" => score)
        "#,
    );
    let triple_jid = pushed["triple"].as_str().unwrap().to_string();
    let later_jid = pushed["later"].as_str().unwrap().to_string();
    let fifo_jids: Vec<String> = pushed["fifo"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_string())
        .collect();
    let t0 = pushed["t0"].as_f64().unwrap();
    let score = pushed["score"].as_f64().unwrap();
    let entry = &pushed["entry"];
    assert_eq!(entry["jid"], json!(later_jid), "schedule entry: {entry}");
    assert!(
        entry.get("enqueued_at").is_none() && entry.get("at").is_none(),
        "a schedule entry has neither enqueued_at nor at: {entry}"
    );
    assert!(
        (score - (t0 + 1.0)).abs() < 0.5,
        "score {score} is now+1 (t0 {t0})"
    );

    let rec = Recorder::default();
    let server = spawn(
        builder(broker(&url).await, &rec)
            .register::<TripleJob>()
            .register::<FifoJob>()
            .register::<LaterJob>()
            .concurrency(1),
    );

    wait_until_sync("all five Ruby-pushed jobs to run in Errand", WAIT, || {
        rec.all().len() >= 5
    });
    server.shutdown().await;
    let all = rec.all();
    assert_eq!(all.len(), 5, "each job ran exactly once: {all:?}");

    // Typed arguments and the jid Ruby returned.
    let triple = rec.of("TripleJob");
    assert_eq!(triple.len(), 1);
    assert_eq!(triple[0].jid, triple_jid);
    assert_eq!(triple[0].args, json!({"a": 1, "b": "two", "c": {"x": 3}}));

    // FIFO with concurrency 1.
    let fifo = rec.of("FifoJob");
    let order: Vec<&str> = fifo.iter().map(|r| r.args.as_str().unwrap()).collect();
    assert_eq!(order, ["A", "B", "C"]);
    let jids: Vec<&str> = fifo.iter().map(|r| r.jid.as_str()).collect();
    assert_eq!(jids, fifo_jids);

    // perform_in(1): not before its time.
    let later = rec.of("LaterJob");
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].jid, later_jid);
    assert_eq!(later[0].args, json!(5));
    assert!(
        later[0].at >= score && later[0].at - t0 >= 0.95,
        "perform_in(1) ran at {} (pushed {t0}, due {score})",
        later[0].at
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Errand pushes, Ruby runs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errand_pushes_ruby_runs_latency_and_bulk() {
    errand_tests::init_tracing();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let client = Client::new(broker(&url).await);

    // Pushed before Ruby starts, so the timestamps are what Ruby reads.
    let typed_jid = client
        .push(OkJob {
            n: 1,
            s: "one".into(),
        })
        .await
        .unwrap();
    let raw_jid = client
        .push_raw(
            RawJob::new("OkJob", vec![json!(2), json!({"k": ["v"]})]),
            Push::new(),
        )
        .await
        .unwrap();
    assert!(is_jid(&typed_jid) && is_jid(&raw_jid));

    // Latency of a job nobody consumes proves the timestamp units.
    let lonely_jid = client
        .push_with(
            OkJob {
                n: 3,
                s: "lonely".into(),
            },
            Push::new().queue("unconsumed"),
        )
        .await
        .unwrap();
    let lat = ruby_json(
        &url,
        r#"
        q = Sidekiq::Queue.new("unconsumed")
        j = q.first
        puts JSON.generate("latency" => q.latency, "size" => q.size, "jid" => j.jid,
                           "args" => j.args, "enqueued_at" => j.enqueued_at.to_f,
                           "created_at" => j.created_at.to_f, "now" => Time.now.to_f)
        "#,
    );
    assert_eq!(lat["size"], json!(1));
    assert_eq!(lat["jid"], json!(lonely_jid));
    assert_eq!(lat["args"], json!([3, "lonely"]));
    let latency = lat["latency"].as_f64().unwrap();
    assert!(
        (0.0..5.0).contains(&latency),
        "Sidekiq::Queue#latency of an Errand push is {latency}"
    );
    let now = lat["now"].as_f64().unwrap();
    for key in ["enqueued_at", "created_at"] {
        let t = lat[key].as_f64().unwrap();
        assert!(
            (0.0..5.0).contains(&(now - t)),
            "{key} read by Ruby is {t}, now {now}"
        );
    }

    // Bulk: 1,000 distinct jids, all on the queue.
    let jids = client.push_bulk((0..1000).map(BulkJob)).await.unwrap();
    assert_eq!(jids.len(), 1000);
    assert!(jids.iter().all(|j| is_jid(j)), "24-hex jids");
    let distinct: HashSet<&String> = jids.iter().collect();
    assert_eq!(distinct.len(), 1000, "jids are distinct");
    let len: usize = conn.llen("queue:bulk").unwrap();
    assert_eq!(len, 1000);
    let stored: Vec<String> = conn.lrange("queue:bulk", 0, -1).unwrap();
    let stored_jids: HashSet<String> = stored
        .iter()
        .map(|s| {
            let v: Value = serde_json::from_str(s).unwrap();
            v["jid"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(stored_jids, jids.iter().cloned().collect::<HashSet<_>>());
    let bulk = ruby_json(
        &url,
        r#"puts JSON.generate("size" => Sidekiq::Queue.new("bulk").size,
                              "queues" => Sidekiq::Queue.all.map(&:name).sort)"#,
    );
    assert_eq!(bulk["size"], json!(1000));
    assert_eq!(bulk["queues"], json!(["bulk", "default", "unconsumed"]));

    // A real Ruby Sidekiq runs what Errand pushed to `default`.
    let _sidekiq = RubySidekiq::start(&url, &["default"]);
    wait_until_sync("Ruby to run both OkJobs", WAIT, || {
        ruby_ran(&mut conn).len() >= 2
    });
    let mut ran = ruby_ran(&mut conn);
    ran.sort_by_key(|v| v["args"][0].as_u64());
    assert_eq!(
        ran,
        vec![
            json!({"class": "OkJob", "args": [1, "one"], "jid": typed_jid}),
            json!({"class": "OkJob", "args": [2, {"k": ["v"]}], "jid": raw_jid}),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Failures: retry set, retry_all from Ruby, dead set, unknown keys
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errand_failures_seen_and_retried_by_ruby() {
    errand_tests::init_tracing();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let b = broker(&url).await;
    let client = Client::new(b.clone());

    let flaky_jid = client.push(FlakyJob { n: 1 }).await.unwrap();
    let doomed_jid = client.push(DoomedJob(9)).await.unwrap();
    let ruby_jid = ruby_json(
        &url,
        r#"
        jid = Sidekiq::Client.push("class" => "FlakyJob", "args" => [2], "bid" => "abc",
                                   "foo" => {"bar" => []}, "cattr" => {"u" => 1}, "tags" => ["t"])
        puts JSON.generate("jid" => jid)
        "#,
    )["jid"]
        .as_str()
        .unwrap()
        .to_string();

    let rec = Recorder::default();
    let deaths = Arc::new(AtomicUsize::new(0));
    let dead_jids = Arc::new(Mutex::new(Vec::<String>::new()));
    let server = spawn({
        let deaths = deaths.clone();
        let dead_jids = dead_jids.clone();
        builder(b, &rec)
            .register::<FlakyJob>()
            .register::<DoomedJob>()
            .concurrency(2)
            .death_handler(move |p, _e| {
                deaths.fetch_add(1, Ordering::SeqCst);
                dead_jids.lock().unwrap().push(p.jid().to_string());
            })
    });

    wait_until_sync("two retries and one dead job", WAIT, || {
        zcard(&mut conn, "retry") == 2 && zcard(&mut conn, "dead") == 1
    });
    wait_until_sync("the death handler", WAIT, || {
        deaths.load(Ordering::SeqCst) >= 1
    });

    let read_sets = r#"
        retries = Sidekiq::RetrySet.new.map do |e|
          e.item.merge("_bt" => e.error_backtrace, "_score" => e.score,
                       "_bt_class" => e.error_backtrace.class.name)
        end
        dead = Sidekiq::DeadSet.new
        puts JSON.generate("retries" => retries, "dead_size" => dead.size,
                           "dead" => dead.map(&:item), "now" => Time.now.to_f)
    "#;
    let sets = ruby_json(&url, read_sets);
    let now = sets["now"].as_f64().unwrap();
    let find = |sets: &Value, jid: &str| -> Value {
        sets["retries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["jid"] == json!(jid))
            .unwrap_or_else(|| panic!("{jid} not in the retry set: {sets}"))
            .clone()
    };

    let e = find(&sets, &flaky_jid);
    assert_eq!(e["retry_count"], json!(0), "{e}");
    assert_eq!(e["retry"], json!(2), "{e}");
    assert_eq!(e["class"], json!("FlakyJob"));
    assert_eq!(e["queue"], json!("default"));
    assert_eq!(e["error_class"], json!("FlakyError"));
    assert_eq!(e["error_message"], json!("boom 1"));
    assert!(e["failed_at"].is_f64(), "failed_at is a Float: {e}");
    let failed_at = e["failed_at"].as_f64().unwrap();
    assert!(
        (0.0..15.0).contains(&(now - failed_at)),
        "failed_at {failed_at}, now {now}"
    );
    assert!(e.get("retried_at").is_none(), "{e}");
    assert_eq!(
        e["_bt_class"],
        json!("Array"),
        "error_backtrace decodes to an Array"
    );
    let bt = e["_bt"].as_array().unwrap();
    assert_eq!(bt.len(), 5, "backtrace(5) keeps 5 of 8 lines: {bt:?}");
    assert_eq!(bt[0], json!("src/flaky.rs:0:in `perform'"));
    let score = e["_score"].as_f64().unwrap();
    assert!(
        score - failed_at >= 15.0 && score - failed_at <= 25.0,
        "first retry due in 15..24 s: score {score}, failed_at {failed_at}"
    );

    // Unknown keys pushed by Ruby survive the failure unchanged.
    let r = find(&sets, &ruby_jid);
    assert_eq!(r["retry_count"], json!(0), "{r}");
    assert_eq!(r["bid"], json!("abc"));
    assert_eq!(
        r["foo"],
        json!({"bar": []}),
        "foo must stay {{\"bar\":[]}}: {r}"
    );
    assert_eq!(r["cattr"], json!({"u": 1}));
    assert_eq!(r["tags"], json!(["t"]));
    assert_eq!(r["args"], json!([2]));

    // retry(0): straight to the dead set, death handler once.
    assert_eq!(sets["dead_size"], json!(1));
    let d = &sets["dead"][0];
    assert_eq!(d["jid"], json!(doomed_jid), "{d}");
    assert_eq!(d["error_class"], json!("DoomedError"));
    assert_eq!(d["retry_count"], json!(0));
    assert_eq!(*dead_jids.lock().unwrap(), vec![doomed_jid.clone()]);

    // Ruby's retry_all puts both back on their queue; Errand runs them again. Sidekiq 6.4's
    // `retry_all` loops `each(&:retry) while size > 0`, so with a live consumer failing the jobs
    // straight back it would spin: stop Errand first, as an operator would see it.
    server.shutdown().await;
    let n = ruby_json(
        &url,
        r#"rs = Sidekiq::RetrySet.new; n = rs.size; rs.retry_all
           puts JSON.generate("n" => n, "left" => rs.size, "queued" => Sidekiq::Queue.new.size)"#,
    );
    assert_eq!(n, json!({"n": 2, "left": 0, "queued": 2}));
    let server = spawn(
        builder(broker(&url).await, &rec)
            .register::<FlakyJob>()
            .register::<DoomedJob>()
            .concurrency(2),
    );
    wait_until_sync("Errand to run both retried jobs again", WAIT, || {
        rec.by_jid(&flaky_jid).len() >= 2 && rec.by_jid(&ruby_jid).len() >= 2
    });
    wait_until_sync("both to fail back into the retry set", WAIT, || {
        zcard(&mut conn, "retry") == 2
    });
    server.shutdown().await;
    assert_eq!(rec.by_jid(&flaky_jid).len(), 2, "failure count grew by one");
    assert_eq!(rec.by_jid(&ruby_jid).len(), 2);
    assert_eq!(rec.by_jid(&doomed_jid).len(), 1);
    assert_eq!(
        deaths.load(Ordering::SeqCst),
        1,
        "death handler ran exactly once"
    );

    let again = ruby_json(&url, read_sets);
    let e2 = find(&again, &flaky_jid);
    let r2 = find(&again, &ruby_jid);
    assert_eq!(r2["foo"], json!({"bar": []}), "{r2}");
    assert_eq!(r2["bid"], json!("abc"));
    assert_eq!(r2["cattr"], json!({"u": 1}));
    // Sidekiq's `SortedEntry#retry` decrements retry_count (0 → -1) before re-pushing; the
    // next failure increments it back to 0 (see `ruby_retry_all_then_failure_stamps_retried_at`
    // for the timestamps).
    assert_eq!(e2["retry_count"], json!(0), "{e2}");
    assert_eq!(e2["error_message"], json!("boom 1"));
    assert_eq!(e2["_bt"].as_array().map(Vec::len), Some(5));
    assert_eq!(again["dead_size"], json!(1));
}

/// After Ruby's `retry_all` (which leaves `retry_count: -1`), the next failure must be recorded
/// as Sidekiq 6.4's `JobRetry` does: `if msg["retry_count"]` is true for -1, so it stamps
/// `retried_at`, increments to 0, and keeps the original `failed_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_retry_all_then_failure_stamps_retried_at() {
    errand_tests::init_tracing();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let rec = Recorder::default();
    let jid = Client::new(broker(&url).await)
        .push(FlakyJob { n: 3 })
        .await
        .unwrap();
    let run_once = |expected: usize| {
        let rec = rec.clone();
        let url = url.clone();
        let jid = jid.clone();
        async move {
            let server = spawn(
                builder(broker(&url).await, &rec)
                    .register::<FlakyJob>()
                    .concurrency(1),
            );
            let mut conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            wait_until_sync("the flaky job to fail into the retry set", WAIT, || {
                rec.by_jid(&jid).len() == expected && zcard(&mut conn, "retry") == 1
            });
            server.shutdown().await;
        }
    };
    run_once(1).await;
    let read = r#"puts JSON.generate(Sidekiq::RetrySet.new.first.item)"#;
    let first = ruby_json(&url, read);
    ruby(&url, "Sidekiq::RetrySet.new.retry_all");
    assert_eq!(zcard(&mut conn, "retry"), 0);
    run_once(2).await;
    let second = ruby_json(&url, read);
    assert_eq!(second["jid"], json!(jid));
    assert_eq!(second["retry_count"], json!(0), "{second}");
    assert_eq!(
        second["failed_at"], first["failed_at"],
        "failed_at keeps the first failure: {second}"
    );
    assert!(
        second["retried_at"].is_f64(),
        "retried_at is stamped on a re-failure: {second}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. The Errand process seen (and controlled) through Sidekiq's API
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errand_process_seen_and_controlled_by_ruby_api() {
    errand_tests::init_tracing();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let b = broker(&url).await;
    let client = Client::new(b.clone());
    let rec = Recorder::default();
    let (open, gate) = watch::channel(false);

    let slow_jid = client.push(SlowJob(1)).await.unwrap();
    let server = spawn(
        builder(b, &rec)
            .register::<SlowJob>()
            .register::<QuickJob>()
            .register::<FailJob>()
            .data(Gate(gate))
            .concurrency(3)
            .queues(["default", "low"]),
    );
    let identity = server.handle.identity().to_string();

    let read_procs = r#"
        ps = Sidekiq::ProcessSet.new.to_a
        procs = ps.map do |p|
          {"identity" => p.identity, "busy" => p["busy"], "concurrency" => p["concurrency"],
           "hostname" => p["hostname"], "pid" => p["pid"], "queues" => p["queues"],
           "beat" => p["beat"], "stopping" => p.stopping?}
        end
        work = Sidekiq::Workers.new.to_a.map { |key, tid, h| {"key" => key, "tid" => tid, "work" => h} }
        st = Sidekiq::Stats.new
        puts JSON.generate("procs" => procs, "work" => work, "processed" => st.processed,
                           "failed" => st.failed, "processes_size" => st.processes_size,
                           "now" => Time.now.to_f, "host" => Socket.gethostname)
    "#;
    let mut seen = Value::Null;
    wait_until_sync(
        "Ruby to see the Errand process busy with 1 job",
        WAIT,
        || {
            seen = ruby_json(&url, read_procs);
            seen["procs"][0]["busy"] == json!(1)
                && seen["work"].as_array().is_some_and(|w| !w.is_empty())
        },
    );
    let procs = seen["procs"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "exactly one process: {seen}");
    let p = &procs[0];
    assert_eq!(p["identity"], json!(identity));
    assert_eq!(p["concurrency"], json!(3));
    assert_eq!(p["queues"], json!(["default", "low"]));
    assert_eq!(p["hostname"], json!(errand_core::id::hostname()));
    assert_eq!(p["hostname"], seen["host"], "the same hostname Ruby sees");
    assert_eq!(p["pid"], json!(std::process::id()));
    assert_eq!(p["stopping"], json!(false));
    let beat = p["beat"].as_f64().expect("beat is a Float");
    assert!((seen["now"].as_f64().unwrap() - beat).abs() < 10.0);
    assert_eq!(seen["processes_size"], json!(1));
    let work = seen["work"].as_array().unwrap();
    assert_eq!(work.len(), 1, "{seen}");
    assert_eq!(work[0]["key"], json!(identity));
    assert_eq!(work[0]["work"]["queue"], json!("default"));
    assert_eq!(work[0]["work"]["payload"]["jid"], json!(slow_jid));
    assert_eq!(work[0]["work"]["payload"]["class"], json!("SlowJob"));
    assert!(work[0]["work"]["run_at"].is_number(), "{seen}");

    // Counts reach Sidekiq's stats at the next heartbeats.
    for i in 0..3 {
        client.push(QuickJob(i)).await.unwrap();
    }
    client.push(FailJob(7)).await.unwrap();
    wait_until_sync("the quick and failing jobs to run", WAIT, || {
        rec.of("QuickJob").len() == 3 && rec.of("FailJob").len() == 1
    });
    wait_until_sync("stats to be flushed", WAIT, || {
        seen = ruby_json(&url, read_procs);
        seen["processed"].as_u64() >= Some(5) && seen["failed"].as_u64() >= Some(1)
    });
    assert_eq!(
        seen["processed"],
        json!(5),
        "slow + 3 quick + 1 failed: {seen}"
    );
    assert_eq!(seen["failed"], json!(1), "{seen}");
    let stat_failed: Option<u64> = conn.get("stat:failed").unwrap();
    assert_eq!(stat_failed, Some(1));

    open.send(true).unwrap();
    wait_until_sync("the slow job to finish (busy 0)", WAIT, || {
        seen = ruby_json(&url, read_procs);
        seen["procs"][0]["busy"] == json!(0) && seen["work"] == json!([])
    });

    // quiet! from Ruby.
    ruby(&url, "Sidekiq::ProcessSet.new.each(&:quiet!)");
    wait_until_sync("Errand to report quiet", WAIT, || {
        seen = ruby_json(&url, read_procs);
        seen["procs"][0]["stopping"] == json!(true)
    });
    let quiet: Option<String> = conn.hget(&identity, "quiet").unwrap();
    assert_eq!(quiet.as_deref(), Some("true"));
    assert!(
        !server.task.is_finished(),
        "quiet does not stop the process"
    );

    // stop! from Ruby: the run future completes and the identity leaves `processes`.
    ruby(&url, "Sidekiq::ProcessSet.new.each(&:stop!)");
    wait_until_sync("the Errand server to stop", WAIT, || {
        server.task.is_finished()
    });
    let Running { task, .. } = server;
    task.await.unwrap().expect("server stopped cleanly");
    let members: Vec<String> = conn.smembers("processes").unwrap();
    assert!(!members.contains(&identity), "{members:?}");
    let after = ruby_json(&url, read_procs);
    assert_eq!(after["procs"], json!([]), "{after}");
    assert_eq!(after["processes_size"], json!(0));
    assert_eq!(rec.of("SlowJob").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 5. ActiveJob both ways
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_job_both_ways() {
    errand_tests::init_tracing();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let b = broker(&url).await;
    let client = Client::new(b.clone());

    // Ruby perform_later → Errand runs it with typed args.
    let script = load_app()
        + r#"
        j = UserWelcomeJob.perform_later(42)
        puts JSON.generate("jid" => j.provider_job_id, "job_id" => j.job_id)
        "#;
    let pushed = ruby_json(&url, &script);
    let jid = pushed["jid"].as_str().expect("provider_job_id").to_string();
    let rec = Recorder::default();
    let server = spawn(builder(b, &rec).register::<UserWelcomeJob>().concurrency(2));
    wait_until_sync("Errand to run UserWelcomeJob", WAIT, || {
        !rec.of("UserWelcomeJob").is_empty()
    });
    server.shutdown().await;
    let ran = rec.of("UserWelcomeJob");
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].args, json!({"user_id": 42}));
    assert_eq!(ran[0].jid, jid);
    let left: usize = conn.llen("queue:default").unwrap();
    assert_eq!(left, 0);
    assert_eq!(zcard(&mut conn, "retry"), 0, "it did not fail");

    // Errand push_active_job → Ruby's RubyAjJob runs with the arguments.
    let aj_jid = client
        .push_active_job("RubyAjJob", &[json!(7), json!("x")], "ruby")
        .await
        .unwrap();
    assert!(is_jid(&aj_jid));
    let _sidekiq = RubySidekiq::start(&url, &["ruby"]);
    wait_until_sync("Ruby to run RubyAjJob", WAIT, || {
        !ruby_ran(&mut conn).is_empty()
    });
    assert_eq!(
        ruby_ran(&mut conn),
        vec![json!({"class": "RubyAjJob", "args": [7, "x"]})]
    );
    assert_eq!(zcard(&mut conn, "retry"), 0);
}

// ---------------------------------------------------------------------------------------------
// 6. Errand's admin side reads what Ruby Sidekiq writes
// ---------------------------------------------------------------------------------------------

/// A `sidekiq` process running `app.rb` plus an `AdminGateJob` that holds its worker thread
/// until the Redis key `admin:gate` is set (15 s at most). Killed on drop.
struct GatedSidekiq {
    child: std::process::Child,
    _script: tempfile::NamedTempFile,
}

impl GatedSidekiq {
    fn start(url: &str, queue: &str) -> Self {
        use std::io::Write;
        let mut script = tempfile::Builder::new()
            .suffix(".rb")
            .tempfile()
            .expect("temp file");
        write!(
            script,
            "{}
            class AdminGateJob
              include Sidekiq::Worker
              def perform(*)
                deadline = Time.now + 15
                sleep 0.02 until Time.now > deadline || Sidekiq.redis {{ |r| r.get(\"admin:gate\") }}
              end
            end
            ",
            load_app()
        )
        .expect("write the Ruby script");
        let child = std::process::Command::new("sidekiq")
            .arg("-r")
            .arg(script.path())
            .args(["-c", "2", "-t", "1", "-q", queue])
            .env("REDIS_URL", url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sidekiq ({e}); install `ruby-sidekiq`"));
        Self {
            child,
            _script: script,
        }
    }
}

impl Drop for GatedSidekiq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_ruby_processes_and_queues() {
    use errand_core::admin::{Admin, Order, QueueRange};
    errand_tests::init_tracing();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let b = broker(&url).await;

    // Ruby enqueues: one job its own process will run, one nobody consumes.
    let pushed = ruby_json(
        &url,
        r#"
        gate = Sidekiq::Client.push("class" => "AdminGateJob", "args" => [1], "queue" => "gated")
        parked = Sidekiq::Client.push("class" => "ParkedJob", "args" => [2, {"k" => []}, "é"],
                                      "queue" => "parked", "bid" => "b1")
        raw = Sidekiq.redis { |r| r.lindex("queue:parked", -1) }
        puts JSON.generate("gate" => gate, "parked" => parked, "raw" => raw)
        "#,
    );
    let gate_jid = pushed["gate"].as_str().unwrap().to_string();
    let raw = pushed["raw"].as_str().unwrap().to_string();
    assert!(raw.contains(pushed["parked"].as_str().unwrap()), "{raw}");

    // The queue page holds exactly the string Ruby stored.
    assert_eq!(
        b.queue_page(QueueRange {
            queue: "parked",
            offset: 0,
            limit: 10,
            order: Order::Asc
        })
        .await
        .unwrap(),
        vec![raw.clone()]
    );
    assert_eq!(
        b.queue_page(QueueRange {
            queue: "parked",
            offset: 0,
            limit: 10,
            order: Order::Desc
        })
        .await
        .unwrap(),
        vec![raw.clone()]
    );
    let qs = b.queues().await.unwrap();
    let parked = qs
        .iter()
        .find(|q| q.name == "parked")
        .expect("parked listed");
    assert_eq!(
        (parked.size, parked.oldest.as_deref()),
        (1, Some(raw.as_str()))
    );
    // And it is the string Ruby's API deletes by: removing it through Errand empties the queue.
    assert!(b.queue_delete("parked", &raw).await.unwrap());
    let left = ruby_json(
        &url,
        r#"puts JSON.generate(Sidekiq::Queue.new("parked").size)"#,
    );
    assert_eq!(left, json!(0));

    // A running Ruby Sidekiq 6.4 process, busy with the gated job.
    let mut sidekiq = GatedSidekiq::start(&url, "gated");
    let pid = sidekiq.child.id();
    let deadline = std::time::Instant::now() + WAIT;
    let seen = loop {
        let procs = b.processes().await.unwrap();
        // Sidekiq writes its work hash and its busy count at different moments of a beat:
        // wait for a beat that has both.
        if procs.len() == 1 && procs[0].work.len() == 1 && procs[0].busy == 1 {
            break procs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for Ruby's process and its running job: {procs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        sidekiq.child.try_wait().unwrap().is_none(),
        "sidekiq is running"
    );
    let p = &seen[0];
    assert_eq!(
        p.identity.split(':').nth(1),
        Some(pid.to_string().as_str()),
        "{p:?}"
    );
    let info: Value = serde_json::from_str(&p.info).expect("info is JSON");
    assert_eq!(
        info["hostname"],
        json!(errand_core::id::hostname()),
        "{info}"
    );
    assert_eq!(info["pid"], json!(pid), "{info}");
    assert_eq!(info["identity"], json!(p.identity), "{info}");
    assert_eq!(info["queues"], json!(["gated"]), "{info}");
    assert_eq!(info["concurrency"], json!(2), "{info}");
    assert_eq!(p.concurrency, 0, "6.4 has no concurrency field");
    assert_eq!(p.busy, 1, "{p:?}");
    assert!(!p.quiet);
    assert!(p.rss_kb > 0, "{p:?}");
    assert!((errand_core::now() - p.beat).abs() < 30.0, "{p:?}");
    let (tid, work) = &p.work[0];
    assert!(!tid.is_empty());
    let work: Value = serde_json::from_str(work).expect("work entry is JSON");
    assert_eq!(work["queue"], json!("gated"), "{work}");
    let payload: Value =
        serde_json::from_str(work["payload"].as_str().expect("payload is a string")).unwrap();
    assert_eq!(payload["jid"], json!(gate_jid), "{work}");
    assert_eq!(payload["class"], json!("AdminGateJob"), "{work}");
    let work_key: bool = conn.exists(format!("{}:work", p.identity)).unwrap();
    assert!(
        !work_key,
        "6.4 writes only `:workers`: that is what was read"
    );

    let _: () = conn.set("admin:gate", 1).unwrap();
    drop(sidekiq);
}

// ---------------------------------------------------------------------------------------------
// Periodic jobs: Errand schedules, Ruby runs
// ---------------------------------------------------------------------------------------------

/// An Errand server's periodic entry enqueues a job whose class Ruby runs: the payload's own
/// keys (`errand_periodic`, `errand_scheduled_at`) do not trouble Ruby Sidekiq, which runs
/// each tick's job once, with nothing retried or dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errand_schedules_periodic_jobs_ruby_runs() {
    errand_tests::init_tracing();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let rec = Recorder::default();
    // The Errand server schedules but fetches only a queue of its own.
    let errand = spawn(
        builder(broker(&url).await, &rec)
            .queues(["errand-only"])
            .register::<OkJob>()
            .periodic_entry(
                errand::Periodic::new(
                    "ruby-tick",
                    "* * * * * *",
                    OkJob {
                        n: 7,
                        s: "tick".into(),
                    },
                )
                .queue("default"),
            ),
    );
    let _sidekiq = RubySidekiq::start(&url, &["default"]);
    wait_until_sync("Ruby to run two ticks", WAIT, || {
        ruby_ran(&mut conn).len() >= 2
    });
    errand.shutdown().await;
    let ran = ruby_ran(&mut conn);
    assert!(
        ran.iter()
            .all(|r| r["class"] == "OkJob" && r["args"] == json!([7, "tick"])),
        "{ran:?}"
    );
    let jids: HashSet<&str> = ran.iter().map(|r| r["jid"].as_str().unwrap()).collect();
    assert_eq!(jids.len(), ran.len(), "each tick's job ran once: {ran:?}");
    assert_eq!(zcard(&mut conn, "retry"), 0, "nothing failed in Ruby");
    assert_eq!(zcard(&mut conn, "dead"), 0);
}

/// Reports progress, then waits for its cancellation and stops.
#[derive(Serialize, Deserialize)]
struct ProgressJob(u32);

impl Job for ProgressJob {
    const NAME: &'static str = "ProgressJob";
    async fn perform(self, cx: &JobContext) -> JobResult {
        cx.progress(50, "half way");
        tokio::select! {
            _ = cx.cancelled() => {
                record(cx, &self)?;
                Err(JobError::retry("cancelled"))
            }
            _ = tokio::time::sleep(Duration::from_secs(120)) => Ok(()),
        }
    }
}

/// Errand's job-control keys are its own and harmless to Ruby (issue 14): a job pushed with a
/// deadline (`errand_expires_at`) runs in a Ruby Sidekiq process like any other, and Sidekiq's
/// API reads an Errand process's running job with its progress (`errand_progress`) in the work
/// entry; the job, cancelled from Errand, ends without a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_control_keys_are_harmless_to_ruby() {
    errand_tests::init_tracing();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let b = broker(&url).await;
    let client = Client::new(b.clone());
    let rec = Recorder::default();
    let _sidekiq = RubySidekiq::start(&url, &["default"]);
    let jid = client
        .push_with(
            OkJob {
                n: 1,
                s: "deadline".into(),
            },
            Push::new().set(errand::EXPIRES_AT, errand_core::now() + 3600.0),
        )
        .await
        .unwrap();
    wait_until_sync("Ruby to run the job with a deadline", WAIT, || {
        ruby_ran(&mut conn).iter().any(|r| r["jid"] == json!(jid))
    });

    let server = spawn(
        builder(b, &rec)
            .register::<ProgressJob>()
            .queues(["errand-only"]),
    );
    let running = client
        .push_with(ProgressJob(1), Push::new().queue("errand-only"))
        .await
        .unwrap();
    let read_work = r#"
        work = Sidekiq::Workers.new.to_a.map { |key, tid, h| {"key" => key, "work" => h} }
        puts JSON.generate("work" => work, "busy" => Sidekiq::ProcessSet.new.to_a.map { |p| p["busy"] })
    "#;
    let mut seen = Value::Null;
    wait_until_sync("Ruby to see the running job's progress", WAIT, || {
        seen = ruby_json(&url, read_work);
        seen["work"].as_array().is_some_and(|w| {
            w.iter()
                .any(|e| e["work"]["errand_progress"]["percent"] == json!(50))
        })
    });
    let entry = seen["work"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["work"]["payload"]["jid"] == json!(running))
        .unwrap_or_else(|| panic!("the running job in Ruby's view: {seen}"));
    assert_eq!(entry["work"]["errand_progress"]["message"], "half way");
    assert!(matches!(
        client.cancel(&running).await.unwrap(),
        errand::Cancelled::Running(_)
    ));
    wait_until_sync("the job to stop on its cancellation", WAIT, || {
        rec.of("ProgressJob").len() == 1
    });
    server.shutdown().await;
    assert_eq!(
        zcard(&mut conn, "retry"),
        0,
        "a cancelled job is not retried"
    );
    assert_eq!(zcard(&mut conn, "dead"), 0);
    let cancelled: Option<u64> = conn.get("errand:stat:cancelled").unwrap();
    assert_eq!(cancelled, Some(1));
}

/// A batch's jobs carry Sidekiq Pro's `bid` key: a Ruby Sidekiq without Pro runs an Errand
/// batch's job like any other (the key kept in its payload), and the batch, never told, stays
/// pending; a Ruby job with a Pro batch id Errand does not know runs in Errand and is acked (the
/// record finds no batch and is ignored: `errand_failures_seen_and_retried_by_ruby` retries one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_ids_are_harmless_to_ruby() {
    errand_tests::init_tracing();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let b = broker(&url).await;
    let client = Client::new(b.clone());
    let _sidekiq = RubySidekiq::start(&url, &["default"]);
    let batch = errand::Batch::new(&client).open().await.unwrap();
    let jid = batch
        .push(OkJob {
            n: 7,
            s: "in a batch".into(),
        })
        .await
        .unwrap();
    let bid = batch.seal().await.unwrap();
    wait_until_sync("Ruby to run the batch's job", WAIT, || {
        ruby_ran(&mut conn).iter().any(|r| r["jid"] == json!(jid))
    });
    let status = client.batch_status(&bid).await.unwrap().unwrap();
    assert_eq!(
        (status.total, status.pending),
        (1, 1),
        "Ruby does not record"
    );
    assert_eq!(zcard(&mut conn, "retry"), 0);
    assert_eq!(zcard(&mut conn, "dead"), 0);
}
