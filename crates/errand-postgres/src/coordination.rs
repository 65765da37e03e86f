//! Coordination primitives on PostgreSQL ([`Coordination`]), each one transaction on the
//! server's clock. Read-then-write steps on one key (a permit set, a rate limit, a debounce
//! key) first take a transaction-scoped advisory lock on that key, so they are atomic under
//! READ COMMITTED as a Lua script is on Redis; different keys never wait on each other.
//! Batches lock their batch's row instead (see `crate::batch`).

use crate::PostgresBroker;
use crate::batch;
use crate::broker::pg_err;
use crate::fleet::NOW;
use crate::queue::{add_member, enqueue, notify_back};
use crate::schema::state;
use crate::schema::state::{QUEUED, RETRY, SCHEDULE};
use async_trait::async_trait;
use errand_core::BrokerError;
use errand_core::broker::{
    BatchFired, BatchRecord, BatchStatus, MemberState, NewBatch, ScheduledJob,
};
use errand_core::broker::{
    BrokerResult, Cancelled, Capabilities, Coordination, Enqueue, FENCE_GRACE, OnceClaim,
    OnceCompletion, OnceRequest, PeriodicEntry, PeriodicRecord, PermitGrant, PermitRenewal,
    PermitRequest, RateKind, RateRequest, ReplacePush, TickClaim, UniquePush, UniquePushed,
    has_jid, work_has_jid,
};
use std::time::Duration;
use tokio_postgres::GenericClient;

/// Takes the transaction-scoped advisory lock of `key` in namespace `what`.
async fn lock(c: &impl GenericClient, what: &str, key: &str) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))",
        &[&what, &key],
    )
    .await?;
    Ok(())
}

async fn server_now(c: &impl GenericClient) -> Result<f64, tokio_postgres::Error> {
    crate::fleet::now(c).await
}

impl PostgresBroker {
    /// Adds one job at the back of `queue` inside `tx` and wakes the fleet's idle fetches at
    /// its commit (unique, debounced and periodic pushes).
    async fn enqueue_one(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        queue: &str,
        payload: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let job = Enqueue {
            queue: queue.to_string(),
            payload: payload.to_string(),
        };
        enqueue(tx, &self.inner.s, &[job]).await?;
        notify_back(tx, &self.inner.channel).await
    }
}

