//! What the browser tests share: chromedriver and Debian's Chromium (one session per test,
//! killed with its process group on drop), a fixture of known jobs on a fresh SQLite file, the
//! dashboard served in-process on 127.0.0.1, and the checks every page gets (no dialog, no
//! element or script that came from job data, no console error, no CSP violation).

#![allow(dead_code)] // a helper module of tests: not every helper is used by every build of it

use errand::broker::Fleet;
use errand::sqlite::SqliteBroker;
use errand_core::admin::{Admin, Order, QueueRange, SetName, SetRange};
use errand_core::broker::{
    Broker, DeadLimits, Enqueue, FetchRequest, Heartbeat, RemoteSignal, ScheduledJob, Settle,
    WorkEntry,
};
use errand_core::metrics::ClassMetrics;
use errand_core::{Failure, Payload, WireProfile};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long any one condition may take to come true.
pub const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Payloads that must stay text.

pub const XSS_SCRIPT: &str = "<script>alert(1)</script>";
pub const XSS_IMG: &str = "\"><img src=x onerror=alert(1)>";
pub const XSS_JS_URL: &str = "javascript:alert(1)";
pub const XSS_TEXTAREA: &str = "</textarea>";
pub const XSS_TEMPLATE: &str = "{{7*7}}";
/// RIGHT-TO-LEFT OVERRIDE, as in `invoice\u{202E}fdp.exe`.
pub const XSS_RLO: &str = "\u{202E}fdp.exe";

/// Every payload, as job arguments.
pub fn xss_args() -> Vec<Value> {
    [
        XSS_SCRIPT,
        XSS_IMG,
        XSS_JS_URL,
        XSS_TEXTAREA,
        XSS_TEMPLATE,
        XSS_RLO,
    ]
    .iter()
    .map(|s| json!(s))
    .collect()
}

/// Every payload in one string (error messages).
pub fn xss_text() -> String {
    format!("{XSS_SCRIPT} {XSS_IMG} {XSS_JS_URL} {XSS_TEXTAREA} {XSS_TEMPLATE} {XSS_RLO}")
}

/// Queue names.
pub const Q_DEFAULT: &str = "default";
pub const Q_CRITICAL: &str = "critical";
pub const Q_SCRIPT: &str = XSS_SCRIPT;
pub const Q_IMG: &str = XSS_IMG;
pub const Q_MIX: &str = "javascript:alert(1)</textarea>{{7*7}}\u{202E}eueuq";

/// Every queue and the jobs waiting in it, sorted by name as the Queues page lists them.
pub fn known_queues() -> Vec<(&'static str, u64)> {
    let mut q = vec![
        (Q_DEFAULT, 3),
        (Q_CRITICAL, 2),
        (Q_SCRIPT, 1),
        (Q_IMG, 1),
        (Q_MIX, 1),
    ];
    q.sort_by(|a, b| a.0.cmp(b.0));
    q
}
pub const ENQUEUED: u64 = 8;
/// How old the jobs waiting in `critical` are.
pub const CRITICAL_AGE_SECS: f64 = 2.0 * 3600.0 + 120.0;

pub const PROCESSED: u64 = 1234;
pub const FAILED: u64 = 56;
pub const HOSTNAME: &str = "web-e2e-host";
pub const PID: u64 = 4242;
/// The fixture's periodic entry.
pub const PERIODIC: &str = "nightly-report";
/// The fixture's workflow batch (on a backend that keeps batches): steps `extract` (done, so
/// not a member), `load` after it and `report` after `load`, both waiting.
pub const BATCH: &str = "wf-nightly";
pub const IDENTITY: &str = "web-e2e-host:4242:0a1b2c3d";
pub const CONCURRENCY: usize = 10;

pub const BACKTRACE: [&str; 3] = [
    "app/jobs/billing/charge.rb:12:in `perform'",
    "lib/errand/processor.rb:88:in `call'",
    "</textarea><script>alert(1)</script>:1:in `evil'",
];

