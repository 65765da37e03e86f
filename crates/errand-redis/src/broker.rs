//! [`RedisBroker`]: the hot path and process duties on Redis.

use crate::{Keys, scripts};
use async_trait::async_trait;
use errand_core::admin::ClassMetrics;
use errand_core::broker::{
    Broker, BrokerResult, Enqueue, FetchRequest, Fetched, Heartbeat, LeaseGrant, LeaseRequest,
    OnceClaim, RateKind, RemoteSignal, RescuePolicy, Scheduled, Settle,
};
use errand_core::{BrokerError, Payload, WireProfile};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::Mutex;

/// How many values one LPUSH/ZADD carries in a bulk push.
const PUSH_CHUNK: usize = 1_000;
/// How many due jobs one promote round moves.
const PROMOTE_BATCH: isize = 100;
/// Sidekiq keeps daily stat keys for five years.
const DAILY_STAT_TTL: i64 = 5 * 365 * 24 * 3600;

pub(crate) fn cmd_err(e: RedisError) -> BrokerError {
    // A refused login while reconnecting (the password was rotated, the user disabled) is a
    // connection error: callers back off and retry, and work resumes when the login works.
    // So is a server that is up but not serving yet: LOADING (restarted, reading its
    // append-only file), TRYAGAIN, MASTERDOWN (a replica that lost its master). Found by the
    // R1 soak: acks refused with LOADING after a restart were given up, not retried.
    let not_ready = matches!(
        e.kind(),
        redis::ErrorKind::Server(
            redis::ServerErrorKind::BusyLoading
                | redis::ServerErrorKind::TryAgain
                | redis::ServerErrorKind::MasterDown
        )
    );
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::AuthenticationFailed
        || not_ready
    {
        BrokerError::Connection(Box::new(e))
    } else {
        BrokerError::Command(Box::new(e))
    }
}

/// Settings for [`RedisBroker::connect_with`]. Its `Debug` output hides the URL's password.
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    namespace: Option<String>,
    response_timeout: Duration,
    /// PEM certificates to trust for `rediss://` instead of the built-in web roots.
    trust_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("namespace", &self.namespace)
            .field("response_timeout", &self.response_timeout)
            .field("trust_ca", &self.trust_ca.as_ref().map(|pem| pem.len()))
            .finish()
    }
}

/// `url` with its password (`scheme://user:password@…`, or a `pass=` query parameter)
/// replaced by `***`, for messages and debug output.
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        let authority_end = out[start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..authority_end].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((key @ ("pass" | "password"), _)) => format!("{key}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

impl RedisConfig {
    /// A config for `url`: `redis://[user:password@]host:port/db`, `rediss://` for TLS, or
    /// `redis+unix:///path`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: None,
            response_timeout: Duration::from_secs(30),
            trust_ca: None,
        }
    }

    /// Prefixes every key with `namespace:` (redis-namespace style). Defaults to none.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// How long a command may take before it fails with a connection error. Defaults to 30 s
    /// (a 100,000-job bulk push is one pipeline).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Trusts the CA certificate(s) in `pem` (PEM text, one or more `BEGIN CERTIFICATE`
    /// blocks: the contents of a `ca.crt` file, read by the caller) for a `rediss://` URL,
    /// *instead of* the built-in web PKI roots: a server whose certificate does not chain to
    /// one of them, or does not name the URL's host, is refused. For a Redis server with a
    /// private or self-signed CA.
    ///
    /// [`RedisBroker::connect_with`] fails with [`BrokerError::Config`] when `pem` holds no
    /// certificate or one that does not parse, or when the URL is not `rediss://`.
    pub fn trust_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.trust_ca = Some(pem.into());
        self
    }

    /// The client for this config: the URL, with [`RedisConfig::trust_ca_pem`]'s roots if set.
    fn client(&self) -> BrokerResult<Client> {
        let Some(pem) = &self.trust_ca else {
            return Client::open(self.url.as_str())
                .map_err(|e| BrokerError::Config(format!("redis url: {e}")));
        };
        if !self.url.starts_with("rediss://") {
            return Err(BrokerError::Config(format!(
                "redis CA certificate given for {}, which is not a TLS URL: use rediss://",
                redact_url(&self.url)
            )));
        }
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            // (pki-types' message lists the bytes of the section name; say it in words.)
            cert.map_err(|_| {
                BrokerError::Config(
                    "redis CA certificate: a `BEGIN CERTIFICATE` block does not parse as PEM"
                        .into(),
                )
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(BrokerError::Config(
                "redis CA certificate: no `BEGIN CERTIFICATE` block in the PEM given".into(),
            ));
        }
        // Parsed by redis-rs into its own root store (the URL first: a bad URL is named as such).
        let info = redis::IntoConnectionInfo::into_connection_info(self.url.as_str())
            .map_err(|e| BrokerError::Config(format!("redis url: {e}")))?;
        Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        )
        .map_err(|e| BrokerError::Config(format!("redis CA certificate: {e}")))
    }
}

