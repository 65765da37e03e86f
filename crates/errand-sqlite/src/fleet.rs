//! A process's fleet duties on SQLite ([`Fleet`]): the `processes` table (heartbeat, info,
//! work, expiry), counters, signals, and recovery of the rows owned by processes whose
//! heartbeat expired.

use crate::SqliteBroker;
use crate::rows::{location, now, requeue_owned};
use crate::schema::state;
use async_trait::async_trait;
use errand_core::broker::{BrokerResult, Fetched, Fleet, Heartbeat, RemoteSignal, RescuePolicy};
use errand_core::metrics::ClassMetrics;
use rusqlite::{OptionalExtension, params};
use std::time::Duration;

/// How long a registered process that has not beaten yet counts as alive.
const REGISTERED_GRACE: Duration = Duration::from_secs(60);

#[async_trait]
impl Fleet for SqliteBroker {
    /// A process registered before its first heartbeat counts as alive for
    /// 60 s (a row without an expiry would count as dead at once).
    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()> {
        let identity = identity.to_string();
        let info = serde_json::json!({ "queues": queues }).to_string();
        let until = now() + REGISTERED_GRACE.as_secs_f64();
        self.write(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO processes(identity, info, expires_at) VALUES (?1, ?2, ?3)",
                params![identity, info, until],
            )?;
            Ok(())
        })
        .await
    }

    /// Every row the process owns (its rows name it; `queues` is not needed here).
    async fn requeue_in_flight(&self, identity: &str, _queues: &[String]) -> BrokerResult<usize> {
        let identity = identity.to_string();
        let n = self
            .write(move |tx| requeue_owned(tx, &identity, None))
            .await?;
        if n > 0 {
            self.inner.pushed.notify_waiters();
        }
        Ok(n)
    }

    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>> {
        let owner = identity.to_string();
        let queues = queues.to_vec();
        self.with(move |conn| {
            let rows: Vec<(i64, String, String, f64)> = conn
                .prepare_cached(
                    "SELECT id, queue, payload, score FROM jobs WHERE owner = ?1 AND state = ?2
                     ORDER BY score, id",
                )?
                .query_map(params![owner, state::IN_FLIGHT], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows
                .into_iter()
                .filter(|(_, q, _, _)| queues.contains(q))
                .map(|(id, queue, raw, token)| Fetched {
                    queue,
                    raw,
                    location: location(id, &owner),
                    token: token as u64,
                })
                .collect())
        })
        .await
    }

    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>> {
        let identity = beat.identity.to_string();
        let info = beat.info.to_string();
        let work: Vec<(String, String)> = beat
            .work
            .iter()
            .map(|w| (w.tid.clone(), w.json.clone()))
            .collect();
        let (busy, concurrency, at, quiet, rss) = (
            beat.busy as i64,
            beat.concurrency as i64,
            beat.beat,
            beat.quiet,
            beat.rss_kb as i64,
        );
        // Whole seconds, at least one, as Redis's EXPIRE does.
        let ttl = beat.ttl.as_secs().max(1) as f64;
        let (processed, failed) = (beat.processed as i64, beat.failed as i64);
        let ended = [
            ("cancelled", beat.cancelled as i64),
            ("expired", beat.expired as i64),
        ];
        let date = errand_core::utc_date(at);
        let signal = self
            .write(move |tx| {
                if processed > 0 || failed > 0 {
                    let mut add = tx.prepare_cached(
                        "INSERT INTO stats(name, value) VALUES (?1, ?2)
                         ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    )?;
                    for (name, n) in [("processed", processed), ("failed", failed)] {
                        add.execute(params![name, n])?;
                        add.execute(params![format!("{name}:{date}"), n])?;
                    }
                }
                for (name, n) in ended.into_iter().filter(|(_, n)| *n > 0) {
                    tx.prepare_cached(
                        "INSERT INTO stats(name, value) VALUES (?1, ?2)
                         ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    )?
                    .execute(params![name, n])?;
                }
                tx.execute("DELETE FROM work WHERE identity = ?1", [&identity])?;
                for (tid, json) in &work {
                    tx.execute(
                        "INSERT INTO work(identity, tid, json) VALUES (?1, ?2, ?3)",
                        params![identity, tid, json],
                    )?;
                }
                tx.execute(
                    "INSERT INTO processes(identity, info, beat, expires_at, busy, concurrency, quiet, rss_kb)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(identity) DO UPDATE SET info = excluded.info, beat = excluded.beat,
                       expires_at = excluded.expires_at, busy = excluded.busy,
                       concurrency = excluded.concurrency, quiet = excluded.quiet, rss_kb = excluded.rss_kb",
                    params![identity, info, at, now() + ttl, busy, concurrency, quiet, rss],
                )?;
                let signal: Option<(i64, String)> = tx
                    .query_row(
                        "SELECT id, name FROM signals WHERE identity = ?1 ORDER BY id LIMIT 1",
                        [&identity],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((id, _)) = &signal {
                    tx.execute("DELETE FROM signals WHERE id = ?1", [id])?;
                }
                Ok(signal.map(|(_, name)| name))
            })
            .await?;
        Ok(signal.as_deref().and_then(RemoteSignal::from_name))
    }

    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize> {
        let at = now();
        let policy = *policy;
        let rescued = self
            .write(move |tx| {
                tx.execute("DELETE FROM once_steps WHERE expires_at <= ?1", [at])?;
                tx.execute("DELETE FROM leases WHERE expires_at <= ?1", [at])?;
                let dead: Vec<String> = tx
                    .prepare(
                        "SELECT identity FROM processes WHERE expires_at IS NULL OR expires_at <= ?1",
                    )?
                    .query_map([at], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                // And owners of in-flight rows with no process row at all (a process that
                // stopped without handing its jobs back): the sweep that needs no registration.
                let unregistered: Vec<String> = tx
                    .prepare(
                        "SELECT DISTINCT owner FROM jobs WHERE state = ?1 AND owner IS NOT NULL
                         AND owner NOT IN (SELECT identity FROM processes)",
                    )?
                    .query_map([state::IN_FLIGHT], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut total = Vec::new();
                for identity in dead.into_iter().chain(unregistered) {
                    let n = requeue_owned(tx, &identity, Some(&policy))?;
                    tx.execute("DELETE FROM processes WHERE identity = ?1", [&identity])?;
                    tx.execute("DELETE FROM work WHERE identity = ?1", [&identity])?;
                    if n > 0 {
                        total.push((identity, n));
                    }
                }
                Ok(total)
            })
            .await?;
        let mut n = 0;
        for (identity, jobs) in rescued {
            tracing::warn!(identity, jobs, "recovered in-flight jobs of a dead process");
            n += jobs;
        }
        if n > 0 {
            self.inner.pushed.notify_waiters();
        }
        Ok(n)
    }

    async fn unregister(&self, identity: &str) -> BrokerResult<()> {
        let identity = identity.to_string();
        self.write(move |tx| {
            tx.execute("DELETE FROM processes WHERE identity = ?1", [&identity])?;
            tx.execute("DELETE FROM work WHERE identity = ?1", [&identity])?;
            tx.execute("DELETE FROM signals WHERE identity = ?1", [&identity])?;
            Ok(())
        })
        .await
    }

    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool> {
        let now_ms = (now() * 1000.0) as i64;
        let until = now_ms + window.as_millis().max(1) as i64;
        self.write(move |tx| {
            let changed = tx.execute(
                "INSERT INTO counters(name, value) VALUES ('poll_until', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value WHERE value <= ?2",
                params![until, now_ms],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn process_count(&self) -> BrokerResult<usize> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM processes WHERE beat IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n as usize)
    }

    async fn paused_queues(&self) -> BrokerResult<Vec<String>> {
        self.with(|c| {
            c.prepare_cached("SELECT name FROM paused_queues ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
    }

    async fn record_metrics(&self, minute: i64, classes: &[ClassMetrics]) -> BrokerResult<()> {
        let classes = classes.to_vec();
        self.write(move |tx| crate::admin::add_metrics(tx, minute, &classes))
            .await
    }
}
