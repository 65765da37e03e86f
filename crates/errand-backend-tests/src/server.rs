//! Server-level cases: the job lifecycle proven through a real [`errand::Server`] running on
//! the backend under test.
//!
//! Each case starts a server with short intervals (heartbeat and poll 100 ms, orphan rescue
//! 200 ms, process TTL 2 s, first retry after 1 s and later ones after 200 ms), lets its jobs report through the server's
//! shared data (a [`Log`] and a death counter), and waits on conditions with a deadline, never
//! on fixed sleeps. What the backend stores is read only through [`Inspect`].

use crate::{BackendFactory, Inspect, STEP_TIMEOUT, TestBackend};
use errand::broker::{Enqueue, FetchRequest};
use errand::{
    Client, Job, JobContext, JobError, JobOptions, JobResult, Payload, Push, Server, ServerBuilder,
    ServerHandle,
};
use errand_core::admin::Counters;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Jobs and what they report

/// What the jobs of one case did, in order (shared with them through `.data(..)`).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn count(&self, entry: &str) -> usize {
        self.all().iter().filter(|s| *s == entry).count()
    }
    fn count_prefix(&self, prefix: &str) -> usize {
        self.all().iter().filter(|s| s.starts_with(prefix)).count()
    }
}

fn log(cx: &JobContext) -> Log {
    cx.data::<Log>().expect("the case shares a Log").clone()
}

/// The classes of the jobs the death handlers were called for, in order.
#[derive(Clone, Default)]
struct Deaths(Arc<Mutex<Vec<String>>>);

impl Deaths {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn len(&self) -> usize {
        self.all().len()
    }
}

/// `retries_exhausted` calls by job token. The hook is a static trait function, so it counts
/// here, keyed by an argument no other case (running in parallel) uses.
static EXHAUSTED: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

fn exhausted(token: &str) -> usize {
    EXHAUSTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(token)
        .copied()
        .unwrap_or(0)
}

fn count_exhausted(payload: &Payload) {
    if let Some(token) = payload.args().first().and_then(Value::as_str) {
        *EXHAUSTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(token.to_string())
            .or_default() += 1;
    }
}

/// A token no other job of this test binary carries.
fn token(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Logs `record:<tag>:<queue>` and succeeds.
#[derive(Serialize, Deserialize)]
struct Record(String);

impl Job for Record {
    const NAME: &'static str = "Conformance::Record";
    async fn perform(self, cx: &JobContext) -> JobResult {
        log(cx).push(format!("record:{}:{}", self.0, cx.queue()));
        Ok(())
    }
}

/// Fails every attempt; at most two retries.
#[derive(Serialize, Deserialize)]
struct FailTwice(String);

impl Job for FailTwice {
    const NAME: &'static str = "Conformance::FailTwice";
    fn options() -> JobOptions {
        JobOptions::default().retry(2)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        log(cx).push(format!("fail:{}", self.0));
        Err(JobError::retry(format!("boom {}", self.0)).with_class("Conformance::Boom"))
    }
    fn retries_exhausted(payload: &Payload, _error: &JobError) {
        count_exhausted(payload);
    }
}

/// Fails every attempt with `retry(0)`: dead on the first failure.
#[derive(Serialize, Deserialize)]
struct FailZero(String);

impl Job for FailZero {
    const NAME: &'static str = "Conformance::FailZero";
    fn options() -> JobOptions {
        JobOptions::default().retry(0)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        log(cx).push(format!("fail:{}", self.0));
        Err(JobError::retry("always").with_class("Conformance::Declined"))
    }
    fn retries_exhausted(payload: &Payload, _error: &JobError) {
        count_exhausted(payload);
    }
}

/// Fails every attempt with retries disabled (`retry: false`).
#[derive(Serialize, Deserialize)]
struct FailNoRetry(String);

impl Job for FailNoRetry {
    const NAME: &'static str = "Conformance::FailNoRetry";
    fn options() -> JobOptions {
        JobOptions::default().no_retry()
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        log(cx).push(format!("fail:{}", self.0));
        Err(JobError::retry("nope"))
    }
}

/// `"snooze"` snoozes 300 ms on its first attempt and then succeeds; `"discard"` discards.
#[derive(Serialize, Deserialize)]
struct Outcome(String);

impl Job for Outcome {
    const NAME: &'static str = "Conformance::Outcome";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let l = log(cx);
        let entry = format!("outcome:{}", self.0);
        l.push(entry.clone());
        match self.0.as_str() {
            "snooze" if l.count(&entry) == 1 => Err(JobError::snooze(Duration::from_millis(300))),
            "discard" => Err(JobError::discard("not wanted")),
            _ => Ok(()),
        }
    }
}

/// Logs `sleep:start` and then runs far longer than any case's shutdown timeout.
#[derive(Serialize, Deserialize)]
struct Sleeper(String);

impl Job for Sleeper {
    const NAME: &'static str = "Conformance::Sleeper";
    async fn perform(self, cx: &JobContext) -> JobResult {
        log(cx).push(format!("sleep:{}", self.0));
        tokio::time::sleep(Duration::from_secs(600)).await;
        Ok(())
    }
}

/// Logs `cancellable:start`, reports progress, then waits for its cancellation and stops with
/// an error (`cancellable:stopped`); it would run for ten minutes otherwise.
#[derive(Serialize, Deserialize)]
struct Cancellable(String);

