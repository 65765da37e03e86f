//! Coordination primitives on SQLite ([`Coordination`]): once-only records (`once_steps`),
//! permit sets (`leases`, `fences`), rate counters (`rate_buckets`, `rate_uses`) and refusal
//! counts (`limit_hits`), and batches (`batches`, `batch_members`, `batch_edges`: see
//! `crate::batch`), each one transaction on this machine's clock.

use crate::SqliteBroker;
use crate::batch;
use crate::rows::{add_member, enqueue, now};
use crate::schema::state;
use async_trait::async_trait;
use errand_core::BrokerError;
use errand_core::broker::ScheduledJob;
use errand_core::broker::{BatchFired, BatchRecord, BatchStatus, MemberState, NewBatch};
use errand_core::broker::{
    BrokerResult, Capabilities, Coordination, OnceClaim, OnceCompletion, OnceRequest, PermitGrant,
    PermitRenewal, PermitRequest, RateKind, RateRequest, UniquePush, UniquePushed,
};
use errand_core::broker::{Cancelled, has_jid, work_has_jid};
use errand_core::broker::{Enqueue, FENCE_GRACE, PeriodicEntry, PeriodicRecord, TickClaim};
use rusqlite::{OptionalExtension, params};
use std::time::Duration;

#[async_trait]
impl Coordination for SqliteBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    async fn once_claim(&self, req: OnceRequest<'_>) -> BrokerResult<OnceClaim> {
        let (key, owner) = (req.key.to_string(), req.owner.to_string());
        let until = now() + req.ttl.as_secs_f64();
        self.write(move |tx| {
            let held: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT owner, output FROM once_steps WHERE key = ?1 AND expires_at > ?2",
                    params![key, now()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match held {
                Some((_, Some(output))) => return Ok(OnceClaim::Done(output)),
                Some((holder, None)) if holder != owner => return Ok(OnceClaim::Busy),
                _ => {}
            }
            tx.execute(
                "INSERT INTO once_steps(key, owner, output, expires_at) VALUES (?1, ?2, NULL, ?3)
                 ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, output = NULL,
                   expires_at = excluded.expires_at",
                params![key, owner, until],
            )?;
            Ok(OnceClaim::Claimed)
        })
        .await
    }

    async fn once_renew(&self, req: OnceRequest<'_>) -> BrokerResult<bool> {
        let (key, owner) = (req.key.to_string(), req.owner.to_string());
        let until = now() + req.ttl.as_secs_f64();
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE once_steps SET expires_at = ?3
                 WHERE key = ?1 AND owner = ?2 AND output IS NULL AND expires_at > ?4",
                params![key, owner, until, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn once_complete(&self, done: OnceCompletion<'_>) -> BrokerResult<bool> {
        let (key, owner, output) = (
            done.key.to_string(),
            done.owner.to_string(),
            done.output.to_string(),
        );
        let until = now() + done.keep.as_secs_f64();
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE once_steps SET output = ?3, expires_at = ?4
                 WHERE key = ?1 AND owner = ?2 AND output IS NULL AND expires_at > ?5",
                params![key, owner, output, until, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn once_release(&self, key: &str, owner: &str) -> BrokerResult<()> {
        let (key, owner) = (key.to_string(), owner.to_string());
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM once_steps WHERE key = ?1 AND owner = ?2 AND output IS NULL",
                params![key, owner],
            )?;
            Ok(())
        })
        .await
    }

    async fn permit_acquire(&self, req: PermitRequest<'_>) -> BrokerResult<PermitGrant> {
        let (key, holder) = (req.key.to_string(), req.holder.to_string());
        let (max, ttl, fence) = (i64::from(req.max), req.ttl.as_secs_f64(), req.fence);
        self.write(move |tx| {
            let at = now();
            tx.execute(
                "DELETE FROM leases WHERE key = ?1 AND expires_at <= ?2",
                params![key, at],
            )?;
            let mine: bool = tx
                .query_row(
                    "SELECT 1 FROM leases WHERE key = ?1 AND holder = ?2",
                    params![key, holder],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !mine {
                let (held, first): (i64, Option<String>) = tx.query_row(
                    "SELECT COUNT(*), (SELECT holder FROM leases WHERE key = ?1
                                       ORDER BY expires_at LIMIT 1)
                     FROM leases WHERE key = ?1",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if held >= max {
                    return Ok(PermitGrant::Full {
                        holder: first.unwrap_or_default(),
                    });
                }
            }
            tx.execute(
                "INSERT INTO leases(key, holder, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key, holder) DO UPDATE SET expires_at = excluded.expires_at",
                params![key, holder, at + ttl],
            )?;
            let token: i64 = if fence {
                // The larger of the last token plus one and the time in ms: tokens grow even
                // after the row expired and went (see FENCE_GRACE). Expired rows go, a few at
                // a time.
                tx.execute(
                    "DELETE FROM fences WHERE rowid IN
                     (SELECT rowid FROM fences WHERE expires_at < ?1 LIMIT 100)",
                    [at],
                )?;
                tx.query_row(
                    "INSERT INTO fences(key, last, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key) DO UPDATE SET last = MAX(last + 1, excluded.last),
                                                    expires_at = excluded.expires_at
                     RETURNING last",
                    params![
                        key,
                        (at * 1000.0).floor() as i64,
                        at + ttl + FENCE_GRACE.as_secs_f64()
                    ],
                    |r| r.get(0),
                )?
            } else {
                0
            };
            Ok(PermitGrant::Granted {
                token: token as u64,
            })
        })
        .await
    }

    async fn push_unique(&self, req: UniquePush<'_>) -> BrokerResult<UniquePushed> {
        let (key, jid) = (req.key.to_string(), req.jid.to_string());
        let (queue, payload, at, ttl) = (
            req.queue.to_string(),
            req.payload.to_string(),
            req.at,
            req.ttl.as_secs_f64(),
        );
        let out = self
            .write(move |tx| {
                let t = now();
                tx.execute(
                    "DELETE FROM leases WHERE key = ?1 AND expires_at <= ?2",
                    params![key, t],
                )?;
                let holder: Option<String> = tx
                    .query_row(
                        "SELECT holder FROM leases WHERE key = ?1 ORDER BY expires_at LIMIT 1",
                        [&key],
                        |r| r.get(0),
                    )
                    .optional()?;
                match holder {
                    Some(h) if h == jid => return Ok(UniquePushed::Pushed),
                    Some(holder) => return Ok(UniquePushed::Duplicate { holder }),
                    None => {}
                }
                tx.execute(
                    "INSERT INTO leases(key, holder, expires_at) VALUES (?1, ?2, ?3)",
                    params![key, jid, t + ttl],
                )?;
                match at {
                    Some(at) => add_member(tx, state::SCHEDULE, at, &payload)?,
                    None => enqueue(tx, &[Enqueue { queue, payload }])?,
                }
                Ok(UniquePushed::Pushed)
            })
            .await?;
        if out == UniquePushed::Pushed && req.at.is_none() {
            self.notify_pushed();
        }
        Ok(out)
    }

    async fn periodic_upsert(&self, entries: &[PeriodicEntry], now: f64) -> BrokerResult<()> {
        let entries = entries.to_vec();
        self.write(move |tx| {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO periodic(name, spec, zone, queue, template, missed, last_tick, seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, zone = excluded.zone,
                     queue = excluded.queue, template = excluded.template,
                     missed = excluded.missed, seen_at = excluded.seen_at",
            )?;
            for e in &entries {
                upsert.execute(params![
                    e.name, e.spec, e.zone, e.queue, e.template, e.missed, now
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn periodic_list(&self) -> BrokerResult<Vec<PeriodicRecord>> {
        self.with(|conn| {
            conn.prepare_cached(
                "SELECT name, spec, zone, queue, template, missed, paused, last_tick, last_jid,
                        last_run, seen_at
                 FROM periodic ORDER BY name",
            )?
            .query_map([], |r| {
                Ok(PeriodicRecord {
                    entry: PeriodicEntry {
                        name: r.get(0)?,
                        spec: r.get(1)?,
                        zone: r.get(2)?,
                        queue: r.get(3)?,
                        template: r.get(4)?,
                        missed: r.get(5)?,
                    },
                    paused: r.get::<_, i64>(6)? != 0,
                    last_tick: r.get(7)?,
                    last_jid: r.get(8)?,
                    last_run: r.get(9)?,
                    seen_at: r.get(10)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn periodic_pause(&self, name: &str, paused: bool) -> BrokerResult<bool> {
        let name = name.to_string();
        self.write(move |tx| {
            Ok(tx.execute(
                "UPDATE periodic SET paused = ?2 WHERE name = ?1",
                params![name, i64::from(paused)],
            )? == 1)
        })
        .await
    }

    async fn periodic_claim(&self, claim: TickClaim<'_>) -> BrokerResult<bool> {
        let (name, jid, queue, payload) = (
            claim.name.to_string(),
            claim.jid.to_string(),
            claim.queue.to_string(),
            claim.payload.to_string(),
        );
        let (at, now) = (claim.at, claim.now);
        let claimed = self
            .write(move |tx| {
                let won = tx.execute(
                    "UPDATE periodic SET last_tick = ?2, last_jid = ?3, last_run = ?4
                     WHERE name = ?1 AND paused = 0 AND last_tick < ?2",
                    params![name, at, jid, now],
                )? == 1;
                if won {
                    enqueue(tx, &[Enqueue { queue, payload }])?;
                }
                Ok(won)
            })
            .await?;
        if claimed {
            self.notify_pushed();
        }
        Ok(claimed)
    }

    async fn periodic_prune(&self, before: f64) -> BrokerResult<usize> {
        self.write(move |tx| tx.execute("DELETE FROM periodic WHERE seen_at < ?1", [before]))
            .await
    }

    async fn permit_renew(&self, req: PermitRenewal<'_>) -> BrokerResult<bool> {
        let (key, holder) = (req.key.to_string(), req.holder.to_string());
        let ttl = req.ttl.as_secs_f64();
        self.write(move |tx| {
            let at = now();
            let n = tx.execute(
                "UPDATE leases SET expires_at = ?3
                 WHERE key = ?1 AND holder = ?2 AND expires_at > ?4",
                params![key, holder, at + ttl, at],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn permit_release(&self, key: &str, holder: &str) -> BrokerResult<bool> {
        let (key, holder) = (key.to_string(), holder.to_string());
        self.write(move |tx| {
            let n = tx.execute(
                "DELETE FROM leases WHERE key = ?1 AND holder = ?2 AND expires_at > ?3",
                params![key, holder, now()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn permit_holders(&self, key: &str) -> BrokerResult<Vec<(String, f64)>> {
        let key = key.to_string();
        self.with(move |conn| {
            conn.prepare_cached(
                "SELECT holder, expires_at FROM leases WHERE key = ?1 AND expires_at > ?2
                 ORDER BY expires_at",
            )?
            .query_map(params![key, now()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
        .await
    }

    async fn rate_take(&self, req: RateRequest<'_>) -> BrokerResult<Option<Duration>> {
        let (key, kind) = (req.key.to_string(), req.kind);
        let (limit, interval) = (i64::from(req.limit), req.interval.as_secs_f64().max(0.001));
        self.write(move |tx| {
            let at = now();
            let wait = match kind {
                RateKind::Bucket => {
                    let slot = (at / interval).floor() as i64;
                    let count: i64 = tx
                        .query_row(
                            "SELECT count FROM rate_buckets WHERE key = ?1 AND slot = ?2",
                            params![key, slot],
                            |r| r.get(0),
                        )
                        .optional()?
                        .unwrap_or(0);
                    if count >= limit {
                        Some((slot + 1) as f64 * interval - at)
                    } else {
                        tx.execute(
                            "INSERT INTO rate_buckets(key, slot, count) VALUES (?1, ?2, ?3)
                             ON CONFLICT(key) DO UPDATE SET slot = excluded.slot,
                               count = excluded.count",
                            params![key, slot, count + 1],
                        )?;
                        None
                    }
                }
                RateKind::Window => {
                    tx.execute(
                        "DELETE FROM rate_uses WHERE key = ?1 AND at <= ?2",
                        params![key, at - interval],
                    )?;
                    let (count, oldest): (i64, Option<f64>) = tx.query_row(
                        "SELECT COUNT(*), MIN(at) FROM rate_uses WHERE key = ?1",
                        [&key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    if count >= limit {
                        Some(oldest.unwrap_or(at) + interval - at)
                    } else {
                        tx.execute(
                            "INSERT INTO rate_uses(key, at) VALUES (?1, ?2)",
                            params![key, at],
                        )?;
                        None
                    }
                }
            };
            Ok(wait.map(|w| Duration::from_secs_f64(w.max(0.001))))
        })
        .await
    }

    async fn refusal_add(&self, limiter: &str) -> BrokerResult<()> {
        let name = limiter.to_string();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO limit_hits(name, hits) VALUES (?1, 1)
                 ON CONFLICT(name) DO UPDATE SET hits = hits + 1",
                [&name],
            )?;
            Ok(())
        })
        .await
    }

    async fn refusal_counts(&self) -> BrokerResult<Vec<(String, u64)>> {
        self.with(|conn| {
            conn.prepare_cached("SELECT name, hits FROM limit_hits ORDER BY name")?
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect()
        })
        .await
    }

    async fn cancel_job(&self, jid: &str, keep: Duration) -> BrokerResult<Cancelled> {
        let jid = jid.to_string();
        let until = now() + keep.as_secs_f64();
        let (found, removed) = self
            .write(move |tx| {
                let at = now();
                tx.execute("DELETE FROM cancels WHERE expires_at <= ?1", [at])?;
                tx.execute(
                    "INSERT INTO cancels(jid, expires_at) VALUES (?1, ?2)
                 ON CONFLICT(jid) DO UPDATE SET expires_at = excluded.expires_at",
                    params![jid, until],
                )?;
                // One transaction: where the job is now, nothing moves meanwhile. `instr` narrows
                // the rows read before each candidate's jid is checked for real.
                let found: Option<(i64, i64, String, String)> = {
                    let mut stmt = tx.prepare(
                        "SELECT id, state, queue, payload FROM jobs
                     WHERE state IN (?1, ?2, ?3) AND instr(payload, ?4) > 0",
                    )?;
                    let rows = stmt.query_map(
                        params![state::QUEUED, state::SCHEDULE, state::RETRY, jid],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?)),
                    )?;
                    let mut found = None;
                    for row in rows {
                        let (id, st, queue, payload) = row?;
                        if has_jid(&payload, &jid) {
                            found = Some((id, st, queue, payload));
                            break;
                        }
                    }
                    found
                };
                if let Some((id, st, queue, payload)) = found {
                    tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
                    let where_ = match st {
                        state::SCHEDULE => Cancelled::Scheduled,
                        state::RETRY => Cancelled::Retrying,
                        _ => Cancelled::Queued(queue),
                    };
                    return Ok((where_, Some(payload)));
                }
                let mut stmt = tx.prepare(
                    "SELECT w.identity, w.json FROM work w JOIN processes p USING (identity)
                 WHERE p.expires_at > ?1 AND instr(w.json, ?2) > 0",
                )?;
                let rows = stmt.query_map(params![at, jid], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?;
                for row in rows {
                    let (identity, json) = row?;
                    if work_has_jid(&json, &jid) {
                        return Ok((Cancelled::Running(identity), None));
                    }
                }
                Ok((Cancelled::NotFound, None))
            })
            .await?;
        // After the commit: a waiting job of a batch will not run, so it is dead to its batch.
        if let Some(raw) = removed {
            errand_core::broker::record_removed(self, &raw).await?;
        }
        Ok(found)
    }

    async fn cancelled(&self, jids: &[&str]) -> BrokerResult<Vec<bool>> {
        let jids: Vec<String> = jids.iter().map(|j| j.to_string()).collect();
        self.with(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT 1 FROM cancels WHERE jid = ?1 AND expires_at > ?2")?;
            let at = now();
            jids.iter()
                .map(|jid| stmt.exists(params![jid, at]))
                .collect()
        })
        .await
    }

    async fn push_replacing(
        &self,
        req: errand_core::broker::ReplacePush<'_>,
    ) -> BrokerResult<Option<String>> {
        let (key, jid, queue, payload) = (
            req.key.to_string(),
            req.jid.to_string(),
            req.queue.to_string(),
            req.payload.to_string(),
        );
        let (at, until) = (req.at, now() + req.ttl.as_secs_f64());
        let replaced = self
            .write(move |tx| {
                let prev: Option<(String, i64, String)> = tx
                    .query_row(
                        "SELECT jid, job_id, payload FROM debounce_keys
                         WHERE key = ?1 AND expires_at > ?2",
                        params![key, now()],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                let mut replaced = None;
                if let Some((prev_jid, id, prev_payload)) = prev {
                    // Still waiting, and still that job (a row id is never reused while the
                    // row lives, but the payload check costs nothing).
                    let n = tx.execute(
                        "DELETE FROM jobs WHERE id = ?1 AND state IN (?2, ?3) AND payload = ?4",
                        params![id, state::QUEUED, state::SCHEDULE, prev_payload],
                    )?;
                    if n == 1 {
                        replaced = Some(prev_jid);
                    }
                }
                match at {
                    Some(at) => add_member(tx, state::SCHEDULE, at, &payload)?,
                    None => enqueue(
                        tx,
                        &[Enqueue {
                            queue: queue.clone(),
                            payload: payload.clone(),
                        }],
                    )?,
                }
                let id: i64 = tx.query_row("SELECT max(id) FROM jobs", [], |r| r.get(0))?;
                tx.execute(
                    "INSERT INTO debounce_keys(key, jid, job_id, payload, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(key) DO UPDATE SET jid = excluded.jid, job_id = excluded.job_id,
                       payload = excluded.payload, expires_at = excluded.expires_at",
                    params![key, jid, id, payload, until],
                )?;
                tx.execute(
                    "DELETE FROM debounce_keys WHERE key IN
                       (SELECT key FROM debounce_keys WHERE expires_at <= ?1 LIMIT 100)",
                    [now()],
                )?;
                Ok(replaced)
            })
            .await?;
        if at.is_none() {
            self.notify_pushed();
        }
        Ok(replaced)
    }

    async fn result_put(&self, jid: &str, value: &str, keep: Duration) -> BrokerResult<()> {
        let (jid, value) = (jid.to_string(), value.to_string());
        let until = now() + keep.as_secs_f64();
        self.write(move |tx| {
            // Expired results go in small batches, so no put pays for a big backlog.
            tx.execute(
                "DELETE FROM results WHERE jid IN
                   (SELECT jid FROM results WHERE expires_at <= ?1 LIMIT 100)",
                [now()],
            )?;
            tx.execute(
                "INSERT INTO results(jid, value, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(jid) DO UPDATE SET value = excluded.value,
                   expires_at = excluded.expires_at",
                params![jid, value, until],
            )?;
            Ok(())
        })
        .await
    }

    async fn result_get(&self, jid: &str) -> BrokerResult<Option<String>> {
        let jid = jid.to_string();
        self.with(move |conn| {
            conn.prepare_cached("SELECT value FROM results WHERE jid = ?1 AND expires_at > ?2")?
                .query_row(params![jid, now()], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn batch_create(&self, new: &NewBatch<'_>) -> BrokerResult<()> {
        let creation = batch::Creation::new(new);
        let closed = new.parent.unwrap_or_default().to_string();
        let created = self
            .write(move |tx| batch::create(tx, &creation, now()))
            .await?;
        if created {
            Ok(())
        } else {
            Err(BrokerError::BatchClosed(closed))
        }
    }

    async fn batch_add(
        &self,
        bid: &str,
        jids: &[&str],
        now_jobs: &[Enqueue],
        later: &[ScheduledJob],
    ) -> BrokerResult<()> {
        let id = bid.to_string();
        let jids: Vec<String> = jids.iter().map(|j| j.to_string()).collect();
        let (jobs, later) = (now_jobs.to_vec(), later.to_vec());
        let pushed = !jobs.is_empty();
        let added = self
            .write(move |tx| batch::add(tx, &id, &jids, &jobs, &later, now()))
            .await?;
        if !added {
            return Err(BrokerError::BatchClosed(bid.to_string()));
        }
        if pushed {
            self.notify_pushed();
        }
        Ok(())
    }

    async fn batch_record(&self, record: BatchRecord<'_>) -> BrokerResult<BatchFired> {
        let record = batch::Record {
            bid: record.bid.to_string(),
            member: record.member.to_string(),
            outcome: record.outcome,
            enqueued_at: record.enqueued_at.to_string(),
        };
        let fired = self
            .write(move |tx| batch::record(tx, &record, now()))
            .await?;
        if fired.released > 0 || !fired.callbacks.is_empty() {
            self.notify_pushed();
        }
        Ok(fired)
    }

    /// All the records in one transaction (SQLite has one writer, so this orders nothing
    /// differently and saves a commit per record).
    async fn batch_record_many(
        &self,
        records: &[BatchRecord<'_>],
    ) -> BrokerResult<Vec<BatchFired>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<batch::Record> = records
            .iter()
            .map(|r| batch::Record {
                bid: r.bid.to_string(),
                member: r.member.to_string(),
                outcome: r.outcome,
                enqueued_at: r.enqueued_at.to_string(),
            })
            .collect();
        let fired = self
            .write(move |tx| {
                let at = now();
                records
                    .iter()
                    .map(|r| batch::record(tx, r, at))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        if fired
            .iter()
            .any(|f| f.released > 0 || !f.callbacks.is_empty())
        {
            self.notify_pushed();
        }
        Ok(fired)
    }

    async fn batch_status(&self, bid: &str) -> BrokerResult<Option<BatchStatus>> {
        let bid = bid.to_string();
        self.with(move |conn| batch::get(conn, &bid, now())).await
    }

    async fn batch_list(
        &self,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<(Vec<BatchStatus>, usize)> {
        self.with(move |conn| batch::list(conn, offset, limit, now()))
            .await
    }

    async fn batch_members(
        &self,
        bid: &str,
        state: MemberState,
        offset: usize,
        limit: usize,
    ) -> BrokerResult<Vec<String>> {
        let bid = bid.to_string();
        self.with(move |conn| batch::members(conn, &bid, state, offset, limit, now()))
            .await
    }
}
