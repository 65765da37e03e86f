//! `RedisConfig::sidekiq_metrics`: execution metrics recorded through `Fleet::record_metrics`
//! are also written in Sidekiq 7's format, and read back here by an independent reader that
//! follows Sidekiq 7.3's `lib/sidekiq/metrics/query.rb` and `shared.rb` (key names built from
//! the calendar, not by `Keys`): HGETALL of the `j|<YYYYMMDD>|<H>:<M>` minute hashes, fields split
//! on `|`, and `BITFIELD_RO <Class>-<DD>-<HH>:<M> GET u16 #0 … GET u16 #25` for the histograms.
//!
//! One `redis-server` per test binary, started here on a free port; each case in a database of
//! its own (Sidekiq 7's keys carry no namespace).

use errand_core::BrokerError;
use errand_core::admin::Admin;
use errand_core::broker::Fleet;
use errand_core::metrics::{ClassMetrics, merge_by_class};
use errand_redis::{RedisBroker, RedisConfig};
use errand_tests::RedisServer;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

static SERVER: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());

/// The server the running cases share; it stops when the last case holding it ends.
fn server() -> Arc<RedisServer> {
    let mut slot = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let s = Arc::new(RedisServer::start());
    *slot = Arc::downgrade(&s);
    s
}

/// One case: a broker on database `db` (optionally namespaced, with or without the option) and
/// a raw connection to the same database for the reader.
struct Case {
    b: RedisBroker,
    raw: redis::aio::MultiplexedConnection,
    _server: Arc<RedisServer>,
}

async fn case(db: u8, sidekiq_metrics: bool, namespace: Option<&str>) -> Case {
    let server = server();
    let url = server.url_db(db);
    let mut config = RedisConfig::new(&url).sidekiq_metrics(sidekiq_metrics);
    if let Some(ns) = namespace {
        config = config.namespace(ns);
    }
    let b = RedisBroker::connect_with(config)
        .await
        .expect("connect to the test redis");
    let raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    Case {
        b,
        raw,
        _server: server,
    }
}

fn metrics(class: &str, runs: &[(u64, bool)]) -> ClassMetrics {
    let mut m = ClassMetrics::new(class);
    for &(ms, failed) in runs {
        m.record(ms, failed);
    }
    m
}

// ---- The reader: Sidekiq 7's rules, written out independently of the crate. ----

/// A UTC time to the minute, as Ruby's `Time#utc` gives its parts.
#[derive(Debug, Clone, Copy)]
struct UtcTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
}

impl UtcTime {
    /// The UTC calendar time of `minute` minutes since the epoch (days to a proleptic
    /// Gregorian date with the usual era arithmetic: 400-year eras of 146,097 days, years
    /// counted from March).
    fn of(minute: i64) -> Self {
        let days = minute.div_euclid(1440);
        let of_day = minute.rem_euclid(1440);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: (of_day / 60) as u32,
            min: (of_day % 60) as u32,
        }
    }

    /// Query's minute key: `"j|#{time.strftime("%Y%m%d")}|#{time.hour}:#{time.min}"`.
    fn jobs_key(&self) -> String {
        format!(
            "j|{:04}{:02}{:02}|{}:{}",
            self.year, self.month, self.day, self.hour, self.min
        )
    }

    /// Histogram#fetch's key: `"#{klass}-#{now.utc.strftime("%d-%H:%-M")}"`.
    fn histogram_key(&self, class: &str) -> String {
        format!("{class}-{:02}-{:02}:{}", self.day, self.hour, self.min)
    }
}

/// Histogram::BUCKET_INTERVALS (the last one, 1e20, is the "Slow" bucket).
const BUCKET_INTERVALS: [u64; 25] = [
    20, 30, 45, 65, 100, 150, 225, 335, 500, 750, 1100, 1700, 2500, 3800, 5750, 8500, 13000, 20000,
    30000, 45000, 65000, 100000, 150000, 225000, 335000,
];

/// What Query gives for one class: totals and per-minute series of `p`, `f`, `ms`, and (as
/// `for_job` fetches them) each minute's 26 histogram counters, bucket 0 (fastest) first.
#[derive(Debug, Default, PartialEq)]
struct JobResult {
    totals: BTreeMap<String, u64>,
    series: BTreeMap<i64, BTreeMap<String, u64>>,
    hist: BTreeMap<i64, Vec<u64>>,
}

