//! The admin side of the Redis backend ([`Admin`], plus `Broker::paused_queues` and
//! `Broker::record_metrics`) against a real `redis-server`: one server per test binary (or
//! `REDIS_URL` when set), each case in its own key namespace.

use errand_core::admin::{
    Admin, MoveToDead, MoveToQueue, Order, QueueRange, SetEntry, SetName, SetRange,
};
use errand_core::broker::Fleet;
use errand_core::broker::JobQueue;
use errand_core::broker::{DeadLimits, Enqueue, Heartbeat, RemoteSignal, ScheduledJob, WorkEntry};
use errand_core::metrics::ClassMetrics;
use errand_redis::RedisConn;
use errand_redis::{Keys, RedisBroker, RedisConfig};
use errand_tests::{RedisServer, wait_until};
use redis::AsyncCommands;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

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

/// Key `name` under the case's namespace, spelled out here (not by `Keys`), so the cases check
/// Sidekiq's layout itself.
fn layout_key(keys: &Keys, name: &str) -> String {
    format!("{}{name}", keys.prefix())
}

/// One case's view: its broker (in a namespace of its own), a raw connection and its keys.
struct Case {
    b: RedisBroker,
    conn: RedisConn,
    keys: Keys,
    url: String,
    _server: Option<Arc<RedisServer>>,
}

fn unique_namespace(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "admin-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn case(tag: &str) -> Case {
    let (url, server) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let s = server();
            (s.url(), Some(s))
        }
    };
    let ns = unique_namespace(tag);
    let b = RedisBroker::connect_with(RedisConfig::new(&url).namespace(ns.clone()))
        .await
        .expect("connect to the test redis");
    Case {
        conn: b.connection(),
        keys: Keys::new(Some(&ns)),
        b,
        url,
        _server: server,
    }
}

const WAIT: Duration = Duration::from_secs(10);

/// A job payload numbered `n`.
fn payload(n: u32) -> String {
    format!(r#"{{"class":"Work","args":[{n}],"jid":"j{n}","queue":"default"}}"#)
}

fn enqueue(queue: &str, payload: &str) -> Enqueue {
    Enqueue {
        queue: queue.into(),
        payload: payload.into(),
    }
}

fn info(identity: &str) -> String {
    serde_json::json!({
        "hostname": "h", "pid": 1, "identity": identity, "queues": ["default"],
        "concurrency": 4, "tag": "", "labels": [], "started_at": 1.0,
    })
    .to_string()
}

struct Beat<'a> {
    identity: &'a str,
    work: &'a [WorkEntry],
    ttl: Duration,
    processed: u64,
    failed: u64,
}

async fn beat(b: &RedisBroker, beat: Beat<'_>) -> Option<RemoteSignal> {
    let info = info(beat.identity);
    b.heartbeat(&Heartbeat {
        identity: beat.identity,
        info: &info,
        busy: beat.work.len(),
        concurrency: 4,
        beat: 1_795_853_133.765_026,
        quiet: false,
        rss_kb: 2048,
        work: beat.work,
        processed: beat.processed,
        failed: beat.failed,
        cancelled: 0,
        expired: 0,
        ttl: beat.ttl,
    })
    .await
    .expect("heartbeat")
}

fn live<'a>(identity: &'a str, work: &'a [WorkEntry]) -> Beat<'a> {
    Beat {
        identity,
        work,
        ttl: Duration::from_secs(60),
        processed: 0,
        failed: 0,
    }
}

fn members(entries: &[SetEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.raw.as_str()).collect()
}

