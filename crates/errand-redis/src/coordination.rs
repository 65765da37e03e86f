//! Coordination primitives on Redis ([`Coordination`]): once-only records, permit sets and
//! rate counters, each one Lua script on the server's clock (`TIME`).

use crate::RedisBroker;
use crate::scripts;
use async_trait::async_trait;
use errand_core::broker::{
    BrokerResult, Capabilities, Coordination, OnceClaim, OnceCompletion, OnceRequest, PermitGrant,
    PermitRenewal, PermitRequest, RateKind, RateRequest, UniquePush, UniquePushed,
};
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
        let (stored, holder): (i64, String) = scripts::UNIQUE_PUSH
            .key(self.keys.permits(req.key))
            .key(target)
            .key(self.keys.queues())
            .arg(req.jid)
            .arg(req.ttl.as_millis().max(1) as u64)
            .arg(req.payload)
            .arg(req.queue)
            .arg(score)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(if stored == 1 {
            UniquePushed::Pushed
        } else {
            UniquePushed::Duplicate { holder }
        })
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
}
