//! The admin side of [`SqliteBroker`] ([`errand_core::admin::Admin`]): what the dashboard,
//! the JSON API and the ops CLI read and change.
//!
//! Queues and sets live in the `jobs` table like everything else: a queue is its `QUEUED` rows
//! in `seq` order (lowest next to run, as Redis's consuming end), a set is its rows in
//! `(score, payload)` order (Redis's `(score, member)`; SQLite's `BINARY` collation compares
//! bytes, as Redis does). Every change is one `BEGIN IMMEDIATE` transaction; every read runs
//! in the blocking pool on the broker's connection, as a few indexed statements, so it holds
//! the connection (and so the hot path) no longer than a page takes.

use crate::SqliteBroker;
use crate::rows::{bury, enqueue, now, read_counters};
use crate::schema::{member_hash, state};
use async_trait::async_trait;
use errand_core::admin::{
    Admin, BackendInfo, Counters, MoveToDead, MoveToQueue, Order, ProcessRecord, QueueRange,
    QueueSummary, SetEntry, SetName, SetRange, signal_name,
};
use errand_core::broker::{BrokerResult, Enqueue, RemoteSignal};
use errand_core::metrics::{ClassMetrics, HISTOGRAM_BUCKETS, merge_by_class};
use rusqlite::{OptionalExtension, Row, Transaction, params};
use std::collections::BTreeSet;

/// Minutes of per-minute metrics kept (the contract asks for at least 25 hours).
const METRICS_KEEP_MINUTES: i64 = 26 * 60;
/// At most this many minutes are read by one [`Admin::metrics`] call (the newest of the range).
const METRICS_MAX_MINUTES: i64 = 1_500;

/// The `jobs.state` of a set's members.
fn set_of(set: SetName) -> i64 {
    match set {
        SetName::Retry => state::RETRY,
        SetName::Scheduled => state::SCHEDULE,
        SetName::Dead => state::DEAD,
    }
}

/// A page position or size as SQLite's LIMIT/OFFSET (which take signed 64-bit values).
fn sql_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn sql_u64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Deletes one member of set `set` (compared by its hash, then byte for byte). Whether it was
/// there.
fn remove_member(tx: &Transaction<'_>, set: i64, member: &str) -> rusqlite::Result<bool> {
    let n = tx.execute(
        crate::rows::REMOVE_MEMBER,
        params![set, member_hash(member), member],
    )?;
    Ok(n > 0)
}

fn set_entry(r: &Row<'_>) -> rusqlite::Result<SetEntry> {
    Ok(SetEntry {
        score: r.get(0)?,
        raw: r.get(1)?,
    })
}

/// A histogram as stored: a JSON array of [`HISTOGRAM_BUCKETS`] counts.
fn histogram_json(histogram: &[u64; HISTOGRAM_BUCKETS]) -> String {
    serde_json::Value::from(histogram.to_vec()).to_string()
}

/// A stored histogram; buckets missing or unreadable count zero.
fn histogram_from(json: &str) -> [u64; HISTOGRAM_BUCKETS] {
    let mut out = [0; HISTOGRAM_BUCKETS];
    if let Ok(counts) = serde_json::from_str::<Vec<u64>>(json) {
        for (slot, n) in out.iter_mut().zip(counts) {
            *slot = n;
        }
    }
    out
}

/// Whether `m` counts nothing at all.
fn is_empty(m: &ClassMetrics) -> bool {
    m.executions == 0 && m.failures == 0 && m.total_ms == 0 && m.histogram.iter().all(|&n| n == 0)
}

/// A metrics row: `class, executions, failures, total_ms, histogram`.
fn metrics_row(r: &Row<'_>) -> rusqlite::Result<ClassMetrics> {
    let mut m = ClassMetrics::new(r.get::<_, String>(0)?);
    m.executions = r.get::<_, i64>(1)?.max(0) as u64;
    m.failures = r.get::<_, i64>(2)?.max(0) as u64;
    m.total_ms = r.get::<_, i64>(3)?.max(0) as u64;
    m.histogram = histogram_from(&r.get::<_, String>(4)?);
    Ok(m)
}

