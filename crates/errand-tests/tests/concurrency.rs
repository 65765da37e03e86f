//! Concurrency control on a real Redis: unique jobs (10,000 pushes of 1,000 jobs; keys freed
//! after a SIGKILL within `unique_for`), the fenced mutex across real worker processes (with
//! it every order is charged once; without it the same test shows duplicates), fencing of a
//! stalled holder, and the limiters (a concurrent limit never exceeded, a bucket's rate).

use errand::redis::RedisBroker;
use errand::{
    Admission, Client, Error, Job, JobContext, JobOptions, JobResult, Limiter, Mutex, Push, RawJob,
    Server,
};
use errand_tests::{RedisServer, Worker, wait_until, wait_until_sync};
use redis::Commands;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn worker(url: &str, concurrency: usize) -> Worker {
    Worker::start(
        env!("CARGO_BIN_EXE_errand-test-worker"),
        url,
        concurrency,
        5_000,
        None,
    )
}

/// Counts its runs in the shared counter; unique for a minute by its argument.
#[derive(Serialize, Deserialize)]
struct Index(u64);

impl Job for Index {
    const NAME: &'static str = "Index";
    fn options() -> JobOptions {
        JobOptions::default().unique_for(Duration::from_secs(60))
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        cx.data::<Arc<AtomicUsize>>()
            .expect("counter")
            .fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn quick_server(broker: RedisBroker) -> errand::ServerBuilder {
    Server::builder(broker)
        .handle_signals(false)
        .fetch_wait(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(100))
        .clear_middleware()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pushes_of_a_thousand_unique_jobs_enqueue_and_run_a_thousand() {
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    let client = Client::new(broker.clone());
    let (mut pushed, mut duplicates) = (0, 0);
    // Each job is pushed ten times, interleaved with the others.
    for round in 0..10 {
        for n in 0..1_000 {
            match client.push(Index(n)).await {
                Ok(_) => pushed += 1,
                Err(Error::Duplicate { .. }) => duplicates += 1,
                Err(e) => panic!("round {round}, job {n}: {e}"),
            }
        }
    }
    assert_eq!((pushed, duplicates), (1_000, 9_000));
    let mut conn = redis.conn();
    let queued: usize = conn.llen("queue:default").unwrap();
    assert_eq!(queued, 1_000);

    let runs = Arc::new(AtomicUsize::new(0));
    let server = quick_server(broker)
        .register::<Index>()
        .data(runs.clone())
        .concurrency(20)
        .build()
        .unwrap();
    let drained = server.drain().await.unwrap();
    assert_eq!(drained.performed, 1_000);
    assert_eq!(runs.load(Ordering::SeqCst), 1_000);
    client
        .push(Index(7))
        .await
        .expect("a key is free again after its job succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_keys_of_a_killed_worker_free_within_unique_for() {
    const UNIQUE_FOR: Duration = Duration::from_secs(5); // UniqueSleepy's
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    // The worker's UniqueSleepy(ms) is unique for 5 s; push the same shape from here.
    #[derive(Serialize, Deserialize)]
    struct UniqueSleepy(u64);
    impl Job for UniqueSleepy {
        const NAME: &'static str = "UniqueSleepy";
        fn options() -> JobOptions {
            JobOptions::default().unique_for(UNIQUE_FOR)
        }
        async fn perform(self, _cx: &JobContext) -> JobResult {
            unreachable!("run by the worker process")
        }
    }
    let pushed_at = Instant::now();
    for ms in 60_000..60_005 {
        client.push(UniqueSleepy(ms)).await.unwrap();
    }
    let mut w = worker(&url, 10);
    let mut conn = redis.conn();
    wait_until_sync(
        "the worker to run all five",
        Duration::from_secs(20),
        || {
            let keys: Vec<String> = conn.keys("errand:inflight:*").unwrap();
            keys.iter()
                .map(|k| conn.hlen::<_, usize>(k).unwrap())
                .sum::<usize>()
                == 5
        },
    );
    w.0.kill().expect("SIGKILL");
    w.0.wait().unwrap();
    for ms in 60_000..60_005 {
        assert!(
            matches!(
                client.push(UniqueSleepy(ms)).await,
                Err(Error::Duplicate { .. })
            ),
            "held right after the kill"
        );
    }
    for ms in 60_000..60_005 {
        wait_until(
            "the key to come free",
            UNIQUE_FOR + Duration::from_secs(10),
            || async { client.push(UniqueSleepy(ms)).await.is_ok() },
        )
        .await;
    }
    let freed_after = pushed_at.elapsed();
    assert!(
        freed_after < UNIQUE_FOR + Duration::from_secs(2),
        "every key came free within unique_for ({freed_after:?})"
    );
}

/// 4 worker processes × 50 concurrency process 2,000 ProcessOrder jobs, each of 400 orders
/// 5 times (the copies pushed next to each other, so they run at the same moment). Returns
/// how many orders were charged more than once; panics if one was never charged.
fn charge_race(with_mutex: bool) -> usize {
    const ORDERS: u64 = 400;
    let redis = RedisServer::start();
    let url = redis.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::new(RedisBroker::connect(&url).await.unwrap());
        let jobs: Vec<RawJob> = (0..ORDERS)
            .flat_map(|id| {
                (0..5).map(move |_| RawJob::new("ProcessOrder", vec![json!(id), json!(with_mutex)]))
            })
            .collect();
        for job in jobs {
            client.push_raw(job, Push::new()).await.unwrap();
        }
    });
    let workers: Vec<Worker> = (0..4).map(|_| worker(&url, 50)).collect();
    let mut conn = redis.conn();
    let charged = |conn: &mut redis::Connection| -> Vec<u64> {
        (0..ORDERS)
            .map(|id| {
                conn.hget::<_, _, Option<u64>>("ledger", 4_000_000 + id)
                    .unwrap()
                    .unwrap_or(0)
            })
            .collect()
    };
    wait_until_sync("every job to run", Duration::from_secs(120), || {
        let queued: usize = conn.llen("queue:default").unwrap();
        let running: usize = conn
            .keys::<_, Vec<String>>("errand:inflight:*")
            .unwrap()
            .iter()
            .map(|k| conn.hlen::<_, usize>(k).unwrap())
            .sum();
        let scheduled: usize = conn.zcard("schedule").unwrap();
        queued == 0 && running == 0 && scheduled == 0
    });
    drop(workers);
    let counts = charged(&mut conn);
    assert!(
        counts.iter().all(|c| *c >= 1),
        "every order was charged at least once"
    );
    let dead: usize = conn.zcard("dead").unwrap();
    let retries: usize = conn.zcard("retry").unwrap();
    assert_eq!((dead, retries), (0, 0), "no job failed");
    counts.iter().filter(|c| **c > 1).count()
}

#[test]
fn with_the_mutex_every_order_is_charged_exactly_once_across_processes() {
    assert_eq!(charge_race(true), 0);
}

#[test]
fn without_the_mutex_the_same_race_charges_twice() {
    let doubled = charge_race(false);
    eprintln!("without the mutex: {doubled} of 400 orders charged more than once");
    assert!(
        doubled > 0,
        "the race test can fail: {doubled} orders charged twice without the mutex"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_holder_is_fenced_off_on_redis() {
    let redis = RedisServer::start();
    let broker: Arc<dyn errand::broker::Broker> =
        Arc::new(RedisBroker::connect(&redis.url()).await.unwrap());
    let m = Mutex::new(broker, "ledger", Duration::from_millis(500));
    let mut stalled = m.try_lock().await.unwrap().unwrap();
    stalled.stop_renewing();
    let deadline = Instant::now() + Duration::from_secs(10);
    let next = loop {
        if let Some(g) = m.try_lock().await.unwrap() {
            break g;
        }
        assert!(Instant::now() < deadline, "the stalled lease never ran out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(next.token() > stalled.token());
    // The resource keeps the newest token it has seen and refuses older ones.
    let mut newest = 0;
    let mut write = |token: u64| {
        if token < newest {
            return Err(format!("stale token {token} < {newest}"));
        }
        newest = token;
        Ok(())
    };
    write(next.token()).unwrap();
    assert!(
        write(stalled.token()).is_err(),
        "the stalled holder's late write is rejected"
    );
}

/// Holds a concurrent limit of 3 on "acme" for 20 ms, tracking how many hold it at once.
#[derive(Serialize, Deserialize)]
struct CallApi(u64);

#[derive(Default)]
struct Holders {
    now: AtomicUsize,
    max: AtomicUsize,
    done: AtomicUsize,
}

impl Job for CallApi {
    const NAME: &'static str = "CallApi";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let limiter = Limiter::concurrent(
            cx.client().broker().clone(),
            "api",
            3,
            Duration::from_secs(10),
        );
        let _permit = cx
            .limit_wait(&limiter, "acme", Duration::from_secs(60))
            .await?;
        let h = cx.data::<Arc<Holders>>().expect("holders");
        let now = h.now.fetch_add(1, Ordering::SeqCst) + 1;
        h.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.now.fetch_sub(1, Ordering::SeqCst);
        h.done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_limit_of_three_is_never_exceeded_by_a_hundred_jobs() {
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    let client = Client::new(broker.clone());
    client.push_bulk((0..100).map(CallApi)).await.unwrap();
    let holders = Arc::new(Holders::default());
    let server = quick_server(broker)
        .register::<CallApi>()
        .data(holders.clone())
        .concurrency(25)
        .build()
        .unwrap();
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    wait_until("all hundred jobs", Duration::from_secs(60), || async {
        holders.done.load(Ordering::SeqCst) == 100
    })
    .await;
    handle.stop();
    running.await.unwrap().unwrap();
    assert_eq!(
        holders.max.load(Ordering::SeqCst),
        3,
        "at most (and at some point) 3 holders"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_of_ten_per_second_admits_ten_per_second_over_ten_seconds() {
    let redis = RedisServer::start();
    let broker: Arc<dyn errand::broker::Broker> =
        Arc::new(RedisBroker::connect(&redis.url()).await.unwrap());
    let limiter = Limiter::bucket(broker, "sms", 10, Duration::from_secs(1));
    // Start on a second boundary and count admissions in each of the next ten seconds.
    let start = (wall_clock().floor() + 1.0) as u64;
    while wall_clock() < start as f64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let mut admitted = Vec::new();
                while wall_clock() < (start + 10) as f64 {
                    if let Admission::Admitted(_) = limiter.acquire("+15550100").await.unwrap() {
                        admitted.push(wall_clock());
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut per_second = [0u32; 10];
    for t in tasks {
        for at in t.await.unwrap() {
            let second = (at.floor() as u64).saturating_sub(start);
            if let Some(slot) = per_second.get_mut(second as usize) {
                *slot += 1;
            }
        }
    }
    for (i, n) in per_second.iter().enumerate() {
        assert!(
            (9..=11).contains(n),
            "second {i}: {n} admitted ({per_second:?})"
        );
    }
    let total: u32 = per_second.iter().sum();
    assert!((95..=105).contains(&total), "{total} in ten seconds");
}

/// Seconds since the epoch on this machine (Redis runs on it too, so its TIME agrees).
fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
