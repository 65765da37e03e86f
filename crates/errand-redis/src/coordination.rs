//! Coordination primitives on Redis ([`Coordination`]): once-only records, permit sets and
//! rate counters, each one Lua script on the server's clock (`TIME`).

use crate::RedisBroker;
use crate::scripts;
use async_trait::async_trait;
use errand_core::admin::SetName;
use errand_core::broker::{
    BatchFired, BatchRecord, BatchStatus, Enqueue, MemberState, NewBatch, ScheduledJob,
};
use errand_core::broker::{
    BrokerResult, Capabilities, Coordination, OnceClaim, OnceCompletion, OnceRequest,
    PeriodicEntry, PeriodicRecord, PermitGrant, PermitRenewal, PermitRequest, RateKind,
    RateRequest, TickClaim, UniquePush, UniquePushed,
};
use errand_core::broker::{Cancelled, has_jid, work_has_jid};
use std::collections::BTreeMap;
use std::time::Duration;

impl RedisBroker {
    /// Renews or releases `holder`'s permit in `key`.
    async fn permit_op(
        &self,
        key: &str,
        op: &str,
        holder: &str,
        ttl: Duration,
    ) -> BrokerResult<bool> {
        let n: i64 = scripts::PERMIT
            .key(self.keys.permits(key))
            .key(self.keys.fence(key))
            .arg(op)
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(0)
            .arg("0")
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    /// Runs one operation of the once-only record script on `errand:once:<key>`.
    async fn once_op<T: redis::FromRedisValue>(
        &self,
        key: &str,
        op: &str,
        owner: &str,
        ttl: Duration,
        output: &str,
    ) -> BrokerResult<T> {
        scripts::ONCE
            .key(self.keys.once(key))
            .arg(op)
            .arg(owner)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(output)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }
}

#[async_trait]
impl Coordination for RedisBroker {
    /// Every primitive, on one server and on a cluster. In cluster mode the coordination
    /// records live in the fleet's slot, and a step that pushes jobs (a unique push, a periodic
    /// tick, a batch's callbacks and steps) writes them to the fleet's outbox in the same step;
    /// the caller then pushes them onto their queues (see `drain_outbox`).
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    async fn once_claim(&self, req: OnceRequest<'_>) -> BrokerResult<OnceClaim> {
        let (state, out): (i64, String) = self
            .once_op(req.key, "claim", req.owner, req.ttl, "")
            .await?;
        Ok(match state {
            0 => OnceClaim::Claimed,
            1 => OnceClaim::Busy,
            _ => OnceClaim::Done(out),
        })
    }

    async fn once_renew(&self, req: OnceRequest<'_>) -> BrokerResult<bool> {
        let n: i64 = self
            .once_op(req.key, "renew", req.owner, req.ttl, "")
            .await?;
        Ok(n == 1)
    }

    async fn once_complete(&self, done: OnceCompletion<'_>) -> BrokerResult<bool> {
        let n: i64 = self
            .once_op(done.key, "complete", done.owner, done.keep, done.output)
            .await?;
        Ok(n == 1)
    }

    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()> {
        let _: i64 = self
            .once_op(key, "release", owner, Duration::ZERO, "")
            .await?;
        Ok(())
    }

    async fn permit_acquire(&self, req: PermitRequest<'_>) -> BrokerResult<PermitGrant> {
        let (granted, value): (i64, String) = scripts::PERMIT
            .key(self.keys.permits(req.key))
            .key(self.keys.fence(req.key))
            .arg("acquire")
            .arg(req.holder)
            .arg(req.ttl.as_millis().max(1) as u64)
            .arg(req.max)
            .arg(if req.fence { "1" } else { "0" })
            .arg(errand_core::broker::FENCE_GRACE.as_millis() as u64)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(if granted == 1 {
            PermitGrant::Granted {
                token: value.parse().unwrap_or(0),
            }
        } else {
            PermitGrant::Full { holder: value }
        })
    }

