//! The bad-input suite (RELIABILITY-PLAN B1–B9) on a real Redis and a real worker process:
//! entries pushed straight into Redis, bypassing Errand's client, interleaved with 10,000 good
//! jobs. Every bad entry ends in the dead set with a reason (or, where the plan says so, in the
//! retry set naming the problem, or rejected at enqueue); the worker process never restarts
//! (same PID); and every good job completes.

use errand::redis::RedisBroker;
use errand::{Client, Error};
use errand_tests::{RedisServer, Worker, wait_until_sync};
use redis::Commands;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

const GOOD: u64 = 10_000;

/// A job payload for the worker's `Ledger(n)` with `extra` keys merged in (or removed when null).
fn ledger_job(n: u64, extra: Value) -> String {
    let mut job = json!({
        "class": "Ledger", "args": [n], "queue": "default", "retry": true,
        "jid": format!("bad-input-{n:014}"), "created_at": 1.7e9, "enqueued_at": 1.7e9,
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        if v.is_null() {
            job.as_object_mut().unwrap().remove(&k);
        } else {
            job[k] = v;
        }
    }
    job.to_string()
}

/// A raw job of `class` with `args` (any JSON) and `extra` keys.
fn raw_job(class: Value, args: Value, extra: Value) -> String {
    let mut job = json!({"class": class, "args": args, "queue": "default", "retry": true,
                         "jid": "bad-input-raw", "created_at": 1.7e9});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        job[k] = v;
    }
    job.to_string()
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn blobs(count: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|i| {
            (0..(1 + i % 200))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_never_crashes_the_worker_and_every_entry_is_accounted_for() {
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    let mut conn = redis.conn();

    // Entries expected in the dead set (B1, B2 non-string class, B3 non-array args and deep
    // nesting, B4, B5, B6 invalid counts, B8 missing and oversize jid), pushed raw.
    let mut dead_bound: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{\"class\":".to_vec(),
    ];
    dead_bound.extend(blobs(1_000));
    let big = ledger_job(1, json!({"pad": "x".repeat(1 << 20)}));
    dead_bound.push(big.as_bytes()[..big.len() / 2].to_vec()); // truncated 1 MiB JSON
    dead_bound.push(raw_job(json!(123), json!([1]), json!({})).into_bytes());
    for args in [json!("str"), json!({"a": 1}), Value::Null] {
        dead_bound.push(raw_job(json!("Ledger"), args, json!({})).into_bytes());
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    dead_bound.push(format!(r#"{{"class":"Ledger","args":{deep},"jid":"deep"}}"#).into_bytes());
    // B4: 10 MB pushed straight in (the client refuses it, checked below).
    let ten_mb = ledger_job(2, json!({"pad": "y".repeat(10 << 20)}));
    dead_bound.push(ten_mb.clone().into_bytes());
    // B5: bytes that are not UTF-8, an overlong encoding, a lone surrogate escape, a raw NUL.
    dead_bound.push(b"\xff\xfe".to_vec());
    dead_bound.push(b"{\"class\":\"Ledger\xc0\xaf\",\"args\":[1]}".to_vec());
    dead_bound.push(br#"{"class":"Ledger","args":["\ud800"],"jid":"s"}"#.to_vec());
    dead_bound.push(b"{\"class\":\"Ledger\",\0\"args\":[1]}".to_vec());
    // B6: a failing job whose retry_count is not a count is treated as exhausted.
    for count in [json!(1e300), json!("NaN"), json!(true)] {
        dead_bound.push(
            raw_job(
                json!("DoesNotExist"),
                json!([]),
                json!({"retry_count": count, "jid": "b6"}),
            )
            .into_bytes(),
        );
    }
    dead_bound.push(
        r#"{"class":"DoesNotExist","args":[],"jid":"b6big","retry_count":18446744073709551616}"#
            .as_bytes()
            .to_vec(),
    );
    // B8: no jid; a 10 KiB jid.
    dead_bound.push(ledger_job(3, json!({"jid": null})).into_bytes());
    dead_bound.push(ledger_job(4, json!({"jid": "j".repeat(10 * 1024)})).into_bytes());

    // Entries expected in the retry set, naming their problem: unknown classes (B2, B5's
    // right-to-left override), arguments of the wrong type (B3), a valid -1 count and a huge
    // retry budget with a huge count (B6).
    let mut retry_bound: Vec<String> = [
        "DoesNotExist",
        "../../etc/passwd",
        "std::process::exit",
        "",
        "Evil\u{202E}Job",
    ]
    .iter()
    .map(|c| raw_job(json!(c), json!([1]), json!({})))
    .collect();
    retry_bound.push(raw_job(json!("X".repeat(10 * 1024)), json!([1]), json!({})));
    retry_bound.push(raw_job(
        json!("Ledger"),
        json!([1.5e308, -0.0, "x"]),
        json!({}),
    ));
    retry_bound.push(raw_job(
        json!("DoesNotExist"),
        json!([]),
        json!({"retry_count": -1}),
    ));
    retry_bound.push(raw_job(
        json!("DoesNotExist"),
        json!([]),
        json!({"retry": 1_000_000_000u64, "retry_count": 1_000_000}),
    ));

    // Entries that run: duplicate jids (both run), a jid with CRLF, 900 KiB of legal arguments.
    let runs = [
        ledger_job(20_001, json!({"jid": "same-jid"})),
        ledger_job(20_002, json!({"jid": "same-jid"})),
        ledger_job(20_003, json!({"jid": "line\r\nbreak"})),
        json!({"class": "Sum", "args": [(0..200_000u64).map(|i| i % 1000).collect::<Vec<_>>()],
               "jid": "sum", "queue": "default"})
        .to_string(),
    ];
    assert!(runs[3].len() > 700 * 1024 && runs[3].len() < 1024 * 1024);

    // Interleave: a slice of good jobs, then some bad ones, until both are pushed.
    let bad: Vec<Vec<u8>> = dead_bound
        .iter()
        .cloned()
        .chain(retry_bound.iter().map(|s| s.clone().into_bytes()))
        .chain(runs.iter().map(|s| s.clone().into_bytes()))
        .collect();
    let per_slice = bad.len().div_ceil(20);
    for (slice, chunk) in bad.chunks(per_slice).enumerate() {
        let from = slice as u64 * GOOD / 20;
        let to = from + GOOD / 20;
        let good: Vec<String> = (from..to).map(|n| ledger_job(n, json!({}))).collect();
        let _: () = conn.lpush("queue:default", &good).unwrap();
        for entry in chunk {
            let _: () = conn.lpush("queue:default", entry.as_slice()).unwrap();
        }
    }
    // B7: odd scores in the schedule set.
    for (n, score) in [
        (30_001u64, f64::NEG_INFINITY),
        (30_002, -1.0),
        (30_003, 0.0),
    ] {
        let _: () = conn
            .zadd("schedule", ledger_job(n, json!({})), score)
            .unwrap();
    }
    for (n, score) in [(30_004u64, 1e308), (30_005, f64::INFINITY)] {
        let _: () = conn
            .zadd("schedule", ledger_job(n, json!({})), score)
            .unwrap();
    }
    let _: () = conn.zadd("schedule", "not json in a set", 0.0).unwrap();
    let nan: redis::RedisResult<()> = redis::cmd("ZADD")
        .arg("schedule")
        .arg("nan")
        .arg("x")
        .query(&mut conn);
    assert!(nan.is_err(), "Redis refuses a NaN score");

    // B4 at enqueue: the client refuses an oversized payload with a clear error.
    let refused = client
        .push_raw(
            errand::RawJob::new("Ledger", vec![json!("z".repeat(10 << 20))]),
            errand::Push::new(),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::Payload(_))),
        "oversized enqueue refused: {refused:?}"
    );

    let mut worker = Worker::start(
        env!("CARGO_BIN_EXE_errand-test-worker"),
        &url,
        10,
        5_000,
        None,
    );
    let pid = worker.0.id();
    let expected_dead = dead_bound.len() + 1; // and the non-JSON schedule member
    tokio::task::block_in_place(|| {
        wait_until_sync(
            "every entry to be handled",
            Duration::from_secs(120),
            || {
                assert!(
                    worker.0.try_wait().unwrap().is_none(),
                    "the worker process exited"
                );
                let queued: usize = conn.llen("queue:default").unwrap();
                let dead: usize = conn.zcard("dead").unwrap();
                let retry: usize = conn.zcard("retry").unwrap();
                queued == 0 && dead >= expected_dead && retry >= retry_bound.len()
            },
        )
    });
    assert!(worker.0.try_wait().unwrap().is_none());
    assert_eq!(worker.0.id(), pid, "same process throughout");

    let ledger: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    assert!(
        (0..GOOD).all(|n| ledger.get(&n) == Some(&1)),
        "every good job ran once"
    );
    for n in [20_001, 20_002, 20_003, 30_001, 30_002, 30_003] {
        assert_eq!(ledger.get(&n), Some(&1), "job {n} ran once");
    }
    assert_eq!(ledger.get(&7_000_000), Some(&1), "the 900 KiB job ran");
    let scheduled: Vec<(String, f64)> = conn.zrange_withscores("schedule", 0, -1).unwrap();
    assert_eq!(
        scheduled.len(),
        2,
        "only the never-due jobs wait: {scheduled:?}"
    );

    let dead: Vec<String> = conn.zrange("dead", 0, -1).unwrap();
    assert_eq!(dead.len(), expected_dead);
    for entry in &dead {
        assert!(
            entry.len() <= 80 * 1024,
            "a dead entry is bounded ({} bytes)",
            entry.len()
        );
        let p: Value = serde_json::from_str(entry).expect("dead entries are valid JSON");
        let class = p["error_class"].as_str().unwrap_or_default();
        assert!(
            class == "Errand::InvalidPayload" || class == "Errand::UnknownJob",
            "reason recorded: {class}"
        );
        assert!(!p["error_message"].as_str().unwrap_or_default().is_empty());
    }
    let retry: Vec<(String, f64)> = conn.zrange_withscores("retry", 0, -1).unwrap();
    assert_eq!(retry.len(), retry_bound.len());
    for (entry, score) in &retry {
        assert!(score.is_finite(), "retry scores are finite");
        let p: Value = serde_json::from_str(entry).unwrap();
        assert!(
            !p["error_message"].as_str().unwrap_or_default().is_empty(),
            "{p}"
        );
    }
    let in_flight: Vec<String> = conn.keys("errand:inflight:*").unwrap();
    for k in in_flight {
        let n: usize = conn.hlen(&k).unwrap();
        assert_eq!(n, 0, "nothing left in flight");
    }
}
