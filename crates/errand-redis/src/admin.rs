//! [`Admin`] on Redis: Sidekiq's own keys, read and changed the way Sidekiq's API and Web UI
//! do (see `docs/redis-layout.md`), so both show the same data.
//!
//! Reads that touch many keys are pipelined (one round trip); every change is one command, one
//! MULTI or one Lua script ([`crate::scripts`]).

use crate::RedisBroker;
use crate::error::cmd_err;
use async_trait::async_trait;
use errand_core::admin::{
    Admin, BackendInfo, Counters, MoveToDead, MoveToQueue, Order, ProcessRecord, QueueRange,
    QueueSummary, SetEntry, SetName, SetRange,
};
use errand_core::broker::{BrokerResult, RemoteSignal};
use errand_core::metrics::ClassMetrics;
use redis::{FromRedisValue, Value};
use std::collections::BTreeMap;

/// How long a signal waits in `<identity>-signals` (Sidekiq's 60 s).
const SIGNAL_TTL_SECS: u64 = 60;

/// Stored bytes as text: exact when UTF-8 (always, for anything Errand or Sidekiq wrote);
/// otherwise shown lossily, and then matching no member when handed back.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// One reply of a pipeline, converted.
fn take<T: FromRedisValue>(v: Value) -> BrokerResult<T> {
    redis::from_redis_value(v).map_err(|e| cmd_err(e.into()))
}

/// A `WITHSCORES` reply as entries; scores are parsed from Redis's strings so they round-trip
/// exactly.
fn entries(raw: Vec<(Vec<u8>, String)>) -> BrokerResult<Vec<SetEntry>> {
    raw.into_iter()
        .map(|(member, score)| {
            let score = score.parse::<f64>().map_err(|e| {
                errand_core::BrokerError::Command(format!("score {score:?}: {e}").into())
            })?;
            Ok(SetEntry {
                score,
                raw: text(member),
            })
        })
        .collect()
}

/// The order of a sorted set's members, as Redis keeps it: by score, then by member bytes (for
/// merging the parts of a cluster-mode set).
fn set_order(a: &SetEntry, b: &SetEntry) -> std::cmp::Ordering {
    a.score
        .total_cmp(&b.score)
        .then_with(|| a.raw.as_bytes().cmp(b.raw.as_bytes()))
}

/// A counter's value; absent or unreadable counts as 0.
fn count(v: Option<String>) -> u64 {
    v.and_then(|s| s.trim().parse::<i64>().ok())
        .map_or(0, |n| n.max(0) as u64)
}

/// The facts [`Admin::backend_info`] shows, in order: (label, `INFO` field).
const INFO_FACTS: [(&str, &str); 6] = [
    ("version", "redis_version"),
    ("uptime_days", "uptime_in_days"),
    ("connected_clients", "connected_clients"),
    ("used_memory", "used_memory_human"),
    ("used_memory_peak", "used_memory_peak_human"),
    ("maxmemory_policy", "maxmemory_policy"),
];

impl RedisBroker {
    async fn set_range(
        &self,
        key: &str,
        cmd: &str,
        start: impl redis::ToRedisArgs + Send,
        stop: impl redis::ToRedisArgs + Send,
    ) -> BrokerResult<Vec<SetEntry>> {
        let raw: Vec<(Vec<u8>, String)> = redis::cmd(cmd)
            .arg(key)
            .arg(start)
            .arg(stop)
            .arg("WITHSCORES")
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        entries(raw)
    }

