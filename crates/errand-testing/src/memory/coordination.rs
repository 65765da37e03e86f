//! The coordination primitives of [`MemoryBroker`] ([`Coordination`]), on its clock.

use super::{BatchState, MemoryBroker, OnceRecord, State};
use async_trait::async_trait;
use errand_core::BrokerError;
use errand_core::admin::SetName;
use errand_core::broker::{
    BUILDING, BatchEvent, BatchFired, BatchOutcome, BatchRecord, BatchStatus, Enqueue,
    FailurePolicy, JobHead, MemberState, NewBatch, ScheduledJob, child_member,
};
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
        // Where it waited, and the job removed; the lock is let go before its batch is told.
        let removed: Option<(Cancelled, String)> = {
            let mut state = self.state();
            state.cancels.retain(|_, until| *until > now);
            state
                .cancels
                .insert(jid.to_string(), now + keep.as_secs_f64());
            let mut removed = None;
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
                        removed = Some((found, raw));
                        break;
                    }
                }
            }
            if removed.is_none() {
                removed = state.queues.iter_mut().find_map(|(name, list)| {
                    let at = list.iter().position(|raw| has_jid(raw, jid))?;
                    list.remove(at)
                        .map(|raw| (Cancelled::Queued(name.clone()), raw))
                });
            }
            removed
        };
        if let Some((found, raw)) = removed {
            errand_core::broker::record_removed(self, &raw).await?;
            return Ok(found);
        }
        let state = self.state();
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

    async fn batch_create(&self, batch: &NewBatch<'_>) -> BrokerResult<()> {
        let now = (self.clock)();
        let mut state = self.state();
        state.batches.retain(|_, b| b.alive(now));
        if state.batches.contains_key(batch.bid) {
            return Ok(());
        }
        if let Some(parent) = batch.parent {
            match state.batches.get_mut(parent) {
                Some(p) if p.complete_at.is_none() => {
                    let child = child_member(batch.bid);
                    p.members.insert(child.clone());
                    p.pending.insert(child);
                }
                _ => return Err(BrokerError::BatchClosed(parent.to_string())),
            }
        }
        state.batch_seq += 1;
        let seq = state.batch_seq;
        let mut pending: std::collections::BTreeSet<String> =
            batch.waiting.iter().map(|w| w.jid.clone()).collect();
        let members = pending.clone();
        pending.insert(BUILDING.to_string());
        state.batches.insert(
            batch.bid.to_string(),
            BatchState {
                parent: batch.parent.map(str::to_string),
                description: batch.description.to_string(),
                created_at: now,
                seq,
                callbacks: batch.callbacks.to_vec(),
                keep: batch.keep.as_secs_f64(),
                policy: batch.policy,
                workflow: batch.workflow.map(str::to_string),
                members,
                pending,
                failed: Default::default(),
                dead: Default::default(),
                cancelled: Default::default(),
                waiting: batch
                    .waiting
                    .iter()
                    .map(|w| (w.jid.clone(), w.clone()))
                    .collect(),
                complete_at: None,
                success_at: None,
                death_at: None,
            },
        );
        Ok(())
    }

    async fn batch_add(
        &self,
        bid: &str,
        jids: &[&str],
        now: &[Enqueue],
        later: &[ScheduledJob],
    ) -> BrokerResult<()> {
        let at = (self.clock)();
        {
            let mut state = self.state();
            state.batches.retain(|_, b| b.alive(at));
            match state.batches.get_mut(bid) {
                Some(b) if b.complete_at.is_none() => {
                    for jid in jids {
                        // A member already dead or cancelled is not counted again.
                        if b.dead.contains(*jid) || b.cancelled.contains(*jid) {
                            continue;
                        }
                        b.members.insert(jid.to_string());
                        b.pending.insert(jid.to_string());
                    }
                }
                _ => return Err(BrokerError::BatchClosed(bid.to_string())),
            }
            for job in now {
                state.known_queues.insert(job.queue.clone());
                state.lpush(&job.queue, job.payload.clone());
            }
            let schedule = state.set_mut("schedule");
            for job in later {
                schedule.add(job.at, &job.payload);
            }
        }
        if !now.is_empty() {
            self.pushed.notify_waiters();
        }
        Ok(())
    }

    async fn batch_record(&self, record: BatchRecord<'_>) -> BrokerResult<BatchFired> {
        let now = (self.clock)();
        let mut fired = BatchFired::default();
        let pushed = {
            let mut state = self.state();
            state.batches.retain(|_, b| b.alive(now));
            state.record_member(
                now,
                record.bid,
                record.member,
                record.outcome,
                record.enqueued_at,
                &mut fired,
            )
        };
        if pushed {
            self.pushed.notify_waiters();
        }
        Ok(fired)
    }

    async fn batch_status(&self, bid: &str) -> BrokerResult<Option<BatchStatus>> {
        let now = (self.clock)();
        let state = self.state();
        Ok(state
            .batches
            .get(bid)
            .filter(|b| b.alive(now))
            .map(|b| b.status(bid)))
    }

    async fn batch_list(
        &self,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<(Vec<BatchStatus>, usize)> {
        let now = (self.clock)();
        let state = self.state();
        let mut live: Vec<(&String, &BatchState)> =
            state.batches.iter().filter(|(_, b)| b.alive(now)).collect();
        live.sort_by(|a, b| {
            b.1.created_at
                .total_cmp(&a.1.created_at)
                .then(b.1.seq.cmp(&a.1.seq))
        });
        let total = live.len();
        let page = live
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(bid, b)| b.status(bid))
            .collect();
        Ok((page, total))
    }

    async fn batch_members(
        &self,
        bid: &str,
        state: MemberState,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<Vec<String>> {
        let now = (self.clock)();
        let s = self.state();
        let Some(b) = s.batches.get(bid).filter(|b| b.alive(now)) else {
            return Ok(Vec::new());
        };
        let members: Box<dyn Iterator<Item = &String>> = match state {
            MemberState::Pending => Box::new(b.pending.iter()),
            MemberState::Failed => Box::new(b.failed.iter()),
            MemberState::Dead => Box::new(b.dead.iter()),
            MemberState::Cancelled => Box::new(b.cancelled.iter()),
            MemberState::Waiting => Box::new(b.waiting.keys()),
        };
        Ok(members
            .filter(|m| *m != BUILDING)
            .skip(offset)
            .take(limit)
            .cloned()
            .collect())
    }
}

