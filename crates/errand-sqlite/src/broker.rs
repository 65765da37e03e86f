//! [`SqliteBroker`]: the broker contract on one SQLite file.

use crate::schema::{SCHEMA, member_hash, state};
use async_trait::async_trait;
use errand_core::admin::ClassMetrics;
use errand_core::broker::{
    Broker, BrokerResult, DeadLimits, Enqueue, FetchRequest, Fetched, Heartbeat, LeaseGrant,
    LeaseRequest, OnceClaim, RateKind, RemoteSignal, RescuePolicy, Scheduled, Settle,
};
use errand_core::{BrokerError, Payload, WireProfile};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How many due jobs one promotion transaction moves.
const PROMOTE_BATCH: i64 = 500;
/// How often a waiting fetch looks for jobs pushed by other processes.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(5);

/// What a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous = FULL`: a committed push or transition survives power loss.
    #[default]
    Full,
    /// `synchronous = NORMAL`: survives a process crash (SIGKILL, OOM) but the last commits may
    /// be lost on power loss; several times faster.
    Normal,
}

/// Settings for [`SqliteBroker::open_with`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    path: PathBuf,
    durability: Durability,
    busy_timeout: Duration,
}

impl SqliteConfig {
    /// The file at `path` (created if missing).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            durability: Durability::default(),
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// What a commit survives. Defaults to [`Durability::Full`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long to wait for another process's write lock before failing. Defaults to 5 s.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
}

/// Processed and failed counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteStats {
    /// Jobs executed.
    pub processed: u64,
    /// Jobs failed.
    pub failed: u64,
}

/// An ack waiting for the next group commit: the job's row, its owner, and who to tell.
type PendingAck = (
    i64,
    String,
    tokio::sync::oneshot::Sender<Result<bool, AckError>>,
);

/// A failed group commit, told to each of its callers: whether retrying may help, and why.
type AckError = (bool, String);

struct Inner {
    conn: Mutex<Connection>,
    /// Acks waiting to be committed together (see [`SqliteBroker::ack`]).
    acks: Mutex<Vec<PendingAck>>,
    /// Wakes waiting fetches of this process when it pushes or moves jobs to a queue.
    pushed: Notify,
    path: PathBuf,
}

/// The SQLite backend. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct SqliteBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBroker")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn db_err(e: rusqlite::Error) -> BrokerError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    match e.sqlite_error_code() {
        // Another process held the write lock past the busy timeout: worth retrying.
        Some(DatabaseBusy | DatabaseLocked) => BrokerError::Connection(Box::new(e)),
        _ => BrokerError::Command(Box::new(e)),
    }
}

fn set_state(name: &str) -> Option<i64> {
    match name {
        "schedule" => Some(state::SCHEDULE),
        "retry" => Some(state::RETRY),
        "dead" => Some(state::DEAD),
        _ => None,
    }
}

pub(crate) fn now() -> f64 {
    errand_core::now()
}

/// Reserves `n` consecutive queue positions after every one handed out so far.
fn next_seq(tx: &Transaction<'_>, n: i64) -> rusqlite::Result<i64> {
    let last: i64 = tx.query_row(
        "INSERT INTO counters(name, value) VALUES ('seq', ?1)
         ON CONFLICT(name) DO UPDATE SET value = value + ?1 RETURNING value",
        [n],
        |r| r.get(0),
    )?;
    Ok(last - n + 1)
}

/// Adds a member to a set, replacing an equal member (sets hold each payload once, as Redis
/// sorted sets do).
fn add_member(tx: &Transaction<'_>, set: i64, score: f64, payload: &str) -> rusqlite::Result<()> {
    let member = member_hash(payload);
    tx.execute(
        "DELETE FROM jobs WHERE state = ?1 AND member = ?2 AND payload = ?3",
        params![set, member, payload],
    )?;
    tx.execute(
        "INSERT INTO jobs(state, queue, score, member, payload) VALUES (?1, '', ?2, ?3, ?4)",
        params![set, score, member, payload],
    )?;
    Ok(())
}

