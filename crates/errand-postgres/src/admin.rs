//! The admin side of [`PostgresBroker`] ([`errand_core::admin::Admin`]): what the dashboard,
//! the JSON API and the ops CLI read and change. A queue is its waiting rows in `seq` order
//! (lowest next to run, as Redis's consuming end); a set is its rows in `(score, payload)`
//! order with payloads compared byte by byte (`COLLATE "C"`), as Redis compares members.

use crate::PostgresBroker;
use crate::broker::pg_err;
use crate::fleet::NOW;
use crate::queue::{bury, enqueue, notify};
use crate::schema::state;
use crate::schema::state::QUEUED;
use async_trait::async_trait;
use errand_core::admin::{
    Admin, BackendInfo, Counters, MoveToDead, MoveToQueue, Order, ProcessRecord, QueueRange,
    QueueSummary, SetEntry, SetName, SetRange, signal_name,
};
use errand_core::broker::{BrokerResult, Enqueue, RemoteSignal};
use errand_core::metrics::{ClassMetrics, HISTOGRAM_BUCKETS, merge_by_class};
use tokio_postgres::GenericClient;

/// At most this many minutes are read by one [`Admin::metrics`] call (the newest of the range).
const METRICS_MAX_MINUTES: i64 = 1_500;

/// The `jobs.state` of a set's members.
fn set_of(set: SetName) -> i16 {
    match set {
        SetName::Retry => state::RETRY,
        SetName::Scheduled => state::SCHEDULE,
        SetName::Dead => state::DEAD,
    }
}

fn sql_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Deletes one member of set `set` (found by its hash, then compared byte for byte).
async fn remove_member(
    c: &impl GenericClient,
    s: &str,
    set: i16,
    member: &str,
) -> Result<bool, tokio_postgres::Error> {
    let n = c
        .execute(
            &format!(
                "DELETE FROM {s}.jobs WHERE state = $1 AND state >= 2
                 AND member = hashtextextended($2, 0) AND payload = $2"
            ),
            &[&set, &member],
        )
        .await?;
    Ok(n > 0)
}

fn metrics_row(r: &tokio_postgres::Row) -> ClassMetrics {
    let mut m = ClassMetrics::new(r.get::<_, String>(0));
    m.executions = r.get::<_, i64>(1).max(0) as u64;
    m.failures = r.get::<_, i64>(2).max(0) as u64;
    m.total_ms = r.get::<_, i64>(3).max(0) as u64;
    let histogram: Vec<i64> = r.get(4);
    for (slot, n) in m.histogram.iter_mut().zip(histogram) {
        *slot = n.max(0) as u64;
    }
    debug_assert_eq!(m.histogram.len(), HISTOGRAM_BUCKETS);
    m
}

impl PostgresBroker {
    async fn counters_named(&self, suffix: &str) -> BrokerResult<Counters> {
        let s = &self.inner.s;
        let names: Vec<String> = ["processed", "failed", "cancelled", "expired"]
            .iter()
            .map(|n| format!("{n}{suffix}"))
            .collect();
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT name, value FROM {s}.stats WHERE name = ANY($1)"),
                &[&names],
            )
            .await
            .map_err(pg_err)?;
        let get = |i: usize| {
            rows.iter()
                .find(|r| r.get::<_, &str>(0) == names[i])
                .map_or(0, |r| r.get::<_, i64>(1).max(0) as u64)
        };
        Ok(Counters {
            processed: get(0),
            failed: get(1),
            // Kept as totals only: 0 for a day.
            cancelled: get(2),
            expired: get(3),
        })
    }
}

#[async_trait]
impl Admin for PostgresBroker {
    fn coordination(&self) -> Option<&dyn errand_core::broker::Coordination> {
        Some(self)
    }

    async fn counters(&self) -> BrokerResult<Counters> {
        self.counters_named("").await
    }

    async fn daily_counters(&self, dates: &[String]) -> BrokerResult<Vec<Counters>> {
        let mut out = Vec::with_capacity(dates.len());
        for date in dates {
            out.push(self.counters_named(&format!(":{date}")).await?);
        }
        Ok(out)
    }