/// Query#top_jobs with `now` and `minutes` (then Histogram#fetch per class and minute, as
/// Query#for_job does): one pipelined HGETALL per minute, from `now` back; each field split on
/// `|` into class and metric, values summed. `prefix` is prepended to every key (a namespace;
/// empty for Sidekiq 7 itself).
async fn sidekiq7_query(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    now: i64,
    minutes: i64,
) -> BTreeMap<String, JobResult> {
    let times: Vec<i64> = (0..minutes).map(|i| now - i).collect();
    let mut pipe = redis::pipe();
    for &t in &times {
        pipe.cmd("HGETALL")
            .arg(format!("{prefix}{}", UtcTime::of(t).jobs_key()));
    }
    let hashes: Vec<BTreeMap<String, String>> = pipe.query_async(conn).await.unwrap();
    let mut out: BTreeMap<String, JobResult> = BTreeMap::new();
    for (&t, hash) in times.iter().zip(hashes) {
        for (field, value) in hash {
            let mut parts = field.split('|');
            let class = parts.next().unwrap().to_string();
            let metric = parts.next().unwrap_or_default().to_string();
            let n: u64 = value.parse().unwrap();
            let r = out.entry(class).or_default();
            *r.totals.entry(metric.clone()).or_default() += n;
            *r.series.entry(t).or_default().entry(metric).or_default() += n;
        }
    }
    for (class, r) in out.iter_mut() {
        for &t in &times {
            let mut cmd = redis::cmd("BITFIELD_RO");
            cmd.arg(format!("{prefix}{}", UtcTime::of(t).histogram_key(class)));
            for i in 0..=BUCKET_INTERVALS.len() {
                cmd.arg("GET").arg("u16").arg(format!("#{i}"));
            }
            let counters: Vec<u64> = cmd.query_async(conn).await.unwrap();
            assert_eq!(counters.len(), 26);
            if counters.iter().any(|&n| n > 0) {
                r.hist.insert(t, counters);
            }
        }
    }
    out
}

/// What the reader should find for `recorded` (per minute, the rows written then): Sidekiq 7's
/// counting rules applied to Errand's rows.
fn expected(recorded: &[(i64, Vec<ClassMetrics>)]) -> BTreeMap<String, JobResult> {
    let mut out: BTreeMap<String, JobResult> = BTreeMap::new();
    for (t, rows) in recorded {
        for m in rows {
            let mut counts = vec![("p", m.executions), ("f", m.failures)];
            if m.executions > m.failures {
                counts.push(("ms", m.total_ms));
            }
            let counts: Vec<_> = counts
                .into_iter()
                .filter(|&(metric, n)| n > 0 || metric == "ms")
                .collect();
            if counts.is_empty() {
                continue;
            }
            let r = out.entry(m.class.clone()).or_default();
            for (metric, n) in counts {
                *r.totals.entry(metric.to_string()).or_default() += n;
                *r.series
                    .entry(*t)
                    .or_default()
                    .entry(metric.to_string())
                    .or_default() += n;
            }
            if m.histogram.iter().any(|&n| n > 0) {
                let h = r.hist.entry(*t).or_insert_with(|| vec![0; 26]);
                for (slot, &n) in h.iter_mut().zip(m.histogram.iter()) {
                    *slot = (*slot + n).min(u64::from(u16::MAX));
                }
            }
        }
    }
    out
}

/// Minutes since the epoch: 2024-12-31 23:58 UTC, then 23:59 and 2025-01-01 00:00.
const DEC_31_23_58: i64 = 28_928_158;

/// What the cases record: three minutes across a day, month and year boundary, a class
/// recorded twice in one minute, one with failures only, one with nothing counted.
fn recording() -> Vec<(i64, Vec<ClassMetrics>)> {
    let t = DEC_31_23_58;
    vec![
        (
            t,
            vec![
                metrics(
                    "Shop::Charge",
                    &[(10, false), (600, false), (3, true), (19, false)],
                ),
                metrics("Mailer", &[(40_000, false)]),
                ClassMetrics::new("Idle"),
            ],
        ),
        (
            t,
            vec![metrics("Shop::Charge", &[(25, false), (334_999, false)])],
        ),
        (t + 1, vec![metrics("Flaky", &[(50, true), (70, true)])]),
        (
            t + 2,
            vec![metrics(
                "Shop::Charge",
                &[(1_000_000, false), (7, true), (0, false)],
            )],
        ),
    ]
}