/// The Redis backend. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct RedisBroker {
    client: Client,
    /// The shared multiplexed connection; replaced when a login is refused (see
    /// [`RedisBroker::fail`]).
    conn: std::sync::Arc<std::sync::RwLock<ConnectionManager>>,
    /// How the connection manager is built (for a replacement).
    cm_config: ConnectionManagerConfig,
    /// Set while a replacement connection is being made, with when the last one started.
    relogin: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Blocking waits (BLMOVE) hold a connection, so they get their own, made on first use.
    blocking: std::sync::Arc<Mutex<Option<MultiplexedConnection>>>,
    /// Acks waiting for the next pipelined flush (see [`RedisBroker::ack`]).
    acks: std::sync::Arc<std::sync::Mutex<Vec<PendingAck>>>,
    keys: Keys,
}

/// An ack waiting to be flushed: the in-flight list, the job string, and who to tell.
type PendingAck = (
    String,
    String,
    tokio::sync::oneshot::Sender<Result<bool, AckError>>,
);

/// A failed flush, told to each of its callers: whether retrying may help, and why.
type AckError = (bool, String);

/// Sends pending acks as pipelines, one round trip per batch, until none are left.
async fn flush_acks(
    conn: ConnectionManager,
    acks: std::sync::Arc<std::sync::Mutex<Vec<PendingAck>>>,
) {
    loop {
        let batch = std::mem::take(&mut *acks.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (lease, raw, _) in &batch {
            pipe.cmd("LREM").arg(lease).arg(-1).arg(raw);
        }
        match pipe.query_async::<Vec<i64>>(&mut conn.clone()).await {
            Ok(removed) => {
                for ((_, _, reply), n) in batch.into_iter().zip(removed) {
                    let _ = reply.send(Ok(n > 0));
                }
            }
            Err(e) => {
                let retryable = cmd_err(e.clone()).is_connection_error();
                let why = e.to_string();
                for (_, _, reply) in batch {
                    let _ = reply.send(Err((retryable, why.clone())));
                }
            }
        }
    }
}

/// The I/O error behind `e`, if any (redis-rs keeps it behind an `Arc`).
fn io_error(e: &RedisError) -> Option<&std::io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        if let Some(shared) =
            err.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
            && let Some(io) = shared.downcast_ref::<std::io::Error>()
        {
            return Some(io);
        }
        source = err.source();
    }
    None
}

/// The TLS failure (a rustls error: the certificate, the handshake) behind `e`, if any.
fn tls_error(e: &RedisError) -> Option<&rustls::Error> {
    io_error(e)?.get_ref()?.downcast_ref()
}

/// Whether `e` is the server closing a fresh connection without a reply (what a TLS-only port
/// does to a plaintext client).
fn hung_up_at_once(e: &RedisError) -> bool {
    io_error(e).map_or_else(
        || e.is_connection_dropped(),
        |io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            )
        },
    )
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

