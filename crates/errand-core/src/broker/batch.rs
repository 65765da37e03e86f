//! Batches: a set of jobs (and child batches) tracked as one, with callbacks enqueued exactly
//! once when the set completes, succeeds, or first loses a job to the dead set; and the
//! waiting steps a workflow is built from.
//!
//! # The model every backend implements
//! A batch has **members**: its jobs' jids, `child:<bid>` for each child batch, and the
//! [`BUILDING`] member that holds the batch open while it is being filled. Each member is in
//! one state:
//!
//! | state | meaning |
//! | --- | --- |
//! | pending | not yet succeeded, not dead (waiting, running, or retrying) |
//! | failed | pending, and has failed at least once since it last succeeded (a subset of pending) |
//! | dead | in the dead set (for a child batch: it completed with a dead or cancelled member) |
//! | cancelled | a workflow step that will never run because a step it needs died |
//! | waiting | a workflow step not pushed yet (a subset of pending) |
//! | (gone) | succeeded |
//!
//! [`Coordination::batch_record`](super::Coordination::batch_record) moves one member, in one
//! atomic step with everything it causes:
//! - **succeeded**: the member leaves pending, failed and dead (a retry of a member already
//!   counted, or a dead job retried by hand, is counted once). Workflow steps waiting on it
//!   and on nothing else are pushed.
//! - **failed**: a pending member joins failed; anything else is left alone (a stale attempt).
//! - **died**: a pending member leaves pending (and failed) and joins dead; the batch's first
//!   death enqueues its `death` callback. Under the workflow's failure policy, steps waiting on
//!   it (or every waiting step) are cancelled.
//!
//! Then, when pending is empty: the first time, the `complete` callback is enqueued; the first
//! time dead and cancelled are empty too, the `success` callback is (so `success` can come after
//! `complete`, once a dead job is retried by hand and succeeds). A batch with a parent records
//! itself in the parent as `child:<bid>`: died when it completes with dead or cancelled members,
//! succeeded when it succeeds. A member that is not pending is left alone, so recording the
//! same outcome twice (a rerun after a crash between the record and the ack) changes nothing.
//!
//! Callbacks are stored at creation as payloads without their `enqueued_at`
//! ([`JobHead`]); the backend closes each with the record's
//! [`BatchRecord::enqueued_at`] when it pushes it.

use std::time::Duration;

/// The member that holds a batch open while it is being filled; recorded as succeeded when the
/// batch is sealed.
pub const BUILDING: &str = "building";

/// The payload key of a job's batch id (Sidekiq Pro's name).
pub const BID_KEY: &str = "bid";

/// The batch job `raw` belongs to: its `bid`, when it parses and has a non-empty one.
pub fn batch_of(raw: &str) -> Option<(String, String)> {
    let p = crate::Payload::parse(raw).ok()?;
    let bid = p
        .get(BID_KEY)?
        .as_str()
        .filter(|b| !b.is_empty())?
        .to_string();
    Some((bid, p.jid().to_string()))
}

/// Records job `raw`, taken out of the way unrun by a person (cancelled while it waited,
/// deleted from the retries or the schedule, killed), as dead in its batch, so the batch does
/// not wait for it forever. Does nothing for a job outside any batch or on a backend without
/// batches. A callback this fires is stamped in Sidekiq 6/7's float seconds (read by every
/// version).
pub async fn record_removed<C: super::Coordination + ?Sized>(
    c: &C,
    raw: &str,
) -> crate::BrokerResult<()> {
    if !c.capabilities().batches {
        return Ok(());
    }
    let Some((bid, jid)) = batch_of(raw) else {
        return Ok(());
    };
    let enqueued_at = crate::WireProfile::V7.encode(crate::now()).to_string();
    c.batch_record(BatchRecord {
        bid: &bid,
        member: &jid,
        outcome: BatchOutcome::Died,
        enqueued_at: &enqueued_at,
    })
    .await?;
    Ok(())
}

/// Callbacks as the SQL backends store them: a JSON array of `{"event", "queue", "head"}`.
pub fn encode_callbacks(callbacks: &[BatchCallback]) -> String {
    serde_json::Value::Array(
        callbacks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "event": c.event.as_str(),
                    "queue": c.job.queue,
                    "head": c.job.head,
                })
            })
            .collect(),
    )
    .to_string()
}