async fn record(b: &RedisBroker, recorded: &[(i64, Vec<ClassMetrics>)]) {
    for (minute, rows) in recorded {
        b.record_metrics(*minute, rows).await.unwrap();
    }
}

async fn ttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query_async(conn).await.unwrap()
}

async fn all_keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap();
    keys.sort();
    keys
}

#[test]
fn the_readers_calendar_is_right() {
    let t = UtcTime::of(DEC_31_23_58);
    assert_eq!(t.jobs_key(), "j|20241231|23:58");
    assert_eq!(UtcTime::of(DEC_31_23_58 + 2).jobs_key(), "j|20250101|0:0");
    assert_eq!(
        UtcTime::of(DEC_31_23_58 + 2).histogram_key("A"),
        "A-01-00:0"
    );
    // 2024-03-05 07:04 UTC and 2024-02-29 12:30 UTC (`date -u -d … +%s` / 60).
    assert_eq!(UtcTime::of(28_493_704).jobs_key(), "j|20240305|7:4");
    assert_eq!(UtcTime::of(28_493_704).histogram_key("H"), "H-05-07:4");
    assert_eq!(UtcTime::of(28_486_830).jobs_key(), "j|20240229|12:30");
    assert_eq!(UtcTime::of(0).jobs_key(), "j|19700101|0:0");
    assert_eq!(UtcTime::of(-1).jobs_key(), "j|19691231|23:59");
}

#[tokio::test]
async fn a_sidekiq7_query_reads_what_errand_recorded() {
    let mut c = case(1, true, None).await;
    let recorded = recording();
    record(&c.b, &recorded).await;
    let t = DEC_31_23_58;

    // The Web UI's default: the last 60 minutes, from "now" = 2025-01-01 00:00.
    let read = sidekiq7_query(&mut c.raw, "", t + 2, 60).await;
    assert_eq!(read, expected(&recorded));
    assert_eq!(
        read.keys().collect::<Vec<_>>(),
        ["Flaky", "Mailer", "Shop::Charge"],
        "a class with nothing counted writes nothing"
    );

    // Spelled out: counts, ms of successful runs only, failures, buckets by Sidekiq's bounds.
    let charge = &read["Shop::Charge"];
    let totals: Vec<(&str, u64)> = charge
        .totals
        .iter()
        .map(|(k, &v)| (k.as_str(), v))
        .collect();
    assert_eq!(
        totals,
        [
            ("f", 2),
            ("ms", 10 + 600 + 19 + 25 + 334_999 + 1_000_000),
            ("p", 9)
        ]
    );
    let mut first = vec![0u64; 26];
    first[0] = 2; // 10 ms, 19 ms (< 20)
    first[1] = 1; // 25 ms (< 30)
    first[9] = 1; // 600 ms (< 750)
    first[24] = 1; // 334,999 ms (< 335,000)
    assert_eq!(charge.hist[&t], first);
    let mut last = vec![0u64; 26];
    last[0] = 1; // 0 ms
    last[25] = 1; // 1,000,000 ms: "Slow"
    assert_eq!(charge.hist[&(t + 2)], last);
    assert_eq!(read["Mailer"].hist[&t][19], 1, "40 s: < 45,000 ms");
    let flaky = &read["Flaky"];
    assert_eq!(flaky.totals.get("p"), Some(&2));
    assert_eq!(flaky.totals.get("f"), Some(&2));
    assert_eq!(flaky.totals.get("ms"), None, "failures are not timed");
    assert!(flaky.hist.is_empty(), "no histogram without a timed run");

    // Query#total_avg: ms / (p - f).
    let avg = charge.totals["ms"] as f64 / (charge.totals["p"] - charge.totals["f"]) as f64;
    assert!((avg - 1_335_653.0 / 7.0).abs() < 1e-6, "{avg}");

    // A window of one minute sees that minute only.
    let one = sidekiq7_query(&mut c.raw, "", t + 1, 1).await;
    assert_eq!(one.keys().collect::<Vec<_>>(), ["Flaky"]);

    // The key names themselves, and Sidekiq's 8-hour expiry.
    let keys = all_keys(&mut c.raw).await;
    for key in [
        "j|20241231|23:58",
        "j|20241231|23:59",
        "j|20250101|0:0",
        "Shop::Charge-31-23:58",
        "Shop::Charge-01-00:0",
        "Mailer-31-23:58",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing in {keys:?}");
        let left = ttl(&mut c.raw, key).await;
        assert!((28_790..=28_800).contains(&left), "{key}: TTL {left}");
    }
    assert!(!keys.iter().any(|k| k.starts_with("Flaky-")), "{keys:?}");

    // The histogram string itself: 16-bit big-endian counters, bucket i at byte 2i.
    let raw: Vec<u8> = redis::cmd("GET")
        .arg("Shop::Charge-31-23:58")
        .query_async(&mut c.raw)
        .await
        .unwrap();
    assert_eq!(raw.len(), 2 * 25, "up to the highest bucket written (#24)");
    let decoded: Vec<u64> = raw
        .chunks(2)
        .map(|b| u64::from(u16::from_be_bytes([b[0], b[1]])))
        .chain(std::iter::once(0))
        .collect();
    assert_eq!(decoded, first);

    // Errand's own records are unchanged beside them.
    let all: Vec<ClassMetrics> = recorded.iter().flat_map(|(_, r)| r.clone()).collect();
    let errand = c.b.metrics(t, t + 2).await.unwrap();
    assert_eq!(
        errand,
        merge_by_class(all.into_iter().filter(|m| m.class != "Idle"))
    );
}

