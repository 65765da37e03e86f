//! Faults in Redis and in the network (RELIABILITY-PLAN R2, R7, R9): Redis SIGKILLed and
//! restarted under load, a worker partitioned from Redis through the in-repo fault proxy, and
//! Redis stalls. Workers must not crash or busy-loop, must resume within 5 s, and no
//! acknowledged job may be lost or its effect applied twice.

use errand::Client;
use errand::redis::RedisBroker;
use errand_tests::{Ledger, RedisServer, Worker, wait_until_sync};
use redis::Commands;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A worker on `url` with concurrency 5, its ledger on `ledger` (or `url`).
fn worker(url: &str, ledger: Option<&str>) -> Worker {
    Worker::start(
        env!("CARGO_BIN_EXE_errand-test-worker"),
        url,
        5,
        5_000,
        ledger,
    )
}

/// User plus system CPU seconds of process `pid` so far (from /proc, 100 ticks a second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_twice_loses_no_acknowledged_job() {
    const JOBS: u64 = 20_000;
    let mut redis = RedisServer::start_durable();
    let ledger_redis = RedisServer::start();
    let url = redis.url();
    Client::new(RedisBroker::connect(&url).await.unwrap())
        .push_bulk((0..JOBS).map(Ledger))
        .await
        .unwrap();
    let ledger_url = ledger_redis.url();
    let mut workers: Vec<Worker> = (0..2).map(|_| worker(&url, Some(&ledger_url))).collect();
    let mut ledger = ledger_redis.conn();
    let ran = |ledger: &mut redis::Connection| -> u64 { ledger.hlen("ledger").unwrap() };

    let mut reconnects = Vec::new();
    let mut outage_cpu = Vec::new();
    for (round, at) in [JOBS / 4, JOBS / 2].into_iter().enumerate() {
        tokio::task::block_in_place(|| {
            wait_until_sync("progress before the kill", Duration::from_secs(120), || {
                ran(&mut ledger) >= at
            })
        });
        redis.kill9();
        let cpu_before: f64 = workers.iter().map(|w| cpu_seconds(w.0.id())).sum();
        // The outage itself: Redis stays down for two seconds.
        std::thread::sleep(Duration::from_secs(2));
        let cpu_during: f64 =
            workers.iter().map(|w| cpu_seconds(w.0.id())).sum::<f64>() - cpu_before;
        outage_cpu.push(cpu_during / 2.0 / 2.0); // per worker, per second
        for w in &mut workers {
            assert!(
                w.0.try_wait().unwrap().is_none(),
                "round {round}: a worker died while Redis was down"
            );
        }
        let before = ran(&mut ledger);
        let back = Instant::now();
        redis.restart();
        tokio::task::block_in_place(|| {
            wait_until_sync("work to resume", Duration::from_secs(30), || {
                ran(&mut ledger) > before
            })
        });
        reconnects.push(back.elapsed());
    }
    let mut conn = redis.conn();
    let finished = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if ran(&mut ledger) == JOBS {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    if !finished {
        let keys: Vec<String> = conn.keys("*").unwrap();
        let mut state = Vec::new();
        for k in keys {
            let t: String = redis::cmd("TYPE").arg(&k).query(&mut conn).unwrap();
            let n: usize = match t.as_str() {
                "list" => conn.llen(&k).unwrap(),
                "zset" => conn.zcard(&k).unwrap(),
                "hash" => conn.hlen(&k).unwrap(),
                "set" => conn.scard(&k).unwrap(),
                _ => 1,
            };
            state.push(format!("{k} {t} {n}"));
        }
        state.sort();
        panic!(
            "stuck at {} of {JOBS}; redis holds: {state:#?}",
            ran(&mut ledger)
        );
    }
    let runs: HashMap<u64, u64> = ledger.hgetall("ledger").unwrap();
    let duplicates: u64 = runs.values().map(|r| r - 1).sum();
    let queued: usize = conn.llen("queue:default").unwrap();
    let dead: usize = conn.zcard("dead").unwrap();
    eprintln!(
        "redis kill -9 ×2: {JOBS} jobs, 0 lost, {duplicates} duplicates, resumed after {reconnects:?}, \
         worker CPU while Redis was down {outage_cpu:.3?} s/s"
    );
    assert_eq!(runs.len() as u64, JOBS, "every job ran: none lost");
    assert_eq!((queued, dead), (0, 0));
    assert!(
        duplicates <= 20,
        "duplicates ≤ jobs in flight at the kills: {duplicates}"
    );
    for r in &reconnects {
        assert!(
            *r <= Duration::from_secs(5),
            "work resumed within 5 s: {r:?}"
        );
    }
    for c in &outage_cpu {
        assert!(
            *c < 0.2,
            "no busy loop while Redis was down: {c:.3} of a core"
        );
    }
}

