//! Each attempt's outcome in its job's batch ([`crate::batch`]), written before the job's
//! completion: a crash between the two leaves the job in flight, so it runs again and its
//! record is repeated, which changes nothing. A record that cannot be written (the backend
//! unreachable through the retries) leaves the job in flight too, never acked unrecorded.
//! Records are grouped per round trip by the recorder (`recorder.rs`).

use super::state::Shared;
use errand_core::Payload;
use errand_core::broker::BatchOutcome;

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
