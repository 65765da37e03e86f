//! Errand's backend conformance suite: one `pub async fn` per behaviour of the
//! [`Broker`] contract, run against every backend, plus server-level cases (`server_*`) that
//! prove the job lifecycle (queue order, scheduling, retries, dead set, snooze, discard,
//! malformed payloads, orphan recovery, graceful shutdown, stats) through a real
//! `errand::Server` running on the backend.
//!
//! # Overview
//! A backend's test file implements [`BackendFactory`] (a fresh, isolated backend per call,
//! plus an [`Inspect`] view of what it stores) and expands [`conformance_tests!`], which gives
//! one `#[tokio::test]` per case:
//!
//! ```text
//! struct Memory;
//! #[async_trait::async_trait]
//! impl errand_backend_tests::BackendFactory for Memory { /* ... */ }
//! errand_backend_tests::conformance_tests!(Memory);
//! ```
//!
//! The cases pass explicit times to `settle` and `promote_due`, so they are independent of the
//! wall clock, except heartbeat expiry: that goes through [`Inspect::let_time_pass`], which an
//! injectable-clock backend advances and a real-time backend ignores (the case then polls with
//! a deadline, never a fixed sleep).
//!
//! When backend semantics change, change the suite first.

use async_trait::async_trait;
use errand_core::broker::{
    Broker, DeadLimits, Enqueue, FetchRequest, Fetched, Heartbeat, LeaseGrant, LeaseRequest,
    OnceClaim, RateKind, RemoteSignal, RescuePolicy, Scheduled, Settle,
};
use errand_core::{Payload, WireProfile};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod admin;
mod server;
pub use admin::*;
pub use server::*;

/// How long any single step of a case may take before the case fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The `stat:processed` and `stat:failed` counters of a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatCounts {
    /// Jobs executed.
    pub processed: u64,
    /// Jobs failed.
    pub failed: u64,
}

/// A read-only view of what a backend stores, for assertions. Implemented by each backend's
/// test factory; methods panic on backend errors (they are test support).
#[async_trait]
pub trait Inspect: Send + Sync {
    /// The jobs waiting in queue `name`, the next to be fetched first.
    async fn queue(&self, name: &str) -> Vec<String>;

    /// The number of jobs waiting in queue `name`.
    async fn queue_len(&self, name: &str) -> usize {
        self.queue(name).await.len()
    }

    /// Every queue name pushed or promoted to (Sidekiq's `queues` set), sorted.
    async fn known_queues(&self) -> Vec<String>;

    /// Sorted set `name` (`retry`, `schedule` or `dead`) as `(score, member)`, lowest first.
    async fn set(&self, name: &str) -> Vec<(f64, String)>;

    /// The jobs `identity` holds in flight from `queue`, oldest fetched first.
    async fn in_flight(&self, identity: &str, queue: &str) -> Vec<String>;

    /// The total counters.
    async fn stats(&self) -> StatCounts;

    /// The counters of one UTC day (`YYYY-MM-DD`).
    async fn daily_stats(&self, date: &str) -> StatCounts;

    /// Queues remote signal `name` for `identity` as Sidekiq's Web UI does (`LPUSH
    /// <identity>-signals`). Returns false when the backend cannot receive signals; the signal
    /// cases then stop early.
    async fn push_signal(&self, identity: &str, name: &str) -> bool;

    /// Lets `by` of backend time pass where the backend's clock is injectable. A backend on
    /// real time does nothing; cases then wait on a condition with a deadline.
    async fn let_time_pass(&self, by: Duration);
}

/// A backend under test and its inspection view.
pub struct TestBackend {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// What it stores.
    pub inspect: Arc<dyn Inspect>,
}

/// Makes fresh, isolated backends (own namespace, database or instance) for each case.
///
/// [`conformance_tests!`] evaluates the factory expression once per case and keeps the value
/// until the case ends, so a factory is the place to hold resources a case's backend needs
/// (a server process), rather than the [`TestBackend`], whose parts a case may drop early.
#[async_trait]
pub trait BackendFactory: Send + Sync {
    /// The backend's name, for failure messages.
    fn name(&self) -> &str;

    /// A new backend sharing no state with any other returned before.
    async fn new_backend(&self) -> TestBackend;
}

/// Expands into one `#[tokio::test]` per conformance case, each calling the case with
/// `$factory` (an expression evaluated once per test). The calling crate needs `tokio` with
/// the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            push_fetch_ack_round_trip,
            ack_removes_one_copy_of_duplicates,
            bulk_push_keeps_fifo,
            fetch_follows_queue_order_and_max,
            fetch_waits_for_a_push,
            fetch_wait_on_empty_queue_returns_nothing,
            schedule_stores_scores,
            settle_to_each_set,
            settle_after_ack_stores_nothing,
            dead_set_trims_by_size,
            dead_set_trims_by_age,
            promote_due_moves_only_due_jobs,
            promote_due_stamps_in_profile,
            requeue_in_flight_returns_jobs_unchanged,
            held_lists_and_release_returns_one_job,
            fetch_hands_out_increasing_fencing_tokens,
            rescue_orphans_recovers_only_expired_processes,
            rescue_buries_a_poison_pill_after_max_recoveries,
            heartbeat_returns_remote_signals,
            heartbeat_stats_accumulate,
            process_count_and_unregister,
            claim_poll_is_exclusive_per_window,
            once_records_claim_complete_release,
            once_claims_and_records_expire,
            lease_sets_bound_holders_and_fence,
            lease_expires_without_renewal,
            rate_limits_count_and_refuse,
            rate_window_frees_as_uses_age,
            server_weighted_fetch_follows_weights,
            server_strict_queue_order,
            server_runs_scheduled_job_when_due,
            server_retries_then_buries_with_fields,
            server_retry_zero_and_retry_disabled,
            server_snooze_and_discard,
            server_buries_malformed_payloads,
            server_recovers_jobs_of_a_dead_process,
            server_shutdown_requeues_unfinished_jobs,
            server_stats_count_processed_and_failed,
            server_once_step_runs_once_across_retries,
            server_drain_runs_nested_and_due_jobs,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::$case(&$factory).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn step<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {STEP_TIMEOUT:?}"))
}

/// A valid Sidekiq payload for queue `queue`, told apart by `n`.
pub fn job(queue: &str, n: u64) -> String {
    json!({
        "retry": true,
        "queue": queue,
        "args": [n, "x", {"k": []}],
        "class": "ConformanceJob",
        "jid": format!("{queue}-{n:024}"),
        "created_at": 1_700_000_000.5,
        "enqueued_at": 1_700_000_000.5,
        "unknown": {"kept": true}
    })
    .to_string()
}

