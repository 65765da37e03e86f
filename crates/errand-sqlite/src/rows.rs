//! Row operations the topics share, each inside a caller's transaction: positions in a
//! queue, set members, the dead set's trim, pushes, requeues, counters, and the in-flight
//! location string (`<row id>|<owner>`).

use crate::schema::{member_hash, state};
use errand_core::admin::Counters;
use errand_core::broker::{DeadLimits, Enqueue, RescuePolicy};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

pub(crate) fn now() -> f64 {
    errand_core::now()
}

/// Reserves `n` consecutive queue positions after every one handed out so far.
pub(crate) fn next_seq(tx: &Transaction<'_>, n: i64) -> rusqlite::Result<i64> {
    let last: i64 = tx.query_row(
        "INSERT INTO counters(name, value) VALUES ('seq', ?1)
         ON CONFLICT(name) DO UPDATE SET value = value + ?1 RETURNING value",
        [n],
        |r| r.get(0),
    )?;
    Ok(last - n + 1)
}

/// Deletes member `?3` (hash `?2`) of set `?1`. `state >= 2` is spelled out: the member index
/// is partial (`WHERE state >= 2`), and SQLite uses a partial index only where the query's own
/// terms imply its condition (a bound `state = ?1` does not). Without it, each insert into a
/// set and each removal read the whole set: a retry out of a 100,000-entry dead set took 28 ms
/// (scripts/bench-dashboard).
pub(crate) const REMOVE_MEMBER: &str =
    "DELETE FROM jobs WHERE state = ?1 AND state >= 2 AND member = ?2 AND payload = ?3";

/// Adds a member to a set, replacing an equal member (sets hold each payload once, as Redis
/// sorted sets do).
pub(crate) fn add_member(
    tx: &Transaction<'_>,
    set: i64,
    score: f64,
    payload: &str,
) -> rusqlite::Result<()> {
    let member = member_hash(payload);
    tx.execute(REMOVE_MEMBER, params![set, member, payload])?;
    tx.execute(
        "INSERT INTO jobs(state, queue, score, member, payload) VALUES (?1, '', ?2, ?3, ?4)",
        params![set, score, member, payload],
    )?;
    Ok(())
}

/// Adds `payload` to the dead set at `now`, then trims the set by age and size.
pub(crate) fn bury(
    tx: &Transaction<'_>,
    payload: &str,
    now: f64,
    limits: &DeadLimits,
) -> rusqlite::Result<()> {
    add_member(tx, state::DEAD, now, payload)?;
    tx.execute(
        "DELETE FROM jobs WHERE state = ?1 AND score < ?2",
        params![state::DEAD, now - limits.max_age.as_secs_f64()],
    )?;
    // Over the size limit? One walk of the score index up to the limit, no sort; the trim
    // (which sorts the whole set) only when there is something to trim.
    let over: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM jobs WHERE state = ?1 ORDER BY score DESC LIMIT 1 OFFSET ?2",
            params![state::DEAD, limits.max_jobs as i64],
            |r| r.get(0),
        )
        .optional()?;
    if over.is_some() {
        tx.execute(
            "DELETE FROM jobs WHERE state = ?1 AND id NOT IN (
                 SELECT id FROM jobs WHERE state = ?1
                 ORDER BY score DESC, payload DESC LIMIT ?2)",
            params![state::DEAD, limits.max_jobs as i64],
        )?;
    }
    Ok(())
}

/// Pushes `jobs` onto the newest end of their queues and registers the queue names.
pub(crate) fn enqueue(tx: &Transaction<'_>, jobs: &[Enqueue]) -> rusqlite::Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let first = next_seq(tx, jobs.len() as i64)?;
    let mut insert =
        tx.prepare_cached("INSERT INTO jobs(state, queue, seq, payload) VALUES (?1, ?2, ?3, ?4)")?;
    let mut queue = tx.prepare_cached("INSERT OR IGNORE INTO queues(name) VALUES (?1)")?;
    let mut last_queue: Option<&str> = None;
    for (i, j) in jobs.iter().enumerate() {
        insert.execute(params![state::QUEUED, j.queue, first + i as i64, j.payload])?;
        if last_queue != Some(j.queue.as_str()) {
            queue.execute([&j.queue])?;
            last_queue = Some(&j.queue);
        }
    }
    Ok(())
}

