//! A process's fleet duties on PostgreSQL ([`Fleet`]): the `processes` table (heartbeat, info,
//! expiry, on the server's clock), running jobs, counters, remote signals, and recovery of the
//! rows owned by processes whose heartbeat expired (or that never registered).

use crate::PostgresBroker;
use crate::broker::pg_err;
use crate::queue::{bury, notify};
use crate::schema::state::{IN_FLIGHT, QUEUED};
use async_trait::async_trait;
use errand_core::broker::{BrokerResult, Fetched, Fleet, Heartbeat, RemoteSignal, RescuePolicy};
use errand_core::metrics::{ClassMetrics, merge_by_class};
use std::time::Duration;
use tokio_postgres::GenericClient;

/// How long a registered process that has not beaten yet counts as alive.
const REGISTERED_GRACE: Duration = Duration::from_secs(60);

/// How long per-minute metrics are kept: 26 hours, as on the other backends.
const METRICS_KEEP_MINUTES: i64 = 26 * 60;

/// The server's clock, epoch seconds, as SQL.
pub(crate) const NOW: &str = "extract(epoch FROM clock_timestamp())::float8";

/// Puts `owner`'s in-flight jobs back at the consuming end of their queues, the oldest fetched
/// first. When recovering a dead process (`poison` given), each job's recovery count goes up
/// and a job reaching the limit is buried as a poison pill instead. Returns how many moved.
pub(crate) async fn requeue_owned(
    c: &impl GenericClient,
    s: &str,
    owner: &str,
    poison: Option<&RescuePolicy>,
) -> Result<usize, tokio_postgres::Error> {
    let held = c
        .query(
            &format!(
                "SELECT id, queue, recoveries, payload FROM {s}.jobs
                 WHERE owner = $1 AND state = {IN_FLIGHT} ORDER BY token DESC, id DESC
                 FOR UPDATE"
            ),
            &[&owner],
        )
        .await?;
    for row in &held {
        let (id, queue, recoveries, payload): (i64, String, i32, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if let Some(policy) = poison {
            let count = recoveries.saturating_add(1);
            if count as u32 >= policy.max_recoveries.max(1) {
                let at = now(c).await?;
                if let Some(entry) =
                    errand_core::broker::poison_entry(&payload, count as u32, at, policy.profile)
                {
                    c.execute(&format!("DELETE FROM {s}.jobs WHERE id = $1"), &[&id])
                        .await?;
                    bury(c, s, &entry, at, &policy.dead_limits).await?;
                    tracing::error!(
                        recoveries = count,
                        "poison pill: a job killed its worker repeatedly; moved to the dead set"
                    );
                    continue;
                }
            }
            c.execute(
                &format!("UPDATE {s}.jobs SET recoveries = $2 WHERE id = $1"),
                &[&id, &count],
            )
            .await?;
        }
        // One before the current front of the queue: the last one moved (the oldest
        // fetched) ends up first.
        c.execute(
            &format!(
                "UPDATE {s}.jobs SET state = {QUEUED}, owner = NULL, score = 0, token = 0,
                   seq = (SELECT coalesce(min(seq), 1) - 1 FROM {s}.jobs
                          WHERE state = {QUEUED} AND queue = $2)
                 WHERE id = $1"
            ),
            &[&id, &queue],
        )
        .await?;
    }
    Ok(held.len())
}

/// The server's clock, epoch seconds.
pub(crate) async fn now(c: &impl GenericClient) -> Result<f64, tokio_postgres::Error> {
    Ok(c.query_one(&format!("SELECT {NOW}::float8"), &[])
        .await?
        .get(0))
}

/// Adds `classes` to the minute's and the all-time metrics (histograms added bucket by bucket
/// in SQL), and drops minutes past the retention.
pub(crate) async fn add_metrics(
    c: &impl GenericClient,
    s: &str,
    minute: i64,
    classes: &[ClassMetrics],
) -> Result<(), tokio_postgres::Error> {
    let sum = |t: &str| {
        format!(
            "executions = {t}.executions + excluded.executions,
             failures = {t}.failures + excluded.failures,
             total_ms = {t}.total_ms + excluded.total_ms,
             histogram = ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0)
                               FROM unnest({t}.histogram, excluded.histogram) AS h(a, b))"
        )
    };
    for m in merge_by_class(classes.iter().cloned()) {
        if m.executions == 0 && m.failures == 0 && m.total_ms == 0 {
            continue;
        }
        let histogram: Vec<i64> = m.histogram.iter().map(|n| *n as i64).collect();
        let (e, f, t) = (m.executions as i64, m.failures as i64, m.total_ms as i64);
        c.execute(
            &format!(
                "INSERT INTO {s}.metrics AS m (minute, class, executions, failures, total_ms, histogram)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (minute, class) DO UPDATE SET {}",
                sum("m")
            ),
            &[&minute, &m.class, &e, &f, &t, &histogram],
        )
        .await?;
        c.execute(
            &format!(
                "INSERT INTO {s}.metrics_totals AS m (class, executions, failures, total_ms, histogram)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (class) DO UPDATE SET {}",
                sum("m")
            ),
            &[&m.class, &e, &f, &t, &histogram],
        )
        .await?;
    }
    c.execute(
        &format!("DELETE FROM {s}.metrics WHERE minute < $1"),
        &[&minute.saturating_sub(METRICS_KEEP_MINUTES)],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl Fleet for PostgresBroker {
    /// A process registered before its first heartbeat counts as alive for 60 s.
    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()> {
        let s = &self.inner.s;
        let info = serde_json::json!({ "queues": queues }).to_string();
        let grace = REGISTERED_GRACE.as_secs_f64();
        self.client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {s}.processes(identity, info, expires_at)
                     VALUES ($1, $2, {NOW} + $3) ON CONFLICT (identity) DO NOTHING"
                ),
                &[&identity, &info, &grace],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let add = format!(
            "INSERT INTO {s}.stats(name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = {s}.stats.value + excluded.value"
        );
        let date = errand_core::utc_date(beat.beat);
        for (name, n, daily) in [
            ("processed", beat.processed, true),
            ("failed", beat.failed, true),
            ("cancelled", beat.cancelled, false),
            ("expired", beat.expired, false),
        ] {
            if n == 0 {
                continue;
            }
            let n = n as i64;
            tx.execute(&add, &[&name, &n]).await.map_err(pg_err)?;
            if daily {
                tx.execute(&add, &[&format!("{name}:{date}"), &n])
                    .await
                    .map_err(pg_err)?;
            }
        }
        tx.execute(
            &format!("DELETE FROM {s}.work WHERE identity = $1"),
            &[&beat.identity],
        )
        .await
        .map_err(pg_err)?;
        if !beat.work.is_empty() {
            let tids: Vec<&str> = beat.work.iter().map(|w| w.tid.as_str()).collect();
            let jsons: Vec<&str> = beat.work.iter().map(|w| w.json.as_str()).collect();
            tx.execute(
                &format!(
                    "INSERT INTO {s}.work(identity, tid, json)
                     SELECT $1, t, j FROM unnest($2::text[], $3::text[]) AS w(t, j)
                     ON CONFLICT (identity, tid) DO UPDATE SET json = excluded.json"
                ),
                &[&beat.identity, &tids, &jsons],
            )
            .await
            .map_err(pg_err)?;
        }
        // Whole seconds, at least one, as Redis's EXPIRE does.
        let ttl = beat.ttl.as_secs().max(1) as f64;
        let (busy, concurrency, rss) = (
            beat.busy as i32,
            beat.concurrency as i32,
            beat.rss_kb as i64,
        );
        tx.execute(
            &format!(
                "INSERT INTO {s}.processes(identity, info, beat, expires_at, busy, concurrency,
                   quiet, rss_kb)
                 VALUES ($1, $2, $3, {NOW} + $4, $5, $6, $7, $8)
                 ON CONFLICT (identity) DO UPDATE SET info = excluded.info, beat = excluded.beat,
                   expires_at = excluded.expires_at, busy = excluded.busy,
                   concurrency = excluded.concurrency, quiet = excluded.quiet,
                   rss_kb = excluded.rss_kb"
            ),
            &[
                &beat.identity,
                &beat.info,
                &beat.beat,
                &ttl,
                &busy,
                &concurrency,
                &beat.quiet,
                &rss,
            ],
        )
        .await
        .map_err(pg_err)?;
        let signal = tx
            .query_opt(
                &format!(
                    "DELETE FROM {s}.signals WHERE id = (SELECT id FROM {s}.signals
                       WHERE identity = $1 ORDER BY id LIMIT 1) RETURNING name"
                ),
                &[&beat.identity],
            )
            .await
            .map_err(pg_err)?
            .map(|r| r.get::<_, String>(0));
        tx.commit().await.map_err(pg_err)?;
        Ok(signal.as_deref().and_then(RemoteSignal::from_name))
    }

    async fn unregister(&self, identity: &str) -> BrokerResult<()> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        for table in ["processes", "work", "signals"] {
            tx.execute(
                &format!("DELETE FROM {s}.{table} WHERE identity = $1"),
                &[&identity],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    /// Every row the process owns (its rows name it; `queues` is not needed here).
    async fn requeue_in_flight(&self, identity: &str, _queues: &[String]) -> BrokerResult<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let n = requeue_owned(&*tx, &self.inner.s, identity, None)
            .await
            .map_err(pg_err)?;
        if n > 0 {
            notify(&*tx, &self.inner.channel).await.map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        if n > 0 {
            self.notify_pushed();
        }
        Ok(n)
    }

    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>> {
        let s = &self.inner.s;
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT id, queue, payload, token FROM {s}.jobs
                     WHERE owner = $1 AND state = {IN_FLIGHT} AND queue = ANY($2)
                     ORDER BY token, id"
                ),
                &[&identity, &queues],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| Fetched {
                queue: r.get(1),
                raw: r.get(2),
                location: crate::queue::location(r.get(0), identity),
                token: r.get::<_, i64>(3) as u64,
            })
            .collect())
    }

    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        // Dead processes, and owners of in-flight rows with no process row at all (a process
        // that stopped without handing its jobs back): the sweep that needs no registration.
        let owners: Vec<String> = tx
            .query(
                &format!(
                    "SELECT identity FROM {s}.processes WHERE expires_at <= {NOW}
                     UNION
                     SELECT DISTINCT owner FROM {s}.jobs WHERE state = {IN_FLIGHT}
                       AND owner NOT IN (SELECT identity FROM {s}.processes)"
                ),
                &[],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut total = 0;
        for identity in owners {
            let n = requeue_owned(&*tx, s, &identity, Some(policy))
                .await
                .map_err(pg_err)?;
            for table in ["processes", "work"] {
                tx.execute(
                    &format!("DELETE FROM {s}.{table} WHERE identity = $1"),
                    &[&identity],
                )
                .await
                .map_err(pg_err)?;
            }
            if n > 0 {
                tracing::warn!(
                    identity,
                    jobs = n,
                    "recovered in-flight jobs of a dead process"
                );
                total += n;
            }
        }
        if total > 0 {
            notify(&*tx, &self.inner.channel).await.map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        if total > 0 {
            self.notify_pushed();
        }
        Ok(total)
    }

    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool> {
        let s = &self.inner.s;
        let window_ms = window.as_millis().max(1) as i64;
        let n = self
            .client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {s}.counters AS c (name, value)
                     VALUES ('poll_until', ({NOW} * 1000)::bigint + $1)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value
                     WHERE c.value <= ({NOW} * 1000)::bigint"
                ),
                &[&window_ms],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    async fn process_count(&self) -> BrokerResult<usize> {
        let s = &self.inner.s;
        let n: i64 = self
            .client()
            .await?
            .query_one(
                &format!(
                    "SELECT count(*) FROM {s}.processes WHERE beat IS NOT NULL
                     AND expires_at > {NOW}"
                ),
                &[],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        Ok(n as usize)
    }

    async fn paused_queues(&self) -> BrokerResult<Vec<String>> {
        let s = &self.inner.s;
        Ok(self
            .client()
            .await?
            .query(
                &format!("SELECT name FROM {s}.paused_queues ORDER BY name"),
                &[],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn record_metrics(&self, minute: i64, classes: &[ClassMetrics]) -> BrokerResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        add_metrics(&*tx, &self.inner.s, minute, classes)
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }
}
