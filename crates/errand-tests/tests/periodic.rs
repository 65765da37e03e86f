//! Periodic jobs across a fleet whose leader keeps dying (issue 14): three worker processes
//! declare a one-second entry; for a minute the scheduler's leader is SIGKILLed (and replaced)
//! or SIGSTOPped past its 2 s lease and SIGCONTed, in turn. Every tick of the window must be
//! enqueued exactly once: none missing, none with two jobs (a job run twice after its worker
//! was killed keeps its jid; a tick enqueued twice would have two).

use errand_tests::{RedisServer, Worker, wait_until_sync};
use redis::Commands;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_errand-test-worker");

fn spawn(url: &str) -> Worker {
    Worker::start_env(
        BIN,
        url,
        2,
        1_000,
        &[("ERRAND_TEST_PERIODIC", "* * * * * *")],
    )
}

/// The pid of the process holding the scheduler's leader lease.
fn leader(conn: &mut redis::Connection) -> Option<u32> {
    let holders: Vec<String> = conn.zrange("errand:lease:periodic:leader", 0, -1).unwrap();
    holders.first()?.split(':').nth(1)?.parse().ok()
}

fn redis_second(conn: &mut redis::Connection) -> i64 {
    let (secs, _): (i64, i64) = redis::cmd("TIME").query(conn).unwrap();
    secs
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn every_tick_is_enqueued_once_while_leaders_are_killed_and_paused() {
    let chaos = Duration::from_secs(
        std::env::var("ERRAND_PERIODIC_CHAOS_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let mut workers: Vec<Worker> = (0..3).map(|_| spawn(&url)).collect();
    wait_until_sync("the first tick", Duration::from_secs(20), || {
        conn.scard::<_, usize>("ticks").unwrap() > 0
    });
    let start = Instant::now();
    let (mut kills, mut stops) = (0, 0);
    let mut round = 0;
    while start.elapsed() < chaos {
        let mut pid = None;
        wait_until_sync("a leader", Duration::from_secs(10), || {
            pid = leader(&mut conn).filter(|p| workers.iter().any(|w| w.0.id() == *p));
            pid.is_some()
        });
        let pid = pid.expect("found above");
        if round % 2 == 0 {
            signal(pid, "-KILL");
            let i = workers.iter().position(|w| w.0.id() == pid).unwrap();
            workers[i] = spawn(&url);
            kills += 1;
        } else {
            signal(pid, "-STOP");
            // Past the 2 s lease: another process takes over while this one sleeps.
            std::thread::sleep(Duration::from_secs(3));
            signal(pid, "-CONT");
            stops += 1;
        }
        round += 1;
        // A leader again (a new one, or the woken one taking the lease back), then calm.
        wait_until_sync("a new leader", Duration::from_secs(10), || {
            leader(&mut conn).is_some()
        });
        std::thread::sleep(Duration::from_secs(2));
    }
    let end = redis_second(&mut conn);
    let mut ticks = BTreeSet::new();
    let first = {
        let all: BTreeSet<i64> = conn.smembers("ticks").unwrap();
        *all.first().unwrap()
    };
    // Every second from the first tick to the end of the chaos, run (each jid at least once).
    let missing = |conn: &mut redis::Connection, ticks: &mut BTreeSet<i64>| -> Vec<i64> {
        *ticks = conn.smembers("ticks").unwrap();
        (first..=end).filter(|s| !ticks.contains(s)).collect()
    };
    let waited = wait_until_ok(Duration::from_secs(30), || {
        missing(&mut conn, &mut ticks).is_empty()
    });
    let gaps = missing(&mut conn, &mut ticks);
    assert!(
        waited,
        "ticks never enqueued (or never run): {gaps:?} of {first}..={end}"
    );
    let twice: Vec<(i64, usize)> = ticks
        .iter()
        .map(|s| (*s, conn.scard::<_, usize>(format!("tick:{s}")).unwrap()))
        .filter(|(_, jids)| *jids != 1)
        .collect();
    eprintln!(
        "periodic: {} ticks from {first} to {end} ({} s), {kills} leaders SIGKILLed, {stops} SIGSTOPped past their lease; enqueued twice: {twice:?}",
        (first..=end).count(),
        end - first + 1
    );
    assert!(twice.is_empty(), "ticks enqueued more than once: {twice:?}");
    assert!(
        kills >= 2 && stops >= 2,
        "the chaos ran: {kills} kills, {stops} stops"
    );
}

/// Polls `done` every 100 ms until it holds or `limit` passes; whether it held.
fn wait_until_ok(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
