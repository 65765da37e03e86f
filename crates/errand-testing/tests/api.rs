//! `errand::api`, the operations the dashboard, its JSON API and `errand ops` share, on the
//! in-memory reference backend: Sidekiq's retry-now rules, kill, edit-and-replay and filtered
//! "all" actions.

use errand::admin::SetName;
use errand::api::{self, Action, ActionConfig, Filter};
use errand::broker::{DeadLimits, Enqueue, FetchRequest, JobQueue, ScheduledJob, Settle};
use errand::{Payload, WireProfile};
use errand_testing::MemoryBroker;
use serde_json::json;
use std::time::Duration;

fn cfg() -> ActionConfig {
    ActionConfig {
        profile: WireProfile::V7,
        dead_limits: DeadLimits::default(),
    }
}

fn failed(class: &str, jid: &str, args: serde_json::Value, retry_count: u64) -> String {
    json!({
        "class": class, "args": args, "jid": jid, "queue": "mail",
        "retry_count": retry_count, "error_class": "Net::Timeout",
        "error_message": "took too long", "failed_at": 1.0,
    })
    .to_string()
}

/// Puts `raw` in the retry or dead set at `score`, the way a failed job gets there: pushed,
/// fetched, settled.
async fn put(b: &MemoryBroker, set: &str, score: f64, raw: &str) {
    b.push(&[Enqueue {
        queue: "put".into(),
        payload: raw.to_string(),
    }])
    .await
    .unwrap();
    let got = b
        .fetch(FetchRequest {
            identity: "h:1:put",
            queues: &["put".to_string()],
            max: 1,
            wait: Duration::ZERO,
        })
        .await
        .unwrap();
    let to = match set {
        "retry" => Settle::Retry {
            payload: raw.to_string(),
            at: score,
        },
        _ => Settle::Dead {
            payload: raw.to_string(),
            now: score,
            limits: DeadLimits::default(),
        },
    };
    assert!(b.settle(&got[0], &to).await.unwrap());
}

