//! The ops commands on a real SQLite file: enqueue, read the figures, pause and resume,
//! list and act on the dead set, all as a person types them.

use errand::admin::{Admin, QueueRange, SetName};
use errand::broker::Fleet;
use errand::broker::JobQueue;
use errand::broker::{DeadLimits, FetchRequest, Settle};
use errand::sqlite::SqliteBroker;
use std::process::Command;
use std::time::Duration;

fn errand(file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_errand"))
        .args(args)
        .args(["--sqlite", file.to_str().unwrap()])
        .env_remove("REDIS_URL")
        .output()
        .expect("run errand");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "errand {args:?} failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn ops_commands_read_and_change_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ops.sqlite");
    // Created first, so the commands and this test share one initialised file.
    let broker = SqliteBroker::open(&file).await.unwrap();

    let jid = errand(
        &file,
        &["ops", "enqueue", "Mailer", "42", "hello", "--queue", "mail"],
    );
    let jid = jid.trim();
    assert_eq!(jid.len(), 24, "{jid}");
    errand(
        &file,
        &["ops", "enqueue", "Report", "{\"id\":7}", "--in", "3600"],
    );

    let stats: serde_json::Value =
        serde_json::from_str(&errand(&file, &["ops", "--json", "stats"])).unwrap();
    assert_eq!(stats["enqueued"], 1);
    assert_eq!(stats["scheduled"], 1);
    let queued = broker
        .queue_page(QueueRange {
            queue: "mail",
            offset: 0,
            limit: 10,
            order: Default::default(),
        })
        .await
        .unwrap();
    let p = errand::Payload::parse(&queued[0]).unwrap();
    assert_eq!(p.jid(), jid);
    assert_eq!(
        p.args(),
        &[serde_json::json!(42), serde_json::json!("hello")]
    );

    let queues = errand(&file, &["ops", "queues"]);
    assert!(
        queues
            .lines()
            .any(|l| l.starts_with("mail") && l.contains("active")),
        "{queues}"
    );
    errand(&file, &["ops", "pause", "mail"]);
    assert_eq!(broker.paused_queues().await.unwrap(), vec!["mail"]);
    assert!(errand(&file, &["ops", "queues"]).contains("paused"));
    errand(&file, &["ops", "resume", "mail"]);
    assert!(broker.paused_queues().await.unwrap().is_empty());

    // A dead job, as a server files it; then list it and retry it by key.
    let got = broker
        .fetch(FetchRequest {
            identity: "ops-test",
            queues: &["mail".to_string()],
            max: 1,
            wait: Duration::from_millis(10),
        })
        .await
        .unwrap();
    let mut dead = errand::Payload::parse(&got[0].raw).unwrap();
    dead.set("error_class", "Net::SMTPFatalError");
    dead.set("error_message", "550 mailbox unavailable");
    dead.set("retry_count", 3);
    assert!(
        broker
            .settle(
                &got[0],
                &Settle::Dead {
                    payload: dead.to_json(),
                    now: errand_core::now(),
                    limits: DeadLimits::default(),
                }
            )
            .await
            .unwrap()
    );
    let listing = errand(&file, &["ops", "jobs", "dead"]);
    assert!(
        listing.contains("Mailer") && listing.contains("550 mailbox unavailable"),
        "{listing}"
    );
    let page: serde_json::Value = serde_json::from_str(&errand(
        &file,
        &["ops", "--json", "jobs", "dead", "--class", "mail"],
    ))
    .unwrap();
    let key = page["entries"][0]["key"].as_str().unwrap().to_string();
    let out = errand(&file, &["ops", "job", "retry", "dead", &key]);
    assert!(out.contains("1 job(s) enqueued"), "{out}");
    assert_eq!(broker.set_size(SetName::Dead).await.unwrap(), 0);
    let back = broker
        .queue_page(QueueRange {
            queue: "mail",
            offset: 0,
            limit: 10,
            order: Default::default(),
        })
        .await
        .unwrap();
    let p = errand::Payload::parse(&back[0]).unwrap();
    assert_eq!(p.jid(), jid);
    assert_eq!(
        p.retry_count(),
        Some(2),
        "a manual retry takes one off retry_count"
    );

    // --all on the schedule set: kill everything matching.
    let out = errand(
        &file,
        &[
            "ops",
            "job",
            "kill",
            "scheduled",
            "--all",
            "--class",
            "Report",
        ],
    );
    assert!(out.contains("1 job(s) killed"), "{out}");
    assert_eq!(broker.set_size(SetName::Dead).await.unwrap(), 1);
    let out = errand(&file, &["ops", "clear", "mail"]);
    assert!(out.contains("1 jobs deleted"), "{out}");
}

