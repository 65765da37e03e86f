//! Opening the backend a command works on: an SQLite file (the default), a Redis server or a
//! PostgreSQL database.

use errand::broker::Broker;
use errand::postgres::PostgresBroker;
use errand::redis::{RedisBroker, RedisConfig};
use errand_sqlite::{SqliteBroker, SqliteConfig};
use std::path::Path;
use std::sync::Arc;

/// An opened backend.
#[derive(Clone)]
pub(crate) enum Backend {
    /// The embedded SQLite file.
    Sqlite(SqliteBroker),
    /// A Redis server.
    Redis(Box<RedisBroker>),
    /// A PostgreSQL database.
    Postgres(PostgresBroker),
}

impl Backend {
    /// Opens Redis at `redis` (under `namespace`, if given) when given, else PostgreSQL at
    /// `postgres` when given, else the SQLite file at `sqlite`. With `fresh`, starts from
    /// nothing: Errand's and Sidekiq's keys in the namespace are deleted (other keys in the
    /// database stay), Errand's PostgreSQL schema dropped and made again, the SQLite file (and
    /// its WAL) replaced.
    pub(crate) async fn open(
        sqlite: &Path,
        redis: Option<&str>,
        postgres: Option<&str>,
        namespace: Option<&str>,
        fresh: bool,
    ) -> anyhow::Result<Self> {
        if let (None, Some(url)) = (redis, postgres) {
            if fresh {
                let (client, conn) = errand::postgres::tokio_postgres::connect(
                    url,
                    errand::postgres::tokio_postgres::NoTls,
                )
                .await?;
                let driver = tokio::spawn(conn);
                client
                    .batch_execute("DROP SCHEMA IF EXISTS errand CASCADE")
                    .await?;
                drop(client);
                let _ = driver.await;
            }
            return Ok(Backend::Postgres(PostgresBroker::connect(url).await?));
        }
        if let Some(url) = redis {
            let mut config = RedisConfig::new(url);
            if let Some(ns) = namespace {
                config = config.namespace(ns);
            }
            let broker = RedisBroker::connect_with(config).await?;
            if fresh {
                broker.reset().await?;
            }
            return Ok(Backend::Redis(Box::new(broker)));
        }
        if fresh {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = sqlite.as_os_str().to_owned();
                p.push(suffix);
                match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
        }
        Ok(Backend::Sqlite(
            SqliteBroker::open_with(SqliteConfig::new(sqlite)).await?,
        ))
    }

    /// The backend's admin side, for the dashboard and the ops commands.
    pub(crate) fn admin(&self) -> Arc<dyn errand::admin::Admin> {
        match self {
            Backend::Sqlite(b) => Arc::new(b.clone()),
            Backend::Redis(b) => Arc::new((**b).clone()),
            Backend::Postgres(b) => Arc::new(b.clone()),
        }
    }

    /// Both sides, as the dashboard takes them.
    pub(crate) fn store(&self) -> Arc<dyn errand::admin::Store> {
        match self {
            Backend::Sqlite(b) => Arc::new(b.clone()),
            Backend::Redis(b) => Arc::new((**b).clone()),
            Backend::Postgres(b) => Arc::new(b.clone()),
        }
    }

    /// The backend as the library takes it.
    pub(crate) fn broker(&self) -> Arc<dyn Broker> {
        match self {
            Backend::Sqlite(b) => Arc::new(b.clone()),
            Backend::Redis(b) => Arc::new((**b).clone()),
            Backend::Postgres(b) => Arc::new(b.clone()),
        }
    }
}
