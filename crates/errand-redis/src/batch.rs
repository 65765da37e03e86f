//! Batches on Redis: every change is one run of `scripts/batch.lua` (its header lists the
//! keys); reads are pipelines.

use crate::RedisBroker;
use crate::scripts;
use errand_core::BrokerError;
use errand_core::admin::SetName;
use errand_core::broker::{
    BATCH_MAX_AGE, BUILDING, BatchEvent, BatchFired, BatchOutcome, BatchRecord, BatchStatus,
    BrokerResult, Enqueue, MemberState, NewBatch, ScheduledJob,
};
use std::collections::HashMap;

impl RedisBroker {
    fn batch_script(&self, op: &str) -> redis::ScriptInvocation<'static> {
        let mut inv = scripts::BATCH.prepare_invoke();
        inv.key(self.keys.batches());
        if self.keys.is_cluster() {
            inv.key(self.keys.outbox_fleet());
        }
        inv.arg(op).arg(self.keys.batch_prefix());
        if self.keys.is_cluster() {
            inv.arg("")
                .arg(self.keys.outbox_fleet())
                .arg(self.keys.batches())
                .arg("");
        } else {
            inv.arg(self.keys.queue_prefix())
                .arg(self.keys.queues())
                .arg(self.keys.batches())
                .arg(self.keys.set(SetName::Scheduled));
        }
        inv
    }

    /// Cluster mode: declares every key of batch `bid` to the script, so that during a
    /// migration of the fleet's slot Redis refuses the run (TRYAGAIN, retried) while the
    /// batch's keys are split between nodes, instead of the script finding some of them
    /// missing. On one server nothing is declared.
    fn declare(&self, inv: &mut redis::ScriptInvocation<'static>, bid: &str) {
        if !self.keys.is_cluster() || bid.is_empty() {
            return;
        }
        for suffix in [
            "",
            ":pending",
            ":failed",
            ":dead",
            ":cancelled",
            ":waiting",
            ":steps",
            ":next",
        ] {
            inv.key(self.batch_key(bid, suffix));
        }
    }

    fn batch_key(&self, bid: &str, suffix: &str) -> String {
        format!("{}{bid}{suffix}", self.keys.batch_prefix())
    }

    pub(crate) async fn create_batch(&self, b: &NewBatch<'_>) -> BrokerResult<()> {
        let mut inv = self.batch_script("create");
        self.declare(&mut inv, b.bid);
        self.declare(&mut inv, b.parent.unwrap_or(""));
        inv.arg(b.bid)
            .arg(b.parent.unwrap_or(""))
            .arg(b.description)
            .arg(b.keep.as_millis().max(1) as u64)
            .arg(BATCH_MAX_AGE.as_millis() as u64)
            .arg(b.policy.as_str())
            .arg(b.workflow.unwrap_or(""))
            .arg(b.callbacks.len());
        for cb in b.callbacks {
            inv.arg(cb.event.as_str())
                .arg(&cb.job.queue)
                .arg(&cb.job.head);
        }
        inv.arg(b.waiting.len());
        for step in b.waiting {
            let parents =
                serde_json::to_string(&step.after).map_err(|e| BrokerError::Command(e.into()))?;
            inv.arg(&step.jid)
                .arg(&step.job.queue)
                .arg(&step.job.head)
                .arg(parents);
        }
        let n: i64 = inv
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        self.drain_fleet_outbox().await;
        match (n, b.parent) {
            (-1, Some(parent)) => Err(BrokerError::BatchClosed(parent.to_string())),
            _ => Ok(()),
        }
    }

    pub(crate) async fn add_to_batch(
        &self,
        bid: &str,
        jids: &[&str],
        now: &[Enqueue],
        later: &[ScheduledJob],
    ) -> BrokerResult<()> {
        if jids.len() != now.len() + later.len() {
            return Err(BrokerError::Config(format!(
                "batch_add: {} jids for {} jobs",
                jids.len(),
                now.len() + later.len()
            )));
        }
        let mut inv = self.batch_script("add");
        self.declare(&mut inv, bid);
        inv.arg(bid).arg(now.len());
        for (jid, job) in jids.iter().zip(now) {
            inv.arg(*jid).arg(&job.queue).arg(&job.payload);
        }
        inv.arg(later.len());
        for (jid, job) in jids[now.len()..].iter().zip(later) {
            inv.arg(*jid).arg(job.at).arg(&job.payload);
        }
        let n: i64 = inv
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        self.drain_fleet_outbox().await;
        if n == -1 {
            return Err(BrokerError::BatchClosed(bid.to_string()));
        }
        Ok(())
    }

    pub(crate) async fn record_in_batch(
        &self,
        records: &[BatchRecord<'_>],
    ) -> BrokerResult<Vec<BatchFired>> {
        let mut all = Vec::with_capacity(records.len());
        // One script run per group of records sharing an `enqueued_at` (a server's batch
        // shares one), at most 1,000 records a run.
        let mut rest = records;
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .take(1_000)
                .take_while(|r| r.enqueued_at == first.enqueued_at)
                .count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            let mut inv = self.batch_script("record");
            let mut declared: Vec<&str> = Vec::new();
            for r in group {
                if !declared.contains(&r.bid) {
                    declared.push(r.bid);
                    self.declare(&mut inv, r.bid);
                }
            }
            inv.arg(first.enqueued_at);
            for r in group {
                let outcome = match r.outcome {
                    BatchOutcome::Succeeded => "succeeded",
                    BatchOutcome::Failed => "failed",
                    BatchOutcome::Died => "died",
                };
                inv.arg(r.bid).arg(r.member).arg(outcome);
            }
            let out: Vec<Vec<redis::Value>> = inv
                .invoke_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            all.extend(out.iter().map(|one| fired(one)));
        }
        self.drain_fleet_outbox().await;
        Ok(all)
    }

    pub(crate) async fn batch_state(&self, bid: &str) -> BrokerResult<Option<BatchStatus>> {
        Ok(self.batch_states(&[bid]).await?.pop().flatten())
    }

    /// The states of `bids`, in order, in one pipeline (`None` for a batch that is gone).
    async fn batch_states(&self, bids: &[&str]) -> BrokerResult<Vec<Option<BatchStatus>>> {
        let mut pipe = redis::pipe();
        for bid in bids {
            pipe.cmd("HGETALL").arg(self.batch_key(bid, ""));
            pipe.cmd("SCARD").arg(self.batch_key(bid, ":pending"));
            pipe.cmd("SISMEMBER")
                .arg(self.batch_key(bid, ":pending"))
                .arg(BUILDING);
            for suffix in [":failed", ":dead", ":cancelled"] {
                pipe.cmd("SCARD").arg(self.batch_key(bid, suffix));
            }
            pipe.cmd("HLEN").arg(self.batch_key(bid, ":waiting"));
        }
        type Row = (HashMap<String, String>, u64, bool, u64, u64, u64, u64);
        let rows: Vec<Row> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(bids
            .iter()
            .zip(rows)
            .map(
                |(bid, (meta, pending, building, failed, dead, cancelled, waiting))| {
                    if meta.is_empty() {
                        return None;
                    }
                    let time = |f: &str| meta.get(f).and_then(|v| v.parse::<f64>().ok());
                    let text = |f: &str| meta.get(f).cloned().filter(|v| !v.is_empty());
                    Some(BatchStatus {
                        bid: bid.to_string(),
                        parent: text("parent"),
                        description: text("desc").unwrap_or_default(),
                        created_at: time("created_at").unwrap_or(0.0),
                        total: meta.get("total").and_then(|v| v.parse().ok()).unwrap_or(0),
                        pending: pending - u64::from(building),
                        failed,
                        dead,
                        cancelled,
                        waiting,
                        building,
                        complete_at: time("complete_at"),
                        success_at: time("success_at"),
                        death_at: time("death_at"),
                        callbacks: text("callbacks")
                            .map(|c| c.split(',').map(str::to_string).collect())
                            .unwrap_or_default(),
                        workflow: text("workflow"),
                        policy: text("policy").unwrap_or_default(),
                    })
                },
            )
            .collect())
    }

    pub(crate) async fn list_batches(
        &self,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<(Vec<BatchStatus>, usize)> {
        let index = self.keys.batches();
        let mut conn = self.connection();
        // Batches expire whole; their index entries go here, when a page meets them.
        let (total, bids): (usize, Vec<String>) = redis::pipe()
            .cmd("ZCARD")
            .arg(&index)
            .cmd("ZREVRANGE")
            .arg(&index)
            .arg(offset)
            .arg((offset + limit).saturating_sub(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        if limit == 0 || bids.is_empty() {
            return Ok((Vec::new(), total));
        }
        let refs: Vec<&str> = bids.iter().map(String::as_str).collect();
        let states = self.batch_states(&refs).await?;
        let gone: Vec<&str> = refs
            .iter()
            .zip(&states)
            .filter(|(_, s)| s.is_none())
            .map(|(b, _)| *b)
            .collect();
        if gone.is_empty() {
            return Ok((states.into_iter().flatten().collect(), total));
        }
        let _: () = redis::cmd("ZREM")
            .arg(&index)
            .arg(&gone)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        // A page that met expired batches is read again without them.
        Box::pin(self.list_batches(offset, limit)).await
    }

    pub(crate) async fn members_of(
        &self,
        bid: &str,
        state: MemberState,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<Vec<String>> {
        let cmd = match state {
            MemberState::Pending => redis::cmd("SMEMBERS")
                .arg(self.batch_key(bid, ":pending"))
                .clone(),
            MemberState::Failed => redis::cmd("SMEMBERS")
                .arg(self.batch_key(bid, ":failed"))
                .clone(),
            MemberState::Dead => redis::cmd("SMEMBERS")
                .arg(self.batch_key(bid, ":dead"))
                .clone(),
            MemberState::Cancelled => redis::cmd("SMEMBERS")
                .arg(self.batch_key(bid, ":cancelled"))
                .clone(),
            MemberState::Waiting => redis::cmd("HKEYS")
                .arg(self.batch_key(bid, ":waiting"))
                .clone(),
        };
        let mut members: Vec<String> = cmd
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        members.retain(|m| m != BUILDING);
        members.sort();
        Ok(members.into_iter().skip(offset).take(limit).collect())
    }
}

/// One record's answer from `batch.lua`: released, cancelled, then (bid, event) pairs.
fn fired(out: &[redis::Value]) -> BatchFired {
    let text = |v: &redis::Value| -> String {
        redis::from_redis_value::<String>(v.clone()).unwrap_or_default()
    };
    let int = |v: Option<&redis::Value>| -> usize {
        v.and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
            .unwrap_or(0)
            .max(0) as usize
    };
    let mut fired = BatchFired {
        released: int(out.first()),
        cancelled: int(out.get(1)),
        callbacks: Vec::new(),
    };
    for pair in out.get(2..).unwrap_or_default().chunks(2) {
        if let [bid, event] = pair
            && let Some(event) = BatchEvent::parse(&text(event))
        {
            fired.callbacks.push((text(bid), event));
        }
    }
    fired
}
