//! The Lua scripts behind each atomic step. Each file's header says what it does.

use redis::Script;
use std::sync::LazyLock;

/// Reliable fetch of a batch from several queues into the in-flight hashes.
pub static FETCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/fetch.lua")));
/// Acks: the attempts' fields out of their in-flight hashes, saying which were still held.
pub static ACK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/ack.lua")));
/// In flight → the retry, scheduled or dead set (with the dead set's trim).
pub static SETTLE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/settle.lua")));
/// Cluster mode: claim outbox entries for delivery.
pub static OUTBOX: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/outbox.lua")));
/// Cluster mode: jobs pushed onto the queues of one shard.
pub static PUSH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/push.lua")));
/// Due members of `retry`/`schedule` → their queues.
pub static PROMOTE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/promote.lua")));
/// In-flight hashes (or older versions' lists) of a process → their queues (recovery and clean shutdown).
pub static RESCUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/rescue.lua")));
/// Once-only step records: claim, renew, complete, release.
pub static ONCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/once.lua")));
/// Permit sets (mutexes, unique locks, concurrency limits): acquire, renew, release.
pub static PERMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/permit.lua")));
/// A unique job's permit and push, in one step.
pub static UNIQUE_PUSH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/unique_push.lua")));
/// A debounced push: the job stored and the waiting job of the same key removed, in one step.
pub static REPLACE_PUSH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/replace_push.lua")));
/// Periodic entries: claim a tick (and enqueue its job), pause, prune.
pub static PERIODIC: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/periodic.lua")));
/// Rate limits: bucket and sliding window.
pub static RATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/rate.lua")));
/// One in-flight job back to its queue (a job stranded by a lost fetch reply).
pub static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));
/// One member of a sorted set → a queue (the admin side's "retry now", "add to queue").
pub static SET_TO_QUEUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/set_to_queue.lua")));
/// One member of a sorted set → the dead set, with the dead set's trim (the admin side's
/// "kill").
pub static SET_TO_DEAD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/set_to_dead.lua")));
/// Batches: create, add members (and push them), record an outcome with all it causes.
pub static BATCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/batch.lua")));
