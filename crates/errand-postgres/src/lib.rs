//! Errand's PostgreSQL backend — **in progress** (issue 15): the schema with its migrations and
//! the hot path ([`errand_core::broker::JobQueue`]) are here and tested; the fleet duties,
//! coordination primitives and admin side come next, and until they do this crate is not a
//! [`errand_core::broker::Broker`] and `errand` does not offer it.
//!
//! # Overview
//! - One schema of its own (`errand` by default), created and migrated by the library on
//!   connect under an advisory lock; [`migrations_sql`] prints the same SQL for teams that run
//!   migrations themselves.
//! - Every job is one row of `jobs`; fetch is one `UPDATE … FROM (SELECT … FOR UPDATE SKIP
//!   LOCKED)` per queue, so concurrent fetchers never wait on each other, on a partial index
//!   of waiting rows only (finished rows are deleted; dead ones are not in it).
//! - A push NOTIFYs in its transaction; every broker LISTENs on one connection and wakes its
//!   waiting fetches, so an idle worker starts a pushed job at once, without polling.
//! - Times (`now`, fetch scores) are the server's clock, the same for every process.

mod broker;
mod config;
mod queue;
mod schema;

pub use broker::PostgresBroker;
pub use config::PostgresConfig;
pub use schema::migrations_sql;
