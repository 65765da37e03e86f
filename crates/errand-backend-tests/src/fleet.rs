//! Cases for the fleet duties ([`Fleet`](errand_core::broker::Fleet)): heartbeats and their
//! signals and stats, registration, requeue on shutdown, orphan recovery and poison pills, the
//! poll turn.

use errand_core::Payload;
use errand_core::admin::Counters;
use errand_core::broker::{Enqueue, RemoteSignal, RescuePolicy};
use serde_json::json;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::{BackendFactory, TestBackend};

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

    assert_eq!(
        b.requeue_in_flight("p1", &queues(&["a", "b"]))
            .await
            .unwrap(),
        4,
        "{}",
        f.name()
    );
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
    assert_eq!(
        b.requeue_in_flight("p1", &queues(&["a", "b"]))
            .await
            .unwrap(),
        0
    );
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
    assert_eq!(
        b.requeue_in_flight(polite, &queues(&["q"])).await.unwrap(),
        2
    );
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
    assert_eq!(inspect.stats().await, Counters::default());
    beat_at(b, "h:1:a", &info("h:1:a", &["q"]), ttl, 3, 1, day1).await;
    beat_at(b, "h:2:b", &info("h:2:b", &["q"]), ttl, 2, 0, day1).await;
    beat_at(b, "h:1:a", &info("h:1:a", &["q"]), ttl, 0, 0, day1).await;
    beat_at(b, "h:1:a", &info("h:1:a", &["q"]), ttl, 4, 2, day2).await;
    assert_eq!(
        inspect.stats().await,
        Counters {
            processed: 9,
            failed: 3,
            ..Counters::default()
        },
        "{}",
        f.name()
    );
    assert_eq!(
        inspect.daily_stats("2026-11-28").await,
        Counters {
            processed: 5,
            failed: 1,
            ..Counters::default()
        }
    );
    assert_eq!(
        inspect.daily_stats("2026-11-29").await,
        Counters {
            processed: 4,
            failed: 2,
            ..Counters::default()
        }
    );
    assert_eq!(inspect.daily_stats("2026-11-30").await, Counters::default());
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
    assert_eq!(
        b.requeue_in_flight("h:1:a", &queues(&["q"])).await.unwrap(),
        1
    );
    assert!(!b.ack(&held[0]).await.unwrap());
    b.unregister("h:1:a").await.unwrap();
    assert_eq!(b.process_count().await.unwrap(), 1);
    assert_eq!(
        b.requeue_in_flight("h:1:a", &queues(&["q"])).await.unwrap(),
        0,
        "nothing held"
    );
    assert_eq!(inspect.queue("q").await, vec![job("q", 1)]);
    b.unregister("h:1:a")
        .await
        .expect("unregistering twice is fine");
    b.unregister("h:2:b").await.unwrap();
    assert_eq!(b.process_count().await.unwrap(), 0);
}

/// `requeue_in_flight` hands back what the process holds from the queues it names even when it
/// is not (or no longer) registered: a process whose registration a rescue removed while it
/// stalled still returns its later fetches on shutdown.
pub async fn requeue_in_flight_needs_no_registration(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    b.push(&[enqueue("q", job("q", 1)), enqueue("q", job("q", 2))])
        .await
        .unwrap();
    let held = fetch(b, "host:9:stalled", &["q"], 2, Duration::ZERO).await;
    assert_eq!(held.len(), 2, "{n}");
    assert_eq!(
        b.requeue_in_flight("host:9:stalled", &queues(&["q"]))
            .await
            .unwrap(),
        2,
        "{n}: held jobs go back without a registration"
    );
    assert!(
        inspect.in_flight("host:9:stalled", "q").await.is_empty(),
        "{n}"
    );
    assert_eq!(
        inspect.queue("q").await,
        vec![job("q", 1), job("q", 2)],
        "{n}"
    );
}

/// `rescue_orphans` also returns the in-flight jobs of a process that is neither registered nor
/// beating (it stopped without handing them back), and leaves a beating process's alone even
/// when it never registered.
pub async fn rescue_orphans_recovers_jobs_of_unregistered_processes(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let (gone, live) = ("host:8:gone", "host:7:live");
    beat(b, live, &info(live, &["q"]), Duration::from_secs(600), 0).await;
    b.push(&[enqueue("q", job("q", 1)), enqueue("q", job("q", 2))])
        .await
        .unwrap();
    assert_eq!(
        fetch(b, gone, &["q"], 1, Duration::ZERO).await.len(),
        1,
        "{n}"
    );
    assert_eq!(
        fetch(b, live, &["q"], 1, Duration::ZERO).await.len(),
        1,
        "{n}"
    );
    let rescued = step("rescue", b.rescue_orphans(&RescuePolicy::default()))
        .await
        .unwrap();
    assert_eq!(rescued, 1, "{n}: the unregistered, silent owner's job");
    assert!(inspect.in_flight(gone, "q").await.is_empty(), "{n}");
    assert_eq!(inspect.in_flight(live, "q").await, vec![job("q", 2)], "{n}");
    assert_eq!(inspect.queue("q").await, vec![job("q", 1)], "{n}");
}
