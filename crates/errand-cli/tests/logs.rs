//! The JSON log format end to end: a real worker process (`errand demo`, whose jobs succeed,
//! fail and are retried, and die) run with `--log-format json` or `ERRAND_LOG_FORMAT=json`.
//! Every line it writes on stderr must be one JSON object, with exactly one outcome line per job
//! attempt carrying the jid, class, queue, attempt, duration and error; stdout keeps the demo's
//! own report.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Output};

/// How many export chunks the demo runs (each sleeps 40 ms).
const CHUNKS: usize = 5;

fn errand() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_errand"));
    cmd.env_remove("ERRAND_LOG_FORMAT").env_remove("RUST_LOG");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every stderr line parsed as a JSON object with the fields every event has.
fn json_lines(out: &Output) -> Vec<Value> {
    let stderr = text(&out.stderr);
    stderr
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("a stderr line is not JSON ({e}): {line:?}\n--- stderr ---\n{stderr}")
            });
            assert!(v.is_object(), "not an object: {line}");
            for key in ["timestamp", "level", "target", "message"] {
                assert!(v[key].is_string(), "no {key} in {line}");
            }
            let ts = v["timestamp"].as_str().unwrap();
            // UTC, RFC 3339: 2025-01-01T12:00:00.123456Z
            assert!(
                ts.len() >= 20 && &ts[4..5] == "-" && &ts[10..11] == "T" && ts.ends_with('Z'),
                "timestamp {ts} in {line}"
            );
            v
        })
        .collect()
}

fn str_field<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("{key} missing, empty or not a string in {v}"))
}

fn u64_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not an unsigned integer in {v}"))
}

/// One attempt as its outcome line tells it.
#[derive(Debug)]
struct Attempt {
    class: String,
    queue: String,
    attempt: u64,
    outcome: String,
    duration_ms: f64,
    error: Option<(String, String)>,
}

