//! The hot path on PostgreSQL ([`JobQueue`]): waiting rows ordered by position, fetched with
//! `FOR UPDATE SKIP LOCKED` in batches (concurrent fetchers never wait on each other), acks in
//! groups (one transaction per batch), and idle fetches woken by LISTEN/NOTIFY.

use crate::PostgresBroker;
use crate::batch;
use crate::broker::pg_err;
use crate::fleet::NOW;
use crate::schema::state;
use crate::schema::state::{FINISHED, IN_FLIGHT, QUEUED};
use async_trait::async_trait;
use errand_core::broker::{
    BrokerResult, Completion, DeadLimits, Enqueue, FetchRequest, Fetched, JobQueue, ScheduledJob,
    Settle,
};
use errand_core::{Payload, WireProfile};
use std::time::{Duration, Instant};
use tokio_postgres::GenericClient;

/// How many due jobs one promotion transaction moves.
const PROMOTE_BATCH: i64 = 500;

/// How many expired finished rows one pruning statement deletes, and at most how many such
/// statements one promotion turn runs.
const PRUNE_BATCH: i64 = 1_000;
const PRUNE_BATCHES: usize = 50;

/// How often a fetch starts from the front of its queue rather than past its hint (see
/// `fetch_once`).
pub(crate) const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);

/// How long an idle fetch waits for a notification before it looks anyway: a safety net for
/// a notification lost with a listener connection, not the way pushes are found.
const SAFETY_POLL: Duration = Duration::from_secs(5);

/// `<id>|<owner>`: where a fetched job's row is, and whose it is.
pub(crate) fn location(id: i64, owner: &str) -> String {
    format!("{id}|{owner}")
}

fn parse_location(location: &str) -> Option<(i64, &str)> {
    let (id, owner) = location.split_once('|')?;
    Some((id.parse().ok()?, owner))
}

/// Adds `payload` to set `set` at `score`, replacing an equal member (sets hold each payload
/// once, as Redis sorted sets do).
pub(crate) async fn add_member(
    c: &impl GenericClient,
    s: &str,
    set: i16,
    score: f64,
    payload: &str,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        &format!(
            "DELETE FROM {s}.jobs WHERE state = $1 AND state >= 2
             AND member = hashtextextended($2, 0) AND payload = $2"
        ),
        &[&set, &payload],
    )
    .await?;
    c.execute(
        &format!(
            "INSERT INTO {s}.jobs(state, score, member, payload)
             VALUES ($1, $2, hashtextextended($3, 0), $3)"
        ),
        &[&set, &score, &payload],
    )
    .await?;
    Ok(())
}

/// Adds `payload` to the dead set at `now`, then trims the set by age and size.
pub(crate) async fn bury(
    c: &impl GenericClient,
    s: &str,
    payload: &str,
    now: f64,
    limits: &DeadLimits,
) -> Result<(), tokio_postgres::Error> {
    add_member(c, s, state::DEAD, now, payload).await?;
    c.execute(
        &format!("DELETE FROM {s}.jobs WHERE state = $1 AND score < $2"),
        &[&state::DEAD, &(now - limits.max_age.as_secs_f64())],
    )
    .await?;
    c.execute(
        &format!(
            "DELETE FROM {s}.jobs WHERE id IN (SELECT id FROM {s}.jobs WHERE state = $1
             ORDER BY score DESC, payload COLLATE \"C\" DESC OFFSET $2)"
        ),
        &[&state::DEAD, &(limits.max_jobs as i64)],
    )
    .await?;
    Ok(())
}

/// Pushes `jobs` onto the newest end of their queues and registers the queue names, in two
/// statements whatever their number (positions come from the sequence, in push order).
pub(crate) async fn enqueue(
    c: &impl GenericClient,
    s: &str,
    jobs: &[Enqueue],
) -> Result<(), tokio_postgres::Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    let payloads: Vec<&str> = jobs.iter().map(|j| j.payload.as_str()).collect();
    c.execute(
        &format!(
            "INSERT INTO {s}.jobs(state, queue, seq, payload)
             SELECT {QUEUED}, q, nextval('{s}.positions'), p
             FROM (SELECT q, p FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(q, p, i)
                   ORDER BY i) ordered"
        ),
        &[&queues, &payloads],
    )
    .await?;
    let mut names = queues.clone();
    names.sort_unstable();
    names.dedup();
    c.execute(
        &format!("INSERT INTO {s}.queues(name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"),
        &[&names],
    )
    .await?;
    Ok(())
}

