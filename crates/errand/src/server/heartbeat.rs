//! Reports the process to Redis every few seconds in Sidekiq's format (process set, identity
//! hash, work hashes), flushes the processed/failed counters, and acts on remote signals.

use super::state::Shared;
use errand_core::broker::{Heartbeat, RemoteSignal, WorkEntry};
use errand_core::metrics::ClassMetrics;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

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

/// Writes one heartbeat and acts on a remote signal.
pub(crate) async fn beat(s: &Shared) {
    s.sync_clock().await;
    let work: Vec<WorkEntry> = s
        .running
        .lock()
        .map(|r| {
            r.iter()
                .map(|(tid, j)| WorkEntry {
                    tid: tid_name(*tid),
                    json: serde_json::json!({
                        "queue": j.job.queue,
                        "payload": j.job.raw,
                        "run_at": j.run_at,
                    })
                    .to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    flush_metrics(s).await;
    match s.broker().paused_queues().await {
        Ok(paused) => {
            if let Ok(mut p) = s.paused.lock() {
                *p = paused;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read paused queues"),
    }
    let processed = s.processed.swap(0, Ordering::Relaxed);
    let failed = s.failed.swap(0, Ordering::Relaxed);
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
        ttl: s.config().process_ttl,
    };
    match s.broker().heartbeat(&hb).await {
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
            tracing::error!(error = %e, "heartbeat failed");
        }
    }
}

/// Writes the execution metrics gathered since the last beat; on failure they are kept for
/// the next one.
async fn flush_metrics(s: &Shared) {
    let taken: Vec<ClassMetrics> = match s.metrics.lock() {
        Ok(mut m) if !m.is_empty() => std::mem::take(&mut *m).into_values().collect(),
        _ => return,
    };
    let minute = (s.now() / 60.0).floor() as i64;
    if let Err(e) = s.broker().record_metrics(minute, &taken).await {
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

pub(crate) async fn run(s: Arc<Shared>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(s.config().heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => beat(&s).await,
            _ = stop.cancelled() => break,
        }
    }
}