#[tokio::test]
async fn sidekiq7_histogram_counters_saturate_at_65535() {
    let mut c = case(2, true, None).await;
    let t = DEC_31_23_58;
    let mut busy = ClassMetrics::new("Busy");
    busy.executions = 70_000;
    busy.total_ms = 70_000;
    busy.histogram[0] = 70_000;
    c.b.record_metrics(t, std::slice::from_ref(&busy))
        .await
        .unwrap();
    c.b.record_metrics(t, &[metrics("Busy", &[(1, false)])])
        .await
        .unwrap();
    let read = sidekiq7_query(&mut c.raw, "", t, 1).await;
    assert_eq!(
        read["Busy"].totals["p"], 70_001,
        "hash counters do not saturate"
    );
    assert_eq!(read["Busy"].hist[&t][0], 65_535);
}

#[tokio::test]
async fn nothing_sidekiq7_shaped_is_written_without_the_option() {
    let mut c = case(3, false, None).await;
    record(&c.b, &recording()).await;
    let t = DEC_31_23_58;
    assert!(sidekiq7_query(&mut c.raw, "", t + 2, 60).await.is_empty());
    assert_eq!(
        all_keys(&mut c.raw).await,
        [
            format!("errand:metrics:{t}"),
            format!("errand:metrics:{}", t + 1),
            format!("errand:metrics:{}", t + 2),
            "errand:metrics:total".to_string(),
        ]
    );
}

#[tokio::test]
async fn a_namespace_prefixes_the_sidekiq7_keys_as_it_does_sidekiqs_others() {
    let mut c = case(4, true, Some("app")).await;
    let recorded = recording();
    record(&c.b, &recorded).await;
    let t = DEC_31_23_58;
    assert_eq!(
        sidekiq7_query(&mut c.raw, "app:", t + 2, 60).await,
        expected(&recorded)
    );
    assert!(sidekiq7_query(&mut c.raw, "", t + 2, 60).await.is_empty());
    let keys = all_keys(&mut c.raw).await;
    assert!(keys.iter().all(|k| k.starts_with("app:")), "{keys:?}");
    assert!(keys.iter().any(|k| k == "app:j|20241231|23:58"), "{keys:?}");
    assert!(
        keys.iter().any(|k| k == "app:Shop::Charge-31-23:58"),
        "{keys:?}"
    );
}

#[tokio::test]
async fn cluster_mode_refuses_the_option() {
    // Refused before any connection is tried (nothing listens on port 1).
    let config = RedisConfig::cluster(["127.0.0.1:1"]).sidekiq_metrics(true);
    let Err(err) = RedisBroker::connect_with(config).await else {
        panic!("a cluster config with sidekiq_metrics was accepted");
    };
    assert!(matches!(err, BrokerError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("sidekiq_metrics"), "{err}");
}