/// Signals the push channel that jobs were added at the back of their queues (a promotion, a
/// unique or debounced push, a periodic tick); delivered when the surrounding transaction
/// commits. Fetch hints stay: the new rows are past them.
pub(crate) async fn notify_back(
    c: &impl GenericClient,
    channel: &str,
) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!("NOTIFY {channel}")).await
}

/// The notification payload that says jobs were put at the front of a queue (below the
/// fetch hints): listeners drop their hints.
pub(crate) const FRONT: &str = "front";

/// Signals the push channel that jobs were put back at the front of their queues (or moved
/// there by an operator); delivered when the surrounding transaction commits. Listeners drop
/// their fetch hints, so those jobs are fetched next.
pub(crate) async fn notify(
    c: &impl GenericClient,
    channel: &str,
) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!("NOTIFY {channel}, '{FRONT}'"))
        .await
}

impl PostgresBroker {
    /// One fetch pass: up to `max` jobs, queue by queue in the order given, each batch one
    /// statement (`FOR UPDATE SKIP LOCKED`: rows another fetch is taking are skipped, not
    /// waited for). Each job gets a fencing token from the sequence.
    ///
    /// A fetch starts past the last position this broker took from the queue (its hint), so
    /// it does not walk the index entries of the rows already taken: until vacuum removes
    /// them, those lie at the front of `jobs_waiting`, and with a million-job backlog walking
    /// them halved the drain rate. Jobs put back at the front (a release, a recovery) sit
    /// below the hint; a fetch that comes back short looks from the front for the rest, and
    /// at least every [`FULL_SCAN_EVERY`] a fetch starts from the front anyway, so such a job
    /// waits at most that long behind a deep queue.
    async fn fetch_once(
        &self,
        identity: &str,
        queues: &[String],
        max: usize,
    ) -> BrokerResult<Vec<Fetched>> {
        let s = &self.inner.s;
        let c = self.fetch_client().await?;
        let take = |after: &str| {
            format!(
                "WITH picked AS (
                   SELECT id FROM {s}.jobs WHERE state = {QUEUED} AND queue = $1{after}
                   ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED)
                 UPDATE {s}.jobs j SET state = {IN_FLIGHT}, owner = $3,
                   token = nextval('{s}.positions'),
                   score = extract(epoch FROM clock_timestamp())
                 FROM picked WHERE j.id = picked.id
                 RETURNING j.id, j.payload, j.token, j.seq"
            )
        };
        let from_front = c.prepare_cached(&take("")).await.map_err(pg_err)?;
        let past_hint = c
            .prepare_cached(&take(" AND seq > $4"))
            .await
            .map_err(pg_err)?;
        let mut out = Vec::new();
        for queue in queues {
            let left = max - out.len();
            if left == 0 {
                break;
            }
            let hint = self
                .inner
                .fetch_hints
                .lock()
                .ok()
                .and_then(|h| h.get(queue).copied())
                .filter(|(_, front)| front.elapsed() < FULL_SCAN_EVERY);
            let mut rows = match hint {
                Some((after, _)) => c
                    .query(&past_hint, &[queue, &(left as i64), &identity, &after])
                    .await
                    .map_err(pg_err)?,
                None => Vec::new(),
            };
            let mut front = None;
            if rows.len() < left {
                let more = c
                    .query(
                        &from_front,
                        &[queue, &((left - rows.len()) as i64), &identity],
                    )
                    .await
                    .map_err(pg_err)?;
                rows.extend(more);
                front = Some(Instant::now());
            }
            let mut batch: Vec<(i64, Fetched)> = rows
                .iter()
                .map(|r| {
                    let id: i64 = r.get(0);
                    let token: i64 = r.get(2);
                    (
                        r.get::<_, i64>(3),
                        Fetched {
                            queue: queue.clone(),
                            raw: r.get(1),
                            location: location(id, identity),
                            token: token as u64,
                        },
                    )
                })
                .collect();
            batch.sort_by_key(|(seq, _)| *seq);
            if let Ok(mut hints) = self.inner.fetch_hints.lock() {
                let last = batch.last().map(|(seq, _)| *seq);
                let old = hints.get(queue).copied();
                let after = last
                    .into_iter()
                    .chain(old.map(|(a, _)| a))
                    .max()
                    .unwrap_or(i64::MIN);
                let front = front.or(old.map(|(_, f)| f)).unwrap_or_else(Instant::now);
                hints.insert(queue.clone(), (after, front));
            }
            out.extend(batch.into_iter().map(|(_, f)| f));
        }
        Ok(out)
    }

    /// Ends every job of `acks` (all [`Completion::Ack`]) in one statement: each row only if
    /// it is still this attempt's (same owner and fencing token), deleted, or marked finished
    /// when finished rows are kept. Returns, in order, whether each was still held.
    async fn ack_all(&self, acks: &[Completion<'_>]) -> BrokerResult<Vec<bool>> {
        let s = &self.inner.s;
        let mut ids = Vec::with_capacity(acks.len());
        let mut owners = Vec::with_capacity(acks.len());
        let mut tokens = Vec::with_capacity(acks.len());
        for done in acks {
            let job = done.job();
            // An unreadable location matches no row (id 0 is never used).
            let (id, owner) = parse_location(&job.location).unwrap_or((0, ""));
            ids.push(id);
            owners.push(owner);
            tokens.push(job.token as i64);
        }
        let matched = format!(
            "j.id = a.id AND j.state = {IN_FLIGHT} AND j.owner = a.owner AND j.token = a.token"
        );
        let sql = match self.inner.keep_finished {
            None => format!(
                "DELETE FROM {s}.jobs j
                 USING unnest($1::bigint[], $2::text[], $3::bigint[]) AS a(id, owner, token)
                 WHERE {matched} RETURNING j.id, j.token"
            ),
            Some(_) => format!(
                "UPDATE {s}.jobs j SET state = {FINISHED}, score = {NOW}, owner = NULL
                 FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS a(id, owner, token)
                 WHERE {matched} RETURNING j.id, j.token"
            ),
        };
        let c = self.fetch_client().await?;
        let stmt = c.prepare_cached(&sql).await.map_err(pg_err)?;
        let rows = c
            .query(&stmt, &[&ids, &owners, &tokens])
            .await
            .map_err(pg_err)?;
        let mut ended: std::collections::HashSet<(i64, i64)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        // An attempt is its row and its token (a stale attempt of the same row in the same
        // batch has another); `remove` keeps a repeated entry from counting twice.
        Ok(ids
            .iter()
            .zip(&tokens)
            .map(|(id, token)| ended.remove(&(*id, *token)))
            .collect())
    }

    /// Deletes finished rows that finished before `before`, oldest first, in batches of
    /// [`PRUNE_BATCH`] (each its own short statement: no long lock, no huge transaction), at
    /// most [`PRUNE_BATCHES`] per call; run by the process holding the promotion turn.
    /// Returns how many rows went.
    pub(crate) async fn prune_finished(&self, before: f64) -> BrokerResult<u64> {
        let s = &self.inner.s;
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "DELETE FROM {s}.jobs WHERE id IN (SELECT id FROM {s}.jobs
                   WHERE state = {FINISHED} AND score < $1 ORDER BY score LIMIT $2)"
            ))
            .await
            .map_err(pg_err)?;
        let mut pruned = 0;
        for _ in 0..PRUNE_BATCHES {
            let n = c
                .execute(&stmt, &[&before, &PRUNE_BATCH])
                .await
                .map_err(pg_err)?;
            pruned += n;
            if (n as i64) < PRUNE_BATCH {
                break;
            }
        }
        if pruned > 0 {
            tracing::debug!(pruned, "pruned finished jobs");
        }
        Ok(pruned)
    }

    /// Deletes expired batches with their members and edges, [`batch::PRUNE_BATCH`] per
    /// statement, at most [`batch::PRUNE_ROUNDS`] statements per call (on the server's clock,
    /// as batches are); run by the process holding the promotion turn. Returns how many went.
    pub(crate) async fn prune_batches(&self) -> BrokerResult<u64> {
        let c = self.client().await?;
        let mut pruned = 0;
        for _ in 0..batch::PRUNE_ROUNDS {
            let n = batch::prune(&c, &self.inner.s).await.map_err(pg_err)?;
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

    /// Whether any of `queues` has a job waiting (one index probe each).
    async fn has_queued(&self, queues: &[String]) -> BrokerResult<bool> {
        let s = &self.inner.s;
        let c = self.client().await?;
        let row = c
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {s}.jobs WHERE state = {QUEUED} AND queue = ANY($1))"
                ),
                &[&queues],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.get(0))
    }
}

