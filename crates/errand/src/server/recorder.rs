//! The recorder: groups the batch records of one server process, as the completer groups its
//! completions. The first record into an empty group starts a writer task, and every record
//! that arrives while a group is being written joins the next one, so a busy server records
//! many outcomes per round trip
//! ([`Coordination::batch_record_many`](errand_core::broker::Coordination::batch_record_many):
//! one script run on Redis, one transaction on SQLite) and an idle one records each at once.

use errand_core::BrokerError;
use errand_core::broker::{BatchFired, BatchOutcome, BatchRecord, Broker};
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

    /// Records `outcome` of member `jid` in batch `bid`; `at` is the `enqueued_at` of any job
    /// the group pushes.
    pub(crate) async fn submit(
        &self,
        bid: &str,
        jid: &str,
        outcome: BatchOutcome,
        at: String,
    ) -> Answer {
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
