//! A fetch whose reply is lost after the backend moved jobs in flight (the connection broke on
//! the way back) must not strand those jobs in a live process: once fetching works again the
//! server puts back what it holds but is not running, and every job runs.

use async_trait::async_trait;
use errand::broker::{Broker, BrokerResult, FetchRequest, Fetched};
use errand::{Client, Job, JobContext, JobResult, Server};
use errand_core::BrokerError;
use errand_testing::{Intercept, Intercepted, MemoryBroker};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The first fetch that moves jobs reports a connection error instead of returning them (they
/// stay in flight, as after a lost Redis reply).
struct LosesOneReply {
    lost: AtomicUsize,
}

#[async_trait]
impl Intercept for LosesOneReply {
    async fn fetch(&self, inner: &dyn Broker, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        let jobs = inner.fetch(req).await?;
        if !jobs.is_empty() && self.lost.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(BrokerError::Connection("reply lost in transit".into()));
        }
        Ok(jobs)
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_stranded_by_a_lost_fetch_reply_are_put_back_and_run() {
    let memory = MemoryBroker::new();
    let broker = Arc::new(Intercepted::new(
        Arc::new(memory.clone()),
        LosesOneReply {
            lost: AtomicUsize::new(0),
        },
    ));
    Client::new(memory.clone())
        .push_bulk((0..20).map(Count))
        .await
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let server = Server::builder_arc(broker.clone())
        .register::<Count>()
        .data(ran.clone())
        .concurrency(5)
        .fetch_wait(Duration::from_millis(100))
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    let deadline = Instant::now() + Duration::from_secs(20);
    while ran.load(Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} of 20 ran: the lost reply's jobs were stranded",
            ran.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop();
    running.await.unwrap().unwrap();
    assert!(
        broker.hooks().lost.load(Ordering::SeqCst) > 1,
        "the reply was lost once"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 20, "each job ran once");
    assert!(memory.queue("default").is_empty());
}