/// Callbacks stored by [`encode_callbacks`], as (event, queue, head) in creation order; entries
/// that do not read are left out.
pub fn decode_callbacks(text: &str) -> Vec<(BatchEvent, String, String)> {
    let entries: Vec<serde_json::Value> = serde_json::from_str(text).unwrap_or_default();
    entries
        .iter()
        .filter_map(|e| {
            Some((
                BatchEvent::parse(e.get("event")?.as_str()?)?,
                e.get("queue")?.as_str()?.to_string(),
                e.get("head")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

/// The member name of child batch `bid` in its parent.
pub fn child_member(bid: &str) -> String {
    format!("child:{bid}")
}

/// How long a batch is kept by default after it completes.
pub const BATCH_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a batch is kept by default when it never completes (from its creation).
pub const BATCH_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);

/// A batch callback's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchEvent {
    /// Every member succeeded or is dead.
    Complete,
    /// Every member succeeded.
    Success,
    /// The first member died.
    Death,
}

impl BatchEvent {
    /// The event's name: `complete`, `success`, `death`.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchEvent::Complete => "complete",
            BatchEvent::Success => "success",
            BatchEvent::Death => "death",
        }
    }

    /// The event named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "complete" => Some(BatchEvent::Complete),
            "success" => Some(BatchEvent::Success),
            "death" => Some(BatchEvent::Death),
            _ => None,
        }
    }
}

/// A job to push later, stored as its payload without the closing brace: the backend appends
/// `,"enqueued_at":<value>}` when it pushes it, so it never re-encodes the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct JobHead {
    /// The job's queue.
    pub queue: String,
    /// The payload JSON object without its final `}` (and without `enqueued_at`).
    pub head: String,
}

impl JobHead {
    /// Splits a payload JSON object (without `enqueued_at`) into a head. `None` when `payload`
    /// is not an object's text.
    pub fn new(queue: &str, payload: &str) -> Option<Self> {
        let payload = payload.trim_end();
        let head = payload.strip_suffix('}')?;
        if !head.starts_with('{') || head.len() < 2 {
            return None;
        }
        Some(Self {
            queue: queue.to_string(),
            head: head.to_string(),
        })
    }

    /// The payload as pushed with `enqueued_at` (an encoded JSON value).
    pub fn close(&self, enqueued_at: &str) -> String {
        close_head(&self.head, enqueued_at)
    }
}

/// `head` closed with `,"enqueued_at":<enqueued_at>}` (what every backend pushes).
pub fn close_head(head: &str, enqueued_at: &str) -> String {
    format!("{head},\"enqueued_at\":{enqueued_at}}}")
}

/// A callback of a batch: an ordinary job enqueued once when its event happens.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchCallback {
    /// When it is enqueued.
    pub event: BatchEvent,
    /// The job.
    pub job: JobHead,
}

/// A workflow step that waits for other members (its parents) to succeed before it is pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingStep {
    /// The step's job id (its member name).
    pub jid: String,
    /// The job, pushed when the last of `after` succeeds.
    pub job: JobHead,
    /// The jids it waits for: members of the same batch (pending or waiting steps).
    pub after: Vec<String>,
}

/// What a workflow does when one of its steps dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Every step that has not been pushed yet is cancelled; steps already queued or running
    /// finish (the default: stop the workflow).
    #[default]
    CancelAll,
    /// Only the steps that need the dead one (directly or through others) are cancelled;
    /// independent branches run to their end.
    CancelDependents,
}

impl FailurePolicy {
    /// The policy's name: `cancel_all`, `cancel_dependents`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::CancelAll => "cancel_all",
            FailurePolicy::CancelDependents => "cancel_dependents",
        }
    }

    /// The policy named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cancel_all" => Some(FailurePolicy::CancelAll),
            "cancel_dependents" => Some(FailurePolicy::CancelDependents),
            _ => None,
        }
    }
}

/// A batch to create ([`Coordination::batch_create`](super::Coordination::batch_create)).
#[derive(Debug, Clone)]
pub struct NewBatch<'a> {
    /// The batch id (random, like a jid).
    pub bid: &'a str,
    /// The parent batch, which gets `child:<bid>` as a pending member in the same step.
    pub parent: Option<&'a str>,
    /// Free text shown by dashboards.
    pub description: &'a str,
    /// Its callbacks (at most one per event).
    pub callbacks: &'a [BatchCallback],
    /// How long it is kept after it completes.
    pub keep: Duration,
    /// Workflow steps that wait for others; they are pending members from the start.
    pub waiting: &'a [WaitingStep],
    /// The failure policy for `waiting` steps.
    pub policy: FailurePolicy,
    /// The workflow's definition (opaque JSON for dashboards), if this batch is a workflow.
    pub workflow: Option<&'a str>,
}

/// How a member ended an attempt ([`BatchRecord::outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// It finished (or was discarded).
    Succeeded,
    /// It failed and will be retried.
    Failed,
    /// It went to the dead set (or was cancelled or expired: it will not run again).
    Died,
}

