//! Workers whose wall clock is wrong (RELIABILITY-PLAN R11, issue 13 item 12), made with
//! `faketime` on real worker processes: retries, deaths and the dead set's age trim are dated by
//! the backend's clock (Redis `TIME`, measured at every heartbeat), not the worker's. A worker an
//! hour slow used to schedule its retries an hour in the past (about seven retries burnt in
//! seconds); one a year ahead trimmed the whole dead set as too old.
//!
//! On SQLite the backend's clock is the machine's, which every process sharing the file reads:
//! a clock wrong in one process only is not a failure that backend can meet, so these run on
//! Redis.

use errand::admin::{Admin, SetName};
use errand::broker::{DeadLimits, Enqueue, FetchRequest, JobQueue, Settle};
use errand::redis::RedisBroker;
use errand::{Client, Push, RawJob};
use errand_tests::{RedisServer, Worker, wait_until};
use std::time::Duration;

const WORKER: &str = env!("CARGO_BIN_EXE_errand-test-worker");

async fn set(broker: &RedisBroker, set: SetName) -> Vec<(f64, String)> {
    use errand::admin::{Order, SetRange};
    broker
        .set_page(SetRange {
            set,
            offset: 0,
            limit: 1_000,
            order: Order::Asc,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.score, e.raw))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_an_hour_slow_schedules_retries_by_the_backends_clock() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    let mut worker = Worker::start_skewed(WORKER, &server.url(), 2, "-1h");
    Client::new(broker.clone())
        .push_raw(
            RawJob::new("Flaky", vec![serde_json::json!(1)]),
            Push::new(),
        )
        .await
        .unwrap();
    wait_until("the first run to fail", Duration::from_secs(30), || async {
        !set(&broker, SetName::Retry).await.is_empty()
    })
    .await;
    worker.assert_running();
    let now = broker.now().await.unwrap();
    let (due, _) = set(&broker, SetName::Retry).await[0].clone();
    let ahead = due - now;
    // Sidekiq's first backoff: 15 s plus up to 9 s of jitter, from the backend's now.
    assert!(
        (5.0..60.0).contains(&ahead),
        "the retry is due {ahead:.0} s from the backend's now (an hour-slow clock gives about -3,580)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_a_year_ahead_does_not_trim_the_dead_set_as_too_old() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    // A job that died yesterday.
    let yesterday = broker.now().await.unwrap() - 86_400.0;
    broker
        .push(&[Enqueue {
            queue: "default".into(),
            payload: r#"{"class":"Old","args":[],"jid":"old","queue":"default"}"#.into(),
        }])
        .await
        .unwrap();
    let got = broker
        .fetch(FetchRequest {
            identity: "host:1:seed",
            queues: &["default".to_string()],
            max: 1,
            wait: Duration::ZERO,
        })
        .await
        .unwrap();
    let old = Settle::Dead {
        payload: got[0].raw.clone(),
        now: yesterday,
        limits: DeadLimits::default(),
    };
    assert!(broker.settle(&got[0], &old).await.unwrap());

    let mut worker = Worker::start_skewed(WORKER, &server.url(), 2, "+365d");
    // Not a job: the worker buries it in the dead set (and trims the set as it does).
    broker
        .push(&[Enqueue {
            queue: "default".into(),
            payload: "not a job".into(),
        }])
        .await
        .unwrap();
    wait_until(
        "the bad entry to be buried",
        Duration::from_secs(30),
        || async {
            set(&broker, SetName::Dead)
                .await
                .iter()
                .any(|(_, raw)| raw.contains("not a job"))
        },
    )
    .await;
    worker.assert_running();
    let dead = set(&broker, SetName::Dead).await;
    let now = broker.now().await.unwrap();
    assert!(
        dead.iter().any(|(_, raw)| raw.contains("\"old\"")),
        "yesterday's death was trimmed as older than 180 days: {dead:?}"
    );
    let (buried_at, _) = dead
        .iter()
        .find(|(_, raw)| raw.contains("not a job"))
        .unwrap();
    assert!(
        (buried_at - now).abs() < 60.0,
        "the death is dated {:.0} s from the backend's now",
        buried_at - now
    );
}
