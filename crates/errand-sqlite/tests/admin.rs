//! The admin side of the SQLite backend ([`Admin`]), each case on its own file in a temp dir.

use errand_core::admin::{
    Admin, Counters, MoveToDead, MoveToQueue, Order, QueueRange, SetEntry, SetName, SetRange,
};
use errand_core::broker::{
    BrokerResult, DeadLimits, Enqueue, FetchRequest, Fleet, Heartbeat, JobQueue, RemoteSignal,
    ScheduledJob, WorkEntry,
};
use errand_core::metrics::ClassMetrics;
use errand_sqlite::SqliteBroker;
use std::time::Duration;

/// Whole queues and sets as the cases assert on them, read through the admin API.
trait Reads {
    async fn queue(&self, name: &str) -> BrokerResult<Vec<String>>;
    async fn queue_len(&self, name: &str) -> BrokerResult<u64>;
    async fn known_queues(&self) -> BrokerResult<Vec<String>>;
    async fn set(&self, name: &str) -> BrokerResult<Vec<(f64, String)>>;
    async fn in_flight(&self, identity: &str, queue: &str) -> BrokerResult<Vec<String>>;
}

impl Reads for SqliteBroker {
    async fn queue(&self, name: &str) -> BrokerResult<Vec<String>> {
        self.queue_page(QueueRange {
            queue: name,
            offset: 0,
            limit: 100_000,
            order: Order::Asc,
        })
        .await
    }
    async fn queue_len(&self, name: &str) -> BrokerResult<u64> {
        let queues = self.queues().await?;
        Ok(queues.iter().find(|q| q.name == name).map_or(0, |q| q.size))
    }
    /// The `queues` table itself (the admin side also lists paused queues it no longer has).
    async fn known_queues(&self) -> BrokerResult<Vec<String>> {
        let db = rusqlite::Connection::open(self.path()).expect("open the file");
        let names = db
            .prepare("SELECT name FROM queues ORDER BY name")
            .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
            .expect("read the queues table");
        Ok(names)
    }
    async fn set(&self, name: &str) -> BrokerResult<Vec<(f64, String)>> {
        let set = SetName::parse(name).expect("a set name");
        let page = self
            .set_page(SetRange {
                set,
                offset: 0,
                limit: 100_000,
                order: Order::Asc,
            })
            .await?;
        Ok(page.into_iter().map(|e| (e.score, e.raw)).collect())
    }
    async fn in_flight(&self, identity: &str, queue: &str) -> BrokerResult<Vec<String>> {
        let held = self.held(identity, &[queue.to_string()]).await?;
        Ok(held.into_iter().map(|j| j.raw).collect())
    }
}

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

async fn beat(
    b: &SqliteBroker,
    identity: &str,
    work: &[WorkEntry],
    processed: u64,
    failed: u64,
) -> Option<RemoteSignal> {
    b.heartbeat(&Heartbeat {
        identity,
        info: r#"{"hostname":"h","queues":["default"]}"#,
        busy: work.len(),
        concurrency: 5,
        beat: errand_core::now(),
        quiet: false,
        rss_kb: 2048,
        work,
        processed,
        failed,
        ttl: Duration::from_secs(60),
    })
    .await
    .unwrap()
}

fn metrics(class: &str, runs: &[(u64, bool)]) -> ClassMetrics {
    let mut m = ClassMetrics::new(class);
    for (ms, failed) in runs {
        m.record(*ms, *failed);
    }
    m
}

