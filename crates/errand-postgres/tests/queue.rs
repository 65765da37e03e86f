//! The PostgreSQL hot path on a real server started by the test (`initdb` + `pg_ctl` on a
//! temporary folder and a free port): FIFO pushes, SKIP LOCKED fetches, fenced completions in
//! groups, release, scheduling and promotion, LISTEN/NOTIFY wake-ups across brokers, and the
//! migrations.

use errand_core::WireProfile;
use errand_core::broker::{
    Completion, Enqueue, FetchRequest, Fetched, JobQueue, ScheduledJob, Settle,
};
use errand_postgres::{PostgresBroker, PostgresConfig, migrations_sql};
use errand_tests::PostgresServer;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn job(n: u64) -> String {
    serde_json::json!({"class": "Job", "args": [n], "queue": "q", "jid": format!("{n:024}"),
                       "created_at": 1.0})
    .to_string()
}

fn enqueue(n: u64) -> Enqueue {
    Enqueue {
        queue: "q".into(),
        payload: job(n),
    }
}

async fn fetch(b: &PostgresBroker, who: &str, max: usize, wait: Duration) -> Vec<Fetched> {
    b.fetch(FetchRequest {
        identity: who,
        queues: &["q".to_string()],
        max,
        wait,
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_fetch_complete_release_and_promote() {
    let pg = PostgresServer::start();
    let b = PostgresBroker::connect(&pg.url()).await.unwrap();
    b.push(&[enqueue(1), enqueue(2), enqueue(3)]).await.unwrap();
    let got = fetch(&b, "p1", 2, Duration::ZERO).await;
    let raws: Vec<&str> = got.iter().map(|f| f.raw.as_str()).collect();
    assert_eq!(raws, vec![job(1), job(2)], "oldest first");
    assert!(got[0].token < got[1].token, "increasing fencing tokens");

    // A stale attempt (another token) cannot end the fetch; the real one can, in one group.
    let mut stale = got[0].clone();
    stale.token += 1_000;
    let retry_at = 1_000.0;
    let done = b
        .complete_many(&[
            Completion::Ack(&stale),
            Completion::Ack(&got[0]),
            Completion::Settle(
                &got[1],
                &Settle::Retry {
                    payload: job(20),
                    at: retry_at,
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(done, vec![false, true, true]);
    assert!(
        !b.complete_many(&[Completion::Ack(&got[0])]).await.unwrap()[0],
        "acked once"
    );
    // Released: back at the front of its queue.
    let third = fetch(&b, "p1", 1, Duration::ZERO).await;
    assert_eq!(third[0].raw, job(3));
    b.push(&[enqueue(4)]).await.unwrap();
    assert!(b.release(&third[0]).await.unwrap());
    assert!(!b.release(&third[0]).await.unwrap(), "released once");
    let next = fetch(&b, "p2", 2, Duration::ZERO).await;
    assert_eq!(next[0].raw, job(3), "the released job comes first");
    assert_eq!(next[1].raw, job(4));

    // Scheduled and retrying jobs come back to their queue when due, stamped.
    b.push_scheduled(&[ScheduledJob {
        at: 2_000.0,
        payload: job(5),
    }])
    .await
    .unwrap();
    assert_eq!(b.promote_due(1_500.0, WireProfile::V7).await.unwrap(), 1);
    assert_eq!(b.promote_due(2_500.0, WireProfile::V7).await.unwrap(), 1);
    let promoted = fetch(&b, "p3", 5, Duration::ZERO).await;
    assert_eq!(promoted.len(), 2);
    for f in &promoted {
        let v: serde_json::Value = serde_json::from_str(&f.raw).unwrap();
        assert!(v["enqueued_at"].is_number(), "{v}");
    }

    // A batch of acks only is one statement, answered entry by entry: a stale attempt beside
    // the real one of the same row gets false, the real one true.
    b.push(&[enqueue(6)]).await.unwrap();
    let sixth = fetch(&b, "p1", 1, Duration::ZERO).await;
    let mut stale = sixth[0].clone();
    stale.token -= 1;
    assert_eq!(
        b.complete_many(&[Completion::Ack(&stale), Completion::Ack(&sixth[0])])
            .await
            .unwrap(),
        vec![false, true]
    );

    // The server's clock.
    let now = b.now().await.unwrap();
    assert!((now - errand_core::now()).abs() < 5.0, "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetchers_never_share_a_job() {
    let pg = PostgresServer::start();
    let b = PostgresBroker::connect(&pg.url()).await.unwrap();
    const JOBS: u64 = 2_000;
    b.push(&(0..JOBS).map(enqueue).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = fetch(&b, &format!("w{w}"), 10, Duration::ZERO).await;
                if got.is_empty() {
                    return mine;
                }
                let acks: Vec<Completion<'_>> = got.iter().map(Completion::Ack).collect();
                assert!(b.complete_many(&acks).await.unwrap().iter().all(|d| *d));
                mine.extend(got.into_iter().map(|f| f.raw));
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for raw in t.await.unwrap() {
            total += 1;
            seen.insert(raw);
        }
    }
    assert_eq!(total, JOBS, "every job fetched once");
    assert_eq!(seen.len() as u64, JOBS, "no job fetched twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fetch_wakes_on_another_brokers_push() {
    let pg = PostgresServer::start();
    let waiting = PostgresBroker::connect(&pg.url()).await.unwrap();
    let pusher = PostgresBroker::connect(&pg.url()).await.unwrap();
    let fetcher = {
        let b = waiting.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = fetch(&b, "idle", 1, Duration::from_secs(30)).await;
            (got, started.elapsed())
        })
    };
    // Let the fetch look (empty) and wait before the push.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushed = Instant::now();
    pusher.push(&[enqueue(1)]).await.unwrap();
    let (got, waited) = fetcher.await.unwrap();
    assert_eq!(got.len(), 1);
    let after_push = pushed.elapsed();
    // The safety poll is 5 s: an answer well before it came from the notification.
    assert!(
        after_push < Duration::from_secs(2) && waited < Duration::from_secs(4),
        "woken {after_push:?} after the push"
    );
    // Only the broker that fetched listens: one that only pushes (a web process) holds no
    // listening connection.
    let (sql, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let listening: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listening, 1, "only the fetching broker listens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_print_for_manual_runs() {
    let pg = PostgresServer::start();
    // Two brokers connecting at once: the advisory lock serialises the migration.
    let url = pg.url();
    let (a, b) = tokio::join!(PostgresBroker::connect(&url), PostgresBroker::connect(&url));
    let (a, _b) = (a.unwrap(), b.unwrap());
    a.push(&[enqueue(1)]).await.unwrap();
    // A schema migrated by hand from the printed SQL, used without migrating.
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&migrations_sql("manual"))
        .await
        .unwrap();
    let manual = PostgresBroker::connect_with(
        PostgresConfig::new(pg.url())
            .schema("manual")
            .migrate(false),
    )
    .await
    .unwrap();
    manual.push(&[enqueue(2)]).await.unwrap();
    assert_eq!(fetch(&manual, "m", 5, Duration::ZERO).await[0].raw, job(2));
    assert_eq!(fetch(&a, "a", 5, Duration::ZERO).await[0].raw, job(1));
    let versions: i64 = client
        .query_one("SELECT count(*) FROM errand.migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 3, "each applied once");
}

/// With `keep_finished`, a success leaves its row (state `finished`, never fetched again), a
/// failure goes to its set as before, and the promotion turn deletes the expired rows in
/// batches, leaving the young ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_rows_are_kept_then_pruned_in_batches() {
    const JOBS: u64 = 2_500;
    let pg = PostgresServer::start();
    let b = PostgresBroker::connect_with(
        PostgresConfig::new(pg.url()).keep_finished(Duration::from_secs(3_600)),
    )
    .await
    .unwrap();
    let (sql, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let count = |state: i16| {
        let sql = &sql;
        async move {
            sql.query_one(
                "SELECT count(*) FROM errand.jobs WHERE state = $1",
                &[&state],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    b.push(&(0..JOBS).map(enqueue).collect::<Vec<_>>())
        .await
        .unwrap();
    let got = fetch(&b, "p", JOBS as usize, Duration::ZERO).await;
    assert_eq!(got.len() as u64, JOBS);
    let mut stale = got[0].clone();
    stale.token += 1_000_000;
    let mut batch = vec![Completion::Ack(&stale)];
    let retry = Settle::Retry {
        payload: job(99_999),
        at: 1e12,
    };
    batch.push(Completion::Settle(&got[0], &retry));
    batch.extend(got[1..].iter().map(Completion::Ack));
    let done = b.complete_many(&batch).await.unwrap();
    assert!(!done[0], "a stale attempt finishes nothing");
    assert!(done[1..].iter().all(|d| *d));
    assert_eq!(count(-1).await, JOBS as i64 - 1, "every success kept");
    assert_eq!(count(3).await, 1, "the failure is in the retry set");
    assert_eq!(count(1).await, 0, "nothing left in flight");
    assert!(
        fetch(&b, "p", 10, Duration::ZERO).await.is_empty(),
        "finished rows are never fetched"
    );
    assert!(
        !b.complete_many(&[Completion::Ack(&got[1])]).await.unwrap()[0],
        "finished once"
    );

    // Young rows stay; an hour later all go, in batches of 1,000.
    let now = b.now().await.unwrap();
    b.promote_due(now, WireProfile::V7).await.unwrap();
    assert_eq!(count(-1).await, JOBS as i64 - 1);
    b.push(&[enqueue(JOBS)]).await.unwrap();
    let young = fetch(&b, "p", 1, Duration::ZERO).await;
    assert!(
        b.complete_many(&[Completion::Ack(&young[0])])
            .await
            .unwrap()[0]
    );
    let finished: f64 = sql
        .query_one(
            "SELECT score FROM errand.jobs WHERE state = -1 ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        (finished - b.now().await.unwrap()).abs() < 5.0,
        "finish time is the server's"
    );
    // Pruning compares with `now - keep`: pretend the others finished 2 h ago.
    sql.execute(
        "UPDATE errand.jobs SET score = score - 7200 WHERE state = -1 AND score < $1",
        &[&finished],
    )
    .await
    .unwrap();
    b.promote_due(b.now().await.unwrap(), WireProfile::V7)
        .await
        .unwrap();
    assert_eq!(count(-1).await, 1, "only the young row is left");
    assert_eq!(count(3).await, 1, "the retry set is untouched");
}

/// A fetch starts past the last position its broker took (its hint); a job another process
/// puts back at the front still comes within the hint's full-scan bound (1 s), and with the
/// `front` notification at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_put_back_by_another_process_is_fetched_within_a_second() {
    let pg = PostgresServer::start();
    let a = PostgresBroker::connect(&pg.url()).await.unwrap();
    let b = PostgresBroker::connect(&pg.url()).await.unwrap();
    a.push(&(0..300).map(enqueue).collect::<Vec<_>>())
        .await
        .unwrap();
    let first = fetch(&a, "a", 2, Duration::ZERO).await;
    assert_eq!(first[1].raw, job(1));
    let other = fetch(&b, "b", 1, Duration::ZERO).await;
    assert_eq!(other[0].raw, job(2));
    assert!(b.release(&other[0]).await.unwrap());
    let released = Instant::now();
    let mut skipped = 0;
    loop {
        let got = fetch(&a, "a", 1, Duration::ZERO).await;
        if got[0].raw == job(2) {
            break;
        }
        skipped += 1;
        assert!(
            released.elapsed() < Duration::from_millis(1_500),
            "the released job not fetched within the bound ({skipped} later jobs first)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "released job fetched {:?} after its release, {skipped} later jobs first",
        released.elapsed()
    );
}
