//! OpenTelemetry traces (issue 18), exported for real: the test starts an OTLP/HTTP receiver
//! (axum, decoding the protobuf `ExportTraceServiceRequest` with `opentelemetry-proto`), the
//! process exports to it through `opentelemetry-otlp` from a `tracing-opentelemetry` layer,
//! and the assertions read the spans the receiver decoded: names, kinds, parents, trace ids
//! and attributes after the messaging conventions.
//!
//! Across languages, on a real `redis-server` with real Ruby:
//! - a trace context a Ruby push put into the job hash (top-level `traceparent`/`tracestate`,
//!   the keys `OpenTelemetry.propagation.inject(job)` writes in Ruby's
//!   `opentelemetry-instrumentation-sidekiq` client middleware) is continued by the Errand
//!   worker: its `process` span has the Ruby span as parent, in the Ruby trace;
//! - a context Errand pushes is read by a real Sidekiq server's middleware the way the gem's
//!   server middleware reads it (`propagation.extract(job)`) and is Errand's `send` span.
//!
//! The gem itself is not packaged for Debian (and RubyGems is not reachable here), so the Ruby
//! side writes and reads those keys by the W3C rules in `ruby/app.rb` and the snippets below.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use errand::redis::RedisBroker;
use errand::{Client, Job, JobContext, JobError, JobOptions, JobResult, Push, RawJob, Server};
use errand_tests::{RedisServer, RubySidekiq, ruby, wait_until};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing::Instrument;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const WAIT: Duration = Duration::from_secs(30);

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    status: i32,
    attrs: BTreeMap<String, String>,
    links: Vec<(String, String)>,
    /// Start and end, ns since the epoch.
    start: u64,
    end: u64,
}

impl Got {
    fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map(String::as_str).unwrap_or("")
    }
}

/// Span kinds and status codes of the OTLP protobuf.
const KIND_INTERNAL: i32 = 1;
const KIND_PRODUCER: i32 = 4;
const KIND_CONSUMER: i32 = 5;
const STATUS_ERROR: i32 = 2;

type Received = Arc<Mutex<Vec<Got>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

async fn receive(State(got): State<Received>, body: Bytes) -> Vec<u8> {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut got = got.lock().unwrap();
    for rs in req.resource_spans {
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(Got {
                    name: s.name,
                    kind: s.kind,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    status: s.status.map_or(0, |st| st.code),
                    attrs: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano,
                });
            }
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// The receiver and the tracer provider exporting to it, installed once for this test binary
/// (the subscriber is global: the server's tasks run on every thread).
struct Otel {
    got: Received,
    provider: SdkTracerProvider,
}

static OTEL: OnceLock<Otel> = OnceLock::new();

fn otel() -> &'static Otel {
    OTEL.get_or_init(|| {
        let got: Received = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/v1/traces", post(receive))
            .with_state(got.clone());
        // The receiver runs on a runtime of its own: each test has its own runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{addr}/v1/traces"))
            .build()
            .expect("an OTLP exporter");
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer("errand-tests");
        tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(
                        tracing_subscriber::filter::Targets::new()
                            .with_target("errand", tracing::Level::INFO)
                            .with_target("otel", tracing::Level::INFO),
                    ),
            )
            .init();
        Otel { got, provider }
    })
}