#[tokio::test]
async fn set_pages_and_scores_round_trip_exactly() {
    let c = case("sets").await;
    // Scores that a lossy float format would not give back bit for bit.
    let scores = [
        1_795_853_133.554_176_8,
        0.1 + 0.2,
        1_795_853_133.765_026,
        1e-7,
        1_700_000_000.000_001,
    ];
    let jobs: Vec<ScheduledJob> = scores
        .iter()
        .enumerate()
        .map(|(i, &at)| ScheduledJob {
            at,
            payload: format!("s{i}"),
        })
        .collect();
    c.b.push_scheduled(&jobs).await.unwrap();
    assert_eq!(c.b.set_size(SetName::Scheduled).await.unwrap(), 5);
    assert_eq!(c.b.set_size(SetName::Retry).await.unwrap(), 0);

    let all =
        c.b.set_page(SetRange {
            set: SetName::Scheduled,
            offset: 0,
            limit: 100,
            order: Order::Asc,
        })
        .await
        .unwrap();
    assert_eq!(members(&all), ["s3", "s1", "s4", "s0", "s2"]);
    for e in &all {
        let i: usize = e.raw[1..].parse().unwrap();
        assert_eq!(e.score.to_bits(), scores[i].to_bits(), "{e:?}");
    }
    let asc =
        c.b.set_page(SetRange {
            set: SetName::Scheduled,
            offset: 1,
            limit: 2,
            order: Order::Asc,
        })
        .await
        .unwrap();
    assert_eq!(members(&asc), ["s1", "s4"]);
    let desc =
        c.b.set_page(SetRange {
            set: SetName::Scheduled,
            offset: 0,
            limit: 2,
            order: Order::Desc,
        })
        .await
        .unwrap();
    assert_eq!(members(&desc), ["s2", "s0"]);
    let tail =
        c.b.set_page(SetRange {
            set: SetName::Scheduled,
            offset: 4,
            limit: 2,
            order: Order::Desc,
        })
        .await
        .unwrap();
    assert_eq!(members(&tail), ["s3"]);
    assert!(
        c.b.set_page(SetRange {
            set: SetName::Scheduled,
            offset: 0,
            limit: 0,
            order: Order::Asc
        })
        .await
        .unwrap()
        .is_empty()
    );

    // Addressing by exact score (Sidekiq's `<score>-<jid>`), including two members at one score.
    let _: () = c
        .conn
        .clone()
        .zadd(layout_key(&c.keys, "schedule"), "twin", scores[0])
        .await
        .unwrap();
    for e in &all {
        let at = c.b.set_at_score(SetName::Scheduled, e.score).await.unwrap();
        if e.raw == "s0" {
            assert_eq!(members(&at), ["s0", "twin"]);
        } else {
            assert_eq!(at, vec![e.clone()]);
        }
    }
    let near = f64::from_bits(scores[0].to_bits() + 1);
    assert!(
        c.b.set_at_score(SetName::Scheduled, near)
            .await
            .unwrap()
            .is_empty(),
        "the next float up matches nothing"
    );

    assert!(c.b.set_remove(SetName::Scheduled, "twin").await.unwrap());
    assert!(!c.b.set_remove(SetName::Scheduled, "twin").await.unwrap());
    assert!(!c.b.set_remove(SetName::Retry, "s0").await.unwrap());
    assert_eq!(c.b.set_clear(SetName::Scheduled).await.unwrap(), 5);
    assert_eq!(c.b.set_clear(SetName::Scheduled).await.unwrap(), 0);
    assert_eq!(c.b.set_size(SetName::Scheduled).await.unwrap(), 0);
}

#[tokio::test]
async fn set_to_queue_moves_once() {
    let c = case("to-queue").await;
    let mut conn = c.conn.clone();
    let retry = layout_key(&c.keys, "retry");
    let _: () = conn.zadd(&retry, "old-form", 10.5).await.unwrap();
    let _: () = conn.zadd(&retry, "other", 11.0).await.unwrap();

    assert!(
        c.b.set_to_queue(MoveToQueue {
            set: SetName::Retry,
            member: "old-form",
            queue: "critical",
            payload: "new-form"
        })
        .await
        .unwrap()
    );
    assert!(
        !c.b.set_to_queue(MoveToQueue {
            set: SetName::Retry,
            member: "old-form",
            queue: "critical",
            payload: "new-form"
        })
        .await
        .unwrap(),
        "a second move finds nothing"
    );
    assert!(
        !c.b.set_to_queue(MoveToQueue {
            set: SetName::Dead,
            member: "other",
            queue: "ghost",
            payload: "x"
        })
        .await
        .unwrap(),
        "wrong set: nothing moved"
    );
    let queued: Vec<String> = conn.lrange(c.keys.queue("critical"), 0, -1).await.unwrap();
    assert_eq!(queued, ["new-form"], "pushed exactly once, as given");
    let mut known: Vec<String> = conn.smembers(layout_key(&c.keys, "queues")).await.unwrap();
    known.sort();
    assert_eq!(known, ["critical"], "no name registered for a failed move");
    let left =
        c.b.set_page(SetRange {
            set: SetName::Retry,
            offset: 0,
            limit: 10,
            order: Order::Asc,
        })
        .await
        .unwrap();
    assert_eq!(members(&left), ["other"]);

    // From the dead set too, onto a queue that already has jobs: it goes to the far end.
    c.b.push(&[enqueue("critical", "first")]).await.unwrap();
    let _: () = conn
        .zadd(layout_key(&c.keys, "dead"), "corpse", 5.0)
        .await
        .unwrap();
    assert!(
        c.b.set_to_queue(MoveToQueue {
            set: SetName::Dead,
            member: "corpse",
            queue: "critical",
            payload: "revived"
        })
        .await
        .unwrap()
    );
    let page =
        c.b.queue_page(QueueRange {
            queue: "critical",
            offset: 0,
            limit: 10,
            order: Order::Asc,
        })
        .await
        .unwrap();
    assert_eq!(page, ["new-form", "first", "revived"]);
}