    async fn push_unique(&self, req: UniquePush<'_>) -> BrokerResult<UniquePushed> {
        let target = match req.at {
            Some(_) => self.keys.set(errand_core::admin::SetName::Scheduled),
            None => self.keys.queue(req.queue),
        };
        // Rust prints an f64 in the shortest form that reads back to the same bits.
        let score = req.at.map(|at| at.to_string()).unwrap_or_default();
        // In cluster mode the job goes to the fleet's outbox beside the lock, then on.
        let cluster = self.keys.is_cluster();
        let (target, queues) = if cluster {
            (self.keys.outbox_fleet(), self.keys.outbox_fleet())
        } else {
            (target, self.keys.queues())
        };
        let (stored, holder): (i64, String) = scripts::UNIQUE_PUSH
            .key(self.keys.permits(req.key))
            .key(target)
            .key(queues)
            .arg(req.jid)
            .arg(req.ttl.as_millis().max(1) as u64)
            .arg(req.payload)
            .arg(req.queue)
            .arg(score)
            .arg(if cluster { "1" } else { "" })
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        self.drain_fleet_outbox().await;
        Ok(if stored == 1 {
            UniquePushed::Pushed
        } else {
            UniquePushed::Duplicate { holder }
        })
    }

    async fn push_replacing(
        &self,
        req: errand_core::broker::ReplacePush<'_>,
    ) -> BrokerResult<Option<String>> {
        let score = req.at.map(|at| at.to_string()).unwrap_or_default();
        // In cluster mode the debounce record lives in its queue's shard, beside what it
        // replaces.
        let shard = self.keys.shard_of(req.queue);
        let replaced: String = scripts::REPLACE_PUSH
            .key(self.keys.debounce_in(req.key, shard))
            .key(self.keys.set_in(SetName::Scheduled, shard))
            .key(self.keys.queue(req.queue))
            .key(self.keys.queues_in(shard))
            .arg(req.jid)
            .arg(req.ttl.as_millis().max(1) as u64)
            .arg(req.payload)
            .arg(req.queue)
            .arg(score)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok((!replaced.is_empty()).then_some(replaced))
    }

    async fn periodic_upsert(&self, entries: &[PeriodicEntry], now: f64) -> BrokerResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in entries {
            let definition = serde_json::json!({
                "spec": e.spec, "zone": e.zone, "queue": e.queue,
                "template": e.template, "missed": e.missed,
            });
            let state = self.keys.periodic_state(&e.name);
            pipe.cmd("HSET")
                .arg(self.keys.periodic())
                .arg(&e.name)
                .arg(definition.to_string())
                .ignore();
            pipe.cmd("HSETNX")
                .arg(&state)
                .arg("last_tick")
                .arg(now)
                .ignore();
            pipe.cmd("HSET")
                .arg(&state)
                .arg("seen_at")
                .arg(now)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn periodic_list(&self) -> BrokerResult<Vec<PeriodicRecord>> {
        let mut conn = self.connection();
        let definitions: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.periodic())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        if definitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in definitions.keys() {
            pipe.cmd("HMGET").arg(self.keys.periodic_state(name)).arg(&[
                "paused",
                "last_tick",
                "last_jid",
                "last_run",
                "seen_at",
            ]);
        }
        type State = (
            Option<String>,
            Option<f64>,
            Option<String>,
            Option<f64>,
            Option<f64>,
        );
        let states: Vec<State> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let field = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(definitions
            .into_iter()
            .zip(states)
            .map(
                |((name, json), (paused, last_tick, last_jid, last_run, seen_at))| {
                    let d: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                    PeriodicRecord {
                        entry: PeriodicEntry {
                            spec: field(&d, "spec"),
                            zone: field(&d, "zone"),
                            queue: field(&d, "queue"),
                            template: field(&d, "template"),
                            missed: field(&d, "missed"),
                            name,
                        },
                        paused: paused.as_deref() == Some("1"),
                        last_tick: last_tick.unwrap_or(0.0),
                        last_jid,
                        last_run,
                        seen_at: seen_at.unwrap_or(0.0),
                    }
                },
            )
            .collect())
    }

