//! The default `Logging` middleware's outcome lines in the JSON format, for the outcomes a
//! process test does not easily reach: a panic, a timeout, a snooze, a discard, a dead error,
//! and a retry's attempt number. Jobs run inline (`Server::perform`: the middleware chain and
//! the timeout) with `errand::logs::subscriber` writing to a buffer.

use errand::logs::{self, LogFormat};
use errand::sqlite::SqliteBroker;
use errand::{Client, Job, JobContext, JobError, JobOptions, JobResult, Push, Server};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct Act {
    what: String,
}

impl Job for Act {
    const NAME: &'static str = "Act";
    fn options() -> JobOptions {
        JobOptions::default()
            .queue("acts")
            .timeout(Duration::from_millis(200))
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        match self.what.as_str() {
            "ok" => Ok(()),
            "retry" => Err(JobError::retry("connection reset").with_class("Net::Reset")),
            "discard" => Err(JobError::discard("user deleted").with_class("Users::Gone")),
            "dead" => Err(JobError::dead("bad data").with_class("Data::Bad")),
            "snooze" => Err(JobError::snooze(Duration::from_secs(3))),
            "panic" => panic!("boom"),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            }
            other => panic!("unknown act {other}"),
        }
    }
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    /// Every line so far, each parsed as JSON; emptied.
    fn take(&self) -> Vec<Value> {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap());
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// Runs `what` inline (as the retry `retry_count` says, if any) and returns the one outcome
/// line it logged, having checked the fields every outcome line has.
async fn outcome(
    server: &Server,
    client: &Client,
    buf: &Buf,
    what: &str,
    retry_count: Option<u32>,
) -> (JobResult, Value) {
    let mut payload = client
        .build(
            &Act {
                what: what.to_string(),
            },
            &Push::default(),
        )
        .unwrap();
    if let Some(n) = retry_count {
        payload.set("retry_count", n);
    }
    let jid = payload.jid().to_string();
    let result = server.perform(payload).await;
    let lines = buf.take();
    let outcomes: Vec<&Value> = lines
        .iter()
        .filter(|v| v.get("outcome").is_some())
        .collect();
    assert_eq!(outcomes.len(), 1, "one outcome line for {what}: {lines:#?}");
    let v = outcomes[0].clone();
    assert_eq!(v["target"], "errand::job", "{v}");
    assert_eq!(v["jid"], jid, "{v}");
    assert_eq!(v["class"], "Act", "{v}");
    assert_eq!(v["queue"], "acts", "{v}");
    let expected_attempt = retry_count.map_or(1, |n| u64::from(n) + 2);
    assert_eq!(v["attempt"], expected_attempt, "{v}");
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{v}");
    let start = lines
        .iter()
        .find(|v| v["message"] == "start")
        .expect("a start line");
    assert_eq!(start["level"], "DEBUG", "{start}");
    assert_eq!(start["jid"], jid, "{start}");
    assert_eq!(start["attempt"], expected_attempt, "{start}");
    (result, v)
}

fn assert_error(v: &Value, level: &str, outcome: &str, class: &str, message: &str) {
    assert_eq!(v["level"], level, "{v}");
    assert_eq!(v["outcome"], outcome, "{v}");
    assert_eq!(v["error_class"], class, "{v}");
    assert_eq!(v["error"], message, "{v}");
}

/// A server for `Act` on a SQLite file of its own, with the JSON log lines of
/// `errand::job` (debug and up) going to `buf` while `_guard` lives.
struct Setup {
    path: std::path::PathBuf,
    client: Client,
    server: Server,
    buf: Buf,
    _guard: tracing::dispatcher::DefaultGuard,
}

async fn setup(name: &str) -> Setup {
    let path = std::env::temp_dir().join(format!(
        "errand-logging-{name}-{}.sqlite",
        std::process::id()
    ));
    let broker = SqliteBroker::open(&path).await.unwrap();
    let client = Client::new(broker.clone());
    let server = Server::builder(broker)
        .register::<Act>()
        .queues(["acts"])
        .handle_signals(false)
        .build()
        .unwrap();
    let buf = Buf::default();
    let writer = buf.clone();
    let sub =
        logs::subscriber(LogFormat::Json, "errand::job=debug", move || writer.clone()).unwrap();
    let _guard = tracing::dispatcher::set_default(&tracing::Dispatch::new(sub));
    Setup {
        path,
        client,
        server,
        buf,
        _guard,
    }
}

fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[tokio::test]
async fn every_outcome_is_one_json_line_with_its_fields() {
    let Setup {
        path,
        client,
        server,
        buf,
        _guard,
    } = setup("all").await;

    let (r, v) = outcome(&server, &client, &buf, "ok", None).await;
    assert!(r.is_ok());
    assert_eq!(
        (&v["level"], &v["outcome"]),
        (&"INFO".into(), &"done".into())
    );
    assert!(
        v.get("error").is_none() && v.get("error_class").is_none(),
        "{v}"
    );

    // The first retry is attempt 2 (Sidekiq's retry_count 0).
    let (r, v) = outcome(&server, &client, &buf, "retry", Some(0)).await;
    assert!(r.is_err());
    assert_error(&v, "WARN", "failed", "Net::Reset", "connection reset");
    let (_, v) = outcome(&server, &client, &buf, "retry", Some(4)).await;
    assert_eq!(v["attempt"], 6, "{v}");

    let (_, v) = outcome(&server, &client, &buf, "discard", None).await;
    assert_error(&v, "INFO", "discarded", "Users::Gone", "user deleted");
    let (_, v) = outcome(&server, &client, &buf, "dead", None).await;
    assert_error(&v, "WARN", "dead", "Data::Bad", "bad data");

    let (_, v) = outcome(&server, &client, &buf, "snooze", None).await;
    assert_eq!(
        (&v["level"], &v["outcome"]),
        (&"INFO".into(), &"snoozed".into())
    );
    assert_eq!(v["snooze_ms"], 3000, "{v}");
    assert!(v.get("error").is_none(), "{v}");

    // A panic is logged and passed on: the server still sees it as a failure.
    let (r, v) = outcome(&server, &client, &buf, "panic", None).await;
    assert_eq!(r.unwrap_err().class(), "Errand::Panic");
    assert_error(&v, "WARN", "failed", "Errand::Panic", "boom");

    // A timeout drops the attempt: its outcome line is logged all the same.
    let (r, v) = outcome(&server, &client, &buf, "slow", None).await;
    assert_eq!(r.unwrap_err().class(), "Errand::Timeout");
    assert_error(
        &v,
        "WARN",
        "failed",
        "Errand::Timeout",
        "job ran longer than its timeout",
    );
    let ms = v["duration_ms"].as_f64().unwrap();
    assert!((150.0..10_000.0).contains(&ms), "{v}");

    drop(server);
    remove_db(&path);
}

/// An expired job and a job of a class the server does not know never reach the middleware
/// chain; the server writes their outcome lines itself, on the same target with the same fields.
#[tokio::test]
async fn expired_and_unknown_jobs_have_their_outcome_lines() {
    let Setup {
        path,
        client,
        server,
        buf,
        _guard,
    } = setup("unrun").await;

    let mut stale = client
        .build(&Act { what: "ok".into() }, &Push::default())
        .unwrap();
    stale.set("errand_expires_at", 1.0); // long past
    let stale_jid = client.push_payload(stale, None).await.unwrap();
    let unknown_jid = client
        .push_raw(
            errand::RawJob::new("Billing::Gone", vec![serde_json::json!(7)]).queue("acts"),
            Push::new(),
        )
        .await
        .unwrap();
    let drained = server.drain().await.unwrap();
    assert_eq!(drained.performed, 2);

    let lines = buf.take();
    let outcome_of = |jid: &str| -> Value {
        let found: Vec<&Value> = lines
            .iter()
            .filter(|v| v.get("outcome").is_some() && v["jid"] == jid)
            .collect();
        assert_eq!(found.len(), 1, "one outcome line for {jid}: {lines:#?}");
        found[0].clone()
    };
    let v = outcome_of(&stale_jid);
    assert_eq!(v["target"], "errand::job", "{v}");
    assert_eq!(
        (&v["level"], &v["outcome"]),
        (&"INFO".into(), &"expired".into())
    );
    assert_eq!(
        (&v["class"], &v["queue"], &v["attempt"]),
        (&"Act".into(), &"acts".into(), &1.into())
    );
    assert!(v["late_by_s"].as_f64().is_some_and(|s| s > 1e9), "{v}");
    let v = outcome_of(&unknown_jid);
    assert_eq!(v["target"], "errand::job", "{v}");
    assert_eq!(
        (&v["class"], &v["queue"], &v["attempt"]),
        (&"Billing::Gone".into(), &"acts".into(), &1.into())
    );
    assert_eq!(v["level"], "WARN", "{v}");
    assert_eq!(v["outcome"], "failed", "{v}");
    assert_eq!(v["error_class"], "Errand::UnknownJob", "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("Billing::Gone")),
        "{v}"
    );

    drop(server);
    remove_db(&path);
}