/// Waits until the receiver holds spans matching `pick` (at least `n`), flushing the batch
/// exporter while it waits; returns them.
async fn spans(what: &str, n: usize, pick: impl Fn(&Got) -> bool + Send + Sync) -> Vec<Got> {
    let o = otel();
    let pick = Arc::new(pick);
    wait_until(what, WAIT, || {
        let pick = pick.clone();
        async move {
            let provider = o.provider.clone();
            let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
            o.got.lock().unwrap().iter().filter(|g| pick(g)).count() >= n
        }
    })
    .await;
    o.got
        .lock()
        .unwrap()
        .iter()
        .filter(|g| pick(g))
        .cloned()
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Signup(u64);

impl Job for Signup {
    const NAME: &'static str = "Signup";
    async fn perform(self, _: &JobContext) -> JobResult {
        tracing::info!(target: "errand::job_body", user = self.0, "welcoming");
        Ok(())
    }
}

/// Fails its first attempt, succeeds on the retry.
#[derive(Serialize, Deserialize)]
struct Flaky;

impl Job for Flaky {
    const NAME: &'static str = "Flaky";
    fn options() -> JobOptions {
        JobOptions::default().queue("flaky")
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        if cx.retry_count().is_none() {
            return Err(JobError::retry("card declined").with_class("Stripe::CardError"));
        }
        Ok(())
    }
}

/// Run by Errand, pushed by Ruby with a trace context.
#[derive(Serialize, Deserialize)]
struct FromRuby(u64);

impl Job for FromRuby {
    const NAME: &'static str = "FromRuby";
    async fn perform(self, _: &JobContext) -> JobResult {
        Ok(())
    }
}

/// The README picture's job: creates an account, then pushes its welcome email.
#[derive(Serialize, Deserialize)]
struct CreateAccount(u64);

impl Job for CreateAccount {
    const NAME: &'static str = "CreateAccount";
    async fn perform(self, cx: &JobContext) -> JobResult {
        tokio::time::sleep(Duration::from_millis(12)).await;
        cx.client().push(WelcomeEmail(self.0)).await?;
        tokio::time::sleep(Duration::from_millis(3)).await;
        Ok(())
    }
}

/// Pushed by [`CreateAccount`] from inside its attempt.
#[derive(Serialize, Deserialize)]
struct WelcomeEmail(u64);

impl Job for WelcomeEmail {
    const NAME: &'static str = "WelcomeEmail";
    fn options() -> JobOptions {
        JobOptions::default().queue("mailers")
    }
    async fn perform(self, _: &JobContext) -> JobResult {
        tokio::time::sleep(Duration::from_millis(25)).await;
        Ok(())
    }
}

static UNTIL_CANCELLED_RUNS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Runs until cancelled, then returns an error (as a job that stops on a cancel does).
#[derive(Serialize, Deserialize)]
struct UntilCancelled;

impl Job for UntilCancelled {
    const NAME: &'static str = "UntilCancelled";
    async fn perform(self, cx: &JobContext) -> JobResult {
        UNTIL_CANCELLED_RUNS.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            _ = cx.cancelled() => Err(JobError::retry("stopped by a cancel")),
            _ = tokio::time::sleep(WAIT) => Ok(()),
        }
    }
}

fn server(b: RedisBroker, queues: &[&str]) -> Server {
    Server::builder(b)
        .register::<CreateAccount>()
        .register::<WelcomeEmail>()
        .register::<Signup>()
        .register::<Flaky>()
        .register::<FromRuby>()
        .register::<UntilCancelled>()
        .queues(queues.iter().copied())
        .retry_delay(|_| Duration::from_millis(100))
        .poll_interval(Duration::from_millis(200))
        .heartbeat_interval(Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(2))
        .handle_signals(false)
        .build()
        .expect("valid server")
}