/// One member's outcome ([`Coordination::batch_record`](super::Coordination::batch_record)).
#[derive(Debug, Clone, Copy)]
pub struct BatchRecord<'a> {
    /// The batch.
    pub bid: &'a str,
    /// The member: a jid, `child:<bid>` or [`BUILDING`].
    pub member: &'a str,
    /// What happened.
    pub outcome: BatchOutcome,
    /// The `enqueued_at` value (encoded JSON, in the caller's wire profile) for any job this
    /// record pushes: callbacks and released workflow steps.
    pub enqueued_at: &'a str,
}

/// What a record caused ([`Coordination::batch_record`](super::Coordination::batch_record)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchFired {
    /// Callbacks enqueued by this record, as (bid, event), including those of ancestors
    /// completed by it.
    pub callbacks: Vec<(String, BatchEvent)>,
    /// Workflow steps pushed.
    pub released: usize,
    /// Workflow steps cancelled.
    pub cancelled: usize,
}

/// A batch's state ([`Coordination::batch_status`](super::Coordination::batch_status)).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BatchStatus {
    /// The batch id.
    pub bid: String,
    /// Its parent batch.
    pub parent: Option<String>,
    /// Free text.
    pub description: String,
    /// When it was created, epoch seconds on the backend's clock.
    pub created_at: f64,
    /// Members ever added (jobs, child batches, workflow steps; not [`BUILDING`]).
    pub total: u64,
    /// Members not yet succeeded nor dead (including failed and waiting ones).
    pub pending: u64,
    /// Pending members that have failed at least once.
    pub failed: u64,
    /// Dead members.
    pub dead: u64,
    /// Cancelled workflow steps.
    pub cancelled: u64,
    /// Workflow steps not pushed yet.
    pub waiting: u64,
    /// Whether it is still being filled (not sealed).
    pub building: bool,
    /// When it completed (every member succeeded or dead).
    pub complete_at: Option<f64>,
    /// When it succeeded (every member succeeded).
    pub success_at: Option<f64>,
    /// When its first member died.
    pub death_at: Option<f64>,
    /// The events it has callbacks for.
    pub callbacks: Vec<String>,
    /// The workflow definition, if it is a workflow.
    pub workflow: Option<String>,
    /// Its failure policy's name (meaningful for workflows).
    pub policy: String,
}

impl BatchStatus {
    /// Its state in a word: `building` (still being filled), `running`, `complete` (done, with
    /// dead or cancelled members) or `succeeded`.
    pub fn state(&self) -> &'static str {
        match (self.building, self.complete_at, self.success_at) {
            (_, _, Some(_)) => "succeeded",
            (_, Some(_), None) => "complete",
            (true, None, None) => "building",
            (false, None, None) => "running",
        }
    }

    /// How many of its members are done (succeeded, dead or cancelled), and that as a whole
    /// percentage of the total (100 for an empty batch).
    pub fn done(&self) -> (u64, u64) {
        let done = self.total.saturating_sub(self.pending);
        let percent = (done * 100).checked_div(self.total).unwrap_or(100);
        (done, percent)
    }
}

/// Which members of a batch to list
/// ([`Coordination::batch_members`](super::Coordination::batch_members)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Pending (including failed and waiting).
    Pending,
    /// Failed at least once, still pending.
    Failed,
    /// Dead.
    Dead,
    /// Cancelled workflow steps.
    Cancelled,
    /// Workflow steps not pushed yet.
    Waiting,
}

impl MemberState {
    /// Every state, in display order.
    pub const ALL: [MemberState; 5] = [
        MemberState::Pending,
        MemberState::Failed,
        MemberState::Waiting,
        MemberState::Dead,
        MemberState::Cancelled,
    ];

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Pending => "pending",
            MemberState::Failed => "failed",
            MemberState::Dead => "dead",
            MemberState::Cancelled => "cancelled",
            MemberState::Waiting => "waiting",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_close_into_the_payload_with_enqueued_at() {
        let head = JobHead::new("q", r#"{"class":"A","args":[1]} "#).unwrap();
        assert_eq!(head.head, r#"{"class":"A","args":[1]"#);
        let closed = head.close("1700000000.5");
        let v: serde_json::Value = serde_json::from_str(&closed).unwrap();
        assert_eq!(v["enqueued_at"], serde_json::json!(1700000000.5));
        assert_eq!(v["args"], serde_json::json!([1]));
        assert!(JobHead::new("q", "[1]").is_none());
        assert!(JobHead::new("q", "{}").is_none());
    }
}
