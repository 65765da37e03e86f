//! The I/O-free core of Errand, a Sidekiq-compatible background-job system.
//!
//! # Overview
//! Backend authors depend on this crate; applications depend on `errand`, which re-exports what
//! they need. It holds:
//! - [`Payload`]: a job as Sidekiq stores it, an ordered JSON object that keeps every key it does
//!   not understand, so Ruby middleware, Sidekiq Pro and tracing keys survive every transition;
//! - [`WireProfile`] and the timestamp rules (float seconds for Sidekiq 6/7, integer milliseconds
//!   for Sidekiq 8; both read);
//! - [`backoff`]: Sidekiq's retry delay formula and jitter;
//! - [`id`]: job ids and process identities in Sidekiq's formats;
//! - [`broker`]: the contract every backend implements, by topic: [`broker::JobQueue`] (the hot
//!   path), [`broker::Fleet`] (process duties), [`broker::Coordination`] (once-only records,
//!   permits, rates), with their value types;
//! - [`admin`]: the admin side of a backend (listing, paging, moving, deleting; processes and
//!   metrics) that the dashboard and the CLI are built on;
//! - [`metrics`]: per-class execution metrics and their duration histogram;
//! - [`activejob`]: unwrapping and building Rails ActiveJob payloads.
//!
//! The contract is ours to reshape before 1.0.

pub mod activejob;
pub mod admin;
pub mod backoff;
pub mod backtrace;
pub mod broker;
mod error;
pub mod id;
pub mod metrics;
mod payload;
mod time;

pub use error::{BrokerError, BrokerResult, PayloadError};
pub use payload::{Failure, MALFORMED_PREVIEW, Payload, RetrySetting, malformed_entry};
pub use time::{Clock, WireProfile, now, system_clock, utc_date};