    async fn backend_info(&self) -> BrokerResult<BackendInfo> {
        let s = &self.inner.s;
        let c = self.client().await?;
        let row = c
            .query_one(
                &format!(
                    "SELECT current_setting('server_version'), current_database(),
                       current_setting('synchronous_commit'),
                       pg_size_pretty(pg_total_relation_size('{s}.jobs')),
                       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())"
                ),
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(BackendInfo {
            kind: "postgres".into(),
            facts: vec![
                ("version".into(), row.get(0)),
                ("database".into(), row.get(1)),
                ("schema".into(), s.trim_matches('"').to_string()),
                ("synchronous_commit".into(), row.get(2)),
                ("jobs table size".into(), row.get(3)),
                ("connections".into(), row.get::<_, i64>(4).to_string()),
            ],
        })
    }

    async fn queues(&self) -> BrokerResult<Vec<QueueSummary>> {
        let s = &self.inner.s;
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "WITH names AS (SELECT name FROM {s}.queues UNION SELECT name FROM {s}.paused_queues)
                     SELECT n.name,
                       (SELECT count(*) FROM {s}.jobs WHERE state = {QUEUED} AND queue = n.name),
                       (SELECT payload FROM {s}.jobs WHERE state = {QUEUED} AND queue = n.name
                        ORDER BY seq, id LIMIT 1),
                       EXISTS (SELECT 1 FROM {s}.paused_queues p WHERE p.name = n.name)
                     FROM names n ORDER BY n.name COLLATE \"C\""
                ),
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| QueueSummary {
                name: r.get(0),
                size: r.get::<_, i64>(1).max(0) as u64,
                oldest: r.get(2),
                paused: r.get(3),
            })
            .collect())
    }

    async fn queue_page(&self, range: QueueRange<'_>) -> BrokerResult<Vec<String>> {
        if range.limit == 0 {
            return Ok(Vec::new());
        }
        let s = &self.inner.s;
        let order = match range.order {
            Order::Asc => "seq, id",
            Order::Desc => "seq DESC, id DESC",
        };
        Ok(self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT payload FROM {s}.jobs WHERE state = {QUEUED} AND queue = $1
                     ORDER BY {order} LIMIT $2 OFFSET $3"
                ),
                &[
                    &range.queue,
                    &sql_count(range.limit),
                    &sql_count(range.offset),
                ],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn queue_delete(&self, queue: &str, raw: &str) -> BrokerResult<bool> {
        let s = &self.inner.s;
        // `LREM queue 1 raw` takes the first match from the head: the newest pushed.
        let n = self
            .client()
            .await?
            .execute(
                &format!(
                    "DELETE FROM {s}.jobs WHERE id = (
                       SELECT id FROM {s}.jobs WHERE state = {QUEUED} AND queue = $1
                       AND payload = $2 ORDER BY seq DESC, id DESC LIMIT 1)"
                ),
                &[&queue, &raw],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn queue_clear(&self, queue: &str) -> BrokerResult<u64> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute(
                &format!("DELETE FROM {s}.jobs WHERE state = {QUEUED} AND queue = $1"),
                &[&queue],
            )
            .await
            .map_err(pg_err)?;
        // The name goes with the jobs; a paused flag stays until the queue is resumed.
        tx.execute(
            &format!("DELETE FROM {s}.queues WHERE name = $1"),
            &[&queue],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(n)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> BrokerResult<()> {
        let s = &self.inner.s;
        let sql = if paused {
            format!("INSERT INTO {s}.paused_queues(name) VALUES ($1) ON CONFLICT DO NOTHING")
        } else {
            format!("DELETE FROM {s}.paused_queues WHERE name = $1")
        };
        self.client()
            .await?
            .execute(&sql, &[&queue])
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn set_size(&self, set: SetName) -> BrokerResult<u64> {
        let s = &self.inner.s;
        let n: i64 = self
            .client()
            .await?
            .query_one(
                &format!("SELECT count(*) FROM {s}.jobs WHERE state = $1 AND state >= 2"),
                &[&set_of(set)],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        Ok(n as u64)
    }

    async fn set_page(&self, range: SetRange) -> BrokerResult<Vec<SetEntry>> {
        if range.limit == 0 {
            return Ok(Vec::new());
        }
        let s = &self.inner.s;
        let order = match range.order {
            Order::Asc => "score, payload COLLATE \"C\"",
            Order::Desc => "score DESC, payload COLLATE \"C\" DESC",
        };
        Ok(self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT score, payload FROM {s}.jobs WHERE state = $1 AND state >= 2
                     ORDER BY {order} LIMIT $2 OFFSET $3"
                ),
                &[
                    &set_of(range.set),
                    &sql_count(range.limit),
                    &sql_count(range.offset),
                ],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| SetEntry {
                score: r.get(0),
                raw: r.get(1),
            })
            .collect())
    }

    async fn set_at_score(&self, set: SetName, score: f64) -> BrokerResult<Vec<SetEntry>> {
        let s = &self.inner.s;
        Ok(self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT score, payload FROM {s}.jobs WHERE state = $1 AND state >= 2
                     AND score = $2 ORDER BY payload COLLATE \"C\""
                ),
                &[&set_of(set), &score],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| SetEntry {
                score: r.get(0),
                raw: r.get(1),
            })
            .collect())
    }

    async fn set_remove(&self, set: SetName, member: &str) -> BrokerResult<bool> {
        let c = self.client().await?;
        remove_member(&**c, &self.inner.s, set_of(set), member)
            .await
            .map_err(pg_err)
    }

    async fn set_to_queue(&self, mv: MoveToQueue<'_>) -> BrokerResult<bool> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        if !remove_member(&*tx, s, set_of(mv.set), mv.member)
            .await
            .map_err(pg_err)?
        {
            return Ok(false);
        }
        let job = Enqueue {
            queue: mv.queue.to_string(),
            payload: mv.payload.to_string(),
        };
        enqueue(&*tx, s, std::slice::from_ref(&job))
            .await
            .map_err(pg_err)?;
        notify(&*tx, &self.inner.channel).await.map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        self.notify_pushed();
        Ok(true)
    }

    async fn set_to_dead(&self, mv: MoveToDead<'_>) -> BrokerResult<bool> {
        let s = &self.inner.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        if !remove_member(&*tx, s, set_of(mv.set), mv.member)
            .await
            .map_err(pg_err)?
        {
            return Ok(false);
        }
        bury(&*tx, s, mv.payload, mv.now, &mv.limits)
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(true)
    }

    async fn set_clear(&self, set: SetName) -> BrokerResult<u64> {
        let s = &self.inner.s;
        self.client()
            .await?
            .execute(
                &format!("DELETE FROM {s}.jobs WHERE state = $1 AND state >= 2"),
                &[&set_of(set)],
            )
            .await
            .map_err(pg_err)
    }

    async fn processes(&self) -> BrokerResult<Vec<ProcessRecord>> {
        let s = &self.inner.s;
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT identity, info, busy, concurrency, beat, quiet, rss_kb
                     FROM {s}.processes WHERE beat IS NOT NULL AND expires_at > {NOW}
                     ORDER BY identity COLLATE \"C\""
                ),
                &[],
            )
            .await
            .map_err(pg_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let identity: String = r.get(0);
            let mut work: Vec<(String, String)> = c
                .query(
                    &format!("SELECT tid, json FROM {s}.work WHERE identity = $1 ORDER BY tid"),
                    &[&identity],
                )
                .await
                .map_err(pg_err)?
                .iter()
                .map(|w| (w.get(0), w.get(1)))
                .collect();
            errand_core::admin::sort_work(&mut work);
            out.push(ProcessRecord {
                identity,
                info: r.get(1),
                busy: r.get::<_, i32>(2).max(0) as u64,
                concurrency: r.get::<_, i32>(3).max(0) as u64,
                beat: r.get(4),
                quiet: r.get(5),
                rss_kb: r.get::<_, i64>(6).max(0) as u64,
                work,
            });
        }
        Ok(out)
    }

    async fn signal(&self, identity: &str, signal: RemoteSignal) -> BrokerResult<()> {
        let s = &self.inner.s;
        self.client()
            .await?
            .execute(
                &format!("INSERT INTO {s}.signals(identity, name) VALUES ($1, $2)"),
                &[&identity, &signal_name(signal)],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn metrics(&self, from_minute: i64, to_minute: i64) -> BrokerResult<Vec<ClassMetrics>> {
        let from = from_minute.max(to_minute.saturating_sub(METRICS_MAX_MINUTES - 1));
        if from > to_minute {
            return Ok(Vec::new());
        }
        let s = &self.inner.s;
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT class, executions, failures, total_ms, histogram FROM {s}.metrics
                     WHERE minute BETWEEN $1 AND $2"
                ),
                &[&from, &to_minute],
            )
            .await
            .map_err(pg_err)?;
        Ok(merge_by_class(rows.iter().map(metrics_row)))
    }

    async fn metrics_totals(&self) -> BrokerResult<Vec<ClassMetrics>> {
        let s = &self.inner.s;
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT class, executions, failures, total_ms, histogram FROM {s}.metrics_totals"
                ),
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(merge_by_class(rows.iter().map(metrics_row)))
    }
}
