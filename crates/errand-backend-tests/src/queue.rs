//! Cases for the hot path ([`JobQueue`](errand_core::broker::JobQueue)): pushes, fetches in
//! queue order, completions, the dead set's trims, promotion, fencing tokens, release.

use errand_core::broker::{
    Broker, Completion, DeadLimits, Enqueue, FetchRequest, ScheduledJob, Settle,
};
use errand_core::{Payload, WireProfile};
use std::time::{Duration, Instant};

use crate::support::*;
use crate::{BackendFactory, TestBackend};

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
pub async fn push_scheduled_stores_scores(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let later = ScheduledJob {
        at: 2_000.25,
        payload: job("s", 2),
    };
    let sooner = ScheduledJob {
        at: 1_000.5,
        payload: job("s", 1),
    };
    broker.push_scheduled(&[later, sooner]).await.unwrap();
    broker.push_scheduled(&[]).await.unwrap();
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
            &Settle::Retry {
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
            &Settle::Scheduled {
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
            &Settle::Dead {
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
            &Settle::Retry {
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
        Settle::Scheduled {
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
            !b.settle(&got[0], &to).await.unwrap(),
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

/// `complete_many` applies a mixed batch in one call: acks and settles to each set, answered in
/// order, with `false` (and nothing stored) for a job no longer held; the held ones all land.
pub async fn complete_many_applies_a_mixed_batch(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let jobs: Vec<Enqueue> = (1..=5).map(|i| enqueue("mix", job("mix", i))).collect();
    b.push(&jobs).await.unwrap();
    let got = fetch(b, "p1", &["mix"], 5, Duration::ZERO).await;
    assert_eq!(got.len(), 5, "{n}");
    // The last one is lost to recovery before the batch is written.
    assert!(b.release(&got[4]).await.unwrap(), "{n}");
    let retry = Settle::Retry {
        payload: "mix-retry".into(),
        at: 10.0,
    };
    let later = Settle::Scheduled {
        payload: "mix-later".into(),
        at: 20.0,
    };
    let dead = Settle::Dead {
        payload: "mix-dead".into(),
        now: 30.0,
        limits: DeadLimits::default(),
    };
    let batch = [
        Completion::Ack(&got[0]),
        Completion::Settle(&got[1], &retry),
        Completion::Settle(&got[2], &later),
        Completion::Settle(&got[3], &dead),
        Completion::Settle(&got[4], &retry),
    ];
    let held = step("complete a batch", b.complete_many(&batch))
        .await
        .unwrap();
    assert_eq!(held, vec![true, true, true, true, false], "{n}");
    assert!(inspect.in_flight("p1", "mix").await.is_empty(), "{n}");
    assert_eq!(
        inspect.set("retry").await,
        vec![(10.0, "mix-retry".to_string())],
        "{n}"
    );
    assert_eq!(
        inspect.set("schedule").await,
        vec![(20.0, "mix-later".to_string())],
        "{n}"
    );
    assert_eq!(
        inspect.set("dead").await,
        vec![(30.0, "mix-dead".to_string())],
        "{n}"
    );
    assert_eq!(
        inspect.queue("mix").await,
        vec![job("mix", 5)],
        "{n}: the released job waits"
    );
    assert!(
        b.complete_many(&[]).await.unwrap().is_empty(),
        "{n}: an empty batch"
    );
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
    assert!(b.settle(&got[0], &to).await.unwrap());
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
    b.push_scheduled(&[
        ScheduledJob {
            at: now - 20.0,
            payload: job("a", 1),
        },
        ScheduledJob {
            at: now - 10.0,
            payload: job("a", 2),
        },
        ScheduledJob {
            at: now,
            payload: job("b", 3),
        },
        ScheduledJob {
            at: now - 5.0,
            payload: "not json".into(),
        },
        ScheduledJob {
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
            &Settle::Retry {
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
            &Settle::Retry {
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
        .push_scheduled(&[ScheduledJob {
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
    assert_eq!(held[1].location, fetched[1].location, "{n}: same lease");
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

/// A stale attempt cannot end a later fetch of the same job by the same process: after the
/// job is put back and the process fetches it again, the first attempt's ack, settle and
/// release are all refused, the second attempt still holds the job (with its own token, as
/// `held` shows), and its ack works.
pub async fn a_stale_attempt_cannot_end_a_later_fetch_of_the_same_job(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let me = "host:1:refetch";
    beat(b, me, &info(me, &["q"]), Duration::from_secs(600), 0).await;
    b.register(me, &queues(&["q"])).await.unwrap();
    b.push(&[enqueue("q", job("q", 1))]).await.unwrap();
    let stale = fetch(b, me, &["q"], 1, Duration::ZERO).await.remove(0);
    assert_eq!(
        b.requeue_in_flight(me, &queues(&["q"])).await.unwrap(),
        1,
        "{n}: put back (as a rescue would)"
    );
    let fresh = fetch(b, me, &["q"], 1, Duration::ZERO).await.remove(0);
    assert_eq!(fresh.raw, stale.raw, "{n}: the same job");
    assert_eq!(fresh.location, stale.location, "{n}: in the same place");
    assert!(fresh.token > stale.token, "{n}: with a newer token");

    assert!(
        !b.ack(&stale).await.unwrap(),
        "{n}: the stale ack is refused"
    );
    let retry = Settle::Retry {
        payload: stale.raw.clone(),
        at: 5.0,
    };
    assert!(
        !b.settle(&stale, &retry).await.unwrap(),
        "{n}: the stale settle is refused"
    );
    assert!(
        !b.release(&stale).await.unwrap(),
        "{n}: the stale release is refused"
    );
    let done = b
        .complete_many(&[Completion::Ack(&stale), Completion::Settle(&stale, &retry)])
        .await
        .unwrap();
    assert_eq!(done, [false, false], "{n}: in a batch too");
    assert!(
        inspect.set("retry").await.is_empty(),
        "{n}: nothing retried"
    );
    assert!(inspect.queue("q").await.is_empty(), "{n}: nothing put back");
    let held = b.held(me, &queues(&["q"])).await.unwrap();
    assert_eq!(held.len(), 1, "{n}: the fresh attempt still holds the job");
    assert_eq!(held[0].token, fresh.token, "{n}: held shows its token");
    assert!(b.ack(&held[0]).await.unwrap(), "{n}: held's copy acks it");
    assert!(!b.ack(&fresh).await.unwrap(), "{n}: once");
    assert!(b.held(me, &queues(&["q"])).await.unwrap().is_empty(), "{n}");
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
    assert_eq!(
        b.requeue_in_flight(a, &queues(&["q", "r"])).await.unwrap(),
        4,
        "{n}"
    );
    let again = fetch(b, other, &["q", "r"], 4, Duration::ZERO).await;
    assert_eq!(again.len(), 4, "{n}");
    let last = *tokens.last().unwrap();
    assert!(
        again.iter().all(|j| j.token > last),
        "{n}: the recovered jobs' new attempts carry larger tokens"
    );
}