    /// Cluster mode: the dead set trimmed as one set. Each death trims its own shard's part in
    /// its step; this drops what is older than `limits.max_age` in every part, then the oldest
    /// entries across the parts until at most `limits.max_jobs` are left. Run by the admin side's
    /// kills and by each recovery pass, so the whole set keeps the limits within a pass.
    pub(crate) async fn trim_dead_parts(
        &self,
        now: f64,
        limits: errand_core::broker::DeadLimits,
    ) -> BrokerResult<()> {
        if !self.keys().is_cluster() {
            return Ok(());
        }
        let parts = self.keys().set_parts(SetName::Dead);
        let before = now - limits.max_age.as_secs_f64();
        let mut total = 0u64;
        for key in &parts {
            let (n,): (u64,) = redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(key)
                .arg("-inf")
                .arg(format!("({before}"))
                .ignore()
                .cmd("ZCARD")
                .arg(key)
                .query_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            total += n;
        }
        if total <= limits.max_jobs {
            return Ok(());
        }
        let excess = (total - limits.max_jobs) as i64;
        let mut oldest: Vec<(SetEntry, &String)> = Vec::new();
        for key in &parts {
            for e in self.set_range(key, "ZRANGE", 0, excess - 1).await? {
                oldest.push((e, key));
            }
        }
        oldest.sort_by(|(a, _), (b, _)| set_order(a, b));
        for (e, key) in oldest.into_iter().take(excess as usize) {
            let _: i64 = redis::cmd("ZREM")
                .arg(key)
                .arg(&e.raw)
                .query_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Cluster mode: the part of `set` (one per shard) that holds `member`, if any.
    async fn part_holding(&self, set: SetName, member: &str) -> BrokerResult<Option<usize>> {
        for shard in self.keys().shards() {
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(self.keys().set_in(set, shard))
                .arg(member)
                .query_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            if score.is_some() {
                return Ok(Some(shard));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Admin for RedisBroker {
    fn coordination(&self) -> Option<&dyn errand_core::broker::Coordination> {
        Some(self)
    }

    async fn counters(&self) -> BrokerResult<Counters> {
        let k = self.keys();
        type Four = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (processed, failed, cancelled, expired): Four = redis::cmd("MGET")
            .arg(k.stat("processed"))
            .arg(k.stat("failed"))
            .arg(k.errand_stat("cancelled"))
            .arg(k.errand_stat("expired"))
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Counters {
            processed: count(processed),
            failed: count(failed),
            cancelled: count(cancelled),
            expired: count(expired),
        })
    }

    async fn daily_counters(&self, dates: &[String]) -> BrokerResult<Vec<Counters>> {
        if dates.is_empty() {
            return Ok(Vec::new());
        }
        let k = self.keys();
        let mut cmd = redis::cmd("MGET");
        for d in dates {
            cmd.arg(k.stat_daily("processed", d))
                .arg(k.stat_daily("failed", d));
        }
        let values: Vec<Option<String>> = cmd
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        let mut values = values.into_iter();
        Ok(dates
            .iter()
            .map(|_| Counters {
                processed: count(values.next().flatten()),
                failed: count(values.next().flatten()),
                ..Counters::default()
            })
            .collect())
    }

    async fn backend_info(&self) -> BrokerResult<BackendInfo> {
        // On a cluster, the first master's (the others' differ in clients and memory only).
        let info: String = self
            .connection()
            .on_every_master::<String>(&redis::cmd("INFO"))
            .await
            .map_err(|e| self.fail(e))?
            .into_iter()
            .map(|(_, info)| info)
            .next()
            .unwrap_or_default();
        let fields: BTreeMap<&str, &str> = info
            .lines()
            .filter_map(|l| l.trim_end().split_once(':'))
            .collect();
        let mut facts: Vec<(String, String)> = INFO_FACTS
            .iter()
            .filter_map(|(label, field)| {
                fields
                    .get(field)
                    .map(|v| (label.to_string(), v.to_string()))
            })
            .collect();
        facts.push(("url".into(), self.display_url()));
        Ok(BackendInfo {
            kind: "redis".into(),
            facts,
        })
    }

    async fn queues(&self) -> BrokerResult<Vec<QueueSummary>> {
        let k = self.keys();
        let mut conn = self.connection();
        let paused: Vec<String> = redis::cmd("SMEMBERS")
            .arg(k.paused())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let mut names: BTreeMap<String, bool> = BTreeMap::new();
        for shard in k.shards() {
            let known: Vec<String> = redis::cmd("SMEMBERS")
                .arg(k.queues_in(shard))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            names.extend(known.into_iter().map(|q| (q, false)));
        }
        for q in paused {
            names.insert(q, true);
        }
        if names.is_empty() {
            return Ok(Vec::new());
        }
        // One pipeline on one server; on a cluster one per queue (a pipeline stays in a slot).
        let mut replies: Vec<Value> = Vec::with_capacity(names.len() * 2);
        let lists: Vec<String> = names.keys().map(|name| k.queue(name)).collect();
        let groups: Vec<&[String]> = if k.is_cluster() {
            lists.chunks(1).collect()
        } else {
            vec![lists.as_slice()]
        };
        for group in groups {
            let mut pipe = redis::pipe();
            for list in group {
                pipe.cmd("LLEN").arg(list).cmd("LINDEX").arg(list).arg(-1);
            }
            let got: Vec<Value> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            replies.extend(got);
        }
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(names.len());
        for (name, paused) in names {
            let size: u64 = take(replies.next().unwrap_or(Value::Nil))?;
            let oldest: Option<Vec<u8>> = take(replies.next().unwrap_or(Value::Nil))?;
            out.push(QueueSummary {
                name,
                size,
                oldest: oldest.map(text),
                paused,
            });
        }
        Ok(out)
    }

    async fn queue_page(&self, range: QueueRange<'_>) -> BrokerResult<Vec<String>> {
        let QueueRange {
            queue,
            offset,
            limit,
            order,
        } = range;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (offset, limit) = (offset as i64, limit as i64);
        // The right end is the next to run: `Asc` counts from it with negative indices.
        let (start, stop) = match order {
            Order::Asc => (-offset.saturating_add(limit), -(offset + 1)),
            Order::Desc => (offset, offset.saturating_add(limit - 1)),
        };
        let page: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(self.keys().queue(queue))
            .arg(start)
            .arg(stop)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        let mut page: Vec<String> = page.into_iter().map(text).collect();
        if order == Order::Asc {
            page.reverse();
        }
        Ok(page)
    }

    async fn queue_delete(&self, queue: &str, raw: &str) -> BrokerResult<bool> {
        let n: i64 = redis::cmd("LREM")
            .arg(self.keys().queue(queue))
            .arg(1)
            .arg(raw)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(n > 0)
    }

    async fn queue_clear(&self, queue: &str) -> BrokerResult<u64> {
        let k = self.keys();
        let list = k.queue(queue);
        let (len,): (u64,) = redis::pipe()
            .atomic()
            .cmd("LLEN")
            .arg(&list)
            .cmd("UNLINK")
            .arg(&list)
            .ignore()
            .cmd("SREM")
            .arg(k.queues_in(k.shard_of(queue)))
            .arg(queue)
            .ignore()
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(len)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> BrokerResult<()> {
        let _: i64 = redis::cmd(if paused { "SADD" } else { "SREM" })
            .arg(self.keys().paused())
            .arg(queue)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn set_size(&self, set: SetName) -> BrokerResult<u64> {
        let mut total = 0;
        for key in self.keys().set_parts(set) {
            let n: u64 = redis::cmd("ZCARD")
                .arg(key)
                .query_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            total += n;
        }
        Ok(total)
    }

    async fn set_page(&self, range: SetRange) -> BrokerResult<Vec<SetEntry>> {
        let SetRange {
            set,
            offset,
            limit,
            order,
        } = range;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (start, stop) = (
            offset as i64,
            (offset as i64).saturating_add(limit as i64 - 1),
        );
        let cmd = match order {
            Order::Asc => "ZRANGE",
            Order::Desc => "ZREVRANGE",
        };
        let parts = self.keys().set_parts(set);
        if parts.len() == 1 {
            return self.set_range(&parts[0], cmd, start, stop).await;
        }
        // Cluster mode: the first `stop + 1` of every part, merged in the set's order (score,
        // then member bytes, as Redis orders a sorted set), then the page cut from that.
        let mut all = Vec::new();
        for key in &parts {
            all.extend(self.set_range(key, cmd, 0, stop).await?);
        }
        all.sort_by(|a, b| match order {
            Order::Asc => set_order(a, b),
            Order::Desc => set_order(b, a),
        });
        Ok(all.into_iter().skip(offset).take(limit).collect())
    }

    async fn set_at_score(&self, set: SetName, score: f64) -> BrokerResult<Vec<SetEntry>> {
        let mut out = Vec::new();
        for key in self.keys().set_parts(set) {
            out.extend(self.set_range(&key, "ZRANGEBYSCORE", score, score).await?);
        }
        out.sort_by(|a, b| a.raw.as_bytes().cmp(b.raw.as_bytes()));
        Ok(out)
    }

    async fn set_remove(&self, set: SetName, member: &str) -> BrokerResult<bool> {
        let mut removed = false;
        for key in self.keys().set_parts(set) {
            let n: i64 = redis::cmd("ZREM")
                .arg(key)
                .arg(member)
                .query_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            removed |= n > 0;
        }
        Ok(removed)
    }

    async fn set_to_queue(&self, mv: MoveToQueue<'_>) -> BrokerResult<bool> {
        let MoveToQueue {
            set,
            member,
            queue,
            payload,
        } = mv;
        let k = self.keys();
        let shard = k.shard_of(queue);
        let holder = if k.is_cluster() {
            self.part_holding(set, member).await?
        } else {
            Some(shard)
        };
        if holder != Some(shard) {
            // The member waits in another shard's part (or nowhere): in one step of its own
            // shard it leaves the set for that shard's outbox (the promote script's path for a
            // job of another shard), then the outbox is drained onto the queue.
            let Some(from) = holder else {
                return Ok(false);
            };
            let n: i64 = crate::scripts::PROMOTE
                .key(k.set_in(set, from))
                .key(k.queues_in(from))
                .key(k.outbox_in(from))
                .arg(member)
                .arg(payload)
                .arg(queue)
                .arg(0)
                .invoke_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            // Moved out of the set: a failed push is the poller's to finish, not an error here.
            if let Err(e) = self.drain_outbox(&k.outbox_in(from)).await {
                tracing::warn!(error = %e, queue, "could not push a job from its shard's outbox yet; the poller will");
            }
            return Ok(n == 1);
        }
        let n: i64 = crate::scripts::SET_TO_QUEUE
            .key(k.set_in(set, shard))
            .key(k.queue(queue))
            .key(k.queues_in(shard))
            .arg(member)
            .arg(payload)
            .arg(queue)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    async fn set_to_dead(&self, mv: MoveToDead<'_>) -> BrokerResult<bool> {
        let MoveToDead {
            set,
            member,
            payload,
            now,
            limits,
        } = mv;
        // In cluster mode the entry moves within its shard.
        let shard = if self.keys().is_cluster() {
            match self.part_holding(set, member).await? {
                Some(shard) => shard,
                None => return Ok(false),
            }
        } else {
            0
        };
        let n: i64 = crate::scripts::SET_TO_DEAD
            .key(self.keys().set_in(set, shard))
            .key(self.keys().set_in(SetName::Dead, shard))
            .arg(member)
            .arg(payload)
            .arg(now)
            .arg(now - limits.max_age.as_secs_f64())
            .arg(limits.max_jobs)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        self.trim_dead_parts(now, limits).await?;
        Ok(n == 1)
    }

    async fn set_clear(&self, set: SetName) -> BrokerResult<u64> {
        let mut total = 0;
        for key in self.keys().set_parts(set) {
            let (n,): (u64,) = redis::pipe()
                .atomic()
                .cmd("ZCARD")
                .arg(&key)
                .cmd("UNLINK")
                .arg(&key)
                .ignore()
                .query_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            total += n;
        }
        Ok(total)
    }

    /// Identities come from `processes`; one whose `<identity>` hash has no `info` (it expired)
    /// is skipped, never pruned. Running jobs come from `<identity>:work`, or `:workers` when
    /// that is empty (Sidekiq 6.4 writes only `:workers`), ordered by `run_at`.
    async fn processes(&self) -> BrokerResult<Vec<ProcessRecord>> {
        let k = self.keys();
        let mut conn = self.connection();
        let mut identities: Vec<String> = redis::cmd("SMEMBERS")
            .arg(k.processes())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        if identities.is_empty() {
            return Ok(Vec::new());
        }
        identities.sort();
        let mut pipe = redis::pipe();
        for id in &identities {
            pipe.cmd("HMGET")
                .arg(k.process(id))
                .arg(&["info", "busy", "beat", "quiet", "rss", "concurrency"])
                .cmd("HGETALL")
                .arg(k.work(id, "work"))
                .cmd("HGETALL")
                .arg(k.work(id, "workers"));
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let mut replies = replies.into_iter();
        let mut out = Vec::new();
        for identity in identities {
            let fields: Vec<Option<Vec<u8>>> = take(replies.next().unwrap_or(Value::Nil))?;
            let work: Vec<(Vec<u8>, Vec<u8>)> = take(replies.next().unwrap_or(Value::Nil))?;
            let workers: Vec<(Vec<u8>, Vec<u8>)> = take(replies.next().unwrap_or(Value::Nil))?;
            let mut fields = fields.into_iter().map(|f| f.map(text));
            let mut next = || fields.next().flatten();
            let Some(info) = next() else {
                continue; // expired (or never beat): not live
            };
            let (busy, beat, quiet, rss, concurrency) = (next(), next(), next(), next(), next());
            let mut work: Vec<(String, String)> = if work.is_empty() { workers } else { work }
                .into_iter()
                .map(|(tid, json)| (text(tid), text(json)))
                .collect();
            errand_core::admin::sort_work(&mut work);
            out.push(ProcessRecord {
                identity,
                info,
                busy: count(busy),
                concurrency: count(concurrency),
                beat: beat.and_then(|b| b.trim().parse().ok()).unwrap_or(0.0),
                quiet: quiet.as_deref() == Some("true"),
                rss_kb: count(rss),
                work,
            });
        }
        Ok(out)
    }

    async fn signal(&self, identity: &str, signal: RemoteSignal) -> BrokerResult<()> {
        let key = self.keys().signals(identity);
        redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(&key)
            .arg(errand_core::admin::signal_name(signal))
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(SIGNAL_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn metrics(&self, from_minute: i64, to_minute: i64) -> BrokerResult<Vec<ClassMetrics>> {
        self.read_metrics(from_minute, to_minute).await
    }

    async fn metrics_totals(&self) -> BrokerResult<Vec<ClassMetrics>> {
        self.read_metrics_totals().await
    }
}

impl RedisBroker {
    /// Deletes what Errand and Sidekiq keep in this broker's namespace, and nothing else: with a
    /// namespace, every key under it; without one, Sidekiq's keys (`queues`, `queue:*`,
    /// `schedule`, `retry`, `dead`, `stat:*`, `processes` with each process's hash, work hashes
    /// and signal list, `paused`) and Errand's (`errand:*`). Other applications' keys in the
    /// same database stay. For a fresh start (the demo, the bench); returns how many keys went.
    ///
    /// # Errors
    /// A backend failure; keys deleted before it stay deleted.
    pub async fn reset(&self) -> BrokerResult<u64> {
        let k = self.keys();
        let mut conn = self.connection();
        let mut doomed: Vec<String> = Vec::new();
        let patterns: Vec<String> = if k.prefix().is_empty() {
            let processes: Vec<String> = redis::cmd("SMEMBERS")
                .arg(k.processes())
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            for identity in &processes {
                doomed.extend([
                    k.process(identity),
                    k.work(identity, "work"),
                    k.work(identity, "workers"),
                    k.signals(identity),
                ]);
            }
            doomed.extend([
                k.queues(),
                k.processes(),
                k.paused(),
                k.set(SetName::Retry),
                k.set(SetName::Scheduled),
                k.set(SetName::Dead),
            ]);
            vec![
                format!("{}*", k.queue_prefix()),
                format!("{}*", k.stat("")),
                "errand:*".to_string(),
            ]
        } else {
            k.all_prefixes()
                .iter()
                .map(|p| format!("{}*", crate::broker::escape_glob(p)))
                .collect()
        };
        for pattern in &patterns {
            doomed.extend(
                crate::broker::scan(&mut conn, pattern)
                    .await
                    .map_err(|e| self.fail(e))?,
            );
        }
        doomed.sort();
        doomed.dedup();
        let mut deleted = 0;
        for chunk in doomed.chunks(1_000) {
            let n: u64 = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            deleted += n;
        }
        Ok(deleted)
    }
}