/// Adds one minute's metrics to the per-minute rows and the all-time totals, and drops the
/// minutes more than 26 hours older than `minute` (the [`errand_core::broker::Broker::record_metrics`]
/// step; one transaction with the caller's).
pub(crate) fn add_metrics(
    tx: &Transaction<'_>,
    minute: i64,
    classes: &[ClassMetrics],
) -> rusqlite::Result<()> {
    {
        let mut read_minute = tx.prepare_cached(
            "SELECT class, executions, failures, total_ms, histogram FROM metrics
             WHERE minute = ?1 AND class = ?2",
        )?;
        let mut write_minute = tx.prepare_cached(
            "INSERT OR REPLACE INTO metrics(minute, class, executions, failures, total_ms, histogram)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut read_total = tx.prepare_cached(
            "SELECT class, executions, failures, total_ms, histogram FROM metrics_totals
             WHERE class = ?1",
        )?;
        let mut write_total = tx.prepare_cached(
            "INSERT OR REPLACE INTO metrics_totals(class, executions, failures, total_ms, histogram)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for m in merge_by_class(classes.iter().cloned()) {
            // A class with nothing counted leaves no row (Redis writes no field for it).
            if is_empty(&m) {
                continue;
            }
            let mut at_minute = read_minute
                .query_row(params![minute, m.class], metrics_row)
                .optional()?
                .unwrap_or_else(|| ClassMetrics::new(&m.class));
            at_minute.merge(&m);
            write_minute.execute(params![
                minute,
                at_minute.class,
                sql_u64(at_minute.executions),
                sql_u64(at_minute.failures),
                sql_u64(at_minute.total_ms),
                histogram_json(&at_minute.histogram),
            ])?;
            let mut total = read_total
                .query_row([&m.class], metrics_row)
                .optional()?
                .unwrap_or_else(|| ClassMetrics::new(&m.class));
            total.merge(&m);
            write_total.execute(params![
                total.class,
                sql_u64(total.executions),
                sql_u64(total.failures),
                sql_u64(total.total_ms),
                histogram_json(&total.histogram),
            ])?;
        }
    }
    // A range on the primary key's first column: only the expired rows are visited.
    tx.execute(
        "DELETE FROM metrics WHERE minute < ?1",
        [minute.saturating_sub(METRICS_KEEP_MINUTES)],
    )?;
    Ok(())
}

/// `bytes` for people: `512 B`, `3.4 KB`, `1.2 MB`, `5.0 GB` (powers of 1024).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The size of the file next to the database named `<db><suffix>` (0 when absent).
fn file_size(db: &std::path::Path, suffix: &str) -> u64 {
    let mut name = db.as_os_str().to_os_string();
    name.push(suffix);
    std::fs::metadata(name).map_or(0, |m| m.len())
}

#[async_trait]
impl Admin for SqliteBroker {
    fn coordination(&self) -> Option<&dyn errand_core::broker::Coordination> {
        Some(self)
    }

    async fn counters(&self) -> BrokerResult<Counters> {
        self.with(|c| read_counters(c, "")).await
    }

    async fn daily_counters(&self, dates: &[String]) -> BrokerResult<Vec<Counters>> {
        let dates = dates.to_vec();
        self.with(move |c| {
            dates
                .iter()
                .map(|date| read_counters(c, &format!(":{date}")))
                .collect()
        })
        .await
    }

    async fn backend_info(&self) -> BrokerResult<BackendInfo> {
        let path = self.path().to_path_buf();
        self.with(move |c| {
            let journal: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            let synchronous: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let page_size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let (db, wal) = (file_size(&path, ""), file_size(&path, "-wal"));
            let durability = match synchronous {
                0 => "OFF",
                1 => "NORMAL (survives a crash, may lose the last commits on power loss)",
                2 => "FULL (survives power loss)",
                3 => "EXTRA (survives power loss)",
                _ => "unknown",
            };
            Ok(BackendInfo {
                kind: "sqlite".into(),
                facts: vec![
                    ("version".into(), rusqlite::version().to_string()),
                    ("path".into(), path.display().to_string()),
                    (
                        "file size".into(),
                        format!(
                            "{} (database {}, WAL {})",
                            human_bytes(db + wal),
                            human_bytes(db),
                            human_bytes(wal)
                        ),
                    ),
                    ("journal mode".into(), journal),
                    ("synchronous".into(), durability.into()),
                    (
                        "pages".into(),
                        format!("{pages} of {}", human_bytes(page_size.max(0) as u64)),
                    ),
                ],
            })
        })
        .await
    }

    async fn queues(&self) -> BrokerResult<Vec<QueueSummary>> {
        self.with(|c| {
            let known: BTreeSet<String> = c
                .prepare_cached("SELECT name FROM queues")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let paused: BTreeSet<String> = c
                .prepare_cached("SELECT name FROM paused_queues")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut size =
                c.prepare_cached("SELECT COUNT(*) FROM jobs WHERE state = ?1 AND queue = ?2")?;
            let mut oldest = c.prepare_cached(
                "SELECT payload FROM jobs WHERE state = ?1 AND queue = ?2
                 ORDER BY seq, id LIMIT 1",
            )?;
            known
                .union(&paused)
                .map(|name| {
                    Ok(QueueSummary {
                        name: name.clone(),
                        size: size
                            .query_row(params![state::QUEUED, name], |r| r.get::<_, i64>(0))?
                            as u64,
                        oldest: oldest
                            .query_row(params![state::QUEUED, name], |r| r.get(0))
                            .optional()?,
                        paused: paused.contains(name),
                    })
                })
                .collect()
        })
        .await
    }

