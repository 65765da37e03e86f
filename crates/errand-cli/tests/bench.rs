//! `errand bench` end to end on small numbers: it must finish by itself and report every figure
//! (no timing thresholds: only that each figure is there, positive and consistent).

use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_errand"))
        .arg("bench")
        .args([
            "--jobs",
            "2000",
            "--rate",
            "200",
            "--seconds",
            "1",
            "--json",
        ])
        .args(args)
        .output()
        .expect("run errand bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "bench failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}"))
}

fn figure(v: &Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"));
    assert!(x.is_finite() && x > 0.0, "{key} = {x} in {v}");
    x
}

fn assert_figures(v: &Value, backend: &str, processes: u64) {
    assert_eq!(v["backend"], backend, "{v}");
    assert_eq!(v["jobs"], 2000, "{v}");
    assert_eq!(v["processes"], processes, "{v}");
    assert_eq!(
        v["latency_jobs"], 200,
        "every latency job reported its latency: {v}"
    );
    figure(v, "enqueue_jobs_per_sec");
    figure(v, "drain_jobs_per_sec");
    figure(v, "cpu_s_per_100k");
    figure(v, "peak_rss_mb");
    let (p50, p99, max) = (
        figure(v, "latency_p50_ms"),
        figure(v, "latency_p99_ms"),
        figure(v, "latency_max_ms"),
    );
    assert!(max >= p99 && p99 >= p50, "latency order in {v}");
    // The five slowest starts, the slowest first: the maximum, and when in the phase it was.
    let worst = v["latency_worst"].as_array().expect("latency_worst");
    assert_eq!(worst.len(), 5, "{v}");
    assert_eq!(worst[0]["ms"].as_f64(), Some(max), "{v}");
    assert!(
        worst
            .windows(2)
            .all(|w| w[0]["ms"].as_f64() >= w[1]["ms"].as_f64()),
        "{v}"
    );
    assert!(
        worst
            .iter()
            .all(|w| w["at_s"].as_f64().is_some_and(|t| t >= 0.0)),
        "{v}"
    );
}

#[test]
fn bench_on_the_embedded_backend_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.sqlite");
    let v = bench(&["--sqlite", file.to_str().unwrap()]);
    assert_figures(&v, "sqlite", 0);
}

#[test]
fn bench_on_redis_with_worker_processes() {
    let redis = errand_tests::RedisServer::start();
    let v = bench(&["--redis", &redis.url(), "--processes", "2"]);
    assert_figures(&v, "redis", 2);
    // What Redis spent on the drain: CPU, and its commands per job. Jobs are held in an
    // in-flight hash: one HSET per fetch and one HMGET + HDEL per ack group, each shared by the
    // jobs of the group, so far under one command per job (the README quotes 0.28 at
    // concurrency 25; the list layout before it took 2.12: an LPUSH and an LREM per job).
    figure(&v, "redis_cpu_s_per_100k");
    let per_job = figure(&v, "redis_commands_per_job");
    assert!(
        per_job > 0.0 && per_job < 0.5,
        "well under a command per job: {v}"
    );
    let calls = |name: &str| v["redis_calls_per_job"][name].as_f64().unwrap_or(0.0);
    assert!(
        calls("hdel") > 0.0 && calls("hdel") <= 0.5,
        "acks go by HDEL, one per group: {v}"
    );
    assert_eq!(calls("lrem"), 0.0, "no LREM scan per ack: {v}");
}

#[test]
fn bench_in_a_batch_records_every_job() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.sqlite");
    let v = bench(&["--sqlite", file.to_str().unwrap(), "--in-batch"]);
    assert_figures(&v, "sqlite", 0);
    assert_eq!(v["in_batch"], true, "{v}");
}
