//! The fleet duties of [`MemoryBroker`] ([`Fleet`]).

use super::{MemoryBroker, ProcessState};
use async_trait::async_trait;
use errand_core::broker::{
    BrokerResult, Fetched, Fleet, Heartbeat, RemoteSignal, RescuePolicy, WorkEntry,
};
use errand_core::metrics::ClassMetrics;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[async_trait]
impl Fleet for MemoryBroker {
    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()> {
        let info = serde_json::json!({ "queues": queues }).to_string();
        self.state()
            .registry
            .entry(identity.to_string())
            .or_insert(info);
        Ok(())
    }

    async fn requeue_in_flight(&self, identity: &str, queues: &[String]) -> BrokerResult<usize> {
        let n = self.state().requeue(identity, queues);
        if n > 0 {
            self.pushed.notify_waiters();
        }
        Ok(n)
    }

    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>> {
        let s = self.state();
        let mut out = Vec::new();
        for q in queues {
            let key = (identity.to_string(), q.clone());
            let location = serde_json::to_string(&key).unwrap_or_default();
            if let Some(list) = s.in_flight.get(&key) {
                out.extend(list.iter().rev().map(|(token, raw)| Fetched {
                    token: *token,
                    queue: q.clone(),
                    raw: raw.clone(),
                    location: location.clone(),
                }));
            }
        }
        Ok(out)
    }

    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>> {
        let now = (self.clock)();
        let mut s = self.state();
        if beat.processed > 0 || beat.failed > 0 {
            let date = errand_core::utc_date(beat.beat);
            for (name, n) in [("processed", beat.processed), ("failed", beat.failed)] {
                *s.stats.entry(name.to_string()).or_default() += n;
                *s.stats.entry(format!("{name}:{date}")).or_default() += n;
            }
        }
        for (name, n) in [("cancelled", beat.cancelled), ("expired", beat.expired)] {
            if n > 0 {
                *s.stats.entry(name.to_string()).or_default() += n;
            }
        }
        // Redis's EXPIRE takes whole seconds, at least one.
        let ttl = beat.ttl.as_secs().max(1) as f64;
        let work = beat
            .work
            .iter()
            .map(|w: &WorkEntry| (w.tid.clone(), w.json.clone()))
            .collect();
        s.processes.insert(beat.identity.to_string());
        s.beats.insert(
            beat.identity.to_string(),
            ProcessState {
                info: beat.info.to_string(),
                busy: beat.busy,
                concurrency: beat.concurrency,
                beat: beat.beat,
                quiet: beat.quiet,
                rss_kb: beat.rss_kb,
                work,
                expires_at: now + ttl,
            },
        );
        s.registry
            .insert(beat.identity.to_string(), beat.info.to_string());
        let signal = s
            .signals
            .get_mut(beat.identity)
            .and_then(VecDeque::pop_back);
        Ok(signal.as_deref().and_then(RemoteSignal::from_name))
    }

    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize> {
        let now = (self.clock)();
        let total = {
            let mut s = self.state();
            s.expire(now);
            let registered: Vec<(String, String)> = s
                .registry
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut total = 0;
            for (identity, info) in registered {
                if s.beats.contains_key(&identity) {
                    continue;
                }
                let queues = errand_core::broker::info_queues(&info);
                total += s.recover(&identity, &queues, policy, now);
                s.registry.remove(&identity);
                s.processes.remove(&identity);
            }
            // The sweep that needs no registration: in-flight jobs of a process that is
            // neither beating nor registered (it stopped without handing them back).
            let orphans: Vec<(String, String)> = s
                .in_flight
                .iter()
                .filter(|((id, _), list)| {
                    !list.is_empty() && !s.beats.contains_key(id) && !s.registry.contains_key(id)
                })
                .map(|(key, _)| key.clone())
                .collect();
            for (identity, queue) in orphans {
                total += s.recover(&identity, &[queue], policy, now);
            }
            total
        };
        if total > 0 {
            self.pushed.notify_waiters();
        }
        Ok(total)
    }

    async fn unregister(&self, identity: &str) -> BrokerResult<()> {
        let mut s = self.state();
        s.processes.remove(identity);
        s.registry.remove(identity);
        s.beats.remove(identity);
        Ok(())
    }

    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool> {
        let now = Instant::now();
        let mut state = self.state();
        if state.poll_until.is_some_and(|until| until > now) {
            return Ok(false);
        }
        state.poll_until = Some(now + window);
        Ok(true)
    }

    async fn process_count(&self) -> BrokerResult<usize> {
        Ok(self.state().processes.len())
    }

    async fn paused_queues(&self) -> BrokerResult<Vec<String>> {
        Ok(self.state().paused.iter().cloned().collect())
    }

    async fn record_metrics(&self, minute: i64, classes: &[ClassMetrics]) -> BrokerResult<()> {
        let mut s = self.state();
        for m in classes {
            s.metrics
                .entry((minute, m.class.clone()))
                .or_insert_with(|| ClassMetrics::new(&m.class))
                .merge(m);
            s.metrics_totals
                .entry(m.class.clone())
                .or_insert_with(|| ClassMetrics::new(&m.class))
                .merge(m);
        }
        // Keep 26 hours of minutes, as the other backends do.
        let keep_from = minute - 26 * 60;
        s.metrics.retain(|(m, _), _| *m >= keep_from);
        Ok(())
    }
}
