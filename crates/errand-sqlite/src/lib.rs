//! Errand's embedded backend: one SQLite file, no server to run.
//!
//! # Overview
//! [`SqliteBroker`] implements the contract of `errand_core::broker` on a single SQLite file
//! (bundled SQLite: nothing to install). It is the zero-setup default for one machine; several
//! processes on that machine may share the file. Behaviour matches the Redis backend, which
//! the shared conformance suite (`errand-backend-tests`) checks case by case.
//!
//! - The file runs in WAL mode; every transition (push, fetch, ack, retry, kill, snooze,
//!   promotion, recovery) is one `BEGIN IMMEDIATE` transaction, so a crash never leaves a job
//!   half-moved.
//! - Fetched jobs stay in the `jobs` table as `in flight`, owned by the process; a process that
//!   dies (SIGKILL, OOM) stops beating, its lease expires, and a live process puts its jobs back
//!   at the front of their queues.
//! - A fetch takes a whole batch in one transaction; when the queues are empty it waits on an
//!   in-process signal (pushes from this process wake it at once) and polls the file for
//!   pushes from other processes every 5 ms with a read that takes no lock.
//!
//! - The admin side ([`errand_core::admin::Admin`], for the dashboard and the CLI) reads and
//!   changes the same rows: a queue page is a range of a queue's rows in fetch order, a set page
//!   a range in `(score, member)` order, and every move (retry now, kill, delete) is one
//!   transaction, with the same semantics as the Redis backend.
//!
//! Moving to Redis later is a configuration change: the job code and server are the same.

mod admin;
mod batch;
mod broker;
mod config;
mod coordination;
mod error;
mod fleet;
mod queue;
mod rows;
mod schema;
mod tx;

pub use broker::SqliteBroker;
pub use config::{Durability, SqliteConfig};
/// The SQLite driver this backend is built on, for the application's own connection to the
/// same file ([`push_in`], `errand::Client::push_tx`): the same version, so its transactions fit.
pub use rusqlite;
pub use tx::{push_in, push_scheduled_in};
