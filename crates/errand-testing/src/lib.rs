//! Test support for Errand: [`TestJobs`] to test jobs and the code that enqueues them with
//! no Redis and no running server (fake, drain, inline and direct modes on a manual clock; see
//! [`jobs`]), and [`MemoryBroker`], an in-memory reference implementation of
//! the backend contract (`errand_core::broker`).
//!
//! # Overview
//! [`MemoryBroker`] keeps the Redis backend's data model in plain collections behind one mutex,
//! so every trait method is one atomic step, as a Lua script is on Redis:
//! - queues are double-ended lists with Redis's ends: pushes go to the front (`LPUSH`), fetches
//!   take from the back (`RPOP`), so a queue is FIFO;
//! - `retry`, `schedule` and `dead` are sorted sets ordered by (score, member), a member stored
//!   at most once;
//! - in-flight jobs are held in one list per (process identity, queue);
//! - the process registry maps an identity to its `info` JSON, whose `queues` tell recovery
//!   which in-flight hashes to look at;
//! - heartbeats expire `ttl` after they were written, measured on an injectable clock
//!   ([`ManualClock`]), so orphan recovery is testable without sleeping; the same clock is the
//!   backend clock servers promote due jobs by;
//! - `stat:processed` / `stat:failed` counters, total and per UTC day.
//!
//! Read-only inspection helpers ([`MemoryBroker::queue`], [`MemoryBroker::set`],
//! [`MemoryBroker::in_flight`], [`MemoryBroker::stats`], ...) let tests assert what a backend
//! holds, and [`MemoryBroker::push_signal`] plays the Web UI sending a remote signal.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use errand_core::broker::{Enqueue, JobQueue};
//! use errand_testing::MemoryBroker;
//!
//! let broker = MemoryBroker::new();
//! let job = r#"{"class":"Hello","args":[1]}"#.to_string();
//! broker.push(&[Enqueue { queue: "default".into(), payload: job.clone() }]).await.unwrap();
//! assert_eq!(broker.queue("default"), vec![job]);
//! # });
//! ```

pub mod intercept;
pub mod jobs;
mod memory;
pub use intercept::{Intercept, Intercepted};
pub use jobs::{InlineFailure, TestJobs};
pub use memory::{MemoryBroker, ProcessState};

use memory::lock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use errand_core::Clock;

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<f64>>,
}

impl ManualClock {
    /// A clock standing at `start` (float epoch seconds).
    pub fn new(start: f64) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A clock standing at the current wall-clock time.
    pub fn starting_now() -> Self {
        Self::new(errand_core::now())
    }

    /// The time it shows.
    pub fn now(&self) -> f64 {
        *lock(&self.now)
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *lock(&self.now) += by.as_secs_f64();
    }

    /// Sets the clock to `secs` (float epoch seconds).
    pub fn set(&self, secs: f64) {
        *lock(&self.now) = secs;
    }

    /// This clock as a [`Clock`] for [`MemoryBroker::with_clock`].
    pub fn clock(&self) -> Clock {
        let this = self.clone();
        Arc::new(move || this.now())
    }
}