/// Metrics rows as the page orders them (busiest first): class, executions, failures.
pub fn known_metrics() -> Vec<(String, u64, u64)> {
    vec![
        ("Billing::Charge".into(), 42, 2),
        (format!("{XSS_RLO}Mailer"), 5, 0),
        (XSS_SCRIPT.into(), 3, 1),
    ]
}

// ---------------------------------------------------------------------------------------------
// The fixture.

/// The job ids of the known set entries.
#[derive(Debug, Clone)]
pub struct Jobs {
    /// Retry `Billing::Charge` on `default`, with a backtrace.
    pub retry_plain: String,
    /// Retry of class `<script>…` on `critical`, payloads everywhere.
    pub retry_xss: String,
    /// Retry `Mailer` on the `<script>…` queue.
    pub retry_mailer: String,
    /// Scheduled `Reports::Nightly` on `default`.
    pub sched_plain: String,
    /// Scheduled class `javascript:alert(1)` on the `"><img…` queue.
    pub sched_xss: String,
    /// Dead `Billing::Refund` on `default`.
    pub dead_plain: String,
    /// Dead class `</textarea>` on `critical`, `</textarea>` in its arguments.
    pub dead_edit: String,
    /// Dead class `"><img…` on the mixed queue.
    pub dead_xss: String,
    /// The two jobs the process is running.
    pub running: [String; 2],
}

/// A fresh SQLite file with known jobs, and the dashboard serving it on 127.0.0.1.
pub struct Fixture {
    pub broker: Arc<SqliteBroker>,
    pub admin: Arc<dyn Admin>,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base: String,
    pub jobs: Jobs,
    info: String,
    work: Vec<WorkEntry>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

const PROFILE: WireProfile = WireProfile::V7;
const CARRIER: &str = "fixture-host:1:carrier";

fn payload(class: &str, args: Vec<Value>, queue: &str) -> Payload {
    let mut p = Payload::new(class, args, queue, PROFILE);
    p.set("backtrace", true);
    p
}

impl Fixture {
    pub async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Arc::new(
            SqliteBroker::open(dir.path().join("errand.sqlite"))
                .await
                .expect("open the SQLite file"),
        );
        let b: &dyn Broker = &*broker;
        let now = errand_core::now();

        // Set entries first: retries and deaths go through their own queue (push, fetch,
        // settle, as a server does), while that queue is still empty.
        let retry_plain = fail(
            b,
            payload("Billing::Charge", vec![json!(42), json!("eur")], Q_DEFAULT),
            ("RuntimeError", "card declined"),
            2,
            Place::Retry(now + 600.0),
        )
        .await;
        let retry_xss = fail(
            b,
            payload(XSS_SCRIPT, xss_args(), Q_CRITICAL),
            (XSS_IMG, &xss_text()),
            1,
            Place::Retry(now + 1200.0),
        )
        .await;
        let retry_mailer = fail(
            b,
            payload("Mailer", vec![json!(XSS_JS_URL)], Q_SCRIPT),
            ("Net::ReadTimeout", &format!("{XSS_TEMPLATE} {XSS_RLO}")),
            1,
            Place::Retry(now + 1800.0),
        )
        .await;
        let dead_plain = fail(
            b,
            payload("Billing::Refund", vec![json!(7)], Q_DEFAULT),
            ("Stripe::Error", "timeout"),
            1,
            Place::Dead(now - 3600.0),
        )
        .await;
        let dead_edit = fail(
            b,
            payload(
                XSS_TEXTAREA,
                vec![
                    json!(format!("{XSS_TEXTAREA}{XSS_SCRIPT}")),
                    json!({"k": XSS_TEMPLATE}),
                ],
                Q_CRITICAL,
            ),
            ("ArgumentError", &format!("{XSS_TEXTAREA}{XSS_IMG}")),
            1,
            Place::Dead(now - 1800.0),
        )
        .await;
        let dead_xss = fail(
            b,
            payload(XSS_IMG, xss_args(), Q_MIX),
            (&format!("{XSS_RLO}Error"), XSS_SCRIPT),
            1,
            Place::Dead(now - 7200.0),
        )
        .await;

