//! How SQLite errors map onto [`BrokerError`]: a lock held past the busy timeout is worth
//! retrying (a connection error), anything else is a command error.

use errand_core::BrokerError;

pub(crate) fn db_err(e: rusqlite::Error) -> BrokerError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    match e.sqlite_error_code() {
        // Another process held the write lock past the busy timeout: worth retrying.
        Some(DatabaseBusy | DatabaseLocked) => BrokerError::Connection(Box::new(e)),
        _ => BrokerError::Command(Box::new(e)),
    }
}