    async fn queue_page(&self, range: QueueRange<'_>) -> BrokerResult<Vec<String>> {
        let QueueRange {
            queue,
            offset,
            limit,
            order,
        } = range;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let queue = queue.to_string();
        let (offset, limit) = (sql_count(offset), sql_count(limit));
        self.with(move |c| {
            let sql = match order {
                // Lowest seq is fetched first: the next to run.
                Order::Asc => {
                    "SELECT payload FROM jobs WHERE state = ?1 AND queue = ?2
                     ORDER BY seq, id LIMIT ?3 OFFSET ?4"
                }
                Order::Desc => {
                    "SELECT payload FROM jobs WHERE state = ?1 AND queue = ?2
                     ORDER BY seq DESC, id DESC LIMIT ?3 OFFSET ?4"
                }
            };
            c.prepare_cached(sql)?
                .query_map(params![state::QUEUED, queue, limit, offset], |r| r.get(0))?
                .collect()
        })
        .await
    }

    async fn queue_delete(&self, queue: &str, raw: &str) -> BrokerResult<bool> {
        let (queue, raw) = (queue.to_string(), raw.to_string());
        self.write(move |tx| {
            // `LREM queue 1 raw` takes the first match from the head: the newest pushed.
            let n = tx.execute(
                "DELETE FROM jobs WHERE id = (
                     SELECT id FROM jobs WHERE state = ?1 AND queue = ?2 AND payload = ?3
                     ORDER BY seq DESC, id DESC LIMIT 1)",
                params![state::QUEUED, queue, raw],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn queue_clear(&self, queue: &str) -> BrokerResult<u64> {
        let queue = queue.to_string();
        self.write(move |tx| {
            let n = tx.execute(
                "DELETE FROM jobs WHERE state = ?1 AND queue = ?2",
                params![state::QUEUED, queue],
            )?;
            // The name goes with the jobs; a paused flag stays until the queue is resumed.
            tx.execute("DELETE FROM queues WHERE name = ?1", [&queue])?;
            Ok(n as u64)
        })
        .await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> BrokerResult<()> {
        let queue = queue.to_string();
        self.write(move |tx| {
            if paused {
                tx.execute(
                    "INSERT OR IGNORE INTO paused_queues(name) VALUES (?1)",
                    [&queue],
                )?;
            } else {
                tx.execute("DELETE FROM paused_queues WHERE name = ?1", [&queue])?;
            }
            Ok(())
        })
        .await
    }

    async fn set_size(&self, set: SetName) -> BrokerResult<u64> {
        let set = set_of(set);
        self.with(move |c| {
            c.prepare_cached("SELECT COUNT(*) FROM jobs WHERE state = ?1")?
                .query_row([set], |r| r.get::<_, i64>(0))
        })
        .await
        .map(|n| n as u64)
    }

    async fn set_page(&self, range: SetRange) -> BrokerResult<Vec<SetEntry>> {
        let SetRange {
            set,
            offset,
            limit,
            order,
        } = range;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let set = set_of(set);
        let (offset, limit) = (sql_count(offset), sql_count(limit));
        self.with(move |c| {
            let sql = match order {
                Order::Asc => {
                    "SELECT score, payload FROM jobs WHERE state = ?1
                     ORDER BY score, payload LIMIT ?2 OFFSET ?3"
                }
                Order::Desc => {
                    "SELECT score, payload FROM jobs WHERE state = ?1
                     ORDER BY score DESC, payload DESC LIMIT ?2 OFFSET ?3"
                }
            };
            c.prepare_cached(sql)?
                .query_map(params![set, limit, offset], set_entry)?
                .collect()
        })
        .await
    }

    async fn set_at_score(&self, set: SetName, score: f64) -> BrokerResult<Vec<SetEntry>> {
        let set = set_of(set);
        self.with(move |c| {
            // Scores are stored as REAL (an IEEE double), so equality is exact.
            c.prepare_cached(
                "SELECT score, payload FROM jobs WHERE state = ?1 AND score = ?2
                 ORDER BY payload",
            )?
            .query_map(params![set, score], set_entry)?
            .collect()
        })
        .await
    }

    async fn set_remove(&self, set: SetName, member: &str) -> BrokerResult<bool> {
        let (set, member) = (set_of(set), member.to_string());
        self.write(move |tx| remove_member(tx, set, &member)).await
    }

    async fn set_to_queue(&self, mv: MoveToQueue<'_>) -> BrokerResult<bool> {
        let MoveToQueue {
            set,
            member,
            queue,
            payload,
        } = mv;
        let (set, member) = (set_of(set), member.to_string());
        let job = Enqueue {
            queue: queue.to_string(),
            payload: payload.to_string(),
        };
        let moved = self
            .write(move |tx| {
                if !remove_member(tx, set, &member)? {
                    return Ok(false);
                }
                enqueue(tx, std::slice::from_ref(&job))?;
                Ok(true)
            })
            .await?;
        if moved {
            self.notify_pushed();
        }
        Ok(moved)
    }

    async fn set_to_dead(&self, mv: MoveToDead<'_>) -> BrokerResult<bool> {
        let MoveToDead {
            set,
            member,
            payload,
            now,
            limits,
        } = mv;
        let (set, member, payload) = (set_of(set), member.to_string(), payload.to_string());
        self.write(move |tx| {
            if !remove_member(tx, set, &member)? {
                return Ok(false);
            }
            bury(tx, &payload, now, &limits)?;
            Ok(true)
        })
        .await
    }

    async fn set_clear(&self, set: SetName) -> BrokerResult<u64> {
        let set = set_of(set);
        self.write(move |tx| {
            let n = tx.execute("DELETE FROM jobs WHERE state = ?1", [set])?;
            Ok(n as u64)
        })
        .await
    }

    async fn processes(&self) -> BrokerResult<Vec<ProcessRecord>> {
        let at = now();
        self.with(move |c| {
            let mut records: Vec<ProcessRecord> = c
                .prepare_cached(
                    "SELECT identity, info, busy, concurrency, beat, quiet, rss_kb FROM processes
                     WHERE beat IS NOT NULL AND expires_at > ?1 ORDER BY identity",
                )?
                .query_map([at], |r| {
                    Ok(ProcessRecord {
                        identity: r.get(0)?,
                        info: r.get(1)?,
                        busy: r.get::<_, i64>(2)?.max(0) as u64,
                        concurrency: r.get::<_, i64>(3)?.max(0) as u64,
                        beat: r.get(4)?,
                        quiet: r.get(5)?,
                        rss_kb: r.get::<_, i64>(6)?.max(0) as u64,
                        work: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut work =
                c.prepare_cached("SELECT tid, json FROM work WHERE identity = ?1 ORDER BY tid")?;
            for p in &mut records {
                p.work = work
                    .query_map([&p.identity], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                errand_core::admin::sort_work(&mut p.work);
            }
            Ok(records)
        })
        .await
    }

    async fn signal(&self, identity: &str, signal: RemoteSignal) -> BrokerResult<()> {
        let (identity, name) = (identity.to_string(), signal_name(signal));
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO signals(identity, name) VALUES (?1, ?2)",
                params![identity, name],
            )?;
            Ok(())
        })
        .await
    }

    async fn metrics(&self, from_minute: i64, to_minute: i64) -> BrokerResult<Vec<ClassMetrics>> {
        let from = from_minute.max(to_minute.saturating_sub(METRICS_MAX_MINUTES - 1));
        if from > to_minute {
            return Ok(Vec::new());
        }
        let rows: Vec<ClassMetrics> = self
            .with(move |c| {
                c.prepare_cached(
                    "SELECT class, executions, failures, total_ms, histogram FROM metrics
                     WHERE minute BETWEEN ?1 AND ?2",
                )?
                .query_map([from, to_minute], metrics_row)?
                .collect()
            })
            .await?;
        Ok(merge_by_class(rows))
    }

    async fn metrics_totals(&self) -> BrokerResult<Vec<ClassMetrics>> {
        let rows: Vec<ClassMetrics> = self
            .with(|c| {
                c.prepare_cached(
                    "SELECT class, executions, failures, total_ms, histogram FROM metrics_totals",
                )?
                .query_map([], metrics_row)?
                .collect()
            })
            .await?;
        // Sorted as Rust sorts strings (by bytes), whatever the table's order.
        Ok(merge_by_class(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_and_tolerate_bad_rows() {
        let mut h = [0; HISTOGRAM_BUCKETS];
        h[0] = 3;
        h[25] = u64::from(u32::MAX) * 4;
        assert_eq!(histogram_from(&histogram_json(&h)), h);
        assert_eq!(histogram_from("not json"), [0; HISTOGRAM_BUCKETS]);
        let short = histogram_from("[1,2]");
        assert_eq!(&short[..3], &[1, 2, 0]);
    }

    #[test]
    fn sizes_read_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MB");
    }
}