/// `errand ops periodic`: list an entry a server declared, pause and resume it, run it now.
#[tokio::test]
async fn ops_periodic_lists_pauses_resumes_and_runs_entries() {
    use errand::broker::{Coordination, PeriodicEntry};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("periodic.sqlite");
    let broker = SqliteBroker::open(&file).await.unwrap();
    // As a server declares `Periodic::new("nightly", "0 3 * * *", Report).zone("Europe/Berlin")`.
    broker
        .periodic_upsert(
            &[PeriodicEntry {
                name: "nightly".into(),
                spec: "0 3 * * *".into(),
                zone: "Europe/Berlin".into(),
                queue: "reports".into(),
                template: r#"{"retry":true,"queue":"reports","args":[7],"class":"Report"}"#.into(),
                missed: "skip".into(),
            }],
            errand_core::now(),
        )
        .await
        .unwrap();
    let list = errand(&file, &["ops", "periodic", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with("nightly"))
        .expect(&list);
    assert!(
        row.contains("0 3 * * * (Europe/Berlin)")
            && row.contains("Report")
            && row.contains("active"),
        "{list}"
    );
    assert!(row.contains("never"), "not run yet: {row}");
    let listed: serde_json::Value =
        serde_json::from_str(&errand(&file, &["ops", "--json", "periodic", "list"])).unwrap();
    let next = listed["periodic"][0]["next_run"].as_f64().unwrap();
    assert!(
        next > errand_core::now() && next <= errand_core::now() + 86_400.0,
        "{next}"
    );

    errand(&file, &["ops", "periodic", "pause", "nightly"]);
    assert!(errand(&file, &["ops", "periodic", "list"]).contains("paused"));
    assert!(broker.periodic_list().await.unwrap()[0].paused);
    errand(&file, &["ops", "periodic", "resume", "nightly"]);
    assert!(!broker.periodic_list().await.unwrap()[0].paused);

    let jid = errand(&file, &["ops", "periodic", "run", "nightly"]);
    let queued = broker
        .queue_page(QueueRange {
            queue: "reports",
            offset: 0,
            limit: 10,
            order: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    let job = errand::Payload::parse(&queued[0]).unwrap();
    assert_eq!(job.jid(), jid.trim());
    assert_eq!(
        (job.class(), job.args()),
        ("Report", &[serde_json::json!(7)][..])
    );
    assert_eq!(job.str("errand_periodic"), Some("nightly"));

    let out = Command::new(env!("CARGO_BIN_EXE_errand"))
        .args([
            "ops",
            "periodic",
            "pause",
            "ghost",
            "--sqlite",
            file.to_str().unwrap(),
        ])
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no periodic entry \"ghost\""));
}

/// `errand ops job cancel JID…`: a queued job is removed, an unknown one is not found (said
/// in words and in JSON); `errand ops processes` shows a running job's progress.
#[tokio::test]
async fn ops_cancel_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cancel.sqlite");
    let broker = SqliteBroker::open(&file).await.unwrap();
    let queued = errand(&file, &["ops", "enqueue", "Mailer", "1"]);
    let queued = queued.trim();
    let running = errand(&file, &["ops", "enqueue", "Export", "2", "--queue", "slow"]);
    let running = running.trim();
    // A process runs the second one and reports its progress, as a server's beat writes it.
    let fetched = broker
        .fetch(FetchRequest {
            identity: "host:1:abc",
            queues: &["slow".to_string()],
            max: 1,
            wait: Duration::ZERO,
        })
        .await
        .unwrap();
    let work = [errand::broker::WorkEntry {
        tid: "t1".into(),
        json: serde_json::json!({"queue": "slow", "payload": fetched[0].raw, "run_at": errand_core::now(),
                                 "errand_progress": {"percent": 64, "message": "rows 640 of 1000"}})
        .to_string(),
    }];
    broker
        .register("host:1:abc", &["slow".to_string()])
        .await
        .unwrap();
    broker
        .heartbeat(&errand::broker::Heartbeat {
            identity: "host:1:abc",
            info: r#"{"hostname":"host","pid":1,"queues":["slow"]}"#,
            busy: 1,
            concurrency: 5,
            beat: errand_core::now(),
            quiet: false,
            rss_kb: 1024,
            work: &work,
            processed: 0,
            failed: 0,
            cancelled: 0,
            expired: 0,
            ttl: Duration::from_secs(60),
        })
        .await
        .unwrap();
    let out = errand(&file, &["ops", "processes"]);
    assert!(
        out.contains(running) && out.contains("64% rows 640 of 1000"),
        "{out}"
    );

    let out = errand(&file, &["ops", "job", "cancel", queued, "nope"]);
    assert!(
        out.contains(&format!(
            "{queued}: removed from queue default before it ran"
        )),
        "{out}"
    );
    assert!(out.contains("nope: not waiting or running"), "{out}");
    let left = broker
        .queue_page(QueueRange {
            queue: "default",
            offset: 0,
            limit: 10,
            order: Default::default(),
        })
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let out: serde_json::Value =
        serde_json::from_str(&errand(&file, &["ops", "--json", "job", "cancel", running])).unwrap();
    assert_eq!(out["cancelled"][0]["cancelled"], "running", "{out}");
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Import(u64);

impl errand::Job for Import {
    const NAME: &'static str = "Import";
    async fn perform(self, _: &errand::JobContext) -> errand::JobResult {
        Ok(())
    }
}

/// `errand ops batches` and `errand ops batch BID`: a batch's counts and members, a workflow's
/// steps with their states, and a clear error for an unknown batch.
#[tokio::test]
async fn ops_batches_list_and_show_batches_and_workflows() {
    use errand::broker::Coordination;
    use errand::broker::{BatchOutcome, BatchRecord};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batches.sqlite");
    let broker = SqliteBroker::open(&file).await.unwrap();
    let client = errand::Client::new(broker.clone());
    let batch = errand::Batch::new(&client)
        .description("nightly import")
        .on_success(Import(0))
        .open()
        .await
        .unwrap();
    let jids = batch.push_bulk((1..=3).map(Import)).await.unwrap();
    let bid = batch.seal().await.unwrap();
    broker
        .batch_record(BatchRecord {
            bid: &bid,
            member: &jids[0],
            outcome: BatchOutcome::Died,
            enqueued_at: "1700000000.0",
        })
        .await
        .unwrap();
    let run = errand::Workflow::new()
        .description("report")
        .add("fetch", Import(10))
        .add_after("report", Import(11), ["fetch"])
        .start(&client)
        .await
        .unwrap();

    let list = errand(&file, &["ops", "batches"]);
    let row = list.lines().find(|l| l.starts_with(&bid)).expect(&list);
    assert!(
        row.contains("batch") && row.contains("nightly import") && row.contains("running"),
        "{row}"
    );
    let wf = list.lines().find(|l| l.starts_with(&run.id)).expect(&list);
    assert!(wf.contains("workflow") && wf.contains("report"), "{wf}");
    assert!(list.contains("2 of 2"), "{list}");

    let shown = errand(&file, &["ops", "batch", &bid]);
    assert!(
        shown.contains("3 total, 2 pending, 0 failed, 1 dead"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("dead        {}", jids[0])),
        "{shown}"
    );
    assert!(shown.contains("callbacks   success"), "{shown}");
    let steps = errand(&file, &["ops", "batch", &run.id]);
    let fetch = steps
        .lines()
        .find(|l| l.starts_with("fetch"))
        .expect(&steps);
    let report = steps
        .lines()
        .find(|l| l.starts_with("report"))
        .expect(&steps);
    assert!(
        fetch.contains("enqueued") && fetch.contains("Import"),
        "{fetch}"
    );
    assert!(
        report.contains("waiting") && report.contains("fetch"),
        "{report}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&errand(&file, &["ops", "--json", "batch", &run.id])).unwrap();
    assert_eq!(json["steps"][1]["state"], "waiting", "{json}");
    assert_eq!(json["batch"]["total"], 2, "{json}");

    let out = Command::new(env!("CARGO_BIN_EXE_errand"))
        .args(["ops", "batch", "nope", "--sqlite", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no batch \"nope\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