        let sched_plain = payload("Reports::Nightly", vec![json!(7)], Q_DEFAULT);
        let sched_xss = payload(XSS_JS_URL, xss_args(), Q_IMG);
        b.push_scheduled(&[
            ScheduledJob {
                at: now + 3600.0,
                payload: sched_plain.to_json(),
            },
            ScheduledJob {
                at: now + 7200.0,
                payload: sched_xss.to_json(),
            },
        ])
        .await
        .expect("schedule");

        // Waiting jobs.
        let mut pushes = Vec::new();
        let mut waiting = |class: &str, args: Vec<Value>, queue: &str, enqueued_at: f64| {
            let mut p = payload(class, args, queue);
            p.set("created_at", PROFILE.encode(enqueued_at));
            p.stamp_enqueued(PROFILE, enqueued_at);
            pushes.push(Enqueue {
                queue: queue.to_string(),
                payload: p.to_json(),
            });
        };
        for i in 0..3 {
            waiting(
                "Billing::Charge",
                vec![json!(100 + i)],
                Q_DEFAULT,
                now - 2.0,
            );
        }
        for i in 0..2 {
            waiting(
                "Reports::Export",
                vec![json!(i)],
                Q_CRITICAL,
                now - CRITICAL_AGE_SECS,
            );
        }
        waiting("Mailer", xss_args(), Q_SCRIPT, now - 30.0);
        waiting(XSS_TEMPLATE, xss_args(), Q_IMG, now - 30.0);
        waiting(XSS_SCRIPT, xss_args(), Q_MIX, now - 30.0);
        b.push(&pushes).await.expect("push");

        // One live process running two jobs.
        let info = json!({
            "hostname": HOSTNAME,
            "pid": PID,
            "tag": "shop",
            "started_at": now - 600.0,
            "queues": [Q_DEFAULT, Q_CRITICAL, Q_SCRIPT],
            "concurrency": CONCURRENCY,
            "identity": IDENTITY,
            "labels": [],
            "version": "errand 0.1.0",
        })
        .to_string();
        let run_a = payload("Billing::Charge", vec![json!(9)], Q_DEFAULT);
        let run_b = payload(XSS_SCRIPT, xss_args(), Q_SCRIPT);
        let running = [run_a.jid().to_string(), run_b.jid().to_string()];
        let work = vec![
            WorkEntry {
                tid: "t1a".into(),
                json: json!({"queue": Q_DEFAULT, "payload": run_a.to_json(), "run_at": now - 30.0,
                             "errand_progress": {"percent": 60, "message": "card 3 of 5"}})
                .to_string(),
            },
            WorkEntry {
                tid: "t2b".into(),
                json: json!({"queue": Q_SCRIPT, "payload": run_b.to_json(), "run_at": now - 5.0,
                             "errand_progress": {"percent": 10, "message": xss_text()}})
                .to_string(),
            },
        ];
        let signal = b
            .heartbeat(&heartbeat(&info, &work, PROCESSED, FAILED))
            .await
            .expect("heartbeat");
        assert_eq!(signal, None);

