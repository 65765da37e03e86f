//! [`RedisConfig`]: the URL, namespace, timeouts and TLS roots of a Redis backend.

use errand_core::BrokerError;
use errand_core::broker::BrokerResult;
use redis::Client;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use std::time::Duration;

/// Settings for [`RedisBroker::connect_with`](crate::RedisBroker::connect_with). Its `Debug` output hides the URL's password.
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) url: String,
    pub(crate) namespace: Option<String>,
    pub(crate) response_timeout: Duration,
    /// PEM certificates to trust for `rediss://` instead of the built-in web roots.
    pub(crate) trust_ca: Option<Vec<u8>>,
    /// The login the sentinels ask for (`requirepass` / ACL in their own config), if any.
    pub(crate) sentinel_auth: Option<(Option<String>, String)>,
    /// Also write execution metrics in Sidekiq 7's format ([`RedisConfig::sidekiq_metrics`]).
    pub(crate) sidekiq_metrics: bool,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("namespace", &self.namespace)
            .field("response_timeout", &self.response_timeout)
            .field("trust_ca", &self.trust_ca.as_ref().map(|pem| pem.len()))
            .field(
                "sentinel_auth",
                &self.sentinel_auth.as_ref().map(|(user, _)| (user, "***")),
            )
            .field("sidekiq_metrics", &self.sidekiq_metrics)
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
    /// A config for `url`: `redis://[user:password@]host:port/db`, `rediss://` for TLS,
    /// `redis+unix:///path`, or `redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]`
    /// for a master found through Redis Sentinel (see [`RedisConfig::sentinel`]; the login and
    /// db are the master's).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: None,
            response_timeout: Duration::from_secs(30),
            trust_ca: None,
            sentinel_auth: None,
            sidekiq_metrics: false,
        }
    }

    /// A config for the master that the Redis Sentinels at `sentinels` (`host:port` each)
    /// know as `master_name`: the same as `new("redis+sentinel://host:port,…/master_name")`.
    ///
    /// The broker asks the sentinels (in the order given, the first that answers) for the
    /// master, checks that the server it names says it is a master (`ROLE`), and connects.
    /// When the master stops answering, or answers as a replica (`READONLY`, after a failover),
    /// the broker asks the sentinels again, at most once a second, and moves every connection
    /// to the master they name; commands that failed meanwhile are retried by their callers,
    /// as after any connection error. A login for the master and a database go in the URL
    /// form; a login for the sentinels themselves in [`RedisConfig::sentinel_auth`].
    pub fn sentinel<S: AsRef<str>>(
        sentinels: impl IntoIterator<Item = S>,
        master_name: &str,
    ) -> Self {
        let nodes: Vec<String> = sentinels
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .collect();
        Self::new(format!(
            "redis+sentinel://{}/{master_name}",
            nodes.join(",")
        ))
    }

    /// A config for the Redis Cluster whose nodes include `nodes` (`host:port` each; one is
    /// enough, the others are found from it): the same as
    /// `new("redis+cluster://host:port,…")`. A login for the nodes goes in the URL form
    /// (`redis+cluster://user:password@host:port,…`).
    ///
    /// Cluster mode uses its own key layout, hash-tagged so that each atomic step touches one
    /// slot, and queues spread over the masters (see `docs/redis-cluster.md`). **Ruby Sidekiq
    /// cannot read it** (Sidekiq does not run on Redis Cluster): keep the default single-server
    /// layout for a fleet shared with Sidekiq.
    pub fn cluster<S: AsRef<str>>(nodes: impl IntoIterator<Item = S>) -> Self {
        let nodes: Vec<String> = nodes.into_iter().map(|s| s.as_ref().to_string()).collect();
        Self::new(format!("redis+cluster://{}", nodes.join(",")))
    }

    /// The node URLs of a `redis+cluster://` config (each `redis://[login@]host:port`, or
    /// `rediss://` with `redis+clusters://`); `None` for any other URL. A cluster config with
    /// [`RedisConfig::sidekiq_metrics`] on is refused here, so connecting fails at once.
    pub(crate) fn cluster_nodes(&self) -> BrokerResult<Option<Vec<String>>> {
        let (scheme, rest) = if let Some(rest) = self.url.strip_prefix("redis+cluster://") {
            ("redis", rest)
        } else if let Some(rest) = self.url.strip_prefix("redis+clusters://") {
            ("rediss", rest)
        } else {
            return Ok(None);
        };
        if self.sidekiq_metrics {
            return Err(BrokerError::Config(
                "sidekiq_metrics is not available in redis cluster mode: Sidekiq 7 does not run \
                 on Redis Cluster, so no Sidekiq Web UI could read the keys; turn the option off"
                    .into(),
            ));
        }
        let rest = rest.trim_end_matches('/');
        let (login, hosts) = match rest.rsplit_once('@') {
            Some((login, hosts)) => (format!("{login}@"), hosts),
            None => (String::new(), rest),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}://{login}{h}"))
            .collect();
        if nodes.is_empty() {
            return Err(BrokerError::Config(format!(
                "redis cluster url names no node: {}",
                redact_url(&self.url)
            )));
        }
        Ok(Some(nodes))
    }

    /// The cluster client for `nodes`, with `response_timeout` per attempt (none for blocking
    /// waits) and redirections retried after short pauses: during a resharding a multi-key
    /// script is told `TRYAGAIN` until its slot has moved, which takes milliseconds, not the
    /// client's default second.
    pub(crate) fn cluster_client(
        &self,
        nodes: &[String],
        response_timeout: Option<Duration>,
    ) -> BrokerResult<redis::cluster::ClusterClient> {
        let mut builder = redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(Duration::from_secs(5))
            .retries(16)
            .min_retry_wait(10)
            .max_retry_wait(500);
        if let Some(timeout) = response_timeout {
            builder = builder
                .response_timeout(timeout)
                .overall_response_timeout(Some(timeout * 2));
        } else {
            builder = builder.overall_response_timeout(None);
        }
        builder
            .build()
            .map_err(|e| BrokerError::Config(format!("redis cluster: {e}")))
    }

    /// The login the sentinels themselves ask for (their `requirepass`, or an ACL user), for a
    /// `redis+sentinel://` config. The master's login goes in the URL.
    pub fn sentinel_auth(mut self, user: Option<&str>, password: &str) -> Self {
        self.sentinel_auth = Some((user.map(str::to_string), password.to_string()));
        self
    }

    /// The sentinel client for a `redis+sentinel://` URL; `None` for any other URL.
    pub(crate) fn sentinel_client(&self) -> BrokerResult<Option<SentinelClient>> {
        let Some(spec) = SentinelUrl::parse(&self.url)? else {
            return Ok(None);
        };
        if self.trust_ca.is_some() {
            return Err(BrokerError::Config(
                "redis CA certificate given for a redis+sentinel:// URL: TLS to sentinels is \
                 not supported; use rediss:// to a fixed address"
                    .into(),
            ));
        }
        let bad = |e: redis::RedisError| BrokerError::Config(format!("redis sentinel: {e}"));
        let nodes = spec
            .nodes
            .iter()
            .map(|(host, port)| redis::ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder =
            SentinelClientBuilder::new(nodes, &spec.master, SentinelServerType::Master)
                .map_err(bad)?
                .set_client_to_redis_db(spec.db);
        if let Some(user) = &spec.user {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &spec.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some((user, password)) = &self.sentinel_auth {
            if let Some(user) = user {
                builder = builder.set_client_to_sentinel_username(user);
            }
            builder = builder.set_client_to_sentinel_password(password);
        }
        builder.build().map(Some).map_err(bad)
    }

    /// Prefixes every key with `namespace:` (redis-namespace style). Defaults to none.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Also writes the execution metrics servers record ([`Fleet::record_metrics`]) in Sidekiq
    /// 7's format, beside Errand's own `errand:metrics:*` hashes and in the same MULTI, so the
    /// Metrics tab of a Sidekiq 7 Web UI on the same Redis shows Errand's jobs: per minute the
    /// hash `j|<YYYYMMDD>|<H>:<M>` (fields `<Class>|p`, `|f`, `|ms`, HINCRBY) and per class the
    /// histogram `<Class>-<DD>-<HH>:<M>` (26 saturating `u16` counters, BITFIELD), both UTC and
    /// kept 8 hours, as Sidekiq 7.0–7.3 write them. Off by default. With a
    /// [`namespace`](RedisConfig::namespace) the keys take its prefix like every Sidekiq key
    /// (Sidekiq 7 itself has no namespaces). Sidekiq 8 stores metrics differently and does not
    /// read these keys.
    ///
    /// Not available in cluster mode (Sidekiq does not run on Redis Cluster):
    /// [`RedisBroker::connect_with`](crate::RedisBroker::connect_with) fails with
    /// [`BrokerError::Config`] for a `redis+cluster://` config with the option on.
    ///
    /// [`Fleet::record_metrics`]: errand_core::broker::Fleet::record_metrics
    pub fn sidekiq_metrics(mut self, on: bool) -> Self {
        self.sidekiq_metrics = on;
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
    /// [`RedisBroker::connect_with`](crate::RedisBroker::connect_with) fails with [`BrokerError::Config`] when `pem` holds no
    /// certificate or one that does not parse, or when the URL is not `rediss://`.
    pub fn trust_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.trust_ca = Some(pem.into());
        self
    }

    /// How the shared connection is made and kept. Behind sentinels, a lost connection is
    /// made again once, at once: commands waiting on it fail fast, and the broker asks the
    /// sentinels where the master is now (a connection manager only knows the old address).
    pub(crate) fn manager(&self, sentinel: bool) -> redis::aio::ConnectionManagerConfig {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2));
        if sentinel {
            config.set_number_of_retries(1)
        } else {
            config
        }
    }

    /// The client for this config: the URL, with [`RedisConfig::trust_ca_pem`]'s roots if set.
    pub(crate) fn client(&self) -> BrokerResult<Client> {
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

/// A parsed `redis+sentinel://[user[:password]@]host:port[,host:port…]/master[/db]`.
#[derive(Debug, PartialEq)]
struct SentinelUrl {
    nodes: Vec<(String, u16)>,
    master: String,
    db: i64,
    user: Option<String>,
    password: Option<String>,
}

impl SentinelUrl {
    /// `None` when `url` is not a sentinel URL; an error naming the part that is wrong when it
    /// is one but malformed.
    fn parse(url: &str) -> BrokerResult<Option<Self>> {
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            if url.starts_with("rediss+sentinel://") {
                return Err(BrokerError::Config(
                    "rediss+sentinel:// is not supported: TLS to sentinels is not available".into(),
                ));
            }
            return Ok(None);
        };
        let bad = |what: &str| {
            BrokerError::Config(format!(
                "redis sentinel url {}: {what} (expected \
                 redis+sentinel://[user:password@]host:port[,host:port…]/master[/db])",
                redact_url(url)
            ))
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad("the login is not UTF-8 once decoded"))
        };
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no master name"))?;
        let (login, hosts) = match authority.rsplit_once('@') {
            Some((login, hosts)) => (Some(login), hosts),
            None => (None, authority),
        };
        let (user, password) = match login {
            None => (None, None),
            Some(login) => match login.split_once(':') {
                Some((user, password)) => (
                    (!user.is_empty()).then(|| decode(user)).transpose()?,
                    Some(decode(password)?),
                ),
                None => (Some(decode(login)?), None),
            },
        };
        let mut nodes = Vec::new();
        for node in hosts.split(',').filter(|n| !n.is_empty()) {
            let (host, port) = match node.rsplit_once(':') {
                Some((host, port)) => (
                    host,
                    port.parse::<u16>()
                        .map_err(|_| bad(&format!("`{port}` is not a port")))?,
                ),
                None => (node, 26379),
            };
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() {
                return Err(bad("a sentinel without a host"));
            }
            nodes.push((host.to_string(), port));
        }
        if nodes.is_empty() {
            return Err(bad("no sentinel address"));
        }
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or_default();
        if master.is_empty() {
            return Err(bad("no master name"));
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse()
                .map_err(|_| bad(&format!("`{db}` is not a database number")))?,
        };
        Ok(Some(Self {
            nodes,
            master: decode(master)?,
            db,
            user,
            password,
        }))
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
        assert_eq!(
            redact_url("redis+sentinel://:s3cret@h1:26379,h2:26380/m"),
            "redis+sentinel://:***@h1:26379,h2:26380/m"
        );
        let debug = format!(
            "{:?}",
            RedisConfig::sentinel(["h:1"], "m").sentinel_auth(None, "s3cret")
        );
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn sentinel_urls_parse() {
        assert_eq!(SentinelUrl::parse("redis://h:1/0").unwrap(), None);
        assert_eq!(
            SentinelUrl::parse("redis+sentinel://u:p%40ss@h1:26379,h2/mymaster/3").unwrap(),
            Some(SentinelUrl {
                nodes: vec![("h1".into(), 26379), ("h2".into(), 26379)],
                master: "mymaster".into(),
                db: 3,
                user: Some("u".into()),
                password: Some("p@ss".into()),
            })
        );
        assert_eq!(
            SentinelUrl::parse("redis+sentinel://:pw@[::1]:5000/m").unwrap(),
            Some(SentinelUrl {
                nodes: vec![("::1".into(), 5000)],
                master: "m".into(),
                db: 0,
                user: None,
                password: Some("pw".into()),
            })
        );
        let url = RedisConfig::sentinel(["a:1", "b:2"], "m").url;
        assert_eq!(url, "redis+sentinel://a:1,b:2/m");
        for (bad, says) in [
            ("redis+sentinel://h:1", "no master name"),
            ("redis+sentinel://h:1/", "no master name"),
            ("redis+sentinel:///m", "no sentinel address"),
            ("redis+sentinel://h:x/m", "`x` is not a port"),
            ("redis+sentinel://h:1/m/x", "`x` is not a database number"),
            ("rediss+sentinel://h:1/m", "not supported"),
        ] {
            let err = SentinelUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn sidekiq_metrics_is_off_by_default_and_refused_in_cluster_mode() {
        assert!(!RedisConfig::new("redis://h/0").sidekiq_metrics);
        assert!(
            RedisConfig::new("redis://h/0")
                .sidekiq_metrics(true)
                .sidekiq_metrics
        );
        let on = RedisConfig::cluster(["h:1"]).sidekiq_metrics(true);
        let err = on.cluster_nodes().unwrap_err();
        assert!(matches!(err, BrokerError::Config(_)), "{err:?}");
        assert!(err.to_string().contains("cluster mode"), "{err}");
        assert!(
            RedisConfig::cluster(["h:1"])
                .sidekiq_metrics(false)
                .cluster_nodes()
                .unwrap()
                .is_some()
        );
        // Not a cluster URL: nothing to refuse here.
        assert_eq!(
            RedisConfig::new("redis://h/0")
                .sidekiq_metrics(true)
                .cluster_nodes()
                .unwrap(),
            None
        );
    }
}
