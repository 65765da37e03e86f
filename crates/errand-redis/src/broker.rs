//! [`RedisBroker`]: the connection (a shared multiplexed connection, replaced after a refused
//! login, and one for blocking waits) and the key builder. Each topic of the contract is
//! implemented in its own module: `queue`, `fleet`, `coordination`, `admin`, `metrics`.

use crate::Keys;
use crate::config::RedisConfig;
use crate::error::{cmd_err, hung_up_at_once, tls_error};
use errand_core::BrokerError;
use errand_core::broker::BrokerResult;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Client, RedisError};
use std::time::Duration;
use tokio::sync::Mutex;

/// A connection to the backend: to one server, or to a Redis Cluster (which routes each
/// command to the master of its key's slot and follows `MOVED`/`ASK` redirections itself).
/// Commands, pipelines and scripts run on any of them alike.
#[derive(Clone)]
pub enum RedisConn {
    /// One server, through a connection manager that reconnects by itself.
    Single(ConnectionManager),
    /// One server, a plain multiplexed connection (blocking waits).
    Plain(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Plain(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Plain(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    /// `cmd` on every master of a cluster (one server: on it), each reply with its node's
    /// address (empty on one server). For per-server commands: `INFO`, `SCAN`.
    ///
    /// # Errors
    /// A node's failure, or a reply that is not a `T`.
    pub async fn on_every_master<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
    ) -> Result<Vec<(String, T)>, RedisError> {
        match self {
            RedisConn::Cluster(c) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                let v = c
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                let map: Vec<(String, redis::Value)> = redis::from_redis_value(v)?;
                map.into_iter()
                    .map(|(node, v)| Ok((node, redis::from_redis_value(v)?)))
                    .collect::<Result<_, redis::ParsingError>>()
                    .map_err(Into::into)
            }
            other => Ok(vec![(String::new(), cmd.query_async(other).await?)]),
        }
    }

    /// `cmd` on the node at `node` (an address from [`RedisConn::on_every_master`]; any
    /// address on one server).
    pub(crate) async fn on_node<T: redis::FromRedisValue>(
        &mut self,
        node: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        match self {
            RedisConn::Cluster(c) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let (host, port) = node.rsplit_once(':').unwrap_or((node, "6379"));
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_string(),
                    port: port.parse().unwrap_or(6379),
                });
                Ok(redis::from_redis_value(
                    c.route_command(cmd.clone(), route).await?,
                )?)
            }
            other => cmd.query_async(other).await,
        }
    }
}

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
    pub(crate) conn: std::sync::Arc<std::sync::RwLock<RedisConn>>,
    /// A Redis Cluster's client (cluster mode).
    pub(crate) cluster: Option<ClusterClient>,
    /// When the last replacement connection was started, and whether one is being made now.
    pub(crate) relogin: std::sync::Arc<std::sync::Mutex<(Option<std::time::Instant>, bool)>>,
    /// Blocking waits (BLMOVE) hold a connection, so they get their own, made on first use.
    pub(crate) blocking: std::sync::Arc<Mutex<Option<RedisConn>>>,
    /// The per-queue waits of a fetch over several queues (see `queue.rs`).
    pub(crate) watchers: std::sync::Arc<crate::queue::Watchers>,
    pub(crate) keys: Keys,
    /// The largest fencing token a fetch of this broker handed out (cluster mode's floor for
    /// the next, see `fetch.lua`).
    pub(crate) last_token: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
        if config.cluster_nodes()?.is_some() {
            return Self::connect_cluster(std::sync::Arc::new(config)).await;
        }
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
            conn: std::sync::Arc::new(std::sync::RwLock::new(RedisConn::Single(conn))),
            cluster: None,
            relogin: Default::default(),
            blocking: Default::default(),
            watchers: Default::default(),
            last_token: Default::default(),
        })
    }

    /// A broker on the Redis Cluster that `config` names, with cluster-mode keys.
    pub(crate) async fn connect_cluster(config: std::sync::Arc<RedisConfig>) -> BrokerResult<Self> {
        let nodes = config.cluster_nodes()?.unwrap_or_default();
        if config
            .namespace
            .as_deref()
            .is_some_and(|ns| ns.contains(['{', '}']))
        {
            return Err(BrokerError::Config(
                "a redis cluster namespace may not hold `{` or `}` (they would make its hash tag)"
                    .into(),
            ));
        }
        let first = Client::open(nodes[0].as_str())
            .map_err(|e| BrokerError::Config(format!("redis cluster node url: {e}")))?;
        let cluster = config.cluster_client(&nodes, Some(config.response_timeout))?;
        let conn = cluster
            .get_async_connection()
            .await
            .map_err(|e| BrokerError::Connection(format!("redis cluster: {e}").into()))?;
        Ok(Self {
            client: std::sync::Arc::new(std::sync::RwLock::new(first)),
            sentinel: None,
            keys: Keys::cluster(config.namespace.as_deref()),
            config,
            conn: std::sync::Arc::new(std::sync::RwLock::new(RedisConn::Cluster(conn))),
            cluster: Some(cluster),
            relogin: Default::default(),
            blocking: Default::default(),
            watchers: Default::default(),
            last_token: Default::default(),
        })
    }

    /// A connection for blocking waits: no response timeout of its own (the caller bounds the
    /// wait).
    pub(crate) async fn blocking_connection(&self) -> BrokerResult<RedisConn> {
        if self.cluster.is_some() {
            let nodes = self.config.cluster_nodes()?.unwrap_or_default();
            let client = self.config.cluster_client(&nodes, None)?;
            return client
                .get_async_connection()
                .await
                .map(RedisConn::Cluster)
                .map_err(|e| self.fail(e));
        }
        let cfg = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(5)));
        self.client()
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map(RedisConn::Plain)
            .map_err(|e| self.fail(e))
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
        let infos: Vec<(String, String)> = self
            .connection()
            .on_every_master(redis::cmd("INFO").arg("memory"))
            .await
            .map_err(|e| self.fail(e))?;
        // On a cluster, the first master that would evict speaks for all.
        let policies: Vec<String> = infos
            .iter()
            .filter_map(|(_, info)| {
                info.lines()
                    .find_map(|l| l.trim_end().strip_prefix("maxmemory_policy:"))
                    .map(str::to_string)
            })
            .collect();
        Ok(policies
            .iter()
            .find(|p| p.as_str() != "noeviction")
            .or(policies.first())
            .cloned())
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
    pub fn connection(&self) -> RedisConn {
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
        if self.cluster.is_some() {
            // The cluster client reconnects and follows redirections itself.
            return Ok(());
        }
        let fresh = RedisConn::Single(
            client
                .get_connection_manager_with_config(self.config.manager(self.sentinel.is_some()))
                .await
                .map_err(cmd_err)?,
        );
        let (before, now) = (self.display_url(), display_url(&client));
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        if before != now {
            *self.blocking.lock().await = None;
            self.watchers.forget_connections();
            tracing::warn!(from = %before, to = %now, "redis master moved (sentinel)");
        } else {
            tracing::info!("new redis connection in use");
        }
        Ok(())
    }
}

/// Every key matching `pattern`, by SCAN (a cursor, never KEYS); on a cluster, on every
/// master.
pub(crate) async fn scan(conn: &mut RedisConn, pattern: &str) -> Result<Vec<String>, RedisError> {
    let scan = |cursor: u64| {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000);
        cmd
    };
    let mut out = Vec::new();
    for (node, (mut cursor, found)) in conn.on_every_master::<(u64, Vec<String>)>(&scan(0)).await? {
        out.extend(found);
        while cursor != 0 {
            let (next, found): (u64, Vec<String>) = conn.on_node(&node, &scan(cursor)).await?;
            out.extend(found);
            cursor = next;
        }
    }
    Ok(out)
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
