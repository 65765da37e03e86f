//! A unique job's lock and its push are one step (issue 13, item 11). Two faults, each
//! injected at the step it names on the reference backend through `Intercepted`:
//! - the push's reply is lost after the backend stored the job: the client reports an error,
//!   and the lock must still be held by the stored job (it used to be released, so a second
//!   push stored a duplicate);
//! - the pushing process dies (the push future is dropped) midway: the key must not be left
//!   locked with no job behind it (it used to be: the lock was taken, the push never sent).

use async_trait::async_trait;
use errand::broker::{Broker, BrokerResult, Enqueue, ScheduledJob, UniquePush, UniquePushed};
use errand::{Client, Error, Job, JobContext, JobOptions, JobResult, Payload};
use errand_core::BrokerError;
use errand_testing::{Intercept, Intercepted, MemoryBroker};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct Report(u64);

impl Job for Report {
    const NAME: &'static str = "Report";
    fn options() -> JobOptions {
        JobOptions::default().unique_for(Duration::from_secs(3600))
    }
    fn unique_key(&self) -> Option<String> {
        Some(format!("report-{}", self.0))
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Ok(())
    }
}

const PASS: u8 = 0;
const LOSE_REPLY: u8 = 1;
const HANG: u8 = 2;

/// Every way a job can be stored, with the fault `mode` names applied to it.
struct Faulty {
    mode: AtomicU8,
}

impl Faulty {
    /// Runs the store `step` under the current fault.
    async fn apply<T>(&self, step: impl Future<Output = BrokerResult<T>>) -> BrokerResult<T> {
        match self.mode.load(Ordering::SeqCst) {
            LOSE_REPLY => {
                step.await?;
                Err(BrokerError::Connection("the reply was lost".into()))
            }
            HANG => std::future::pending().await,
            _ => step.await,
        }
    }
}

#[async_trait]
impl Intercept for Faulty {
    async fn push(&self, inner: &dyn Broker, jobs: &[Enqueue]) -> BrokerResult<()> {
        self.apply(inner.push(jobs)).await
    }
    async fn push_scheduled(&self, inner: &dyn Broker, jobs: &[ScheduledJob]) -> BrokerResult<()> {
        self.apply(inner.push_scheduled(jobs)).await
    }
    async fn push_unique(
        &self,
        inner: &dyn Broker,
        req: UniquePush<'_>,
    ) -> BrokerResult<UniquePushed> {
        self.apply(inner.push_unique(req)).await
    }
}

fn setup() -> (Arc<MemoryBroker>, Arc<Intercepted<Faulty>>, Client) {
    let memory = Arc::new(MemoryBroker::new());
    let faulty = Arc::new(Intercepted::new(
        memory.clone(),
        Faulty {
            mode: AtomicU8::new(PASS),
        },
    ));
    let client = Client::from_arc(faulty.clone());
    (memory, faulty, client)
}

fn jids(memory: &MemoryBroker, queue: &str) -> Vec<String> {
    memory
        .queue(queue)
        .iter()
        .map(|raw| Payload::parse(raw).expect("a payload").jid().to_string())
        .collect()
}

#[tokio::test]
async fn a_lost_push_reply_keeps_the_lock_of_the_stored_job() {
    let (memory, faulty, client) = setup();
    faulty.hooks().mode.store(LOSE_REPLY, Ordering::SeqCst);
    let err = client
        .push(Report(1))
        .await
        .expect_err("the reply was lost");
    assert!(matches!(err, Error::Broker(_)), "{err:?}");
    faulty.hooks().mode.store(PASS, Ordering::SeqCst);

    let stored = jids(&memory, "default");
    assert_eq!(stored.len(), 1, "the first push did store its job");
    match client.push(Report(1)).await {
        Err(Error::Duplicate { existing_jid }) => {
            assert_eq!(existing_jid, stored[0], "the stored job holds the key")
        }
        other => panic!("a second push of the same report must be a duplicate: {other:?}"),
    }
    assert_eq!(jids(&memory, "default"), stored, "no second copy stored");
}

#[tokio::test]
async fn a_push_that_dies_midway_leaves_no_lock_without_a_job() {
    let (memory, faulty, client) = setup();
    faulty.hooks().mode.store(HANG, Ordering::SeqCst);
    let died = tokio::time::timeout(Duration::from_millis(200), client.push(Report(2))).await;
    assert!(
        died.is_err(),
        "the push hangs and is dropped, as a killed process's would be"
    );
    faulty.hooks().mode.store(PASS, Ordering::SeqCst);
    assert!(memory.queue("default").is_empty(), "nothing was stored");

    let jid = client
        .push(Report(2))
        .await
        .expect("the key is free: no job holds it");
    assert_eq!(jids(&memory, "default"), [jid]);
}