/// R9 (Redis stalls): while two workers drain 20,000 jobs and a client keeps pushing, Redis
/// stalls three times (`DEBUG SLEEP 1`, then `CLIENT PAUSE 1500 WRITE`, then `DEBUG SLEEP 1`).
/// Nothing is lost or run twice, no live worker's jobs are "rescued" (its heartbeat outlives
/// the stall), and a push waits at most the stall plus a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stalls_lose_nothing_and_rescue_no_live_worker() {
    const JOBS: u64 = 20_000;
    const PUSHED: u64 = 300;
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    client.push_bulk((0..JOBS).map(Ledger)).await.unwrap();
    let mut workers: Vec<Worker> = (0..2).map(|_| worker(&url, None)).collect();
    // A client pushing one job every 20 ms throughout, timing each push.
    let pusher = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut waits = Vec::new();
            for n in JOBS..JOBS + PUSHED {
                let t = Instant::now();
                client.push(Ledger(n)).await.expect("a push during a stall");
                waits.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            waits
        })
    };
    let mut admin = redis.conn();
    let stalls: [&[&str]; 3] = [
        &["DEBUG", "SLEEP", "1"],
        &["CLIENT", "PAUSE", "1500", "WRITE"],
        &["DEBUG", "SLEEP", "1"],
    ];
    for stall in stalls {
        // Between stalls the system works normally for a while.
        let before: u64 = admin.hlen("ledger").unwrap();
        tokio::task::block_in_place(|| {
            wait_until_sync("progress between stalls", Duration::from_secs(60), || {
                admin.hlen::<_, u64>("ledger").unwrap() >= before + 2_000
            })
        });
        let mut cmd = redis::cmd(stall[0]);
        for a in &stall[1..] {
            cmd.arg(*a);
        }
        let _: redis::Value = cmd.query(&mut admin).unwrap();
    }
    let waits = pusher.await.unwrap();
    tokio::task::block_in_place(|| {
        wait_until_sync("every job to run", Duration::from_secs(120), || {
            admin.hlen::<_, u64>("ledger").unwrap() == JOBS + PUSHED
        })
    });
    for w in &mut workers {
        assert!(w.0.try_wait().unwrap().is_none(), "no worker died");
    }
    let runs: HashMap<u64, u64> = admin.hgetall("ledger").unwrap();
    let duplicates: u64 = runs.values().map(|r| r - 1).sum();
    let mut sorted = waits.clone();
    sorted.sort();
    let p99 = sorted[sorted.len() * 99 / 100];
    let max = *sorted.last().unwrap();
    eprintln!(
        "redis stalls ×3: {} jobs, 0 lost, {duplicates} duplicates, push p99 {p99:?}, max {max:?}",
        JOBS + PUSHED
    );
    assert_eq!(
        duplicates, 0,
        "no job ran twice: no live worker was rescued"
    );
    assert!(
        max <= Duration::from_millis(2_500),
        "a push waited at most the stall + 1 s: {max:?}"
    );
}

