//! The completer: how every finished attempt reaches the backend. An outcome (an ack, or a
//! settle into the retry, scheduled or dead set) joins a batch; the first outcome into an empty
//! batch starts a writer task, and every outcome that arrives while a batch is being written
//! joins the next one. So a busy server writes many outcomes per round trip
//! ([`JobQueue::complete_many`](errand_core::broker::JobQueue::complete_many): one pipeline on
//! Redis, one transaction on SQLite) and an idle one writes each at once. A batch that fails on
//! the connection is retried with the shared backoff ([`crate::reconnect`]) for about 43 s;
//! after that (or on any other error) its jobs stay in flight, to be recovered by the shutdown
//! requeue or orphan recovery. Each caller gets its own answer, with the error typed.

use errand_core::BrokerError;
use errand_core::broker::{Broker, Completion, Fetched, Settle};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// How many attempts a batch gets while the backend is unreachable.
const ATTEMPTS: usize = 12;
/// The most outcomes one round trip carries.
const MAX_BATCH: usize = 1_000;

/// What became of one outcome: whether the job was still held (false: its in-flight copy
/// was lost to recovery and nothing was written), or why the write failed.
pub(crate) type Written = Result<bool, Arc<BrokerError>>;

struct Pending {
    job: Arc<Fetched>,
    settle: Option<Settle>,
    reply: oneshot::Sender<Written>,
}

/// Batches the outcomes of one server process.
pub(crate) struct Completer {
    broker: Arc<dyn Broker>,
    identity: String,
    pending: Arc<Mutex<Vec<Pending>>>,
}

impl Completer {
    pub(crate) fn new(broker: Arc<dyn Broker>, identity: String) -> Self {
        Self {
            broker,
            identity,
            pending: Arc::default(),
        }
    }

    /// Writes `job`'s outcome (`None`: an ack) and logs what could not be written: `what`
    /// names the step in the log (`ack`, `retry`, `kill`, `snooze`).
    pub(crate) async fn finish(&self, job: &Arc<Fetched>, outcome: Option<Settle>, what: &str) {
        match self.submit(job.clone(), outcome).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(what, identity = %self.identity, "job was no longer held in flight (lost to recovery); change rejected");
            }
            Err(e) => {
                tracing::error!(what, error = %e, "backend step failed; the job stays in flight and will be recovered");
            }
        }
    }

    async fn submit(&self, job: Arc<Fetched>, settle: Option<Settle>) -> Written {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push(Pending { job, settle, reply });
            pending.len() == 1
        };
        if first {
            tokio::spawn(write_batches(self.broker.clone(), self.pending.clone()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(Arc::new(BrokerError::Command(
                "the completer's writer stopped before answering".into(),
            )))
        })
    }
}

/// Writes pending outcomes in batches until none are left.
async fn write_batches(broker: Arc<dyn Broker>, pending: Arc<Mutex<Vec<Pending>>>) {
    loop {
        let batch: Vec<Pending> = {
            let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
            let n = p.len().min(MAX_BATCH);
            p.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let completions: Vec<Completion<'_>> = batch
            .iter()
            .map(|p| match &p.settle {
                None => Completion::Ack(&p.job),
                Some(to) => Completion::Settle(&p.job, to),
            })
            .collect();
        let written =
            crate::reconnect::retry("complete", ATTEMPTS, || broker.complete_many(&completions))
                .await;
        drop(completions);
        // A crash inside the retry write: the backend has applied it, the reply is not used.
        #[cfg(feature = "failpoints")]
        if written.is_ok()
            && batch
                .iter()
                .any(|p| matches!(p.settle, Some(Settle::Retry { .. })))
        {
            super::crash::crash_point("inside_retry_write");
        }
        match written {
            Ok(held) => {
                for (p, held) in batch.into_iter().zip(held) {
                    let _ = p.reply.send(Ok(held));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
