//! Fetches jobs and hands each to a processor task, never holding more jobs than free worker
//! slots: a batch of up to `free slots` jobs is fetched in one round trip when queues are deep,
//! and a blocking wait hands over a lone job at once when they are shallow.

use super::state::Shared;
use super::{QueueMode, processor};
use errand_core::broker::FetchRequest;
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How long a fetch may wait for more free slots when the queue is deep.
const DEEP_QUEUE_GATHER: Duration = Duration::from_millis(1);
/// The longest pause between failed fetches.
const FETCH_LONGEST: Duration = Duration::from_millis(3_200);

/// Pauses between failed fetches: 200 ms, doubling up to [`FETCH_LONGEST`], for as long as
/// fetches fail.
fn fetch_backoff() -> backon::ExponentialBackoff {
    crate::reconnect::delays(Duration::from_millis(200), FETCH_LONGEST, None)
}

/// The order in which to try the queues for one fetch.
pub(crate) fn queue_order(mode: &QueueMode, queues: &[(String, u32)]) -> Vec<String> {
    match mode {
        QueueMode::Strict => super::unique_names(queues),
        QueueMode::Weighted => {
            // Sidekiq: repeat each queue max(weight, 1) times, shuffle, keep first occurrences.
            let mut expanded: Vec<&String> = Vec::new();
            for (q, w) in queues {
                for _ in 0..(*w).max(1) {
                    expanded.push(q);
                }
            }
            expanded.shuffle(&mut rand::rng());
            let mut out: Vec<String> = Vec::with_capacity(queues.len());
            for q in expanded {
                if !out.contains(q) {
                    out.push(q.clone());
                }
            }
            out
        }
    }
}

pub(crate) async fn run(s: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(s.config().concurrency));
    let mut backoff = fetch_backoff();
    let mut seq: u64 = 0;
    let mut deep = false;
    // Set when a fetch failed on the connection: its reply may have been lost after the
    // backend moved jobs in flight, so once fetching works again the process looks for jobs
    // it holds but is not running, and puts them back. It also looks every rescue interval:
    // a job whose completion could not be written (the backend refused it, or stayed away
    // past the completer's retries) is held but no longer running, and runs again.
    let mut check_stranded = false;
    let sweep_every = s.config().rescue_interval;
    let mut next_sweep = tokio::time::Instant::now() + sweep_every;
    loop {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = s.quiet.cancelled() => break,
        };
        if s.quiet.is_cancelled() {
            break;
        }
        let mut permits = vec![first];
        if deep {
            // The queue had more than we asked for last time: let a few more slots free up
            // (for at most a millisecond) so one round trip moves a batch, not a job.
            let target = (s.config().concurrency / 2).max(1);
            let until = tokio::time::Instant::now() + DEEP_QUEUE_GATHER;
            while permits.len() < target {
                match tokio::time::timeout_at(until, slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => permits.push(p),
                    _ => break,
                }
            }
        }
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let asked = permits.len();
        let mut order = queue_order(&s.config().mode, &s.config().queues);
        if let Ok(paused) = s.paused.lock()
            && !paused.is_empty()
        {
            order.retain(|q| !paused.contains(q));
        }
        if order.is_empty() {
            // Every queue is paused: look again after the next heartbeat's refresh.
            drop(permits);
            tokio::select! {
                _ = tokio::time::sleep(s.config().heartbeat_interval.min(Duration::from_secs(1))) => {}
                _ = s.quiet.cancelled() => break,
            }
            continue;
        }
        let req = FetchRequest {
            identity: &s.identity,
            queues: &order,
            max: permits.len(),
            wait: s.config().fetch_wait,
        };
        match s.broker().fetch(req).await {
            Ok(jobs) => {
                #[cfg(feature = "failpoints")]
                if !jobs.is_empty() {
                    super::crash::crash_point("after_fetch");
                }
                backoff = fetch_backoff();
                deep = jobs.len() == asked;
                for job in jobs {
                    let Some(permit) = permits.pop() else { break };
                    seq += 1;
                    processor::spawn(&s, job, seq, permit);
                }
                // Here, between fetches, every job fetched so far is in `running`: a job
                // held but not running is stranded, not on its way to a processor.
                let now = tokio::time::Instant::now();
                if check_stranded || now >= next_sweep {
                    check_stranded = !release_stranded(&s).await;
                    next_sweep = now + sweep_every;
                }
            }
            Err(e) => {
                check_stranded |= e.is_connection_error();
                let wait = backoff.next().unwrap_or(FETCH_LONGEST);
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "fetch failed");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = s.quiet.cancelled() => break,
                }
            }
        }
    }
    tracing::debug!("manager stopped fetching");
}

/// Puts back jobs this process holds in flight but is not running (stranded by a lost fetch
/// reply). Returns false when the backend could not be asked (try again later).
async fn release_stranded(s: &Shared) -> bool {
    let held = match s.broker().held(&s.identity, &s.config().queue_names).await {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(error = %e, "could not list in-flight jobs; will look again");
            return false;
        }
    };
    // What the processors hold, counted, so identical payloads are matched one for one.
    let mut running: HashMap<(String, String), usize> = HashMap::new();
    if let Ok(r) = s.running.lock() {
        for job in r.values() {
            *running
                .entry((job.job.location.clone(), job.job.raw.clone()))
                .or_default() += 1;
        }
    }
    let mut released = 0;
    for job in held {
        if let Some(n) = running.get_mut(&(job.location.clone(), job.raw.clone()))
            && *n > 0
        {
            *n -= 1;
            continue;
        }
        match s.broker().release(&job).await {
            Ok(true) => released += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not put a stranded job back; will look again");
                return false;
            }
        }
    }
    if released > 0 {
        tracing::warn!(
            released,
            "put back jobs stranded in flight (a lost fetch reply, or a completion that could not be written)"
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_order_is_fixed_and_deduplicated() {
        let q = vec![("a".to_string(), 1), ("b".into(), 1), ("a".into(), 1)];
        assert_eq!(queue_order(&QueueMode::Strict, &q), vec!["a", "b"]);
    }

    #[test]
    fn weighted_order_follows_weights() {
        let q = vec![
            ("critical".to_string(), 10),
            ("default".into(), 5),
            ("bulk".into(), 1),
        ];
        let mut first = std::collections::HashMap::new();
        let n = 20_000;
        for _ in 0..n {
            let order = queue_order(&QueueMode::Weighted, &q);
            assert_eq!(order.len(), 3);
            *first.entry(order[0].clone()).or_insert(0u32) += 1;
        }
        for (name, weight) in [("critical", 10.0), ("default", 5.0), ("bulk", 1.0)] {
            let share = f64::from(first[name]) / f64::from(n);
            assert!((share - weight / 16.0).abs() < 0.03, "{name}: {share}");
        }
    }

    #[test]
    fn tids_are_base36() {
        assert_eq!(super::super::heartbeat::tid_name(35), "z");
        assert_eq!(super::super::heartbeat::tid_name(36), "10");
    }
}
