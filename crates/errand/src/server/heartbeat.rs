//! Reports the process to Redis every few seconds in Sidekiq's format (process set, identity
//! hash, work hashes), flushes the processed/failed counters, and acts on remote signals.
//!
//! A live process must never look dead: that gets its running jobs rescued and run twice. So
//! the heartbeat runs on a thread and runtime of its own, through connections of its own
//! ([`Fleet::isolated`](errand_core::broker::Fleet::isolated)), where jobs that block their
//! threads or fill the shared connection cannot hold it up; every backend call of a beat is
//! bounded by an eighth of the process TTL; and the heartbeat itself is written before the
//! beat's other duties (metrics, paused queues).

use super::state::Shared;
use crate::context::Control;
use errand_core::BrokerError;
use errand_core::broker::{Broker, BrokerResult, Heartbeat, RemoteSignal, WorkEntry};
use errand_core::metrics::ClassMetrics;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The key of a running job's progress in its Busy-page entry (Errand's own: Sidekiq's Web UI
/// shows the entry without it).
pub(crate) const PROGRESS_KEY: &str = "errand_progress";

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A short base-36 worker id, like Sidekiq's `tid`.
pub(crate) fn tid_name(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// How long one backend call of a beat may take: an eighth of the process TTL, so that even
/// when every call of two beats in a row runs out its time the process stays alive.
fn call_limit(s: &Shared) -> Duration {
    (s.config().process_ttl / 8).max(Duration::from_millis(100))
}

/// `call`, given up after `limit` (a connection error, so the beat carries on).
async fn bounded<T>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = BrokerResult<T>>,
) -> BrokerResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(res) => res,
        Err(_) => Err(BrokerError::Connection(
            format!("{what}: no answer within {limit:?}").into(),
        )),
    }
}