#[tokio::test]
async fn set_to_dead_moves_once_and_trims() {
    let c = case("to-dead").await;
    let mut conn = c.conn.clone();
    let dead = layout_key(&c.keys, "dead");
    let now = 1_795_853_133.5;
    let day = 86_400.0;
    let limits = DeadLimits {
        max_jobs: 3,
        max_age: Duration::from_secs(180 * 86_400),
    };
    let _: () = conn
        .zadd(&dead, "ancient", now - 181.0 * day)
        .await
        .unwrap();
    let _: () = conn.zadd(&dead, "d1", now - 3.0 * day).await.unwrap();
    let _: () = conn.zadd(&dead, "d2", now - 2.0 * day).await.unwrap();
    let _: () = conn.zadd(&dead, "d3", now - day).await.unwrap();
    let _: () = conn
        .zadd(layout_key(&c.keys, "retry"), "failing", now + 60.0)
        .await
        .unwrap();

    assert!(
        c.b.set_to_dead(MoveToDead {
            set: SetName::Retry,
            member: "failing",
            payload: "killed",
            now,
            limits
        })
        .await
        .unwrap()
    );
    let after =
        c.b.set_page(SetRange {
            set: SetName::Dead,
            offset: 0,
            limit: 10,
            order: Order::Asc,
        })
        .await
        .unwrap();
    assert_eq!(
        members(&after),
        ["d2", "d3", "killed"],
        "exactly max_jobs newest kept, the too-old one dropped"
    );
    assert_eq!(after[2].score.to_bits(), now.to_bits());
    assert_eq!(c.b.set_size(SetName::Retry).await.unwrap(), 0);

    assert!(
        !c.b.set_to_dead(MoveToDead {
            set: SetName::Retry,
            member: "failing",
            payload: "killed-again",
            now: now + 1.0,
            limits
        })
        .await
        .unwrap(),
        "a second kill finds nothing"
    );
    let again =
        c.b.set_page(SetRange {
            set: SetName::Dead,
            offset: 0,
            limit: 10,
            order: Order::Asc,
        })
        .await
        .unwrap();
    assert_eq!(again, after, "nothing added, nothing trimmed");

    // The age limit alone: a large max keeps everything younger than max_age.
    let _: () = conn
        .zadd(layout_key(&c.keys, "schedule"), "later", now)
        .await
        .unwrap();
    let roomy = DeadLimits {
        max_jobs: 100,
        max_age: Duration::from_secs(86_400 + 3600),
    };
    assert!(
        c.b.set_to_dead(MoveToDead {
            set: SetName::Scheduled,
            member: "later",
            payload: "later-dead",
            now,
            limits: roomy
        })
        .await
        .unwrap()
    );
    let aged =
        c.b.set_page(SetRange {
            set: SetName::Dead,
            offset: 0,
            limit: 10,
            order: Order::Asc,
        })
        .await
        .unwrap();
    assert_eq!(members(&aged), ["d3", "killed", "later-dead"]);
}