impl BatchState {
    fn status(&self, bid: &str) -> BatchStatus {
        let building = self.pending.contains(BUILDING);
        BatchStatus {
            bid: bid.to_string(),
            parent: self.parent.clone(),
            description: self.description.clone(),
            created_at: self.created_at,
            total: self.members.len() as u64,
            pending: (self.pending.len() - usize::from(building)) as u64,
            failed: self.failed.len() as u64,
            dead: self.dead.len() as u64,
            cancelled: self.cancelled.len() as u64,
            waiting: self.waiting.len() as u64,
            building,
            complete_at: self.complete_at,
            success_at: self.success_at,
            death_at: self.death_at,
            callbacks: self
                .callbacks
                .iter()
                .map(|c| c.event.as_str().to_string())
                .collect(),
            workflow: self.workflow.clone(),
            policy: self.policy.as_str().to_string(),
        }
    }

    /// Whether `member` has succeeded: it was never added or has left every state.
    fn succeeded(&self, member: &str) -> bool {
        !self.pending.contains(member)
            && !self.dead.contains(member)
            && !self.cancelled.contains(member)
    }

    /// Queues `event`'s callback, if the batch has one.
    fn fire(&self, bid: &str, event: BatchEvent, jobs: &mut Vec<JobHead>, fired: &mut BatchFired) {
        if let Some(cb) = self.callbacks.iter().find(|c| c.event == event) {
            jobs.push(cb.job.clone());
            fired.callbacks.push((bid.to_string(), event));
        }
    }
}