#[async_trait]
impl Coordination for PostgresBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    async fn once_claim(&self, req: OnceRequest<'_>) -> BrokerResult<OnceClaim> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        lock(&*tx, "once", req.key).await.map_err(pg_err)?;
        let held = tx
            .query_opt(
                &format!(
                    "SELECT owner, output FROM {s}.once_steps WHERE key = $1 AND expires_at > {NOW}"
                ),
                &[&req.key],
            )
            .await
            .map_err(pg_err)?;
        if let Some(row) = held {
            let (holder, output): (String, Option<String>) = (row.get(0), row.get(1));
            if let Some(output) = output {
                return Ok(OnceClaim::Done(output));
            }
            if holder != req.owner {
                return Ok(OnceClaim::Busy);
            }
        }
        let ttl = req.ttl.as_secs_f64();
        tx.execute(
            &format!(
                "INSERT INTO {s}.once_steps(key, owner, output, expires_at)
                 VALUES ($1, $2, NULL, {NOW} + $3)
                 ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, output = NULL,
                   expires_at = excluded.expires_at"
            ),
            &[&req.key, &req.owner, &ttl],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(OnceClaim::Claimed)
    }

    async fn once_renew(&self, req: OnceRequest<'_>) -> BrokerResult<bool> {
        let s = &self.inner.s;
        let ttl = req.ttl.as_secs_f64();
        let n = self
            .client()
            .await?
            .execute(
                &format!(
                    "UPDATE {s}.once_steps SET expires_at = {NOW} + $3
                     WHERE key = $1 AND owner = $2 AND output IS NULL AND expires_at > {NOW}"
                ),
                &[&req.key, &req.owner, &ttl],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    async fn once_complete(&self, done: OnceCompletion<'_>) -> BrokerResult<bool> {
        let s = &self.inner.s;
        let keep = done.keep.as_secs_f64();
        let n = self
            .client()
            .await?
            .execute(
                &format!(
                    "UPDATE {s}.once_steps SET output = $3, expires_at = {NOW} + $4
                     WHERE key = $1 AND owner = $2 AND output IS NULL AND expires_at > {NOW}"
                ),
                &[&done.key, &done.owner, &done.output, &keep],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()> {
        let s = &self.inner.s;
        self.client()
            .await?
            .execute(
                &format!(
                    "DELETE FROM {s}.once_steps WHERE key = $1 AND owner = $2 AND output IS NULL"
                ),
                &[&key, &owner],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn permit_acquire(&self, req: PermitRequest<'_>) -> BrokerResult<PermitGrant> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        lock(&*tx, "permit", req.key).await.map_err(pg_err)?;
        let at = server_now(&*tx).await.map_err(pg_err)?;
        tx.execute(
            &format!("DELETE FROM {s}.leases WHERE key = $1 AND expires_at <= $2"),
            &[&req.key, &at],
        )
        .await
        .map_err(pg_err)?;
        let rows = tx
            .query(
                &format!("SELECT holder FROM {s}.leases WHERE key = $1 ORDER BY expires_at"),
                &[&req.key],
            )
            .await
            .map_err(pg_err)?;
        let holders: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if !holders.iter().any(|h| h == req.holder) && holders.len() as u64 >= u64::from(req.max) {
            return Ok(PermitGrant::Full {
                holder: holders.first().cloned().unwrap_or_default(),
            });
        }
        let ttl = req.ttl.as_secs_f64();
        tx.execute(
            &format!(
                "INSERT INTO {s}.leases(key, holder, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key, holder) DO UPDATE SET expires_at = excluded.expires_at"
            ),
            &[&req.key, &req.holder, &(at + ttl)],
        )
        .await
        .map_err(pg_err)?;
        let token: i64 = if req.fence {
            // The larger of the last token plus one and the time in ms: tokens grow even
            // after the row expired and went (see FENCE_GRACE). Expired rows go, a few at a
            // time.
            tx.execute(
                &format!(
                    "DELETE FROM {s}.fences WHERE key IN
                     (SELECT key FROM {s}.fences WHERE expires_at < $1 LIMIT 100)"
                ),
                &[&at],
            )
            .await
            .map_err(pg_err)?;
            tx.query_one(
                &format!(
                    "INSERT INTO {s}.fences AS f (key, last, expires_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET last = greatest(f.last + 1, excluded.last),
                       expires_at = excluded.expires_at
                     RETURNING last"
                ),
                &[
                    &req.key,
                    &((at * 1000.0).floor() as i64),
                    &(at + ttl + FENCE_GRACE.as_secs_f64()),
                ],
            )
            .await
            .map_err(pg_err)?
            .get(0)
        } else {
            0
        };
        tx.commit().await.map_err(pg_err)?;
        Ok(PermitGrant::Granted {
            token: token as u64,
        })
    }

    async fn push_unique(&self, req: UniquePush<'_>) -> BrokerResult<UniquePushed> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        lock(&*tx, "permit", req.key).await.map_err(pg_err)?;
        let at = server_now(&*tx).await.map_err(pg_err)?;
        tx.execute(
            &format!("DELETE FROM {s}.leases WHERE key = $1 AND expires_at <= $2"),
            &[&req.key, &at],
        )
        .await
        .map_err(pg_err)?;
        let holder: Option<String> = tx
            .query_opt(
                &format!(
                    "SELECT holder FROM {s}.leases WHERE key = $1 ORDER BY expires_at LIMIT 1"
                ),
                &[&req.key],
            )
            .await
            .map_err(pg_err)?
            .map(|r| r.get(0));
        match holder {
            Some(h) if h == req.jid => return Ok(UniquePushed::Pushed),
            Some(holder) => return Ok(UniquePushed::Duplicate { holder }),
            None => {}
        }
        tx.execute(
            &format!("INSERT INTO {s}.leases(key, holder, expires_at) VALUES ($1, $2, $3)"),
            &[&req.key, &req.jid, &(at + req.ttl.as_secs_f64())],
        )
        .await
        .map_err(pg_err)?;
        match req.at {
            Some(when) => add_member(&*tx, s, SCHEDULE, when, req.payload).await,
            None => self.enqueue_one(&tx, req.queue, req.payload).await,
        }
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        if req.at.is_none() {
            self.wake_local();
        }
        Ok(UniquePushed::Pushed)
    }

    async fn permit_renew(&self, req: PermitRenewal<'_>) -> BrokerResult<bool> {
        let s = &self.inner.s;
        let ttl = req.ttl.as_secs_f64();
        let n = self
            .client()
            .await?
            .execute(
                &format!(
                    "UPDATE {s}.leases SET expires_at = {NOW} + $3
                     WHERE key = $1 AND holder = $2 AND expires_at > {NOW}"
                ),
                &[&req.key, &req.holder, &ttl],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    async fn permit_release(&self, key: &str, holder: &str) -> BrokerResult<bool> {
        let s = &self.inner.s;
        let n = self
            .client()
            .await?
            .execute(
                &format!(
                    "DELETE FROM {s}.leases WHERE key = $1 AND holder = $2 AND expires_at > {NOW}"
                ),
                &[&key, &holder],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    async fn permit_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>> {
        let s = &self.inner.s;
        Ok(self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT holder, expires_at FROM {s}.leases WHERE key = $1
                     AND expires_at > {NOW} ORDER BY expires_at"
                ),
                &[&key],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn periodic_upsert(&self, entries: &[PeriodicEntry], now: f64) -> BrokerResult<()> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        for e in entries {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.periodic(name, spec, zone, queue, template, missed,
                       last_tick, seen_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                     ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, zone = excluded.zone,
                       queue = excluded.queue, template = excluded.template,
                       missed = excluded.missed, seen_at = excluded.seen_at"
                ),
                &[
                    &e.name,
                    &e.spec,
                    &e.zone,
                    &e.queue,
                    &e.template,
                    &e.missed,
                    &now,
                ],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    async fn periodic_list(&self) -> BrokerResult<Vec<PeriodicRecord>> {
        let s = &self.inner.s;
        Ok(self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT name, spec, zone, queue, template, missed, paused, last_tick,
                       last_jid, last_run, seen_at
                     FROM {s}.periodic ORDER BY name COLLATE \"C\""
                ),
                &[],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| PeriodicRecord {
                entry: PeriodicEntry {
                    name: r.get(0),
                    spec: r.get(1),
                    zone: r.get(2),
                    queue: r.get(3),
                    template: r.get(4),
                    missed: r.get(5),
                },
                paused: r.get(6),
                last_tick: r.get(7),
                last_jid: r.get(8),
                last_run: r.get(9),
                seen_at: r.get(10),
            })
            .collect())
    }

    async fn periodic_pause(&self, name: &str, paused: bool) -> BrokerResult<bool> {
        let s = &self.inner.s;
        let n = self
            .client()
            .await?
            .execute(
                &format!("UPDATE {s}.periodic SET paused = $2 WHERE name = $1"),
                &[&name, &paused],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    async fn periodic_claim(&self, claim: TickClaim<'_>) -> BrokerResult<bool> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        // One conditional UPDATE: of two claims of one tick, the second finds it taken.
        let won = tx
            .execute(
                &format!(
                    "UPDATE {s}.periodic SET last_tick = $2, last_jid = $3, last_run = $4
                     WHERE name = $1 AND NOT paused AND last_tick < $2"
                ),
                &[&claim.name, &claim.at, &claim.jid, &claim.now],
            )
            .await
            .map_err(pg_err)?
            == 1;
        if won {
            self.enqueue_one(&tx, claim.queue, claim.payload)
                .await
                .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        if won {
            self.wake_local();
        }
        Ok(won)
    }

    async fn periodic_prune(&self, before: f64) -> BrokerResult<usize> {
        let s = &self.inner.s;
        let n = self
            .client()
            .await?
            .execute(
                &format!("DELETE FROM {s}.periodic WHERE seen_at < $1"),
                &[&before],
            )
            .await
            .map_err(pg_err)?;
        Ok(n as usize)
    }

    async fn rate_take(&self, req: RateRequest<'_>) -> BrokerResult<Option<Duration>> {
        let s = &self.inner.s;
        let (limit, interval) = (i64::from(req.limit), req.interval.as_secs_f64().max(0.001));
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        lock(&*tx, "rate", req.key).await.map_err(pg_err)?;
        let at = server_now(&*tx).await.map_err(pg_err)?;
        let wait = match req.kind {
            RateKind::Bucket => {
                let slot = (at / interval).floor() as i64;
                let count: i64 = tx
                    .query_opt(
                        &format!("SELECT count FROM {s}.rate_buckets WHERE key = $1 AND slot = $2"),
                        &[&req.key, &slot],
                    )
                    .await
                    .map_err(pg_err)?
                    .map_or(0, |r| r.get(0));
                if count >= limit {
                    Some((slot + 1) as f64 * interval - at)
                } else {
                    tx.execute(
                        &format!(
                            "INSERT INTO {s}.rate_buckets(key, slot, count) VALUES ($1, $2, $3)
                             ON CONFLICT (key) DO UPDATE SET slot = excluded.slot,
                               count = excluded.count"
                        ),
                        &[&req.key, &slot, &(count + 1)],
                    )
                    .await
                    .map_err(pg_err)?;
                    None
                }
            }
            RateKind::Window => {
                tx.execute(
                    &format!("DELETE FROM {s}.rate_uses WHERE key = $1 AND at <= $2"),
                    &[&req.key, &(at - interval)],
                )
                .await
                .map_err(pg_err)?;
                let row = tx
                    .query_one(
                        &format!("SELECT count(*), min(at) FROM {s}.rate_uses WHERE key = $1"),
                        &[&req.key],
                    )
                    .await
                    .map_err(pg_err)?;
                let (count, oldest): (i64, Option<f64>) = (row.get(0), row.get(1));
                if count >= limit {
                    Some(oldest.unwrap_or(at) + interval - at)
                } else {
                    tx.execute(
                        &format!("INSERT INTO {s}.rate_uses(key, at) VALUES ($1, $2)"),
                        &[&req.key, &at],
                    )
                    .await
                    .map_err(pg_err)?;
                    None
                }
            }
        };
        tx.commit().await.map_err(pg_err)?;
        Ok(wait.map(|w| Duration::from_secs_f64(w.max(0.001))))
    }

    async fn refusal_add(&self, limiter: &str) -> BrokerResult<()> {
        let s = &self.inner.s;
        self.client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {s}.limit_hits AS h (name, hits) VALUES ($1, 1)
                     ON CONFLICT (name) DO UPDATE SET hits = h.hits + 1"
                ),
                &[&limiter],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn refusal_counts(&self) -> BrokerResult<Vec<(String, u64)>> {
        let s = &self.inner.s;
        Ok(self
            .client()
            .await?
            .query(
                &format!("SELECT name, hits FROM {s}.limit_hits ORDER BY name COLLATE \"C\""),
                &[],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
            .collect())
    }

    async fn cancel_job(&self, jid: &str, keep: Duration) -> BrokerResult<Cancelled> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        tx.execute(
            &format!("DELETE FROM {s}.cancels WHERE expires_at <= {NOW}"),
            &[],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            &format!(
                "INSERT INTO {s}.cancels(jid, expires_at) VALUES ($1, {NOW} + $2)
                 ON CONFLICT (jid) DO UPDATE SET expires_at = excluded.expires_at"
            ),
            &[&jid, &keep.as_secs_f64()],
        )
        .await
        .map_err(pg_err)?;
        // Candidates by substring, each checked for real; the row locked so it is removed or
        // fetched, never both (a fetch skips a locked row).
        let rows = tx
            .query(
                &format!(
                    "SELECT id, state, queue, payload FROM {s}.jobs
                     WHERE state IN ({QUEUED}, {SCHEDULE}, {RETRY}) AND strpos(payload, $1) > 0
                     FOR UPDATE SKIP LOCKED"
                ),
                &[&jid],
            )
            .await
            .map_err(pg_err)?;
        for row in rows {
            let (id, st, queue, payload): (i64, i16, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if !has_jid(&payload, jid) {
                continue;
            }
            tx.execute(&format!("DELETE FROM {s}.jobs WHERE id = $1"), &[&id])
                .await
                .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            // A waiting job of a batch will not run: it is dead to its batch.
            errand_core::broker::record_removed(self, &payload).await?;
            return Ok(match st {
                state::SCHEDULE => Cancelled::Scheduled,
                state::RETRY => Cancelled::Retrying,
                _ => Cancelled::Queued(queue),
            });
        }
        let work = tx
            .query(
                &format!(
                    "SELECT w.identity, w.json FROM {s}.work w JOIN {s}.processes p USING (identity)
                     WHERE p.expires_at > {NOW} AND strpos(w.json, $1) > 0"
                ),
                &[&jid],
            )
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        for row in work {
            let (identity, json): (String, String) = (row.get(0), row.get(1));
            if work_has_jid(&json, jid) {
                return Ok(Cancelled::Running(identity));
            }
        }
        Ok(Cancelled::NotFound)
    }

    async fn cancelled(&self, jids: &[&str]) -> BrokerResult<Vec<bool>> {
        if jids.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.inner.s;
        let marked: Vec<String> = self
            .client()
            .await?
            .query(
                &format!("SELECT jid FROM {s}.cancels WHERE jid = ANY($1) AND expires_at > {NOW}"),
                &[&jids],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(jids.iter().map(|j| marked.iter().any(|m| m == j)).collect())
    }

    async fn push_replacing(&self, req: ReplacePush<'_>) -> BrokerResult<Option<String>> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        lock(&*tx, "debounce", req.key).await.map_err(pg_err)?;
        let prev = tx
            .query_opt(
                &format!(
                    "SELECT jid, job_id, payload FROM {s}.debounce_keys
                     WHERE key = $1 AND expires_at > {NOW}"
                ),
                &[&req.key],
            )
            .await
            .map_err(pg_err)?;
        let mut replaced = None;
        if let Some(row) = prev {
            let (jid, id, payload): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
            let n = tx
                .execute(
                    &format!(
                        "DELETE FROM {s}.jobs WHERE id = $1 AND state IN ({QUEUED}, {SCHEDULE})
                         AND payload = $2"
                    ),
                    &[&id, &payload],
                )
                .await
                .map_err(pg_err)?;
            if n == 1 {
                replaced = Some(jid);
            }
        }
        let id: i64 = match req.at {
            Some(at) => {
                add_member(&*tx, s, SCHEDULE, at, req.payload)
                    .await
                    .map_err(pg_err)?;
                tx.query_one(
                    &format!(
                        "SELECT id FROM {s}.jobs WHERE state = {SCHEDULE}
                         AND member = hashtextextended($1, 0) AND payload = $1"
                    ),
                    &[&req.payload],
                )
                .await
                .map_err(pg_err)?
                .get(0)
            }
            None => {
                self.enqueue_one(&tx, req.queue, req.payload)
                    .await
                    .map_err(pg_err)?;
                tx.query_one(
                    &format!(
                        "SELECT max(id) FROM {s}.jobs WHERE state = {QUEUED} AND queue = $1
                         AND payload = $2"
                    ),
                    &[&req.queue, &req.payload],
                )
                .await
                .map_err(pg_err)?
                .get(0)
            }
        };
        tx.execute(
            &format!(
                "INSERT INTO {s}.debounce_keys(key, jid, job_id, payload, expires_at)
                 VALUES ($1, $2, $3, $4, {NOW} + $5)
                 ON CONFLICT (key) DO UPDATE SET jid = excluded.jid, job_id = excluded.job_id,
                   payload = excluded.payload, expires_at = excluded.expires_at"
            ),
            &[
                &req.key,
                &req.jid,
                &id,
                &req.payload,
                &req.ttl.as_secs_f64(),
            ],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        if req.at.is_none() {
            self.wake_local();
        }
        Ok(replaced)
    }

    async fn result_put(&self, jid: &str, value: &str, keep: Duration) -> BrokerResult<()> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        // Expired results go in small batches, so no put pays for a big backlog.
        tx.execute(
            &format!(
                "DELETE FROM {s}.results WHERE jid IN
                   (SELECT jid FROM {s}.results WHERE expires_at <= {NOW} LIMIT 100)"
            ),
            &[],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            &format!(
                "INSERT INTO {s}.results(jid, value, expires_at) VALUES ($1, $2, {NOW} + $3)
                 ON CONFLICT (jid) DO UPDATE SET value = excluded.value,
                   expires_at = excluded.expires_at"
            ),
            &[&jid, &value, &keep.as_secs_f64()],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    async fn result_get(&self, jid: &str) -> BrokerResult<Option<String>> {
        let s = &self.inner.s;
        Ok(self
            .client()
            .await?
            .query_opt(
                &format!("SELECT value FROM {s}.results WHERE jid = $1 AND expires_at > {NOW}"),
                &[&jid],
            )
            .await
            .map_err(pg_err)?
            .map(|r| r.get(0)))
    }

    async fn batch_create(&self, new: &NewBatch<'_>) -> BrokerResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        if !batch::create(&tx, &self.inner.s, new)
            .await
            .map_err(pg_err)?
        {
            let parent = new.parent.unwrap_or_default().to_string();
            return Err(BrokerError::BatchClosed(parent));
        }
        tx.commit().await.map_err(pg_err)
    }

    async fn batch_add(
        &self,
        bid: &str,
        jids: &[&str],
        now: &[Enqueue],
        later: &[ScheduledJob],
    ) -> BrokerResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        if !batch::add(&tx, &self.inner.s, bid, jids, now, later)
            .await
            .map_err(pg_err)?
        {
            return Err(BrokerError::BatchClosed(bid.to_string()));
        }
        tx.commit().await.map_err(pg_err)?;
        if !now.is_empty() {
            // At the back of their queues: the fetch hints stay.
            self.wake_local();
            self.wake_fleet();
        }
        Ok(())
    }

    async fn batch_record(&self, record: BatchRecord<'_>) -> BrokerResult<BatchFired> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let fired = batch::record(&tx, &self.inner.s, &record)
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        if fired.released > 0 || !fired.callbacks.is_empty() {
            // At the back of their queues: the fetch hints stay.
            self.wake_local();
            self.wake_fleet();
        }
        Ok(fired)
    }

    async fn batch_status(&self, bid: &str) -> BrokerResult<Option<BatchStatus>> {
        let c = self.client().await?;
        batch::get(&**c, &self.inner.s, bid).await.map_err(pg_err)
    }

    async fn batch_list(
        &self,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<(Vec<BatchStatus>, usize)> {
        let c = self.client().await?;
        batch::list(&**c, &self.inner.s, offset, limit)
            .await
            .map_err(pg_err)
    }

    async fn batch_members(
        &self,
        bid: &str,
        state: MemberState,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<Vec<String>> {
        let c = self.client().await?;
        batch::members(&**c, &self.inner.s, bid, state, offset, limit)
            .await
            .map_err(pg_err)
    }
}