#[tokio::test]
async fn processes_lists_live_heartbeats_and_skips_expired_ones() {
    let c = case("procs").await;
    let mut conn = c.conn.clone();
    let work = [
        WorkEntry {
            tid: "t2".into(),
            json: r#"{"queue":"default","payload":"{\"jid\":\"b\"}","run_at":200}"#.into(),
        },
        WorkEntry {
            tid: "t1".into(),
            json: r#"{"queue":"default","payload":"{\"jid\":\"a\"}","run_at":100}"#.into(),
        },
    ];
    assert_eq!(beat(&c.b, live("host:2:bbb", &work)).await, None);
    assert_eq!(
        beat(
            &c.b,
            Beat {
                ttl: Duration::from_secs(1),
                ..live("host:1:gone", &[])
            }
        )
        .await,
        None
    );
    // A Ruby Sidekiq 6.4 process: no `concurrency` field, running jobs under `:workers` only.
    let ruby = "ruby:9:aaa";
    let _: () = redis::pipe()
        .cmd("SADD")
        .arg(layout_key(&c.keys, "processes"))
        .arg(ruby)
        .ignore()
        .cmd("HSET")
        .arg(layout_key(&c.keys, ruby))
        .arg(&[
            ("info", info(ruby).as_str()),
            ("busy", "1"),
            ("beat", "1795853140.25"),
            ("quiet", "true"),
            ("rss", "51200"),
        ])
        .ignore()
        .cmd("HSET")
        .arg(c.keys.work(ruby, "workers"))
        .arg("6m5")
        .arg(r#"{"queue":"low","payload":"{}","run_at":1}"#)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();

    let gone = layout_key(&c.keys, "host:1:gone");
    wait_until("the short heartbeat to expire", WAIT, || {
        let mut conn = conn.clone();
        let gone = gone.clone();
        async move { !conn.exists::<_, bool>(&gone).await.unwrap() }
    })
    .await;

    let procs = c.b.processes().await.unwrap();
    let ids: Vec<&str> = procs.iter().map(|p| p.identity.as_str()).collect();
    assert_eq!(
        ids,
        ["host:2:bbb", ruby],
        "sorted, the expired one left out"
    );
    let p = &procs[0];
    assert_eq!(p.info, info("host:2:bbb"));
    assert_eq!(
        (p.busy, p.concurrency, p.rss_kb, p.quiet),
        (2, 4, 2048, false)
    );
    assert_eq!(p.beat.to_bits(), 1_795_853_133.765_026_f64.to_bits());
    let tids: Vec<&str> = p.work.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tids, ["t1", "t2"], "running jobs by run_at");
    assert_eq!(p.work[0].1, work[1].json);

    let r = &procs[1];
    assert_eq!(
        (r.busy, r.concurrency, r.rss_kb, r.quiet),
        (1, 0, 51200, true)
    );
    assert_eq!(r.beat, 1_795_853_140.25);
    assert_eq!(
        r.work,
        [(
            "6m5".to_string(),
            r#"{"queue":"low","payload":"{}","run_at":1}"#.to_string()
        )]
    );

    let still: Vec<String> = conn
        .smembers(layout_key(&c.keys, "processes"))
        .await
        .unwrap();
    assert_eq!(still.len(), 3, "listing deletes nothing: {still:?}");
}

#[tokio::test]
async fn signals_reach_the_next_heartbeats_in_order() {
    let c = case("signals").await;
    let id = "host:3:sig";
    assert_eq!(beat(&c.b, live(id, &[])).await, None);
    c.b.signal(id, RemoteSignal::Quiet).await.unwrap();
    c.b.signal(id, RemoteSignal::Dump).await.unwrap();
    c.b.signal("host:4:other", RemoteSignal::Stop)
        .await
        .unwrap();
    let key = layout_key(&c.keys, &format!("{id}-signals"));
    let ttl: i64 = c.conn.clone().ttl(&key).await.unwrap();
    assert!(
        (1..=60).contains(&ttl),
        "signals expire like Sidekiq's: {ttl}"
    );
    let queued: Vec<String> = c.conn.clone().lrange(&key, 0, -1).await.unwrap();
    assert_eq!(queued, ["TTIN", "TSTP"], "LPUSHed under Sidekiq's names");

    assert_eq!(beat(&c.b, live(id, &[])).await, Some(RemoteSignal::Quiet));
    assert_eq!(beat(&c.b, live(id, &[])).await, Some(RemoteSignal::Dump));
    assert_eq!(beat(&c.b, live(id, &[])).await, None);
    assert_eq!(
        beat(&c.b, live("host:4:other", &[])).await,
        Some(RemoteSignal::Stop)
    );
}

