//! Paths where a live server used to strand jobs, each with the fault injected at the step it
//! names (on the reference backend, through `Intercepted`):
//! - a completion the backend refuses (not a connection error: no retry helps) leaves the job
//!   held but not running; the periodic self-sweep puts it back and it runs again;
//! - a failed shutdown requeue keeps the process registered, so a live process recovers its
//!   jobs once its heartbeat expires (it used to unregister, and recovery walks registrations);
//! - nothing is fetched before the process is registered;
//! - a backend that stops answering the heartbeat's other calls (metrics, paused queues) does
//!   not stop the heartbeat: each call is bounded, and the process stays alive.

use async_trait::async_trait;
use errand::admin::Admin;
use errand::broker::{
    Broker, BrokerResult, Completion, FetchRequest, Fetched, Fleet, RescuePolicy,
};
use errand::{Client, Job, JobContext, JobResult, Server};
use errand_core::BrokerError;
use errand_testing::{Intercept, Intercepted, ManualClock, MemoryBroker};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize)]
struct Count(u64);

impl Job for Count {
    const NAME: &'static str = "Count";
    async fn perform(self, cx: &JobContext) -> JobResult {
        cx.data::<Arc<AtomicUsize>>()
            .expect("counter")
            .fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Runs until its worker is shut down (to be running at the shutdown deadline).
#[derive(Serialize, Deserialize)]
struct Slow;

impl Job for Slow {
    const NAME: &'static str = "Slow";
    async fn perform(self, _cx: &JobContext) -> JobResult {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The backend refuses the first `refuse` completion batches with a command error (as an OOM
/// or a full disk would), which the completer does not retry.
struct RefusesCompletions {
    refuse: AtomicUsize,
}

#[async_trait]
impl Intercept for RefusesCompletions {
    async fn complete_many(
        &self,
        inner: &dyn Broker,
        batch: &[Completion<'_>],
    ) -> BrokerResult<Vec<bool>> {
        let left = self.refuse.load(Ordering::SeqCst);
        if left > 0 {
            self.refuse.store(left - 1, Ordering::SeqCst);
            return Err(BrokerError::Command("OOM command not allowed".into()));
        }
        inner.complete_many(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_completion_was_refused_runs_again_and_nothing_stays_in_flight() {
    let memory = MemoryBroker::new();
    let broker = Arc::new(Intercepted::new(
        Arc::new(memory.clone()),
        RefusesCompletions {
            refuse: AtomicUsize::new(1),
        },
    ));
    Client::new(memory.clone()).push(Count(1)).await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let server = Server::builder_arc(broker.clone())
        .register::<Count>()
        .data(ran.clone())
        .concurrency(2)
        .fetch_wait(Duration::from_millis(50))
        .rescue_interval(Duration::from_millis(200))
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let identity = handle.identity().to_string();
    let running = tokio::spawn(server.run());
    // Without the periodic self-sweep the job stays held in flight after its refused ack, and
    // never runs again while the process lives.
    wait_for("the job to run again", Duration::from_secs(10), || {
        ran.load(Ordering::SeqCst) >= 2
    })
    .await;
    wait_for("nothing left in flight", Duration::from_secs(10), || {
        memory.in_flight(&identity).is_empty()
    })
    .await;
    handle.stop();
    running.await.unwrap().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 2, "once refused, once acked");
    assert!(memory.queue("default").is_empty());
}

/// The shutdown requeue fails every time (the backend refuses it).
struct RefusesRequeue;

#[async_trait]
impl Intercept for RefusesRequeue {
    async fn requeue_in_flight(
        &self,
        _inner: &dyn Broker,
        _identity: &str,
        _queues: &[String],
    ) -> BrokerResult<usize> {
        Err(BrokerError::Command(
            "READONLY You can't write against a read only replica".into(),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shutdown_requeue_keeps_the_process_registered_and_its_jobs_are_recovered() {
    let clock = ManualClock::new(0.0);
    let offset = clock.clone();
    let memory = MemoryBroker::with_clock(Arc::new(move || errand_core::now() + offset.now()));
    let broker = Arc::new(Intercepted::new(Arc::new(memory.clone()), RefusesRequeue));
    Client::new(memory.clone()).push(Slow).await.unwrap();
    let server = Server::builder_arc(broker.clone())
        .register::<Slow>()
        .concurrency(1)
        .fetch_wait(Duration::from_millis(50))
        .shutdown_timeout(Duration::from_millis(100))
        .process_ttl(Duration::from_secs(60))
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let identity = handle.identity().to_string();
    let running = tokio::spawn(server.run());
    wait_for("the slow job to start", Duration::from_secs(10), || {
        handle.busy() == 1
    })
    .await;
    handle.stop();
    running.await.unwrap().unwrap();
    assert_eq!(
        memory.in_flight(&identity).len(),
        1,
        "the requeue failed: still held"
    );
    assert!(
        memory.registered().contains(&identity),
        "a process holding jobs stays registered"
    );
    // Another process's rescue, once the stopped process's heartbeat has expired.
    clock.advance(Duration::from_secs(61));
    let rescued = memory
        .rescue_orphans(&RescuePolicy::default())
        .await
        .unwrap();
    assert_eq!(rescued, 1);
    assert_eq!(
        memory.queue("default").len(),
        1,
        "the job is back on its queue"
    );
    assert!(memory.in_flight(&identity).is_empty());
}

/// Registration fails twice; fetches note whether it had succeeded before them.
struct LateRegistration {
    failures_left: AtomicUsize,
    registered: AtomicBool,
    fetched_unregistered: AtomicUsize,
    fetches: Mutex<usize>,
}

#[async_trait]
impl Intercept for LateRegistration {
    async fn register(
        &self,
        inner: &dyn Broker,
        identity: &str,
        queues: &[String],
    ) -> BrokerResult<()> {
        if self.failures_left.load(Ordering::SeqCst) > 0 {
            self.failures_left.fetch_sub(1, Ordering::SeqCst);
            return Err(BrokerError::Connection("connection refused".into()));
        }
        inner.register(identity, queues).await?;
        self.registered.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn fetch(&self, inner: &dyn Broker, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        *self.fetches.lock().unwrap() += 1;
        if !self.registered.load(Ordering::SeqCst) {
            self.fetched_unregistered.fetch_add(1, Ordering::SeqCst);
        }
        inner.fetch(req).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_fetched_before_the_process_is_registered() {
    let memory = MemoryBroker::new();
    let broker = Arc::new(Intercepted::new(
        Arc::new(memory.clone()),
        LateRegistration {
            failures_left: AtomicUsize::new(2),
            registered: AtomicBool::new(false),
            fetched_unregistered: AtomicUsize::new(0),
            fetches: Mutex::new(0),
        },
    ));
    Client::new(memory.clone()).push(Count(1)).await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let server = Server::builder_arc(broker.clone())
        .register::<Count>()
        .data(ran.clone())
        .fetch_wait(Duration::from_millis(50))
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    wait_for("the job to run", Duration::from_secs(10), || {
        ran.load(Ordering::SeqCst) == 1
    })
    .await;
    handle.stop();
    running.await.unwrap().unwrap();
    let hooks = broker.hooks();
    assert!(*hooks.fetches.lock().unwrap() > 0);
    assert_eq!(
        hooks.fetched_unregistered.load(Ordering::SeqCst),
        0,
        "a fetch came before the registration succeeded"
    );
}

/// The backend never answers a metrics write or a paused-queue read (a stalled call).
struct StallsBeatDuties;

#[async_trait]
impl Intercept for StallsBeatDuties {
    async fn paused_queues(&self, _inner: &dyn Broker) -> BrokerResult<Vec<String>> {
        std::future::pending().await
    }
    async fn record_metrics(
        &self,
        _inner: &dyn Broker,
        _minute: i64,
        _classes: &[errand::metrics::ClassMetrics],
    ) -> BrokerResult<()> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_beat_duties_do_not_stop_the_heartbeat() {
    let memory = MemoryBroker::new();
    let broker = Arc::new(Intercepted::new(Arc::new(memory.clone()), StallsBeatDuties));
    Client::new(memory.clone()).push(Count(1)).await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let ttl = Duration::from_millis(800);
    let server = Server::builder_arc(broker.clone())
        .register::<Count>()
        .data(ran.clone())
        .fetch_wait(Duration::from_millis(50))
        .heartbeat_interval(Duration::from_millis(100))
        .process_ttl(ttl)
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let identity = handle.identity().to_string();
    let running = tokio::spawn(server.run());
    // Before: the first beat waited forever on the paused-queue read, so the process never
    // registered, never ran its job, and never beat again.
    wait_for("the job to run", Duration::from_secs(10), || {
        ran.load(Ordering::SeqCst) == 1
    })
    .await;
    // Alive throughout four TTLs, though every beat's metrics write and paused read stall.
    let until = Instant::now() + ttl * 4;
    while Instant::now() < until {
        let live = memory.processes().await.unwrap();
        assert!(
            live.iter().any(|p| p.identity == identity),
            "the process's heartbeat expired while it ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop();
    running.await.unwrap().unwrap();
}
