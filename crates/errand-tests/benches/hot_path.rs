//! Criterion benchmarks of Errand's hot path: payload decode/encode, argument (de)serialization,
//! retry backoff, and broker round trips (push, fetch + ack, batch fetch + concurrent acks) on
//! every backend: Redis (a private `redis-server`), SQLite (a temp file, default durability) and
//! the in-memory reference broker; and what client middleware and spans cost a push.
//!
//! Run with `cargo bench -p errand-tests --bench hot_path`. Broker benchmarks refill (or drain)
//! their queue in chunks outside the timed part, so a queue never runs dry mid-measurement and
//! never grows without bound.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use errand_core::broker::{Broker, Enqueue, FetchRequest, Heartbeat};
use errand_core::{Payload, WireProfile, backoff};
use errand_tests::RedisServer;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// A typical Sidekiq payload: seven keys, a three-element `args` array.
const PAYLOAD: &str = r#"{"retry":true,"queue":"default","class":"SendInvoiceJob","args":[1234,"ada@example.com",{"amount_cents":4200}],"jid":"b4a577edbccf1d805744efa2","created_at":1717171717.123456,"enqueued_at":1717171717.125}"#;

/// The process identity the broker benchmarks fetch under.
const IDENTITY: &str = "bench-host:4242:0123456789ab";

/// The most jobs refilled (or drained) at once between timed stretches.
const CHUNK: u64 = 10_000;

/// Jobs per fetch in the batch benchmark.
const BATCH: u64 = 50;

/// A small job's arguments, as a user's `Job` struct would hold them.
#[derive(Debug, Serialize, Deserialize)]
struct SendInvoice {
    invoice_id: u64,
    email: String,
    amount_cents: i64,
    resend: bool,
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("payload");
    g.throughput(Throughput::Bytes(PAYLOAD.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| Payload::parse(black_box(PAYLOAD)).expect("valid payload"))
    });
    let parsed = Payload::parse(PAYLOAD).expect("valid payload");
    assert_eq!(parsed.to_json(), PAYLOAD, "round trip is byte-identical");
    g.bench_function("to_json", |b| b.iter(|| black_box(&parsed).to_json()));
    g.finish();

    let mut g = c.benchmark_group("args");
    let job = SendInvoice {
        invoice_id: 1234,
        email: "ada@example.com".into(),
        amount_cents: 4200,
        resend: false,
    };
    g.bench_function("encode_args", |b| {
        b.iter(|| errand::encode_args(black_box(&job)).expect("serializable"))
    });
    let args = errand::encode_args(&job).expect("serializable");
    assert_eq!(
        args,
        vec![
            json!(1234),
            json!("ada@example.com"),
            json!(4200),
            json!(false)
        ]
    );
    g.bench_function("decode_args", |b| {
        b.iter(|| errand::decode_args::<SendInvoice>(black_box(&args)).expect("decodable"))
    });
    g.finish();
}

fn backoff_delay(c: &mut Criterion) {
    let mut g = c.benchmark_group("backoff_delay");
    for (name, profile) in [("v7", WireProfile::V7), ("v8", WireProfile::V8)] {
        for count in [0u32, 5, 24] {
            g.bench_with_input(BenchmarkId::new(name, count), &count, |b, &count| {
                b.iter(|| backoff::delay(profile, black_box(count), None))
            });
        }
    }
    g.finish();
}

/// A fresh payload (its own jid, `enqueued_at` stamped) for `queue`.
fn job(queue: &str) -> Enqueue {
    let mut p = Payload::new(
        "SendInvoiceJob",
        vec![
            json!(1234),
            json!("ada@example.com"),
            json!({"amount_cents": 4200}),
        ],
        queue,
        WireProfile::V7,
    );
    p.stamp_enqueued(WireProfile::V7, errand_core::now());
    Enqueue {
        queue: queue.to_string(),
        payload: p.to_json(),
    }
}

/// Pushes `n` fresh jobs onto `queue` in bulk.
async fn refill(broker: &dyn Broker, queue: &str, n: u64) {
    let mut left = n;
    while left > 0 {
        let take = left.min(500);
        let jobs: Vec<Enqueue> = (0..take).map(|_| job(queue)).collect();
        broker.push(&jobs).await.expect("push");
        left -= take;
    }
}

/// Fetches and acks exactly `n` jobs from `queues` (which must hold at least that many).
async fn drain(broker: &dyn Broker, queues: &[String], n: u64) {
    let mut left = n;
    while left > 0 {
        let req = FetchRequest {
            identity: IDENTITY,
            queues,
            max: left.min(500) as usize,
            wait: Duration::ZERO,
        };
        let got = broker.fetch(req).await.expect("fetch");
        assert!(!got.is_empty(), "queue ran dry while draining");
        for held in futures::future::join_all(got.iter().map(|j| broker.ack(j))).await {
            assert!(held.expect("ack"), "lost a lease while draining");
        }
        left -= got.len() as u64;
    }
}

