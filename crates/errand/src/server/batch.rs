//! Each attempt's outcome in its job's batch ([`crate::batch`]), written before the job's
//! completion: a crash between the two leaves the job in flight, so it runs again and its
//! record is repeated, which changes nothing. A record that cannot be written (the backend
//! unreachable through the retries) leaves the job in flight too, never acked unrecorded.

use super::state::Shared;
use errand_core::Payload;
use errand_core::broker::{BatchOutcome, BatchRecord};

/// Records `payload`'s `outcome` in its batch, if it has one. False when the record could not
/// be written: the caller must then leave the job in flight (for recovery) instead of
/// completing it.
pub(crate) async fn record(s: &Shared, payload: &Payload, outcome: BatchOutcome) -> bool {
    let Some(bid) = crate::batch::bid_of(payload) else {
        return true;
    };
    let broker = s.broker();
    // A `bid` from elsewhere (Sidekiq Pro's batches) on a backend without batches: nothing to
    // record, and no reason to hold the job.
    if !broker.capabilities().batches {
        return true;
    }
    let enqueued_at = s.config().profile.encode(s.now()).to_string();
    let jid = payload.jid();
    let written = crate::reconnect::retry("recording a batch outcome", 12, || {
        broker.batch_record(BatchRecord {
            bid,
            member: jid,
            outcome,
            enqueued_at: &enqueued_at,
        })
    })
    .await;
    match written {
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
