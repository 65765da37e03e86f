//! Background jobs for Rust that share Redis with Ruby's Sidekiq.
//!
//! # Overview
//! An application defines jobs ([`Job`]), enqueues them with a [`Client`], and runs worker
//! processes with a [`Server`], on as many machines as it likes. Jobs travel in Sidekiq's format,
//! so a Ruby app can enqueue jobs that Errand runs, Errand can enqueue jobs that Ruby runs, and
//! Sidekiq's API and Web UI show Errand's queues, retries, dead jobs and processes.
//!
//! The server retries failures with Sidekiq's backoff (25 retries by default), files exhausted
//! jobs in a bounded dead set and calls death handlers, runs scheduled jobs when due, and holds
//! every running job in Redis (reliable fetch) so a crashed worker loses nothing.
//!
//! # Example
//! ```rust,no_run
//! use errand::{Client, Job, JobContext, JobOptions, JobResult, Server};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct WelcomeEmail {
//!     user_id: u64,
//! }
//!
//! impl Job for WelcomeEmail {
//!     const NAME: &'static str = "WelcomeEmail";
//!     fn options() -> JobOptions {
//!         JobOptions::default().queue("critical").retry(5)
//!     }
//!     async fn perform(self, cx: &JobContext) -> JobResult {
//!         println!("welcome, user {} (job {})", self.user_id, cx.jid());
//!         Ok(())
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = errand::redis::RedisBroker::connect("redis://127.0.0.1:6379").await?;
//! let client = Client::new(broker.clone());
//! client.push(WelcomeEmail { user_id: 42 }).await?;
//!
//! Server::builder(broker)
//!     .register::<WelcomeEmail>()
//!     .weighted_queues([("critical", 10), ("default", 5)])
//!     .concurrency(10)
//!     .build()?
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! - `redis` (default): the Redis backend, re-exported as `errand::redis`.
//! - `sqlite` (default): the embedded SQLite backend, re-exported as `errand::sqlite`.
//! - `postgres` (default): the PostgreSQL backend, re-exported as `errand::postgres`.
//! - `spans`: `tracing` spans for every push and attempt, after OpenTelemetry's messaging
//!   conventions (`trace`).
//! - `opentelemetry`: `spans`, plus the W3C trace context carried in the payload (written on
//!   push, continued on perform), compatible with Ruby's OpenTelemetry Sidekiq instrumentation.

pub mod api;
pub mod batch;
mod client;
mod client_middleware;
mod context;
mod error;
mod job;
pub mod locks;
pub mod logs;
pub mod middleware;
pub mod periodic;
mod reconnect;
mod registry;
pub mod server;
#[cfg(feature = "spans")]
pub mod trace;

pub use async_trait::async_trait;
pub use batch::{Batch, BatchHandle, FailurePolicy, Workflow, WorkflowRun};
pub use client::{Client, Debounced, Push, RawJob};
pub use client_middleware::{ClientMiddleware, ClientNext, Outgoing, PushKind};
pub use context::{
    DEFAULT_ONCE_TTL, Data, JobContext, MAX_RESULT_BYTES, PROGRESS_MESSAGE_MAX, Progress,
};
pub use errand_core::broker::{BatchEvent, BatchStatus};
pub use errand_core::broker::{Cancelled, DeadLimits};
pub use errand_core::{
    Clock, Payload, WireProfile, activejob, admin, backoff, broker, metrics, system_clock,
};
pub use error::{Error, JobError, JobErrorKind, JobResult};
pub use job::{
    DEBOUNCE_KEY, EXPIRES_AT, Job, JobOptions, KEEP_RESULT, Retry, UniqueUntil, decode_args,
    encode_args,
};
pub use locks::{Admission, Limiter, Mutex, MutexGuard, Permit};
pub use periodic::{Missed, Periodic};
pub use server::{Drained, Server, ServerBuilder, ServerHandle};

/// The embedded SQLite backend (feature `sqlite`): one file, nothing to install.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use errand_sqlite::{Durability, SqliteBroker, SqliteConfig, rusqlite};
}

/// The PostgreSQL backend (feature `postgres`).
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use errand_postgres::{PostgresBroker, PostgresConfig, migrations_sql, tokio_postgres};
}

/// The Redis backend (feature `redis`).
#[cfg(feature = "redis")]
pub mod redis {
    pub use errand_redis::{
        CLUSTER_SHARDS, Keys, RedisBroker, RedisConfig, RedisConn, eviction_warning, slot_of,
    };
}
