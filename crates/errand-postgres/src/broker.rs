//! [`PostgresBroker`]: a connection pool, the schema's name, and the listener that wakes
//! waiting fetches when a job is pushed (LISTEN/NOTIFY), from this process or any other.

use crate::config::PostgresConfig;
use crate::schema::{migrate, quote_ident};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use errand_core::BrokerError;
use errand_core::broker::BrokerResult;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

/// The PostgreSQL backend. Cheap to clone; clones share the pool and the listener.
#[derive(Clone)]
pub struct PostgresBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub pool: Pool,
    /// Connections whose commits do not wait for the WAL flush, for fetches and acks (see
    /// [`PostgresConfig::durable_fetch`]); None when every step is to wait.
    pub relaxed: Option<Pool>,
    /// The schema's quoted name, for SQL text.
    pub s: String,
    /// The NOTIFY channel pushes signal on, quoted (for `NOTIFY`/`LISTEN`).
    pub channel: String,
    /// The same channel's name unquoted (for `pg_notify`).
    pub channel_name: String,
    /// Woken on every notification (and by this process's own pushes).
    pub pushed: Notify,
    /// Per queue: the highest position this broker has fetched, and when a fetch last
    /// started from the front (`queue::fetch_once`).
    pub fetch_hints: std::sync::Mutex<std::collections::HashMap<String, (i64, std::time::Instant)>>,
    /// A push committed and other processes are still to be told (`PostgresBroker::wake_fleet`).
    pub wake_wanted: AtomicBool,
    /// A task is sending the fleet's wake-ups.
    pub waking: AtomicBool,
    /// How long finished rows are kept, in seconds (None: deleted by the ack).
    pub keep_finished: Option<f64>,
    /// Started by the first fetch: a process that only pushes (a web server) holds no
    /// listening connection and is sent no notifications.
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    listen_config: tokio_postgres::Config,
    /// This broker's mark on its own wake-ups, which its listener skips (its own fetches
    /// were woken directly).
    wake_mark: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut l) = self.listener.lock()
            && let Some(task) = l.take()
        {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PostgresBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBroker")
            .field("schema", &self.inner.s)
            .finish_non_exhaustive()
    }
}

/// A pool or driver failure as a [`BrokerError`]: a lost or refused connection, a server
/// shutting down or a serialization conflict is worth retrying; anything else is a command
/// error.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> BrokerError {
    use tokio_postgres::error::SqlState;
    let retry = e.is_closed()
        || e.code().is_some_and(|c| {
            [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::TOO_MANY_CONNECTIONS,
            ]
            .contains(c)
        })
        || std::error::Error::source(&e).is_some_and(|c| c.is::<std::io::Error>());
    if retry {
        BrokerError::Connection(Box::new(e))
    } else {
        BrokerError::Command(Box::new(e))
    }
}

pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> BrokerError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => BrokerError::Connection(Box::new(other)),
    }
}

impl PostgresBroker {
    /// Connects to `url` (`postgres://user:password@host:port/db`) with default settings.
    ///
    /// # Errors
    /// A bad URL, an unreachable server, or a failed migration.
    pub async fn connect(url: &str) -> BrokerResult<Self> {
        Self::connect_with(PostgresConfig::new(url)).await
    }

