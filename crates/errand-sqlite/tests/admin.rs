//! The admin side of the SQLite backend ([`Admin`]), each case on its own file in a temp dir.
//! What every backend must do is in the conformance suite (`tests/conformance.rs`); these are
//! the file's own concerns: metrics pruning, the facts shown about the file, and opening a file
//! made by an older version.

use errand_core::admin::{Admin, Order, QueueRange, SetEntry, SetName, SetRange};
use errand_core::broker::{Enqueue, Fleet, JobQueue, ScheduledJob};
use errand_core::metrics::ClassMetrics;
use errand_sqlite::SqliteBroker;

struct Case {
    dir: tempfile::TempDir,
    broker: SqliteBroker,
}

impl Case {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = SqliteBroker::open(dir.path().join("jobs.sqlite"))
            .await
            .expect("open");
        Self { dir, broker }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("jobs.sqlite")
    }
}

fn job(queue: &str, n: u32) -> Enqueue {
    Enqueue {
        queue: queue.into(),
        payload: payload(n),
    }
}

fn payload(n: u32) -> String {
    format!(r#"{{"class":"Work","args":[{n}],"jid":"j{n}","queue":"default"}}"#)
}

fn entry(score: f64, raw: &str) -> SetEntry {
    SetEntry {
        score,
        raw: raw.into(),
    }
}

async fn schedule(b: &SqliteBroker, entries: &[(f64, &str)]) {
    let jobs: Vec<ScheduledJob> = entries
        .iter()
        .map(|(at, p)| ScheduledJob {
            at: *at,
            payload: p.to_string(),
        })
        .collect();
    b.push_scheduled(&jobs).await.unwrap();
}

fn metrics(class: &str, runs: &[(u64, bool)]) -> ClassMetrics {
    let mut m = ClassMetrics::new(class);
    for (ms, failed) in runs {
        m.record(*ms, *failed);
    }
    m
}

/// Metrics add up per minute and class, read back merged per class over a range (at most 1,500
/// minutes, the newest), keep all-time totals, and minutes 26 hours older than the newest
/// recorded are dropped.
#[tokio::test]
async fn metrics_round_trip_totals_and_pruning() {
    let c = Case::new().await;
    let b = &c.broker;
    let m0 = 29_000_000; // a minute in 2025
    b.record_metrics(
        m0,
        &[
            metrics("B", &[(10, false), (5, true)]),
            metrics("A", &[(600, false)]),
        ],
    )
    .await
    .unwrap();
    b.record_metrics(m0, &[metrics("A", &[(40_000, false), (1, true)])])
        .await
        .unwrap();
    b.record_metrics(m0 + 10, &[metrics("A", &[(25, false)])])
        .await
        .unwrap();
    b.record_metrics(m0 + 10, &[]).await.unwrap();
    // A class with nothing counted leaves no trace.
    b.record_metrics(m0 + 10, &[ClassMetrics::new("Idle")])
        .await
        .unwrap();

    let at_m0 = b.metrics(m0, m0).await.unwrap();
    assert_eq!(
        at_m0,
        [
            metrics("A", &[(600, false), (40_000, false), (1, true)]),
            metrics("B", &[(10, false), (5, true)]),
        ]
    );
    let both = b.metrics(m0 - 5, m0 + 10).await.unwrap();
    assert_eq!(
        both,
        [
            metrics(
                "A",
                &[(600, false), (40_000, false), (1, true), (25, false)]
            ),
            metrics("B", &[(10, false), (5, true)]),
        ]
    );
    assert_eq!(both[0].percentile_ms(0.5), Some(750));
    assert_eq!(
        b.metrics(m0 + 1, m0 + 10).await.unwrap(),
        [metrics("A", &[(25, false)])]
    );
    assert!(b.metrics(m0 + 10, m0).await.unwrap().is_empty());
    // The range is clamped to the newest 1,500 minutes.
    assert_eq!(b.metrics(m0, m0 + 1_499).await.unwrap().len(), 2);
    assert_eq!(
        b.metrics(m0, m0 + 1_500).await.unwrap(),
        [metrics("A", &[(25, false)])]
    );

    // 26 hours after m0 keeps m0; one minute more drops it (and only it).
    b.record_metrics(m0 + 26 * 60, &[metrics("C", &[(1, false)])])
        .await
        .unwrap();
    assert_eq!(b.metrics(m0, m0).await.unwrap().len(), 2);
    b.record_metrics(m0 + 26 * 60 + 1, &[metrics("C", &[(1, false)])])
        .await
        .unwrap();
    assert!(b.metrics(m0, m0).await.unwrap().is_empty());
    assert_eq!(b.metrics(m0 + 10, m0 + 10).await.unwrap().len(), 1);

    // Totals keep everything ever recorded.
    assert_eq!(
        b.metrics_totals().await.unwrap(),
        [
            metrics(
                "A",
                &[(600, false), (40_000, false), (1, true), (25, false)]
            ),
            metrics("B", &[(10, false), (5, true)]),
            metrics("C", &[(1, false), (1, false)]),
        ]
    );
}

/// The dashboard's facts about the file.
#[tokio::test]
async fn backend_info_describes_the_file() {
    let c = Case::new().await;
    let info = c.broker.backend_info().await.unwrap();
    assert_eq!(info.kind, "sqlite");
    let fact = |label: &str| {
        info.facts
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {label} in {:?}", info.facts))
    };
    assert_eq!(fact("path"), c.path().display().to_string());
    assert_eq!(fact("journal mode"), "wal");
    assert!(fact("synchronous").starts_with("FULL"));
    assert_eq!(fact("version"), rusqlite::version());
    assert!(fact("file size").contains('B'));
    assert!(fact("pages").contains(" of "));
}

/// A file made before the admin side (no `paused_queues`, `metrics`, `metrics_totals`) opens
/// with its jobs intact and gains the tables.
#[tokio::test]
async fn an_existing_file_gains_the_admin_tables() {
    let c = Case::new().await;
    c.broker.push(&[job("default", 1)]).await.unwrap();
    schedule(&c.broker, &[(5.0, "later")]).await;
    let path = c.path();
    let Case { dir, broker } = c;
    drop(broker);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE paused_queues; DROP TABLE metrics; DROP TABLE metrics_totals;",
        )
        .unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN
                 ('paused_queues', 'metrics', 'metrics_totals')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
    }
    let b = SqliteBroker::open(&path).await.unwrap();
    let queued = b
        .queue_page(QueueRange {
            queue: "default",
            offset: 0,
            limit: 10,
            order: Order::Asc,
        })
        .await
        .unwrap();
    assert_eq!(queued, [payload(1)]);
    assert_eq!(
        b.set_page(SetRange {
            set: SetName::Scheduled,
            offset: 0,
            limit: 10,
            order: Order::Asc
        })
        .await
        .unwrap(),
        [entry(5.0, "later")]
    );
    b.set_paused("default", true).await.unwrap();
    assert_eq!(b.paused_queues().await.unwrap(), ["default"]);
    b.record_metrics(1, &[metrics("A", &[(3, false)])])
        .await
        .unwrap();
    assert_eq!(b.metrics(1, 1).await.unwrap().len(), 1);
    assert_eq!(b.metrics_totals().await.unwrap().len(), 1);
    drop(dir);
}
