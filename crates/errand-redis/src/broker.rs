//! [`RedisBroker`]: the connection (a shared multiplexed connection, replaced after a refused
//! login, and one for blocking waits) and the key builder. Each topic of the contract is
//! implemented in its own module: `queue`, `fleet`, `coordination`, `admin`, `metrics`.

use crate::Keys;
use crate::config::RedisConfig;
use crate::error::{cmd_err, hung_up_at_once, tls_error};
use errand_core::BrokerError;
use errand_core::broker::BrokerResult;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Client, RedisError};
use std::time::Duration;
use tokio::sync::Mutex;

/// The Redis backend. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct RedisBroker {
    /// The server: the URL's, or the master the sentinels named last (replaced when they name
    /// another, see [`RedisBroker::fail`]).
    pub(crate) client: std::sync::Arc<std::sync::RwLock<Client>>,
    /// The sentinels' client, for a `redis+sentinel://` config.
    pub(crate) sentinel: Option<std::sync::Arc<Mutex<SentinelClient>>>,
    pub(crate) config: std::sync::Arc<RedisConfig>,
    /// The shared multiplexed connection; replaced when a login is refused (see
    /// [`RedisBroker::fail`]).
    pub(crate) conn: std::sync::Arc<std::sync::RwLock<ConnectionManager>>,
    /// When the last replacement connection was started, and whether one is being made now.
    pub(crate) relogin: std::sync::Arc<std::sync::Mutex<(Option<std::time::Instant>, bool)>>,
    /// Blocking waits (BLMOVE) hold a connection, so they get their own, made on first use.
    pub(crate) blocking: std::sync::Arc<Mutex<Option<MultiplexedConnection>>>,
    pub(crate) keys: Keys,
}

/// How many times in a row a lost master is asked for again (every half second).
const SENTINEL_ATTEMPTS: u32 = 120;

/// How long asking the sentinels for the master may take (each one tried in turn).
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(5);

/// The master `sentinel` names now, checked to say it is one.
async fn ask_sentinels(sentinel: &Mutex<SentinelClient>) -> BrokerResult<Client> {
    let mut sentinel = sentinel.lock().await;
    match tokio::time::timeout(SENTINEL_TIMEOUT, sentinel.async_get_client()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(BrokerError::Connection(
            format!("no master from the redis sentinels: {e}").into(),
        )),
        Err(_) => Err(BrokerError::Connection(
            format!("no master from the redis sentinels within {SENTINEL_TIMEOUT:?}").into(),
        )),
    }
}

/// `client`'s server URL without its password (for display).
fn display_url(client: &Client) -> String {
    let info = client.get_connection_info();
    let settings = info.redis_settings();
    let user = settings
        .username()
        .filter(|u| !u.is_empty())
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = settings.db();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("redis://{user}{host}:{port}/{db}"),
        redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("rediss://{user}{host}:{port}/{db}")
        }
        other => format!("redis+unix://{user}{other}?db={db}"),
    }
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// What to say when Redis may evict Errand's keys: any `maxmemory-policy` but `noeviction`
/// lets Redis delete keys under memory pressure, queues and in-flight hashes included, and the
/// jobs in them are gone. `None` for `noeviction`.
pub fn eviction_warning(policy: &str) -> Option<String> {
    (policy != "noeviction").then(|| {
        format!(
            "redis maxmemory-policy is {policy}: under memory pressure Redis deletes keys, \
             queues and in-flight jobs included, and those jobs are lost. Set \
             maxmemory-policy noeviction (writes then fail with OOM and are retried)"
        )
    })
}

impl RedisBroker {
    /// Connects to `url` with default settings.
    ///
    /// # Errors
    /// A bad URL or an unreachable server.
    pub async fn connect(url: &str) -> BrokerResult<Self> {
        Self::connect_with(RedisConfig::new(url)).await
    }