/// Adds `payload` to the dead set at `now`, then trims the set by age and size.
pub(crate) fn bury(
    tx: &Transaction<'_>,
    payload: &str,
    now: f64,
    limits: &DeadLimits,
) -> rusqlite::Result<()> {
    add_member(tx, state::DEAD, now, payload)?;
    tx.execute(
        "DELETE FROM jobs WHERE state = ?1 AND score < ?2",
        params![state::DEAD, now - limits.max_age.as_secs_f64()],
    )?;
    tx.execute(
        "DELETE FROM jobs WHERE state = ?1 AND id NOT IN (
             SELECT id FROM jobs WHERE state = ?1
             ORDER BY score DESC, payload DESC LIMIT ?2)",
        params![state::DEAD, limits.max_jobs as i64],
    )?;
    Ok(())
}

/// Pushes `jobs` onto the newest end of their queues and registers the queue names.
pub(crate) fn enqueue(tx: &Transaction<'_>, jobs: &[Enqueue]) -> rusqlite::Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let first = next_seq(tx, jobs.len() as i64)?;
    let mut insert =
        tx.prepare_cached("INSERT INTO jobs(state, queue, seq, payload) VALUES (?1, ?2, ?3, ?4)")?;
    let mut queue = tx.prepare_cached("INSERT OR IGNORE INTO queues(name) VALUES (?1)")?;
    let mut last_queue: Option<&str> = None;
    for (i, j) in jobs.iter().enumerate() {
        insert.execute(params![state::QUEUED, j.queue, first + i as i64, j.payload])?;
        if last_queue != Some(j.queue.as_str()) {
            queue.execute([&j.queue])?;
            last_queue = Some(&j.queue);
        }
    }
    Ok(())
}

/// Puts `owner`'s in-flight jobs back at the consuming end of their queues, the oldest fetched
/// first. When recovering a dead process (`poison` given), each job's recovery count goes up
/// and a job reaching the limit is buried as a poison pill instead. Returns how many moved.
fn requeue_owned(
    tx: &Transaction<'_>,
    owner: &str,
    poison: Option<&RescuePolicy>,
) -> rusqlite::Result<usize> {
    let held: Vec<(i64, String, i64, String)> = tx
        .prepare(
            "SELECT id, queue, recoveries, payload FROM jobs WHERE owner = ?1 AND state = ?2
             ORDER BY score DESC, id DESC",
        )?
        .query_map(params![owner, state::IN_FLIGHT], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, queue, recoveries, payload) in &held {
        if let Some(policy) = poison {
            let count = recoveries + 1;
            if count >= i64::from(policy.max_recoveries.max(1)) {
                let at = now();
                if let Some(entry) = errand_core::broker::poison_entry(
                    payload,
                    count.min(i64::from(u32::MAX)) as u32,
                    at,
                    policy.profile,
                ) {
                    tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
                    bury(tx, &entry, at, &policy.dead_limits)?;
                    tracing::error!(
                        recoveries = count,
                        "poison pill: a job killed its worker repeatedly; moved to the dead set"
                    );
                    continue;
                }
            }
            tx.execute(
                "UPDATE jobs SET recoveries = ?2 WHERE id = ?1",
                params![id, count],
            )?;
        }
        // One before the current front of the queue: the last one moved (the oldest fetched)
        // ends up first.
        let front: Option<i64> = tx.query_row(
            "SELECT MIN(seq) FROM jobs WHERE state = ?1 AND queue = ?2",
            params![state::QUEUED, queue],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE jobs SET state = ?1, owner = NULL, score = 0, seq = ?2 WHERE id = ?3",
            params![state::QUEUED, front.unwrap_or(1) - 1, id],
        )?;
    }
    Ok(held.len())
}

/// Commits pending acks in groups until none are left (runs in the blocking pool).
fn commit_acks(inner: &Inner) {
    loop {
        let batch = std::mem::take(&mut *inner.acks.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| -> rusqlite::Result<Vec<bool>> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut held = Vec::with_capacity(batch.len());
            {
                let mut delete = tx.prepare_cached(
                    "DELETE FROM jobs WHERE id = ?1 AND state = ?2 AND owner = ?3",
                )?;
                for (id, owner, _) in &batch {
                    held.push(delete.execute(params![id, state::IN_FLIGHT, owner])? == 1);
                }
            }
            tx.commit()?;
            Ok(held)
        })();
        drop(conn);
        match result {
            Ok(held) => {
                for ((_, _, reply), ok) in batch.into_iter().zip(held) {
                    let _ = reply.send(Ok(ok));
                }
            }
            Err(e) => {
                let why = e.to_string();
                let retryable = db_err(e).is_connection_error();
                for (_, _, reply) in batch {
                    let _ = reply.send(Err((retryable, why.clone())));
                }
            }
        }
    }
}

