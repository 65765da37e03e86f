//! Redis failover behind a fixed address (RELIABILITY-PLAN R10, issue 13 items 6 and 8): the
//! workers reach Redis through a proxy, as through a DNS name or a load balancer; the master is
//! demoted to a replica and its replica promoted, the way Sentinel does a controlled failover
//! (writes paused until the replica has everything, roles swapped, the address moved). Open
//! connections still reach the old master, which now answers every write with READONLY: the
//! workers must take that as a reason to reconnect. Every job runs; duplicates are bounded by
//! what was in flight; the time to resume is printed.

use errand::broker::JobQueue;
use errand::redis::{RedisBroker, RedisConfig};
use errand::{Client, Job, JobContext, JobResult, Server};
use errand_tests::{FaultProxy, RedisServer, wait_until};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JOBS: u64 = 2_000;
const CONCURRENCY: usize = 10;

#[derive(Serialize, Deserialize)]
struct Tally(u64);

impl Job for Tally {
    const NAME: &'static str = "Tally";
    async fn perform(self, cx: &JobContext) -> JobResult {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let runs = cx.data::<Arc<Mutex<HashMap<u64, u32>>>>().expect("tally");
        *runs.lock().unwrap().entry(self.0).or_default() += 1;
        Ok(())
    }
}

fn info_field(conn: &mut redis::Connection, section: &str, name: &str) -> Option<String> {
    let info: String = redis::cmd("INFO").arg(section).query(conn).ok()?;
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("{name}:")))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_resumes_on_the_promoted_replica_after_a_failover() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    let (mut old_conn, mut new_conn) = (old.conn(), new.conn());
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(old.port())
        .query(&mut new_conn)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while info_field(&mut new_conn, "replication", "master_link_status").as_deref() != Some("up") {
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(Duration::from_millis(20));
    }
    let proxy = FaultProxy::start(old.port());
    let broker = RedisBroker::connect_with(
        RedisConfig::new(proxy.redis_url()).response_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    Client::new(broker.clone())
        .push_bulk((0..JOBS).map(Tally))
        .await
        .unwrap();
    let runs: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let server = Server::builder(broker.clone())
        .register::<Tally>()
        .data(runs.clone())
        .concurrency(CONCURRENCY)
        .fetch_wait(Duration::from_millis(200))
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    let ran = || runs.lock().unwrap().len() as u64;
    wait_until(
        "a quarter of the jobs to run",
        Duration::from_secs(60),
        || async { ran() >= JOBS / 4 },
    )
    .await;

    // The failover: writes paused on the old master until the replica has all of them, the
    // replica promoted, the old master demoted, the address moved, writes let through (to a
    // replica now: READONLY).
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query(&mut old_conn)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let master: Option<u64> = info_field(&mut old_conn, "replication", "master_repl_offset")
            .and_then(|v| v.parse().ok());
        let replica: Option<u64> = info_field(&mut new_conn, "replication", "master_repl_offset")
            .and_then(|v| v.parse().ok());
        if master.is_some() && master == replica {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut new_conn)
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new.port())
        .query(&mut old_conn)
        .unwrap();
    proxy.retarget(new.port());
    let at_failover = ran();
    let failed_over = Instant::now();
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut old_conn)
        .unwrap();

    wait_until(
        "work to resume on the new master",
        Duration::from_secs(30),
        || async { ran() > at_failover + CONCURRENCY as u64 },
    )
    .await;
    let resumed = failed_over.elapsed();
    wait_until("every job to run", Duration::from_secs(120), || async {
        ran() == JOBS
    })
    .await;
    handle.stop();
    running.await.unwrap().unwrap();
    let total: u32 = runs.lock().unwrap().values().sum();
    let duplicates = u64::from(total) - JOBS;
    eprintln!(
        "failover: work resumed {resumed:?} after the roles swapped; {duplicates} duplicate runs"
    );
    assert!(
        duplicates <= CONCURRENCY as u64,
        "{duplicates} duplicates, more than the {CONCURRENCY} jobs that can be in flight"
    );
    assert!(
        resumed < Duration::from_secs(10),
        "work resumed only after {resumed:?}"
    );
    let after = RedisBroker::connect(&new.url()).await.unwrap();
    assert!(after.now().await.is_ok(), "the new master answers");
}

/// An evicting Redis is named at connect: the policy is read with INFO (which a
/// least-privilege user may run) and anything but noeviction is warned about.
#[tokio::test]
async fn an_evicting_redis_is_detected_at_connect() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    assert_eq!(
        broker.maxmemory_policy().await.unwrap().as_deref(),
        Some("noeviction")
    );
    assert!(errand::redis::eviction_warning("noeviction").is_none());
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query(&mut server.conn())
        .unwrap();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    let policy = broker.maxmemory_policy().await.unwrap().unwrap();
    assert_eq!(policy, "allkeys-lru");
    let warning = errand::redis::eviction_warning(&policy).expect("a warning");
    assert!(
        warning.contains("noeviction") && warning.contains("lost"),
        "{warning}"
    );
}