    /// Connects with `config`. The connection reconnects by itself with backoff.
    ///
    /// # Errors
    /// A bad URL or an unreachable server. At once, as [`BrokerError::Config`]: a refused
    /// login, a `rediss://` server whose certificate is not trusted or does not name the URL's
    /// host, and a server that hangs up on a plaintext `redis://` client (a TLS-only port).
    pub async fn connect_with(config: RedisConfig) -> BrokerResult<Self> {
        // rediss:// needs a process-wide rustls crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sentinel = config
            .sentinel_client()?
            .map(|s| std::sync::Arc::new(Mutex::new(s)));
        let client = match &sentinel {
            Some(sentinel) => ask_sentinels(sentinel).await?,
            None => config.client()?,
        };
        // One plain attempt first: a refused login (wrong password, disabled or unknown user)
        // is a configuration error, reported at once rather than after the connection
        // manager's retries. Other failures are left to the manager, which retries.
        let probe = AsyncConnectionConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        // So is a TLS handshake that fails on the certificate (an untrusted CA, a certificate for
        // another host), and a plaintext client on a TLS-only port (the server hangs up on it).
        let tls = matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        );
        let mut hung_up = 0;
        while let Err(e) = client
            .get_multiplexed_async_connection_with_config(&probe)
            .await
        {
            if e.kind() == redis::ErrorKind::AuthenticationFailed {
                return Err(BrokerError::Config(format!(
                    "redis login refused for {}: {e}",
                    display_url(&client)
                )));
            }
            if let Some(cert) = tls_error(&e) {
                return Err(BrokerError::Config(format!(
                    "redis TLS handshake with {} failed: {cert}",
                    display_url(&client)
                )));
            }
            if tls || !hung_up_at_once(&e) {
                break;
            }
            // Once more, in case the server was going down; twice is not a coincidence.
            hung_up += 1;
            if hung_up == 2 {
                return Err(BrokerError::Config(format!(
                    "redis server at {} hung up before answering ({e}): is this a TLS port? \
                     Use rediss:// for TLS",
                    display_url(&client)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let broker = Self::assemble(client, sentinel, std::sync::Arc::new(config)).await?;
        match broker.maxmemory_policy().await {
            Ok(Some(policy)) => {
                if let Some(warning) = eviction_warning(&policy) {
                    tracing::warn!(policy, url = %broker.display_url(), "{warning}");
                }
            }
            Ok(None) => {}
            // Not readable here (INFO refused to this user): nothing to warn about.
            Err(e) => tracing::debug!(error = %e, "could not read maxmemory-policy"),
        }
        Ok(broker)
    }

    /// A broker on `client` with a connection of its own (and, for a sentinel config, the
    /// sentinels' client given).
    pub(crate) async fn assemble(
        client: Client,
        sentinel: Option<std::sync::Arc<Mutex<SentinelClient>>>,
        config: std::sync::Arc<RedisConfig>,
    ) -> BrokerResult<Self> {
        let conn = client
            .get_connection_manager_with_config(config.manager(sentinel.is_some()))
            .await
            .map_err(cmd_err)?;
        Ok(Self {
            client: std::sync::Arc::new(std::sync::RwLock::new(client)),
            sentinel,
            keys: Keys::new(config.namespace.as_deref()),
            config,
            conn: std::sync::Arc::new(std::sync::RwLock::new(conn)),
            relogin: Default::default(),
            blocking: Default::default(),
        })
    }

    /// The current server's client (the master the sentinels named last, for a sentinel
    /// config).
    pub(crate) fn client(&self) -> Client {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server's `maxmemory-policy` (from `INFO memory`, which least-privilege users may
    /// run; `CONFIG GET` is refused to them). `None` when the server does not report it.
    ///
    /// # Errors
    /// A backend failure, or INFO refused.
    pub async fn maxmemory_policy(&self) -> BrokerResult<Option<String>> {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(info
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("maxmemory_policy:"))
            .map(str::to_string))
    }

    /// The key builder (namespace applied).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The server's URL as configured, without its password (for display).
    pub(crate) fn display_url(&self) -> String {
        display_url(&self.client())
    }

    /// A connection for commands outside the broker contract (admin tools, tests).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Maps a command's error, and starts a new connection in the background when the login
    /// was refused or the server has become a read-only replica. redis-rs's connection manager
    /// keeps a refused reconnect's error and never tries again by itself, so without this a
    /// server whose password was rotated (or whose user was disabled for a while) would never
    /// recover; and it keeps a working connection to a demoted master forever, so after a
    /// failover (the URL's name or a proxy now leading to the new master) every write would be
    /// refused with READONLY. With sentinels, a lost connection (the master died) and
    /// MASTERDOWN are reasons too: the new connection goes to the master the sentinels name
    /// then, and until the failover is over they name the old one, so it is asked again. At
    /// most one new connection is being made at a time, and one a second.
    pub(crate) fn fail(&self, e: RedisError) -> BrokerError {
        let lost = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown);
        if matches!(
            e.kind(),
            redis::ErrorKind::AuthenticationFailed
                | redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        ) || (lost && self.sentinel.is_some())
        {
            self.reconnect_soon();
        }
        cmd_err(e)
    }

    /// The same as [`RedisBroker::fail`] for an error already mapped (a fetch's timeout):
    /// with sentinels, a lost connection starts a new one.
    pub(crate) fn lost(&self) {
        if self.sentinel.is_some() {
            self.reconnect_soon();
        }
    }

    fn reconnect_soon(&self) {
        {
            let mut relogin = self.relogin.lock().unwrap_or_else(|p| p.into_inner());
            let (last, running) = &mut *relogin;
            if *running || last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(std::time::Instant::now());
            *running = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // With sentinels, a failover takes the sentinels some seconds to agree on; until
            // then they name the dead master. Asked again every half second (for up to a
            // minute), the new master is found as soon as they name it, not on some later
            // command's error.
            let mut attempts = 0;
            while let Err(e) = this.reconnect().await {
                attempts += 1;
                if this.sentinel.is_none() || attempts == SENTINEL_ATTEMPTS {
                    tracing::warn!(error = %e, "a new redis connection failed; will try again");
                    break;
                }
                tracing::debug!(error = %e, attempts, "no redis master yet; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            this.relogin.lock().unwrap_or_else(|p| p.into_inner()).1 = false;
        });
    }

    /// Makes a new connection (to the master the sentinels name now, for a sentinel config)
    /// and puts it in place of the shared one; the blocking connection is made again on its
    /// next use.
    async fn reconnect(&self) -> BrokerResult<()> {
        let client = match &self.sentinel {
            Some(sentinel) => ask_sentinels(sentinel).await?,
            None => self.client(),
        };
        let fresh = client
            .get_connection_manager_with_config(self.config.manager(self.sentinel.is_some()))
            .await
            .map_err(cmd_err)?;
        let (before, now) = (self.display_url(), display_url(&client));
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        if before != now {
            *self.blocking.lock().await = None;
            tracing::warn!(from = %before, to = %now, "redis master moved (sentinel)");
        } else {
            tracing::info!("new redis connection in use");
        }
        Ok(())
    }
}

/// Every key matching `pattern`, by SCAN (a cursor, never KEYS).
pub(crate) async fn scan(
    conn: &mut redis::aio::ConnectionManager,
    pattern: &str,
) -> Result<Vec<String>, redis::RedisError> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(conn)
            .await?;
        out.extend(found);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// `s` with the characters a SCAN `MATCH` pattern treats specially escaped.
pub(crate) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
