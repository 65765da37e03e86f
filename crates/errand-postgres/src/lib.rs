//! Errand's PostgreSQL backend. [`PostgresBroker`] implements the whole contract — the hot
//! path, the fleet duties, every coordination primitive and the admin side — and passes the
//! shared conformance suites (69 broker cases and 21 admin cases) on a server the tests
//! start. Still to come (issue 15): `errand`'s re-export and the CLI's `--postgres`,
//! transactional enqueue on a `tokio_postgres::Transaction`, the crash tests, and the
//! benchmark against graphile-worker and pg-boss.
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
//! - Times (`now`, heartbeats, leases, fetch scores) are the server's clock, the same for every
//!   process.
//! - Read-then-write steps on one key (permit sets, rate limits, once-only steps, debounce
//!   keys) take a transaction-scoped advisory lock on that key first, so they are atomic under
//!   READ COMMITTED, as a Lua script is on Redis.

mod admin;
mod batch;
mod broker;
mod config;
mod coordination;
mod fleet;
mod queue;
mod schema;

pub use broker::PostgresBroker;
pub use config::PostgresConfig;
pub use schema::migrations_sql;
/// The driver this backend is built on, for the application's own transactions
/// (`errand::Client::push_pg_tx`): the same version, so its transactions fit.
pub use tokio_postgres;
