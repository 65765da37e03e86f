//! [`RedisBroker`]: the connection (a shared multiplexed connection, replaced after a refused
//! login, and one for blocking waits) and the key builder. Each topic of the contract is
//! implemented in its own module: `queue`, `fleet`, `coordination`, `admin`, `metrics`.

use crate::Keys;
use crate::config::RedisConfig;
use crate::error::{cmd_err, hung_up_at_once, tls_error};
use errand_core::BrokerError;
use errand_core::broker::BrokerResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError};
use std::time::Duration;
use tokio::sync::Mutex;

/// The Redis backend. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct RedisBroker {
    pub(crate) client: Client,
    /// The shared multiplexed connection; replaced when a login is refused (see
    /// [`RedisBroker::fail`]).
    pub(crate) conn: std::sync::Arc<std::sync::RwLock<ConnectionManager>>,
    /// How the connection manager is built (for a replacement).
    pub(crate) cm_config: ConnectionManagerConfig,
    /// Set while a replacement connection is being made, with when the last one started.
    pub(crate) relogin: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Blocking waits (BLMOVE) hold a connection, so they get their own, made on first use.
    pub(crate) blocking: std::sync::Arc<Mutex<Option<MultiplexedConnection>>>,
    pub(crate) keys: Keys,
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
/// lets Redis delete keys under memory pressure, queues and in-flight lists included, and the
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
        let client = config.client()?;
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
        let cm_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_with_config(cm_config.clone())
            .await
            .map_err(cmd_err)?;
        let broker = Self {
            client,
            conn: std::sync::Arc::new(std::sync::RwLock::new(conn)),
            cm_config,
            relogin: Default::default(),
            blocking: Default::default(),
            keys: Keys::new(config.namespace.as_deref()),
        };
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
        display_url(&self.client)
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
    /// refused with READONLY. At most one new connection is being made at a time, and one a
    /// second.
    pub(crate) fn fail(&self, e: RedisError) -> BrokerError {
        if matches!(
            e.kind(),
            redis::ErrorKind::AuthenticationFailed
                | redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        ) {
            self.reconnect_soon();
        }
        cmd_err(e)
    }

    fn reconnect_soon(&self) {
        {
            let mut last = self.relogin.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let (client, config, slot) = (
            self.client.clone(),
            self.cm_config.clone(),
            self.conn.clone(),
        );
        tokio::spawn(async move {
            match client.get_connection_manager_with_config(config).await {
                Ok(fresh) => {
                    *slot.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                    tracing::info!("new redis connection in use");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a new redis connection failed; will try again")
                }
            }
        });
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