fn metrics(class: &str, runs: &[(u64, bool)]) -> ClassMetrics {
    let mut m = ClassMetrics::new(class);
    for &(ms, failed) in runs {
        m.record(ms, failed);
    }
    m
}

#[tokio::test]
async fn metrics_round_trip_merged_per_class_with_totals() {
    let c = case("metrics").await;
    let minute = 29_930_885;
    let a1 = metrics("Shop::Charge", &[(10, false), (600, false), (3, true)]);
    let b1 = metrics("Mailer|v2", &[(40_000, false)]);
    let a2 = metrics("Shop::Charge", &[(25, false)]);
    let a3 = metrics("Shop::Charge", &[(1_000_000, false), (7, true)]);
    c.b.record_metrics(minute, &[a1.clone(), b1.clone(), ClassMetrics::new("Idle")])
        .await
        .unwrap();
    c.b.record_metrics(minute, std::slice::from_ref(&a2))
        .await
        .unwrap();
    c.b.record_metrics(minute + 1, std::slice::from_ref(&a3))
        .await
        .unwrap();
    c.b.record_metrics(minute + 2, &[]).await.unwrap();

    let merged = |rows: &[&ClassMetrics]| {
        errand_core::metrics::merge_by_class(rows.iter().map(|m| (*m).clone()))
    };
    assert_eq!(
        c.b.metrics(minute, minute).await.unwrap(),
        merged(&[&a1, &a2, &b1])
    );
    let both = c.b.metrics(minute, minute + 1).await.unwrap();
    assert_eq!(both, merged(&[&a1, &a2, &a3, &b1]));
    assert_eq!(
        both[0].class, "Mailer|v2",
        "the last `|` separates the field"
    );
    assert_eq!(both[1].executions, 6);
    assert_eq!(both[1].failures, 2);
    assert_eq!(both[1].total_ms, 10 + 600 + 25 + 1_000_000);
    assert_eq!(both[1].histogram[0], 1);
    assert_eq!(both[1].histogram[1], 1);
    assert_eq!(both[1].histogram[9], 1);
    assert_eq!(both[1].histogram[25], 1);
    assert_eq!(
        c.b.metrics(minute + 1, minute + 5).await.unwrap(),
        merged(&[&a3])
    );
    assert!(c.b.metrics(minute + 1, minute).await.unwrap().is_empty());
    assert!(
        c.b.metrics(minute - 60, minute - 1)
            .await
            .unwrap()
            .is_empty()
    );
    // A range past the cap keeps its newest 1,500 minutes.
    assert_eq!(
        c.b.metrics(0, minute + 1_499).await.unwrap(),
        merged(&[&a1, &a2, &a3, &b1])
    );
    assert_eq!(
        c.b.metrics(0, minute + 1_500).await.unwrap(),
        merged(&[&a3])
    );

    assert_eq!(
        c.b.metrics_totals().await.unwrap(),
        merged(&[&a1, &a2, &a3, &b1])
    );

    let mut conn = c.conn.clone();
    let ttl: i64 = conn
        .ttl(layout_key(&c.keys, &format!("errand:metrics:{minute}")))
        .await
        .unwrap();
    assert!(
        (25 * 3600..=26 * 3600).contains(&ttl),
        "minute hash kept 26 h: {ttl}"
    );
    let total_ttl: i64 = conn
        .ttl(layout_key(&c.keys, "errand:metrics:total"))
        .await
        .unwrap();
    assert_eq!(total_ttl, -1, "totals never expire");
    let idle: bool = conn
        .hexists(layout_key(&c.keys, "errand:metrics:total"), "Idle|p")
        .await
        .unwrap();
    assert!(!idle, "a class with nothing counted writes nothing");
    let exists: bool = conn
        .exists(layout_key(
            &c.keys,
            &format!("errand:metrics:{}", minute + 2),
        ))
        .await
        .unwrap();
    assert!(!exists, "an empty record writes nothing");
}