/// Runs `server` until `done` resolves.
async fn run_until(server: Server, done: impl std::future::Future<Output = ()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = rx.await;
    }));
    done.await;
    let _ = tx.send(());
    tokio::time::timeout(WAIT, task)
        .await
        .expect("server stopped")
        .expect("server task")
        .expect("server ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_request_to_each_attempt_exported_over_otlp() {
    otel();
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    let client = Client::new(broker.clone());

    // A "web request" pushes two jobs; the first one succeeds, the second fails once.
    let request = tracing::info_span!(target: "otel", "POST /signup", otel.kind = "server");
    let (signup, flaky) = async {
        let a = client.push(Signup(42)).await.unwrap();
        let b = client.push(Flaky).await.unwrap();
        (a, b)
    }
    .instrument(request)
    .await;

    let s = server(broker.clone(), &["default", "flaky"]);
    run_until(s, async {
        spans("three attempts", 3, |g| {
            g.name.starts_with("process ")
                && (g.attr("messaging.message.id") == signup
                    || g.attr("messaging.message.id") == flaky)
        })
        .await;
    })
    .await;

    let all = spans("the request and its sends", 1, |g| g.name == "POST /signup").await;
    let root = &all[0];
    assert_eq!(root.parent, "", "the request is the trace's root");
    let of = |jid: &str, name: &str| -> Vec<Got> {
        otel()
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.attr("messaging.message.id") == jid && g.name == name)
            .cloned()
            .collect()
    };

    let send = of(&signup, "send default");
    assert_eq!(send.len(), 1, "one producer span per push");
    let send = &send[0];
    assert_eq!(send.kind, KIND_PRODUCER);
    assert_eq!(send.trace_id, root.trace_id);
    assert_eq!(
        send.parent, root.span_id,
        "the push is a child of the request"
    );
    assert_eq!(send.attr("messaging.system"), "errand");
    assert_eq!(send.attr("messaging.operation.type"), "send");
    assert_eq!(send.attr("messaging.destination.name"), "default");
    assert_eq!(send.attr("messaging.errand.job.class"), "Signup");

    let process = of(&signup, "process default");
    assert_eq!(process.len(), 1);
    let process = &process[0];
    assert_eq!(process.kind, KIND_CONSUMER);
    assert_eq!(
        process.trace_id, root.trace_id,
        "one trace from request to attempt"
    );
    assert_eq!(
        process.parent, send.span_id,
        "the attempt continues the push"
    );
    assert_eq!(process.attr("messaging.operation.type"), "process");
    assert_eq!(process.attr("messaging.errand.attempt"), "1");
    assert_eq!(process.attr("messaging.errand.outcome"), "done");
    assert_ne!(process.status, STATUS_ERROR);

    let flaky_send = &of(&flaky, "send flaky")[0];
    let mut attempts = of(&flaky, "process flaky");
    attempts.sort_by_key(|g| g.attr("messaging.errand.attempt").to_string());
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0].attr("messaging.errand.attempt"), "1");
    assert_eq!(attempts[0].attr("messaging.errand.outcome"), "failed");
    assert_eq!(attempts[0].attr("error.type"), "Stripe::CardError");
    assert_eq!(attempts[0].status, STATUS_ERROR);
    assert_eq!(attempts[1].attr("messaging.errand.attempt"), "2");
    assert_eq!(attempts[1].attr("messaging.errand.outcome"), "done");
    for a in &attempts {
        assert_eq!(
            a.trace_id, root.trace_id,
            "a retry stays in the request's trace"
        );
        assert_eq!(a.parent, flaky_send.span_id);
    }
    assert!(
        otel()
            .got
            .lock()
            .unwrap()
            .iter()
            .all(|g| g.kind != KIND_INTERNAL || g.name != "errand.push"),
        "the span names come from otel.name"
    );
}