        // Per-class metrics of this minute.
        let minute = (now / 60.0).floor() as i64;
        let rows: Vec<ClassMetrics> = known_metrics()
            .into_iter()
            .enumerate()
            .map(|(i, (class, executions, failures))| {
                let mut m = ClassMetrics::new(class);
                for n in 0..executions {
                    m.record([12, 800, 40][i], n < failures);
                }
                m
            })
            .collect();
        b.record_metrics(minute, &rows).await.expect("metrics");
        // A periodic entry, as a server declares it.
        errand_core::broker::Coordination::periodic_upsert(
            b,
            &[errand_core::broker::PeriodicEntry {
                name: PERIODIC.into(),
                spec: "0 3 * * *".into(),
                zone: "Europe/Berlin".into(),
                queue: Q_DEFAULT.into(),
                template: json!({"retry": true, "queue": Q_DEFAULT, "args": [7], "class": "Reports::Nightly"})
                    .to_string(),
                missed: "latest".into(),
            }],
            now,
        )
        .await
        .expect("periodic entry");
        // A workflow batch whose steps wait (nothing is pushed, so the queues stay as known),
        // its description full of payloads; only on a backend that keeps batches.
        if errand_core::broker::Coordination::capabilities(b).batches {
            let step = |name: &str, after: &str| errand_core::broker::WaitingStep {
                jid: format!("{BATCH}-{name}"),
                job: errand_core::broker::JobHead::new(
                    Q_DEFAULT,
                    &json!({"class": "Reports::Step", "args": [name], "queue": Q_DEFAULT,
                            "jid": format!("{BATCH}-{name}"), "retry": true})
                    .to_string(),
                )
                .expect("a job head"),
                after: vec![format!("{BATCH}-{after}")],
            };
            let waiting = [step("load", "extract"), step("report", "load")];
            let definition = json!({
                "policy": "cancel_all",
                "steps": [
                    {"name": "extract", "jid": format!("{BATCH}-extract"), "after": []},
                    {"name": "load", "jid": format!("{BATCH}-load"), "after": ["extract"]},
                    {"name": "report", "jid": format!("{BATCH}-report"), "after": ["load"]},
                ],
            })
            .to_string();
            let description = format!("{XSS_SCRIPT} {XSS_IMG} {XSS_RLO}");
            errand_core::broker::Coordination::batch_create(
                b,
                &errand_core::broker::NewBatch {
                    bid: BATCH,
                    parent: None,
                    description: &description,
                    callbacks: &[],
                    keep: Duration::from_secs(3600),
                    waiting: &waiting,
                    policy: errand_core::broker::FailurePolicy::CancelAll,
                    workflow: Some(&definition),
                },
            )
            .await
            .expect("batch");
        }

        let admin: Arc<dyn Admin> = broker.clone();
        let app = errand_web::router(broker.clone(), errand_web::WebConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });

        let fixture = Fixture {
            broker,
            admin,
            base: format!("http://{addr}"),
            jobs: Jobs {
                retry_plain,
                retry_xss,
                retry_mailer,
                sched_plain: sched_plain.jid().to_string(),
                sched_xss: sched_xss.jid().to_string(),
                dead_plain,
                dead_edit,
                dead_xss,
                running,
            },
            info,
            work,
            server,
            _dir: dir,
        };
        fixture.assert_known().await;
        fixture
    }

    /// The fixture holds what the tests expect (so a figure on a page is compared with a
    /// known number, not only with the backend).
    async fn assert_known(&self) {
        let a = &*self.admin;
        let queues: Vec<(String, u64)> = a
            .queues()
            .await
            .unwrap()
            .into_iter()
            .map(|q| (q.name, q.size))
            .collect();
        let want: Vec<(String, u64)> = known_queues()
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        assert_eq!(queues, want, "fixture queues");
        assert_eq!(a.set_size(SetName::Retry).await.unwrap(), 3);
        assert_eq!(a.set_size(SetName::Scheduled).await.unwrap(), 2);
        assert_eq!(a.set_size(SetName::Dead).await.unwrap(), 3);
        let c = a.counters().await.unwrap();
        assert_eq!(
            (c.processed, c.failed),
            (PROCESSED, FAILED),
            "fixture counters"
        );
        let p = a.processes().await.unwrap();
        assert_eq!(p.len(), 1, "one live process");
        assert_eq!(p[0].busy, 2);
    }

    /// A URL of the dashboard.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The page key (`<score>-<jid>`) of the entry of `set` with job id `jid`.
    pub async fn key(&self, set: SetName, jid: &str) -> String {
        self.entry(set, jid)
            .await
            .map(|(score, _)| errand::api::entry_key(score, jid))
            .unwrap_or_else(|| panic!("{jid} is not in {set:?}"))
    }

    /// The entry of `set` with job id `jid`: its score and payload.
    pub async fn entry(&self, set: SetName, jid: &str) -> Option<(f64, Payload)> {
        self.admin
            .set_page(SetRange {
                set,
                offset: 0,
                limit: 1000,
                order: Order::Asc,
            })
            .await
            .expect("set_page")
            .into_iter()
            .filter_map(|e| Payload::parse(&e.raw).ok().map(|p| (e.score, p)))
            .find(|(_, p)| p.jid() == jid)
    }

    /// The job with id `jid` waiting in `queue`, if it is there.
    pub async fn queued(&self, queue: &str, jid: &str) -> Option<Payload> {
        self.admin
            .queue_page(QueueRange {
                queue,
                offset: 0,
                limit: 1000,
                order: Order::Asc,
            })
            .await
            .expect("queue_page")
            .into_iter()
            .filter_map(|raw| Payload::parse(&raw).ok())
            .find(|p| p.jid() == jid)
    }

    /// The process beats again (as its server would); returns the signal waiting for it.
    pub async fn beat(&self) -> Option<RemoteSignal> {
        self.broker
            .heartbeat(&heartbeat(&self.info, &self.work, 0, 0))
            .await
            .expect("heartbeat")
    }
}