/// Writes one heartbeat through `broker` and acts on a remote signal; then writes the metrics
/// and reads the paused queues.
pub(crate) async fn beat(s: &Shared, broker: &dyn Broker) {
    let limit = call_limit(s);
    let _ = tokio::time::timeout(limit, s.sync_clock(broker)).await;
    let work: Vec<WorkEntry> = s
        .running
        .lock()
        .map(|r| {
            r.iter()
                .map(|(tid, j)| {
                    let mut json = serde_json::json!({
                        "queue": j.job.queue,
                        "payload": j.job.raw,
                        "run_at": j.run_at,
                    });
                    if let Some(p) = j.control.progress.lock().ok().and_then(|p| p.clone()) {
                        json[PROGRESS_KEY] = serde_json::json!(p);
                    }
                    WorkEntry {
                        tid: tid_name(*tid),
                        json: json.to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let processed = s.processed.swap(0, Ordering::Relaxed);
    let failed = s.failed.swap(0, Ordering::Relaxed);
    let cancelled = s.cancelled.swap(0, Ordering::Relaxed);
    let expired = s.expired.swap(0, Ordering::Relaxed);
    let hb = Heartbeat {
        identity: &s.identity,
        info: &s.info,
        busy: work.len(),
        concurrency: s.config().concurrency,
        beat: s.now(),
        quiet: s.quiet.is_cancelled(),
        rss_kb: rss_kb(),
        work: &work,
        processed,
        failed,
        cancelled,
        expired,
        ttl: s.config().process_ttl,
    };
    match bounded("heartbeat", limit, broker.heartbeat(&hb)).await {
        Ok(signal) => match signal {
            Some(RemoteSignal::Quiet) => {
                tracing::info!("remote quiet");
                s.quiet.cancel();
            }
            Some(RemoteSignal::Stop) => {
                tracing::info!("remote stop");
                s.quiet.cancel();
                s.stop.cancel();
            }
            Some(RemoteSignal::Dump) => {
                for w in &work {
                    tracing::info!(tid = %w.tid, work = %w.json, "running");
                }
            }
            None => {}
        },
        Err(e) => {
            // Keep the counts for the next beat, as Sidekiq does.
            s.processed.fetch_add(processed, Ordering::Relaxed);
            s.failed.fetch_add(failed, Ordering::Relaxed);
            s.cancelled.fetch_add(cancelled, Ordering::Relaxed);
            s.expired.fetch_add(expired, Ordering::Relaxed);
            tracing::error!(error = %e, "heartbeat failed");
        }
    }
    deliver_cancels(s, broker, limit).await;
    flush_metrics(s, broker, limit).await;
    match bounded("reading paused queues", limit, broker.paused_queues()).await {
        Ok(paused) => {
            if let Ok(mut p) = s.paused.lock() {
                *p = paused;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read paused queues"),
    }
}

/// Asks the backend which running jobs were cancelled ([`Coordination::cancelled`], one call
/// for all of them) and cancels their tokens: a cancel reaches a running job within a beat.
///
/// [`Coordination::cancelled`]: errand_core::broker::Coordination::cancelled
async fn deliver_cancels(s: &Shared, broker: &dyn Broker, limit: Duration) {
    if !broker.capabilities().control {
        return;
    }
    let running: Vec<(String, Arc<Control>)> = match s.running.lock() {
        Ok(r) => r
            .values()
            .filter(|j| !j.control.cancel.is_cancelled())
            .filter_map(|j| Some((j.control.jid.get()?.clone(), j.control.clone())))
            .collect(),
        Err(_) => return,
    };
    if running.is_empty() {
        return;
    }
    let jids: Vec<&str> = running.iter().map(|(jid, _)| jid.as_str()).collect();
    match bounded("reading cancellations", limit, broker.cancelled(&jids)).await {
        Ok(marks) => {
            for ((jid, control), cancelled) in running.iter().zip(marks) {
                if cancelled {
                    tracing::info!(jid = %jid, "cancel delivered to a running job");
                    control.cancel.cancel();
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read cancellations"),
    }
}

/// Writes the execution metrics gathered since the last beat; on failure they are kept for
/// the next one.
async fn flush_metrics(s: &Shared, broker: &dyn Broker, limit: Duration) {
    let taken: Vec<ClassMetrics> = match s.metrics.lock() {
        Ok(mut m) if !m.is_empty() => std::mem::take(&mut *m).into_values().collect(),
        _ => return,
    };
    let minute = (s.now() / 60.0).floor() as i64;
    if let Err(e) = bounded(
        "writing metrics",
        limit,
        broker.record_metrics(minute, &taken),
    )
    .await
    {
        tracing::warn!(error = %e, "could not write job metrics; keeping them for the next beat");
        if let Ok(mut m) = s.metrics.lock() {
            for c in taken {
                match m.get_mut(&c.class) {
                    Some(existing) => existing.merge(&c),
                    None => {
                        m.insert(c.class.clone(), c);
                    }
                }
            }
        }
    }
}

/// Beats every `heartbeat_interval` until `stop`, on a thread of its own with a runtime of its
/// own (the module's doc says why). Returns once the thread has stopped.
pub(crate) async fn run(s: Arc<Shared>, stop: CancellationToken) {
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let (thread_s, thread_stop) = (s.clone(), stop.clone());
    let spawned = std::thread::Builder::new()
        .name("errand-heartbeat".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(beat_loop(thread_s, thread_stop, true)),
                Err(e) => {
                    tracing::error!(error = %e, "could not start the heartbeat's runtime");
                    return;
                }
            }
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => {
            if finished.await.is_err() {
                // No runtime on the thread: beat from here rather than not at all.
                beat_loop(s, stop, false).await;
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "could not start the heartbeat thread; beating on the job runtime");
            beat_loop(s, stop, false).await;
        }
    }
}

/// The beats themselves; through a handle with connections of their own when `isolate` and
/// the backend has them.
async fn beat_loop(s: Arc<Shared>, stop: CancellationToken, isolate: bool) {
    let mut broker: Option<Arc<dyn Broker>> = None;
    let mut ticker = tokio::time::interval(s.config().heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        if isolate && broker.is_none() {
            // Made here, on this runtime, so that its connections are driven by it; until it
            // can be made, the shared handle serves.
            match bounded(
                "isolating the heartbeat",
                call_limit(&s),
                s.broker().isolated(),
            )
            .await
            {
                Ok(Some(own)) => broker = Some(own),
                Ok(None) => broker = Some(s.parts.broker.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "no connection of its own for the heartbeat yet")
                }
            }
        }
        let handle = broker.clone().unwrap_or_else(|| s.parts.broker.clone());
        beat(&s, &*handle).await;
    }
}