#[tokio::test]
async fn paused_queues_are_listed_and_survive_a_clear() {
    let c = case("paused").await;
    assert!(c.b.paused_queues().await.unwrap().is_empty());
    c.b.push(&[enqueue("default", "d0"), enqueue("mail", "m0")])
        .await
        .unwrap();
    c.b.set_paused("mail", true).await.unwrap();
    c.b.set_paused("mail", true).await.unwrap();
    c.b.set_paused("never-pushed", true).await.unwrap();
    assert_eq!(c.b.paused_queues().await.unwrap(), ["mail", "never-pushed"]);
    let qs = c.b.queues().await.unwrap();
    let summary: Vec<(&str, u64, bool)> = qs
        .iter()
        .map(|q| (q.name.as_str(), q.size, q.paused))
        .collect();
    assert_eq!(
        summary,
        [
            ("default", 1, false),
            ("mail", 1, true),
            ("never-pushed", 0, true)
        ]
    );
    assert_eq!(qs[2].oldest, None);

    assert_eq!(c.b.queue_clear("mail").await.unwrap(), 1);
    assert_eq!(
        c.b.paused_queues().await.unwrap(),
        ["mail", "never-pushed"],
        "clearing a queue does not resume it"
    );
    c.b.set_paused("mail", false).await.unwrap();
    c.b.set_paused("never-pushed", false).await.unwrap();
    assert!(c.b.paused_queues().await.unwrap().is_empty());
    let names: Vec<String> =
        c.b.queues()
            .await
            .unwrap()
            .into_iter()
            .map(|q| q.name)
            .collect();
    assert_eq!(names, ["default"]);
    let raw: Vec<String> = c
        .conn
        .clone()
        .smembers(layout_key(&c.keys, "paused"))
        .await
        .unwrap();
    assert!(raw.is_empty());
}

#[tokio::test]
async fn counters_and_backend_info() {
    let c = case("counters").await;
    let id = "host:5:stats";
    beat(
        &c.b,
        Beat {
            processed: 7,
            failed: 2,
            ..live(id, &[])
        },
    )
    .await;
    let counters = c.b.counters().await.unwrap();
    assert_eq!((counters.processed, counters.failed), (7, 2));
    let day = errand_core::utc_date(1_795_853_133.765_026);
    let days =
        c.b.daily_counters(&[day.clone(), "2001-01-01".into(), day])
            .await
            .unwrap();
    let days: Vec<(u64, u64)> = days.iter().map(|d| (d.processed, d.failed)).collect();
    assert_eq!(days, [(7, 2), (0, 0), (7, 2)]);
    assert!(c.b.daily_counters(&[]).await.unwrap().is_empty());

    // The URL is shown without its password.
    let mut conn = c.conn.clone();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("viewer")
        .arg("on")
        .arg(">s3cret-pw")
        .arg("~*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .unwrap();
    let authed = c.url.replacen("redis://", "redis://viewer:s3cret-pw@", 1);
    let b = RedisBroker::connect(&authed).await.unwrap();
    let info = b.backend_info().await.unwrap();
    assert_eq!(info.kind, "redis");
    let labels: Vec<&str> = info.facts.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        labels,
        [
            "version",
            "uptime_days",
            "connected_clients",
            "used_memory",
            "used_memory_peak",
            "maxmemory_policy",
            "url"
        ]
    );
    let url = &info.facts.last().unwrap().1;
    assert!(url.contains("viewer@127.0.0.1:"), "{url}");
    assert!(
        info.facts.iter().all(|(_, v)| !v.contains("s3cret")),
        "{info:?}"
    );
    let version = &info.facts[0].1;
    assert!(version.split('.').count() >= 2, "{version}");
}

