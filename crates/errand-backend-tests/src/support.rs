//! What every case shares: the factory traits a backend's test file implements, the step
//! timeout, and small helpers (payloads, fetches, heartbeats).

use crate::Inspect;
use async_trait::async_trait;
use errand_core::broker::{Broker, Enqueue, FetchRequest, Fetched, Heartbeat, RemoteSignal};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Makes fresh, isolated backends (own namespace, database or instance) for each case.
///
/// [`conformance_tests!`](crate::conformance_tests) evaluates the factory expression once per case and keeps the value
/// until the case ends, so a factory is the place to hold resources a case's backend needs
/// (a server process), rather than the [`TestBackend`], whose parts a case may drop early.
#[async_trait]
pub trait BackendFactory: Send + Sync {
    /// The backend's name, for failure messages.
    fn name(&self) -> &str;

    /// A new backend sharing no state with any other returned before.
    async fn new_backend(&self) -> TestBackend;
}

/// A backend under test and its inspection view.
pub struct TestBackend {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// What it stores.
    pub inspect: Arc<dyn Inspect>,
}

/// How long any single step of a case may take before the case fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) async fn step<T>(what: &str, fut: impl Future<Output = T>) -> T {
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

pub(crate) fn enqueue(queue: &str, payload: String) -> Enqueue {
    Enqueue {
        queue: queue.to_string(),
        payload,
    }
}

pub(crate) fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

pub(crate) async fn fetch(
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

pub(crate) fn info(identity: &str, qs: &[&str]) -> String {
    json!({ "identity": identity, "queues": qs, "concurrency": 5 }).to_string()
}

pub(crate) async fn beat(
    b: &dyn Broker,
    identity: &str,
    info: &str,
    ttl: Duration,
    processed: u64,
) -> Option<RemoteSignal> {
    beat_at(b, identity, info, ttl, processed, 0, errand_core::now()).await
}

pub(crate) async fn beat_at(
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
            cancelled: 0,
            expired: 0,
            ttl,
        }),
    )
    .await
    .expect("heartbeat")
}

pub(crate) fn raws(jobs: &[Fetched]) -> Vec<String> {
    jobs.iter().map(|j| j.raw.clone()).collect()
}