fn heartbeat<'a>(
    info: &'a str,
    work: &'a [WorkEntry],
    processed: u64,
    failed: u64,
) -> Heartbeat<'a> {
    Heartbeat {
        identity: IDENTITY,
        info,
        busy: work.len(),
        concurrency: CONCURRENCY,
        beat: errand_core::now(),
        quiet: false,
        rss_kb: 256 * 1024,
        work,
        processed,
        failed,
        cancelled: 0,
        expired: 0,
        ttl: Duration::from_secs(3600),
    }
}

enum Place {
    Retry(f64),
    Dead(f64),
}

/// Runs `job` through its queue and fails it `attempts` times; the last failure puts it in the
/// retry set (due at the score) or the dead set (died at the score). Returns its jid.
async fn fail(
    b: &dyn Broker,
    job: Payload,
    (class, message): (&str, &str),
    attempts: u32,
    place: Place,
) -> String {
    let queue = job.queue().to_string();
    let jid = job.jid().to_string();
    let mut p = job;
    p.set("created_at", PROFILE.encode(errand_core::now() - 1000.0));
    p.stamp_enqueued(PROFILE, errand_core::now() - 900.0);
    b.push(&[Enqueue {
        queue: queue.clone(),
        payload: p.to_json(),
    }])
    .await
    .expect("push");
    let queues = [queue.clone()];
    let got = b
        .fetch(FetchRequest {
            identity: CARRIER,
            queues: &queues,
            max: 1,
            wait: Duration::ZERO,
        })
        .await
        .expect("fetch");
    assert_eq!(got.len(), 1, "fixture: the job to fail on {queue}");
    let mut p = Payload::parse(&got[0].raw).expect("payload");
    assert_eq!(p.jid(), jid);
    let lines: Vec<String> = BACKTRACE.iter().map(|s| s.to_string()).collect();
    for i in 0..attempts {
        p.record_failure(&Failure {
            class,
            message,
            backtrace: &lines,
            fetched_from: &queue,
            now: errand_core::now() - 600.0 + f64::from(i),
            profile: PROFILE,
        });
    }
    let to = match place {
        Place::Retry(at) => Settle::Retry {
            payload: p.to_json(),
            at,
        },
        Place::Dead(now) => Settle::Dead {
            payload: p.to_json(),
            now,
            limits: DeadLimits::default(),
        },
    };
    assert!(b.settle(&got[0], &to).await.expect("settle"));
    jid
}

/// Percent-encodes a path segment as the dashboard does.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// chromedriver and Chromium.

static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Taken by each browser test for its whole run: on two cores, one Chromium at a time keeps
/// every wait short.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_BROWSER_AT_A_TIME.lock().await
}