fn enqueue(queue: &str, payload: String) -> Enqueue {
    Enqueue {
        queue: queue.to_string(),
        payload,
    }
}

fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn fetch(
    b: &dyn Broker,
    identity: &str,
    qs: &[&str],
    max: usize,
    wait: Duration,
) -> Vec<Fetched> {
    let qs = queues(qs);
    step(
        "fetch",
        b.fetch(FetchRequest {
            identity,
            queues: &qs,
            max,
            wait,
        }),
    )
    .await
    .expect("fetch")
}

fn info(identity: &str, qs: &[&str]) -> String {
    json!({ "identity": identity, "queues": qs, "concurrency": 5 }).to_string()
}

async fn beat(
    b: &dyn Broker,
    identity: &str,
    info: &str,
    ttl: Duration,
    processed: u64,
) -> Option<RemoteSignal> {
    beat_at(b, identity, info, ttl, processed, 0, errand_core::now()).await
}

async fn beat_at(
    b: &dyn Broker,
    identity: &str,
    info: &str,
    ttl: Duration,
    processed: u64,
    failed: u64,
    at: f64,
) -> Option<RemoteSignal> {
    step(
        "heartbeat",
        b.heartbeat(&Heartbeat {
            identity,
            info,
            busy: 0,
            concurrency: 5,
            beat: at,
            quiet: false,
            rss_kb: 1024,
            work: &[],
            processed,
            failed,
            ttl,
        }),
    )
    .await
    .expect("heartbeat")
}

fn raws(jobs: &[Fetched]) -> Vec<String> {
    jobs.iter().map(|j| j.raw.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// Cases

/// A pushed job is fetched exactly as pushed, held in flight until acked; a second ack of the
/// same job reports it is no longer held.
pub async fn push_fetch_ack_round_trip(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let payload = job("default", 1);
    b.push(&[enqueue("default", payload.clone())])
        .await
        .unwrap();
    b.push(&[]).await.expect("an empty push is fine");
    assert_eq!(inspect.queue("default").await, vec![payload.clone()]);
    assert_eq!(inspect.known_queues().await, queues(&["default"]));

    let got = fetch(b, "p1", &["default"], 10, Duration::ZERO).await;
    assert_eq!(got.len(), 1, "{}: one job", f.name());
    assert_eq!(got[0].queue, "default");
    assert_eq!(got[0].raw, payload, "the exact string that was pushed");
    assert_eq!(inspect.queue_len("default").await, 0);
    assert_eq!(
        inspect.in_flight("p1", "default").await,
        vec![payload.clone()]
    );
    assert!(inspect.in_flight("p2", "default").await.is_empty());

    assert!(b.ack(&got[0]).await.unwrap(), "first ack");
    assert!(inspect.in_flight("p1", "default").await.is_empty());
    assert!(!b.ack(&got[0]).await.unwrap(), "second ack: no longer held");
    assert!(
        fetch(b, "p1", &["default"], 10, Duration::ZERO)
            .await
            .is_empty()
    );
}

/// Two identical strings in flight are two jobs: each ack removes one.
pub async fn ack_removes_one_copy_of_duplicates(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let payload = job("dup", 7);
    b.push(&[
        enqueue("dup", payload.clone()),
        enqueue("dup", payload.clone()),
    ])
    .await
    .unwrap();
    let got = fetch(b, "p1", &["dup"], 5, Duration::ZERO).await;
    assert_eq!(raws(&got), vec![payload.clone(), payload.clone()]);
    assert!(b.ack(&got[0]).await.unwrap());
    assert_eq!(inspect.in_flight("p1", "dup").await, vec![payload.clone()]);
    assert!(b.ack(&got[1]).await.unwrap());
    assert!(!b.ack(&got[1]).await.unwrap());
    assert!(inspect.in_flight("p1", "dup").await.is_empty());
}

/// 10,000 jobs pushed in one call, interleaved over two queues, come out of each queue in push
/// order.
pub async fn bulk_push_keeps_fifo(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let jobs: Vec<Enqueue> = (0..10_000u64)
        .map(|i| {
            let q = if i % 2 == 0 { "even" } else { "odd" };
            enqueue(q, job(q, i))
        })
        .collect();
    step("bulk push", b.push(&jobs)).await.unwrap();
    assert_eq!(inspect.queue_len("even").await, 5_000);
    assert_eq!(inspect.queue_len("odd").await, 5_000);
    assert_eq!(inspect.known_queues().await, queues(&["even", "odd"]));

    for (q, first) in [("even", 0u64), ("odd", 1)] {
        let mut seen = Vec::new();
        loop {
            let got = fetch(b, "p1", &[q], 1_000, Duration::ZERO).await;
            if got.is_empty() {
                break;
            }
            assert!(got.len() <= 1_000, "max respected");
            assert!(got.iter().all(|j| j.queue == q));
            seen.extend(raws(&got));
        }
        let expected: Vec<String> = (0..5_000).map(|k| job(q, first + 2 * k)).collect();
        assert_eq!(seen.len(), expected.len(), "{}: all of {q}", f.name());
        assert!(seen == expected, "{}: {q} is not FIFO", f.name());
    }
}

/// Fetch drains queues strictly in the order given and never returns more than `max`.
pub async fn fetch_follows_queue_order_and_max(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(enqueue("a", job("a", i)));
        jobs.push(enqueue("b", job("b", i)));
    }
    b.push(&jobs).await.unwrap();

    assert!(
        fetch(b, "p1", &["a", "b"], 0, Duration::ZERO)
            .await
            .is_empty(),
        "max 0 fetches nothing"
    );
    assert!(fetch(b, "p1", &[], 5, Duration::ZERO).await.is_empty());
    assert_eq!(
        inspect.queue_len("a").await + inspect.queue_len("b").await,
        6
    );

    // An empty queue first is skipped; then b is drained before a is touched.
    let got = fetch(b, "p1", &["empty", "b", "a"], 4, Duration::ZERO).await;
    let got: Vec<(String, String)> = got.into_iter().map(|j| (j.queue, j.raw)).collect();
    let want = vec![
        ("b".to_string(), job("b", 0)),
        ("b".to_string(), job("b", 1)),
        ("b".to_string(), job("b", 2)),
        ("a".to_string(), job("a", 0)),
    ];
    assert_eq!(got, want, "{}: strict order, max 4", f.name());
    assert_eq!(inspect.queue("a").await, vec![job("a", 1), job("a", 2)]);
    assert_eq!(inspect.in_flight("p1", "b").await.len(), 3);
    assert_eq!(inspect.in_flight("p1", "a").await, vec![job("a", 0)]);

    let rest = fetch(b, "p1", &["a", "b"], 1, Duration::ZERO).await;
    assert_eq!(raws(&rest), vec![job("a", 1)]);
}

/// A fetch waiting on an empty queue takes a job pushed during the wait, before the wait ends.
pub async fn fetch_waits_for_a_push(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let wait = Duration::from_secs(15);
    let started = Instant::now();
    let waiter = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let qs = queues(&["late"]);
            broker
                .fetch(FetchRequest {
                    identity: "p1",
                    queues: &qs,
                    max: 5,
                    wait,
                })
                .await
        })
    };
    // The fetch must still be waiting: the queue is empty.
    let mut waiter = waiter;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiter)
            .await
            .is_err(),
        "{}: fetch on an empty queue returned before its wait",
        f.name()
    );
    let payload = job("late", 1);
    broker
        .push(&[enqueue("late", payload.clone())])
        .await
        .unwrap();
    let got = step("waiting fetch", waiter).await.unwrap().expect("fetch");
    assert!(
        started.elapsed() < wait,
        "{}: the push woke the fetch",
        f.name()
    );
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].queue.as_str(), got[0].raw.as_str()),
        ("late", payload.as_str())
    );
    assert_eq!(inspect.in_flight("p1", "late").await, vec![payload]);
    assert!(broker.ack(&got[0]).await.unwrap());
}