/// How long past its wait a blocking fetch may go without a reply before the link counts as
/// broken.
const BLOCKING_MARGIN: Duration = Duration::from_secs(5);

impl RedisBroker {
    /// Moves the poison list's jobs (set aside by recovery) to the dead set as
    /// `Errand::PoisonPill` entries, one atomic step each, so a crash in between leaves a job
    /// on the list for the next pass, never nowhere.
    async fn bury_poison(&self, policy: &RescuePolicy) -> BrokerResult<()> {
        let poison = self.keys.key("errand:poison");
        let dead = self.keys.key("dead");
        let mut conn = self.connection();
        loop {
            let raw: Option<String> = redis::cmd("LINDEX")
                .arg(&poison)
                .arg(0)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            let Some(raw) = raw else {
                return Ok(());
            };
            let now = errand_core::now();
            let entry =
                errand_core::broker::poison_entry(&raw, policy.max_recoveries, now, policy.profile)
                    .unwrap_or_else(|| raw.clone());
            let limits = policy.dead_limits;
            let _: i64 = scripts::SETTLE
                .key(&poison)
                .key(&dead)
                .arg(&raw)
                .arg(&entry)
                .arg(now)
                .arg(now - limits.max_age.as_secs_f64())
                .arg(limits.max_jobs)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            tracing::error!(
                recoveries = policy.max_recoveries,
                "poison pill: a job killed its worker repeatedly; moved to the dead set"
            );
        }
    }