    async fn periodic_pause(&self, name: &str, paused: bool) -> BrokerResult<bool> {
        let n: i64 = scripts::PERIODIC
            .key(self.keys.periodic())
            .key(self.keys.periodic_state(name))
            .arg("pause")
            .arg(name)
            .arg(if paused { "1" } else { "0" })
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    async fn periodic_claim(&self, claim: TickClaim<'_>) -> BrokerResult<bool> {
        // In cluster mode the tick's job goes to the fleet's outbox beside the entry, then on.
        let cluster = self.keys.is_cluster();
        let n: i64 = scripts::PERIODIC
            .key(self.keys.periodic())
            .key(self.keys.periodic_state(claim.name))
            .key(if cluster {
                self.keys.outbox_fleet()
            } else {
                self.keys.queue(claim.queue)
            })
            .key(if cluster {
                self.keys.outbox_fleet()
            } else {
                self.keys.queues()
            })
            .arg("claim")
            .arg(claim.name)
            // Rust prints an f64 in the shortest form that reads back to the same bits.
            .arg(claim.at.to_string())
            .arg(claim.jid)
            .arg(claim.now)
            .arg(claim.queue)
            .arg(claim.payload)
            .arg(if cluster { "1" } else { "" })
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        self.drain_fleet_outbox().await;
        Ok(n == 1)
    }

    async fn periodic_prune(&self, before: f64) -> BrokerResult<usize> {
        let mut pruned = 0;
        for record in self.periodic_list().await? {
            if record.seen_at >= before {
                continue;
            }
            let name = &record.entry.name;
            let n: i64 = scripts::PERIODIC
                .key(self.keys.periodic())
                .key(self.keys.periodic_state(name))
                .arg("prune")
                .arg(name)
                .arg(before)
                .invoke_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            pruned += n as usize;
        }
        Ok(pruned)
    }

    async fn permit_renew(&self, req: PermitRenewal<'_>) -> BrokerResult<bool> {
        self.permit_op(req.key, "renew", req.holder, req.ttl).await
    }

    async fn permit_release(&self, key: &str, holder: &str) -> BrokerResult<bool> {
        self.permit_op(key, "release", holder, Duration::ZERO).await
    }

    async fn permit_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>> {
        let mut conn = self.connection();
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let now_ms = secs * 1000 + micros / 1000;
        let held: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.permits(key))
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(held.into_iter().map(|(h, ms)| (h, ms / 1000.0)).collect())
    }

