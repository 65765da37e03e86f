//! Errand's Redis backend, on Sidekiq's key layout.
//!
//! # Overview
//! [`RedisBroker`] implements the contract of `errand_core::broker` over
//! [redis-rs](https://docs.rs/redis), one module per topic: the hot path (`queue`), the
//! process's duties (`fleet`), coordination primitives (`coordination`), the admin side
//! (`admin`) and execution metrics (`metrics`), on a connection set up in `broker` from a
//! [`RedisConfig`]. Queues are `queue:<name>` lists that Ruby Sidekiq reads and writes too,
//! `schedule`/`retry`/`dead` are the sorted sets Sidekiq's API and Web UI show, and heartbeats,
//! work hashes and stats counters follow Sidekiq 6.4–8.x (see `docs/redis-layout.md`).
//!
//! What Sidekiq OSS lacks lives under Errand's own `errand:` namespace:
//! - `errand:inflight:<identity>:<queue>`: reliable fetch's in-flight hash per process and queue
//!   (field: the attempt's fencing token, value: the job string);
//! - `errand:processes`: a hash from process identity to its `info` JSON, so a live process can
//!   find and recover the in-flight jobs of one whose heartbeat expired.
//!
//! Every job transition is one Lua script, loaded once and run with EVALSHA; the scripts move
//! payload strings and never re-encode JSON. [`Keys`] names every key.
//!
//! On a Redis Cluster ([`RedisConfig::cluster`], `redis+cluster://` URLs) the keys carry hash
//! tags ([`Keys::cluster`]): each queue's keys share its shard's slot, the fleet's and the
//! coordination records share one more, and steps that push into another slot go through an
//! outbox; Ruby Sidekiq cannot read that layout (see `docs/redis-cluster.md`).
//!
//! The admin side (queues, sets, processes, signals, counters, metrics) works on the same keys
//! Sidekiq's API and Web UI use; paused queues live in Sidekiq Pro's `paused` set, execution
//! metrics in Errand's `errand:metrics:<minute>` and `errand:metrics:total` hashes.

mod admin;
mod batch;
mod broker;
mod config;
mod coordination;
mod error;
mod fleet;
mod keys;
mod metrics;
mod queue;
mod scripts;

pub use broker::{RedisBroker, RedisConn, eviction_warning};
pub use config::RedisConfig;
pub use keys::{CLUSTER_SHARDS, Keys, slot_of};