impl State {
    /// Records `member`'s `outcome` in batch `bid` with everything it causes (callbacks,
    /// released and cancelled steps, then the same for the parent it completes), pushing the
    /// jobs closed with `enqueued_at`. True when it pushed a job.
    fn record_member(
        &mut self,
        now: f64,
        bid: &str,
        member: &str,
        outcome: BatchOutcome,
        enqueued_at: &str,
        fired: &mut BatchFired,
    ) -> bool {
        let Some(b) = self.batches.get_mut(bid) else {
            return false;
        };
        // No attempt ends a step not pushed yet, and only a success seals a batch.
        if b.waiting.contains_key(member)
            || (member == BUILDING && outcome != BatchOutcome::Succeeded)
        {
            return false;
        }
        let mut jobs: Vec<JobHead> = Vec::new();
        match outcome {
            BatchOutcome::Succeeded => {
                let was_pending = b.pending.remove(member);
                let was_dead = b.dead.remove(member);
                b.failed.remove(member);
                b.waiting.remove(member);
                if !was_pending && !was_dead {
                    return false;
                }
                let ready: Vec<String> = b
                    .waiting
                    .values()
                    .filter(|s| s.after.iter().any(|a| a == member))
                    .filter(|s| s.after.iter().all(|a| b.succeeded(a)))
                    .map(|s| s.jid.clone())
                    .collect();
                for jid in ready {
                    if let Some(step) = b.waiting.remove(&jid) {
                        jobs.push(step.job);
                        fired.released += 1;
                    }
                }
            }
            BatchOutcome::Failed => {
                if b.pending.contains(member) && !b.waiting.contains_key(member) {
                    b.failed.insert(member.to_string());
                }
                return false;
            }
            BatchOutcome::Died => {
                if !b.pending.remove(member) {
                    return false;
                }
                b.failed.remove(member);
                b.waiting.remove(member);
                b.dead.insert(member.to_string());
                if b.death_at.is_none() {
                    b.death_at = Some(now);
                    b.fire(bid, BatchEvent::Death, &mut jobs, fired);
                }
                let doomed: Vec<String> = match b.policy {
                    FailurePolicy::CancelAll => b.waiting.keys().cloned().collect(),
                    FailurePolicy::CancelDependents => {
                        // The waiting steps that need `member`, directly or through others.
                        let mut gone = std::collections::BTreeSet::from([member.to_string()]);
                        loop {
                            let more: Vec<String> = b
                                .waiting
                                .values()
                                .filter(|s| !gone.contains(&s.jid))
                                .filter(|s| s.after.iter().any(|a| gone.contains(a)))
                                .map(|s| s.jid.clone())
                                .collect();
                            if more.is_empty() {
                                break;
                            }
                            gone.extend(more);
                        }
                        gone.remove(member);
                        gone.into_iter().collect()
                    }
                };
                for jid in doomed {
                    b.waiting.remove(&jid);
                    b.pending.remove(&jid);
                    b.failed.remove(&jid);
                    b.cancelled.insert(jid);
                    fired.cancelled += 1;
                }
            }
        }
        let mut completed = false;
        let mut succeeded = false;
        if b.pending.is_empty() {
            if b.complete_at.is_none() {
                b.complete_at = Some(now);
                b.fire(bid, BatchEvent::Complete, &mut jobs, fired);
                completed = true;
            }
            if b.dead.is_empty() && b.cancelled.is_empty() && b.success_at.is_none() {
                b.success_at = Some(now);
                b.fire(bid, BatchEvent::Success, &mut jobs, fired);
                succeeded = true;
            }
        }
        let parent = b.parent.clone();
        let pushed = !jobs.is_empty();
        for job in jobs {
            self.known_queues.insert(job.queue.clone());
            self.lpush(&job.queue, job.close(enqueued_at));
        }
        let up = if succeeded {
            Some(BatchOutcome::Succeeded)
        } else if completed {
            Some(BatchOutcome::Died)
        } else {
            None
        };
        match (parent, up) {
            (Some(parent), Some(up)) => {
                let child = child_member(bid);
                self.record_member(now, &parent, &child, up, enqueued_at, fired) || pushed
            }
            _ => pushed,
        }
    }
}
