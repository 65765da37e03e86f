//! The coordination primitives of [`MemoryBroker`] ([`Coordination`]), on its clock.

use super::{MemoryBroker, OnceRecord};
use async_trait::async_trait;
use errand_core::admin::SetName;
use errand_core::broker::{
    BrokerResult, Capabilities, Coordination, FENCE_GRACE, OnceClaim, OnceCompletion, OnceRequest,
    PermitGrant, PermitRenewal, PermitRequest, RateKind, RateRequest, UniquePush, UniquePushed,
};
use errand_core::broker::{
    Cancelled, PeriodicEntry, PeriodicRecord, TickClaim, has_jid, work_has_jid,
};
use std::time::Duration;

#[async_trait]
impl Coordination for MemoryBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    async fn once_claim(&self, req: OnceRequest<'_>) -> BrokerResult<OnceClaim> {
        let OnceRequest {
            key,
            owner,
            ttl: lease,
        } = req;
        let now = (self.clock)();
        let mut state = self.state();
        if let Some(r) = state.once.get(key).filter(|r| r.expires > now) {
            if let Some(out) = &r.output {
                return Ok(OnceClaim::Done(out.clone()));
            }
            if r.owner != owner {
                return Ok(OnceClaim::Busy);
            }
        }
        state.once.insert(
            key.to_string(),
            OnceRecord {
                owner: owner.to_string(),
                output: None,
                expires: now + lease.as_secs_f64(),
            },
        );
        Ok(OnceClaim::Claimed)
    }

    async fn once_renew(&self, req: OnceRequest<'_>) -> BrokerResult<bool> {
        let OnceRequest {
            key,
            owner,
            ttl: lease,
        } = req;
        let now = (self.clock)();
        let mut state = self.state();
        match state.once.get_mut(key) {
            Some(r) if r.expires > now && r.owner == owner && r.output.is_none() => {
                r.expires = now + lease.as_secs_f64();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn once_complete(&self, done: OnceCompletion<'_>) -> BrokerResult<bool> {
        let OnceCompletion {
            key,
            owner,
            output,
            keep,
        } = done;
        let now = (self.clock)();
        let mut state = self.state();
        match state.once.get_mut(key) {
            Some(r) if r.expires > now && r.owner == owner && r.output.is_none() => {
                r.output = Some(output.to_string());
                r.expires = now + keep.as_secs_f64();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()> {
        let mut state = self.state();
        if state
            .once
            .get(key)
            .is_some_and(|r| r.owner == owner && r.output.is_none())
        {
            state.once.remove(key);
        }
        Ok(())
    }

    async fn permit_acquire(&self, req: PermitRequest<'_>) -> BrokerResult<PermitGrant> {
        let now = (self.clock)();
        let mut state = self.state();
        let set = state.leases.entry(req.key.to_string()).or_default();
        set.retain(|_, until| *until > now);
        if !set.contains_key(req.holder) && set.len() >= req.max as usize {
            let first = set
                .iter()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(h, _)| h.clone())
                .unwrap_or_default();
            return Ok(PermitGrant::Full { holder: first });
        }
        set.insert(req.holder.to_string(), now + req.ttl.as_secs_f64());
        let token = if req.fence {
            // As the real backends: the larger of the last token plus one and the time in ms,
            // the counter kept for FENCE_GRACE after the permit.
            let fence = state.fences.entry(req.key.to_string()).or_insert((0, 0.0));
            if fence.1 <= now {
                fence.0 = 0;
            }
            fence.0 = (fence.0 + 1).max((now * 1000.0).floor() as u64);
            fence.1 = now + req.ttl.as_secs_f64() + FENCE_GRACE.as_secs_f64();
            fence.0
        } else {
            0
        };
        Ok(PermitGrant::Granted { token })
    }

    async fn push_unique(&self, req: UniquePush<'_>) -> BrokerResult<UniquePushed> {
        let now = (self.clock)();
        {
            let mut state = self.state();
            let set = state.leases.entry(req.key.to_string()).or_default();
            set.retain(|_, until| *until > now);
            if set.contains_key(req.jid) {
                return Ok(UniquePushed::Pushed);
            }
            if let Some(holder) = set.keys().next() {
                return Ok(UniquePushed::Duplicate {
                    holder: holder.clone(),
                });
            }
            set.insert(req.jid.to_string(), now + req.ttl.as_secs_f64());
            match req.at {
                Some(at) => state.set_mut("schedule").add(at, req.payload),
                None => {
                    state.known_queues.insert(req.queue.to_string());
                    state.lpush(req.queue, req.payload.to_string());
                }
            }
        }
        if req.at.is_none() {
            self.pushed.notify_waiters();
        }
        Ok(UniquePushed::Pushed)
    }

    async fn permit_renew(&self, req: PermitRenewal<'_>) -> BrokerResult<bool> {
        let PermitRenewal { key, holder, ttl } = req;
        let now = (self.clock)();
        let mut state = self.state();
        match state
            .leases
            .get_mut(key)
            .and_then(|set| set.get_mut(holder))
        {
            Some(until) if *until > now => {
                *until = now + ttl.as_secs_f64();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn permit_release(&self, key: &str, holder: &str) -> BrokerResult<bool> {
        let now = (self.clock)();
        let mut state = self.state();
        Ok(state
            .leases
            .get_mut(key)
            .and_then(|set| set.remove(holder))
            .is_some_and(|until| until > now))
    }

    async fn permit_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>> {
        let now = (self.clock)();
        let state = self.state();
        let mut held: Vec<(String, f64)> = state
            .leases
            .get(key)
            .map(|set| {
                set.iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(h, until)| (h.clone(), *until))
                    .collect()
            })
            .unwrap_or_default();
        held.sort_by(|a, b| a.1.total_cmp(&b.1));
        Ok(held)
    }

    async fn rate_take(&self, req: RateRequest<'_>) -> BrokerResult<Option<Duration>> {
        let RateRequest {
            key,
            kind,
            limit,
            interval,
        } = req;
        let now = (self.clock)();
        let interval = interval.as_secs_f64().max(0.001);
        let mut state = self.state();
        let wait = match kind {
            RateKind::Bucket => {
                let slot = (now / interval).floor() as i64;
                let entry = state.buckets.entry(key.to_string()).or_insert((slot, 0));
                if entry.0 != slot {
                    *entry = (slot, 0);
                }
                if entry.1 >= limit {
                    Some((slot + 1) as f64 * interval - now)
                } else {
                    entry.1 += 1;
                    None
                }
            }
            RateKind::Window => {
                let uses = state.windows.entry(key.to_string()).or_default();
                while uses.front().is_some_and(|at| *at <= now - interval) {
                    uses.pop_front();
                }
                if uses.len() >= limit as usize {
                    Some(uses.front().copied().unwrap_or(now) + interval - now)
                } else {
                    uses.push_back(now);
                    None
                }
            }
        };
        Ok(wait.map(|w| Duration::from_secs_f64(w.max(0.001))))
    }

    async fn refusal_add(&self, limiter: &str) -> BrokerResult<()> {
        *self
            .state()
            .limit_hits
            .entry(limiter.to_string())
            .or_insert(0) += 1;
        Ok(())
    }

    async fn periodic_upsert(&self, entries: &[PeriodicEntry], now: f64) -> BrokerResult<()> {
        let mut s = self.state();
        for e in entries {
            match s.periodic.get_mut(&e.name) {
                Some(r) => {
                    r.entry = e.clone();
                    r.seen_at = now;
                }
                None => {
                    s.periodic.insert(
                        e.name.clone(),
                        PeriodicRecord {
                            entry: e.clone(),
                            paused: false,
                            last_tick: now,
                            last_jid: None,
                            last_run: None,
                            seen_at: now,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    async fn periodic_list(&self) -> BrokerResult<Vec<PeriodicRecord>> {
        Ok(self.state().periodic.values().cloned().collect())
    }

    async fn periodic_pause(&self, name: &str, paused: bool) -> BrokerResult<bool> {
        Ok(match self.state().periodic.get_mut(name) {
            Some(r) => {
                r.paused = paused;
                true
            }
            None => false,
        })
    }

    async fn periodic_claim(&self, claim: TickClaim<'_>) -> BrokerResult<bool> {
        {
            let mut s = self.state();
            let Some(r) = s.periodic.get_mut(claim.name) else {
                return Ok(false);
            };
            if r.paused || claim.at <= r.last_tick {
                return Ok(false);
            }
            r.last_tick = claim.at;
            r.last_jid = Some(claim.jid.to_string());
            r.last_run = Some(claim.now);
            s.known_queues.insert(claim.queue.to_string());
            s.lpush(claim.queue, claim.payload.to_string());
        }
        self.pushed.notify_waiters();
        Ok(true)
    }

    async fn periodic_prune(&self, before: f64) -> BrokerResult<usize> {
        let mut s = self.state();
        let n = s.periodic.len();
        s.periodic.retain(|_, r| r.seen_at >= before);
        Ok(n - s.periodic.len())
    }

    async fn refusal_counts(&self) -> BrokerResult<Vec<(String, u64)>> {
        Ok(self
            .state()
            .limit_hits
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }

    async fn cancel_job(&self, jid: &str, keep: Duration) -> BrokerResult<Cancelled> {
        let now = (self.clock)();
        let mut state = self.state();
        state.cancels.retain(|_, until| *until > now);
        state
            .cancels
            .insert(jid.to_string(), now + keep.as_secs_f64());
        for (set, found) in [
            (SetName::Scheduled, Cancelled::Scheduled),
            (SetName::Retry, Cancelled::Retrying),
        ] {
            if let Some(zset) = state.sets.get_mut(set.key()) {
                let member = zset
                    .entries()
                    .into_iter()
                    .find(|(_, raw)| has_jid(raw, jid));
                if let Some((_, raw)) = member {
                    zset.remove(&raw);
                    return Ok(found);
                }
            }
        }
        for (name, list) in &mut state.queues {
            if let Some(at) = list.iter().position(|raw| has_jid(raw, jid)) {
                list.remove(at);
                return Ok(Cancelled::Queued(name.clone()));
            }
        }
        let running = state
            .beats
            .iter()
            .filter(|(_, p)| p.expires_at > now)
            .find(|(_, p)| p.work.iter().any(|(_, w)| work_has_jid(w, jid)));
        Ok(match running {
            Some((identity, _)) => Cancelled::Running(identity.clone()),
            None => Cancelled::NotFound,
        })
    }

    async fn cancelled(&self, jids: &[&str]) -> BrokerResult<Vec<bool>> {
        let now = (self.clock)();
        let state = self.state();
        Ok(jids
            .iter()
            .map(|jid| state.cancels.get(*jid).is_some_and(|until| *until > now))
            .collect())
    }

    async fn result_put(&self, jid: &str, value: &str, keep: Duration) -> BrokerResult<()> {
        let now = (self.clock)();
        let mut state = self.state();
        state.results.retain(|_, (_, until)| *until > now);
        state.results.insert(
            jid.to_string(),
            (value.to_string(), now + keep.as_secs_f64()),
        );
        Ok(())
    }

    async fn result_get(&self, jid: &str) -> BrokerResult<Option<String>> {
        let now = (self.clock)();
        Ok(self
            .state()
            .results
            .get(jid)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone()))
    }

    async fn push_replacing(
        &self,
        req: errand_core::broker::ReplacePush<'_>,
    ) -> BrokerResult<Option<String>> {
        let now = (self.clock)();
        let mut state = self.state();
        let mut replaced = None;
        if let Some((jid, raw, scheduled, until)) = state.replacing.remove(req.key)
            && until > now
        {
            let removed = if scheduled {
                state.set_mut("schedule").remove(&raw)
            } else {
                state.queues.get_mut(req.queue).is_some_and(|list| {
                    match list.iter().position(|r| *r == raw) {
                        Some(at) => {
                            list.remove(at);
                            true
                        }
                        None => false,
                    }
                })
            };
            if removed {
                replaced = Some(jid);
            }
        }
        match req.at {
            Some(at) => state.set_mut("schedule").add(at, req.payload),
            None => {
                state.known_queues.insert(req.queue.to_string());
                state.lpush(req.queue, req.payload.to_string());
            }
        }
        state.replacing.insert(
            req.key.to_string(),
            (
                req.jid.to_string(),
                req.payload.to_string(),
                req.at.is_some(),
                now + req.ttl.as_secs_f64(),
            ),
        );
        drop(state);
        if req.at.is_none() {
            self.pushed.notify_waiters();
        }
        Ok(replaced)
    }
}
