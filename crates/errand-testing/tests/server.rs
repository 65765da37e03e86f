//! The whole server (fetch, run, ack, retry, dead, death handlers, stats, shutdown) on
//! `MemoryBroker`: the server depends only on the broker contract, not on Redis.

use errand::{Client, Job, JobContext, JobError, JobOptions, JobResult, Server};
use errand_testing::MemoryBroker;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize)]
struct Count(u64);
impl Job for Count {
    const NAME: &'static str = "Count";
    async fn perform(self, cx: &JobContext) -> JobResult {
        cx.data::<Arc<AtomicUsize>>()
            .unwrap()
            .fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Doomed(u64);
impl Job for Doomed {
    const NAME: &'static str = "Doomed";
    fn options() -> JobOptions {
        JobOptions::default().retry(0)
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Err(JobError::retry("always fails"))
    }
}

async fn wait(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_runs_on_the_memory_broker() {
    let broker = MemoryBroker::new();
    let client = Client::new(broker.clone());
    client.push_bulk((0..500).map(Count)).await.unwrap();
    client.push(Doomed(1)).await.unwrap();

    let ran = Arc::new(AtomicUsize::new(0));
    let deaths = Arc::new(AtomicUsize::new(0));
    let d = deaths.clone();
    let server = Server::builder(broker.clone())
        .register::<Count>()
        .register::<Doomed>()
        .data(ran.clone())
        .death_handler(move |_p, _e| {
            d.fetch_add(1, Ordering::SeqCst);
        })
        .concurrency(8)
        .heartbeat_interval(Duration::from_millis(50))
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let task = tokio::spawn(server.run_until(std::future::pending()));

    wait("500 runs", || ran.load(Ordering::SeqCst) == 500).await;
    wait("one death", || deaths.load(Ordering::SeqCst) == 1).await;
    handle.stop();
    task.await.unwrap().unwrap();

    assert_eq!(broker.queue_len("default"), 0);
    let dead = broker.set("dead");
    assert_eq!(dead.len(), 1);
    assert!(dead[0].1.contains("always fails"));
    let stats = broker.stats();
    assert_eq!((stats.processed, stats.failed), (501, 1));
    assert!(
        broker.registered().is_empty(),
        "a stopped server unregisters"
    );
}

#[derive(Serialize, Deserialize)]
struct Tagged {
    id: u64,
    name: String,
}
impl Job for Tagged {
    const NAME: &'static str = "Tagged";
    fn options() -> JobOptions {
        JobOptions::default()
            .queue("mail")
            .retry(3)
            .retry_queue("slow")
            .backtrace(4)
            .tags(["a", "b"])
            .dead(false)
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Ok(())
    }
}

/// `push_bulk` writes its payloads on a fast path; they must be the same, key for key and in
/// the same order, as `push` writes (apart from the jid and the timestamps).
#[tokio::test]
async fn bulk_payloads_match_single_pushes() {
    let broker = MemoryBroker::new();
    let client = Client::new(broker.clone());
    client
        .push(Tagged {
            id: 1,
            name: "x".into(),
        })
        .await
        .unwrap();
    client
        .push_bulk([Tagged {
            id: 1,
            name: "x".into(),
        }])
        .await
        .unwrap();
    let queued = broker.queue("mail");
    assert_eq!(queued.len(), 2);
    let strip = |raw: &str| {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw).unwrap();
        for k in ["jid", "created_at", "enqueued_at"] {
            assert!(v.contains_key(k), "{k} in {raw}");
            v.insert(k.into(), serde_json::Value::Null);
        }
        serde_json::to_string(&v).unwrap()
    };
    assert_eq!(strip(&queued[0]), strip(&queued[1]));
    assert!(queued[1].starts_with(r#"{"retry":3,"queue":"mail","args":[1,"x"],"class":"Tagged""#));
}