    /// Connects with `config`: applies missing migrations (unless turned off), opens the pool
    /// and starts the listener.
    ///
    /// # Errors
    /// A bad URL, an unreachable server, or a failed migration.
    pub async fn connect_with(config: PostgresConfig) -> BrokerResult<Self> {
        let pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| BrokerError::Config(format!("postgres url: {e}")))?;
        if config.migrate {
            let (mut client, conn) = pg.connect(NoTls).await.map_err(pg_err)?;
            let driver = tokio::spawn(conn);
            let applied = migrate(&mut client, &config.schema).await.map_err(pg_err)?;
            drop(client);
            let _ = driver.await;
            if applied > 0 {
                tracing::info!(applied, schema = %config.schema, "postgres migrations applied");
            }
        }
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .build()
            .map_err(|e| BrokerError::Config(format!("postgres pool: {e}")))?;
        let relaxed = if config.durable_fetch {
            None
        } else {
            let mut relaxed = pg.clone();
            let options = match pg.get_options() {
                Some(o) if !o.is_empty() => format!("{o} -c synchronous_commit=off"),
                _ => "-c synchronous_commit=off".to_string(),
            };
            relaxed.options(&options);
            let manager = Manager::from_config(
                relaxed,
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Some(
                Pool::builder(manager)
                    .max_size(config.pool_size.clamp(1, 4))
                    .build()
                    .map_err(|e| BrokerError::Config(format!("postgres pool: {e}")))?,
            )
        };
        let inner = Arc::new(Inner {
            pool,
            relaxed,
            s: quote_ident(&config.schema),
            channel: quote_ident(&format!("errand:{}", config.schema)),
            channel_name: format!("errand:{}", config.schema),
            pushed: Notify::new(),
            fetch_hints: std::sync::Mutex::default(),
            wake_wanted: AtomicBool::new(false),
            waking: AtomicBool::new(false),
            keep_finished: config.keep_finished.map(|d| d.as_secs_f64()),
            listener: std::sync::Mutex::new(None),
            listen_config: pg.clone(),
            wake_mark: {
                static BROKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = BROKERS.fetch_add(1, Ordering::Relaxed);
                format!("{}:{n}", std::process::id())
            },
        });
        let broker = Self { inner };
        // Fails here, not at the first push, when the server is unreachable.
        let _ = broker.client().await?;
        Ok(broker)
    }

