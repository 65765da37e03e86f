//! `errand demo` end to end, as the README runs it: it must finish by itself and account for
//! every job in its summary.

use std::process::Command;

fn demo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_errand"))
        .arg("demo")
        .args(["--web", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("run errand demo");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "demo failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_summary(out: &str) {
    for expected in [
        "Enqueued 336 jobs",
        "processed         336 ok: 12 welcome emails (2 skipped: user deleted), 20 orders, 3 inventory syncs, 300 export chunks, 1 batch report",
        "batch      inventory sync success: 3 of 3 SKUs synced, 0 pending -> report sent once",
        "dead              1 job(s); 1 alert(s) raised by the death handler",
        "payments          20 orders charged once each; 3 retried charge(s) deduplicated by idempotency key",
        "ALERT      ImportLegacyFeed",
        "SKU-2 synced on attempt 3",
        "user 9 was deleted before the job ran",
        "337/337 done | 0 queued | 0 retrying | 0 scheduled | 1 dead",
        "exported          300000 rows",
        "Dashboard: http://127.0.0.1:",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[test]
fn demo_on_the_embedded_backend_finishes_with_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.sqlite");
    let out = demo(&["--sqlite", file.to_str().unwrap(), "--plain"]);
    assert_summary(&out);
    assert!(file.exists(), "the demo used the file it was given");
    // A second run starts from a fresh file: the same summary.
    assert_summary(&demo(&["--sqlite", file.to_str().unwrap(), "--plain"]));
}

#[test]
fn demo_on_redis() {
    let redis = errand_tests::RedisServer::start();
    let out = demo(&["--redis", &redis.url(), "--plain"]);
    assert_summary(&out);
}