#[async_trait]
impl JobQueue for PostgresBroker {
    /// One statement, so one round trip and one commit: the rows and the queue names
    /// together; the fleet's idle fetches are woken after the commit
    /// (`wake_fleet`).
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let s = &self.inner.s;
        let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
        let payloads: Vec<&str> = jobs.iter().map(|j| j.payload.as_str()).collect();
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "WITH added AS (
                   INSERT INTO {s}.jobs(state, queue, seq, payload)
                   SELECT {QUEUED}, q, nextval('{s}.positions'), p
                   FROM (SELECT q, p FROM unnest($1::text[], $2::text[])
                         WITH ORDINALITY AS t(q, p, i) ORDER BY i) ordered
                   RETURNING 1),
                 named AS (
                   INSERT INTO {s}.queues(name) SELECT DISTINCT unnest($1::text[])
                   ON CONFLICT DO NOTHING RETURNING 1)
                 SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM named)"
            ))
            .await
            .map_err(pg_err)?;
        c.query_one(&stmt, &[&queues, &payloads])
            .await
            .map_err(pg_err)?;
        self.wake_local();
        self.wake_fleet();
        Ok(())
    }

    async fn push_scheduled(&self, jobs: &[ScheduledJob]) -> BrokerResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        for j in jobs {
            add_member(&*tx, &self.inner.s, state::SCHEDULE, j.at, &j.payload)
                .await
                .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        if req.queues.is_empty() || req.max == 0 {
            return Ok(Vec::new());
        }
        self.listen();
        let deadline = Instant::now() + req.wait;
        // Look at once, and after each notification; after a quiet safety poll, a cheap
        // existence probe first.
        let mut woken = true;
        loop {
            // Listen before looking, so a push between the look and the wait is not missed.
            let pushed = self.inner.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            if woken || self.has_queued(req.queues).await? {
                let jobs = self.fetch_once(req.identity, req.queues, req.max).await?;
                if !jobs.is_empty() {
                    return Ok(jobs);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            woken = tokio::select! {
                _ = pushed => true,
                _ = tokio::time::sleep(left.min(SAFETY_POLL)) => false,
            };
        }
    }

    /// A batch of acks only (the common case) is one statement, so one round trip and one
    /// commit whatever its size; a batch with settles is one transaction.
    async fn complete_many(&self, batch: &[Completion<'_>]) -> BrokerResult<Vec<bool>> {
        if batch.iter().all(|c| matches!(c, Completion::Ack(_))) {
            return self.ack_all(batch).await;
        }
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        // The row must still be this attempt's: same owner and same fencing token, so a stale
        // attempt cannot complete a later fetch of the same job.
        let delete = tx
            .prepare_cached(&format!(
                "DELETE FROM {s}.jobs WHERE id = $1 AND state = {IN_FLIGHT} AND owner = $2 AND token = $3"
            ))
            .await
            .map_err(pg_err)?;
        // With finished rows kept, a success marks the row instead (same ownership check).
        let finish = match self.inner.keep_finished {
            Some(_) => Some(
                tx.prepare_cached(&format!(
                    "UPDATE {s}.jobs SET state = {FINISHED}, score = {NOW}, owner = NULL
                     WHERE id = $1 AND state = {IN_FLIGHT} AND owner = $2 AND token = $3"
                ))
                .await
                .map_err(pg_err)?,
            ),
            None => None,
        };
        let mut held = Vec::with_capacity(batch.len());
        for done in batch {
            let job = done.job();
            let Some((id, owner)) = parse_location(&job.location) else {
                held.push(false);
                continue;
            };
            let stmt = match (done, &finish) {
                (Completion::Ack(_), Some(finish)) => finish,
                _ => &delete,
            };
            let n = tx
                .execute(stmt, &[&id, &owner, &(job.token as i64)])
                .await
                .map_err(pg_err)?;
            if n == 0 {
                held.push(false);
                continue;
            }
            if let Completion::Settle(_, to) = done {
                match to {
                    Settle::Retry { payload, at } => {
                        add_member(&*tx, s, state::RETRY, *at, payload).await
                    }
                    Settle::Scheduled { payload, at } => {
                        add_member(&*tx, s, state::SCHEDULE, *at, payload).await
                    }
                    Settle::Dead {
                        payload,
                        now,
                        limits,
                    } => bury(&*tx, s, payload, *now, limits).await,
                }
                .map_err(pg_err)?;
            }
            held.push(true);
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(held)
    }

    async fn release(&self, job: &Fetched) -> BrokerResult<bool> {
        let Some((id, owner)) = parse_location(&job.location) else {
            return Ok(false);
        };
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE {s}.jobs SET state = {QUEUED}, owner = NULL, score = 0,
                       seq = (SELECT coalesce(min(seq), 1) - 1 FROM {s}.jobs
                              WHERE state = {QUEUED} AND queue = $4)
                     WHERE id = $1 AND state = {IN_FLIGHT} AND owner = $2 AND token = $3"
                ),
                &[&id, &owner, &(job.token as i64), &job.queue],
            )
            .await
            .map_err(pg_err)?;
        if n == 1 {
            notify(&*tx, &self.inner.channel).await.map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        if n == 1 {
            self.notify_pushed();
        }
        Ok(n == 1)
    }

    /// The server's clock: every process of the fleet reads the same one.
    async fn now(&self) -> BrokerResult<f64> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
            .await
            .map_err(pg_err)?;
        Ok(row.get(0))
    }

    async fn promote_due(&self, now: f64, profile: WireProfile) -> BrokerResult<usize> {
        let s = &self.inner.s;
        let mut moved = 0;
        for set in [state::RETRY, state::SCHEDULE] {
            loop {
                let mut c = self.client().await?;
                let tx = c.transaction().await.map_err(pg_err)?;
                let due = tx
                    .query(
                        &format!(
                            "SELECT id, payload FROM {s}.jobs WHERE state = $1 AND score <= $2
                             ORDER BY score, payload COLLATE \"C\" LIMIT $3 FOR UPDATE SKIP LOCKED"
                        ),
                        &[&set, &now, &PROMOTE_BATCH],
                    )
                    .await
                    .map_err(pg_err)?;
                let n = due.len();
                for row in &due {
                    let (id, raw): (i64, String) = (row.get(0), row.get(1));
                    let (queue, payload) = match Payload::parse(&raw) {
                        Ok(mut p) => {
                            p.stamp_enqueued(profile, now);
                            (p.queue().to_string(), p.to_json())
                        }
                        // Unreadable entries go to `default` unchanged, where the worker files
                        // them in the dead set with the reason.
                        Err(_) => ("default".to_string(), raw),
                    };
                    tx.execute(
                        &format!(
                            "UPDATE {s}.jobs SET state = {QUEUED}, queue = $2,
                               seq = nextval('{s}.positions'), score = 0, member = 0,
                               payload = $3 WHERE id = $1"
                        ),
                        &[&id, &queue, &payload],
                    )
                    .await
                    .map_err(pg_err)?;
                    tx.execute(
                        &format!("INSERT INTO {s}.queues(name) VALUES ($1) ON CONFLICT DO NOTHING"),
                        &[&queue],
                    )
                    .await
                    .map_err(pg_err)?;
                }
                if n > 0 {
                    notify_back(&*tx, &self.inner.channel)
                        .await
                        .map_err(pg_err)?;
                }
                tx.commit().await.map_err(pg_err)?;
                moved += n;
                if (n as i64) < PROMOTE_BATCH {
                    break;
                }
            }
        }
        if moved > 0 {
            self.wake_local();
        }
        if let Some(keep) = self.inner.keep_finished {
            self.prune_finished(now - keep).await?;
        }
        self.prune_batches().await?;
        Ok(moved)
    }
}
