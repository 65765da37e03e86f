//! The admin side's conformance suite: one `pub async fn` per behaviour of the
//! [`Admin`] contract (and of the two [`Broker`] methods that serve it,
//! [`Fleet::paused_queues`](errand_core::broker::Fleet::paused_queues) and [`Broker::record_metrics`]), expanded by
//! [`admin_conformance_tests!`](crate::admin_conformance_tests). Every case is named
//! `admin_*`, so the two macros can be expanded side by side in one test file.
//!
//! # What a backend's test file provides
//! The factory it already gives [`conformance_tests!`](crate::conformance_tests) (a
//! [`BackendFactory`]), plus an implementation of [`AdminFactory`]: a fresh, isolated
//! backend per call as an [`AdminBackend`] — its [`Broker`], its [`Admin`] and the same
//! [`Inspect`] view. A backend whose one type implements both traits passes that object
//! twice, most simply through [`AdminBackend::new`]:
//!
//! ```text
//! #[async_trait::async_trait]
//! impl errand_backend_tests::AdminFactory for Sqlite {
//!     async fn new_admin_backend(&self) -> errand_backend_tests::AdminBackend {
//!         let broker = Arc::new(/* a new, empty backend, as new_backend makes */);
//!         let inspect = Arc::new(SqliteInspect(/* the same backend */));
//!         errand_backend_tests::AdminBackend::new(broker, inspect)
//!     }
//! }
//! errand_backend_tests::conformance_tests!(Sqlite::new());
//! errand_backend_tests::admin_conformance_tests!(Sqlite::new());
//! ```
//!
//! The three parts must share one store: jobs pushed through the broker are what the admin
//! lists, and the inspect view sees what the admin moved. The cases use
//! [`Inspect::queue`], [`Inspect::known_queues`], [`Inspect::set`] and
//! [`Inspect::let_time_pass`] (heartbeat expiry; a real-time backend ignores it and the case
//! polls with a deadline, as in the broker suite).
//!
//! Scores, beat times and dates are explicit, except where a backend is entitled to judge by
//! its own clock: heartbeat liveness, and metrics minutes (written near
//! [`Broker::now`], since backends need keep only the last 25 hours).

use crate::support::{beat, beat_at, enqueue, fetch, info};
use crate::{BackendFactory, Inspect, STEP_TIMEOUT, job};
use async_trait::async_trait;
use errand_core::admin::{
    Admin, Counters, MoveToDead, MoveToQueue, Order, QueueRange, QueueSummary, SetEntry, SetName,
    SetRange,
};
use errand_core::broker::{
    Broker, DeadLimits, Heartbeat, RemoteSignal, ScheduledJob, Settle, WorkEntry,
};
use errand_core::metrics::{ClassMetrics, merge_by_class};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A backend under test seen from both sides, and its inspection view. All three share one
/// store.
pub struct AdminBackend {
    /// The hot path (used to push jobs, beat, record metrics).
    pub broker: Arc<dyn Broker>,
    /// The admin side under test.
    pub admin: Arc<dyn Admin>,
    /// What the backend stores.
    pub inspect: Arc<dyn Inspect>,
}

impl AdminBackend {
    /// A backend whose one object is both the [`Broker`] and the [`Admin`].
    pub fn new<B: Broker + Admin>(backend: Arc<B>, inspect: Arc<dyn Inspect>) -> Self {
        Self {
            broker: backend.clone(),
            admin: backend,
            inspect,
        }
    }
}

/// Makes fresh, isolated backends for the admin cases. Like [`BackendFactory::new_backend`],
/// each call returns a backend sharing no state with any other returned before;
/// [`admin_conformance_tests!`](crate::admin_conformance_tests) evaluates the factory
/// expression once per case and keeps it until the case ends.
#[async_trait]
pub trait AdminFactory: BackendFactory {
    /// A new, empty backend: its broker, its admin side and its inspection view.
    async fn new_admin_backend(&self) -> AdminBackend;
}