/// A cancelled attempt's span says `cancelled` with no error status (ended on purpose); an
/// attempt of a class the worker does not know never reaches the middleware chain but has its
/// span all the same, `failed` with `Errand::UnknownJob`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_unknown_attempts_have_their_spans() {
    otel();
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    let client = Client::new(broker.clone());
    let cancelled = client.push(UntilCancelled).await.unwrap();
    let unknown = client
        .push_raw(
            RawJob::new("Ghost::Job", vec![serde_json::json!(1)]),
            Push::new(),
        )
        .await
        .unwrap();
    let s = server(broker.clone(), &["default"]);
    run_until(s, async {
        wait_until("the job to run", WAIT, || async {
            UNTIL_CANCELLED_RUNS.load(std::sync::atomic::Ordering::SeqCst)
        })
        .await;
        client.cancel(&cancelled).await.unwrap();
        spans("both attempts", 2, |g| {
            g.name == "process default"
                && (g.attr("messaging.message.id") == cancelled
                    || g.attr("messaging.message.id") == unknown)
        })
        .await;
    })
    .await;
    // The first attempt of each (the unknown job is retried every 100 ms meanwhile).
    let one = |jid: &str| -> Got {
        let got = otel().got.lock().unwrap().clone();
        let found: Vec<Got> = got
            .into_iter()
            .filter(|g| {
                g.name == "process default"
                    && g.attr("messaging.message.id") == jid
                    && g.attr("messaging.errand.attempt") == "1"
            })
            .collect();
        assert_eq!(found.len(), 1, "{found:#?}");
        found[0].clone()
    };
    let c = one(&cancelled);
    assert_eq!(c.attr("messaging.errand.outcome"), "cancelled", "{c:#?}");
    assert_ne!(c.status, STATUS_ERROR, "a cancel is not an error: {c:#?}");
    assert_eq!(c.attr("error.type"), "", "{c:#?}");
    let u = one(&unknown);
    assert_eq!(u.kind, KIND_CONSUMER);
    assert_eq!(u.attr("messaging.errand.job.class"), "Ghost::Job");
    assert_eq!(u.attr("messaging.errand.outcome"), "failed", "{u:#?}");
    assert_eq!(u.attr("error.type"), "Errand::UnknownJob", "{u:#?}");
    assert_eq!(u.status, STATUS_ERROR);
    let send = otel()
        .got
        .lock()
        .unwrap()
        .iter()
        .find(|g| g.name == "send default" && g.attr("messaging.message.id") == unknown)
        .cloned()
        .expect("the unknown job's send span");
    assert_eq!(
        u.parent, send.span_id,
        "the unknown attempt continues its push"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_trace_is_continued_by_the_errand_worker() {
    otel();
    let redis = RedisServer::start();
    let url = redis.url();
    // Ruby pushes with a client middleware that writes the context as the gem's does
    // (`OpenTelemetry.propagation.inject(job)`: top-level W3C keys in the job hash).
    let out = ruby(
        &url,
        r#"
        require "securerandom"
        class TraceInject
          def call(_klass, job, _queue, _pool)
            $trace_id = SecureRandom.hex(16)
            $span_id = SecureRandom.hex(8)
            job["traceparent"] = "00-#{$trace_id}-#{$span_id}-01"
            job["tracestate"] = "rojo=00f067aa0ba902b7"
            yield
          end
        end
        Sidekiq.configure_client { |c| c.client_middleware { |ch| ch.add TraceInject } }
        jid = Sidekiq::Client.push("class" => "FromRuby", "args" => [7], "queue" => "default")
        puts JSON.generate("jid" => jid, "trace_id" => $trace_id, "span_id" => $span_id)
        "#,
    );
    let pushed: Value = serde_json::from_str(&out).unwrap();
    let jid = pushed["jid"].as_str().unwrap().to_string();

    let broker = RedisBroker::connect(&url).await.unwrap();
    let want = jid.clone();
    run_until(server(broker, &["default"]), async move {
        spans("the Ruby job's attempt", 1, move |g| {
            g.attr("messaging.message.id") == want
        })
        .await;
    })
    .await;
    let got = spans("the Ruby job's attempt", 1, |g| {
        g.attr("messaging.message.id") == jid
    })
    .await;
    let process = &got[0];
    assert_eq!(process.name, "process default");
    assert_eq!(process.kind, KIND_CONSUMER);
    assert_eq!(
        process.trace_id, pushed["trace_id"],
        "the Ruby trace goes on in Rust"
    );
    assert_eq!(
        process.parent, pushed["span_id"],
        "its parent is the Ruby push's span"
    );
    assert_eq!(process.attr("messaging.errand.job.class"), "FromRuby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_worker_reads_the_context_errand_pushed() {
    otel();
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    let span = tracing::info_span!(target: "otel", "nightly export");
    let jid = client
        .push_raw(
            RawJob::new("TracedRubyJob", vec![Value::from(1)]),
            Push::new(),
        )
        .instrument(span)
        .await
        .unwrap();
    let send = spans("Errand's send span", 1, |g| {
        g.name == "send default" && g.attr("messaging.message.id") == jid
    })
    .await
    .remove(0);

    let _sidekiq = RubySidekiq::start(&url, &["default"]);
    let mut conn = redis.conn();
    let mut seen = Vec::new();
    errand_tests::wait_until_sync("Ruby to run the traced job", WAIT, || {
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg("ruby:ran")
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .unwrap();
        seen = raw
            .iter()
            .map(|r| serde_json::from_str::<Value>(r).unwrap())
            .collect();
        !seen.is_empty()
    });
    let ran = &seen[0];
    assert_eq!(ran["class"], "TracedRubyJob");
    assert_eq!(ran["jid"], jid.as_str());
    assert_eq!(ran["valid"], true, "a W3C traceparent: {ran}");
    assert_eq!(
        ran["trace_id"],
        send.trace_id.as_str(),
        "Ruby reads Errand's trace"
    );
    assert_eq!(
        ran["parent_id"],
        send.span_id.as_str(),
        "whose parent is Errand's send span"
    );
    assert_eq!(ran["sampled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_propagation_starts_a_trace_linked_to_the_push() {
    otel();
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    let client = Client::new(broker.clone());
    let jid = client
        .push(Signup(9))
        .instrument(tracing::info_span!(target: "otel", "fan-out"))
        .await
        .unwrap();
    let server = Server::builder(broker)
        .register::<Signup>()
        .trace_propagation(errand::trace::Propagation::Link)
        .handle_signals(false)
        .build()
        .unwrap();
    let want = jid.clone();
    run_until(server, async move {
        spans("the linked attempt", 1, move |g| {
            g.name == "process default" && g.attr("messaging.message.id") == want
        })
        .await;
    })
    .await;
    let send = spans("the send", 1, |g| {
        g.name == "send default" && g.attr("messaging.message.id") == jid
    })
    .await
    .remove(0);
    let process = spans("the attempt", 1, |g| {
        g.name == "process default" && g.attr("messaging.message.id") == jid
    })
    .await
    .remove(0);
    assert_ne!(process.trace_id, send.trace_id, "a trace of its own");
    assert_eq!(process.parent, "", "a root");
    assert_eq!(
        process.links,
        vec![(send.trace_id.clone(), send.span_id.clone())],
        "linked to the push"
    );
}

/// The trace of `spans` (one trace) as an HTML waterfall: one row per span, indented under its
/// parent, its bar placed on the trace's time axis; failed attempts in red.
fn waterfall(title: &str, spans: &[Got]) -> String {
    let t0 = spans.iter().map(|g| g.start).min().unwrap_or(0);
    let t1 = spans.iter().map(|g| g.end).max().unwrap_or(1).max(t0 + 1);
    let total_ms = (t1 - t0) as f64 / 1e6;
    let mut rows = String::new();
    fn walk(parent: &str, depth: usize, spans: &[Got], out: &mut Vec<(usize, Got)>) {
        let mut kids: Vec<&Got> = spans.iter().filter(|g| g.parent == parent).collect();
        kids.sort_by_key(|g| g.start);
        for k in kids {
            out.push((depth, k.clone()));
            walk(&k.span_id, depth + 1, spans, out);
        }
    }
    let mut ordered = Vec::new();
    walk("", 0, spans, &mut ordered);
    for (depth, g) in ordered {
        let left = (g.start - t0) as f64 / (t1 - t0) as f64 * 100.0;
        let width = ((g.end - g.start) as f64 / (t1 - t0) as f64 * 100.0).max(0.3);
        let kind = match g.kind {
            KIND_PRODUCER => "producer",
            KIND_CONSUMER => "consumer",
            2 => "server",
            _ => "internal",
        };
        let mut facts = Vec::new();
        for key in [
            "messaging.errand.job.class",
            "messaging.message.id",
            "messaging.errand.attempt",
            "messaging.errand.outcome",
            "error.type",
        ] {
            if let Some(v) = g.attrs.get(key) {
                let short = if key == "error.type" {
                    "error"
                } else {
                    key.rsplit('.').next().unwrap_or(key)
                };
                facts.push(format!("{short}={v}"));
            }
        }
        let class = if g.status == STATUS_ERROR {
            "bar error"
        } else {
            &format!("bar {kind}")
        };
        rows.push_str(&format!(
            "<tr><td class=name style=\"padding-left:{pad}px\">{name}<span class=kind>{kind}</span></td>\
             <td class=facts>{facts}</td><td class=dur>{dur:.1} ms</td>\
             <td class=lane><div class=\"{class}\" style=\"left:{left:.2}%;width:{width:.2}%\"></div></td></tr>\n",
            pad = 8 + depth * 18,
            name = g.name,
            facts = facts.join(" · "),
            dur = (g.end - g.start) as f64 / 1e6,
        ));
    }
    format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title><style>\
         body{{font:13px system-ui,sans-serif;margin:18px;color:#1d2330;background:#fff}}\
         h1{{font-size:16px;margin:0 0 4px}} p{{margin:0 0 12px;color:#5b6475}}\
         table{{border-collapse:collapse;width:100%}} td{{padding:5px 8px;border-bottom:1px solid #eceff4;white-space:nowrap}}\
         .kind{{margin-left:8px;font-size:11px;color:#7a8496}} .facts{{color:#465063;font-size:12px}}\
         .dur{{text-align:right;color:#465063}} .lane{{position:relative;width:38%}}\
         .bar{{position:absolute;top:6px;height:12px;border-radius:3px}} .server{{background:#6c7a96}}\
         .producer{{background:#3f7be0}} .consumer{{background:#2fa37a}} .internal{{background:#9aa3b5}}\
         .error{{background:#d9483b}}</style>\
         <h1>{title}</h1><p>{n} spans over {total_ms:.1} ms, exported over OTLP/HTTP and rendered from what the receiver decoded</p>\
         <table>{rows}</table>",
        n = spans.len(),
    )
}

/// Makes the README's trace picture (`docs/images/trace.png`, and the page it is taken of,
/// `docs/images/trace.html`): a web request pushes two jobs on a real Redis; one pushes a
/// welcome email from inside its attempt, the other fails once and is retried; every span is
/// exported over OTLP to the test's receiver and drawn as a waterfall, which Debian's Chromium
/// photographs. Run by hand:
/// `cargo test -p errand-tests --test otel readme_trace_picture -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/images/trace.png; run by hand"]
async fn readme_trace_picture() {
    otel();
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    let client = Client::new(broker.clone());
    let request = tracing::info_span!(target: "otel", "POST /signup", otel.kind = "server");
    let (account, charge) = async {
        tokio::time::sleep(Duration::from_millis(4)).await;
        let a = client.push(CreateAccount(42)).await.unwrap();
        let b = client.push(Flaky).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        (a, b)
    }
    .instrument(request)
    .await;
    let s = server(broker, &["default", "flaky", "mailers"]);
    run_until(s, async {
        spans("every attempt", 4, |g| {
            g.name.starts_with("process ")
                && ["default", "flaky", "mailers"].contains(&g.attr("messaging.destination.name"))
        })
        .await;
    })
    .await;
    let root = spans("the request", 1, |g| g.name == "POST /signup")
        .await
        .pop()
        .unwrap();
    let trace: Vec<Got> = otel()
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.trace_id == root.trace_id)
        .cloned()
        .collect();
    assert!(
        trace
            .iter()
            .any(|g| g.attr("messaging.message.id") == account)
    );
    assert!(
        trace
            .iter()
            .any(|g| g.attr("messaging.message.id") == charge)
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/images");
    let html = dir.join("trace.html");
    std::fs::write(
        &html,
        waterfall(
            &format!(
                "Trace {} — one sign-up, from the web request to each attempt",
                &root.trace_id[..12]
            ),
            &trace,
        ),
    )
    .unwrap();
    let png = dir.join("trace.png");
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,300",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.canonicalize().unwrap().display()))
        .output()
        .expect("Debian's chromium");
    assert!(png.exists(), "{}", String::from_utf8_lossy(&out.stderr));
}