/// Runs the demo on `backend` (`--sqlite FILE` or `--redis URL`) with JSON logs (through
/// `how`) and checks its log lines.
fn demo_with_json_logs(backend: &[&str], how: impl FnOnce(&mut Command)) {
    let mut cmd = errand();
    cmd.arg("demo")
        .args(backend)
        .args([
            "--plain",
            "--no-web",
            "--export-chunks",
            &CHUNKS.to_string(),
        ])
        // Outcome lines (info, warn) and the start lines (debug) of `errand::job`, and the
        // server's own info lines.
        .env("RUST_LOG", "info,errand::job=debug");
    how(&mut cmd);
    let out = cmd.output().expect("run errand demo");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("Summary"), "{stdout}");
    assert!(
        !stdout.lines().any(|l| l.trim_start().starts_with('{')),
        "log lines go to stderr, not into the demo's report:\n{stdout}"
    );
    let lines = json_lines(&out);
    let job_lines: Vec<&Value> = lines
        .iter()
        .filter(|v| v["target"] == "errand::job")
        .collect();

    // One outcome line per attempt, in order, grouped by jid.
    let mut by_jid: BTreeMap<String, Vec<Attempt>> = BTreeMap::new();
    let mut starts: HashMap<(String, u64), usize> = HashMap::new();
    for v in &job_lines {
        let jid = str_field(v, "jid").to_string();
        str_field(v, "class");
        str_field(v, "queue");
        let attempt = u64_field(v, "attempt");
        if v["message"] == "start" {
            assert_eq!(v["level"], "DEBUG", "{v}");
            assert!(v.get("outcome").is_none(), "{v}");
            *starts.entry((jid, attempt)).or_default() += 1;
            continue;
        }
        let outcome = str_field(v, "outcome").to_string();
        let duration_ms = v["duration_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("duration_ms missing or not a number in {v}"));
        assert!(duration_ms.is_finite() && duration_ms >= 0.0, "{v}");
        let error = match outcome.as_str() {
            "done" => {
                assert_eq!(v["level"], "INFO", "{v}");
                assert_eq!(v["message"], "job done", "{v}");
                assert!(
                    v.get("error").is_none() && v.get("error_class").is_none(),
                    "{v}"
                );
                None
            }
            "failed" => {
                assert_eq!(v["level"], "WARN", "{v}");
                assert_eq!(v["message"], "job failed", "{v}");
                Some((
                    str_field(v, "error_class").to_string(),
                    str_field(v, "error").to_string(),
                ))
            }
            other => panic!("no job of the demo ends {other}: {v}"),
        };
        by_jid.entry(jid).or_default().push(Attempt {
            class: str_field(v, "class").to_string(),
            queue: str_field(v, "queue").to_string(),
            attempt,
            outcome,
            duration_ms,
            error,
        });
    }

    // Each attempt has its start line, and its outcome line only once.
    let outcomes: usize = by_jid.values().map(Vec::len).sum();
    assert_eq!(
        starts.len(),
        outcomes,
        "a start line per attempt: {starts:?}"
    );
    for (jid, attempts) in &by_jid {
        for a in attempts {
            assert_eq!(
                starts.get(&(jid.clone(), a.attempt)),
                Some(&1),
                "one start line for {jid} attempt {}",
                a.attempt
            );
        }
    }

    // Every job's story: its attempts numbered 1, 2, 3 ... with one class and queue, failures
    // until the last.
    let mut stories: BTreeMap<String, Vec<(String, Vec<String>)>> = BTreeMap::new();
    for (jid, attempts) in &by_jid {
        let first = &attempts[0];
        let numbers: Vec<u64> = attempts.iter().map(|a| a.attempt).collect();
        let expected: Vec<u64> = (1..=attempts.len() as u64).collect();
        assert_eq!(numbers, expected, "attempts of {jid}: {attempts:?}");
        for a in attempts {
            assert_eq!(
                (&a.class, &a.queue),
                (&first.class, &first.queue),
                "{jid}: {attempts:?}"
            );
        }
        for a in &attempts[..attempts.len() - 1] {
            assert_eq!(a.outcome, "failed", "{jid}: {attempts:?}");
        }
        let story = attempts
            .iter()
            .map(|a| match &a.error {
                None => a.outcome.clone(),
                Some((class, message)) => format!("{} {class}: {message}", a.outcome),
            })
            .collect();
        stories
            .entry(format!("{} in {}", first.class, first.queue))
            .or_default()
            .push((jid.clone(), story));
    }
    let count = |key: &str, story: &[&str]| {
        stories
            .get(key)
            .map_or(0, |jobs| jobs.iter().filter(|(_, s)| s == story).count())
    };
    let jobs = |key: &str| stories.get(key).map_or(0, Vec::len);
    let done = ["done"];

    assert_eq!(count("WelcomeEmail in critical", &done), 12, "{stories:#?}");
    assert_eq!(jobs("WelcomeEmail in critical"), 12, "{stories:#?}");
    assert_eq!(count("BulkExport in bulk", &done), CHUNKS, "{stories:#?}");
    assert_eq!(jobs("BulkExport in bulk"), CHUNKS, "{stories:#?}");
    // The orders 1001..=1020 that are multiples of 7 (1001, 1008, 1015) fail once.
    let receipt = "failed Receipts::Timeout: receipt service timed out after the charge";
    assert_eq!(count("ProcessOrder in default", &done), 17, "{stories:#?}");
    assert_eq!(
        count("ProcessOrder in default", &[receipt, "done"]),
        3,
        "{stories:#?}"
    );
    assert_eq!(jobs("ProcessOrder in default"), 20, "{stories:#?}");
    let unavailable = "failed Inventory::Unavailable: 503 Service Unavailable";
    assert_eq!(
        count(
            "SyncInventory in default",
            &[unavailable, unavailable, "done"]
        ),
        3,
        "{stories:#?}"
    );
    assert_eq!(jobs("SyncInventory in default"), 3, "{stories:#?}");
    assert_eq!(
        count("InventoryReport in callbacks", &done),
        1,
        "{stories:#?}"
    );
    let feed = "failed Feeds::MalformedCsv: feed 42: malformed CSV at line 1";
    assert_eq!(
        count("ImportLegacyFeed in default", &[feed, feed, feed]),
        1,
        "{stories:#?}"
    );
    assert_eq!(stories.len(), 6, "no other classes: {stories:#?}");

    // The jids are the jobs' own: the dead feed import's is the one its death handler printed.
    let feed_jid = &stories["ImportLegacyFeed in default"][0].0;
    assert!(
        stdout.contains(&format!(
            "ImportLegacyFeed (job {feed_jid}) is dead after 3 attempts"
        )),
        "{feed_jid} not in:\n{stdout}"
    );
    // ... and the ones the server's retry lines name, with the attempt that failed (the retry
    // count is the attempt number less one).
    for v in lines.iter().filter(|v| v["message"] == "retry scheduled") {
        let (jid, count) = (str_field(v, "jid"), u64_field(v, "count"));
        let attempts = by_jid
            .get(jid)
            .unwrap_or_else(|| panic!("a retry of a job with no outcome line: {v}"));
        assert_eq!(
            attempts[count as usize].outcome, "failed",
            "{v}: {attempts:?}"
        );
        assert_eq!(attempts[count as usize].attempt, count + 1, "{v}");
    }
    let failed: usize = by_jid
        .values()
        .flatten()
        .filter(|a| a.outcome == "failed")
        .count();
    assert_eq!(failed, 3 + 6 + 3, "{stories:#?}");
    assert!(
        stdout.contains(&format!("failed attempts   {failed} ")),
        "the demo counted the failed attempts the log shows ({failed}):\n{stdout}"
    );
    // The durations are the attempts' own: an export chunk sleeps 40 ms.
    for a in by_jid
        .values()
        .flatten()
        .filter(|a| a.class == "BulkExport")
    {
        assert!(a.duration_ms >= 40.0, "{a:?}");
    }
}

#[test]
fn json_logs_of_a_demo_on_the_embedded_backend() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.sqlite");
    demo_with_json_logs(&["--sqlite", file.to_str().unwrap()], |cmd| {
        cmd.arg("--log-format").arg("json");
    });
}

#[test]
fn json_logs_of_a_demo_on_redis_from_the_environment() {
    let redis = errand_tests::RedisServer::start();
    demo_with_json_logs(&["--redis", &redis.url()], |cmd| {
        cmd.env("ERRAND_LOG_FORMAT", "json");
    });
}

#[test]
fn a_failing_command_reports_its_error_as_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("x.sqlite");
    let out = errand()
        .args(["--log-format", "json", "ops", "stats", "--sqlite"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "ERROR", "{}", lines[0]);
    assert_eq!(lines[0]["message"], "command failed", "{}", lines[0]);
    str_field(&lines[0], "error");

    // In text, as before.
    let out = errand()
        .args(["ops", "stats", "--sqlite"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).starts_with("error: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_unknown_log_format_or_filter_is_refused() {
    let out = errand()
        .args(["--log-format", "xml", "ops", "stats"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unknown log format \"xml\": expected \"text\" or \"json\""),
        "{stderr}"
    );

    let out = errand()
        .args(["ops", "stats"])
        .env("ERRAND_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        text(&out.stderr).contains("\"yaml\""),
        "{}",
        text(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let out = errand()
        .args(["ops", "stats", "--sqlite"])
        .arg(dir.path().join("x.sqlite"))
        .env("RUST_LOG", "errand=loud")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid log filter \"errand=loud\" (from RUST_LOG)"),
        "{stderr}"
    );
}