/// A fetch with a wait on an empty queue returns nothing after (about) the wait, and a fetch
/// without a wait returns at once.
pub async fn fetch_wait_on_empty_queue_returns_nothing(f: &impl BackendFactory) {
    let TestBackend { broker, .. } = f.new_backend().await;
    let b = &*broker;
    let t = Instant::now();
    assert!(
        fetch(b, "p1", &["none"], 3, Duration::from_millis(400))
            .await
            .is_empty()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{}: returned after {:?}, before the wait",
        f.name(),
        t.elapsed()
    );
    assert!(
        fetch(b, "p1", &["none"], 3, Duration::ZERO)
            .await
            .is_empty()
    );
}

/// `schedule` stores each payload in the schedule set scored by its time.
pub async fn schedule_stores_scores(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let later = Scheduled {
        at: 2_000.25,
        payload: job("s", 2),
    };
    let sooner = Scheduled {
        at: 1_000.5,
        payload: job("s", 1),
    };
    broker.schedule(&[later, sooner]).await.unwrap();
    broker.schedule(&[]).await.unwrap();
    assert_eq!(
        inspect.set("schedule").await,
        vec![(1_000.5, job("s", 1)), (2_000.25, job("s", 2))]
    );
    assert_eq!(inspect.queue_len("s").await, 0);
}