/// Asc starts from the next to run (the oldest push, or a job put back at the front), Desc from
/// the newest push; offsets and limits page through both.
#[tokio::test]
async fn queue_pages_in_both_orders() {
    let c = Case::new().await;
    let b = &c.broker;
    b.push(&[job("default", 0), job("default", 1)])
        .await
        .unwrap();
    for n in 2..5 {
        b.push(&[job("default", n)]).await.unwrap();
    }
    let page = |offset, limit, order| {
        b.queue_page(QueueRange {
            queue: "default",
            offset,
            limit,
            order,
        })
    };
    assert_eq!(
        page(0, 2, Order::Asc).await.unwrap(),
        [payload(0), payload(1)]
    );
    assert_eq!(
        page(2, 10, Order::Asc).await.unwrap(),
        [payload(2), payload(3), payload(4)]
    );
    assert_eq!(
        page(0, 2, Order::Desc).await.unwrap(),
        [payload(4), payload(3)]
    );
    assert_eq!(page(4, 2, Order::Desc).await.unwrap(), [payload(0)]);
    assert!(page(5, 2, Order::Asc).await.unwrap().is_empty());
    assert!(page(0, 0, Order::Asc).await.unwrap().is_empty());
    assert!(
        b.queue_page(QueueRange {
            queue: "nope",
            offset: 0,
            limit: 10,
            order: Order::Asc
        })
        .await
        .unwrap()
        .is_empty()
    );

    // A fetched job put back goes to the front: next to run, first in Asc, last in Desc.
    let queues = ["default".to_string()];
    let fetched = b
        .fetch(FetchRequest {
            identity: "h:1:a",
            queues: &queues,
            max: 2,
            wait: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(fetched.len(), 2);
    assert!(b.release(&fetched[1]).await.unwrap());
    assert_eq!(
        page(0, 10, Order::Asc).await.unwrap(),
        [payload(1), payload(2), payload(3), payload(4)]
    );
    assert_eq!(page(3, 10, Order::Desc).await.unwrap(), [payload(1)]);

    let summary = b.queues().await.unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].name, "default");
    assert_eq!(summary[0].size, 4);
    assert_eq!(summary[0].oldest.as_deref(), Some(payload(1).as_str()));
    assert!(!summary[0].paused);
}

