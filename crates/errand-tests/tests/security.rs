//! Security tests of the Redis side (RELIABILITY-PLAN §3): S1 a least-privilege ACL user runs
//! a real workload with no `NOPERM`, S3 authentication failures are typed, fast and never hot
//! loops, and W5 (the Redis-password part) the password never shows in errors, logs, the
//! dashboard or `/metrics`.

use axum::body::Body;
use errand::redis::{RedisBroker, RedisConfig};
use errand::{Client, Job, JobContext, JobError, JobOptions, JobResult, Push, Server};
use errand_core::admin::{Admin, MoveToQueue, Order, QueueRange, SetName, SetRange};
use errand_tests::{RedisServer, wait_until};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const T: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Captured logs: every test of this binary logs at `debug` into one buffer, so a secret can be
// searched for in everything Errand logged.

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// The log buffer (installing the subscriber on first use).
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let c = Captured::default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(c.clone())
            .with_ansi(false)
            .try_init();
        c
    })
}

/// `err`'s display, debug and every source in its chain: all a log line or a report could show.
fn all_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{err} | {err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(&format!(" | {s} | {s:?}"));
        source = s.source();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// How many runs a test's server made.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts runs; every 100th takes a mutex and a once-only step, every 250th fails (retried
/// once, then dead), so the workload touches every kind of key Errand writes.
#[derive(Serialize, Deserialize)]
struct Work(u64);

impl Job for Work {
    const NAME: &'static str = "SecurityWork";
    fn options() -> JobOptions {
        JobOptions::default().retry(1)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        if self.0.is_multiple_of(100) {
            let _guard = cx
                .lock_wait("acl-mutex", Duration::from_secs(10), Duration::from_secs(5))
                .await?;
            cx.once("effect", async { Ok::<_, JobError>(self.0) })
                .await?;
        }
        cx.data::<Runs>()
            .expect("runs")
            .0
            .fetch_add(1, Ordering::SeqCst);
        if self.0 % 250 == 1 {
            return Err(JobError::retry("planned failure"));
        }
        Ok(())
    }
}

fn server(broker: RedisBroker, runs: &Runs) -> errand::ServerBuilder {
    Server::builder(broker)
        .register::<Work>()
        .data(runs.clone())
        .concurrency(10)
        .retry_delay(|_| Duration::from_millis(200))
        .heartbeat_interval(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(100))
        .rescue_interval(Duration::from_millis(500))
        .process_ttl(Duration::from_secs(3))
        .shutdown_timeout(Duration::from_secs(2))
        .handle_signals(false)
}

type Running = (
    errand::ServerHandle,
    tokio::task::JoinHandle<Result<(), errand::Error>>,
);

fn start(b: errand::ServerBuilder) -> Running {
    let srv = b.build().unwrap();
    let handle = srv.handle();
    (
        handle,
        tokio::spawn(async move { srv.run_until(std::future::pending()).await }),
    )
}

async fn stop((handle, task): Running) {
    handle.stop();
    tokio::time::timeout(T, task)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

/// Pushes `n` [`Work`] jobs (and one scheduled on `later`) and waits until every run happened
/// and the failures are in the dead set.
async fn workload(broker: &RedisBroker, n: u64) {
    let runs = Runs::default();
    let client = Client::new(broker.clone());
    client.push_bulk((0..n).map(Work)).await.unwrap();
    client
        .push_with(
            Work(n),
            Push::new().delay(Duration::from_millis(300)).queue("later"),
        )
        .await
        .unwrap();
    let running = start(server(broker.clone(), &runs).queues(["default", "later"]));
    let failing = (0..=n).filter(|i| i % 250 == 1).count();
    let expected = (n as usize + 1) + failing;
    wait_until("every run of the workload", T, || async {
        runs.get() >= expected
    })
    .await;
    wait_until("the failures in the dead set", T, || async {
        broker.set_size(SetName::Dead).await.unwrap_or(0) == failing as u64
    })
    .await;
    admin_calls(broker).await;
    stop(running).await;
}

/// The admin side's calls, as the dashboard makes them (listings, one action of each kind).
async fn admin_calls(broker: &RedisBroker) {
    broker.counters().await.unwrap();
    broker.backend_info().await.unwrap();
    let queues = broker.queues().await.unwrap();
    for q in &queues {
        broker
            .queue_page(QueueRange {
                queue: &q.name,
                offset: 0,
                limit: 25,
                order: Order::Asc,
            })
            .await
            .unwrap();
    }
    for set in SetName::ALL {
        broker.set_size(set).await.unwrap();
        let page = broker
            .set_page(SetRange {
                set,
                offset: 0,
                limit: 25,
                order: Order::Desc,
            })
            .await
            .unwrap();
        if let Some(e) = page.first() {
            broker.set_at_score(set, e.score).await.unwrap();
        }
    }
    let procs = broker.processes().await.unwrap();
    assert!(!procs.is_empty(), "the running server is listed");
    broker
        .signal(&procs[0].identity, errand_core::broker::RemoteSignal::Dump)
        .await
        .unwrap();
    let now_minute = (errand_core::now() / 60.0) as i64;
    broker.metrics(now_minute - 60, now_minute).await.unwrap();
    broker.metrics_totals().await.unwrap();
    broker
        .daily_counters(&[errand_core::utc_date(errand_core::now())])
        .await
        .unwrap();
    broker.set_paused("later", true).await.unwrap();
    broker.set_paused("later", false).await.unwrap();
    let dead = broker
        .set_page(SetRange {
            set: SetName::Dead,
            offset: 0,
            limit: 2,
            order: Order::Desc,
        })
        .await
        .unwrap();
    assert!(
        broker
            .set_to_queue(MoveToQueue {
                set: SetName::Dead,
                member: &dead[0].raw,
                queue: "default",
                payload: &dead[0].raw
            })
            .await
            .unwrap()
    );
    assert!(
        broker
            .set_remove(SetName::Dead, &dead[1].raw)
            .await
            .unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// S1

/// The ACL rules of a least-privilege Errand user. Without a namespace: Sidekiq's bare key
/// names, the process hashes of this host (`<hostname>:<pid>:<nonce>`, `…:work`, `…:workers`,
/// `…-signals`) and Errand's own `errand:*`; with one, `~<ns>:*`. Every command but
/// `@dangerous`, except `INFO` (`-@dangerous` takes it, and the dashboard's backend facts need
/// it).
fn least_privilege_rules(password: &str, namespace: Option<&str>) -> Vec<String> {
    let mut rules: Vec<String> = [
        "reset",
        "on",
        "resetchannels",
        "+@all",
        "-@dangerous",
        "+info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    rules.push(format!(">{password}"));
    match namespace {
        Some(ns) => rules.push(format!("~{ns}:*")),
        None => {
            for pattern in [
                "queues",
                "queue:*",
                "schedule",
                "retry",
                "dead",
                "stat:*",
                "processes",
                "paused",
                "errand:*",
            ] {
                rules.push(format!("~{pattern}"));
            }
            rules.push(format!("~{}:*", errand_core::id::hostname()));
        }
    }
    rules
}

/// Every `ACL LOG` entry (a refused command, key or login) since the log was last reset.
fn acl_log(conn: &mut redis::Connection) -> Vec<redis::Value> {
    redis::cmd("ACL").arg("LOG").query(conn).unwrap()
}

fn acl_log_reset(conn: &mut redis::Connection) {
    let _: () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query(conn)
        .unwrap();
}

/// Runs the workload as a least-privilege user (on `namespace`, or bare names) and checks that
/// nothing was refused, then that what Errand never needs is.
async fn least_privilege_run(namespace: Option<&str>) {
    let redis = RedisServer::start();
    let mut root = redis.conn();
    let rules = least_privilege_rules("acl-pw-1", namespace);
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    redis.acl_setuser("errand", &rules);
    acl_log_reset(&mut root);

    let mut config = RedisConfig::new(redis.url_as("errand", "acl-pw-1"));
    if let Some(ns) = namespace {
        config = config.namespace(ns);
    }
    let broker = RedisBroker::connect_with(config).await.unwrap();
    workload(&broker, 2_000).await;

    let denied = acl_log(&mut root);
    assert!(
        denied.is_empty(),
        "0 NOPERM expected during the workload, got {}: {denied:#?}",
        denied.len()
    );
    let noperm = redis
        .info_field("errorstats", "errorstat_NOPERM")
        .unwrap_or_default();
    assert!(noperm.is_empty(), "NOPERM errors: {noperm}");

    // The plan's four attempts (and a foreign write), each refused for this user.
    let mut user = redis::Client::open(redis.url_as("errand", "acl-pw-1"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("other:secret")
        .arg("s")
        .query(&mut root)
        .unwrap();
    let mut attempts: Vec<(&str, redis::Cmd)> = vec![("FLUSHALL", redis::cmd("FLUSHALL"))];
    let mut c = redis::cmd("CONFIG");
    c.arg("SET").arg("appendonly").arg("no");
    attempts.push(("CONFIG SET", c));
    let mut c = redis::cmd("KEYS");
    c.arg("*");
    attempts.push(("KEYS *", c));
    let mut c = redis::cmd("GET");
    c.arg("other:secret");
    attempts.push(("GET other:secret", c));
    let mut c = redis::cmd("SET");
    c.arg("other:secret").arg("x");
    attempts.push(("SET other:secret", c));
    for (what, cmd) in attempts {
        let res: redis::RedisResult<redis::Value> = cmd.query(&mut user);
        let err = res.expect_err(&format!("{what} must be refused"));
        assert_eq!(err.code(), Some("NOPERM"), "{what}: {err}");
    }
    // The log merges the two refusals of `other:secret` into one entry.
    assert!(
        acl_log(&mut root).len() >= 4,
        "the attempts are in the ACL log"
    );
    let secret: String = redis::cmd("GET")
        .arg("other:secret")
        .query(&mut root)
        .unwrap();
    assert_eq!(secret, "s", "the foreign key is untouched");
    let size: u64 = redis::cmd("DBSIZE").query(&mut root).unwrap();
    assert!(size > 1, "FLUSHALL did nothing");

    // Why `+info` is in the rules: without it the dashboard's backend facts are refused.
    redis.acl_setuser("errand", &["-info"]);
    let err = broker.backend_info().await.expect_err("INFO refused");
    assert!(all_text(&err).to_lowercase().contains("noperm"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_acl_least_privilege() {
    logs();
    least_privilege_run(None).await;
    least_privilege_run(Some("app")).await;
}

// ---------------------------------------------------------------------------------------------
// S3

/// Connections the server accepted so far (`INFO stats`), read on `conn` (one connection held
/// for the whole test, so reading adds none).
fn connections_received(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix("total_connections_received:"))
        .and_then(|v| v.parse().ok())
        .expect("total_connections_received")
}

const RIGHT_PW: &str = "s3-right-pw-7Hq2";
const WRONG_PW: &str = "s3-wrong-pw-Kx81";
const DISABLED_PW: &str = "s3-disabled-pw-Pq55";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_handling() {
    let logs = logs();
    let redis = RedisServer::start();
    let mut root = redis.conn();
    redis.acl_setuser(
        "rotating",
        &["reset", "on", "~*", "&*", "+@all", &format!(">{RIGHT_PW}")],
    );
    redis.acl_setuser(
        "disabled",
        &[
            "reset",
            "off",
            "~*",
            "&*",
            "+@all",
            &format!(">{DISABLED_PW}"),
        ],
    );

    // Connecting with a wrong password, as a disabled user, or as an unknown one: a typed error,
    // at once, that names the cause and not the password.
    for (url, secret) in [
        (redis.url_as("rotating", WRONG_PW), WRONG_PW),
        (redis.url_as("disabled", DISABLED_PW), DISABLED_PW),
        (redis.url_as("nobody", WRONG_PW), WRONG_PW),
        (
            format!("redis://:{WRONG_PW}@127.0.0.1:{}", redis.port()),
            WRONG_PW,
        ),
    ] {
        let before = connections_received(&mut root);
        let t0 = Instant::now();
        let err = RedisBroker::connect(&url)
            .await
            .expect_err("a bad login must fail");
        let took = t0.elapsed();
        let attempts = connections_received(&mut root) - before;
        let text = all_text(&err);
        let user = url
            .split('/')
            .nth(2)
            .and_then(|a| a.split(':').next())
            .unwrap_or("");
        eprintln!("connect as {user:?}: {took:?}, {attempts} connection(s): {text}");
        assert!(took < Duration::from_secs(2), "fails fast: {took:?}");
        assert!(
            attempts <= 2,
            "{attempts} connection attempts for one connect"
        );
        assert!(
            matches!(err, errand_core::BrokerError::Config(_)),
            "a login failure is a configuration error: {err:?}"
        );
        assert!(
            text.contains("WRONGPASS") || text.contains("authentication"),
            "the error names the cause: {text}"
        );
        assert!(!text.contains(secret), "the password leaked: {text}");
    }

    // The password changes under a running server: it keeps retrying with backoff, not in a
    // hot loop, and resumes when the password works again.
    let broker = RedisBroker::connect(&redis.url_as("rotating", RIGHT_PW))
        .await
        .unwrap();
    let open = RedisBroker::connect(&redis.url()).await.unwrap();
    let runs = Runs::default();
    let running = start(server(broker.clone(), &runs));
    Client::new(open.clone()).push(Work(7)).await.unwrap();
    wait_until("the first job", T, || async { runs.get() == 1 }).await;

    redis.acl_setuser("rotating", &["resetpass", ">s3-rotated-pw"]);
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("rotating")
        .query(&mut root)
        .unwrap();
    acl_log_reset(&mut root);
    let window = Duration::from_secs(5);
    let before = connections_received(&mut root);
    tokio::time::sleep(window).await;
    let attempts = connections_received(&mut root) - before;
    let per_s = attempts as f64 / window.as_secs_f64();
    let failed_logins = acl_log(&mut root).len();
    eprintln!(
        "wrong password for {window:?}: {attempts} connection attempts ({per_s:.1}/s), \
         {failed_logins} ACL log entries"
    );
    assert!(attempts > 0, "the server keeps trying");
    assert!(per_s <= 10.0, "hot loop: {per_s:.1} connection attempts/s");

    // Recovery once the password works again: `auth_failure_recovery`.
    redis.acl_setuser("rotating", &["resetpass", &format!(">{RIGHT_PW}")]);
    running.0.stop();
    let _ = tokio::time::timeout(T, running.1).await;

    let text = logs.text();
    for secret in [RIGHT_PW, WRONG_PW, DISABLED_PW] {
        assert_eq!(text.matches(secret).count(), 0, "{secret} in the logs");
    }
}

// ---------------------------------------------------------------------------------------------
// W5 (the Redis password)

const CANARY: &str = "w5-canary-pw-Vb3T";

/// GETs `path` on the dashboard: status and everything it sent (headers and body). An event
/// stream is read for its first second.
async fn fetch(app: &axum::Router, path: &str) -> (u16, String) {
    let req = axum::http::Request::get(path)
        .header("accept", "text/html")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let mut text = format!("{:?}\n", resp.headers());
    let mut body = resp.into_body();
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(data));
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    (status, text)
}

/// Runs the worker binary on `url` for `run` (or until it exits), its logs at `debug`, and
/// returns whether it exited by itself and everything it printed.
fn worker_output(url: &str, run: Duration) -> (bool, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_errand-test-worker"))
        .args([url, "4", "1000"])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the worker");
    let deadline = Instant::now() + run;
    let mut exited = false;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !exited {
        // SIGTERM: a graceful stop, so its shutdown logs are read too.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (exited, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_not_leaked() {
    let logs = logs();
    let redis = RedisServer::start();
    redis.acl_setuser(
        "web",
        &["reset", "on", "~*", "&*", "+@all", &format!(">{CANARY}")],
    );
    let url = redis.url_as("web", CANARY);
    // Where the canary must not appear: (what, text).
    let mut seen: Vec<(String, String)> = Vec::new();

    seen.push((
        "RedisConfig debug".into(),
        format!("{:?}", RedisConfig::new(url.clone()).namespace("x")),
    ));
    // Connection errors: a wrong password (the canary is its prefix), an unparsable URL and an
    // unreachable server, each with the canary in the URL.
    let wrong = format!("{CANARY}-wrong");
    let err = RedisBroker::connect(&redis.url_as("web", &wrong))
        .await
        .expect_err("wrong password");
    seen.push(("connect error: wrong password".into(), all_text(&err)));
    let err = RedisBroker::connect(&format!("redis://web:{CANARY}@127.0.0.1:notaport/0"))
        .await
        .expect_err("bad url");
    seen.push(("connect error: bad url".into(), all_text(&err)));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = RedisBroker::connect(&format!("redis://web:{CANARY}@127.0.0.1:{closed_port}/0"))
        .await
        .expect_err("unreachable");
    seen.push(("connect error: unreachable".into(), all_text(&err)));

    // A server on the password URL, with jobs in every set, and the dashboard on it.
    let broker = RedisBroker::connect(&url).await.unwrap();
    let runs = Runs::default();
    let client = Client::new(broker.clone());
    client.push_bulk((0..300).map(Work)).await.unwrap();
    client
        .push_in(Duration::from_secs(3600), Work(1_000))
        .await
        .unwrap();
    let running = start(server(broker.clone(), &runs));
    wait_until("the workload", T, || async { runs.get() >= 302 }).await;
    wait_until("two dead jobs", T, || async {
        broker.set_size(SetName::Dead).await.unwrap_or(0) == 2
    })
    .await;
    let app = errand_web::router(Arc::new(broker.clone()), errand_web::WebConfig::default());
    let (_, dead) = fetch(&app, "/api/dead").await;
    let dead_json: serde_json::Value =
        serde_json::from_str(dead.split_once('\n').unwrap().1).unwrap();
    let key = dead_json
        .pointer("/page/entries/0/key")
        .and_then(|k| k.as_str())
        .expect("a dead entry key")
        .to_string();
    let key = percent_encode(&key);
    let mut paths: Vec<String> = [
        "/",
        "/?days=180",
        "/busy",
        "/queues",
        "/queues/default",
        "/job-metrics",
        "/job-metrics?window=day",
        "/retries",
        "/scheduled",
        "/dead",
        "/login",
        "/metrics",
        "/api/stats",
        "/api/history",
        "/api/stream",
        "/api/busy",
        "/api/queues",
        "/api/queues/default",
        "/api/metrics",
        "/api/retries",
        "/api/scheduled",
        "/api/dead",
        "/api/openapi.json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    paths.push(format!("/dead/job?key={key}"));
    paths.push(format!("/api/dead/job?key={key}"));
    for path in &paths {
        let (status, text) = fetch(&app, path).await;
        assert!(status < 400, "GET {path}: {status}\n{text}");
        seen.push((format!("GET {path}"), text));
    }
    let (_, stats) = fetch(&app, "/api/stats").await;
    let shown = format!("redis://web@127.0.0.1:{}/0", redis.port());
    assert!(
        stats.contains(&shown),
        "the backend facts show {shown}: {stats}"
    );

    // The dashboard while the login is refused (the password rotated): error pages only.
    redis.acl_setuser("web", &["resetpass", ">w5-rotated"]);
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("web")
        .query(&mut redis.conn())
        .unwrap();
    for path in ["/", "/api/stats", "/metrics", "/dead"] {
        let (status, text) = fetch(&app, path).await;
        seen.push((format!("GET {path} (login refused, {status})"), text));
    }
    redis.acl_setuser("web", &["resetpass", &format!(">{CANARY}")]);
    stop(running).await;

    // The worker binary: a run on the password URL, and one with a wrong password.
    Client::new(RedisBroker::connect(&url).await.unwrap())
        .push_bulk((0..50).map(errand_tests::Ledger))
        .await
        .unwrap();
    let (exited, text) = worker_output(&url, Duration::from_secs(3));
    assert!(!exited, "the worker runs: {text}");
    seen.push(("worker binary output".into(), text));
    let (exited, text) = worker_output(&redis.url_as("web", &wrong), Duration::from_secs(10));
    assert!(exited, "a worker whose password is wrong exits: {text}");
    assert!(text.contains("login refused"), "it says why: {text}");
    seen.push(("worker binary output (wrong password)".into(), text));

    let own = logs.text();
    assert!(
        own.contains("dashboard request failed"),
        "the refused-login pages were logged (the capture works)"
    );
    seen.push(("this process's logs".into(), own));
    let leaks: Vec<(&str, usize)> = seen
        .iter()
        .map(|(what, text)| (what.as_str(), text.matches(CANARY).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(
        leaks.is_empty(),
        "the password canary appeared in: {leaks:?}"
    );
    eprintln!(
        "canary searched in {} outputs ({} bytes): 0 occurrences",
        seen.len(),
        seen.iter().map(|(_, t)| t.len()).sum::<usize>()
    );
}

/// Percent-encodes a query value (entry keys hold `.`, `-` and digits; be safe anyway).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A server whose login is refused for longer than the connection manager's own retries (6,
/// about 7 s) resumes once the password works again: redis-rs's `ConnectionManager` keeps a
/// refused reconnect's error and never tries again by itself, so `RedisBroker` replaces it
/// (one attempt at a time, at most one a second). Failed before that fix: no job ran in 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_recovery() {
    let redis = RedisServer::start();
    let mut root = redis.conn();
    redis.acl_setuser(
        "rotating",
        &["reset", "on", "~*", "&*", "+@all", &format!(">{RIGHT_PW}")],
    );
    let broker = RedisBroker::connect(&redis.url_as("rotating", RIGHT_PW))
        .await
        .unwrap();
    let open = RedisBroker::connect(&redis.url()).await.unwrap();
    let runs = Runs::default();
    let running = start(server(broker.clone(), &runs));
    Client::new(open.clone()).push(Work(7)).await.unwrap();
    wait_until("the first job", T, || async { runs.get() == 1 }).await;
    redis.acl_setuser("rotating", &["resetpass", ">s3-rotated-pw"]);
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("rotating")
        .query(&mut root)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    redis.acl_setuser("rotating", &["resetpass", &format!(">{RIGHT_PW}")]);
    Client::new(open.clone()).push(Work(8)).await.unwrap();
    wait_until("a job after the password is right again", T, || async {
        runs.get() == 2
    })
    .await;
    stop(running).await;
}

/// A request to the dashboard is answered within its timeout even when Redis stops answering
/// (a partition): 503, not a connection held for as long as the backend takes (issue 13,
/// item 17). Without the timeout the page waits as long as Redis's own response timeout
/// (here a minute), past the test's 10 s deadline.
#[tokio::test]
async fn a_dashboard_request_times_out_when_the_backend_does_not_answer() {
    let redis = RedisServer::start();
    let proxy = errand_tests::FaultProxy::start(redis.port());
    let broker = RedisBroker::connect_with(
        RedisConfig::new(proxy.redis_url()).response_timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let app = errand_web::router(
        Arc::new(broker),
        errand_web::WebConfig::default().request_timeout(Duration::from_millis(300)),
    );
    let get = |path: &'static str| {
        let call = app
            .clone()
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap());
        async move {
            tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .unwrap_or_else(|_| panic!("GET {path} was not answered within 10 s"))
        }
    };
    assert_eq!(get("/api/stats").await.unwrap().status(), 200);
    proxy.set(errand_tests::Fault::Blackhole);
    let r = get("/api/stats").await.unwrap();
    assert_eq!(
        r.status(),
        503,
        "the timeout answered, not the backend's error"
    );
    let r = get("/queues").await.unwrap();
    assert_eq!(r.status(), 503);
    proxy.set(errand_tests::Fault::None);
}