/// The processed and failed counters named with `suffix` (`""` for the totals, `":<date>"` for
/// one UTC day), zero when nothing was recorded.
pub(crate) fn read_stats(conn: &Connection, suffix: &str) -> rusqlite::Result<SqliteStats> {
    let mut get = conn.prepare_cached("SELECT value FROM stats WHERE name = ?1")?;
    let mut value = |name: String| -> rusqlite::Result<u64> {
        Ok(get
            .query_row([name], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64)
    };
    Ok(SqliteStats {
        processed: value(format!("processed{suffix}"))?,
        failed: value(format!("failed{suffix}"))?,
    })
}

fn lease(id: i64, identity: &str) -> String {
    format!("{id}|{identity}")
}

fn parse_lease(lease: &str) -> Option<(i64, &str)> {
    let (id, owner) = lease.split_once('|')?;
    Some((id.parse().ok()?, owner))
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
    // Files made before recovery counts existed get the column.
    let has_recoveries: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'recoveries'")?
        .exists([])?;
    if !has_recoveries
        && let Err(e) =
            conn.execute_batch("ALTER TABLE jobs ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0")
    {
        // Another process may have added it between the look and the change.
        let added = conn
            .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'recoveries'")?
            .exists([])?;
        if !added {
            return Err(e);
        }
    }
    Ok(conn)
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
                acks: Mutex::new(Vec::new()),
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

    /// The jobs waiting in queue `name`, the next to be fetched first.
    ///
    /// # Errors
    /// A database error.
    pub async fn queue(&self, name: &str) -> BrokerResult<Vec<String>> {
        let name = name.to_string();
        self.with(move |c| {
            c.prepare("SELECT payload FROM jobs WHERE state = ?1 AND queue = ?2 ORDER BY seq")?
                .query_map(params![state::QUEUED, name], |r| r.get(0))?
                .collect()
        })
        .await
    }

    /// The number of jobs waiting in queue `name`.
    ///
    /// # Errors
    /// A database error.
    pub async fn queue_len(&self, name: &str) -> BrokerResult<usize> {
        let name = name.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM jobs WHERE state = ?1 AND queue = ?2",
                params![state::QUEUED, name],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n as usize)
    }

    /// Every queue name pushed or promoted to, sorted.
    ///
    /// # Errors
    /// A database error.
    pub async fn known_queues(&self) -> BrokerResult<Vec<String>> {
        self.with(|c| {
            c.prepare("SELECT name FROM queues ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
    }

    /// Set `name` (`retry`, `schedule` or `dead`) as `(score, payload)`, lowest score first.
    ///
    /// # Errors
    /// A database error; an unknown set name is empty.
    pub async fn set(&self, name: &str) -> BrokerResult<Vec<(f64, String)>> {
        let Some(set) = set_state(name) else {
            return Ok(Vec::new());
        };
        self.with(move |c| {
            c.prepare("SELECT score, payload FROM jobs WHERE state = ?1 ORDER BY score, payload")?
                .query_map([set], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }

    /// The jobs `identity` holds in flight from `queue`, oldest fetched first.
    ///
    /// # Errors
    /// A database error.
    pub async fn in_flight(&self, identity: &str, queue: &str) -> BrokerResult<Vec<String>> {
        let (identity, queue) = (identity.to_string(), queue.to_string());
        self.with(move |c| {
            c.prepare(
                "SELECT payload FROM jobs WHERE state = ?1 AND owner = ?2 AND queue = ?3
                 ORDER BY score, id",
            )?
            .query_map(params![state::IN_FLIGHT, identity, queue], |r| r.get(0))?
            .collect()
        })
        .await
    }

    async fn stats_named(&self, suffix: String) -> BrokerResult<SqliteStats> {
        self.with(move |c| read_stats(c, &suffix)).await
    }

    /// The total processed and failed counters.
    ///
    /// # Errors
    /// A database error.
    pub async fn stats(&self) -> BrokerResult<SqliteStats> {
        self.stats_named(String::new()).await
    }

    /// The counters of one UTC day (`YYYY-MM-DD`).
    ///
    /// # Errors
    /// A database error.
    pub async fn daily_stats(&self, date: &str) -> BrokerResult<SqliteStats> {
        self.stats_named(format!(":{date}")).await
    }

    /// Queues remote signal `name` (`TSTP`, `TERM`, `TTIN`) for process `identity`; it acts
    /// on it at its next heartbeat.
    ///
    /// # Errors
    /// A database error.
    pub async fn push_signal(&self, identity: &str, name: &str) -> BrokerResult<()> {
        let (identity, name) = (identity.to_string(), name.to_string());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO signals(identity, name) VALUES (?1, ?2)",
                params![identity, name],
            )?;
            Ok(())
        })
        .await
    }

    /// Whether any of `queues` has a job waiting (a read; takes no write lock).
    async fn has_queued(&self, queues: Vec<String>) -> BrokerResult<bool> {
        self.with(move |c| {
            let mut exists = c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = ?1 AND queue = ?2)",
            )?;
            for q in &queues {
                if exists.query_row(params![state::QUEUED, q], |r| r.get::<_, bool>(0))? {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    fn fetch_once(
        tx: &Transaction<'_>,
        identity: &str,
        queues: &[String],
        max: usize,
    ) -> rusqlite::Result<Vec<Fetched>> {
        let mut out = Vec::new();
        let mut select = tx.prepare_cached(
            "SELECT id, payload FROM jobs WHERE state = ?1 AND queue = ?2 ORDER BY seq LIMIT ?3",
        )?;
        let mut take =
            tx.prepare_cached("UPDATE jobs SET state = ?1, owner = ?2, score = ?3 WHERE id = ?4")?;
        for queue in queues {
            let left = max - out.len();
            if left == 0 {
                break;
            }
            let rows: Vec<(i64, String)> = select
                .query_map(params![state::QUEUED, queue, left as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            if rows.is_empty() {
                continue;
            }
            let first = next_seq(tx, rows.len() as i64)?;
            for (i, (id, raw)) in rows.into_iter().enumerate() {
                take.execute(params![
                    state::IN_FLIGHT,
                    identity,
                    (first + i as i64) as f64,
                    id
                ])?;
                // The fetch order doubles as the fencing token: strictly increasing.
                out.push(Fetched {
                    queue: queue.clone(),
                    raw,
                    lease: lease(id, identity),
                    token: (first + i as i64) as u64,
                });
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Broker for SqliteBroker {
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let jobs = jobs.to_vec();
        self.write(move |tx| enqueue(tx, &jobs)).await?;
        self.notify_pushed();
        Ok(())
    }

    async fn schedule(&self, jobs: &[Scheduled]) -> BrokerResult<()> {
        let jobs = jobs.to_vec();
        self.write(move |tx| {
            for j in &jobs {
                add_member(tx, state::SCHEDULE, j.at, &j.payload)?;
            }
            Ok(())
        })
        .await
    }

    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()> {
        let identity = identity.to_string();
        let info = serde_json::json!({ "queues": queues }).to_string();
        self.write(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO processes(identity, info) VALUES (?1, ?2)",
                params![identity, info],
            )?;
            Ok(())
        })
        .await
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        if req.queues.is_empty() || req.max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + req.wait;
        let mut looked = false;
        loop {
            // Listen before looking, so a push between the look and the wait is not missed.
            let pushed = self.inner.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            // After a wait, a cheap read (no write lock) decides whether a fetch is worth it,
            // so idle processes polling for each other's pushes do not contend for the lock.
            if !looked || self.has_queued(req.queues.to_vec()).await? {
                let (identity, queues, max) =
                    (req.identity.to_string(), req.queues.to_vec(), req.max);
                let jobs = self
                    .write(move |tx| Self::fetch_once(tx, &identity, &queues, max))
                    .await?;
                if !jobs.is_empty() {
                    return Ok(jobs);
                }
            }
            looked = true;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = pushed => {}
                _ = tokio::time::sleep(left.min(CROSS_PROCESS_POLL)) => {}
            }
        }
    }

    /// Acks are committed in groups: every ack that arrives while a commit is under way joins
    /// the next one, so a busy server pays one transaction (and one fsync) for many jobs, and an
    /// idle one still commits each ack at once. Each caller gets its own answer.
    async fn ack(&self, job: &Fetched) -> BrokerResult<bool> {
        let Some((id, owner)) = parse_lease(&job.lease) else {
            return Ok(false);
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = {
            let mut pending = self.inner.acks.lock().unwrap_or_else(|p| p.into_inner());
            pending.push((id, owner.to_string(), tx));
            pending.len() == 1
        };
        if first {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || commit_acks(&inner));
        }
        match rx.await.map_err(|e| BrokerError::Command(Box::new(e)))? {
            Ok(held) => Ok(held),
            Err((true, why)) => Err(BrokerError::Connection(why.into())),
            Err((false, why)) => Err(BrokerError::Command(why.into())),
        }
    }

    async fn settle(&self, job: &Fetched, to: Settle) -> BrokerResult<bool> {
        let Some((id, owner)) = parse_lease(&job.lease) else {
            return Ok(false);
        };
        let owner = owner.to_string();
        self.write(move |tx| {
            let held = tx.execute(
                "DELETE FROM jobs WHERE id = ?1 AND state = ?2 AND owner = ?3",
                params![id, state::IN_FLIGHT, owner],
            )?;
            if held == 0 {
                return Ok(false);
            }
            match &to {
                Settle::Retry { payload, at } => add_member(tx, state::RETRY, *at, payload)?,
                Settle::Schedule { payload, at } => add_member(tx, state::SCHEDULE, *at, payload)?,
                Settle::Dead {
                    payload,
                    now,
                    limits,
                } => bury(tx, payload, *now, limits)?,
            }
            Ok(true)
        })
        .await
    }

    async fn requeue_in_flight(&self, identity: &str) -> BrokerResult<usize> {
        let identity = identity.to_string();
        let n = self
            .write(move |tx| requeue_owned(tx, &identity, None))
            .await?;
        if n > 0 {
            self.inner.pushed.notify_waiters();
        }
        Ok(n)
    }

    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>> {
        let owner = identity.to_string();
        let queues = queues.to_vec();
        self.with(move |conn| {
            let rows: Vec<(i64, String, String, f64)> = conn
                .prepare_cached(
                    "SELECT id, queue, payload, score FROM jobs WHERE owner = ?1 AND state = ?2
                     ORDER BY score, id",
                )?
                .query_map(params![owner, state::IN_FLIGHT], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows
                .into_iter()
                .filter(|(_, q, _, _)| queues.contains(q))
                .map(|(id, queue, raw, token)| Fetched {
                    queue,
                    raw,
                    lease: lease(id, &owner),
                    token: token as u64,
                })
                .collect())
        })
        .await
    }

    async fn release(&self, job: &Fetched) -> BrokerResult<bool> {
        let Some((id, owner)) = parse_lease(&job.lease) else {
            return Ok(false);
        };
        let (owner, queue) = (owner.to_string(), job.queue.clone());
        let released = self
            .write(move |tx| {
                let front: Option<i64> = tx.query_row(
                    "SELECT MIN(seq) FROM jobs WHERE state = ?1 AND queue = ?2",
                    params![state::QUEUED, queue],
                    |r| r.get(0),
                )?;
                let n = tx.execute(
                    "UPDATE jobs SET state = ?1, owner = NULL, score = 0, seq = ?2
                     WHERE id = ?3 AND state = ?4 AND owner = ?5",
                    params![
                        state::QUEUED,
                        front.unwrap_or(1) - 1,
                        id,
                        state::IN_FLIGHT,
                        owner
                    ],
                )?;
                Ok(n == 1)
            })
            .await?;
        if released {
            self.inner.pushed.notify_waiters();
        }
        Ok(released)
    }

    async fn now(&self) -> BrokerResult<f64> {
        Ok(now())
    }

    async fn promote_due(&self, now: f64, profile: WireProfile) -> BrokerResult<usize> {
        let mut moved = 0;
        for set in [state::RETRY, state::SCHEDULE] {
            loop {
                let n = self
                    .write(move |tx| {
                        let due: Vec<(i64, String)> = tx
                            .prepare_cached(
                                "SELECT id, payload FROM jobs WHERE state = ?1 AND score <= ?2
                                 ORDER BY score, payload LIMIT ?3",
                            )?
                            .query_map(params![set, now, PROMOTE_BATCH], |r| {
                                Ok((r.get(0)?, r.get(1)?))
                            })?
                            .collect::<Result<_, _>>()?;
                        let first = next_seq(tx, due.len() as i64)?;
                        for (i, (id, raw)) in due.iter().enumerate() {
                            let (queue, payload) = match Payload::parse(raw) {
                                Ok(mut p) => {
                                    p.stamp_enqueued(profile, now);
                                    (p.queue().to_string(), p.to_json())
                                }
                                // Unreadable entries go to `default` unchanged, where the
                                // worker files them in the dead set with the reason.
                                Err(_) => ("default".to_string(), raw.clone()),
                            };
                            tx.execute(
                                "UPDATE jobs SET state = ?1, queue = ?2, seq = ?3, score = 0,
                                 member = 0, payload = ?4 WHERE id = ?5",
                                params![state::QUEUED, queue, first + i as i64, payload, id],
                            )?;
                            tx.execute("INSERT OR IGNORE INTO queues(name) VALUES (?1)", [queue])?;
                        }
                        Ok(due.len())
                    })
                    .await?;
                moved += n;
                if (n as i64) < PROMOTE_BATCH {
                    break;
                }
            }
        }
        if moved > 0 {
            self.inner.pushed.notify_waiters();
        }
        Ok(moved)
    }

    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>> {
        let identity = beat.identity.to_string();
        let info = beat.info.to_string();
        let work: Vec<(String, String)> = beat
            .work
            .iter()
            .map(|w| (w.tid.clone(), w.json.clone()))
            .collect();
        let (busy, concurrency, at, quiet, rss) = (
            beat.busy as i64,
            beat.concurrency as i64,
            beat.beat,
            beat.quiet,
            beat.rss_kb as i64,
        );
        // Whole seconds, at least one, as Redis's EXPIRE does.
        let ttl = beat.ttl.as_secs().max(1) as f64;
        let (processed, failed) = (beat.processed as i64, beat.failed as i64);
        let date = errand_core::utc_date(at);
        let signal = self
            .write(move |tx| {
                if processed > 0 || failed > 0 {
                    let mut add = tx.prepare_cached(
                        "INSERT INTO stats(name, value) VALUES (?1, ?2)
                         ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    )?;
                    for (name, n) in [("processed", processed), ("failed", failed)] {
                        add.execute(params![name, n])?;
                        add.execute(params![format!("{name}:{date}"), n])?;
                    }
                }
                tx.execute("DELETE FROM work WHERE identity = ?1", [&identity])?;
                for (tid, json) in &work {
                    tx.execute(
                        "INSERT INTO work(identity, tid, json) VALUES (?1, ?2, ?3)",
                        params![identity, tid, json],
                    )?;
                }
                tx.execute(
                    "INSERT INTO processes(identity, info, beat, expires_at, busy, concurrency, quiet, rss_kb)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(identity) DO UPDATE SET info = excluded.info, beat = excluded.beat,
                       expires_at = excluded.expires_at, busy = excluded.busy,
                       concurrency = excluded.concurrency, quiet = excluded.quiet, rss_kb = excluded.rss_kb",
                    params![identity, info, at, now() + ttl, busy, concurrency, quiet, rss],
                )?;
                let signal: Option<(i64, String)> = tx
                    .query_row(
                        "SELECT id, name FROM signals WHERE identity = ?1 ORDER BY id LIMIT 1",
                        [&identity],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((id, _)) = &signal {
                    tx.execute("DELETE FROM signals WHERE id = ?1", [id])?;
                }
                Ok(signal.map(|(_, name)| name))
            })
            .await?;
        Ok(signal.as_deref().and_then(RemoteSignal::from_name))
    }

    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize> {
        let at = now();
        let policy = *policy;
        let rescued = self
            .write(move |tx| {
                tx.execute("DELETE FROM once_steps WHERE expires_at <= ?1", [at])?;
                tx.execute("DELETE FROM leases WHERE expires_at <= ?1", [at])?;
                let dead: Vec<String> = tx
                    .prepare(
                        "SELECT identity FROM processes WHERE expires_at IS NULL OR expires_at <= ?1",
                    )?
                    .query_map([at], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut total = Vec::new();
                for identity in dead {
                    let n = requeue_owned(tx, &identity, Some(&policy))?;
                    tx.execute("DELETE FROM processes WHERE identity = ?1", [&identity])?;
                    tx.execute("DELETE FROM work WHERE identity = ?1", [&identity])?;
                    if n > 0 {
                        total.push((identity, n));
                    }
                }
                Ok(total)
            })
            .await?;
        let mut n = 0;
        for (identity, jobs) in rescued {
            tracing::warn!(identity, jobs, "recovered in-flight jobs of a dead process");
            n += jobs;
        }
        if n > 0 {
            self.inner.pushed.notify_waiters();
        }
        Ok(n)
    }

    async fn unregister(&self, identity: &str) -> BrokerResult<()> {
        let identity = identity.to_string();
        self.write(move |tx| {
            tx.execute("DELETE FROM processes WHERE identity = ?1", [&identity])?;
            tx.execute("DELETE FROM work WHERE identity = ?1", [&identity])?;
            tx.execute("DELETE FROM signals WHERE identity = ?1", [&identity])?;
            Ok(())
        })
        .await
    }

    async fn once_claim(&self, key: &str, owner: &str, lease: Duration) -> BrokerResult<OnceClaim> {
        let (key, owner) = (key.to_string(), owner.to_string());
        let until = now() + lease.as_secs_f64();
        self.write(move |tx| {
            let held: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT owner, output FROM once_steps WHERE key = ?1 AND expires_at > ?2",
                    params![key, now()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match held {
                Some((_, Some(output))) => return Ok(OnceClaim::Done(output)),
                Some((holder, None)) if holder != owner => return Ok(OnceClaim::Busy),
                _ => {}
            }
            tx.execute(
                "INSERT INTO once_steps(key, owner, output, expires_at) VALUES (?1, ?2, NULL, ?3)
                 ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, output = NULL,
                   expires_at = excluded.expires_at",
                params![key, owner, until],
            )?;
            Ok(OnceClaim::Claimed)
        })
        .await
    }

    async fn once_renew(&self, key: &str, owner: &str, lease: Duration) -> BrokerResult<bool> {
        let (key, owner) = (key.to_string(), owner.to_string());
        let until = now() + lease.as_secs_f64();
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE once_steps SET expires_at = ?3
                 WHERE key = ?1 AND owner = ?2 AND output IS NULL AND expires_at > ?4",
                params![key, owner, until, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn once_complete(
        &self,
        key: &str,
        owner: &str,
        output: &str,
        keep: Duration,
    ) -> BrokerResult<bool> {
        let (key, owner, output) = (key.to_string(), owner.to_string(), output.to_string());
        let until = now() + keep.as_secs_f64();
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE once_steps SET output = ?3, expires_at = ?4
                 WHERE key = ?1 AND owner = ?2 AND output IS NULL AND expires_at > ?5",
                params![key, owner, output, until, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()> {
        let (key, owner) = (key.to_string(), owner.to_string());
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM once_steps WHERE key = ?1 AND owner = ?2 AND output IS NULL",
                params![key, owner],
            )?;
            Ok(())
        })
        .await
    }

    async fn lease_acquire(&self, req: LeaseRequest<'_>) -> BrokerResult<LeaseGrant> {
        let (key, holder) = (req.key.to_string(), req.holder.to_string());
        let (max, ttl, fence) = (i64::from(req.max), req.ttl.as_secs_f64(), req.fence);
        self.write(move |tx| {
            let at = now();
            tx.execute(
                "DELETE FROM leases WHERE key = ?1 AND expires_at <= ?2",
                params![key, at],
            )?;
            let mine: bool = tx
                .query_row(
                    "SELECT 1 FROM leases WHERE key = ?1 AND holder = ?2",
                    params![key, holder],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !mine {
                let (held, first): (i64, Option<String>) = tx.query_row(
                    "SELECT COUNT(*), (SELECT holder FROM leases WHERE key = ?1
                                       ORDER BY expires_at LIMIT 1)
                     FROM leases WHERE key = ?1",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if held >= max {
                    return Ok(LeaseGrant::Full {
                        holder: first.unwrap_or_default(),
                    });
                }
            }
            tx.execute(
                "INSERT INTO leases(key, holder, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key, holder) DO UPDATE SET expires_at = excluded.expires_at",
                params![key, holder, at + ttl],
            )?;
            let token: i64 = if fence {
                tx.query_row(
                    "INSERT INTO fences(key, last) VALUES (?1, 1)
                     ON CONFLICT(key) DO UPDATE SET last = last + 1 RETURNING last",
                    [&key],
                    |r| r.get(0),
                )?
            } else {
                0
            };
            Ok(LeaseGrant::Granted {
                token: token as u64,
            })
        })
        .await
    }

    async fn lease_renew(&self, key: &str, holder: &str, ttl: Duration) -> BrokerResult<bool> {
        let (key, holder, ttl) = (key.to_string(), holder.to_string(), ttl.as_secs_f64());
        self.write(move |tx| {
            let at = now();
            let n = tx.execute(
                "UPDATE leases SET expires_at = ?3
                 WHERE key = ?1 AND holder = ?2 AND expires_at > ?4",
                params![key, holder, at + ttl, at],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn lease_release(&self, key: &str, holder: &str) -> BrokerResult<bool> {
        let (key, holder) = (key.to_string(), holder.to_string());
        self.write(move |tx| {
            let n = tx.execute(
                "DELETE FROM leases WHERE key = ?1 AND holder = ?2 AND expires_at > ?3",
                params![key, holder, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn lease_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>> {
        let key = key.to_string();
        self.with(move |conn| {
            conn.prepare_cached(
                "SELECT holder, expires_at FROM leases WHERE key = ?1 AND expires_at > ?2
                 ORDER BY expires_at",
            )?
            .query_map(params![key, now()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
        .await
    }

    async fn rate_take(
        &self,
        key: &str,
        kind: RateKind,
        limit: u32,
        interval: Duration,
    ) -> BrokerResult<Option<Duration>> {
        let key = key.to_string();
        let (limit, interval) = (i64::from(limit), interval.as_secs_f64().max(0.001));
        self.write(move |tx| {
            let at = now();
            let wait = match kind {
                RateKind::Bucket => {
                    let slot = (at / interval).floor() as i64;
                    let count: i64 = tx
                        .query_row(
                            "SELECT count FROM rate_buckets WHERE key = ?1 AND slot = ?2",
                            params![key, slot],
                            |r| r.get(0),
                        )
                        .optional()?
                        .unwrap_or(0);
                    if count >= limit {
                        Some((slot + 1) as f64 * interval - at)
                    } else {
                        tx.execute(
                            "INSERT INTO rate_buckets(key, slot, count) VALUES (?1, ?2, ?3)
                             ON CONFLICT(key) DO UPDATE SET slot = excluded.slot,
                               count = excluded.count",
                            params![key, slot, count + 1],
                        )?;
                        None
                    }
                }
                RateKind::Window => {
                    tx.execute(
                        "DELETE FROM rate_uses WHERE key = ?1 AND at <= ?2",
                        params![key, at - interval],
                    )?;
                    let (count, oldest): (i64, Option<f64>) = tx.query_row(
                        "SELECT COUNT(*), MIN(at) FROM rate_uses WHERE key = ?1",
                        [&key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    if count >= limit {
                        Some(oldest.unwrap_or(at) + interval - at)
                    } else {
                        tx.execute(
                            "INSERT INTO rate_uses(key, at) VALUES (?1, ?2)",
                            params![key, at],
                        )?;
                        None
                    }
                }
            };
            Ok(wait.map(|w| Duration::from_secs_f64(w.max(0.001))))
        })
        .await
    }

    async fn limit_hit(&self, name: &str) -> BrokerResult<()> {
        let name = name.to_string();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO limit_hits(name, hits) VALUES (?1, 1)
                 ON CONFLICT(name) DO UPDATE SET hits = hits + 1",
                [&name],
            )?;
            Ok(())
        })
        .await
    }

    async fn limit_hits(&self) -> BrokerResult<Vec<(String, u64)>> {
        self.with(|conn| {
            conn.prepare_cached("SELECT name, hits FROM limit_hits ORDER BY name")?
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect()
        })
        .await
    }

    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool> {
        let now_ms = (now() * 1000.0) as i64;
        let until = now_ms + window.as_millis().max(1) as i64;
        self.write(move |tx| {
            let changed = tx.execute(
                "INSERT INTO counters(name, value) VALUES ('poll_until', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value WHERE value <= ?2",
                params![until, now_ms],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn process_count(&self) -> BrokerResult<usize> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM processes WHERE beat IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n as usize)
    }

    async fn paused_queues(&self) -> BrokerResult<Vec<String>> {
        self.with(|c| {
            c.prepare_cached("SELECT name FROM paused_queues ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
    }

    async fn record_metrics(&self, minute: i64, classes: &[ClassMetrics]) -> BrokerResult<()> {
        let classes = classes.to_vec();
        self.write(move |tx| crate::admin::add_metrics(tx, minute, &classes))
            .await
    }
}