/// Expands into one `#[tokio::test]` per admin conformance case, each calling the case with
/// `$factory` (an expression evaluated once per test, whose value implements
/// [`AdminFactory`]). May be expanded in the same module as
/// [`conformance_tests!`](crate::conformance_tests). The calling crate needs `tokio` with the
/// `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! admin_conformance_tests {
    ($factory:expr) => {
        $crate::admin_conformance_tests!(@cases $factory;
            admin_queues_list_sizes_oldest_and_paused,
            admin_queue_page_in_both_orders,
            admin_queue_delete_removes_one_copy,
            admin_queue_clear_counts_and_forgets_the_name,
            admin_set_paused_round_trip,
            admin_set_pages_order_by_score_then_member,
            admin_set_at_score_finds_exact_scores,
            admin_set_remove_once,
            admin_set_to_queue_moves_once_with_the_new_payload,
            admin_set_to_dead_inserts_at_now_and_trims,
            admin_set_clear_counts,
            admin_counters_total_and_daily,
            admin_processes_lists_live_processes_only,
            admin_signal_reaches_the_next_heartbeat,
            admin_metrics_merge_per_class_over_a_range,
            admin_backend_info_names_its_kind,
            admin_raw_payloads_survive_byte_for_byte,
            admin_queue_page_shows_a_released_job_first,
            admin_queue_clear_leaves_jobs_in_flight_and_the_pause,
            admin_set_members_are_unique,
            admin_processes_order_work_and_skip_unbeaten,
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

fn summary(name: &str, size: u64, oldest: Option<String>, paused: bool) -> QueueSummary {
    QueueSummary {
        name: name.to_string(),
        size,
        oldest,
        paused,
    }
}

fn entry(score: f64, raw: &str) -> SetEntry {
    SetEntry {
        score,
        raw: raw.to_string(),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Puts `member` into `set` at `score` through the hot path: `schedule` for the schedule set,
/// a push, fetch and settle for the retry and dead sets (through the `carrier` queue; the dead
/// set with the default limits, `score` as the time of death).
async fn put(b: &dyn Broker, set: SetName, score: f64, member: &str) {
    if set == SetName::Scheduled {
        b.push_scheduled(&[ScheduledJob {
            at: score,
            payload: member.to_string(),
        }])
        .await
        .expect("schedule");
        return;
    }
    b.push(&[enqueue("carrier", job("carrier", 0))])
        .await
        .expect("push");
    let got = fetch(b, "host:0:admin-suite", &["carrier"], 1, Duration::ZERO).await;
    assert_eq!(got.len(), 1, "the carrier job");
    let to = match set {
        SetName::Retry => Settle::Retry {
            payload: member.to_string(),
            at: score,
        },
        _ => Settle::Dead {
            payload: member.to_string(),
            now: score,
            limits: DeadLimits::default(),
        },
    };
    assert!(b.settle(&got[0], &to).await.expect("settle"), "settled");
}

async fn page(a: &dyn Admin, set: SetName) -> Vec<SetEntry> {
    a.set_page(SetRange {
        set,
        offset: 0,
        limit: 1_000,
        order: Order::Asc,
    })
    .await
    .expect("set_page")
}

async fn queue_all(a: &dyn Admin, queue: &str) -> Vec<String> {
    a.queue_page(QueueRange {
        queue,
        offset: 0,
        limit: 1_000,
        order: Order::Asc,
    })
    .await
    .expect("queue_page")
}

fn by_raw(mut entries: Vec<SetEntry>) -> Vec<SetEntry> {
    entries.sort_by(|x, y| x.raw.cmp(&y.raw));
    entries
}

fn metrics(class: &str, runs: &[(u64, bool)]) -> ClassMetrics {
    let mut m = ClassMetrics::new(class);
    for &(ms, failed) in runs {
        m.record(ms, failed);
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Cases

/// `queues` lists every known queue sorted by name, with its size, its next job to run
/// (`oldest`) and whether it is paused: a queue drained by fetches is still listed (empty,
/// no oldest), and so is a paused queue that never held a job.
pub async fn admin_queues_list_sizes_oldest_and_paused(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    assert!(
        a.queues().await.unwrap().is_empty(),
        "{n}: a new backend lists no queues"
    );
    b.push(&[
        enqueue("b", job("b", 1)),
        enqueue("a", job("a", 1)),
        enqueue("b", job("b", 2)),
        enqueue("drained", job("drained", 1)),
    ])
    .await
    .unwrap();
    assert_eq!(
        fetch(b, "host:1:admin", &["drained"], 1, Duration::ZERO)
            .await
            .len(),
        1
    );
    a.set_paused("a", true).await.unwrap();
    a.set_paused("idle", true).await.unwrap();
    assert_eq!(
        a.queues().await.unwrap(),
        vec![
            summary("a", 1, Some(job("a", 1)), true),
            summary("b", 2, Some(job("b", 1)), false),
            summary("drained", 0, None, false),
            summary("idle", 0, None, true),
        ],
        "{n}: sorted by name; oldest = next to run"
    );
    assert_eq!(
        fetch(b, "host:1:admin", &["b"], 1, Duration::ZERO).await[0].raw,
        job("b", 1)
    );
    let b_queue = a.queues().await.unwrap().remove(1);
    assert_eq!(
        b_queue,
        summary("b", 1, Some(job("b", 2)), false),
        "{n}: the oldest follows fetches"
    );
}

/// `queue_page` returns `limit` entries from `offset`, exactly as stored: `Asc` from the next
/// to run, `Desc` from the newest; past the end, with limit 0 and on an unknown queue it
/// returns nothing; paging consumes nothing.
pub async fn admin_queue_page_in_both_orders(f: &impl AdminFactory) {
    let AdminBackend {
        broker,
        admin,
        inspect,
    } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let jobs: Vec<String> = (1..=5).map(|i| job("q", i)).collect();
    b.push(
        &jobs
            .iter()
            .map(|j| enqueue("q", j.clone()))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let pg = |offset, limit, order| {
        a.queue_page(QueueRange {
            queue: "q",
            offset,
            limit,
            order,
        })
    };
    assert_eq!(pg(0, 2, Order::Asc).await.unwrap(), jobs[0..2], "{n}");
    assert_eq!(pg(2, 2, Order::Asc).await.unwrap(), jobs[2..4], "{n}");
    assert_eq!(
        pg(4, 2, Order::Asc).await.unwrap(),
        jobs[4..],
        "{n}: a short last page"
    );
    assert_eq!(pg(0, 100, Order::Asc).await.unwrap(), jobs, "{n}");
    let newest_first: Vec<String> = jobs.iter().rev().cloned().collect();
    assert_eq!(
        pg(0, 2, Order::Desc).await.unwrap(),
        newest_first[0..2],
        "{n}: Desc starts from the newest"
    );
    assert_eq!(
        pg(3, 10, Order::Desc).await.unwrap(),
        newest_first[3..],
        "{n}"
    );
    for order in [Order::Asc, Order::Desc] {
        assert!(
            pg(5, 2, order).await.unwrap().is_empty(),
            "{n}: {order:?} at the end"
        );
        assert!(
            pg(50, 2, order).await.unwrap().is_empty(),
            "{n}: {order:?} past the end"
        );
        assert!(
            pg(0, 0, order).await.unwrap().is_empty(),
            "{n}: {order:?} limit 0 is an empty page"
        );
        assert!(
            a.queue_page(QueueRange {
                queue: "unknown",
                offset: 0,
                limit: 10,
                order
            })
            .await
            .unwrap()
            .is_empty(),
            "{n}"
        );
    }
    assert_eq!(
        inspect.queue("q").await,
        jobs,
        "{n}: paging consumes nothing"
    );
}

/// `queue_delete` removes one entry equal to the string given (of two identical ones, one),
/// only from that queue, and is false when none is there.
pub async fn admin_queue_delete_removes_one_copy(f: &impl AdminFactory) {
    let AdminBackend {
        broker,
        admin,
        inspect,
    } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let (twin, other) = (job("q", 1), job("q", 2));
    b.push(&[
        enqueue("q", twin.clone()),
        enqueue("q", other.clone()),
        enqueue("q", twin.clone()),
        enqueue("elsewhere", twin.clone()),
    ])
    .await
    .unwrap();
    assert!(a.queue_delete("q", &twin).await.unwrap(), "{n}");
    let mut left = inspect.queue("q").await;
    left.sort();
    let mut want = vec![twin.clone(), other.clone()];
    want.sort();
    assert_eq!(left, want, "{n}: exactly one of the two copies went");
    assert!(a.queue_delete("q", &twin).await.unwrap(), "{n}: the second");
    assert_eq!(inspect.queue("q").await, vec![other.clone()], "{n}");
    assert!(!a.queue_delete("q", &twin).await.unwrap(), "{n}: none left");
    assert!(
        !a.queue_delete("q", "not there").await.unwrap(),
        "{n}: absent"
    );
    assert!(
        !a.queue_delete("unknown", &other).await.unwrap(),
        "{n}: unknown queue"
    );
    assert_eq!(
        inspect.queue("elsewhere").await,
        vec![twin],
        "{n}: other queues are untouched"
    );
}

/// `queue_clear` empties a queue, returns how many jobs it removed and forgets the name; other
/// queues stay; clearing again (or an unknown queue) removes 0.
pub async fn admin_queue_clear_counts_and_forgets_the_name(f: &impl AdminFactory) {
    let AdminBackend {
        broker,
        admin,
        inspect,
    } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    b.push(&[
        enqueue("gone", job("gone", 1)),
        enqueue("gone", job("gone", 2)),
        enqueue("kept", job("kept", 1)),
        enqueue("gone", job("gone", 3)),
    ])
    .await
    .unwrap();
    assert_eq!(a.queue_clear("gone").await.unwrap(), 3, "{n}");
    assert!(queue_all(a, "gone").await.is_empty(), "{n}");
    assert_eq!(inspect.queue_len("gone").await, 0, "{n}");
    let names: Vec<String> = a
        .queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(names, strings(&["kept"]), "{n}: the name is forgotten");
    assert_eq!(inspect.known_queues().await, strings(&["kept"]), "{n}");
    assert_eq!(inspect.queue("kept").await, vec![job("kept", 1)], "{n}");
    assert_eq!(a.queue_clear("gone").await.unwrap(), 0, "{n}: again");
    assert_eq!(a.queue_clear("never").await.unwrap(), 0, "{n}: unknown");
}

/// `set_paused` pauses and resumes queues (twice is the same as once); `queues` and
/// [`Fleet::paused_queues`](errand_core::broker::Fleet::paused_queues) report it; a paused queue keeps its jobs.
pub async fn admin_set_paused_round_trip(f: &impl AdminFactory) {
    let AdminBackend {
        broker,
        admin,
        inspect,
    } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let paused = || async move {
        let mut p = b.paused_queues().await.unwrap();
        p.sort();
        p
    };
    assert!(paused().await.is_empty(), "{n}: nothing paused at first");
    b.push(&[enqueue("a", job("a", 1)), enqueue("b", job("b", 1))])
        .await
        .unwrap();
    a.set_paused("a", true).await.unwrap();
    a.set_paused("c", true).await.unwrap();
    a.set_paused("a", true).await.unwrap();
    assert_eq!(paused().await, strings(&["a", "c"]), "{n}");
    let flags: Vec<(String, bool)> = a
        .queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.name, q.paused))
        .collect();
    assert_eq!(
        flags,
        vec![
            ("a".to_string(), true),
            ("b".to_string(), false),
            ("c".to_string(), true)
        ],
        "{n}"
    );
    assert_eq!(
        inspect.queue("a").await,
        vec![job("a", 1)],
        "{n}: its jobs stay"
    );

    a.set_paused("a", false).await.unwrap();
    a.set_paused("a", false).await.unwrap();
    a.set_paused("b", false).await.unwrap();
    assert_eq!(paused().await, strings(&["c"]), "{n}: a resumed");
    let a_queue = a
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "a");
    assert_eq!(
        a_queue,
        Some(summary("a", 1, Some(job("a", 1)), false)),
        "{n}"
    );
    a.set_paused("c", false).await.unwrap();
    assert!(paused().await.is_empty(), "{n}");
}

/// Each set is addressed by its name; `set_size` counts it and `set_page` pages it in
/// (score, member) order, `Desc` the exact reverse, with offset and limit; past the end,
/// with limit 0 and on an empty set a page is empty.
pub async fn admin_set_pages_order_by_score_then_member(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    for set in SetName::ALL {
        assert_eq!(a.set_size(set).await.unwrap(), 0, "{n}: {set:?} empty");
        assert!(page(a, set).await.is_empty(), "{n}");
    }
    let mut tied = [job("s", 2), job("s", 1)];
    tied.sort();
    let (low, high) = (job("s", 3), job("s", 4));
    b.push_scheduled(&[
        ScheduledJob {
            at: 100.0,
            payload: tied[1].clone(),
        },
        ScheduledJob {
            at: 200.25,
            payload: high.clone(),
        },
        ScheduledJob {
            at: 50.5,
            payload: low.clone(),
        },
        ScheduledJob {
            at: 100.0,
            payload: tied[0].clone(),
        },
    ])
    .await
    .unwrap();
    put(b, SetName::Retry, 10.0, &job("r", 1)).await;
    put(b, SetName::Dead, 20.0, &job("d", 1)).await;
    put(b, SetName::Dead, 30.0, &job("d", 2)).await;

    assert_eq!(a.set_size(SetName::Scheduled).await.unwrap(), 4, "{n}");
    assert_eq!(a.set_size(SetName::Retry).await.unwrap(), 1, "{n}");
    assert_eq!(a.set_size(SetName::Dead).await.unwrap(), 2, "{n}");
    let asc = vec![
        entry(50.5, &low),
        entry(100.0, &tied[0]),
        entry(100.0, &tied[1]),
        entry(200.25, &high),
    ];
    let desc: Vec<SetEntry> = asc.iter().rev().cloned().collect();
    let pg = |offset, limit, order| {
        a.set_page(SetRange {
            set: SetName::Scheduled,
            offset,
            limit,
            order,
        })
    };
    assert_eq!(
        pg(0, 10, Order::Asc).await.unwrap(),
        asc,
        "{n}: by score, ties by member"
    );
    assert_eq!(
        pg(0, 10, Order::Desc).await.unwrap(),
        desc,
        "{n}: Desc reverses"
    );
    assert_eq!(pg(1, 2, Order::Asc).await.unwrap(), asc[1..3], "{n}");
    assert_eq!(pg(1, 2, Order::Desc).await.unwrap(), desc[1..3], "{n}");
    assert_eq!(pg(3, 5, Order::Asc).await.unwrap(), asc[3..], "{n}");
    assert_eq!(pg(3, 5, Order::Desc).await.unwrap(), desc[3..], "{n}");
    for order in [Order::Asc, Order::Desc] {
        assert!(pg(4, 5, order).await.unwrap().is_empty(), "{n}: at the end");
        assert!(pg(40, 5, order).await.unwrap().is_empty(), "{n}: past it");
        assert!(pg(0, 0, order).await.unwrap().is_empty(), "{n}: limit 0");
    }
    assert_eq!(
        page(a, SetName::Retry).await,
        vec![entry(10.0, &job("r", 1))],
        "{n}: retry"
    );
    assert_eq!(
        a.set_page(SetRange {
            set: SetName::Dead,
            offset: 0,
            limit: 10,
            order: Order::Desc
        })
        .await
        .unwrap(),
        vec![entry(30.0, &job("d", 2)), entry(20.0, &job("d", 1))],
        "{n}: dead, newest death first"
    );
}

/// `set_at_score` returns every entry of that set whose score is exactly the one given (a
/// realistic microsecond score included), and nothing for other scores or other sets.
pub async fn admin_set_at_score_finds_exact_scores(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let at = 1_712_345_678.123_456;
    let (one, two, later) = (job("s", 1), job("s", 2), job("s", 3));
    for (score, member) in [(at, &one), (at + 0.000_001, &later), (at, &two)] {
        put(b, SetName::Scheduled, score, member).await;
    }
    put(b, SetName::Retry, at + 1.0, &job("r", 1)).await;
    let found = by_raw(a.set_at_score(SetName::Scheduled, at).await.unwrap());
    assert_eq!(
        found,
        by_raw(vec![entry(at, &one), entry(at, &two)]),
        "{n}: both at {at}, not the one a microsecond later"
    );
    assert_eq!(
        a.set_at_score(SetName::Scheduled, at + 0.000_001)
            .await
            .unwrap(),
        vec![entry(at + 0.000_001, &later)],
        "{n}"
    );
    assert!(
        a.set_at_score(SetName::Scheduled, at + 1.0)
            .await
            .unwrap()
            .is_empty(),
        "{n}: that score is in another set"
    );
    assert!(
        a.set_at_score(SetName::Retry, at).await.unwrap().is_empty(),
        "{n}"
    );
    assert_eq!(
        a.set_at_score(SetName::Retry, at + 1.0).await.unwrap(),
        vec![entry(at + 1.0, &job("r", 1))],
        "{n}"
    );
}

/// `set_remove` removes the member once (true, then false), only from the set named.
pub async fn admin_set_remove_once(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let (x, y) = (job("s", 1), job("s", 2));
    put(b, SetName::Scheduled, 10.0, &x).await;
    put(b, SetName::Scheduled, 20.0, &y).await;
    assert!(a.set_remove(SetName::Scheduled, &x).await.unwrap(), "{n}");
    assert!(
        !a.set_remove(SetName::Scheduled, &x).await.unwrap(),
        "{n}: removed once"
    );
    assert!(
        !a.set_remove(SetName::Retry, &y).await.unwrap(),
        "{n}: y is not in retry"
    );
    assert!(
        !a.set_remove(SetName::Dead, &y).await.unwrap(),
        "{n}: nor in dead"
    );
    assert_eq!(
        page(a, SetName::Scheduled).await,
        vec![entry(20.0, &y)],
        "{n}"
    );
    assert_eq!(a.set_size(SetName::Scheduled).await.unwrap(), 1, "{n}");
}

/// `set_to_queue` removes the member and pushes the NEW payload given (at the producing end,
/// registering the queue), exactly once: a second call is false and pushes nothing, and an
/// absent member pushes nothing nor registers the queue.
pub async fn admin_set_to_queue_moves_once_with_the_new_payload(f: &impl AdminFactory) {
    let AdminBackend {
        broker,
        admin,
        inspect,
    } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let stored = job("target", 1);
    let edited =
        json!({"class": "Edited", "args": [2], "queue": "target", "jid": "edited-1"}).to_string();
    put(b, SetName::Retry, 100.0, &stored).await;
    put(b, SetName::Retry, 200.0, &job("target", 2)).await;
    b.push(&[enqueue("waiting", job("waiting", 1))])
        .await
        .unwrap();

    assert!(
        a.set_to_queue(MoveToQueue {
            set: SetName::Retry,
            member: &stored,
            queue: "target",
            payload: &edited
        })
        .await
        .unwrap(),
        "{n}"
    );
    assert_eq!(
        inspect.queue("target").await,
        vec![edited.clone()],
        "{n}: the new payload is pushed, not the member"
    );
    assert_eq!(
        page(a, SetName::Retry).await,
        vec![entry(200.0, &job("target", 2))],
        "{n}: only that member left the set"
    );
    assert!(
        inspect.known_queues().await.contains(&"target".to_string()),
        "{n}: the queue name is registered"
    );
    assert!(
        a.queues().await.unwrap().iter().any(|q| q.name == "target"),
        "{n}: listed"
    );
    assert!(
        !a.set_to_queue(MoveToQueue {
            set: SetName::Retry,
            member: &stored,
            queue: "target",
            payload: &edited
        })
        .await
        .unwrap(),
        "{n}: a second move finds nothing"
    );
    assert_eq!(
        inspect.queue("target").await,
        vec![edited.clone()],
        "{n}: the queue holds one copy"
    );

    // Onto a queue with jobs: pushed as a push is, behind them.
    let second = job("target", 2);
    assert!(
        a.set_to_queue(MoveToQueue {
            set: SetName::Retry,
            member: &second,
            queue: "waiting",
            payload: &second
        })
        .await
        .unwrap(),
        "{n}"
    );
    assert_eq!(
        inspect.queue("waiting").await,
        vec![job("waiting", 1), second],
        "{n}: behind the jobs already waiting"
    );

    assert!(
        !a.set_to_queue(MoveToQueue {
            set: SetName::Scheduled,
            member: "absent",
            queue: "never",
            payload: &edited
        })
        .await
        .unwrap(),
        "{n}: absent member"
    );
    assert!(
        inspect.queue("never").await.is_empty(),
        "{n}: nothing pushed"
    );
    assert!(
        !inspect.known_queues().await.contains(&"never".to_string()),
        "{n}: nor registered"
    );
}

/// `set_to_dead` removes the member and adds the payload given to the dead set at score `now`,
/// trimming it to the limits in the same step (size: the newest kept; age: entries before
/// `now - max_age` dropped, the boundary kept); an absent member adds nothing.
pub async fn admin_set_to_dead_inserts_at_now_and_trims(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    for (i, died) in [(1, 1_000.0), (2, 1_001.0), (3, 1_002.0)] {
        put(b, SetName::Dead, died, &job("d", i)).await;
    }
    let retry = job("r", 1);
    let killed = format!("{retry}-killed");
    put(b, SetName::Retry, 5_000.0, &retry).await;
    let by_size = DeadLimits {
        max_jobs: 3,
        max_age: Duration::from_secs(1_000_000),
    };
    assert!(
        a.set_to_dead(MoveToDead {
            set: SetName::Retry,
            member: &retry,
            payload: &killed,
            now: 1_100.0,
            limits: by_size
        })
        .await
        .unwrap(),
        "{n}"
    );
    assert_eq!(a.set_size(SetName::Retry).await.unwrap(), 0, "{n}: removed");
    assert_eq!(
        page(a, SetName::Dead).await,
        vec![
            entry(1_001.0, &job("d", 2)),
            entry(1_002.0, &job("d", 3)),
            entry(1_100.0, &killed),
        ],
        "{n}: at now, trimmed to the newest 3"
    );

    let scheduled = job("s", 1);
    put(b, SetName::Scheduled, 9_000.0, &scheduled).await;
    let by_age = DeadLimits {
        max_jobs: 100,
        max_age: Duration::from_secs(1_000),
    };
    assert!(
        a.set_to_dead(MoveToDead {
            set: SetName::Scheduled,
            member: &scheduled,
            payload: &scheduled,
            now: 2_002.0,
            limits: by_age
        })
        .await
        .unwrap(),
        "{n}"
    );
    assert_eq!(
        page(a, SetName::Dead).await,
        vec![
            entry(1_002.0, &job("d", 3)),
            entry(1_100.0, &killed),
            entry(2_002.0, &scheduled),
        ],
        "{n}: older than now - max_age dropped, the boundary kept"
    );

    assert!(
        !a.set_to_dead(MoveToDead {
            set: SetName::Retry,
            member: "absent",
            payload: "must not appear",
            now: 3_000.0,
            limits: DeadLimits::default()
        })
        .await
        .unwrap(),
        "{n}: absent member"
    );
    assert_eq!(
        a.set_size(SetName::Dead).await.unwrap(),
        3,
        "{n}: nothing added"
    );
}

/// `set_clear` empties one set and returns how many entries it removed; other sets stay.
pub async fn admin_set_clear_counts(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    for i in 1..=3 {
        put(b, SetName::Scheduled, 10.0 * i as f64, &job("s", i)).await;
    }
    put(b, SetName::Retry, 5.0, &job("r", 1)).await;
    assert_eq!(a.set_clear(SetName::Scheduled).await.unwrap(), 3, "{n}");
    assert_eq!(a.set_size(SetName::Scheduled).await.unwrap(), 0, "{n}");
    assert!(page(a, SetName::Scheduled).await.is_empty(), "{n}");
    assert_eq!(
        a.set_size(SetName::Retry).await.unwrap(),
        1,
        "{n}: untouched"
    );
    assert_eq!(
        a.set_clear(SetName::Scheduled).await.unwrap(),
        0,
        "{n}: again"
    );
    assert_eq!(a.set_clear(SetName::Dead).await.unwrap(), 0, "{n}: empty");
    assert_eq!(a.set_clear(SetName::Retry).await.unwrap(), 1, "{n}");
}

/// `counters` sums every heartbeat's processed and failed counts; `daily_counters` gives the
/// counts of each UTC date asked for, in the order asked, zero for a day with nothing.
pub async fn admin_counters_total_and_daily(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    assert_eq!(a.counters().await.unwrap(), Counters::default(), "{n}");
    let ttl = Duration::from_secs(60);
    let day1 = 1_795_853_128.0; // 2026-11-28
    let day2 = day1 + 86_400.0;
    beat_at(b, "h:1:a", &info("h:1:a", &["q"]), ttl, 3, 1, day1).await;
    beat_at(b, "h:2:b", &info("h:2:b", &["q"]), ttl, 2, 0, day1).await;
    beat_at(b, "h:1:a", &info("h:1:a", &["q"]), ttl, 4, 2, day2).await;
    assert_eq!(
        a.counters().await.unwrap(),
        Counters {
            processed: 9,
            failed: 3,
            ..Counters::default()
        },
        "{n}"
    );
    let dates = strings(&["2026-11-29", "2026-11-27", "2026-11-28"]);
    assert_eq!(
        a.daily_counters(&dates).await.unwrap(),
        vec![
            Counters {
                processed: 4,
                failed: 2,
                ..Counters::default()
            },
            Counters::default(),
            Counters {
                processed: 5,
                failed: 1,
                ..Counters::default()
            },
        ],
        "{n}: in the order asked, zero for an empty day"
    );
    assert!(a.daily_counters(&[]).await.unwrap().is_empty(), "{n}");
}

/// `processes` lists live processes sorted by identity with what their last heartbeat said
/// (info, busy, concurrency, beat, quiet, memory, running jobs), and stops listing one once
/// its heartbeat's TTL has passed.
pub async fn admin_processes_lists_live_processes_only(f: &impl AdminFactory) {
    let AdminBackend {
        broker,
        admin,
        inspect,
    } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    assert!(a.processes().await.unwrap().is_empty(), "{n}");
    let (live, short) = ("host:1:live", "host:0:short");
    let now = b.now().await.unwrap();
    let live_info = info(live, &["q", "r"]);
    let work: Vec<WorkEntry> = [("tid-a", "q", 1), ("tid-b", "r", 2)]
        .into_iter()
        .map(|(tid, queue, i)| WorkEntry {
            tid: tid.to_string(),
            json: json!({"queue": queue, "payload": job(queue, i), "run_at": now.floor() as i64})
                .to_string(),
        })
        .collect();
    crate::support::step(
        "heartbeat",
        b.heartbeat(&Heartbeat {
            identity: live,
            info: &live_info,
            busy: 2,
            concurrency: 7,
            beat: now,
            quiet: true,
            rss_kb: 2048,
            work: &work,
            processed: 0,
            failed: 0,
            cancelled: 0,
            expired: 0,
            ttl: Duration::from_secs(600),
        }),
    )
    .await
    .unwrap();
    b.register(live, &strings(&["q", "r"])).await.unwrap();
    beat_at(
        b,
        short,
        &info(short, &["q"]),
        Duration::from_secs(1),
        0,
        0,
        now,
    )
    .await;
    b.register(short, &strings(&["q"])).await.unwrap();

    let listed = a.processes().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|p| p.identity.as_str()).collect();
    assert_eq!(ids, [short, live], "{n}: both, sorted by identity");
    let p = &listed[1];
    assert_eq!(p.info, live_info, "{n}: info as written");
    assert_eq!(
        (p.busy, p.concurrency, p.quiet, p.rss_kb),
        (2, 7, true, 2048),
        "{n}: busy, concurrency, quiet, rss"
    );
    assert!((p.beat - now).abs() < 1e-3, "{n}: beat {} vs {now}", p.beat);
    let mut got_work = p.work.clone();
    got_work.sort();
    let want_work: Vec<(String, String)> = work
        .iter()
        .map(|w| (w.tid.clone(), w.json.clone()))
        .collect();
    assert_eq!(got_work, want_work, "{n}: the running jobs as written");
    let s = &listed[0];
    assert_eq!((s.busy, s.concurrency, s.quiet), (0, 5, false), "{n}");
    assert!(s.work.is_empty(), "{n}");

    inspect.let_time_pass(Duration::from_secs(2)).await;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let ids: Vec<String> = a
            .processes()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.identity)
            .collect();
        if ids == [live] {
            break;
        }
        assert_eq!(ids, [short, live], "{n}: only the short-lived one may go");
        assert!(
            Instant::now() < deadline,
            "{n}: the process whose TTL passed is still listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A signal sent through `signal` is returned by that process's next heartbeat (oldest
/// first, one per beat) and by no other process's.
pub async fn admin_signal_reaches_the_next_heartbeat(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let (id, other) = ("host:1:sig", "host:2:other");
    let ttl = Duration::from_secs(60);
    let (info_id, info_other) = (info(id, &["q"]), info(other, &["q"]));
    assert_eq!(beat(b, id, &info_id, ttl, 0).await, None, "{n}");
    assert_eq!(beat(b, other, &info_other, ttl, 0).await, None, "{n}");
    a.signal(id, RemoteSignal::Quiet).await.unwrap();
    assert_eq!(
        beat(b, id, &info_id, ttl, 0).await,
        Some(RemoteSignal::Quiet),
        "{n}"
    );
    assert_eq!(beat(b, id, &info_id, ttl, 0).await, None, "{n}: consumed");
    a.signal(id, RemoteSignal::Stop).await.unwrap();
    a.signal(id, RemoteSignal::Dump).await.unwrap();
    assert_eq!(
        beat(b, other, &info_other, ttl, 0).await,
        None,
        "{n}: not for the other process"
    );
    assert_eq!(
        beat(b, id, &info_id, ttl, 0).await,
        Some(RemoteSignal::Stop),
        "{n}: oldest first"
    );
    assert_eq!(
        beat(b, id, &info_id, ttl, 0).await,
        Some(RemoteSignal::Dump),
        "{n}"
    );
    assert_eq!(beat(b, id, &info_id, ttl, 0).await, None, "{n}");
}

/// Metrics recorded twice in one minute and once in another are merged per class over an
/// inclusive range of minutes (executions, failures, time, histogram), sorted by class; a
/// range that leaves a minute out leaves its counts out; `metrics_totals` sums everything.
pub async fn admin_metrics_merge_per_class_over_a_range(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    assert!(a.metrics_totals().await.unwrap().is_empty(), "{n}");
    let minute = (b.now().await.unwrap() / 60.0).floor() as i64;
    let (early, late) = (minute - 10, minute - 3);
    let first = vec![
        metrics("A", &[(10, false), (600, false)]),
        metrics("B", &[(5, true)]),
    ];
    let second = vec![metrics("A", &[(40, false), (7, true)])];
    let third = vec![
        metrics("C", &[(2_000, false), (400_000, false)]),
        metrics("A", &[(10, false)]),
    ];
    b.record_metrics(early, &first).await.unwrap();
    b.record_metrics(early, &second).await.unwrap();
    b.record_metrics(late, &third).await.unwrap();
    b.record_metrics(late - 1, &[]).await.unwrap();

    let merge =
        |parts: &[&Vec<ClassMetrics>]| merge_by_class(parts.iter().flat_map(|p| p.iter().cloned()));
    let all = merge(&[&first, &second, &third]);
    let early_only = merge(&[&first, &second]);
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].executions, 5, "A ran five times");
    assert_eq!(a.metrics(early, late).await.unwrap(), all, "{n}");
    assert_eq!(
        a.metrics(early - 60, late + 60).await.unwrap(),
        all,
        "{n}: a wider range"
    );
    assert_eq!(
        a.metrics(early, late - 1).await.unwrap(),
        early_only,
        "{n}: the late minute left out"
    );
    assert_eq!(
        a.metrics(early, early).await.unwrap(),
        early_only,
        "{n}: one minute, both records"
    );
    assert_eq!(
        a.metrics(late, late).await.unwrap(),
        merge(&[&third]),
        "{n}: the range includes its first minute"
    );
    assert!(
        a.metrics(early + 1, late - 1).await.unwrap().is_empty(),
        "{n}: nothing in between"
    );
    assert_eq!(a.metrics_totals().await.unwrap(), all, "{n}: totals");
}

/// `backend_info` names the kind of backend.
pub async fn admin_backend_info_names_its_kind(f: &impl AdminFactory) {
    let AdminBackend { admin, .. } = f.new_admin_backend().await;
    let info = admin.backend_info().await.unwrap();
    assert!(!info.kind.is_empty(), "{}: {info:?}", f.name());
}

/// Entries that are not JSON (`{not json`), or JSON in a shape no encoder would write, come
/// back from every page and move byte for byte, and are addressed by their exact strings.
pub async fn admin_raw_payloads_survive_byte_for_byte(f: &impl AdminFactory) {
    let AdminBackend {
        broker,
        admin,
        inspect,
    } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let broken = "{not json";
    let odd = " {\"class\" : \"K\",\n \"args\":[1.50, 1e2], \"x\":\"\\u00e9 é\", \"x\": 2} ";
    let moved = "{still not json";
    b.push(&[
        enqueue("raw", broken.to_string()),
        enqueue("raw", odd.to_string()),
    ])
    .await
    .unwrap();
    assert_eq!(queue_all(a, "raw").await, strings(&[broken, odd]), "{n}");
    assert_eq!(
        a.queue_page(QueueRange {
            queue: "raw",
            offset: 0,
            limit: 10,
            order: Order::Desc
        })
        .await
        .unwrap(),
        strings(&[odd, broken]),
        "{n}"
    );
    assert_eq!(
        a.queues().await.unwrap(),
        vec![summary("raw", 2, Some(broken.to_string()), false)],
        "{n}"
    );

    put(b, SetName::Scheduled, 5.0, broken).await;
    put(b, SetName::Scheduled, 6.0, odd).await;
    assert_eq!(
        page(a, SetName::Scheduled).await,
        vec![entry(5.0, broken), entry(6.0, odd)],
        "{n}"
    );
    assert_eq!(
        a.set_at_score(SetName::Scheduled, 6.0).await.unwrap(),
        vec![entry(6.0, odd)],
        "{n}"
    );
    assert!(
        a.set_to_queue(MoveToQueue {
            set: SetName::Scheduled,
            member: broken,
            queue: "raw",
            payload: moved
        })
        .await
        .unwrap(),
        "{n}"
    );
    assert_eq!(
        inspect.queue("raw").await,
        strings(&[broken, odd, moved]),
        "{n}"
    );
    assert!(
        a.set_to_dead(MoveToDead {
            set: SetName::Scheduled,
            member: odd,
            payload: odd,
            now: 7.0,
            limits: DeadLimits::default()
        })
        .await
        .unwrap(),
        "{n}"
    );
    assert_eq!(page(a, SetName::Dead).await, vec![entry(7.0, odd)], "{n}");
    assert_eq!(
        inspect.set("dead").await,
        vec![(7.0, odd.to_string())],
        "{n}"
    );
    assert!(a.queue_delete("raw", broken).await.unwrap(), "{n}");
    assert!(a.queue_delete("raw", odd).await.unwrap(), "{n}");
    assert_eq!(queue_all(a, "raw").await, strings(&[moved]), "{n}");
    assert!(a.set_remove(SetName::Dead, odd).await.unwrap(), "{n}");
    assert_eq!(a.set_size(SetName::Dead).await.unwrap(), 0, "{n}");
}

/// A fetched job put back with `release` is the next to run again: first in an `Asc` page,
/// last in a `Desc` one, and the queue's `oldest`.
pub async fn admin_queue_page_shows_a_released_job_first(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let jobs: Vec<String> = (1..=4).map(|i| job("q", i)).collect();
    b.push(
        &jobs
            .iter()
            .map(|j| enqueue("q", j.clone()))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let got = fetch(b, "host:1:release", &["q"], 2, Duration::ZERO).await;
    assert_eq!(got.len(), 2, "{n}");
    assert_eq!(got[1].raw, jobs[1], "{n}: fetched in push order");
    assert!(b.release(&got[1]).await.unwrap(), "{n}: released");
    assert_eq!(
        queue_all(a, "q").await,
        strings(&[&jobs[1], &jobs[2], &jobs[3]]),
        "{n}: the released job runs next"
    );
    let desc = a
        .queue_page(QueueRange {
            queue: "q",
            offset: 2,
            limit: 10,
            order: Order::Desc,
        })
        .await
        .unwrap();
    assert_eq!(desc, strings(&[&jobs[1]]), "{n}: and is the last in Desc");
    let q = a.queues().await.unwrap();
    assert_eq!(
        q,
        vec![summary("q", 3, Some(jobs[1].clone()), false)],
        "{n}"
    );
}

/// `queue_clear` removes only what waits in the queue: a job in flight from it is still held
/// by its process, and a paused queue stays paused (and listed, empty).
pub async fn admin_queue_clear_leaves_jobs_in_flight_and_the_pause(f: &impl AdminFactory) {
    let AdminBackend {
        broker,
        admin,
        inspect,
    } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let id = "host:1:clear";
    b.push(&[enqueue("q", job("q", 1)), enqueue("q", job("q", 2))])
        .await
        .unwrap();
    let held = fetch(b, id, &["q"], 1, Duration::ZERO).await;
    assert_eq!(held.len(), 1, "{n}");
    b.push(&[enqueue("q", job("q", 3))]).await.unwrap();
    a.set_paused("q", true).await.unwrap();
    assert_eq!(a.queue_clear("q").await.unwrap(), 2, "{n}: the two waiting");
    assert_eq!(
        inspect.in_flight(id, "q").await,
        vec![job("q", 1)],
        "{n}: the job in flight is still held"
    );
    assert!(b.ack(&held[0]).await.unwrap(), "{n}: and can be acked");
    assert_eq!(
        b.paused_queues().await.unwrap(),
        strings(&["q"]),
        "{n}: clearing does not resume"
    );
    assert_eq!(
        a.queues().await.unwrap(),
        vec![summary("q", 0, None, true)],
        "{n}: listed because paused"
    );
}

/// A set holds each member once: putting a member again moves it to its new score, and
/// killing an entry of the dead set again re-dates it.
pub async fn admin_set_members_are_unique(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    put(b, SetName::Scheduled, 10.0, "a").await;
    put(b, SetName::Scheduled, 20.0, "b").await;
    put(b, SetName::Scheduled, 30.0, "a").await;
    assert_eq!(
        page(a, SetName::Scheduled).await,
        vec![entry(20.0, "b"), entry(30.0, "a")],
        "{n}: moved, not doubled"
    );
    let limits = DeadLimits::default();
    put(b, SetName::Dead, 100.0, "d1").await;
    put(b, SetName::Dead, 101.0, "d2").await;
    assert!(
        a.set_to_dead(MoveToDead {
            set: SetName::Dead,
            member: "d1",
            payload: "d1",
            now: 102.0,
            limits
        })
        .await
        .unwrap(),
        "{n}"
    );
    assert_eq!(
        page(a, SetName::Dead).await,
        vec![entry(101.0, "d2"), entry(102.0, "d1")],
        "{n}: re-dated"
    );
    assert_eq!(a.set_size(SetName::Dead).await.unwrap(), 2, "{n}");
}

/// A process's running jobs are listed oldest `run_at` first; a process that registered but
/// never beat is not listed.
pub async fn admin_processes_order_work_and_skip_unbeaten(f: &impl AdminFactory) {
    let AdminBackend { broker, admin, .. } = f.new_admin_backend().await;
    let (b, a, n) = (&*broker, &*admin, f.name());
    let id = "host:1:work";
    let now = b.now().await.unwrap();
    let entry_at = |tid: &str, run_at: i64| WorkEntry {
        tid: tid.to_string(),
        json: json!({"queue": "q", "payload": job("q", 1), "run_at": run_at}).to_string(),
    };
    let work = vec![
        entry_at("t-late", now as i64),
        entry_at("t-early", now as i64 - 100),
        entry_at("t-mid", now as i64 - 50),
    ];
    let info_id = info(id, &["q"]);
    b.heartbeat(&Heartbeat {
        identity: id,
        info: &info_id,
        busy: 3,
        concurrency: 5,
        beat: now,
        quiet: false,
        rss_kb: 1,
        work: &work,
        processed: 0,
        failed: 0,
        cancelled: 0,
        expired: 0,
        ttl: Duration::from_secs(600),
    })
    .await
    .unwrap();
    b.register(id, &strings(&["q"])).await.unwrap();
    b.register("host:2:never-beat", &strings(&["q"]))
        .await
        .unwrap();
    let listed = a.processes().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|p| p.identity.as_str()).collect();
    assert_eq!(ids, [id], "{n}: only the process that beat");
    let tids: Vec<&str> = listed[0].work.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tids, ["t-early", "t-mid", "t-late"], "{n}: by run_at");
}