/// R9, a stall past the heartbeat TTL: Redis sleeps 5 s (`DEBUG SLEEP 5`) while two workers,
/// whose heartbeats live 3 s, run 400 fenced jobs. When Redis wakes, every heartbeat has
/// expired: a live worker's jobs may be recovered by the other worker before its own queued
/// beat revives it. Such a duplicate cannot apply its effect twice: each job's effect (a write
/// fenced by the attempt's token) is recorded exactly once, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_past_the_heartbeat_ttl_applies_each_effect_once() {
    const JOBS: u64 = 400;
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    for n in 0..JOBS {
        let job = errand::RawJob::new("Fenced", vec![serde_json::json!(n), serde_json::json!(100)]);
        client.push_raw(job, errand::Push::new()).await.unwrap();
    }
    let mut workers: Vec<Worker> = (0..2).map(|_| worker(&url, None)).collect();
    let mut conn = redis.conn();
    tokio::task::block_in_place(|| {
        wait_until_sync("a quarter of the jobs", Duration::from_secs(60), || {
            conn.hlen::<_, u64>("ledger").unwrap() >= JOBS / 4
        })
    });
    let _: redis::Value = redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg("5")
        .query(&mut conn)
        .unwrap();
    tokio::task::block_in_place(|| {
        wait_until_sync("every job's effect", Duration::from_secs(120), || {
            conn.hlen::<_, u64>("ledger").unwrap() == JOBS
        })
    });
    for w in &mut workers {
        assert!(w.0.try_wait().unwrap().is_none(), "no worker died");
    }
    let ledger: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    let stale: HashMap<u64, u64> = conn.hgetall("stale").unwrap();
    let recovered = conn
        .keys::<_, Vec<String>>("errand:recoveries:*")
        .unwrap()
        .len();
    eprintln!(
        "redis stall of 5 s past a 3 s TTL: {JOBS} jobs, {recovered} recovered from a live worker, {} late writes refused",
        stale.values().sum::<u64>()
    );
    assert!(ledger.values().all(|n| *n == 1), "each effect exactly once");
    let dead: usize = conn.zcard("dead").unwrap();
    assert_eq!(dead, 0);
}

/// R7 (partition), through the in-repo fault proxy: worker W1 reaches Redis through the proxy,
/// W2 directly; the link of W1 is blackholed for 9 s: three times its heartbeat TTL, and longer
/// than a blocking fetch's wait plus its 5 s margin (2 s + 5 s), so W1's blocked fetch gives up
/// on its silent connection and makes a new one. W1 neither
/// crashes nor busy-loops, W2 recovers and finishes W1's jobs, W1 beats again soon after the
/// link heals, and every job's effect (a fenced write) is recorded exactly once — W1's late
/// writes are refused by their older lease tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_worker_recovers_and_its_late_writes_are_refused() {
    const JOBS: u64 = 400;
    let redis = RedisServer::start();
    let proxy = errand_tests::FaultProxy::start(redis.port());
    let client = Client::new(RedisBroker::connect(&redis.url()).await.unwrap());
    let jobs: Vec<errand::RawJob> = (0..JOBS)
        .map(|n| errand::RawJob::new("Fenced", vec![serde_json::json!(n), serde_json::json!(200)]))
        .collect();
    for chunk in jobs.chunks(500) {
        for job in chunk {
            client
                .push_raw(job.clone(), errand::Push::new())
                .await
                .unwrap();
        }
    }
    // W1 reaches everything (jobs and the fenced store) through the proxy, W2 directly.
    let spawn = |url: &str| worker(url, Some(url));
    let mut w1 = spawn(&proxy.redis_url());
    let mut w2 = spawn(&redis.url());
    let mut conn = redis.conn();
    let w1_id = w1.identity(&mut conn);
    w2.identity(&mut conn);
    tokio::task::block_in_place(|| {
        wait_until_sync("a quarter of the jobs", Duration::from_secs(60), || {
            conn.hlen::<_, u64>("ledger").unwrap() >= JOBS / 4
        })
    });
    // Cut W1 off while it holds jobs. Its five 200 ms jobs run in step, so between one group's
    // acks and the next fetch it briefly holds none; a cut landing there is lifted and made
    // again (the proxy holds bytes back, it drops none, so a short cut only delays them).
    let in_flight = format!("errand:inflight:{w1_id}:default");
    let mut held: usize = 0;
    let mut cuts = 0;
    let cut_deadline = Instant::now() + Duration::from_secs(30);
    while held == 0 {
        assert!(
            Instant::now() < cut_deadline,
            "W1 held no job at any cut for 30 s"
        );
        tokio::task::block_in_place(|| {
            wait_until_sync("W1 to hold a job", Duration::from_secs(10), || {
                conn.hlen::<_, usize>(&in_flight).unwrap() > 0
            })
        });
        proxy.set(errand_tests::Fault::Blackhole);
        cuts += 1;
        // What W1 holds once cut off: a fetch already forwarded still lands, so read until two
        // reads 50 ms apart agree.
        held = conn.hlen(&in_flight).unwrap();
        tokio::task::block_in_place(|| {
            wait_until_sync(
                "W1's in-flight hash to settle",
                Duration::from_secs(5),
                || {
                    std::thread::sleep(Duration::from_millis(50));
                    let now: usize = conn.hlen(&in_flight).unwrap();
                    std::mem::replace(&mut held, now) == now
                },
            )
        });
        if held == 0 {
            proxy.set(errand_tests::Fault::None);
        }
    }
    let cpu_before = cpu_seconds(w1.0.id());
    const CUT: Duration = Duration::from_secs(9);
    std::thread::sleep(CUT); // the partition
    let cpu_during = (cpu_seconds(w1.0.id()) - cpu_before) / CUT.as_secs_f64();
    assert!(
        w1.0.try_wait().unwrap().is_none(),
        "W1 survived the partition"
    );
    let healed = Instant::now();
    proxy.set(errand_tests::Fault::None);
    let beat_before: Option<String> = conn.hget(&w1_id, "beat").unwrap();
    tokio::task::block_in_place(|| {
        wait_until_sync("W1 to beat again", Duration::from_secs(10), || {
            let beat: Option<String> = conn.hget(&w1_id, "beat").unwrap();
            beat.is_some() && beat != beat_before
        })
    });
    let back_after = healed.elapsed();
    tokio::task::block_in_place(|| {
        wait_until_sync("every job's effect", Duration::from_secs(120), || {
            conn.hlen::<_, u64>("ledger").unwrap() == JOBS
        })
    });
    let ledger: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    let stale: HashMap<u64, u64> = conn.hgetall("stale").unwrap();
    let refused: u64 = stale.values().sum();
    eprintln!(
        "partition ({cuts} cuts): W1 held {held} jobs, {refused} late writes refused, W1 beat again {back_after:?} after the heal, W1 CPU during the partition {cpu_during:.3} of a core"
    );
    assert!(ledger.values().all(|n| *n == 1), "each effect exactly once");
    assert!(
        refused >= 1 && refused as usize <= held,
        "W1's late writes (at most the {held} jobs it held) were refused: {refused}"
    );
    assert!(
        cpu_during < 0.2,
        "no busy loop while partitioned: {cpu_during:.3}"
    );
    assert!(
        back_after <= Duration::from_secs(5),
        "W1 back within 5 s: {back_after:?}"
    );
    let dead: usize = conn.zcard("dead").unwrap();
    assert_eq!(dead, 0);
    assert!(w2.0.try_wait().unwrap().is_none());
}

