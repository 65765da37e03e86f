//! The contract between Errand's server and a storage backend, split by topic:
//!
//! | trait | what it covers | who calls it |
//! | --- | --- | --- |
//! | [`JobQueue`] | the hot path: push, fetch, complete (ack or settle), release, promote | clients, the server's manager and completer |
//! | [`Fleet`] | the process's duties: registration, heartbeat, recovery of dead processes' jobs, the poll turn, paused queues, metrics | the server's heartbeat and scheduler |
//! | [`Coordination`] | primitives jobs coordinate with: once-only records, permit sets (mutexes, unique jobs, concurrency limits), rate counters, periodic entries and their tick claims | `JobContext`, `Mutex`, `Limiter`, unique pushes, the periodic scheduler |
//! | [`crate::admin::Admin`] | what people read and change: pages, moves, processes, signals | the dashboard, `errand ops`, `errand::api` |
//!
//! [`Broker`] is the three runtime topics together; every type that implements them is a
//! `Broker`, and servers and clients hold an `Arc<dyn Broker>`.
//!
//! Every method that moves a job is one atomic step in the backend (a Lua script or a pipeline
//! on Redis, a transaction on SQLite), so a crash between two steps never loses a job. Payload
//! JSON is built and edited in Rust; backends move the strings they are given and never
//! re-encode them. A method that needs more than two values takes one params struct.
//!
//! `docs/backends.md` walks through adding a backend. These traits are ours to reshape before
//! 1.0.

pub mod batch;
mod coordination;
mod fleet;
mod periodic;
mod queue;

pub use crate::error::BrokerResult;
pub use batch::{
    BATCH_KEEP, BATCH_MAX_AGE, BID_KEY, BUILDING, BatchCallback, BatchEvent, BatchFired,
    BatchOutcome, BatchRecord, BatchStatus, FailurePolicy, JobHead, MemberState, NewBatch,
    WaitingStep, batch_of, child_member, decode_callbacks, encode_callbacks, record_removed,
};
pub use coordination::{
    CANCEL_MARK_TTL, Cancelled, Capabilities, Coordination, FENCE_GRACE, OnceClaim, OnceCompletion,
    OnceRequest, PermitGrant, PermitRenewal, PermitRequest, RateKind, RateRequest, ReplacePush,
    UniquePush, UniquePushed, has_jid, work_has_jid,
};
pub use fleet::{
    Fleet, Heartbeat, RemoteSignal, RescuePolicy, WorkEntry, info_queues, poison_entry,
};
pub use periodic::{PeriodicEntry, PeriodicRecord, TickClaim};
pub use queue::{
    Completion, DeadLimits, Enqueue, FetchRequest, Fetched, JobQueue, ScheduledJob, Settle,
};

/// A whole runtime backend: the hot path, the fleet duties and the coordination primitives.
/// Implemented for every type that implements the three; backends implement those.
pub trait Broker: JobQueue + Fleet + Coordination {}

impl<T: JobQueue + Fleet + Coordination> Broker for T {}