/// Puts `owner`'s in-flight jobs back at the consuming end of their queues, the oldest fetched
/// first. When recovering a dead process (`poison` given), each job's recovery count goes up
/// and a job reaching the limit is buried as a poison pill instead. Returns how many moved.
pub(crate) fn requeue_owned(
    tx: &Transaction<'_>,
    owner: &str,
    poison: Option<&RescuePolicy>,
) -> rusqlite::Result<usize> {
    let held: Vec<(i64, String, i64, String)> = tx
        .prepare(
            "SELECT id, queue, recoveries, payload FROM jobs WHERE owner = ?1 AND state = ?2
             ORDER BY score DESC, id DESC",
        )?
        .query_map(params![owner, state::IN_FLIGHT], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, queue, recoveries, payload) in &held {
        if let Some(policy) = poison {
            let count = recoveries + 1;
            if count >= i64::from(policy.max_recoveries.max(1)) {
                let at = now();
                if let Some(entry) = errand_core::broker::poison_entry(
                    payload,
                    count.min(i64::from(u32::MAX)) as u32,
                    at,
                    policy.profile,
                ) {
                    tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
                    bury(tx, &entry, at, &policy.dead_limits)?;
                    tracing::error!(
                        recoveries = count,
                        "poison pill: a job killed its worker repeatedly; moved to the dead set"
                    );
                    continue;
                }
            }
            tx.execute(
                "UPDATE jobs SET recoveries = ?2 WHERE id = ?1",
                params![id, count],
            )?;
        }
        // One before the current front of the queue: the last one moved (the oldest fetched)
        // ends up first.
        let front: Option<i64> = tx.query_row(
            "SELECT MIN(seq) FROM jobs WHERE state = ?1 AND queue = ?2",
            params![state::QUEUED, queue],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE jobs SET state = ?1, owner = NULL, score = 0, seq = ?2 WHERE id = ?3",
            params![state::QUEUED, front.unwrap_or(1) - 1, id],
        )?;
    }
    Ok(held.len())
}

/// The processed and failed counters named with `suffix` (`""` for the totals, `":<date>"` for
/// one UTC day), zero when nothing was recorded.
pub(crate) fn read_counters(conn: &Connection, suffix: &str) -> rusqlite::Result<Counters> {
    let mut get = conn.prepare_cached("SELECT value FROM stats WHERE name = ?1")?;
    let mut value = |name: String| -> rusqlite::Result<u64> {
        Ok(get
            .query_row([name], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64)
    };
    Ok(Counters {
        processed: value(format!("processed{suffix}"))?,
        failed: value(format!("failed{suffix}"))?,
        // Kept as totals only: 0 for a day.
        cancelled: value(format!("cancelled{suffix}"))?,
        expired: value(format!("expired{suffix}"))?,
    })
}

pub(crate) fn location(id: i64, identity: &str) -> String {
    format!("{id}|{identity}")
}

pub(crate) fn parse_location(location: &str) -> Option<(i64, &str)> {
    let (id, owner) = location.split_once('|')?;
    Some((id.parse().ok()?, owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql` on the real schema, one line per step.
    fn plan(sql: &str) -> String {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::schema::SCHEMA).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(params![state::DEAD, 1, "x"], |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_set_member_is_found_by_the_member_index() {
        let found = plan(REMOVE_MEMBER);
        assert!(found.contains("USING INDEX jobs_by_member"), "{found}");
        // Without the spelled-out `state >= 2`, the partial index is not used.
        let without = plan("DELETE FROM jobs WHERE state = ?1 AND member = ?2 AND payload = ?3");
        assert!(!without.contains("jobs_by_member"), "{without}");
    }
}
