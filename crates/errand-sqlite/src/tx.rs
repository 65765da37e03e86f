//! Transactional enqueue: jobs written inside the application's own transaction on the same
//! SQLite file, so a job exists if and only if that transaction commits — no dual write, no
//! outbox. `errand::Client::push_tx` builds the payload and calls these.

use crate::rows::{add_member, enqueue};
use crate::schema::state;
use errand_core::BrokerError;
use errand_core::broker::{BrokerResult, Enqueue, ScheduledJob};
use rusqlite::Transaction;

/// What a failed write inside the caller's transaction means: a file without Errand's tables
/// (never opened with [`crate::SqliteBroker::open`]) is named as such.
fn tx_error(e: rusqlite::Error) -> BrokerError {
    if e.to_string().contains("no such table") {
        return BrokerError::Config(format!(
            "this SQLite file has no Errand tables ({e}): open it once with \
             SqliteBroker::open, which creates them, before pushing in a transaction"
        ));
    }
    crate::error::db_err(e)
}

/// Pushes `jobs` onto their queues inside `tx`, a transaction the application opened on a
/// connection to the broker's file (`rusqlite` is re-exported as `errand::sqlite::rusqlite`, so
/// the versions match). The jobs become visible to servers when `tx` commits — servers on other
/// connections see them within their 5 ms poll — and vanish with it when it rolls back.
///
/// # Errors
/// A file without Errand's tables ([`BrokerError::Config`]) or a failed write.
pub fn push_in(tx: &Transaction<'_>, jobs: &[Enqueue]) -> BrokerResult<()> {
    enqueue(tx, jobs).map_err(tx_error)
}

/// Adds `jobs` to the schedule set inside `tx` (see [`push_in`]).
///
/// # Errors
/// As for [`push_in`].
pub fn push_scheduled_in(tx: &Transaction<'_>, jobs: &[ScheduledJob]) -> BrokerResult<()> {
    for j in jobs {
        add_member(tx, state::SCHEDULE, j.at, &j.payload).map_err(tx_error)?;
    }
    Ok(())
}