    /// Pushes `jobs` inside `tx`, the application's own transaction on this broker's database
    /// (`errand::Client::push_pg_tx` builds the payloads and calls this): they exist if and only
    /// if `tx` commits, and the NOTIFY that wakes idle workers is delivered at that commit.
    ///
    /// # Errors
    /// A failed write (the transaction is then to be rolled back, as after any failed
    /// statement).
    pub async fn push_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        jobs: &[errand_core::broker::Enqueue],
        scheduled: &[errand_core::broker::ScheduledJob],
    ) -> BrokerResult<()> {
        let s = &self.inner.s;
        crate::queue::enqueue(tx, s, jobs).await.map_err(pg_err)?;
        for j in scheduled {
            crate::queue::add_member(tx, s, crate::schema::state::SCHEDULE, j.at, &j.payload)
                .await
                .map_err(pg_err)?;
        }
        if !jobs.is_empty() {
            // New rows are past every fetch hint: a wake-up that keeps them.
            crate::queue::notify_back(tx, &self.inner.channel)
                .await
                .map_err(pg_err)?;
        }
        Ok(())
    }

    pub(crate) async fn client(&self) -> BrokerResult<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(pool_err)
    }

    /// A connection for fetches and acks: one whose commits do not wait for the WAL flush,
    /// unless [`PostgresConfig::durable_fetch`] is on.
    pub(crate) async fn fetch_client(&self) -> BrokerResult<deadpool_postgres::Object> {
        match &self.inner.relaxed {
            Some(pool) => pool.get().await.map_err(pool_err),
            None => self.client().await,
        }
    }

    /// Wakes this process's waiting fetches after jobs were put at the front of a queue (or
    /// moved by an operator), dropping the fetch hints so those jobs come next; the listener
    /// does the same for other processes' notifications.
    pub(crate) fn notify_pushed(&self) {
        self.drop_fetch_hints();
        self.inner.pushed.notify_waiters();
    }

    /// Wakes this process's waiting fetches after jobs were added at the back of a queue:
    /// the fetch hints stay, as the new rows are past them.
    pub(crate) fn wake_local(&self) {
        self.inner.pushed.notify_waiters();
    }

    fn drop_fetch_hints(&self) {
        if let Ok(mut hints) = self.inner.fetch_hints.lock() {
            hints.clear();
        }
    }

    /// Tells the fleet's idle fetches that jobs were pushed: `NOTIFY` on a connection of its
    /// own, after the push committed, not inside the push. A `NOTIFY` inside a transaction
    /// holds a lock that every notifying commit in the database queues for, until its WAL
    /// flush is done; in the push it made pushes wait on each other and put a 25–45 ms p99 on
    /// job latency at 1,000 jobs/s (5–8 ms without). Wake-ups coalesce: while one is being
    /// sent, later pushes only raise a flag, and one more `NOTIFY` covers them all. Should
    /// this process die between a commit and its wake-up, idle workers find the job at their
    /// next safety poll (5 s).
    pub(crate) fn wake_fleet(&self) {
        let inner = &self.inner;
        inner.wake_wanted.store(true, Ordering::SeqCst);
        if inner.waking.swap(true, Ordering::SeqCst) {
            return; // the running sender sees the flag
        }
        let broker = self.clone();
        tokio::spawn(async move {
            let inner = &broker.inner;
            loop {
                if inner.wake_wanted.swap(false, Ordering::SeqCst) {
                    if let Err(e) = broker.send_wake().await {
                        tracing::debug!(error = %e, "push wake-up not sent; idle workers poll");
                    }
                    continue;
                }
                inner.waking.store(false, Ordering::SeqCst);
                // A push between the look and the store found the sender still running.
                if !inner.wake_wanted.load(Ordering::SeqCst)
                    || inner.waking.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        });
    }

    /// Starts the listener unless it runs (fetches call this first).
    pub(crate) fn listen(&self) {
        let Ok(mut l) = self.inner.listener.lock() else {
            return;
        };
        if l.is_none() {
            *l = Some(tokio::spawn(listen(
                self.inner.listen_config.clone(),
                Arc::downgrade(&self.inner),
            )));
        }
    }

    async fn send_wake(&self) -> BrokerResult<()> {
        let c = self.fetch_client().await?;
        let stmt = c
            .prepare_cached("SELECT pg_notify($1, $2)")
            .await
            .map_err(pg_err)?;
        c.execute(&stmt, &[&self.inner.channel_name, &self.inner.wake_mark])
            .await
            .map_err(pg_err)?;
        Ok(())
    }
}

/// Holds a connection that LISTENs on the push channel and wakes waiting fetches on each
/// notification; reconnects (with a pause) when the connection is lost, and wakes every fetch
/// then too, so none waits on a notification that went with the old connection.
async fn listen(pg: tokio_postgres::Config, inner: std::sync::Weak<Inner>) {
    loop {
        let Some(channel) = inner.upgrade().map(|i| i.channel.clone()) else {
            return;
        };
        match pg.connect(NoTls).await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = futures::channel::mpsc::unbounded();
                let stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                let forward = tokio::spawn(stream.map(Ok).forward(tx));
                if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
                    tracing::warn!(error = %e, "postgres LISTEN failed; retrying");
                } else {
                    // A push that committed before the LISTEN took effect sent its wake-up
                    // to nobody: every fetch looks again now.
                    if let Some(i) = inner.upgrade() {
                        i.pushed.notify_waiters();
                    }
                    while let Some(Ok(message)) = rx.next().await {
                        let Some(inner) = inner.upgrade() else {
                            return;
                        };
                        if let AsyncMessage::Notification(n) = message
                            && n.payload() != inner.wake_mark
                        {
                            if n.payload() == crate::queue::FRONT
                                && let Ok(mut hints) = inner.fetch_hints.lock()
                            {
                                hints.clear();
                            }
                            inner.pushed.notify_waiters();
                        }
                    }
                }
                forward.abort();
                tracing::warn!("postgres listener connection lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "postgres listener cannot connect; retrying"),
        }
        match inner.upgrade() {
            Some(i) => i.pushed.notify_waiters(),
            None => return,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
