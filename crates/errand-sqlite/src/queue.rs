//! The hot path on SQLite ([`JobQueue`]): queued rows ordered by position, fetched into flight
//! (owned by the process, with their fetch order as the fencing token) in one transaction;
//! waiting fetches wake on this process's pushes and poll the file for other processes'.

use crate::SqliteBroker;
use crate::batch;
use crate::rows::{add_member, bury, enqueue, location, next_seq, now, parse_location};
use crate::schema::state;
use async_trait::async_trait;
use errand_core::broker::{
    BrokerResult, Completion, Enqueue, FetchRequest, Fetched, JobQueue, ScheduledJob, Settle,
};
use errand_core::{Payload, WireProfile};
use rusqlite::{Transaction, params};
use std::time::{Duration, Instant};

/// How many due jobs one promotion transaction moves.
const PROMOTE_BATCH: i64 = 500;

/// How often a waiting fetch looks for jobs pushed by other processes.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(5);

impl SqliteBroker {
    /// Whether any of `queues` has a job waiting (a read; takes no write lock).
    async fn has_queued(&self, queues: Vec<String>) -> BrokerResult<bool> {
        self.with(move |c| {
            let mut exists = c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = ?1 AND queue = ?2)",
            )?;
            for q in &queues {
                if exists.query_row(params![state::QUEUED, q], |r| r.get::<_, bool>(0))? {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    fn fetch_once(
        tx: &Transaction<'_>,
        identity: &str,
        queues: &[String],
        max: usize,
    ) -> rusqlite::Result<Vec<Fetched>> {
        let mut out = Vec::new();
        let mut select = tx.prepare_cached(
            "SELECT id, payload FROM jobs WHERE state = ?1 AND queue = ?2 ORDER BY seq LIMIT ?3",
        )?;
        let mut take =
            tx.prepare_cached("UPDATE jobs SET state = ?1, owner = ?2, score = ?3 WHERE id = ?4")?;
        for queue in queues {
            let left = max - out.len();
            if left == 0 {
                break;
            }
            let rows: Vec<(i64, String)> = select
                .query_map(params![state::QUEUED, queue, left as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            if rows.is_empty() {
                continue;
            }
            let first = next_seq(tx, rows.len() as i64)?;
            for (i, (id, raw)) in rows.into_iter().enumerate() {
                take.execute(params![
                    state::IN_FLIGHT,
                    identity,
                    (first + i as i64) as f64,
                    id
                ])?;
                // The fetch order doubles as the fencing token: strictly increasing.
                out.push(Fetched {
                    queue: queue.clone(),
                    raw,
                    location: location(id, identity),
                    token: (first + i as i64) as u64,
                });
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl JobQueue for SqliteBroker {
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let jobs = jobs.to_vec();
        self.write(move |tx| enqueue(tx, &jobs)).await?;
        self.notify_pushed();
        Ok(())
    }

    async fn push_scheduled(&self, jobs: &[ScheduledJob]) -> BrokerResult<()> {
        let jobs = jobs.to_vec();
        self.write(move |tx| {
            for j in &jobs {
                add_member(tx, state::SCHEDULE, j.at, &j.payload)?;
            }
            Ok(())
        })
        .await
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        if req.queues.is_empty() || req.max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + req.wait;
        let mut looked = false;
        loop {
            // Listen before looking, so a push between the look and the wait is not missed.
            let pushed = self.inner.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            // After a wait, a cheap read (no write lock) decides whether a fetch is worth it,
            // so idle processes polling for each other's pushes do not contend for the lock.
            if !looked || self.has_queued(req.queues.to_vec()).await? {
                let (identity, queues, max) =
                    (req.identity.to_string(), req.queues.to_vec(), req.max);
                let jobs = self
                    .write(move |tx| Self::fetch_once(tx, &identity, &queues, max))
                    .await?;
                if !jobs.is_empty() {
                    return Ok(jobs);
                }
            }
            looked = true;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = pushed => {}
                _ = tokio::time::sleep(left.min(CROSS_PROCESS_POLL)) => {}
            }
        }
    }

    /// One transaction (and one fsync) for the whole batch.
    async fn complete_many(&self, batch: &[Completion<'_>]) -> BrokerResult<Vec<bool>> {
        let ops: Vec<(Option<(i64, String, f64)>, Option<Settle>)> = batch
            .iter()
            .map(|c| {
                let job = c.job();
                let at = parse_location(&job.location)
                    .map(|(id, o)| (id, o.to_string(), job.token as f64));
                let to = match c {
                    Completion::Ack(_) => None,
                    Completion::Settle(_, to) => Some((*to).clone()),
                };
                (at, to)
            })
            .collect();
        self.write(move |tx| {
            // The row must still be this attempt's: same owner and same fencing token (the
            // score), so a stale attempt cannot complete a later fetch of the same job.
            let mut delete = tx.prepare_cached(
                "DELETE FROM jobs WHERE id = ?1 AND state = ?2 AND owner = ?3 AND score = ?4",
            )?;
            let mut held = Vec::with_capacity(ops.len());
            for (at, to) in &ops {
                let Some((id, owner, token)) = at else {
                    held.push(false);
                    continue;
                };
                if delete.execute(params![id, state::IN_FLIGHT, owner, token])? == 0 {
                    held.push(false);
                    continue;
                }
                match to {
                    None => {}
                    Some(Settle::Retry { payload, at }) => {
                        add_member(tx, state::RETRY, *at, payload)?
                    }
                    Some(Settle::Scheduled { payload, at }) => {
                        add_member(tx, state::SCHEDULE, *at, payload)?
                    }
                    Some(Settle::Dead {
                        payload,
                        now,
                        limits,
                    }) => bury(tx, payload, *now, limits)?,
                }
                held.push(true);
            }
            Ok(held)
        })
        .await
    }

    async fn release(&self, job: &Fetched) -> BrokerResult<bool> {
        let Some((id, owner)) = parse_location(&job.location) else {
            return Ok(false);
        };
        let (owner, queue, token) = (owner.to_string(), job.queue.clone(), job.token as f64);
        let released = self
            .write(move |tx| {
                let front: Option<i64> = tx.query_row(
                    "SELECT MIN(seq) FROM jobs WHERE state = ?1 AND queue = ?2",
                    params![state::QUEUED, queue],
                    |r| r.get(0),
                )?;
                let n = tx.execute(
                    "UPDATE jobs SET state = ?1, owner = NULL, score = 0, seq = ?2
                     WHERE id = ?3 AND state = ?4 AND owner = ?5 AND score = ?6",
                    params![
                        state::QUEUED,
                        front.unwrap_or(1) - 1,
                        id,
                        state::IN_FLIGHT,
                        owner,
                        token
                    ],
                )?;
                Ok(n == 1)
            })
            .await?;
        if released {
            self.inner.pushed.notify_waiters();
        }
        Ok(released)
    }

    async fn now(&self) -> BrokerResult<f64> {
        Ok(now())
    }

    async fn promote_due(&self, now: f64, profile: WireProfile) -> BrokerResult<usize> {
        let mut moved = 0;
        for set in [state::RETRY, state::SCHEDULE] {
            loop {
                let n = self
                    .write(move |tx| {
                        let due: Vec<(i64, String)> = tx
                            .prepare_cached(
                                "SELECT id, payload FROM jobs WHERE state = ?1 AND score <= ?2
                                 ORDER BY score, payload LIMIT ?3",
                            )?
                            .query_map(params![set, now, PROMOTE_BATCH], |r| {
                                Ok((r.get(0)?, r.get(1)?))
                            })?
                            .collect::<Result<_, _>>()?;
                        let first = next_seq(tx, due.len() as i64)?;
                        for (i, (id, raw)) in due.iter().enumerate() {
                            let (queue, payload) = match Payload::parse(raw) {
                                Ok(mut p) => {
                                    p.stamp_enqueued(profile, now);
                                    (p.queue().to_string(), p.to_json())
                                }
                                // Unreadable entries go to `default` unchanged, where the
                                // worker files them in the dead set with the reason.
                                Err(_) => ("default".to_string(), raw.clone()),
                            };
                            tx.execute(
                                "UPDATE jobs SET state = ?1, queue = ?2, seq = ?3, score = 0,
                                 member = 0, payload = ?4 WHERE id = ?5",
                                params![state::QUEUED, queue, first + i as i64, payload, id],
                            )?;
                            tx.execute("INSERT OR IGNORE INTO queues(name) VALUES (?1)", [queue])?;
                        }
                        Ok(due.len())
                    })
                    .await?;
                moved += n;
                if (n as i64) < PROMOTE_BATCH {
                    break;
                }
            }
        }
        if moved > 0 {
            self.inner.pushed.notify_waiters();
        }
        self.prune_batches().await?;
        Ok(moved)
    }
}

impl SqliteBroker {
    /// Deletes expired batches with their members and edges, [`batch::PRUNE_BATCH`] per
    /// transaction, at most [`batch::PRUNE_ROUNDS`] transactions per promotion turn (measured
    /// on this machine's clock, as batches are). Returns how many went.
    async fn prune_batches(&self) -> BrokerResult<usize> {
        let mut pruned = 0;
        for _ in 0..batch::PRUNE_ROUNDS {
            let n = self.write(|tx| batch::prune(tx, now())).await?;
            pruned += n;
            if (n as i64) < batch::PRUNE_BATCH {
                break;
            }
        }
        if pruned > 0 {
            tracing::debug!(pruned, "pruned expired batches");
        }
        Ok(pruned)
    }
}