impl Job for Cancellable {
    const NAME: &'static str = "Conformance::Cancellable";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let l = log(cx);
        l.push(format!("cancellable:start:{}", cx.jid()));
        cx.progress(40, "halfway there");
        tokio::select! {
            _ = cx.cancelled() => {
                l.push("cancellable:stopped".into());
                Err(JobError::retry("stopped: cancelled"))
            }
            _ = tokio::time::sleep(Duration::from_secs(600)) => Ok(()),
        }
    }
}

/// Answers `2 × n` as its kept result; `n == 0` tries to set a result over the size limit.
#[derive(Serialize, Deserialize)]
struct Answer(u64);

impl Job for Answer {
    const NAME: &'static str = "Conformance::Answer";
    fn options() -> JobOptions {
        JobOptions::default()
            .keep_result(Duration::from_secs(600))
            .retry(0)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        if self.0 == 0 {
            cx.set_result(&"x".repeat(errand::MAX_RESULT_BYTES))?;
        }
        cx.set_result(&(self.0 * 2))?;
        log(cx).push(format!("answer:{}", self.0));
        Ok(())
    }
}

/// Refreshes account `.0` (revision `.1`); debounced per account for 300 ms.
#[derive(Serialize, Deserialize)]
struct Refresh(String, u64);

impl Job for Refresh {
    const NAME: &'static str = "Conformance::Refresh";
    fn options() -> JobOptions {
        JobOptions::default().debounce(Duration::from_millis(300))
    }
    fn unique_key(&self) -> Option<String> {
        Some(self.0.clone())
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        log(cx).push(format!("refresh:{}:{}", self.0, self.1));
        Ok(())
    }
}

/// A job of a batch: `"fail-once"` fails its first attempt, `"die"` dies at once, `"grow"` adds
/// `Member("grown")` to its own batch; logs `member:<tag>`.
#[derive(Serialize, Deserialize)]
struct Member(String);