    /// Renews or releases `holder`'s lease in `key`.
    async fn lease_op(
        &self,
        key: &str,
        op: &str,
        holder: &str,
        ttl: Duration,
    ) -> BrokerResult<bool> {
        let n: i64 = scripts::LEASE
            .key(self.keys.key(&format!("errand:lease:{key}")))
            .key(self.keys.key(&format!("errand:fence:{key}")))
            .arg(op)
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(0)
            .arg("0")
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    /// Runs one operation of the once-only record script on `errand:once:<key>`.
    async fn once_op<T: redis::FromRedisValue>(
        &self,
        key: &str,
        op: &str,
        owner: &str,
        ttl: Duration,
        output: &str,
    ) -> BrokerResult<T> {
        scripts::ONCE
            .key(self.keys.key(&format!("errand:once:{key}")))
            .arg(op)
            .arg(owner)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(output)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }
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
        Ok(Self {
            client,
            conn: std::sync::Arc::new(std::sync::RwLock::new(conn)),
            cm_config,
            relogin: Default::default(),
            blocking: Default::default(),
            acks: Default::default(),
            keys: Keys::new(config.namespace.as_deref()),
        })
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
    /// was refused: redis-rs's connection manager keeps a refused reconnect's error and never
    /// tries again by itself, so without this a server whose password was rotated (or whose
    /// user was disabled for a while) would never recover. At most one new connection is being
    /// made at a time, and one a second.
    pub(crate) fn fail(&self, e: RedisError) -> BrokerError {
        if e.kind() == redis::ErrorKind::AuthenticationFailed {
            self.relogin_soon();
        }
        cmd_err(e)
    }

    fn relogin_soon(&self) {
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
                    tracing::info!("redis login works again; new connection in use");
                }
                Err(e) => tracing::warn!(error = %e, "redis login still refused; will try again"),
            }
        });
    }

    async fn blocking_move(
        &self,
        from: &str,
        to: &str,
        wait: Duration,
    ) -> BrokerResult<Option<Vec<u8>>> {
        let mut slot = self.blocking.lock().await;
        if slot.is_none() {
            let cfg = AsyncConnectionConfig::new()
                .set_response_timeout(None)
                .set_connection_timeout(Some(Duration::from_secs(5)));
            *slot = Some(
                self.client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .map_err(|e| self.fail(e))?,
            );
        }
        let conn = slot.as_mut().expect("set above");
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(from)
            .arg(to)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(wait.as_secs_f64());
        let query = cmd.query_async::<Option<Vec<u8>>>(conn);
        // The connection has no response timeout of its own (the wait is the point); a reply
        // later than the wait plus a margin means the link is gone (a partition, a stalled
        // server). A move that happened anyway is found by the server's stranded-job check.
        let res: Result<Option<Vec<u8>>, RedisError> =
            match tokio::time::timeout(wait + BLOCKING_MARGIN, query).await {
                Ok(res) => res,
                Err(_) => {
                    *slot = None;
                    return Err(BrokerError::Connection(
                        format!(
                            "no reply to a blocking fetch within {:?}",
                            wait + BLOCKING_MARGIN
                        )
                        .into(),
                    ));
                }
            };
        if res.is_err() {
            // Drop a broken blocking connection; the next wait makes a new one.
            *slot = None;
        }
        res.map_err(|e| self.fail(e))
    }

    /// A fetched entry as text; an entry that is not UTF-8 (raw bytes pushed by another
    /// client) cannot be a job: it goes from flight to the dead set at once, as an
    /// `Errand::InvalidPayload` entry showing its text lossily, and `None` is returned.
    async fn text_or_bury(
        &self,
        lease: &str,
        queue: &str,
        bytes: Vec<u8>,
    ) -> BrokerResult<Option<String>> {
        let bytes = match String::from_utf8(bytes) {
            Ok(text) => return Ok(Some(text)),
            Err(e) => e.into_bytes(),
        };
        let now = errand_core::now();
        let entry = errand_core::malformed_entry(
            &String::from_utf8_lossy(&bytes),
            queue,
            "not UTF-8 text",
            WireProfile::default(),
            now,
        );
        let limits = errand_core::broker::DeadLimits::default();
        let _: i64 = scripts::SETTLE
            .key(lease)
            .key(self.keys.key("dead"))
            .arg(&bytes[..])
            .arg(entry.to_json())
            .arg(now)
            .arg(now - limits.max_age.as_secs_f64())
            .arg(limits.max_jobs)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        tracing::error!(
            queue,
            "a queue entry that is not UTF-8 text moved to the dead set"
        );
        Ok(None)
    }

    async fn rescue(
        &self,
        identity: &str,
        info: &str,
        require_dead: bool,
        max_recoveries: u32,
    ) -> BrokerResult<i64> {
        let queues = errand_core::broker::info_queues(info);
        let mut inv = scripts::RESCUE.prepare_invoke();
        inv.key(self.keys.key(identity))
            .key(self.keys.registry())
            .key(self.keys.key("processes"))
            .key(self.keys.key("errand:poison"))
            .arg(identity)
            .arg(self.keys.inflight_prefix(identity))
            .arg(self.keys.queue_prefix())
            .arg(if require_dead { "1" } else { "0" })
            .arg(max_recoveries.max(1))
            .arg(self.keys.key("errand:recoveries:"));
        for q in &queues {
            inv.arg(q);
        }
        inv.invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut by_queue: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for j in jobs {
            by_queue.entry(&j.queue).or_default().push(&j.payload);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(self.keys.key("queues"))
            .arg(by_queue.keys().collect::<Vec<_>>())
            .ignore();
        for (queue, payloads) in &by_queue {
            let key = self.keys.queue(queue);
            for chunk in payloads.chunks(PUSH_CHUNK) {
                pipe.cmd("LPUSH").arg(&key).arg(chunk).ignore();
            }
        }
        pipe.query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn schedule(&self, jobs: &[Scheduled]) -> BrokerResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let key = self.keys.key("schedule");
        let mut pipe = redis::pipe();
        for chunk in jobs.chunks(PUSH_CHUNK) {
            let members: Vec<(f64, &str)> =
                chunk.iter().map(|j| (j.at, j.payload.as_str())).collect();
            pipe.cmd("ZADD").arg(&key).arg(members).ignore();
        }
        pipe.query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()> {
        let info = serde_json::json!({ "queues": queues }).to_string();
        redis::cmd("HSETNX")
            .arg(self.keys.registry())
            .arg(identity)
            .arg(info)
            .query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        if req.queues.is_empty() || req.max == 0 {
            return Ok(Vec::new());
        }
        let prefix = self.keys.inflight_prefix(req.identity);
        let mut inv = scripts::FETCH.prepare_invoke();
        for q in req.queues {
            inv.key(self.keys.queue(q));
        }
        let seq = self.keys.key("errand:lease-seq");
        inv.arg(req.max).arg(&prefix).arg(&seq);
        for q in req.queues {
            inv.arg(q);
        }
        let flat: Vec<redis::Value> = inv
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let first_token: u64 = match flat.first() {
            Some(v) => redis::from_redis_value_ref(v).map_err(|e| cmd_err(e.into()))?,
            None => 0,
        };
        let pairs = flat.get(1..).unwrap_or_default().chunks_exact(2);
        for (token, pair) in (first_token..).zip(pairs) {
            let idx: usize =
                redis::from_redis_value_ref(&pair[0]).map_err(|e| cmd_err(e.into()))?;
            let bytes: Vec<u8> =
                redis::from_redis_value_ref(&pair[1]).map_err(|e| cmd_err(e.into()))?;
            let queue = req.queues[idx - 1].clone();
            let lease = format!("{prefix}{queue}");
            if let Some(raw) = self.text_or_bury(&lease, &queue, bytes).await? {
                out.push(Fetched {
                    lease,
                    queue,
                    raw,
                    token,
                });
            }
        }
        if !out.is_empty() || req.wait.is_zero() {
            return Ok(out);
        }
        // Everything is empty: block on the first queue in this round's order. With several
        // queues the wait is short so the others are polled again soon.
        let first = &req.queues[0];
        let wait = if req.queues.len() == 1 {
            req.wait
        } else {
            req.wait.min(Duration::from_millis(100))
        };
        let lease = format!("{prefix}{first}");
        if let Some(bytes) = self
            .blocking_move(&self.keys.queue(first), &lease, wait)
            .await?
            && let Some(raw) = self.text_or_bury(&lease, first, bytes).await?
        {
            let token: u64 = redis::cmd("INCR")
                .arg(&seq)
                .query_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            out.push(Fetched {
                token,
                queue: first.clone(),
                raw,
                lease,
            });
        }
        Ok(out)
    }

    /// Acks are pipelined: every ack that arrives while a flush is in flight joins the next
    /// pipeline, so a busy server pays one round trip for many jobs and an idle one still acks
    /// each job at once. Each caller gets its own answer.
    async fn ack(&self, job: &Fetched) -> BrokerResult<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = {
            let mut pending = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            pending.push((job.lease.clone(), job.raw.clone(), tx));
            pending.len() == 1
        };
        if first {
            tokio::spawn(flush_acks(self.connection(), self.acks.clone()));
        }
        match rx.await.map_err(|e| BrokerError::Command(Box::new(e)))? {
            Ok(held) => Ok(held),
            Err((true, why)) => Err(BrokerError::Connection(why.into())),
            Err((false, why)) => Err(BrokerError::Command(why.into())),
        }
    }

    async fn settle(&self, job: &Fetched, to: Settle) -> BrokerResult<bool> {
        let (set, payload, score, trim) = match &to {
            Settle::Retry { payload, at } => ("retry", payload, *at, None),
            Settle::Schedule { payload, at } => ("schedule", payload, *at, None),
            Settle::Dead {
                payload,
                now,
                limits,
            } => (
                "dead",
                payload,
                *now,
                Some((now - limits.max_age.as_secs_f64(), limits.max_jobs)),
            ),
        };
        let mut inv = scripts::SETTLE.prepare_invoke();
        inv.key(&job.lease)
            .key(self.keys.key(set))
            .arg(&job.raw)
            .arg(payload)
            .arg(score);
        match trim {
            Some((before, max)) => inv.arg(before).arg(max),
            None => inv.arg("").arg(""),
        };
        let n: i64 = inv
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    async fn requeue_in_flight(&self, identity: &str) -> BrokerResult<usize> {
        let info: Option<String> = redis::cmd("HGET")
            .arg(self.keys.registry())
            .arg(identity)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        let Some(info) = info else { return Ok(0) };
        Ok(self.rescue(identity, &info, false, u32::MAX).await?.max(0) as usize)
    }

    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>> {
        let prefix = self.keys.inflight_prefix(identity);
        let mut out = Vec::new();
        for q in queues {
            let lease = format!("{prefix}{q}");
            let raws: Vec<String> = redis::cmd("LRANGE")
                .arg(&lease)
                .arg(0)
                .arg(-1)
                .query_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            // The list's left end holds the newest fetched: oldest first is right to left.
            out.extend(raws.into_iter().rev().map(|raw| Fetched {
                token: 0,
                queue: q.clone(),
                raw,
                lease: lease.clone(),
            }));
        }
        Ok(out)
    }

    async fn release(&self, job: &Fetched) -> BrokerResult<bool> {
        let n: i64 = scripts::RELEASE
            .key(&job.lease)
            .key(self.keys.queue(&job.queue))
            .arg(&job.raw)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    async fn now(&self) -> BrokerResult<f64> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(secs as f64 + micros as f64 / 1e6)
    }

    async fn promote_due(&self, now: f64, profile: WireProfile) -> BrokerResult<usize> {
        let mut moved = 0;
        for set in ["retry", "schedule"] {
            let key = self.keys.key(set);
            loop {
                let due: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now)
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(PROMOTE_BATCH)
                    .query_async(&mut self.connection())
                    .await
                    .map_err(|e| self.fail(e))?;
                if due.is_empty() {
                    break;
                }
                let mut inv = scripts::PROMOTE.prepare_invoke();
                inv.key(&key)
                    .arg(self.keys.queue_prefix())
                    .arg(self.keys.key("queues"));
                for raw in &due {
                    match Payload::parse(raw) {
                        Ok(mut p) => {
                            p.stamp_enqueued(profile, now);
                            let queue = p.queue().to_string();
                            inv.arg(raw).arg(p.to_json()).arg(queue);
                        }
                        // Unreadable members go to `default` unchanged, where the worker files
                        // them in the dead set with the reason: nothing sits unseen in a set.
                        Err(_) => {
                            inv.arg(raw).arg(raw).arg("default");
                        }
                    }
                }
                let n: usize = inv
                    .invoke_async(&mut self.connection())
                    .await
                    .map_err(|e| self.fail(e))?;
                moved += n;
                if (due.len() as isize) < PROMOTE_BATCH {
                    break;
                }
            }
        }
        Ok(moved)
    }

    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>> {
        let k = &self.keys;
        let ident = k.key(beat.identity);
        let ttl = beat.ttl.as_secs().max(1) as i64;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if beat.processed > 0 || beat.failed > 0 {
            let date = errand_core::utc_date(beat.beat);
            for (name, n) in [("processed", beat.processed), ("failed", beat.failed)] {
                let daily = k.key(&format!("stat:{name}:{date}"));
                pipe.cmd("INCRBY")
                    .arg(k.key(&format!("stat:{name}")))
                    .arg(n)
                    .ignore();
                pipe.cmd("INCRBY").arg(&daily).arg(n).ignore();
                pipe.cmd("EXPIRE").arg(&daily).arg(DAILY_STAT_TTL).ignore();
            }
        }
        // Sidekiq 6.4 reads `:workers`, 6.5+ read `:work`: write both.
        for suffix in ["workers", "work"] {
            let work = k.work(beat.identity, suffix);
            pipe.cmd("DEL").arg(&work).ignore();
            if !beat.work.is_empty() {
                let fields: Vec<(&str, &str)> = beat
                    .work
                    .iter()
                    .map(|w| (w.tid.as_str(), w.json.as_str()))
                    .collect();
                pipe.cmd("HSET").arg(&work).arg(fields).ignore();
                pipe.cmd("EXPIRE").arg(&work).arg(ttl).ignore();
            }
        }
        pipe.cmd("SADD")
            .arg(k.key("processes"))
            .arg(beat.identity)
            .ignore();
        pipe.cmd("HSET")
            .arg(&ident)
            .arg("info")
            .arg(beat.info)
            .arg("busy")
            .arg(beat.busy)
            .arg("beat")
            .arg(beat.beat)
            .arg("quiet")
            .arg(if beat.quiet { "true" } else { "false" })
            .arg("rss")
            .arg(beat.rss_kb)
            .arg("rtt_us")
            .arg(0)
            .arg("concurrency")
            .arg(beat.concurrency)
            .ignore();
        pipe.cmd("EXPIRE").arg(&ident).arg(ttl).ignore();
        // Re-assert the registration each beat: a process that was paused past its TTL and had
        // its jobs recovered is registered again as soon as it beats.
        pipe.cmd("HSET")
            .arg(k.registry())
            .arg(beat.identity)
            .arg(beat.info)
            .ignore();
        pipe.cmd("RPOP").arg(format!("{ident}-signals"));
        let (signal,): (Option<String>,) = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(signal.as_deref().and_then(RemoteSignal::from_name))
    }

    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize> {
        let registered: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.keys.registry())
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        let mut total = 0;
        for (identity, info) in registered {
            let n = self
                .rescue(&identity, &info, true, policy.max_recoveries)
                .await?;
            if n > 0 {
                tracing::warn!(
                    identity,
                    jobs = n,
                    "recovered in-flight jobs of a dead process"
                );
                total += n as usize;
            }
        }
        self.bury_poison(policy).await?;
        Ok(total)
    }

    async fn unregister(&self, identity: &str) -> BrokerResult<()> {
        let k = &self.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SREM")
            .arg(k.key("processes"))
            .arg(identity)
            .ignore()
            .cmd("HDEL")
            .arg(k.registry())
            .arg(identity)
            .ignore()
            .cmd("DEL")
            .arg(k.work(identity, "workers"))
            .arg(k.work(identity, "work"))
            .arg(k.key(identity))
            .ignore();
        pipe.query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool> {
        let won: Option<String> = redis::cmd("SET")
            .arg(self.keys.key("errand:poller"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(window.as_millis().max(1) as u64)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(won.is_some())
    }

    async fn once_claim(&self, key: &str, owner: &str, lease: Duration) -> BrokerResult<OnceClaim> {
        let (state, out): (i64, String) = self.once_op(key, "claim", owner, lease, "").await?;
        Ok(match state {
            0 => OnceClaim::Claimed,
            1 => OnceClaim::Busy,
            _ => OnceClaim::Done(out),
        })
    }

    async fn once_renew(&self, key: &str, owner: &str, lease: Duration) -> BrokerResult<bool> {
        let n: i64 = self.once_op(key, "renew", owner, lease, "").await?;
        Ok(n == 1)
    }

    async fn once_complete(
        &self,
        key: &str,
        owner: &str,
        output: &str,
        keep: Duration,
    ) -> BrokerResult<bool> {
        let n: i64 = self.once_op(key, "complete", owner, keep, output).await?;
        Ok(n == 1)
    }

    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()> {
        let _: i64 = self
            .once_op(key, "release", owner, Duration::ZERO, "")
            .await?;
        Ok(())
    }

    async fn lease_acquire(&self, req: LeaseRequest<'_>) -> BrokerResult<LeaseGrant> {
        let (granted, value): (i64, String) = scripts::LEASE
            .key(self.keys.key(&format!("errand:lease:{}", req.key)))
            .key(self.keys.key(&format!("errand:fence:{}", req.key)))
            .arg("acquire")
            .arg(req.holder)
            .arg(req.ttl.as_millis().max(1) as u64)
            .arg(req.max)
            .arg(if req.fence { "1" } else { "0" })
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(if granted == 1 {
            LeaseGrant::Granted {
                token: value.parse().unwrap_or(0),
            }
        } else {
            LeaseGrant::Full { holder: value }
        })
    }

    async fn lease_renew(&self, key: &str, holder: &str, ttl: Duration) -> BrokerResult<bool> {
        self.lease_op(key, "renew", holder, ttl).await
    }

    async fn lease_release(&self, key: &str, holder: &str) -> BrokerResult<bool> {
        self.lease_op(key, "release", holder, Duration::ZERO).await
    }

    async fn lease_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>> {
        let mut conn = self.connection();
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let now_ms = secs * 1000 + micros / 1000;
        let held: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.key(&format!("errand:lease:{key}")))
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(held.into_iter().map(|(h, ms)| (h, ms / 1000.0)).collect())
    }

    async fn rate_take(
        &self,
        key: &str,
        kind: RateKind,
        limit: u32,
        interval: Duration,
    ) -> BrokerResult<Option<Duration>> {
        let wait_ms: u64 = scripts::RATE
            .key(self.keys.key(&format!("errand:rate:{key}")))
            .key(self.keys.key(&format!("errand:rate-seq:{key}")))
            .arg(match kind {
                RateKind::Bucket => "bucket",
                RateKind::Window => "window",
            })
            .arg(limit)
            .arg(interval.as_millis().max(1) as u64)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    async fn limit_hit(&self, name: &str) -> BrokerResult<()> {
        redis::cmd("HINCRBY")
            .arg(self.keys.key("errand:limit-hits"))
            .arg(name)
            .arg(1)
            .query_async::<i64>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn limit_hits(&self) -> BrokerResult<Vec<(String, u64)>> {
        let all: BTreeMap<String, u64> = redis::cmd("HGETALL")
            .arg(self.keys.key("errand:limit-hits"))
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(all.into_iter().collect())
    }

    async fn process_count(&self) -> BrokerResult<usize> {
        redis::cmd("SCARD")
            .arg(self.keys.key("processes"))
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn paused_queues(&self) -> BrokerResult<Vec<String>> {
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.paused())
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        names.sort();
        Ok(names)
    }

    /// One MULTI: HINCRBY of each class's counts (`|p`, `|f`, `|ms` and its non-zero histogram
    /// buckets) into the minute's hash (which then expires after 26 hours) and into the
    /// all-time hash. Classes with nothing counted write nothing.
    async fn record_metrics(&self, minute: i64, classes: &[ClassMetrics]) -> BrokerResult<()> {
        let minute_key = self.keys.metrics_minute(minute);
        let total_key = self.keys.metrics_total();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut any = false;
        for m in classes {
            for (field, n) in crate::admin::metric_fields(m) {
                any = true;
                pipe.cmd("HINCRBY")
                    .arg(&minute_key)
                    .arg(&field)
                    .arg(n)
                    .ignore();
                pipe.cmd("HINCRBY")
                    .arg(&total_key)
                    .arg(&field)
                    .arg(n)
                    .ignore();
            }
        }
        if !any {
            return Ok(());
        }
        pipe.cmd("EXPIRE")
            .arg(&minute_key)
            .arg(crate::admin::METRICS_MINUTE_TTL.as_secs())
            .ignore();
        pipe.query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://u:s3cret@host:6379/0"),
            "redis://u:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://:p@ss@h/1"), "rediss://:***@h/1");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("redis://user@host"), "redis://user@host");
        assert_eq!(
            redact_url("redis+unix:///tmp/r.sock?db=1&pass=s3cret&user=u"),
            "redis+unix:///tmp/r.sock?db=1&pass=***&user=u"
        );
        let debug = format!("{:?}", RedisConfig::new("redis://u:s3cret@h/0"));
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