/// Settle moves each job out of flight into the retry, schedule or dead set with its new
/// payload and score.
pub async fn settle_to_each_set(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    b.push(
        &(0..3)
            .map(|i| enqueue("q", job("q", i)))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let got = fetch(b, "p1", &["q"], 3, Duration::ZERO).await;
    assert_eq!(got.len(), 3);
    let retry = format!("{}-retry", got[0].raw);
    let snooze = format!("{}-snooze", got[1].raw);
    let dead = format!("{}-dead", got[2].raw);
    assert!(
        b.settle(
            &got[0],
            Settle::Retry {
                payload: retry.clone(),
                at: 111.5
            }
        )
        .await
        .unwrap()
    );
    assert!(
        b.settle(
            &got[1],
            Settle::Schedule {
                payload: snooze.clone(),
                at: 222.5
            }
        )
        .await
        .unwrap()
    );
    assert!(
        b.settle(
            &got[2],
            Settle::Dead {
                payload: dead.clone(),
                now: 333.5,
                limits: DeadLimits::default()
            }
        )
        .await
        .unwrap()
    );
    assert_eq!(inspect.set("retry").await, vec![(111.5, retry)]);
    assert_eq!(inspect.set("schedule").await, vec![(222.5, snooze)]);
    assert_eq!(inspect.set("dead").await, vec![(333.5, dead)]);
    assert!(
        inspect.in_flight("p1", "q").await.is_empty(),
        "{}: out of flight",
        f.name()
    );
    assert_eq!(inspect.queue_len("q").await, 0);
    // Settled jobs are gone from flight: acking or settling them again does nothing.
    assert!(!b.ack(&got[0]).await.unwrap());
    assert!(
        !b.settle(
            &got[1],
            Settle::Retry {
                payload: "again".into(),
                at: 1.0
            }
        )
        .await
        .unwrap()
    );
    assert_eq!(inspect.set("retry").await.len(), 1);
}

/// A settle of a job that is no longer in flight (acked already) returns false and stores
/// nothing in any set.
pub async fn settle_after_ack_stores_nothing(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    b.push(&[enqueue("q", job("q", 1))]).await.unwrap();
    let got = fetch(b, "p1", &["q"], 1, Duration::ZERO).await;
    assert!(b.ack(&got[0]).await.unwrap());
    for to in [
        Settle::Retry {
            payload: "r".into(),
            at: 1.0,
        },
        Settle::Schedule {
            payload: "s".into(),
            at: 1.0,
        },
        Settle::Dead {
            payload: "d".into(),
            now: 1.0,
            limits: DeadLimits::default(),
        },
    ] {
        assert!(
            !b.settle(&got[0], to).await.unwrap(),
            "{}: lease lost",
            f.name()
        );
    }
    for set in ["retry", "schedule", "dead"] {
        assert!(
            inspect.set(set).await.is_empty(),
            "{}: {set} is empty",
            f.name()
        );
    }
}

async fn kill(b: &dyn Broker, identity: &str, queue: &str, n: u64, now: f64, limits: DeadLimits) {
    b.push(&[enqueue(queue, job(queue, n))]).await.unwrap();
    let got = fetch(b, identity, &[queue], 1, Duration::ZERO).await;
    assert_eq!(got.len(), 1);
    let to = Settle::Dead {
        payload: job("dead", n),
        now,
        limits,
    };
    assert!(b.settle(&got[0], to).await.unwrap());
}

/// The dead set keeps exactly `max_jobs` entries, the newest.
pub async fn dead_set_trims_by_size(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let limits = DeadLimits {
        max_jobs: 3,
        ..DeadLimits::default()
    };
    // Insert out of time order: the trim keeps the highest scores, not the latest inserts.
    for (n, now) in [
        (0, 1_000.0),
        (1, 1_004.0),
        (2, 1_001.0),
        (3, 1_003.0),
        (4, 1_002.0),
    ] {
        kill(&*broker, "p1", "q", n, now, limits).await;
    }
    assert_eq!(
        inspect.set("dead").await,
        vec![
            (1_002.0, job("dead", 4)),
            (1_003.0, job("dead", 3)),
            (1_004.0, job("dead", 1))
        ],
        "{}",
        f.name()
    );
}

/// The dead set drops entries scored before `now - max_age` on insert (the boundary stays).
pub async fn dead_set_trims_by_age(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let roomy = DeadLimits {
        max_jobs: 100,
        max_age: Duration::from_secs(10_000),
    };
    kill(&*broker, "p1", "q", 0, 800.0, roomy).await;
    kill(&*broker, "p1", "q", 1, 900.0, roomy).await;
    kill(&*broker, "p1", "q", 2, 950.0, roomy).await;
    assert_eq!(inspect.set("dead").await.len(), 3);
    let strict = DeadLimits {
        max_jobs: 100,
        max_age: Duration::from_secs(100),
    };
    kill(&*broker, "p1", "q", 3, 1_000.0, strict).await;
    let scores: Vec<f64> = inspect
        .set("dead")
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(scores, vec![900.0, 950.0, 1_000.0], "{}", f.name());
}

/// `promote_due` moves members scored at or before `now` from retry and schedule to their
/// queues with `enqueued_at` stamped, leaves later ones, and sends unreadable members to
/// `default` unchanged.
pub async fn promote_due_moves_only_due_jobs(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let now = 1_800_000_000.25;
    b.schedule(&[
        Scheduled {
            at: now - 20.0,
            payload: job("a", 1),
        },
        Scheduled {
            at: now - 10.0,
            payload: job("a", 2),
        },
        Scheduled {
            at: now,
            payload: job("b", 3),
        },
        Scheduled {
            at: now - 5.0,
            payload: "not json".into(),
        },
        Scheduled {
            at: now + 0.5,
            payload: job("a", 4),
        },
    ])
    .await
    .unwrap();
    // One due retry, one future retry, through settle.
    b.push(&[enqueue("r", job("r", 5)), enqueue("r", job("r", 6))])
        .await
        .unwrap();
    let got = fetch(b, "p1", &["r"], 2, Duration::ZERO).await;
    assert!(
        b.settle(
            &got[0],
            Settle::Retry {
                payload: job("r", 5),
                at: now - 1.0
            }
        )
        .await
        .unwrap()
    );
    assert!(
        b.settle(
            &got[1],
            Settle::Retry {
                payload: job("r", 6),
                at: now + 60.0
            }
        )
        .await
        .unwrap()
    );

    let moved = step("promote", b.promote_due(now, WireProfile::V7))
        .await
        .unwrap();
    assert_eq!(
        moved,
        5,
        "{}: four scheduled and one retry are due",
        f.name()
    );
    let stamped = |raw: String| {
        let mut p = Payload::parse(&raw).unwrap();
        p.stamp_enqueued(WireProfile::V7, now);
        p.to_json()
    };
    assert_eq!(
        inspect.queue("a").await,
        vec![stamped(job("a", 1)), stamped(job("a", 2))]
    );
    assert_eq!(inspect.queue("b").await, vec![stamped(job("b", 3))]);
    assert_eq!(inspect.queue("r").await, vec![stamped(job("r", 5))]);
    assert_eq!(inspect.queue("default").await, vec!["not json".to_string()]);
    assert_eq!(
        inspect.set("schedule").await,
        vec![(now + 0.5, job("a", 4))]
    );
    assert_eq!(inspect.set("retry").await, vec![(now + 60.0, job("r", 6))]);
    let known = inspect.known_queues().await;
    for q in ["a", "b", "default", "r"] {
        assert!(
            known.contains(&q.to_string()),
            "{}: {q} registered",
            f.name()
        );
    }
    assert_eq!(
        b.promote_due(now, WireProfile::V7).await.unwrap(),
        0,
        "nothing twice"
    );
}

/// Promotion in the Sidekiq 8 profile stamps integer milliseconds; key order and unknown keys
/// are kept.
pub async fn promote_due_stamps_in_profile(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let now = 1_800_000_000.125;
    let raw = r#"{"class":"K","args":[[]],"queue":"v8","unknown":{"a":[]},"jid":"j8"}"#;
    broker
        .schedule(&[Scheduled {
            at: now - 1.0,
            payload: raw.into(),
        }])
        .await
        .unwrap();
    assert_eq!(broker.promote_due(now, WireProfile::V8).await.unwrap(), 1);
    let want = r#"{"class":"K","args":[[]],"queue":"v8","unknown":{"a":[]},"jid":"j8","enqueued_at":1800000000125}"#;
    assert_eq!(
        inspect.queue("v8").await,
        vec![want.to_string()],
        "{}",
        f.name()
    );
}

/// `requeue_in_flight` puts a process's held jobs back, unchanged, at the consuming end of
/// their queues, the oldest fetched consumed first; their leases are lost.
pub async fn requeue_in_flight_returns_jobs_unchanged(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    b.register("p1", &queues(&["a", "b"])).await.unwrap();
    let mut jobs: Vec<Enqueue> = (1..=4).map(|i| enqueue("a", job("a", i))).collect();
    jobs.push(enqueue("b", job("b", 1)));
    b.push(&jobs).await.unwrap();
    let held = fetch(b, "p1", &["a", "b"], 3, Duration::ZERO).await;
    assert_eq!(raws(&held), vec![job("a", 1), job("a", 2), job("a", 3)]);
    let held_b = fetch(b, "p1", &["b"], 3, Duration::ZERO).await;
    assert_eq!(raws(&held_b), vec![job("b", 1)]);
    // Another process's jobs are not touched.
    b.push(&[enqueue("a", job("a", 9))]).await.unwrap();
    b.register("p2", &queues(&["a"])).await.unwrap();
    let other = fetch(b, "p2", &["a"], 5, Duration::ZERO).await;
    assert_eq!(raws(&other), vec![job("a", 4), job("a", 9)]);

    assert_eq!(b.requeue_in_flight("p1").await.unwrap(), 4, "{}", f.name());
    assert!(inspect.in_flight("p1", "a").await.is_empty());
    assert!(inspect.in_flight("p1", "b").await.is_empty());
    assert_eq!(
        inspect.in_flight("p2", "a").await,
        vec![job("a", 4), job("a", 9)]
    );
    assert_eq!(
        inspect.queue("a").await,
        vec![job("a", 1), job("a", 2), job("a", 3)],
        "{}: back at the consuming end, oldest first",
        f.name()
    );
    assert_eq!(inspect.queue("b").await, vec![job("b", 1)]);
    assert!(!b.ack(&held[0]).await.unwrap(), "the lease is gone");
    assert_eq!(b.requeue_in_flight("p1").await.unwrap(), 0);
    // The requeued jobs are fetched again first, even ahead of newer pushes.
    b.push(&[enqueue("a", job("a", 10))]).await.unwrap();
    let again = fetch(b, "p3", &["a"], 2, Duration::ZERO).await;
    assert_eq!(raws(&again), vec![job("a", 1), job("a", 2)]);
}

/// `rescue_orphans` returns the in-flight jobs of a process whose heartbeat expired and leaves a
/// live process alone.
pub async fn rescue_orphans_recovers_only_expired_processes(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let (dead, live) = ("host:1:dead", "host:2:live");
    let dead_info = info(dead, &["q"]);
    let live_info = info(live, &["q"]);
    // As the server does: beat first, then register.
    beat(b, dead, &dead_info, Duration::from_secs(1), 0).await;
    b.register(dead, &queues(&["q"])).await.unwrap();
    beat(b, live, &live_info, Duration::from_secs(600), 0).await;
    b.register(live, &queues(&["q"])).await.unwrap();
    assert_eq!(b.process_count().await.unwrap(), 2);

    b.push(
        &(1..=5)
            .map(|i| enqueue("q", job("q", i)))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let dead_jobs = fetch(b, dead, &["q"], 2, Duration::ZERO).await;
    let live_jobs = fetch(b, live, &["q"], 2, Duration::ZERO).await;
    assert_eq!(raws(&dead_jobs), vec![job("q", 1), job("q", 2)]);
    assert_eq!(raws(&live_jobs), vec![job("q", 3), job("q", 4)]);

    assert_eq!(
        b.rescue_orphans(&RescuePolicy::default()).await.unwrap(),
        0,
        "{}: both alive",
        f.name()
    );
    assert_eq!(inspect.in_flight(dead, "q").await.len(), 2);

    inspect.let_time_pass(Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let rescued = loop {
        let n = b.rescue_orphans(&RescuePolicy::default()).await.unwrap();
        if n > 0 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the dead process's jobs were not recovered within 10 s",
            f.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rescued, 2, "{}", f.name());
    assert!(inspect.in_flight(dead, "q").await.is_empty());
    assert_eq!(
        inspect.in_flight(live, "q").await,
        vec![job("q", 3), job("q", 4)]
    );
    assert_eq!(
        inspect.queue("q").await,
        vec![job("q", 1), job("q", 2), job("q", 5)],
        "{}: recovered jobs are consumed first, oldest first",
        f.name()
    );
    assert!(
        !b.ack(&dead_jobs[0]).await.unwrap(),
        "the dead process lost its lease"
    );
    assert!(
        b.ack(&live_jobs[0]).await.unwrap(),
        "the live process keeps its own"
    );
    assert_eq!(
        b.process_count().await.unwrap(),
        1,
        "the dead process is forgotten"
    );
    assert_eq!(
        b.rescue_orphans(&RescuePolicy::default()).await.unwrap(),
        0,
        "nothing twice"
    );
}

/// A heartbeat returns the oldest waiting remote signal, one per beat, mapping Sidekiq's names;
/// unknown names are consumed and ignored.
pub async fn heartbeat_returns_remote_signals(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let id = "host:1:sig";
    let info = info(id, &["q"]);
    let ttl = Duration::from_secs(60);
    assert_eq!(beat(b, id, &info, ttl, 0).await, None);
    if !inspect.push_signal(id, "TSTP").await {
        return;
    }
    for name in ["TERM", "BOGUS", "TTIN"] {
        assert!(inspect.push_signal(id, name).await);
    }
    assert!(inspect.push_signal("host:2:other", "TERM").await);
    assert_eq!(
        beat(b, id, &info, ttl, 0).await,
        Some(RemoteSignal::Quiet),
        "{}",
        f.name()
    );
    assert_eq!(beat(b, id, &info, ttl, 0).await, Some(RemoteSignal::Stop));
    assert_eq!(
        beat(b, id, &info, ttl, 0).await,
        None,
        "unknown name ignored"
    );
    assert_eq!(beat(b, id, &info, ttl, 0).await, Some(RemoteSignal::Dump));
    assert_eq!(beat(b, id, &info, ttl, 0).await, None);
}

/// Heartbeats add their processed and failed counts to the total and daily counters, across
/// processes.
pub async fn heartbeat_stats_accumulate(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let ttl = Duration::from_secs(60);
    let day1 = 1_795_853_128.0; // 2026-11-28
    let day2 = day1 + 86_400.0;
    assert_eq!(inspect.stats().await, StatCounts::default());
    beat_at(b, "h:1:a", &info("h:1:a", &["q"]), ttl, 3, 1, day1).await;
    beat_at(b, "h:2:b", &info("h:2:b", &["q"]), ttl, 2, 0, day1).await;
    beat_at(b, "h:1:a", &info("h:1:a", &["q"]), ttl, 0, 0, day1).await;
    beat_at(b, "h:1:a", &info("h:1:a", &["q"]), ttl, 4, 2, day2).await;
    assert_eq!(
        inspect.stats().await,
        StatCounts {
            processed: 9,
            failed: 3
        },
        "{}",
        f.name()
    );
    assert_eq!(
        inspect.daily_stats("2026-11-28").await,
        StatCounts {
            processed: 5,
            failed: 1
        }
    );
    assert_eq!(
        inspect.daily_stats("2026-11-29").await,
        StatCounts {
            processed: 4,
            failed: 2
        }
    );
    assert_eq!(
        inspect.daily_stats("2026-11-30").await,
        StatCounts::default()
    );
}

/// One caller per window gets the cluster-wide poll turn; after the window it is free again.
pub async fn claim_poll_is_exclusive_per_window(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let window = Duration::from_secs(2);
    assert!(
        broker.claim_poll(window).await.unwrap(),
        "{}: first claim",
        f.name()
    );
    assert!(
        !broker.claim_poll(window).await.unwrap(),
        "{}: a second claim in the same window loses",
        f.name()
    );
    inspect.let_time_pass(Duration::from_millis(2_100)).await;
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while !broker.claim_poll(window).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: the turn never came free",
            f.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Beating processes are counted; a clean unregister removes one and its registration (its
/// jobs are then no longer recovered).
pub async fn process_count_and_unregister(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let ttl = Duration::from_secs(60);
    assert_eq!(b.process_count().await.unwrap(), 0);
    for id in ["h:1:a", "h:2:b"] {
        beat(b, id, &info(id, &["q"]), ttl, 0).await;
        b.register(id, &queues(&["q"])).await.unwrap();
    }
    beat(b, "h:1:a", &info("h:1:a", &["q"]), ttl, 0).await;
    assert_eq!(b.process_count().await.unwrap(), 2, "{}", f.name());
    b.push(&[enqueue("q", job("q", 1))]).await.unwrap();
    let held = fetch(b, "h:1:a", &["q"], 1, Duration::ZERO).await;
    assert_eq!(b.requeue_in_flight("h:1:a").await.unwrap(), 1);
    assert!(!b.ack(&held[0]).await.unwrap());
    b.unregister("h:1:a").await.unwrap();
    assert_eq!(b.process_count().await.unwrap(), 1);
    assert_eq!(
        b.requeue_in_flight("h:1:a").await.unwrap(),
        0,
        "no longer registered"
    );
    assert_eq!(inspect.queue("q").await, vec![job("q", 1)]);
    b.unregister("h:1:a")
        .await
        .expect("unregistering twice is fine");
    b.unregister("h:2:b").await.unwrap();
    assert_eq!(b.process_count().await.unwrap(), 0);
}

/// A once-only step record: one owner claims it, others see it busy; only the owner renews,
/// completes or releases it; a completed step hands its output to every later claim; a
/// released claim is free for the next owner.
pub async fn once_records_claim_complete_release(f: &impl BackendFactory) {
    let TestBackend { broker, .. } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let lease = Duration::from_secs(30);
    let keep = Duration::from_secs(3600);
    let claim = |key: &'static str, owner: &'static str| b.once_claim(key, owner, lease);

    assert_eq!(
        claim("j1:send", "a").await.unwrap(),
        OnceClaim::Claimed,
        "{n}"
    );
    assert_eq!(
        claim("j1:send", "b").await.unwrap(),
        OnceClaim::Busy,
        "{n}: held by a"
    );
    assert_eq!(
        claim("j1:send", "a").await.unwrap(),
        OnceClaim::Claimed,
        "{n}: a again"
    );
    assert_eq!(
        claim("j2:send", "b").await.unwrap(),
        OnceClaim::Claimed,
        "{n}: keys are separate"
    );
    assert!(
        b.once_renew("j1:send", "a", lease).await.unwrap(),
        "{n}: owner renews"
    );
    assert!(
        !b.once_renew("j1:send", "b", lease).await.unwrap(),
        "{n}: others cannot"
    );
    b.once_release("j1:send", "b").await.unwrap();
    assert_eq!(
        claim("j1:send", "b").await.unwrap(),
        OnceClaim::Busy,
        "{n}: b's release did nothing"
    );
    assert!(
        !b.once_complete("j1:send", "b", "1", keep).await.unwrap(),
        "{n}: only the owner completes"
    );
    assert!(
        b.once_complete("j1:send", "a", r#"{"sent":true}"#, keep)
            .await
            .unwrap(),
        "{n}"
    );
    for owner in ["a", "b", "c"] {
        assert_eq!(
            claim("j1:send", owner).await.unwrap(),
            OnceClaim::Done(r#"{"sent":true}"#.into()),
            "{n}: completed for {owner}"
        );
    }
    assert!(
        !b.once_renew("j1:send", "a", lease).await.unwrap(),
        "{n}: done is not renewed"
    );
    assert!(
        !b.once_complete("j1:send", "a", "2", keep).await.unwrap(),
        "{n}: completes once"
    );
    b.once_release("j1:send", "a").await.unwrap();
    assert_eq!(
        claim("j1:send", "c").await.unwrap(),
        OnceClaim::Done(r#"{"sent":true}"#.into()),
        "{n}: a completed step cannot be released"
    );
    b.once_release("j2:send", "b").await.unwrap();
    assert_eq!(
        claim("j2:send", "c").await.unwrap(),
        OnceClaim::Claimed,
        "{n}: released → free"
    );
}

/// A claim whose holder stops renewing frees itself after its lease, and a completed record
/// is gone after the time it is kept.
pub async fn once_claims_and_records_expire(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let short = Duration::from_millis(1_000);
    assert_eq!(
        b.once_claim("j:step", "dead-holder", short).await.unwrap(),
        OnceClaim::Claimed
    );
    assert_eq!(
        b.once_claim("j:step", "c", Duration::from_secs(30))
            .await
            .unwrap(),
        OnceClaim::Busy,
        "{n}"
    );
    assert_eq!(
        b.once_claim("j:done", "a", Duration::from_secs(30))
            .await
            .unwrap(),
        OnceClaim::Claimed
    );
    assert!(
        b.once_complete("j:done", "a", "7", short).await.unwrap(),
        "{n}"
    );
    inspect.let_time_pass(Duration::from_millis(1_100)).await;
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let step = b
            .once_claim("j:step", "c", Duration::from_secs(30))
            .await
            .unwrap();
        let done = b
            .once_claim("j:done", "c", Duration::from_secs(30))
            .await
            .unwrap();
        if step == OnceClaim::Claimed && done == OnceClaim::Claimed {
            break;
        }
        // Until the record expires, "c" sees it busy (or done); a claim that succeeded stays
        // "c"'s, so later rounds see Claimed as well.
        assert!(
            std::time::Instant::now() < deadline,
            "{n}: expired records were never freed: {step:?} {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !b.once_renew("j:step", "dead-holder", short).await.unwrap(),
        "{n}: the expired holder lost its claim"
    );
}

fn lease<'a>(
    key: &'a str,
    holder: &'a str,
    max: u32,
    ttl: Duration,
    fence: bool,
) -> LeaseRequest<'a> {
    LeaseRequest {
        key,
        holder,
        max,
        ttl,
        fence,
    }
}

fn token(grant: LeaseGrant) -> u64 {
    match grant {
        LeaseGrant::Granted { token } => token,
        LeaseGrant::Full { holder } => {
            panic!("expected a grant, the set is full (held by {holder})")
        }
    }
}

/// A lease set admits at most `max` holders, names a holder when full, renews and releases
/// only for its holders, and hands out fencing tokens that only grow.
pub async fn lease_sets_bound_holders_and_fence(f: &impl BackendFactory) {
    let TestBackend { broker, .. } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let ttl = Duration::from_secs(30);

    let t1 = token(
        b.lease_acquire(lease("mutex:order-1", "a", 1, ttl, true))
            .await
            .unwrap(),
    );
    assert!(t1 >= 1, "{n}: fencing tokens start at 1");
    assert_eq!(
        b.lease_acquire(lease("mutex:order-1", "b", 1, ttl, true))
            .await
            .unwrap(),
        LeaseGrant::Full { holder: "a".into() },
        "{n}: a mutex has one holder"
    );
    let t2 = token(
        b.lease_acquire(lease("mutex:order-1", "a", 1, ttl, true))
            .await
            .unwrap(),
    );
    assert!(t2 > t1, "{n}: re-acquiring hands out a newer token");
    assert!(
        b.lease_renew("mutex:order-1", "a", ttl).await.unwrap(),
        "{n}"
    );
    assert!(
        !b.lease_renew("mutex:order-1", "b", ttl).await.unwrap(),
        "{n}: b holds nothing"
    );
    assert!(!b.lease_release("mutex:order-1", "b").await.unwrap(), "{n}");
    assert!(b.lease_release("mutex:order-1", "a").await.unwrap(), "{n}");
    assert!(
        !b.lease_release("mutex:order-1", "a").await.unwrap(),
        "{n}: released once"
    );
    let t3 = token(
        b.lease_acquire(lease("mutex:order-1", "b", 1, ttl, true))
            .await
            .unwrap(),
    );
    assert!(
        t3 > t2,
        "{n}: tokens keep growing across holders: {t1} {t2} {t3}"
    );
    let other = token(
        b.lease_acquire(lease("mutex:order-2", "a", 1, ttl, true))
            .await
            .unwrap(),
    );
    assert!(other >= 1, "{n}: keys are independent");

    for holder in ["w1", "w2", "w3"] {
        let t = token(
            b.lease_acquire(lease("limit:api", holder, 3, ttl, false))
                .await
                .unwrap(),
        );
        assert_eq!(t, 0, "{n}: no token unless asked");
    }
    assert!(
        matches!(
            b.lease_acquire(lease("limit:api", "w4", 3, ttl, false))
                .await
                .unwrap(),
            LeaseGrant::Full { .. }
        ),
        "{n}: the fourth of three is refused"
    );
    let holders = b.lease_holders("limit:api").await.unwrap();
    let mut names: Vec<&str> = holders.iter().map(|(h, _)| h.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["w1", "w2", "w3"], "{n}");
    assert!(
        holders.windows(2).all(|w| w[0].1 <= w[1].1),
        "{n}: soonest first"
    );
    assert!(b.lease_release("limit:api", "w2").await.unwrap(), "{n}");
    token(
        b.lease_acquire(lease("limit:api", "w4", 3, ttl, false))
            .await
            .unwrap(),
    );
    assert!(
        b.lease_holders("mutex:nobody").await.unwrap().is_empty(),
        "{n}"
    );
}

/// A holder that stops renewing loses its lease after the ttl: another takes the slot with a
/// newer fencing token, and the old holder can no longer renew or release.
pub async fn lease_expires_without_renewal(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let stalled = token(
        b.lease_acquire(lease(
            "mutex:report",
            "stalled",
            1,
            Duration::from_millis(1_000),
            true,
        ))
        .await
        .unwrap(),
    );
    inspect.let_time_pass(Duration::from_millis(1_100)).await;
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    let next = loop {
        match b
            .lease_acquire(lease(
                "mutex:report",
                "next",
                1,
                Duration::from_secs(30),
                true,
            ))
            .await
            .unwrap()
        {
            LeaseGrant::Granted { token } => break token,
            LeaseGrant::Full { holder } => {
                assert_eq!(holder, "stalled", "{n}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "{n}: the lease never ran out"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        next > stalled,
        "{n}: the new holder's token is newer ({stalled} → {next})"
    );
    assert!(
        !b.lease_renew("mutex:report", "stalled", Duration::from_secs(30))
            .await
            .unwrap(),
        "{n}: the stalled holder cannot renew"
    );
    assert!(
        !b.lease_release("mutex:report", "stalled").await.unwrap(),
        "{n}"
    );
    assert_eq!(
        b.lease_holders("mutex:report").await.unwrap().len(),
        1,
        "{n}"
    );
}

/// Both kinds of rate limit let `limit` uses through and refuse the next with the wait until
/// one would pass; keys are independent; refusals are counted per limiter.
pub async fn rate_limits_count_and_refuse(f: &impl BackendFactory) {
    let TestBackend { broker, .. } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let day = Duration::from_secs(24 * 3600);
    for kind in [RateKind::Bucket, RateKind::Window] {
        let key = format!("{kind:?}:customer-1");
        for i in 0..3 {
            assert_eq!(
                b.rate_take(&key, kind, 3, day).await.unwrap(),
                None,
                "{n}: {kind:?} use {i}"
            );
        }
        let wait = b
            .rate_take(&key, kind, 3, day)
            .await
            .unwrap()
            .expect("the fourth is refused");
        assert!(
            wait > Duration::ZERO && wait <= day,
            "{n}: {kind:?} wait {wait:?}"
        );
        if kind == RateKind::Window {
            assert!(
                wait > day - Duration::from_secs(60),
                "{n}: the window frees a day after the first use: {wait:?}"
            );
        }
        let other = format!("{kind:?}:customer-2");
        assert_eq!(
            b.rate_take(&other, kind, 3, day).await.unwrap(),
            None,
            "{n}: keys are independent"
        );
    }
    b.limit_hit("api").await.unwrap();
    b.limit_hit("api").await.unwrap();
    b.limit_hit("exports").await.unwrap();
    let mut hits = b.limit_hits().await.unwrap();
    hits.sort();
    assert_eq!(
        hits,
        vec![("api".to_string(), 2), ("exports".to_string(), 1)],
        "{n}"
    );
}

/// A sliding window lets a use through again once the oldest use in it is older than the
/// interval.
pub async fn rate_window_frees_as_uses_age(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let second = Duration::from_millis(1_000);
    assert_eq!(
        b.rate_take("w", RateKind::Window, 2, second).await.unwrap(),
        None
    );
    assert_eq!(
        b.rate_take("w", RateKind::Window, 2, second).await.unwrap(),
        None
    );
    assert!(
        b.rate_take("w", RateKind::Window, 2, second)
            .await
            .unwrap()
            .is_some(),
        "{n}"
    );
    inspect.let_time_pass(Duration::from_millis(1_100)).await;
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while b
        .rate_take("w", RateKind::Window, 2, second)
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{n}: the window never moved on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job whose worker dies every time it runs is recovered `max_recoveries - 1` times, then
/// buried as an `Errand::PoisonPill` dead entry (its arguments and jid kept); a job recovered
/// fewer times goes back to its queue; a clean shutdown's requeue does not count.
pub async fn rescue_buries_a_poison_pill_after_max_recoveries(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let policy = RescuePolicy::default();
    assert_eq!(policy.max_recoveries, 3);
    b.push(&[enqueue("q", job("q", 1)), enqueue("q", job("q", 2))])
        .await
        .unwrap();
    // A clean shutdown puts jobs back without counting.
    let polite = "host:9:polite";
    beat(
        b,
        polite,
        &info(polite, &["q"]),
        Duration::from_secs(600),
        0,
    )
    .await;
    b.register(polite, &queues(&["q"])).await.unwrap();
    assert_eq!(fetch(b, polite, &["q"], 2, Duration::ZERO).await.len(), 2);
    assert_eq!(b.requeue_in_flight(polite).await.unwrap(), 2);
    b.unregister(polite).await.unwrap();

    for crash in 1..=3u32 {
        let dying = format!("host:{crash}:dying");
        beat(b, &dying, &info(&dying, &["q"]), Duration::from_secs(1), 0).await;
        b.register(&dying, &queues(&["q"])).await.unwrap();
        // Job 1 is the pill: fetched in every crash. Job 2 only in the first.
        let max = if crash == 1 { 2 } else { 1 };
        let held = fetch(b, &dying, &["q"], max, Duration::ZERO).await;
        assert_eq!(held[0].raw, job("q", 1), "{n}: crash {crash}");
        if crash > 1 {
            assert_eq!(inspect.queue("q").await, vec![job("q", 2)], "{n}");
        }
        inspect.let_time_pass(Duration::from_secs(2)).await;
        let deadline = Instant::now() + STEP_TIMEOUT;
        while b.rescue_orphans(&policy).await.unwrap() == 0 {
            assert!(
                Instant::now() < deadline,
                "{n}: crash {crash} was never recovered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if crash < 3 {
            assert!(
                inspect.queue("q").await.contains(&job("q", 1)),
                "{n}: recovered {crash} time(s): back on its queue"
            );
            assert!(inspect.set("dead").await.is_empty(), "{n}");
        }
    }
    assert_eq!(
        inspect.queue("q").await,
        vec![job("q", 2)],
        "{n}: the job recovered once is still queued"
    );
    let dead = inspect.set("dead").await;
    assert_eq!(dead.len(), 1, "{n}: the pill is dead");
    let entry = Payload::parse(&dead[0].1).unwrap();
    assert_eq!(entry.jid(), "q-000000000000000000000001", "{n}");
    assert_eq!(
        entry.get("error_class"),
        Some(&json!("Errand::PoisonPill")),
        "{n}"
    );
    let message = entry
        .get("error_message")
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    assert!(message.contains("3 times"), "{n}: {message}");
    assert_eq!(
        entry.args(),
        &[json!(1), json!("x"), json!({"k": []})],
        "{n}: args kept"
    );
}

/// `held` lists a process's in-flight jobs as fetch returned them (oldest first), and
/// `release` puts one back at the consuming end of its queue, once.
pub async fn held_lists_and_release_returns_one_job(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let me = "host:1:me";
    beat(b, me, &info(me, &["q"]), Duration::from_secs(600), 0).await;
    b.register(me, &queues(&["q"])).await.unwrap();
    b.push(
        &(1..=4)
            .map(|i| enqueue("q", job("q", i)))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let fetched = fetch(b, me, &["q"], 3, Duration::ZERO).await;
    let held = b.held(me, &queues(&["q"])).await.unwrap();
    assert_eq!(
        raws(&held),
        raws(&fetched),
        "{n}: held = fetched, oldest first"
    );
    assert_eq!(held[1].lease, fetched[1].lease, "{n}: same lease");
    assert!(
        b.held(me, &queues(&["other"])).await.unwrap().is_empty(),
        "{n}"
    );

    assert!(b.release(&held[1]).await.unwrap(), "{n}");
    assert!(!b.release(&held[1]).await.unwrap(), "{n}: released once");
    assert!(!b.ack(&fetched[1]).await.unwrap(), "{n}: no longer held");
    assert_eq!(
        inspect.queue("q").await,
        vec![job("q", 2), job("q", 4)],
        "{n}: back at the consuming end"
    );
    assert_eq!(
        raws(&b.held(me, &queues(&["q"])).await.unwrap()),
        vec![job("q", 1), job("q", 3)],
        "{n}"
    );
}

/// Every fetched job carries a fencing token larger than any handed out before, so a job
/// recovered and fetched again carries a larger token than its earlier attempt.
pub async fn fetch_hands_out_increasing_fencing_tokens(f: &impl BackendFactory) {
    let TestBackend { broker, .. } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let (a, other) = ("host:1:a", "host:2:b");
    for id in [a, other] {
        beat(b, id, &info(id, &["q", "r"]), Duration::from_secs(600), 0).await;
        b.register(id, &queues(&["q", "r"])).await.unwrap();
    }
    b.push(
        &(1..=6)
            .map(|i| enqueue(if i % 2 == 0 { "q" } else { "r" }, job("q", i)))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let first = fetch(b, a, &["q", "r"], 4, Duration::ZERO).await;
    let second = fetch(b, other, &["q", "r"], 2, Duration::ZERO).await;
    let tokens: Vec<u64> = first.iter().chain(&second).map(|j| j.token).collect();
    assert!(tokens[0] > 0, "{n}: tokens start above 0: {tokens:?}");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "{n}: strictly increasing: {tokens:?}"
    );
    assert_eq!(b.requeue_in_flight(a).await.unwrap(), 4, "{n}");
    let again = fetch(b, other, &["q", "r"], 4, Duration::ZERO).await;
    assert_eq!(again.len(), 4, "{n}");
    let last = *tokens.last().unwrap();
    assert!(
        again.iter().all(|j| j.token > last),
        "{n}: the recovered jobs' new attempts carry larger tokens"
    );
}