    async fn rate_take(&self, req: RateRequest<'_>) -> BrokerResult<Option<Duration>> {
        let wait_ms: u64 = scripts::RATE
            .key(self.keys.rate(req.key))
            .key(self.keys.rate_seq(req.key))
            .arg(match req.kind {
                RateKind::Bucket => "bucket",
                RateKind::Window => "window",
            })
            .arg(req.limit)
            .arg(req.interval.as_millis().max(1) as u64)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    async fn refusal_add(&self, limiter: &str) -> BrokerResult<()> {
        redis::cmd("HINCRBY")
            .arg(self.keys.refusals())
            .arg(limiter)
            .arg(1)
            .query_async::<i64>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn refusal_counts(&self) -> BrokerResult<Vec<(String, u64)>> {
        let all: BTreeMap<String, u64> = redis::cmd("HGETALL")
            .arg(self.keys.refusals())
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(all.into_iter().collect())
    }

    async fn cancel_job(&self, jid: &str, keep: Duration) -> BrokerResult<Cancelled> {
        let mut conn = self.connection();
        let _: () = redis::cmd("SET")
            .arg(self.keys.cancel(jid))
            .arg(1)
            .arg("PX")
            .arg(keep.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        // The sets first, then the queues: a job promoted from a set to its queue meanwhile is
        // found in the queue, never missed between the two.
        let pattern = format!("*{}*", crate::broker::escape_glob(jid));
        for (set, found) in [
            (SetName::Scheduled, Cancelled::Scheduled),
            (SetName::Retry, Cancelled::Retrying),
        ] {
            for key in self.keys.set_parts(set) {
                let mut cursor: u64 = 0;
                loop {
                    let (next, page): (u64, Vec<String>) = redis::cmd("ZSCAN")
                        .arg(&key)
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1_000)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| self.fail(e))?;
                    // Member, score, member, score…
                    for member in page.iter().step_by(2) {
                        if has_jid(member, jid) {
                            let n: i64 = redis::cmd("ZREM")
                                .arg(&key)
                                .arg(member)
                                .query_async(&mut conn)
                                .await
                                .map_err(|e| self.fail(e))?;
                            if n > 0 {
                                errand_core::broker::record_removed(self, member).await?;
                                return Ok(found);
                            }
                        }
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        let mut queues: Vec<String> = Vec::new();
        for shard in self.keys.shards() {
            let names: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.keys.queues_in(shard))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            queues.extend(names);
        }
        const PAGE: isize = 1_000;
        for queue in queues {
            let key = self.keys.queue(&queue);
            // Pages from the pushing end: new pushes shift entries toward the end still to be
            // read (read twice, never skipped), and fetches take from the far end.
            let mut start: isize = 0;
            loop {
                let page: Vec<String> = redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(start)
                    .arg(start + PAGE - 1)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.fail(e))?;
                if let Some(raw) = page.iter().find(|raw| has_jid(raw, jid)) {
                    let n: i64 = redis::cmd("LREM")
                        .arg(&key)
                        .arg(1)
                        .arg(raw)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| self.fail(e))?;
                    if n > 0 {
                        errand_core::broker::record_removed(self, raw).await?;
                        return Ok(Cancelled::Queued(queue));
                    }
                }
                if (page.len() as isize) < PAGE {
                    break;
                }
                start += PAGE;
            }
        }
        let processes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.processes())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        for identity in processes {
            let work: Vec<String> = redis::cmd("HVALS")
                .arg(self.keys.work(&identity, "work"))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            if work.iter().any(|w| work_has_jid(w, jid)) {
                return Ok(Cancelled::Running(identity));
            }
        }
        Ok(Cancelled::NotFound)
    }

    async fn cancelled(&self, jids: &[&str]) -> BrokerResult<Vec<bool>> {
        if jids.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<Option<String>> = redis::cmd("MGET")
            .arg(jids.iter().map(|j| self.keys.cancel(j)).collect::<Vec<_>>())
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(marks.iter().map(Option::is_some).collect())
    }

    async fn result_put(&self, jid: &str, value: &str, keep: Duration) -> BrokerResult<()> {
        let _: () = redis::cmd("SET")
            .arg(self.keys.result(jid))
            .arg(value)
            .arg("PX")
            .arg(keep.as_millis().max(1) as u64)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn result_get(&self, jid: &str) -> BrokerResult<Option<String>> {
        redis::cmd("GET")
            .arg(self.keys.result(jid))
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn batch_create(&self, batch: &NewBatch<'_>) -> BrokerResult<()> {
        self.create_batch(batch).await
    }

    async fn batch_add(
        &self,
        bid: &str,
        jids: &[&str],
        now: &[Enqueue],
        later: &[ScheduledJob],
    ) -> BrokerResult<()> {
        self.add_to_batch(bid, jids, now, later).await
    }

    async fn batch_record(&self, record: BatchRecord<'_>) -> BrokerResult<BatchFired> {
        Ok(self
            .record_in_batch(&[record])
            .await?
            .pop()
            .unwrap_or_default())
    }

    async fn batch_record_many(
        &self,
        records: &[BatchRecord<'_>],
    ) -> BrokerResult<Vec<BatchFired>> {
        self.record_in_batch(records).await
    }

    async fn batch_status(&self, bid: &str) -> BrokerResult<Option<BatchStatus>> {
        self.batch_state(bid).await
    }

    async fn batch_list(
        &self,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<(Vec<BatchStatus>, usize)> {
        self.list_batches(offset, limit).await
    }

    async fn batch_members(
        &self,
        bid: &str,
        state: MemberState,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<Vec<String>> {
        self.members_of(bid, state, offset, limit).await
    }
}