/// Fails with the packages to install when the browser is missing.
pub fn require_browser() {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: the dashboard's browser tests need Debian's `chromium` and \
             `chromium-driver` packages (`apt-get install chromium chromium-driver`; \
             scripts/test installs them). `{package}` provides {path}."
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A chromedriver process on 127.0.0.1, in its own process group, which is killed (with the
/// Chromium it started) on drop.
pub struct Driver {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Driver {
    pub async fn start(dir: &Path) -> Driver {
        require_browser();
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let out = std::fs::File::create(&log).expect("chromedriver log file");
        let err = out.try_clone().expect("log file handle");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let mut driver = Driver { child, port, log };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + WAIT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!(
                    "chromedriver exited ({status}) before listening: {}",
                    std::fs::read_to_string(&driver.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        driver
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Its process group: chromedriver and the Chromium processes it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Chromium session with a fresh profile.
pub struct Browser {
    pub client: Client,
    // Dropped in this order: the session, chromedriver (and Chromium), the profile.
    driver: Driver,
    dir: tempfile::TempDir,
}

impl Browser {
    pub async fn launch() -> Browser {
        let dir = tempfile::tempdir().expect("temp dir");
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&profile).expect("profile dir");
        let driver = Driver::start(dir.path()).await;
        let caps = json!({
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,900",
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no Chromium session: {e}\nchromedriver log:\n{}",
                    std::fs::read_to_string(&driver.log).unwrap_or_default()
                )
            });
        Browser {
            client,
            driver,
            dir,
        }
    }

    /// Ends the session (Chromium exits); chromedriver goes on drop.
    pub async fn close(self) {
        let Browser {
            client,
            driver,
            dir,
        } = self;
        client.close().await.expect("close the session");
        drop(driver);
        drop(dir);
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(el) => el,
            Err(e) => panic!("no element `{css}` on {}: {e}", self.here().await),
        }
    }

    /// The text of the element `css` finds. A page that navigates between the find and the
    /// read (a form's redirect landing) makes the element stale: it is found again on the new
    /// page, within the same wait.
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.find(css).await.text().await {
                Ok(text) => return text,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference
                        && Instant::now() < deadline =>
                {
                    continue;
                }
                Err(e) => panic!("element text of `{css}`: {e}"),
            }
        }
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
            .len()
    }

    pub async fn here(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Asserts that no JavaScript dialog is open.
    pub async fn assert_no_dialog(&self, page: &str) {
        match self.client.get_alert_text().await {
            Err(e) if e.is_no_such_alert() => {}
            Err(e) => panic!("{page}: asking for a dialog failed: {e}"),
            Ok(text) => panic!("{page}: a JavaScript dialog is open: {text:?}"),
        }
    }

    /// Waits for the confirm dialog, checks its text and accepts it.
    pub async fn accept_confirm(&self, want: &str) {
        let text = eventually("a confirm dialog", || async {
            self.client.get_alert_text().await.ok()
        })
        .await;
        assert_eq!(text, want, "the confirm dialog's question");
        self.client.accept_alert().await.expect("accept the dialog");
    }

    /// The browser's console messages since the last call (ChromeDriver's log endpoint).
    pub async fn console(&self) -> Vec<Value> {
        match self.client.issue_cmd(BrowserLog).await {
            Ok(Value::Array(entries)) => entries,
            Ok(other) => panic!("unexpected browser log: {other}"),
            Err(e) => panic!("reading the browser log failed: {e}"),
        }
    }

    /// A full-page PNG (Chromium's DevTools capture beyond the viewport). The clip is the
    /// window's full width: captured beyond the viewport the page has no scrollbar, and is laid
    /// out that wide.
    pub async fn full_screenshot(&self) -> Vec<u8> {
        let size = self
            .js(
                "return [window.innerWidth, Math.ceil(document.documentElement.scrollHeight)]",
                vec![],
            )
            .await;
        let got = self
            .client
            .issue_cmd(Cdp {
                cmd: "Page.captureScreenshot",
                params: json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
                }),
            })
            .await;
        match got {
            Ok(v) => {
                use base64::Engine;
                let data = v["data"].as_str().expect("screenshot data");
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .expect("base64 PNG")
            }
            // The viewport is enough when the DevTools command is not there.
            Err(_) => self.client.screenshot().await.expect("screenshot"),
        }
    }

    /// What every page must be: no dialog, no script or element made from job data, no
    /// console error, no CSP violation.
    pub async fn assert_clean(&self, page: &str) {
        self.assert_no_dialog(page).await;
        let report = self.js(CLEAN_CHECK, vec![]).await;
        let scripts: Vec<&str> = report["scripts"]
            .as_array()
            .expect("scripts")
            .iter()
            .map(|s| s.as_str().unwrap_or("(inline)"))
            .collect();
        assert_eq!(
            scripts,
            ["/assets/theme.js", "/assets/app.js"],
            "{page}: the only scripts are the two assets"
        );
        assert_eq!(
            report["imgX"], 0,
            "{page}: an <img src=x> was parsed from job data"
        );
        let imgs = report["imgs"].as_array().expect("imgs");
        assert!(
            imgs.iter()
                .all(|s| s.as_str().is_some_and(|s| s.starts_with("/assets/"))),
            "{page}: every image is an asset: {imgs:?}"
        );
        assert_eq!(
            report["jsUrls"],
            json!([]),
            "{page}: javascript: URLs in attributes"
        );
        assert_eq!(
            report["handlers"],
            json!([]),
            "{page}: inline event handler attributes"
        );
        assert_eq!(
            report["unexpectedTags"],
            json!([]),
            "{page}: elements the dashboard never renders (parsed from job data?)"
        );
        assert!(
            report["textareas"].as_u64().unwrap_or(99) <= 1,
            "{page}: at most one textarea: {report}"
        );
        let problems: Vec<String> = self
            .console()
            .await
            .into_iter()
            .filter(|e| {
                let message = e["message"].as_str().unwrap_or("");
                e["level"] == "SEVERE"
                    || message.contains("Content Security Policy")
                    || message.contains("Refused to")
            })
            .map(|e| e.to_string())
            .collect();
        assert!(
            problems.is_empty(),
            "{page}: console errors or CSP violations:\n{}",
            problems.join("\n")
        );
    }
}

/// Inspects the DOM for anything job data could have made.
const CLEAN_CHECK: &str = r#"
const known = new Set(['html','head','meta','title','link','script','body','header','a','img',
  'nav','span','form','input','button','main','div','h1','h2','p','section','table','thead',
  'tbody','tr','th','td','code','pre','dl','dt','dd','strong','time','footer','svg','g','line',
  'polyline','polygon','text','textarea','label']);
const all = Array.from(document.querySelectorAll('*'));
const urlAttrs = ['href', 'src', 'action', 'formaction', 'xlink:href'];
return {
  scripts: Array.from(document.scripts).map((s) => s.getAttribute('src')),
  imgX: document.querySelectorAll('img[src="x"]').length,
  imgs: Array.from(document.images).map((i) => i.getAttribute('src')),
  jsUrls: all.flatMap((el) => urlAttrs
    .filter((a) => (el.getAttribute(a) || '').trim().toLowerCase().startsWith('javascript:'))
    .map((a) => `${el.localName}[${a}]`)),
  handlers: all.flatMap((el) => Array.from(el.attributes)
    .filter((a) => a.name.toLowerCase().startsWith('on'))
    .map((a) => `${el.localName}[${a.name}]`)),
  unexpectedTags: Array.from(new Set(all.map((el) => el.localName))).filter((t) => !known.has(t)),
  textareas: document.querySelectorAll('textarea').length,
};
"#;

/// ChromeDriver's console log: `POST /session/{id}/se/log {"type": "browser"}`.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// A DevTools command through ChromeDriver: `POST /session/{id}/goog/cdp/execute`.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"cmd": self.cmd, "params": self.params});
        (http::Method::POST, Some(body.to_string()))
    }
}

/// Polls `f` until it gives a value, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Screenshots.

/// `target/screenshots/` of this workspace (or of `CARGO_TARGET_DIR`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .find(|d| d.join("Cargo.lock").exists())
                .map(|d| d.join("target"))
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        });
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir
}
