//! [`RedisConfig`]: the URL, namespace, timeouts and TLS roots of a Redis backend.

use errand_core::BrokerError;
use errand_core::broker::BrokerResult;
use redis::Client;
use std::time::Duration;

/// Settings for [`RedisBroker::connect_with`](crate::RedisBroker::connect_with). Its `Debug` output hides the URL's password.
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) url: String,
    pub(crate) namespace: Option<String>,
    pub(crate) response_timeout: Duration,
    /// PEM certificates to trust for `rediss://` instead of the built-in web roots.
    pub(crate) trust_ca: Option<Vec<u8>>,
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
    /// [`RedisBroker::connect_with`](crate::RedisBroker::connect_with) fails with [`BrokerError::Config`] when `pem` holds no
    /// certificate or one that does not parse, or when the URL is not `rediss://`.
    pub fn trust_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.trust_ca = Some(pem.into());
        self
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
