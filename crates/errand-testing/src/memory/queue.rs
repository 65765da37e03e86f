//! The hot path of [`MemoryBroker`] ([`JobQueue`]).

use super::MemoryBroker;
use async_trait::async_trait;
use errand_core::broker::{
    BrokerResult, Completion, Enqueue, FetchRequest, Fetched, JobQueue, ScheduledJob, Settle,
};
use errand_core::{Payload, WireProfile};
use std::time::Instant;

#[async_trait]
impl JobQueue for MemoryBroker {
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        {
            let mut s = self.state();
            for job in jobs {
                s.known_queues.insert(job.queue.clone());
                s.lpush(&job.queue, job.payload.clone());
            }
        }
        self.pushed.notify_waiters();
        Ok(())
    }

    async fn push_scheduled(&self, jobs: &[ScheduledJob]) -> BrokerResult<()> {
        let mut s = self.state();
        let set = s.set_mut("schedule");
        for job in jobs {
            set.add(job.at, &job.payload);
        }
        Ok(())
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        if req.queues.is_empty() || req.max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + req.wait;
        loop {
            // Listen before looking, so a push between the look and the wait is not missed.
            let pushed = self.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            let out = self.take(&req);
            let left = deadline.saturating_duration_since(Instant::now());
            if !out.is_empty() || left.is_zero() {
                return Ok(out);
            }
            let _ = tokio::time::timeout(left, pushed).await;
        }
    }

    async fn complete_many(&self, batch: &[Completion<'_>]) -> BrokerResult<Vec<bool>> {
        let mut s = self.state();
        Ok(batch
            .iter()
            .map(|c| {
                if !s.take_in_flight(c.job()) {
                    return false;
                }
                match c {
                    Completion::Ack(_) => {}
                    Completion::Settle(_, Settle::Retry { payload, at }) => {
                        s.set_mut("retry").add(*at, payload)
                    }
                    Completion::Settle(_, Settle::Scheduled { payload, at }) => {
                        s.set_mut("schedule").add(*at, payload)
                    }
                    Completion::Settle(
                        _,
                        Settle::Dead {
                            payload,
                            now,
                            limits,
                        },
                    ) => s.bury(payload, *now, *limits),
                }
                true
            })
            .collect())
    }

    async fn release(&self, job: &Fetched) -> BrokerResult<bool> {
        let released = {
            let mut s = self.state();
            let held = s.take_in_flight(job);
            if held {
                s.queues
                    .entry(job.queue.clone())
                    .or_default()
                    .push_back(job.raw.clone());
            }
            held
        };
        if released {
            self.pushed.notify_waiters();
        }
        Ok(released)
    }

    async fn now(&self) -> BrokerResult<f64> {
        Ok((self.clock)())
    }

    async fn promote_due(&self, now: f64, profile: WireProfile) -> BrokerResult<usize> {
        let mut moved = 0;
        {
            let mut s = self.state();
            for set in ["retry", "schedule"] {
                let due = s.set_mut(set).up_to(now);
                for raw in due {
                    s.set_mut(set).remove(&raw);
                    let (payload, queue) = match Payload::parse(&raw) {
                        Ok(mut p) => {
                            p.stamp_enqueued(profile, now);
                            let queue = p.queue().to_string();
                            (p.to_json(), queue)
                        }
                        // As on Redis: unreadable members go to `default` unchanged.
                        Err(_) => (raw, "default".to_string()),
                    };
                    s.known_queues.insert(queue.clone());
                    s.lpush(&queue, payload);
                    moved += 1;
                }
            }
        }
        if moved > 0 {
            self.pushed.notify_waiters();
        }
        Ok(moved)
    }
}
