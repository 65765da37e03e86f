//! The admin side of [`MemoryBroker`]: the reference the Redis and SQLite admin
//! implementations are held to by the admin conformance cases.

use super::{MemoryBroker, Score};
use async_trait::async_trait;
use errand_core::admin::{
    Admin, BackendInfo, Counters, MoveToDead, MoveToQueue, Order, ProcessRecord, QueueRange,
    QueueSummary, SetEntry, SetName, SetRange, signal_name,
};
use errand_core::broker::{BrokerResult, RemoteSignal};
use errand_core::metrics::{ClassMetrics, merge_by_class};

/// At most this many minutes are read by one [`Admin::metrics`] call.
const MAX_METRIC_MINUTES: i64 = 1_500;

fn page<T: Clone>(
    items: impl DoubleEndedIterator<Item = T>,
    offset: usize,
    limit: usize,
    order: Order,
) -> Vec<T> {
    match order {
        Order::Asc => items.skip(offset).take(limit).collect(),
        Order::Desc => items.rev().skip(offset).take(limit).collect(),
    }
}

#[async_trait]
impl Admin for MemoryBroker {
    fn coordination(&self) -> Option<&dyn errand_core::broker::Coordination> {
        Some(self)
    }

    async fn counters(&self) -> BrokerResult<Counters> {
        let s = self.stats();
        Ok(s)
    }

    async fn daily_counters(&self, dates: &[String]) -> BrokerResult<Vec<Counters>> {
        Ok(dates.iter().map(|d| self.daily_stats(d)).collect())
    }

    async fn backend_info(&self) -> BrokerResult<BackendInfo> {
        let s = self.state();
        Ok(BackendInfo {
            kind: "memory".into(),
            facts: vec![
                ("queues".into(), s.known_queues.len().to_string()),
                ("processes".into(), s.processes.len().to_string()),
            ],
        })
    }

    async fn queues(&self) -> BrokerResult<Vec<QueueSummary>> {
        let s = self.state();
        let names: std::collections::BTreeSet<&String> =
            s.known_queues.iter().chain(s.paused.iter()).collect();
        Ok(names
            .into_iter()
            .map(|name| {
                let list = s.queues.get(name);
                QueueSummary {
                    name: name.clone(),
                    size: list.map_or(0, |l| l.len() as u64),
                    oldest: list.and_then(|l| l.back().cloned()),
                    paused: s.paused.contains(name),
                }
            })
            .collect())
    }

    async fn queue_page(&self, range: QueueRange<'_>) -> BrokerResult<Vec<String>> {
        let QueueRange {
            queue,
            offset,
            limit,
            order,
        } = range;
        let s = self.state();
        let Some(list) = s.queues.get(queue) else {
            return Ok(Vec::new());
        };
        // The front is the newest; Asc starts from the next to run (the back).
        Ok(page(list.iter().rev().cloned(), offset, limit, order))
    }

    async fn queue_delete(&self, queue: &str, raw: &str) -> BrokerResult<bool> {
        let mut s = self.state();
        let Some(list) = s.queues.get_mut(queue) else {
            return Ok(false);
        };
        // `LREM key 1 raw` removes the first match from the head (the newest end).
        match list.iter().position(|r| r == raw) {
            Some(i) => {
                list.remove(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn queue_clear(&self, queue: &str) -> BrokerResult<u64> {
        let mut s = self.state();
        let n = s.queues.remove(queue).map_or(0, |l| l.len() as u64);
        s.known_queues.remove(queue);
        Ok(n)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> BrokerResult<()> {
        let mut s = self.state();
        if paused {
            s.paused.insert(queue.to_string());
        } else {
            s.paused.remove(queue);
        }
        Ok(())
    }

    async fn set_size(&self, set: SetName) -> BrokerResult<u64> {
        Ok(self
            .state()
            .sets
            .get(set.key())
            .map_or(0, |z| z.ordered.len() as u64))
    }

    async fn set_page(&self, range: SetRange) -> BrokerResult<Vec<SetEntry>> {
        let SetRange {
            set,
            offset,
            limit,
            order,
        } = range;
        let s = self.state();
        let Some(z) = s.sets.get(set.key()) else {
            return Ok(Vec::new());
        };
        let entries = z.ordered.iter().map(|(score, raw)| SetEntry {
            score: score.0,
            raw: raw.clone(),
        });
        Ok(page(entries, offset, limit, order))
    }

    async fn set_at_score(&self, set: SetName, score: f64) -> BrokerResult<Vec<SetEntry>> {
        let s = self.state();
        let Some(z) = s.sets.get(set.key()) else {
            return Ok(Vec::new());
        };
        Ok(z.ordered
            .range((Score(score), String::new())..)
            .take_while(|(s, _)| s.0 == score)
            .map(|(s, raw)| SetEntry {
                score: s.0,
                raw: raw.clone(),
            })
            .collect())
    }

    async fn set_remove(&self, set: SetName, member: &str) -> BrokerResult<bool> {
        Ok(self.state().set_mut(set.key()).remove(member))
    }

    async fn set_to_queue(&self, mv: MoveToQueue<'_>) -> BrokerResult<bool> {
        let MoveToQueue {
            set,
            member,
            queue,
            payload,
        } = mv;
        {
            let mut s = self.state();
            if !s.set_mut(set.key()).remove(member) {
                return Ok(false);
            }
            s.known_queues.insert(queue.to_string());
            s.lpush(queue, payload.to_string());
        }
        self.pushed.notify_waiters();
        Ok(true)
    }

    async fn set_to_dead(&self, mv: MoveToDead<'_>) -> BrokerResult<bool> {
        let MoveToDead {
            set,
            member,
            payload,
            now,
            limits,
        } = mv;
        let mut s = self.state();
        if !s.set_mut(set.key()).remove(member) {
            return Ok(false);
        }
        s.bury(payload, now, limits);
        Ok(true)
    }

    async fn set_clear(&self, set: SetName) -> BrokerResult<u64> {
        Ok(self
            .state()
            .sets
            .remove(set.key())
            .map_or(0, |z| z.ordered.len() as u64))
    }

    async fn processes(&self) -> BrokerResult<Vec<ProcessRecord>> {
        let now = (self.clock)();
        let mut s = self.state();
        s.expire(now);
        let mut out: Vec<ProcessRecord> = s
            .beats
            .iter()
            .map(|(identity, p)| ProcessRecord {
                identity: identity.clone(),
                info: p.info.clone(),
                busy: p.busy as u64,
                concurrency: p.concurrency as u64,
                beat: p.beat,
                quiet: p.quiet,
                rss_kb: p.rss_kb,
                work: {
                    let mut work = p.work.clone();
                    errand_core::admin::sort_work(&mut work);
                    work
                },
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        Ok(out)
    }

    async fn signal(&self, identity: &str, signal: RemoteSignal) -> BrokerResult<()> {
        self.push_signal(identity, signal_name(signal));
        Ok(())
    }

    async fn metrics(&self, from_minute: i64, to_minute: i64) -> BrokerResult<Vec<ClassMetrics>> {
        let from = from_minute.max(to_minute - MAX_METRIC_MINUTES + 1);
        let s = self.state();
        Ok(merge_by_class(
            s.metrics
                .iter()
                .filter(|((m, _), _)| (from..=to_minute).contains(m))
                .map(|(_, v)| v.clone()),
        ))
    }

    async fn metrics_totals(&self) -> BrokerResult<Vec<ClassMetrics>> {
        Ok(self.state().metrics_totals.values().cloned().collect())
    }
}