/// `queue_delete` removes exactly one entry equal to the payload, the newest pushed (Redis's
/// `LREM queue 1 raw` works from the head); `queue_clear` removes the queue's jobs and its name
/// but not jobs in flight, other queues, or the paused flag.
#[tokio::test]
async fn queue_delete_and_clear() {
    let c = Case::new().await;
    let b = &c.broker;
    let (a, x) = (payload(1), payload(2));
    for p in [&a, &x, &a] {
        b.push(&[Enqueue {
            queue: "q".into(),
            payload: p.clone(),
        }])
        .await
        .unwrap();
    }
    b.push(&[job("other", 7)]).await.unwrap();
    assert!(b.queue_delete("q", &a).await.unwrap());
    assert_eq!(
        b.queue_page(QueueRange {
            queue: "q",
            offset: 0,
            limit: 10,
            order: Order::Asc
        })
        .await
        .unwrap(),
        [a.clone(), x.clone()]
    );
    assert!(!b.queue_delete("q", "not there").await.unwrap());
    assert!(!b.queue_delete("other", &a).await.unwrap());

    let queues = ["q".to_string()];
    let fetched = b
        .fetch(FetchRequest {
            identity: "h:1:a",
            queues: &queues,
            max: 1,
            wait: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(fetched.len(), 1);
    b.push(&[job("q", 3), job("q", 4)]).await.unwrap();
    b.set_paused("q", true).await.unwrap();
    assert_eq!(b.queue_clear("q").await.unwrap(), 3);
    assert_eq!(b.queue_len("q").await.unwrap(), 0);
    assert_eq!(b.known_queues().await.unwrap(), ["other"]);
    assert_eq!(b.in_flight("h:1:a", "q").await.unwrap(), [a]);
    // Still listed: paused.
    let summary = b.queues().await.unwrap();
    let names: Vec<_> = summary
        .iter()
        .map(|q| (q.name.as_str(), q.size, q.paused))
        .collect();
    assert_eq!(names, [("other", 1, false), ("q", 0, true)]);
    assert_eq!(b.queue_clear("q").await.unwrap(), 0);
}

/// Sets page by (score, member) both ways, sizes count, `set_at_score` finds exactly the
/// members at a score, and scores come back bit for bit.
#[tokio::test]
async fn set_pages_sizes_and_exact_scores() {
    let c = Case::new().await;
    let b = &c.broker;
    let odd = 1_700_000_000.123_456_7_f64;
    let sum = 0.1 + 0.2;
    schedule(
        b,
        &[(10.0, "b"), (10.0, "a"), (5.5, "c"), (odd, "d"), (sum, "e")],
    )
    .await;
    assert_eq!(b.set_size(SetName::Scheduled).await.unwrap(), 5);
    assert_eq!(b.set_size(SetName::Retry).await.unwrap(), 0);
    let asc = b
        .set_page(SetRange {
            set: SetName::Scheduled,
            offset: 0,
            limit: 10,
            order: Order::Asc,
        })
        .await
        .unwrap();
    assert_eq!(
        asc,
        [
            entry(sum, "e"),
            entry(5.5, "c"),
            entry(10.0, "a"),
            entry(10.0, "b"),
            entry(odd, "d")
        ]
    );
    assert_eq!(asc[0].score.to_bits(), sum.to_bits());
    assert_eq!(asc[4].score.to_bits(), odd.to_bits());
    assert_eq!(
        b.set_page(SetRange {
            set: SetName::Scheduled,
            offset: 1,
            limit: 2,
            order: Order::Desc
        })
        .await
        .unwrap(),
        [entry(10.0, "b"), entry(10.0, "a")]
    );
    assert_eq!(
        b.set_page(SetRange {
            set: SetName::Scheduled,
            offset: 4,
            limit: 2,
            order: Order::Desc
        })
        .await
        .unwrap(),
        [entry(sum, "e")]
    );
    assert_eq!(
        b.set_at_score(SetName::Scheduled, 10.0).await.unwrap(),
        [entry(10.0, "a"), entry(10.0, "b")]
    );
    assert_eq!(
        b.set_at_score(SetName::Scheduled, odd).await.unwrap(),
        [entry(odd, "d")]
    );
    assert!(
        b.set_at_score(SetName::Scheduled, odd + 1e-6)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.set_at_score(SetName::Retry, 10.0)
            .await
            .unwrap()
            .is_empty()
    );

    // Re-adding a member moves it (members are unique).
    schedule(b, &[(1.0, "a")]).await;
    assert_eq!(b.set_size(SetName::Scheduled).await.unwrap(), 5);
    assert!(b.set_remove(SetName::Scheduled, "a").await.unwrap());
    assert!(!b.set_remove(SetName::Scheduled, "a").await.unwrap());
    assert!(!b.set_remove(SetName::Dead, "b").await.unwrap());
    assert_eq!(b.set_clear(SetName::Scheduled).await.unwrap(), 4);
    assert_eq!(b.set_size(SetName::Scheduled).await.unwrap(), 0);
}

/// `set_to_queue` moves a member onto the newest end of a queue (registering it) once; a
/// second call, or one naming a changed member, moves nothing.
#[tokio::test]
async fn set_to_queue_moves_once() {
    let c = Case::new().await;
    let b = &c.broker;
    let member = payload(1);
    let edited = payload(11);
    schedule(b, &[(5.0, &member), (6.0, &payload(2))]).await;
    b.push(&[job("critical", 0)]).await.unwrap();
    assert!(
        b.set_to_queue(MoveToQueue {
            set: SetName::Scheduled,
            member: &member,
            queue: "critical",
            payload: &edited
        })
        .await
        .unwrap()
    );
    assert_eq!(
        b.queue("critical").await.unwrap(),
        [payload(0), edited.clone()]
    );
    assert_eq!(b.set("schedule").await.unwrap(), [(6.0, payload(2))]);
    assert!(
        !b.set_to_queue(MoveToQueue {
            set: SetName::Scheduled,
            member: &member,
            queue: "critical",
            payload: &edited
        })
        .await
        .unwrap()
    );
    // Same set, different set name: nothing there either.
    assert!(
        !b.set_to_queue(MoveToQueue {
            set: SetName::Retry,
            member: &payload(2),
            queue: "critical",
            payload: &edited
        })
        .await
        .unwrap()
    );
    assert_eq!(b.queue_len("critical").await.unwrap(), 2);

    // A new queue name is registered.
    assert!(
        b.set_to_queue(MoveToQueue {
            set: SetName::Scheduled,
            member: &payload(2),
            queue: "fresh",
            payload: &payload(2)
        })
        .await
        .unwrap()
    );
    assert_eq!(b.known_queues().await.unwrap(), ["critical", "fresh"]);
    assert_eq!(b.set_size(SetName::Scheduled).await.unwrap(), 0);
}

/// `set_to_dead` moves a member into the dead set once, trimming it by size and age exactly as
/// a job dying does; a second call adds nothing.
#[tokio::test]
async fn set_to_dead_moves_once_and_trims() {
    let c = Case::new().await;
    let b = &c.broker;
    let limits = DeadLimits {
        max_jobs: 2,
        max_age: Duration::from_secs(100),
    };
    schedule(b, &[(1.0, "r1"), (2.0, "r2"), (3.0, "r3"), (4.0, "r4")]).await;
    for (i, m) in ["r1", "r2", "r3"].into_iter().enumerate() {
        let dead = format!("{m}-dead");
        assert!(
            b.set_to_dead(MoveToDead {
                set: SetName::Scheduled,
                member: m,
                payload: &dead,
                now: 1000.0 + i as f64,
                limits
            })
            .await
            .unwrap()
        );
    }
    // Size: the two newest stay.
    assert_eq!(
        b.set("dead").await.unwrap(),
        [
            (1001.0, "r2-dead".to_string()),
            (1002.0, "r3-dead".to_string())
        ]
    );
    assert!(
        !b.set_to_dead(MoveToDead {
            set: SetName::Scheduled,
            member: "r1",
            payload: "r1-dead",
            now: 1003.0,
            limits
        })
        .await
        .unwrap()
    );
    assert_eq!(b.set_size(SetName::Dead).await.unwrap(), 2);
    // Age: entries older than max_age before this death go with it.
    assert!(
        b.set_to_dead(MoveToDead {
            set: SetName::Scheduled,
            member: "r4",
            payload: "r4-dead",
            now: 1101.5,
            limits
        })
        .await
        .unwrap()
    );
    assert_eq!(
        b.set("dead").await.unwrap(),
        [
            (1002.0, "r3-dead".to_string()),
            (1101.5, "r4-dead".to_string())
        ]
    );
    assert_eq!(b.set_size(SetName::Scheduled).await.unwrap(), 0);

    // Killing a dead entry again re-scores it (members are unique).
    assert!(
        b.set_to_dead(MoveToDead {
            set: SetName::Dead,
            member: "r3-dead",
            payload: "r3-dead",
            now: 1102.0,
            limits
        })
        .await
        .unwrap()
    );
    assert_eq!(
        b.set("dead").await.unwrap(),
        [
            (1101.5, "r4-dead".to_string()),
            (1102.0, "r3-dead".to_string())
        ]
    );
}

/// Live processes are listed by identity with their running jobs (oldest `run_at` first); one
/// that registered but never beat, and one whose heartbeat expired, are not.
#[tokio::test]
async fn processes_lists_live_ones_with_their_work() {
    let c = Case::new().await;
    let b = &c.broker;
    let work = [
        WorkEntry {
            tid: "t1".into(),
            json: r#"{"queue":"default","payload":"{}","run_at":2}"#.into(),
        },
        WorkEntry {
            tid: "t2".into(),
            json: r#"{"queue":"default","payload":"{}","run_at":1}"#.into(),
        },
    ];
    beat(b, "zed:1:a", &[], 0, 0).await;
    beat(b, "alpha:2:b", &work, 0, 0).await;
    beat(b, "gone:3:c", &work[..1], 0, 0).await;
    b.register("never:4:d", &["default".to_string()])
        .await
        .unwrap();
    // Expire one heartbeat through a second connection to the file.
    let conn = rusqlite::Connection::open(c.path()).unwrap();
    conn.execute(
        "UPDATE processes SET expires_at = ?1 WHERE identity = 'gone:3:c'",
        [errand_core::now() - 1.0],
    )
    .unwrap();

    let live = b.processes().await.unwrap();
    let ids: Vec<_> = live.iter().map(|p| p.identity.as_str()).collect();
    assert_eq!(ids, ["alpha:2:b", "zed:1:a"]);
    let alpha = &live[0];
    assert_eq!(alpha.busy, 2);
    assert_eq!(alpha.concurrency, 5);
    assert_eq!(alpha.rss_kb, 2048);
    assert!(!alpha.quiet);
    assert!(alpha.info.contains("\"hostname\":\"h\""));
    assert!((alpha.beat - errand_core::now()).abs() < 60.0);
    assert_eq!(
        alpha.work,
        [
            ("t2".to_string(), work[1].json.clone()),
            ("t1".to_string(), work[0].json.clone())
        ]
    );
    assert!(live[1].work.is_empty());
}

/// A signal reaches the named process at its next heartbeat, in the order sent, once.
#[tokio::test]
async fn signals_arrive_at_the_next_heartbeat() {
    let c = Case::new().await;
    let b = &c.broker;
    assert_eq!(beat(b, "h:1:a", &[], 0, 0).await, None);
    b.signal("h:1:a", RemoteSignal::Quiet).await.unwrap();
    b.signal("h:1:a", RemoteSignal::Dump).await.unwrap();
    b.signal("other:2:b", RemoteSignal::Stop).await.unwrap();
    assert_eq!(beat(b, "h:1:a", &[], 0, 0).await, Some(RemoteSignal::Quiet));
    assert_eq!(beat(b, "h:1:a", &[], 0, 0).await, Some(RemoteSignal::Dump));
    assert_eq!(beat(b, "h:1:a", &[], 0, 0).await, None);
    assert_eq!(
        beat(b, "other:2:b", &[], 0, 0).await,
        Some(RemoteSignal::Stop)
    );
}

/// Counters come from what heartbeats flushed, in total and per UTC day.
#[tokio::test]
async fn counters_total_and_daily() {
    let c = Case::new().await;
    let b = &c.broker;
    assert_eq!(b.counters().await.unwrap(), Counters::default());
    beat(b, "h:1:a", &[], 3, 1).await;
    beat(b, "h:1:a", &[], 2, 0).await;
    let expect = Counters {
        processed: 5,
        failed: 1,
    };
    assert_eq!(b.counters().await.unwrap(), expect);
    let today = errand_core::utc_date(errand_core::now());
    assert_eq!(
        b.daily_counters(&[today.clone(), "2000-01-01".into(), today])
            .await
            .unwrap(),
        [expect, Counters::default(), expect]
    );
    assert!(b.daily_counters(&[]).await.unwrap().is_empty());
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

/// Pausing shows in `paused_queues` and in `queues()` (even for a queue never pushed to);
/// resuming clears both; jobs stay where they are.
#[tokio::test]
async fn paused_queues_round_trip() {
    let c = Case::new().await;
    let b = &c.broker;
    b.push(&[job("default", 1)]).await.unwrap();
    assert!(b.paused_queues().await.unwrap().is_empty());
    b.set_paused("default", true).await.unwrap();
    b.set_paused("later", true).await.unwrap();
    b.set_paused("later", true).await.unwrap();
    assert_eq!(b.paused_queues().await.unwrap(), ["default", "later"]);
    let listed: Vec<_> = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.name, q.size, q.paused, q.oldest.is_some()))
        .collect();
    assert_eq!(
        listed,
        [
            ("default".to_string(), 1, true, true),
            ("later".to_string(), 0, true, false)
        ]
    );
    b.set_paused("later", false).await.unwrap();
    b.set_paused("default", false).await.unwrap();
    b.set_paused("never", false).await.unwrap();
    assert!(b.paused_queues().await.unwrap().is_empty());
    let names: Vec<_> = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(names, ["default"]);
    assert_eq!(b.queue_len("default").await.unwrap(), 1);
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
    assert_eq!(b.queue("default").await.unwrap(), [payload(1)]);
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
