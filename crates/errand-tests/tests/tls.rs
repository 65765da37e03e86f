//! TLS to Redis (RELIABILITY-PLAN §3, S2 `tls_rediss`): a `rediss://` server with a private CA
//! runs a real workload when that CA is trusted ([`RedisConfig::trust_ca_pem`]), and every way
//! of getting it wrong — plaintext to the TLS port, an untrusted CA, a certificate for another
//! host, a bad CA file — fails at once with an error that names the cause and not the password.
//! Each test starts its own TLS-only `redis-server` with a CA made by `openssl`.

use errand::redis::{RedisBroker, RedisConfig};
use errand::{Client, Job, JobContext, JobResult, Server};
use errand_core::BrokerError;
use errand_tests::{RedisServer, make_test_ca, openssl_available, wait_until};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
/// How long a refused connect may take: no retries, no hang.
const FAST: Duration = Duration::from_secs(5);
/// A password in every URL of the failure tests, that no error may show.
const PW: &str = "s2-tls-canary-pw-Qx7";

/// The TLS server and its CA's PEM, or `None` (the test skips, saying why) without `openssl`.
fn tls_server(dir: &Path) -> Option<(RedisServer, Vec<u8>)> {
    if !openssl_available() {
        eprintln!("SKIPPED: `openssl` is not installed (apt-get install openssl)");
        return None;
    }
    let redis = RedisServer::start_tls(dir);
    let ca = std::fs::read(dir.join("ca.crt")).expect("read ca.crt");
    Some((redis, ca))
}

/// `err`'s display, debug and every source in its chain.
fn all_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{err} | {err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(&format!(" | {s} | {s:?}"));
        source = s.source();
    }
    out
}

/// Connects with `config`, which must fail within [`FAST`]; returns the error and its text
/// (checked not to contain [`PW`]).
async fn refused(what: &str, config: RedisConfig) -> (BrokerError, String) {
    let t0 = Instant::now();
    let err = tokio::time::timeout(FAST * 2, RedisBroker::connect_with(config))
        .await
        .unwrap_or_else(|_| panic!("{what}: connect hung"))
        .err()
        .unwrap_or_else(|| panic!("{what}: connect must fail"));
    let took = t0.elapsed();
    let text = all_text(&err);
    eprintln!("{what}: failed after {took:?}: {err}");
    eprintln!("{what}: full chain: {text}");
    assert!(took < FAST, "{what}: fails fast, took {took:?}");
    assert!(!text.contains(PW), "{what}: the password leaked: {text}");
    (err, text)
}

#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

#[derive(Serialize, Deserialize)]
struct TlsWork(u64);

impl Job for TlsWork {
    const NAME: &'static str = "TlsWork";
    async fn perform(self, cx: &JobContext) -> JobResult {
        cx.data::<Runs>()
            .expect("runs")
            .0
            .fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// (a) With the CA trusted, `rediss://127.0.0.1` carries a real workload: 500 jobs pushed in
/// bulk, all run by a server, none left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_workload_with_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let Some((redis, ca)) = tls_server(dir.path()) else {
        return;
    };
    let t0 = Instant::now();
    let broker = RedisBroker::connect_with(RedisConfig::new(redis.tls_url()).trust_ca_pem(ca))
        .await
        .expect("rediss:// with the test CA trusted");
    let n = 500;
    Client::new(broker.clone())
        .push_bulk((0..n).map(TlsWork))
        .await
        .unwrap();
    let runs = Runs::default();
    let srv = Server::builder(broker.clone())
        .register::<TlsWork>()
        .data(runs.clone())
        .concurrency(10)
        .poll_interval(Duration::from_millis(100))
        .shutdown_timeout(Duration::from_secs(2))
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = srv.handle();
    let task = tokio::spawn(async move { srv.run_until(std::future::pending()).await });
    wait_until("every job run over TLS", T, || async {
        runs.0.load(Ordering::SeqCst) >= n as usize
    })
    .await;
    handle.stop();
    tokio::time::timeout(T, task)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    assert_eq!(
        runs.0.load(Ordering::SeqCst),
        n as usize,
        "each job ran once"
    );
    let left: i64 = redis::cmd("LLEN")
        .arg(broker.keys().queue("default"))
        .query_async(&mut broker.connection())
        .await
        .unwrap();
    assert_eq!(left, 0, "the queue is empty");
    eprintln!("{n} jobs over rediss:// in {:?}", t0.elapsed());
}