/// The same three round-trip benchmarks, run on whichever backend is given.
fn bench_broker(c: &mut Criterion, rt: &Runtime, backend: &str, broker: &dyn Broker) {
    let queues: Vec<String> = ["bench_push", "bench_fetch_ack", "bench_batch"]
        .iter()
        .map(|q| q.to_string())
        .collect();
    let info =
        json!({"hostname": "bench-host", "pid": 4242, "identity": IDENTITY, "queues": queues})
            .to_string();
    rt.block_on(async {
        broker
            .heartbeat(&Heartbeat {
                identity: IDENTITY,
                info: &info,
                busy: 0,
                concurrency: 10,
                beat: errand_core::now(),
                quiet: false,
                rss_kb: 0,
                work: &[],
                processed: 0,
                failed: 0,
                cancelled: 0,
                expired: 0,
                ttl: Duration::from_secs(600),
            })
            .await
            .expect("heartbeat");
        broker.register(IDENTITY, &queues).await.expect("register");
    });
    let push_q = std::slice::from_ref(&queues[0]);
    let ack_q = std::slice::from_ref(&queues[1]);
    let batch_q = std::slice::from_ref(&queues[2]);

    // (a) Push one job. The queue is drained outside the timed part after each chunk.
    let mut g = c.benchmark_group("broker_push");
    g.sample_size(20).throughput(Throughput::Elements(1));
    let one = job(&push_q[0]);
    g.bench_function(backend, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let start = Instant::now();
                    for _ in 0..n {
                        broker.push(std::slice::from_ref(&one)).await.expect("push");
                    }
                    timed += start.elapsed();
                    drain(broker, push_q, n).await;
                    left -= n;
                }
                timed
            })
        })
    });
    g.finish();

    // (b) Fetch one job (max 1, no wait) and ack it. Refilled in bulk before each chunk.
    let mut g = c.benchmark_group("broker_fetch_ack");
    g.sample_size(20).throughput(Throughput::Elements(1));
    g.bench_function(backend, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    refill(broker, &ack_q[0], n).await;
                    let start = Instant::now();
                    for _ in 0..n {
                        let req = FetchRequest {
                            identity: IDENTITY,
                            queues: ack_q,
                            max: 1,
                            wait: Duration::ZERO,
                        };
                        let got = broker.fetch(req).await.expect("fetch");
                        assert_eq!(got.len(), 1, "queue ran dry");
                        assert!(broker.ack(&got[0]).await.expect("ack"));
                    }
                    timed += start.elapsed();
                    left -= n;
                }
                timed
            })
        })
    });
    g.finish();

    // (c) Fetch a batch of 50 and ack all 50 concurrently; one iteration is one batch.
    let mut g = c.benchmark_group("broker_fetch50_ack50");
    g.sample_size(20).throughput(Throughput::Elements(BATCH));
    g.bench_function(backend, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK / BATCH);
                    refill(broker, &batch_q[0], n * BATCH).await;
                    let start = Instant::now();
                    for _ in 0..n {
                        let req = FetchRequest {
                            identity: IDENTITY,
                            queues: batch_q,
                            max: BATCH as usize,
                            wait: Duration::ZERO,
                        };
                        let got = broker.fetch(req).await.expect("fetch");
                        assert_eq!(got.len() as u64, BATCH, "queue ran dry");
                        let acks = futures::future::join_all(got.iter().map(|j| broker.ack(j)));
                        for held in acks.await {
                            assert!(held.expect("ack"));
                        }
                    }
                    timed += start.elapsed();
                    left -= n;
                }
                timed
            })
        })
    });
    g.finish();
}

/// A job for the client benchmarks.
#[derive(Serialize, Deserialize)]
struct Ping(u64);

impl errand::Job for Ping {
    const NAME: &'static str = "Ping";
    async fn perform(self, _: &errand::JobContext) -> errand::JobResult {
        Ok(())
    }
}

/// What the client middleware and the spans cost a push, on the in-memory broker (a fresh one
/// per iteration): no middleware (the baseline), the default chain (the `PushSpans`
/// middleware, its span disabled: no subscriber), and the spans recorded by an OpenTelemetry
/// layer with the trace context written into every payload.
fn client_push(c: &mut Criterion) {
    use criterion::BatchSize;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let otel = std::sync::Arc::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"))),
    );
    /// A variant: its name, how its client is set up, and whether spans are recorded.
    type Variant = (&'static str, fn(errand::Client) -> errand::Client, bool);
    let variants: [Variant; 3] = [
        ("none", errand::Client::clear_client_middleware, false),
        ("spans_disabled", |c| c, false),
        ("spans_otel", |c| c, true),
    ];
    for (name, n) in [("client_push_one", 1u64), ("client_push_bulk_1000", 1000)] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(n));
        for (variant, setup, traced) in variants {
            g.bench_function(variant, |b| {
                b.iter_batched(
                    || setup(errand::Client::new(errand_testing::MemoryBroker::new())),
                    |client| {
                        let run = || {
                            rt.block_on(async {
                                let root = tracing::info_span!("request");
                                let _in = root.enter();
                                if n == 1 {
                                    client.push(Ping(1)).await.map(|_| ())
                                } else {
                                    client.push_bulk((0..n).map(Ping)).await.map(|_| ())
                                }
                            })
                        };
                        if traced {
                            tracing::subscriber::with_default(otel.clone(), run)
                        } else {
                            run()
                        }
                        .expect("push")
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        g.finish();
    }
}

fn brokers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let memory = errand_testing::MemoryBroker::new();
    bench_broker(c, &rt, "memory", &memory);

    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = rt
        .block_on(errand::sqlite::SqliteBroker::open(
            dir.path().join("bench.db"),
        ))
        .expect("open sqlite");
    bench_broker(c, &rt, "sqlite", &sqlite);
    drop(sqlite);

    let have_redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    if have_redis {
        let server = RedisServer::start();
        let redis = rt
            .block_on(errand::redis::RedisBroker::connect(&server.url()))
            .expect("connect redis");
        bench_broker(c, &rt, "redis", &redis);
    } else {
        eprintln!("redis-server not installed: skipping the Redis broker benchmarks");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = codec, backoff_delay, client_push, brokers
}
criterion_main!(benches);