#[tokio::test]
async fn namespaces_keep_admin_views_apart() {
    let a = case("ns-a").await;
    let b = case("ns-b").await;
    a.b.push(&[enqueue("default", "a0")]).await.unwrap();
    a.b.push_scheduled(&[ScheduledJob {
        at: 5.0,
        payload: "later".into(),
    }])
    .await
    .unwrap();
    a.b.set_paused("default", true).await.unwrap();
    a.b.record_metrics(1, &[metrics("A", &[(1, false)])])
        .await
        .unwrap();
    beat(
        &a.b,
        Beat {
            processed: 1,
            ..live("host:6:ns", &[])
        },
    )
    .await;
    a.b.signal("host:6:ns", RemoteSignal::Stop).await.unwrap();

    assert!(b.b.queues().await.unwrap().is_empty());
    assert!(b.b.paused_queues().await.unwrap().is_empty());
    assert_eq!(b.b.set_size(SetName::Scheduled).await.unwrap(), 0);
    assert!(!b.b.set_remove(SetName::Scheduled, "later").await.unwrap());
    assert!(
        !b.b.set_to_queue(MoveToQueue {
            set: SetName::Scheduled,
            member: "later",
            queue: "default",
            payload: "x"
        })
        .await
        .unwrap()
    );
    assert!(b.b.processes().await.unwrap().is_empty());
    assert!(b.b.metrics(0, 10).await.unwrap().is_empty());
    assert!(b.b.metrics_totals().await.unwrap().is_empty());
    assert_eq!(b.b.counters().await.unwrap().processed, 0);
    assert_eq!(b.b.queue_clear("default").await.unwrap(), 0);
    assert_eq!(beat(&b.b, live("host:6:ns", &[])).await, None);

    assert_eq!(a.b.queues().await.unwrap().len(), 1);
    assert_eq!(a.b.processes().await.unwrap().len(), 1);
    assert_eq!(a.b.metrics(0, 10).await.unwrap().len(), 1);
    assert_eq!(
        beat(&a.b, live("host:6:ns", &[])).await,
        Some(RemoteSignal::Stop)
    );

    // Every key sits under a namespace: nothing bare was written (every case of this file
    // uses one, so on our own server every key has the `admin-` prefix).
    let mut conn = a.conn.clone();
    let all: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    if a._server.is_some() {
        let bare: Vec<&String> = all.iter().filter(|k| !k.starts_with("admin-")).collect();
        assert!(bare.is_empty(), "{bare:?}");
    }
    let a_prefix = a.keys.prefix().to_string();
    let mine: Vec<&String> = all.iter().filter(|k| k.starts_with(&a_prefix)).collect();
    for want in [
        "queue:default",
        "paused",
        "schedule",
        "errand:metrics:total",
        "processes",
    ] {
        assert!(
            mine.iter()
                .any(|k| k.as_str() == format!("{a_prefix}{want}")),
            "{want} under the namespace: {mine:?}"
        );
    }
}

/// `reset` (what `errand demo` and `errand bench` run first) deletes Errand's and Sidekiq's keys
/// in its namespace and nothing else: neither another application's keys nor a key that only
/// starts like the namespace; without a namespace, Sidekiq's bare keys go and others stay.
#[tokio::test]
async fn reset_deletes_only_errands_keys_in_its_namespace() {
    let c = case("reset").await;
    let mut conn = c.conn.clone();
    c.b.push(&[
        enqueue("default", &payload(1)),
        enqueue("mail", &payload(2)),
    ])
    .await
    .unwrap();
    c.b.push_scheduled(&[ScheduledJob {
        at: 1e12,
        payload: payload(3),
    }])
    .await
    .unwrap();
    let ns = c.keys.prefix().trim_end_matches(':').to_string();
    let foreign = [format!("other-app:{ns}:cache"), format!("{ns}-lookalike")];
    for k in &foreign {
        let _: () = conn.set(k, "keep").await.unwrap();
    }
    let deleted = c.b.reset().await.unwrap();
    assert!(
        deleted >= 4,
        "queues, two lists and the scheduled set: {deleted}"
    );
    assert!(c.b.queues().await.unwrap().is_empty());
    assert_eq!(c.b.set_size(SetName::Scheduled).await.unwrap(), 0);
    for k in &foreign {
        let kept: Option<String> = conn.get(k).await.unwrap();
        assert_eq!(kept.as_deref(), Some("keep"), "{k}");
    }

    let bare = RedisBroker::connect(&c.url).await.unwrap();
    bare.push(&[enqueue("reset-bare", &payload(4))])
        .await
        .unwrap();
    let _: () = conn.set("stat:processed", 7).await.unwrap();
    let _: () = conn.set("myapp:cache", "keep").await.unwrap();
    bare.reset().await.unwrap();
    let left: u64 = redis::cmd("EXISTS")
        .arg(&["queue:reset-bare", "queues", "stat:processed"][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "Sidekiq's bare keys are gone");
    let kept: Option<String> = conn.get("myapp:cache").await.unwrap();
    assert_eq!(kept.as_deref(), Some("keep"));
    let _: () = conn.del("myapp:cache").await.unwrap();
    for k in &foreign {
        let _: () = conn.del(k).await.unwrap();
    }
}
