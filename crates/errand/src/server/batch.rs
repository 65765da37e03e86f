//! Each attempt's outcome in its job's batch ([`crate::batch`]), written before the job's
//! completion: a crash between the two leaves the job in flight, so it runs again and its
//! record is repeated, which changes nothing. A record that cannot be written (the backend
//! unreachable through the retries) leaves the job in flight too, never acked unrecorded.
//!
//! Records are grouped as the completer groups completions: the first record into an empty
//! group starts a writer task, and every record that arrives while a group is being written
//! joins the next one, so a busy server records many outcomes per round trip
//! ([`Coordination::batch_record_many`](errand_core::broker::Coordination::batch_record_many):
//! one script run on Redis) and an idle one records each at once.

use super::state::Shared;
use errand_core::broker::{BatchFired, BatchOutcome, BatchRecord, Broker};
use errand_core::{BrokerError, Payload};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// How many attempts a group gets while the backend is unreachable (as the completer's).
const ATTEMPTS: usize = 12;
/// The most records one round trip carries.
const MAX_GROUP: usize = 1_000;

type Answer = Result<BatchFired, Arc<BrokerError>>;

struct Pending {
    bid: String,
    jid: String,
    outcome: BatchOutcome,
    reply: oneshot::Sender<Answer>,
}

/// Groups the batch records of one server process.
pub(crate) struct Recorder {
    broker: Arc<dyn Broker>,
    pending: Arc<Mutex<Vec<Pending>>>,
}

impl Recorder {
    pub(crate) fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            pending: Arc::default(),
        }
    }

    async fn submit(&self, bid: &str, jid: &str, outcome: BatchOutcome, at: String) -> Answer {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push(Pending {
                bid: bid.to_string(),
                jid: jid.to_string(),
                outcome,
                reply,
            });
            pending.len() == 1
        };
        if first {
            tokio::spawn(write_groups(self.broker.clone(), self.pending.clone(), at));
        }
        answer.await.unwrap_or_else(|_| {
            Err(Arc::new(BrokerError::Command(
                "the batch recorder stopped before answering".into(),
            )))
        })
    }
}

/// Writes pending records in groups until none are left; `at` is the `enqueued_at` of any job
/// a group pushes (the time its writer started: within a round trip of each record).
async fn write_groups(broker: Arc<dyn Broker>, pending: Arc<Mutex<Vec<Pending>>>, at: String) {
    loop {
        let group: Vec<Pending> = {
            let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
            let n = p.len().min(MAX_GROUP);
            p.drain(..n).collect()
        };
        if group.is_empty() {
            return;
        }
        let records: Vec<BatchRecord<'_>> = group
            .iter()
            .map(|p| BatchRecord {
                bid: &p.bid,
                member: &p.jid,
                outcome: p.outcome,
                enqueued_at: &at,
            })
            .collect();
        let written = crate::reconnect::retry("recording batch outcomes", ATTEMPTS, || {
            broker.batch_record_many(&records)
        })
        .await;
        drop(records);
        match written {
            Ok(fired) => {
                let mut fired = fired.into_iter();
                for p in group {
                    let _ = p.reply.send(Ok(fired.next().unwrap_or_default()));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for p in group {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Records `payload`'s `outcome` in its batch, if it has one. False when the record could not
/// be written: the caller must then leave the job in flight (for recovery) instead of
/// completing it.
pub(crate) async fn record(s: &Shared, payload: &Payload, outcome: BatchOutcome) -> bool {
    let Some(bid) = crate::batch::bid_of(payload) else {
        return true;
    };
    // A `bid` from elsewhere (Sidekiq Pro's batches) on a backend without batches: nothing to
    // record, and no reason to hold the job.
    if !s.broker().capabilities().batches {
        return true;
    }
    let at = s.config().profile.encode(s.now()).to_string();
    let jid = payload.jid();
    match s.recorder.submit(bid, jid, outcome, at).await {
        Ok(fired) => {
            for (bid, event) in &fired.callbacks {
                tracing::info!(bid, event = event.as_str(), "batch callback enqueued");
            }
            if fired.cancelled > 0 {
                tracing::warn!(bid, cancelled = fired.cancelled, "workflow steps cancelled");
            }
            #[cfg(feature = "failpoints")]
            super::crash::crash_point("after_batch_record");
            true
        }
        Err(e) => {
            tracing::error!(bid, jid, error = %e, "the batch outcome could not be recorded; the job stays in flight and will be recovered");
            false
        }
    }
}