impl Job for Member {
    const NAME: &'static str = "Conformance::Member";
    fn options() -> JobOptions {
        JobOptions::default().retry(3)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let l = log(cx);
        let entry = format!("member:{}", self.0);
        l.push(entry.clone());
        match self.0.as_str() {
            "fail-once" if l.count(&entry) == 1 => Err(JobError::retry("first attempt fails")),
            "die" => Err(JobError::dead("dies")),
            "grow" => {
                let batch = cx.batch().ok_or_else(|| JobError::dead("no batch"))?;
                batch.push(Member("grown".into())).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A batch callback: logs `callback:<tag>:<event>:<pending>:<dead>` from the batch's status.
#[derive(Serialize, Deserialize)]
struct Callback(String);

impl Job for Callback {
    const NAME: &'static str = "Conformance::Callback";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let (bid, event) = cx
            .batch_callback()
            .ok_or_else(|| JobError::dead("not a callback"))?;
        let s = cx
            .client()
            .batch_status(&bid)
            .await?
            .ok_or_else(|| JobError::dead("batch gone"))?;
        log(cx).push(format!(
            "callback:{}:{}:{}:{}",
            self.0,
            event.as_str(),
            s.pending,
            s.dead
        ));
        Ok(())
    }
}

/// A workflow step: adds its parents' outputs (by name) to its own number, keeps the sum as
/// its result, and logs `step:<name>:<sum>`; `Step("x", 0)` dies.
#[derive(Serialize, Deserialize)]
struct Step(String, Vec<String>, u64);

impl Job for Step {
    const NAME: &'static str = "Conformance::Step";
    fn options() -> JobOptions {
        JobOptions::default().retry(0)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        if self.2 == 0 {
            return Err(JobError::dead("this step fails"));
        }
        let mut sum = self.2;
        for parent in &self.1 {
            let out: Option<u64> = cx.parent_output(parent).await?;
            sum += out.ok_or_else(|| JobError::dead(format!("no output from {parent}")))?;
        }
        cx.set_result(&sum)?;
        log(cx).push(format!("step:{}:{sum}", cx.step().unwrap_or("?")));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

/// One case's backend, client, and what its jobs report.
/// Records `effect:<n>` inside a once-only step that returns `n * 10`, then fails on its
/// first two attempts, so the step is reached three times but runs once.
#[derive(Serialize, Deserialize)]
struct OnceThenFail(u64);

impl Job for OnceThenFail {
    const NAME: &'static str = "Conformance::OnceThenFail";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let l = log(cx);
        let n = self.0;
        let out: u64 = cx
            .once("effect", async {
                l.push(format!("effect:{n}"));
                Ok::<_, JobError>(n * 10)
            })
            .await?;
        l.push(format!("output:{out}:{}", cx.idempotency_key("charge")));
        if cx.retry_count().is_none_or(|c| c < 1) {
            return Err(JobError::retry("fails until its second retry"));
        }
        Ok(())
    }
}

/// Enqueues `Record(n)` for each n below its argument, then records itself.
#[derive(Serialize, Deserialize)]
struct Spawner(u64);

impl Job for Spawner {
    const NAME: &'static str = "Conformance::Spawner";
    async fn perform(self, cx: &JobContext) -> JobResult {
        for n in 0..self.0 {
            cx.client().push(Record(n.to_string())).await?;
        }
        log(cx).push(format!("spawned:{}", self.0));
        Ok(())
    }
}

struct Harness {
    backend: TestBackend,
    client: Client,
    log: Log,
    deaths: Deaths,
}

impl Harness {
    async fn new(f: &impl BackendFactory) -> Self {
        let backend = f.new_backend().await;
        Self {
            client: Client::from_arc(backend.broker.clone()),
            backend,
            log: Log::default(),
            deaths: Deaths::default(),
        }
    }

    fn inspect(&self) -> &dyn Inspect {
        &*self.backend.inspect
    }

    /// A server on this backend with every case job registered and short intervals.
    fn server(&self) -> ServerBuilder {
        let deaths = self.deaths.clone();
        Server::builder_arc(self.backend.broker.clone())
            .register::<Record>()
            .register::<FailTwice>()
            .register::<FailZero>()
            .register::<FailNoRetry>()
            .register::<Outcome>()
            .register::<Sleeper>()
            .register::<OnceThenFail>()
            .register::<Spawner>()
            .register::<Cancellable>()
            .register::<Answer>()
            .register::<Refresh>()
            .register::<Member>()
            .register::<Callback>()
            .register::<Step>()
            .queues(["default", "callbacks"])
            .data(self.log.clone())
            .death_handler(move |p, _e| {
                deaths
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(p.class().to_string());
            })
            .heartbeat_interval(Duration::from_millis(100))
            .poll_interval(Duration::from_millis(100))
            .rescue_interval(Duration::from_millis(200))
            .process_ttl(Duration::from_secs(2))
            // The first retry waits a full second so a case can observe the retry entry even on a
            // starved machine; later ones come back fast.
            .retry_delay(|count| Duration::from_millis(if count == 0 { 1_000 } else { 200 }))
            .handle_signals(false)
    }

    async fn wait_log(&self, name: &str, entry: &str, n: usize) {
        wait_until(&format!("{name}: {n} × log entry {entry:?}"), || async {
            self.log.count(entry) >= n
        })
        .await;
    }

    async fn wait_set_len(&self, name: &str, set: &str, n: usize) {
        wait_until(&format!("{name}: {set} set to hold {n}"), || async {
            self.inspect().set(set).await.len() == n
        })
        .await;
    }

    async fn wait_deaths(&self, name: &str, n: usize) {
        wait_until(&format!("{name}: {n} death handler calls"), || async {
            self.deaths.len() >= n
        })
        .await;
    }

    /// The members of sorted set `set`, parsed, lowest score first.
    async fn set_json(&self, set: &str) -> Vec<(f64, Value)> {
        self.inspect()
            .set(set)
            .await
            .into_iter()
            .map(|(score, m)| {
                let v = serde_json::from_str(&m)
                    .unwrap_or_else(|e| panic!("{set} member is not JSON ({e}): {m}"));
                (score, v)
            })
            .collect()
    }
}

/// A server running in its own task.
struct Running {
    handle: ServerHandle,
    task: tokio::task::JoinHandle<()>,
}

fn start(b: ServerBuilder) -> Running {
    let server = b.build().expect("valid server settings");
    let handle = server.handle();
    let task = tokio::spawn(async move {
        server
            .run_until(std::future::pending())
            .await
            .expect("server runs");
    });
    Running { handle, task }
}

impl Running {
    fn identity(&self) -> String {
        self.handle.identity().to_string()
    }

    /// Stops the server gracefully and waits until it has shut down (stats flushed,
    /// unfinished jobs requeued, process unregistered).
    async fn stop(self) {
        self.handle.stop();
        tokio::time::timeout(STEP_TIMEOUT, self.task)
            .await
            .unwrap_or_else(|_| panic!("the server did not stop within {STEP_TIMEOUT:?}"))
            .expect("the server task ended cleanly");
    }
}

/// Polls `cond` until it holds, failing the case after [`STEP_TIMEOUT`].
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {STEP_TIMEOUT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_number(v: &Value) -> bool {
    v.is_f64() || v.is_u64() || v.is_i64()
}

// ---------------------------------------------------------------------------------------------
// Cases

/// Fetching one job at a time in `weighted_order` over critical:10, default:5, bulk:1 takes
/// from each queue in proportion to its weight (within 3 points), while every queue holds jobs.
pub async fn server_weighted_fetch_follows_weights(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let name = f.name();
    let weights: Vec<(String, u32)> = [("critical", 10), ("default", 5), ("bulk", 1)]
        .into_iter()
        .map(|(q, w)| (q.to_string(), w))
        .collect();
    // Enough in each queue that none runs dry: about 6,250, 3,125 and 625 are taken.
    let mut jobs = Vec::new();
    for (q, n) in [("critical", 7_000u64), ("default", 4_000), ("bulk", 1_000)] {
        jobs.extend((0..n).map(|i| Enqueue {
            queue: q.to_string(),
            payload: crate::job(q, i),
        }));
    }
    crate::support::step("push 12,000 jobs", broker.push(&jobs))
        .await
        .unwrap();
    let fetches = 10_000usize;
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    for _ in 0..fetches {
        let order = errand::server::weighted_order(&weights);
        let got = crate::support::step(
            "fetch",
            broker.fetch(FetchRequest {
                identity: "weighted:1:p",
                queues: &order,
                max: 1,
                wait: Duration::ZERO,
            }),
        )
        .await
        .expect("fetch");
        assert_eq!(got.len(), 1, "{name}: every queue still holds jobs");
        assert!(broker.ack(&got[0]).await.unwrap(), "{name}: ack");
        *taken.entry(got[0].queue.clone()).or_default() += 1;
        assert!(
            started.elapsed() < STEP_TIMEOUT * 6,
            "{name}: 10,000 fetches are too slow"
        );
    }
    for (q, w) in &weights {
        let share = taken.get(q).copied().unwrap_or(0) as f64 / fetches as f64;
        let want = f64::from(*w) / 16.0;
        assert!(
            (share - want).abs() <= 0.03,
            "{name}: {q} got {share:.4} of the fetches, want {want:.4} ± 0.03 ({taken:?})"
        );
    }
    let left: usize = [
        inspect.queue_len("critical").await,
        inspect.queue_len("default").await,
        inspect.queue_len("bulk").await,
    ]
    .iter()
    .sum();
    assert_eq!(left, 2_000, "{name}: exactly the fetched jobs are gone");
    assert!(
        inspect
            .in_flight("weighted:1:p", "critical")
            .await
            .is_empty()
    );
}

/// A server with strict queues and concurrency 1 runs every job of `high` before any of
/// `low`, each queue in push order, though `low` was filled first.
pub async fn server_strict_queue_order(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    for queue in ["low", "high"] {
        for i in 0..3 {
            h.client
                .push_with(Record(format!("{queue}{i}")), Push::new().queue(queue))
                .await
                .unwrap();
        }
    }
    let server = start(h.server().queues(["high", "low"]).concurrency(1));
    wait_until(&format!("{name}: six jobs to run"), || async {
        h.log.count_prefix("record:") >= 6
    })
    .await;
    server.stop().await;
    assert_eq!(
        h.log.all(),
        vec![
            "record:high0:high",
            "record:high1:high",
            "record:high2:high",
            "record:low0:low",
            "record:low1:low",
            "record:low2:low",
        ],
        "{name}: strict order"
    );
}

/// A job pushed to run in 1 s waits in the schedule set and runs once it is due, not before.
pub async fn server_runs_scheduled_job_when_due(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let pushed = Instant::now();
    h.client
        .push_in(Duration::from_secs(1), Record("later".into()))
        .await
        .unwrap();
    let scheduled = h.set_json("schedule").await;
    assert_eq!(scheduled.len(), 1, "{name}: one scheduled job");
    assert_eq!(scheduled[0].1["class"], Record::NAME);
    assert!(
        h.inspect().queue("default").await.is_empty(),
        "{name}: not queued yet"
    );
    let server = start(h.server());
    h.wait_log(name, "record:later:default", 1).await;
    let ran_after = pushed.elapsed();
    server.stop().await;
    assert!(
        ran_after >= Duration::from_secs(1),
        "{name}: ran {ran_after:?} after the push, before it was due"
    );
    assert!(h.inspect().set("schedule").await.is_empty());
    assert_eq!(h.log.count_prefix("record:"), 1, "{name}: ran once");
}

/// A failing job with `retry(2)`: the first failure files a retry entry with Sidekiq's error
/// fields; it runs three times in all (retries after 1 s, then 200 ms), then lands in the dead
/// set with `retry_count` 2 and `retried_at`; the death handler and `retries_exhausted` run once each.
pub async fn server_retries_then_buries_with_fields(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let tok = token("retry2");
    h.client.push(FailTwice(tok.clone())).await.unwrap();
    let server = start(h.server());
    let fail = format!("fail:{tok}");

    // The first failure's entry waits in the retry set for 1 s.
    let deadline = Instant::now() + STEP_TIMEOUT;
    let (score, p) = loop {
        if let Some(entry) = h.set_json("retry").await.into_iter().next() {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no retry entry within {STEP_TIMEOUT:?} (log: {:?})",
            h.log.all()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(p["class"], FailTwice::NAME, "{name}");
    assert_eq!(p["retry_count"], 0, "{name}: first failure");
    assert_eq!(p["error_class"], "Conformance::Boom", "{name}");
    assert_eq!(p["error_message"], format!("boom {tok}"), "{name}");
    assert!(is_number(&p["failed_at"]), "{name}: failed_at {p}");
    assert!(p.get("retried_at").is_none(), "{name}: not retried yet");
    let failed_at = p["failed_at"].as_f64().expect("float failed_at");
    assert!(
        (score - failed_at - 1.0).abs() < 0.05,
        "{name}: due 1 s after the failure, got {}",
        score - failed_at
    );

    h.wait_set_len(name, "dead", 1).await;
    h.wait_deaths(name, 1).await;
    server.stop().await;
    assert_eq!(h.log.count(&fail), 3, "{name}: one run and two retries");
    assert!(h.inspect().set("retry").await.is_empty(), "{name}");
    let (_, dead) = h.set_json("dead").await.remove(0);
    assert_eq!(dead["class"], FailTwice::NAME, "{name}");
    assert_eq!(dead["retry_count"], 2, "{name}");
    assert!(is_number(&dead["retried_at"]), "{name}: retried_at {dead}");
    assert!(is_number(&dead["failed_at"]), "{name}");
    assert_eq!(dead["error_class"], "Conformance::Boom", "{name}");
    assert_eq!(
        h.deaths.all(),
        vec![FailTwice::NAME.to_string()],
        "{name}: death handler once"
    );
    assert_eq!(exhausted(&tok), 1, "{name}: retries_exhausted once");
}

/// `retry(0)` dies on its first failure (dead set, death handler and `retries_exhausted`
/// once); `retry: false` goes to neither set but still reaches the death handler once; both
/// count as failed.
pub async fn server_retry_zero_and_retry_disabled(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let zero = token("zero");
    let off = token("off");
    h.client.push(FailZero(zero.clone())).await.unwrap();
    h.client.push(FailNoRetry(off.clone())).await.unwrap();
    let server = start(h.server());
    h.wait_deaths(name, 2).await;
    h.wait_set_len(name, "dead", 1).await;
    server.stop().await;

    assert_eq!(h.log.count(&format!("fail:{zero}")), 1, "{name}: no retry");
    assert_eq!(h.log.count(&format!("fail:{off}")), 1, "{name}: no retry");
    assert!(h.inspect().set("retry").await.is_empty(), "{name}");
    let dead = h.set_json("dead").await;
    assert_eq!(dead.len(), 1, "{name}: only the retry(0) job is dead");
    let p = &dead[0].1;
    assert_eq!(p["class"], FailZero::NAME, "{name}");
    assert_eq!(p["retry_count"], 0, "{name}");
    assert_eq!(p["error_class"], "Conformance::Declined", "{name}");
    let mut deaths = h.deaths.all();
    deaths.sort();
    assert_eq!(
        deaths,
        vec![FailNoRetry::NAME.to_string(), FailZero::NAME.to_string()],
        "{name}: one death each"
    );
    assert_eq!(exhausted(&zero), 1, "{name}: retries_exhausted once");
    assert_eq!(
        h.inspect().stats().await,
        Counters {
            processed: 2,
            failed: 2,
            ..Counters::default()
        },
        "{name}"
    );
    assert!(h.inspect().queue("default").await.is_empty(), "{name}");
}

/// A snoozed job runs again and is not counted as failed; a discarded job is neither retried
/// nor buried nor reported to death handlers (it counts as failed).
pub async fn server_snooze_and_discard(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    h.client.push(Outcome("snooze".into())).await.unwrap();
    h.client.push(Outcome("discard".into())).await.unwrap();
    let server = start(h.server());
    h.wait_log(name, "outcome:snooze", 2).await;
    h.wait_log(name, "outcome:discard", 1).await;
    server.stop().await;

    assert_eq!(h.log.count("outcome:snooze"), 2, "{name}: snoozed once");
    assert_eq!(h.log.count("outcome:discard"), 1, "{name}: never retried");
    for set in ["retry", "dead", "schedule"] {
        assert!(
            h.inspect().set(set).await.is_empty(),
            "{name}: {set} is empty"
        );
    }
    assert!(h.inspect().queue("default").await.is_empty(), "{name}");
    assert!(h.deaths.all().is_empty(), "{name}: no deaths");
    assert_eq!(
        h.inspect().stats().await,
        Counters {
            processed: 3,
            failed: 1,
            ..Counters::default()
        },
        "{name}: three runs, only the discard failed"
    );
}

/// Queue entries that are not runnable jobs go to the dead set as `Errand::InvalidPayload`
/// with the original text in `raw`; the worker goes on to run a valid job pushed after them.
pub async fn server_buries_malformed_payloads(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let bad = ["not json".to_string(), r#"{"class":"X"}"#.to_string()];
    h.backend
        .broker
        .push(
            &bad.iter()
                .map(|raw| Enqueue {
                    queue: "default".into(),
                    payload: raw.clone(),
                })
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    h.client.push(Record("after".into())).await.unwrap();
    let server = start(h.server().concurrency(1));
    h.wait_log(name, "record:after:default", 1).await;
    h.wait_set_len(name, "dead", 2).await;
    server.stop().await;

    let dead = h.set_json("dead").await;
    let mut raws: Vec<String> = dead
        .iter()
        .map(|(_, p)| p["raw"].as_str().unwrap_or_default().to_string())
        .collect();
    raws.sort();
    let mut want = bad.to_vec();
    want.sort();
    assert_eq!(raws, want, "{name}: the original text is kept");
    for (_, p) in &dead {
        assert_eq!(p["error_class"], "Errand::InvalidPayload", "{name}: {p}");
    }
    assert!(h.inspect().queue("default").await.is_empty(), "{name}");
    assert!(h.inspect().set("retry").await.is_empty(), "{name}");
}

/// A job held in flight by a process whose heartbeat expired is recovered by a running
/// server's rescue loop and run.
pub async fn server_recovers_jobs_of_a_dead_process(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let b = &*h.backend.broker;
    let dead = "deadhost:1:conformance";
    // As a server does: beat (TTL 1 s), register, fetch; then it dies without acking.
    crate::support::beat(
        b,
        dead,
        &crate::support::info(dead, &["default"]),
        Duration::from_secs(1),
        0,
    )
    .await;
    b.register(dead, &crate::support::queues(&["default"]))
        .await
        .unwrap();
    h.client.push(Record("orphan".into())).await.unwrap();
    let held = crate::support::fetch(b, dead, &["default"], 1, Duration::ZERO).await;
    assert_eq!(held.len(), 1, "{name}");
    assert_eq!(h.inspect().in_flight(dead, "default").await.len(), 1);
    // Expire the dead process before the server starts, so a clock jump cannot expire the
    // server's own heartbeat.
    h.inspect().let_time_pass(Duration::from_secs(2)).await;

    let server = start(h.server());
    h.wait_log(name, "record:orphan:default", 1).await;
    server.stop().await;
    assert!(
        h.inspect().in_flight(dead, "default").await.is_empty(),
        "{name}: nothing left in the dead process's flight"
    );
    assert!(h.inspect().queue("default").await.is_empty(), "{name}");
    assert_eq!(h.log.count("record:orphan:default"), 1, "{name}: ran once");
    assert!(!b.ack(&held[0]).await.unwrap(), "{name}: the lease is gone");
}

/// Stopping a server whose job outlives the shutdown timeout puts the job's original payload
/// back on its queue, with nothing left in flight and nothing filed as a failure.
pub async fn server_shutdown_requeues_unfinished_jobs(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    h.client.push(Sleeper("long".into())).await.unwrap();
    let original = h.inspect().queue("default").await;
    assert_eq!(original.len(), 1, "{name}");
    let server = start(h.server().shutdown_timeout(Duration::from_millis(300)));
    let identity = server.identity();
    h.wait_log(name, "sleep:long", 1).await;
    assert_eq!(
        h.inspect().in_flight(&identity, "default").await,
        original,
        "{name}: held in flight while running"
    );
    server.stop().await;
    assert_eq!(
        h.inspect().queue("default").await,
        original,
        "{name}: the original payload is back on its queue"
    );
    assert!(
        h.inspect().in_flight(&identity, "default").await.is_empty(),
        "{name}: nothing in flight"
    );
    for set in ["retry", "dead", "schedule"] {
        assert!(
            h.inspect().set(set).await.is_empty(),
            "{name}: {set} is empty"
        );
    }
    assert!(h.deaths.all().is_empty(), "{name}");
}

/// After N successes and M failures, a stopped server has flushed processed N+M, failed M.
pub async fn server_stats_count_processed_and_failed(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let (n, m) = (5usize, 3usize);
    for i in 0..n {
        h.client.push(Record(format!("ok{i}"))).await.unwrap();
    }
    for _ in 0..m {
        h.client.push(FailNoRetry(token("stat"))).await.unwrap();
    }
    let server = start(h.server());
    wait_until(&format!("{name}: {n} successes"), || async {
        h.log.count_prefix("record:") >= n
    })
    .await;
    h.wait_deaths(name, m).await;
    server.stop().await;
    assert_eq!(
        h.inspect().stats().await,
        Counters {
            processed: (n + m) as u64,
            failed: m as u64,
            ..Counters::default()
        },
        "{name}"
    );
    assert!(h.inspect().queue("default").await.is_empty(), "{name}");
}

/// A once-only step inside a job that fails twice runs once: the retries get its recorded
/// output, and the idempotency key is the same in every attempt.
pub async fn server_once_step_runs_once_across_retries(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let jid = h.client.push(OnceThenFail(4)).await.unwrap();
    let server = h.server().retry_delay(|_| Duration::ZERO).build().unwrap();
    let drained = server.drain().await.unwrap();
    assert_eq!(drained.performed, 3, "{name}: two failures and a success");
    assert_eq!(drained.failed, 2, "{name}");
    assert_eq!(
        h.log.count("effect:4"),
        1,
        "{name}: the effect ran once: {:?}",
        h.log.all()
    );
    let key = format!("output:40:errand:{jid}:charge");
    assert_eq!(
        h.log.count(&key),
        3,
        "{name}: same output and key each time: {:?}",
        h.log.all()
    );
    assert!(h.inspect().set("retry").await.is_empty(), "{name}");
    assert!(h.inspect().set("dead").await.is_empty(), "{name}");
}

/// `Server::drain` runs what is queued, what those jobs enqueue, and scheduled jobs once due,
/// and returns when nothing due is left.
pub async fn server_drain_runs_nested_and_due_jobs(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    h.client.push(Spawner(3)).await.unwrap();
    h.client
        .push_in(Duration::from_secs(3600), Record("99".into()))
        .await
        .unwrap();
    let server = h.server().build().unwrap();
    let drained = server.drain().await.unwrap();
    assert_eq!(
        drained.performed, 4,
        "{name}: the spawner and its three jobs"
    );
    assert_eq!(drained.failed, 0, "{name}");
    assert_eq!(h.log.count("spawned:3"), 1, "{name}");
    assert_eq!(
        h.log.count_prefix("record:"),
        3,
        "{name}: {:?}",
        h.log.all()
    );
    assert_eq!(
        h.inspect().set("schedule").await.len(),
        1,
        "{name}: not due yet"
    );
    assert!(h.inspect().queue("default").await.is_empty(), "{name}");
}

/// Cancelling a running job: the process finds the mark at its next heartbeat, the job sees
/// `cx.cancelled()` and stops with an error, and the attempt ends as cancelled: acked, not
/// retried, not failed, counted. Its progress was on the Busy page meanwhile. A waiting job
/// is removed before it runs; a finished one is not found.
pub async fn server_cancels_waiting_and_running_jobs(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let waiting = h
        .client
        .push_with(
            Record("never".into()),
            Push::new().delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let running = h.client.push(Cancellable("c".into())).await.unwrap();
    let server = start(h.server());
    h.wait_log(name, &format!("cancellable:start:{running}"), 1)
        .await;
    // The Busy page lists the job, with its progress, once a beat has written it.
    wait_until(&format!("{name}: the running job's progress"), || async {
        h.inspect()
            .admin()
            .processes()
            .await
            .unwrap_or_default()
            .iter()
            .flat_map(|p| p.work.iter())
            .any(|(_, json)| json.contains("halfway there") && json.contains("\"percent\":40"))
    })
    .await;
    assert_eq!(
        h.client.cancel(&waiting).await.unwrap(),
        errand::Cancelled::Scheduled,
        "{name}"
    );
    assert!(
        matches!(
            h.client.cancel(&running).await.unwrap(),
            errand::Cancelled::Running(_)
        ),
        "{name}"
    );
    h.wait_log(name, "cancellable:stopped", 1).await;
    wait_until(&format!("{name}: the cancellation counted"), || async {
        h.inspect().stats().await.cancelled == 1
    })
    .await;
    server.stop().await;

    assert_eq!(
        h.log.count_prefix("cancellable:start"),
        1,
        "{name}: ran once"
    );
    assert_eq!(
        h.log.count_prefix("record:never"),
        0,
        "{name}: removed unrun"
    );
    for set in ["retry", "dead", "schedule"] {
        assert!(
            h.inspect().set(set).await.is_empty(),
            "{name}: {set} is empty"
        );
    }
    assert!(h.inspect().queue("default").await.is_empty(), "{name}");
    assert_eq!(
        h.inspect().stats().await,
        Counters {
            processed: 1,
            failed: 0,
            cancelled: 1,
            expired: 0,
        },
        "{name}: cancelled, not failed"
    );
    assert_eq!(
        h.client.cancel(&running).await.unwrap(),
        errand::Cancelled::NotFound,
        "{name}: over"
    );
}

/// A job past its `expires_in` deadline when fetched is dropped unrun (acked, counted as
/// expired, not failed); one within it runs.
pub async fn server_drops_expired_jobs(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let now = h.client.now();
    h.client
        .push_with(
            Record("late".into()),
            Push::new().set(errand::EXPIRES_AT, now - 1.0),
        )
        .await
        .unwrap();
    h.client
        .push_with(
            Record("on-time".into()),
            Push::new().set(errand::EXPIRES_AT, now + 3600.0),
        )
        .await
        .unwrap();
    let server = start(h.server().concurrency(1));
    h.wait_log(name, "record:on-time:default", 1).await;
    wait_until(&format!("{name}: the expired job counted"), || async {
        h.inspect().stats().await.expired == 1
    })
    .await;
    server.stop().await;
    assert_eq!(h.log.count_prefix("record:late"), 0, "{name}: never ran");
    assert!(h.inspect().queue("default").await.is_empty(), "{name}");
    for set in ["retry", "dead"] {
        assert!(h.inspect().set(set).await.is_empty(), "{name}: {set}");
    }
    assert_eq!(
        h.inspect().stats().await,
        Counters {
            processed: 1,
            failed: 0,
            cancelled: 0,
            expired: 1,
        },
        "{name}"
    );
}

/// A job's result is kept when its options say so and read with `Client::result`/`wait`; a
/// push that keeps none has none; a result over the size limit is a dead job naming it.
pub async fn server_keeps_results(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let kept = h.client.push(Answer(21)).await.unwrap();
    let unkept = h
        .client
        .push_with(Answer(5), Push::new().set(errand::KEEP_RESULT, 0))
        .await
        .unwrap();
    let too_big = h.client.push(Answer(0)).await.unwrap();
    assert_eq!(h.client.result::<u64>(&kept).await.unwrap(), None, "{name}");
    let server = start(h.server());
    assert_eq!(
        h.client.wait::<u64>(&kept, STEP_TIMEOUT).await.unwrap(),
        Some(42),
        "{name}"
    );
    h.wait_log(name, "answer:5", 1).await;
    h.wait_set_len(name, "dead", 1).await;
    server.stop().await;
    assert_eq!(
        h.client.result::<u64>(&unkept).await.unwrap(),
        None,
        "{name}"
    );
    assert_eq!(
        h.client.result::<u64>(&too_big).await.unwrap(),
        None,
        "{name}"
    );
    assert!(
        h.client.result::<String>(&kept).await.is_err(),
        "{name}: a result read as the wrong type is an error"
    );
    let dead = h.set_json("dead").await;
    assert_eq!(dead[0].1["error_class"], "Errand::ResultTooLarge", "{name}");
    assert!(
        dead[0].1["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("over the limit of 262144 bytes")),
        "{name}: {}",
        dead[0].1
    );
}

/// A burst of debounced pushes for one key runs once, with the last push's arguments; each push
/// reports the one it replaced; another key is separate.
pub async fn server_runs_a_debounced_burst_once(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let account = token("acct");
    let mut last = None;
    for rev in 1..=5 {
        let pushed = h
            .client
            .push_debounced(Refresh(account.clone(), rev), Push::new())
            .await
            .unwrap();
        assert_eq!(
            pushed.replaced, last,
            "{name}: push {rev} replaced the one before"
        );
        last = Some(pushed.jid);
    }
    h.client
        .push(Refresh(format!("{account}-other"), 1))
        .await
        .unwrap();
    assert_eq!(h.inspect().set("schedule").await.len(), 2, "{name}");
    let server = start(h.server());
    h.wait_log(name, &format!("refresh:{account}:5"), 1).await;
    h.wait_log(name, &format!("refresh:{account}-other:1"), 1)
        .await;
    server.stop().await;
    assert_eq!(
        h.log.count_prefix(&format!("refresh:{account}:")),
        1,
        "{name}: the burst ran once: {:?}",
        h.log.all()
    );
    assert!(h.inspect().set("schedule").await.is_empty(), "{name}");
}

/// A batch run by a real server: a job that fails once and then succeeds counts once, a job
/// of the batch adds one to it while it runs, and `complete` and `success` each run once,
/// after the last job (their status reads 0 pending); a second batch with a job that dies
/// runs `death` and `complete` once each, and not `success`.
pub async fn server_runs_a_batch_and_its_callbacks_once(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let tag = token("batch");
    let batch = errand::Batch::new(&h.client)
        .description("conformance")
        .on_complete(Callback(tag.clone()))
        .on_success(Callback(tag.clone()))
        .on_death(Callback(tag.clone()))
        .open()
        .await
        .unwrap();
    batch
        .push_bulk(["ok", "fail-once", "grow"].map(|t| Member(t.into())))
        .await
        .unwrap();
    let bid = batch.seal().await.unwrap();
    let sad_tag = token("sad");
    let sad = errand::Batch::new(&h.client)
        .on_complete(Callback(sad_tag.clone()))
        .on_success(Callback(sad_tag.clone()))
        .on_death(Callback(sad_tag.clone()))
        .open()
        .await
        .unwrap();
    sad.push_bulk(["die", "ok"].map(|t| Member(t.into())))
        .await
        .unwrap();
    let sad_bid = sad.seal().await.unwrap();
    let server = start(h.server());
    h.wait_log(name, &format!("callback:{tag}:success:0:0"), 1)
        .await;
    h.wait_log(name, &format!("callback:{sad_tag}:complete:0:1"), 1)
        .await;
    h.wait_log(name, &format!("callback:{sad_tag}:death"), 0)
        .await;
    server.stop().await;
    let status = h.client.batch_status(&bid).await.unwrap().unwrap();
    assert_eq!(
        (status.total, status.pending, status.failed, status.dead),
        (4, 0, 0, 0),
        "{name}: three jobs and the grown one"
    );
    assert!(status.success_at.is_some(), "{name}");
    assert_eq!(h.log.count("member:grown"), 1, "{name}");
    assert_eq!(h.log.count("member:fail-once"), 2, "{name}");
    let callbacks = |t: &str| {
        let mut c: Vec<String> = h
            .log
            .all()
            .into_iter()
            .filter(|e| e.starts_with(&format!("callback:{t}:")))
            .collect();
        c.sort();
        c
    };
    assert_eq!(
        callbacks(&tag),
        vec![
            format!("callback:{tag}:complete:0:0"),
            format!("callback:{tag}:success:0:0")
        ],
        "{name}: each once"
    );
    let sad_calls = callbacks(&sad_tag);
    assert_eq!(sad_calls.len(), 2, "{name}: {sad_calls:?}");
    assert_eq!(
        sad_calls[0],
        format!("callback:{sad_tag}:complete:0:1"),
        "{name}"
    );
    assert!(
        sad_calls[1].starts_with(&format!("callback:{sad_tag}:death:")),
        "{name}"
    );
    let sad_status = h.client.batch_status(&sad_bid).await.unwrap().unwrap();
    assert_eq!((sad_status.pending, sad_status.dead), (0, 1), "{name}");
    assert!(sad_status.success_at.is_none(), "{name}");
    h.wait_set_len(name, "dead", 1).await;
}

/// A diamond workflow (a → b, c → d) run by a real server: d reads the outputs of b and c
/// (which read a's), and the workflow succeeds; with c failing, b finishes under
/// `CancelDependents` while d is cancelled, and the workflow completes without success.
pub async fn server_runs_a_diamond_workflow(f: &impl BackendFactory) {
    let h = Harness::new(f).await;
    let name = f.name();
    let server = start(h.server());
    let step = |n: &str, after: &[&str], v: u64| {
        Step(n.into(), after.iter().map(|a| a.to_string()).collect(), v)
    };
    let tag = token("wf");
    let run = errand::Workflow::new()
        .description("diamond")
        .add("a", step("a", &[], 1))
        .add_after("b", step("b", &["a"], 10), ["a"])
        .add_after("c", step("c", &["a"], 100), ["a"])
        .add_after("d", step("d", &["b", "c"], 1000), ["b", "c"])
        .on_success(Callback(tag.clone()))
        .start(&h.client)
        .await
        .unwrap();
    assert_eq!(run.steps.len(), 4, "{name}");
    // a = 1, b = 11, c = 101, d = 1000 + 11 + 101
    h.wait_log(name, "step:d:1112", 1).await;
    h.wait_log(name, &format!("callback:{tag}:success:0:0"), 1)
        .await;
    let failing = token("wf-fail");
    let run = errand::Workflow::new()
        .add("a", step("a", &[], 1))
        .add_after("b", step("b", &["a"], 10), ["a"])
        .add_after("c", step("c", &["a"], 0), ["a"])
        .add_after("d", step("d", &["b", "c"], 1000), ["b", "c"])
        .on_failure(errand::FailurePolicy::CancelDependents)
        .on_complete(Callback(failing.clone()))
        .start(&h.client)
        .await
        .unwrap();
    h.wait_log(name, &format!("callback:{failing}:complete:0:1"), 1)
        .await;
    server.stop().await;
    let s = h.client.batch_status(&run.id).await.unwrap().unwrap();
    assert_eq!(
        (s.total, s.pending, s.dead, s.cancelled),
        (4, 0, 1, 1),
        "{name}"
    );
    assert!(s.success_at.is_none(), "{name}");
    assert_eq!(
        h.log.count("step:d:1112"),
        1,
        "{name}: d ran once, in the first run only"
    );
    assert_eq!(h.log.count("step:b:11"), 2, "{name}: b ran in both");
    assert!(
        s.workflow
            .as_deref()
            .is_some_and(|w| w.contains("\"name\":\"d\"")),
        "{name}: {:?}",
        s.workflow
    );
}
