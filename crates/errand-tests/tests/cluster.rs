//! Cluster mode with real processes on a real three-master Redis Cluster: a SIGKILLed worker
//! loses no job, and a live resharding (the slots of the busy queue's shard and of the fleet's
//! keys moved to another master and back while workers run) loses none either. The ledger of
//! runs is a separate plain `redis-server`, as a real side effect would be elsewhere.

use errand::admin::Admin;
use errand::broker::Fleet;
use errand::redis::{Keys, RedisBroker, RedisConfig};
use errand::{Client, Push, RawJob};
use errand_tests::{Ledger, RedisCluster, RedisServer, Worker, wait_until_sync};
use redis::Commands;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// The worker's job that sleeps 5 ms and counts its run, pushed by name: slow enough that the
/// victim always holds jobs when it is killed.
#[derive(Serialize, Deserialize)]
struct Paced(u64);
impl errand::Job for Paced {
    const NAME: &'static str = "Paced";
    async fn perform(self, _: &errand::JobContext) -> errand::JobResult {
        unreachable!("run by the worker process")
    }
}

fn cluster_url(cluster: &RedisCluster) -> String {
    format!("redis+cluster://{}", cluster.addrs().join(","))
}

fn worker(url: &str, ledger: &str, concurrency: usize) -> Worker {
    Worker::start(
        env!("CARGO_BIN_EXE_errand-test-worker"),
        url,
        concurrency,
        25_000,
        Some(ledger),
    )
}

async fn broker(cluster: &RedisCluster) -> RedisBroker {
    RedisBroker::connect_with(RedisConfig::cluster(cluster.addrs()))
        .await
        .expect("connect to the test cluster")
}