/// R11 (clock skew): three workers whose clocks are right, an hour ahead and an hour behind
/// share 60 jobs scheduled 4 s ahead by Redis's clock. Promotion goes by Redis's clock, so no
/// job starts early and all start within the poll interval and a second of their time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_worker_clocks_run_scheduled_jobs_on_time() {
    const JOBS: u64 = 60;
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let due = secs as f64 + micros as f64 / 1e6 + 4.0;
    let client = Client::new(RedisBroker::connect(&url).await.unwrap());
    let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(due);
    for n in 0..JOBS {
        client
            .push_raw(
                errand::RawJob::new("StartedAt", vec![serde_json::json!(n)]),
                errand::Push::new().at(at),
            )
            .await
            .unwrap();
    }
    let _workers: Vec<Worker> = ["0", "3600", "-3600"]
        .into_iter()
        .map(|skew| {
            let mut w = Worker(
                std::process::Command::new(env!("CARGO_BIN_EXE_errand-test-worker"))
                    .args([url.as_str(), "5", "5000"])
                    .env("ERRAND_TEST_CLOCK_SKEW_S", skew)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            w.identity(&mut conn);
            w
        })
        .collect();
    tokio::task::block_in_place(|| {
        wait_until_sync("every job to run", Duration::from_secs(30), || {
            conn.hlen::<_, u64>("started").unwrap() == JOBS
        })
    });
    let started: HashMap<u64, f64> = conn.hgetall("started").unwrap();
    let earliest = started.values().cloned().fold(f64::MAX, f64::min);
    let latest = started.values().cloned().fold(f64::MIN, f64::max);
    eprintln!(
        "clock skew ±1 h: {JOBS} jobs started {:+.3} s to {:+.3} s from their time (Redis clock)",
        earliest - due,
        latest - due
    );
    assert!(
        earliest >= due,
        "no job started early: {:+.3} s",
        earliest - due
    );
    assert!(
        latest <= due + 1.5,
        "all started within 1.5 s: {:+.3} s",
        latest - due
    );
}
