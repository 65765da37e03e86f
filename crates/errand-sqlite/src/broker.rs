//! [`SqliteBroker`]: one connection to the file, shared by clones and used from the blocking
//! pool. Each topic of the contract is implemented in its own module: `queue`, `fleet`,
//! `coordination`, `admin`; the row operations they share are in `rows`.

use crate::config::{Durability, SqliteConfig};
use crate::error::db_err;
use crate::schema::SCHEMA;
use errand_core::BrokerError;
use errand_core::broker::BrokerResult;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub(crate) struct Inner {
    pub(crate) conn: Mutex<Connection>,
    /// Wakes waiting fetches of this process when it pushes or moves jobs to a queue.
    pub(crate) pushed: Notify,
    pub(crate) path: PathBuf,
}

/// The SQLite backend. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct SqliteBroker {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBroker")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Opens the file, sets WAL and the durability, and creates what is missing.
fn setup(config: &SqliteConfig) -> rusqlite::Result<Connection> {
    let conn = Connection::open(&config.path)?;
    conn.busy_timeout(config.busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match config.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.execute_batch(SCHEMA)?;
    // Files made before recovery counts (and fence expiry) existed get the columns; a fence
    // row from then counts as expired, which is safe: the next token is the time.
    add_column(&conn, "jobs", "recoveries", "INTEGER NOT NULL DEFAULT 0")?;
    add_column(&conn, "fences", "expires_at", "REAL NOT NULL DEFAULT 0")?;
    conn.execute_batch("CREATE INDEX IF NOT EXISTS fences_expiry ON fences(expires_at);")?;
    Ok(conn)
}

/// Adds `column` to `table` unless it is there (another process may add it at the same time).
fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> rusqlite::Result<()> {
    let has = |conn: &Connection| -> rusqlite::Result<bool> {
        conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists([table, column])
    };
    if has(conn)? {
        return Ok(());
    }
    match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}")) {
        Err(e) if !has(conn)? => Err(e),
        _ => Ok(()),
    }
}

impl SqliteBroker {
    /// Opens (creating if needed) the file at `path` with default settings.
    ///
    /// # Errors
    /// The file cannot be opened or is not a database.
    pub async fn open(path: impl AsRef<Path>) -> BrokerResult<Self> {
        Self::open_with(SqliteConfig::new(path)).await
    }

    /// Opens (creating if needed) the file with `config`.
    ///
    /// # Errors
    /// The file cannot be opened or is not a database.
    pub async fn open_with(config: SqliteConfig) -> BrokerResult<Self> {
        let path = config.path.clone();
        let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
            // Switching a fresh file to WAL and creating the tables take locks that SQLite
            // does not wait for with the busy handler when another connection is doing the
            // same (processes started together on a new file): retry until the busy timeout.
            let deadline = Instant::now() + config.busy_timeout;
            loop {
                match setup(&config) {
                    Err(e)
                        if Instant::now() < deadline
                            && matches!(
                                e.sqlite_error_code(),
                                Some(
                                    rusqlite::ErrorCode::DatabaseBusy
                                        | rusqlite::ErrorCode::DatabaseLocked
                                )
                            ) =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    done => return done,
                }
            }
        })
        .await
        .map_err(|e| BrokerError::Config(format!("opening sqlite: {e}")))?
        .map_err(db_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                pushed: Notify::new(),
                path,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Wakes this process's waiting fetches: jobs were pushed or moved onto a queue.
    pub(crate) fn notify_pushed(&self) {
        self.inner.pushed.notify_waiters();
    }

    /// Runs `f` on the connection in the blocking pool.
    pub(crate) async fn with<T, F>(&self, f: F) -> BrokerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| BrokerError::Command(Box::new(e)))?
        .map_err(db_err)
    }

    /// Runs `f` in one write transaction.
    pub(crate) async fn write<T, F>(&self, f: F) -> BrokerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}