#[tokio::test]
async fn retry_now_takes_one_off_the_count_and_stamps_enqueued_at() {
    let b = MemoryBroker::new();
    let raw = failed("Mailer", "j1", json!([1]), 3);
    put(&b, "retry", 10.0, &raw).await;
    assert!(
        api::apply(&b, cfg(), SetName::Retry, &raw, Action::Retry)
            .await
            .unwrap()
    );
    assert!(b.set("retry").is_empty());
    let queued = b.queue("mail");
    assert_eq!(queued.len(), 1);
    let p = Payload::parse(&queued[0]).unwrap();
    assert_eq!(
        p.get("retry_count"),
        Some(&json!(2)),
        "the next failure counts again"
    );
    assert!(p.time("enqueued_at").is_some());
    // The entry moved: the same action again finds nothing.
    assert!(
        !api::apply(&b, cfg(), SetName::Retry, &raw, Action::Retry)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn run_now_keeps_a_scheduled_jobs_count_and_unreadable_entries_stay() {
    let b = MemoryBroker::new();
    let raw = failed("Mailer", "j2", json!([2]), 3);
    b.push_scheduled(&[ScheduledJob {
        at: 1e12,
        payload: raw.clone(),
    }])
    .await
    .unwrap();
    assert!(
        api::apply(&b, cfg(), SetName::Scheduled, &raw, Action::Retry)
            .await
            .unwrap()
    );
    let p = Payload::parse(&b.queue("mail")[0]).unwrap();
    assert_eq!(p.get("retry_count"), Some(&json!(3)));
    put(&b, "dead", 5.0, "{not json").await;
    assert!(
        !api::apply(&b, cfg(), SetName::Dead, "{not json", Action::Retry)
            .await
            .unwrap(),
        "an unreadable entry cannot run"
    );
    assert_eq!(
        b.set("dead").len(),
        1,
        "it stays for a person to read or delete"
    );
}

#[tokio::test]
async fn kill_moves_to_dead_but_not_from_dead() {
    let b = MemoryBroker::new();
    let raw = failed("Mailer", "j3", json!([3]), 1);
    put(&b, "retry", 10.0, &raw).await;
    assert!(
        api::apply(&b, cfg(), SetName::Retry, &raw, Action::Kill)
            .await
            .unwrap()
    );
    let dead = b.set("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, raw, "killed byte for byte");
    assert!(
        !api::apply(&b, cfg(), SetName::Dead, &raw, Action::Kill)
            .await
            .unwrap(),
        "kill does not apply to the dead set"
    );
    assert!(
        api::apply(&b, cfg(), SetName::Dead, &raw, Action::Delete)
            .await
            .unwrap()
    );
    assert!(b.set("dead").is_empty());
}

#[tokio::test]
async fn edit_and_replay_replaces_the_arguments_of_plain_and_activejob_jobs() {
    let b = MemoryBroker::new();
    let raw = failed("Mailer", "j4", json!([4, "old"]), 5);
    put(&b, "dead", 1.0, &raw).await;
    let err = api::retry_with_args(&b, cfg(), SetName::Dead, &raw, "{\"a\":1}")
        .await
        .unwrap_err();
    assert!(err.contains("JSON array"), "{err}");
    assert!(
        api::retry_with_args(&b, cfg(), SetName::Dead, &raw, "[4, \"new\"]")
            .await
            .unwrap()
    );
    let p = Payload::parse(&b.queue("mail")[0]).unwrap();
    assert_eq!(p.args(), &[json!(4), json!("new")]);
    assert_eq!(p.get("retry_count"), Some(&json!(4)));

    let aj = json!({
        "class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper",
        "wrapped": "UserWelcomeJob", "queue": "mail", "jid": "j5",
        "args": [{"job_class": "UserWelcomeJob", "job_id": "x", "queue_name": "mail",
                  "arguments": [7]}],
    })
    .to_string();
    put(&b, "dead", 2.0, &aj).await;
    assert!(
        api::retry_with_args(&b, cfg(), SetName::Dead, &aj, "[8]")
            .await
            .unwrap()
    );
    let replayed = b
        .queue("mail")
        .into_iter()
        .find(|q| q.contains("UserWelcomeJob"))
        .unwrap();
    let p = Payload::parse(&replayed).unwrap();
    assert_eq!(
        p.args()[0]["arguments"],
        json!([8]),
        "the wrapped job's arguments"
    );
}

#[tokio::test]
async fn filtered_all_touches_only_matching_entries() {
    let b = MemoryBroker::new();
    for i in 0..6 {
        let class = if i % 2 == 0 {
            "Billing::Charge"
        } else {
            "Mailer"
        };
        put(
            &b,
            "retry",
            f64::from(i),
            &failed(class, &format!("j{i}"), json!([i]), 1),
        )
        .await;
    }
    let only_billing = Filter::new(Some("billing"), None, None, None);
    let n = api::apply_all(&b, cfg(), SetName::Retry, Action::Kill, &only_billing)
        .await
        .unwrap();
    assert_eq!(
        n,
        api::Applied {
            done: 3,
            more: false
        }
    );
    assert_eq!(b.set("dead").len(), 3);
    assert!(b.set("dead").iter().all(|(_, raw)| raw.contains("Billing")));
    assert_eq!(b.set("retry").len(), 3);
    let n = api::apply_all(&b, cfg(), SetName::Retry, Action::Retry, &Filter::default())
        .await
        .unwrap();
    assert_eq!(
        n,
        api::Applied {
            done: 3,
            more: false
        }
    );
    assert_eq!(b.queue("mail").len(), 3);
    assert!(b.set("retry").is_empty());
}

/// One "all" action touches at most `MAX_ALL` entries and says more remain; the next one does
/// the rest (issue 13, item 17: the work of one request is bounded).
#[tokio::test]
async fn an_all_action_is_bounded_and_says_more_remain() {
    let b = MemoryBroker::new();
    let n = api::MAX_ALL + 5;
    let jobs: Vec<ScheduledJob> = (0..n)
        .map(|i| ScheduledJob {
            at: 4_000_000_000.0 + i as f64,
            payload: failed("Mailer", &format!("j{i}"), json!([i]), 0),
        })
        .collect();
    b.push_scheduled(&jobs).await.unwrap();
    let first = api::apply_all(
        &b,
        cfg(),
        SetName::Scheduled,
        Action::Delete,
        &Filter::new(Some("Mailer"), None, None, None),
    )
    .await
    .unwrap();
    assert_eq!(
        first,
        api::Applied {
            done: api::MAX_ALL as u64,
            more: true
        }
    );
    let second = api::apply_all(
        &b,
        cfg(),
        SetName::Scheduled,
        Action::Delete,
        &Filter::new(Some("Mailer"), None, None, None),
    )
    .await
    .unwrap();
    assert_eq!(
        second,
        api::Applied {
            done: 5,
            more: false
        }
    );
    assert!(b.set("schedule").is_empty());
}

/// A job of a batch deleted from the retries or killed by a person will not run: it is dead to
/// its batch, which then completes instead of waiting for it forever.
#[tokio::test]
async fn deleting_or_killing_a_batch_job_counts_it_dead_in_its_batch() {
    use errand::broker::{
        BUILDING, BatchOutcome, BatchRecord, Coordination, FailurePolicy, NewBatch,
    };
    let b = MemoryBroker::new();
    b.batch_create(&NewBatch {
        bid: "b1",
        parent: None,
        description: "",
        callbacks: &[],
        keep: Duration::from_secs(3600),
        waiting: &[],
        policy: FailurePolicy::CancelAll,
        workflow: None,
    })
    .await
    .unwrap();
    let job = |jid: &str| {
        json!({"class": "Import", "args": [], "jid": jid, "queue": "mail", "bid": "b1",
               "retry_count": 0, "error_message": "x"})
        .to_string()
    };
    let (a, c) = (job("a"), job("c"));
    b.batch_add(
        "b1",
        &["a", "b", "c"],
        &[],
        &[
            ScheduledJob {
                at: 9e9,
                payload: a.clone(),
            },
            ScheduledJob {
                at: 9e9,
                payload: job("b"),
            },
            ScheduledJob {
                at: 9e9,
                payload: c.clone(),
            },
        ],
    )
    .await
    .unwrap();
    let record = |member: &'static str| BatchRecord {
        bid: "b1",
        member,
        outcome: BatchOutcome::Succeeded,
        enqueued_at: "1.0",
    };
    b.batch_record(record(BUILDING)).await.unwrap();
    assert!(
        api::apply(&b, cfg(), SetName::Scheduled, &a, Action::Delete)
            .await
            .unwrap()
    );
    assert!(
        api::apply(&b, cfg(), SetName::Scheduled, &c, Action::Kill)
            .await
            .unwrap()
    );
    let s = b.batch_status("b1").await.unwrap().unwrap();
    assert_eq!((s.pending, s.dead), (1, 2));
    b.batch_record(record("b")).await.unwrap();
    let s = b.batch_status("b1").await.unwrap().unwrap();
    assert!(s.complete_at.is_some(), "{s:?}");
    // Deleting the killed entry from the dead set afterwards changes nothing in the batch.
    assert!(
        api::apply(&b, cfg(), SetName::Dead, &c, Action::Delete)
            .await
            .unwrap()
    );
    assert_eq!(b.batch_status("b1").await.unwrap().unwrap().dead, 2);
}