/// The identity of the worker process `pid`, once it has beaten.
async fn identity_of(broker: &RedisBroker, pid: u32) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = broker
            .processes()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.identity.split(':').nth(1) == Some(pid.to_string().as_str()));
        if let Some(p) = found {
            return p.identity;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker {pid} never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether nothing waits in a queue and no process (registered or not) holds a job.
async fn settled(broker: &RedisBroker) -> bool {
    for q in broker.queues().await.unwrap() {
        if q.size > 0 {
            return false;
        }
    }
    let held = broker
        .connection()
        .on_every_master::<(u64, Vec<String>)>(
            redis::cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg("*errand:inflight:*")
                .arg("COUNT")
                .arg(100_000),
        )
        .await
        .unwrap();
    let mut conn = broker.connection();
    for (_, (_, keys)) in held {
        for k in keys {
            let n: u64 = redis::AsyncCommands::hlen(&mut conn, &k).await.unwrap();
            if n > 0 {
                return false;
            }
        }
    }
    true
}

/// Nothing waiting, retrying, scheduled or dead, and no process holding a job.
async fn assert_all_settled(broker: &RedisBroker) {
    for q in broker.queues().await.unwrap() {
        assert_eq!(q.size, 0, "queue {} is empty", q.name);
    }
    for set in [
        errand::admin::SetName::Retry,
        errand::admin::SetName::Scheduled,
        errand::admin::SetName::Dead,
    ] {
        assert_eq!(broker.set_size(set).await.unwrap(), 0, "{set:?} is empty");
    }
    for p in broker.processes().await.unwrap() {
        let held = broker
            .held(&p.identity, &["default".to_string()])
            .await
            .unwrap();
        assert!(held.is_empty(), "{} holds {} jobs", p.identity, held.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_on_a_cluster_loses_no_job() {
    const JOBS: u64 = 20_000;
    let cluster = RedisCluster::start(3);
    let ledger = RedisServer::start();
    let url = cluster_url(&cluster);
    let broker = broker(&cluster).await;
    let client = Client::new(broker.clone());
    client.push_bulk((0..JOBS).map(Paced)).await.unwrap();
    client
        .push_raw(
            RawJob::new("Paced", vec![serde_json::json!(JOBS)]),
            Push::new(),
        )
        .await
        .unwrap();

    let mut victim = worker(&url, &ledger.url(), 20);
    let survivor = worker(&url, &ledger.url(), 20);
    let victim_id = identity_of(&broker, victim.id()).await;
    identity_of(&broker, survivor.id()).await;
    let mut conn = ledger.conn();
    wait_until_sync(
        "a quarter of the jobs to run",
        Duration::from_secs(60),
        || conn.hlen::<_, u64>("ledger").unwrap() >= JOBS / 4,
    );
    // Killed while it holds jobs (it takes them in batches; between two, it may hold none).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while broker
        .held(&victim_id, &["default".to_string()])
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the victim never held a job"
        );
    }
    victim.kill().expect("SIGKILL");
    victim.wait().unwrap();
    // Frozen until the survivor sees the victim's heartbeat expire (3 s).
    let in_flight = broker
        .held(&victim_id, &["default".to_string()])
        .await
        .unwrap()
        .len() as u64;
    assert!(
        in_flight <= 20,
        "never more in flight than the concurrency: {in_flight}"
    );
    wait_until_sync("every job to run", Duration::from_secs(120), || {
        conn.hlen::<_, u64>("ledger").unwrap() == JOBS + 1
    });
    // The victim's jobs that ran but were not acked go back to the queue when its heartbeat
    // expires, and run again: wait for that too, then count.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !settled(&broker).await
        || broker
            .processes()
            .await
            .unwrap()
            .iter()
            .any(|p| p.identity == victim_id)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the victim's jobs were never recovered and run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ledger_runs: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    assert!((0..=JOBS).all(|n| ledger_runs.get(&n).copied().unwrap_or(0) >= 1));
    let duplicates = ledger_runs.values().sum::<u64>() - (JOBS + 1);
    eprintln!("cluster crash test: {in_flight} in flight at the kill, {duplicates} duplicate runs");
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates > {in_flight} in flight at the kill"
    );
    assert_all_settled(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_resharding_loses_no_job() {
    const JOBS: u64 = 30_000;
    let cluster = RedisCluster::start(3);
    let ledger = RedisServer::start();
    let url = cluster_url(&cluster);
    let broker = broker(&cluster).await;
    let client = Client::new(broker.clone());
    let workers = [
        worker(&url, &ledger.url(), 10),
        worker(&url, &ledger.url(), 10),
    ];
    for w in &workers {
        identity_of(&broker, w.id()).await;
    }
    // The slots that move: the busy queue's shard (its list, in-flight hashes, counters) and
    // the fleet's (heartbeats, stats).
    let keys = Keys::cluster(None);
    let queue_slot = errand::redis::slot_of(&keys.queue("default"));
    let fleet_slot = errand::redis::slot_of(&keys.processes());
    let mut conn = ledger.conn();
    // Jobs arrive while the slots move: pushed in chunks from a task of their own.
    let pusher = {
        let client = client.clone();
        tokio::spawn(async move {
            for chunk in (0..JOBS).collect::<Vec<_>>().chunks(1_000) {
                client
                    .push_bulk(chunk.iter().copied().map(Ledger))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_until_sync("jobs to run", Duration::from_secs(60), || {
        conn.hlen::<_, u64>("ledger").unwrap() >= 2_000
    });
    let mut moves = 0;
    for slot in [queue_slot, fleet_slot] {
        let home = cluster.owner_of(slot);
        let away = (home + 1) % 3;
        let before = conn.hlen::<_, u64>("ledger").unwrap();
        cluster.migrate_slot(slot, home, away);
        assert_eq!(cluster.owner_of(slot), away, "slot {slot} moved");
        // Work goes on at the new owner before the slot goes back.
        wait_until_sync(
            "jobs to run after the move",
            Duration::from_secs(60),
            || conn.hlen::<_, u64>("ledger").unwrap() >= before + 1_000,
        );
        cluster.migrate_slot(slot, away, home);
        moves += 2;
    }
    pusher.await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while conn.hlen::<_, u64>("ledger").unwrap() < JOBS {
        if std::time::Instant::now() > deadline {
            let ran: u64 = conn.hlen("ledger").unwrap();
            let mut state = vec![format!("ran {ran} of {JOBS}")];
            for i in 0..3 {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("*")
                    .query(&mut cluster.node(i))
                    .unwrap();
                for k in keys {
                    let t: String = redis::cmd("TYPE")
                        .arg(&k)
                        .query(&mut cluster.node(i))
                        .unwrap();
                    let n: u64 = match t.as_str() {
                        "list" => redis::cmd("LLEN")
                            .arg(&k)
                            .query(&mut cluster.node(i))
                            .unwrap(),
                        "hash" => redis::cmd("HLEN")
                            .arg(&k)
                            .query(&mut cluster.node(i))
                            .unwrap(),
                        "zset" => redis::cmd("ZCARD")
                            .arg(&k)
                            .query(&mut cluster.node(i))
                            .unwrap(),
                        "set" => redis::cmd("SCARD")
                            .arg(&k)
                            .query(&mut cluster.node(i))
                            .unwrap(),
                        _ => 1,
                    };
                    state.push(format!("node {i}: {k} {t} {n}"));
                }
            }
            panic!("not every job ran:\n{}", state.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ledger_runs: HashMap<u64, u64> = conn.hgetall("ledger").unwrap();
    assert!((0..JOBS).all(|n| ledger_runs.get(&n).copied().unwrap_or(0) >= 1));
    let duplicates = ledger_runs.values().sum::<u64>() - JOBS;
    eprintln!("resharding test: {moves} slot moves under load, {duplicates} duplicate runs");
    // Nobody died: a redirected step either ran once or not at all.
    assert_eq!(duplicates, 0, "no job ran twice");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut busy = 0;
        for p in broker.processes().await.unwrap() {
            busy += broker
                .held(&p.identity, &["default".to_string()])
                .await
                .unwrap()
                .len();
        }
        if busy == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{busy} jobs still in flight after every job ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_all_settled(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_spread_over_the_masters() {
    let cluster = RedisCluster::start(3);
    let keys = Keys::cluster(None);
    // The shards' tags land evenly over the slot range, so over the masters.
    let mut per_master = [0usize; 3];
    for shard in keys.shards() {
        let slot = errand::redis::slot_of(&keys.queue_prefix_in(shard));
        per_master[cluster.owner_of(slot)] += 1;
    }
    assert!(
        per_master.iter().all(|&n| n >= 5),
        "16 shards over 3 masters: {per_master:?}"
    );
    // And jobs pushed to many queues land on every master.
    let broker = broker(&cluster).await;
    let client = Client::new(broker.clone());
    for i in 0..30 {
        client
            .push_raw(
                RawJob::new("Ledger", vec![serde_json::json!(i)]),
                Push::new().queue(format!("q{i}")),
            )
            .await
            .unwrap();
    }
    for i in 0..3 {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut cluster.node(i))
            .unwrap();
        assert!(
            keys.iter().any(|k| k.contains(":queue:q")),
            "master {i} holds some of the queues: {keys:?} (shards per master {per_master:?})"
        );
    }
    assert_eq!(broker.queues().await.unwrap().len(), 30);
}