/// (b) A plaintext `redis://` client on the TLS port fails within seconds, with a configuration
/// error pointing at `rediss://` — it neither hangs, nor retries, nor gets an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_tls_port_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let Some((redis, _ca)) = tls_server(dir.path()) else {
        return;
    };
    let url = format!("redis://:{PW}@127.0.0.1:{}", redis.port());
    let (err, text) = refused("plaintext to the TLS port", RedisConfig::new(url)).await;
    assert!(
        matches!(err, BrokerError::Config(_)),
        "a configuration error: {err:?}"
    );
    assert!(
        text.contains("hung up") && text.contains("rediss://"),
        "the error says what happened and what to use: {text}"
    );
}

/// (c) A server whose certificate chains to a CA other than the trusted one is refused with a
/// certificate error; so it is with the default (web PKI) roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some((redis, _ca)) = tls_server(dir.path()) else {
        return;
    };
    let other = tempfile::tempdir().unwrap();
    let other_ca = std::fs::read(make_test_ca(other.path(), "errand-other-ca")).unwrap();
    let url = format!("rediss://:{PW}@127.0.0.1:{}", redis.port());
    for (what, config) in [
        (
            "another CA trusted",
            RedisConfig::new(url.as_str()).trust_ca_pem(other_ca),
        ),
        ("default roots", RedisConfig::new(url.as_str())),
    ] {
        let (err, text) = refused(what, config).await;
        assert!(
            matches!(err, BrokerError::Config(_)),
            "{what}: a configuration error: {err:?}"
        );
        assert!(
            text.contains("TLS handshake")
                && text.contains("certificate")
                && text.contains("UnknownIssuer"),
            "{what}: the error names the certificate: {text}"
        );
    }
}

/// (d) A certificate that names only `IP:127.0.0.1`, reached as `localhost`, is refused with
/// an error naming the certificate and the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some((redis, ca)) = tls_server(dir.path()) else {
        return;
    };
    let url = format!("rediss://:{PW}@localhost:{}", redis.port());
    let (err, text) = refused(
        "localhost, cert for 127.0.0.1",
        RedisConfig::new(url).trust_ca_pem(ca),
    )
    .await;
    assert!(
        matches!(err, BrokerError::Config(_)),
        "a configuration error: {err:?}"
    );
    assert!(
        text.contains("certificate") && text.contains("not valid for name"),
        "the error names the certificate and the name: {text}"
    );
}

/// A CA option that cannot work is a configuration error before any connection: no
/// certificate in the PEM, a PEM that does not parse, or a URL that is not `rediss://`.
#[tokio::test]
async fn bad_ca_config_is_a_config_error() {
    let url = format!("rediss://:{PW}@127.0.0.1:1");
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    for (what, config, expect) in [
        (
            "no certificate",
            RedisConfig::new(url.as_str()).trust_ca_pem("not a pem"),
            "no `BEGIN CERTIFICATE`",
        ),
        (
            "broken PEM",
            RedisConfig::new(url.as_str()).trust_ca_pem("-----BEGIN CERTIFICATE-----\n!!!\n"),
            "does not parse as PEM",
        ),
        (
            "plain URL",
            RedisConfig::new(format!("redis://:{PW}@127.0.0.1:1")).trust_ca_pem(ca),
            "use rediss://",
        ),
    ] {
        let (err, text) = refused(what, config).await;
        assert!(
            matches!(err, BrokerError::Config(_)),
            "{what}: a configuration error: {err:?}"
        );
        assert!(
            text.contains(expect),
            "{what}: expected {expect:?} in {text}"
        );
    }
}
