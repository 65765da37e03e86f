//! Batches on SQLite (`Coordination::batch_*`, the model of [`errand_core::broker::batch`]): a
//! `batches` row per batch holding its member counts, kept up to date by each record (never
//! counted over the members: a 10,000-job batch records 10,000 times); `batch_members` for the
//! members that have not succeeded (a succeeded member's row is deleted, so a repeated record
//! finds nothing to do); `batch_edges` for what each workflow step waits for. Each operation is
//! one transaction; the jobs a record pushes (callbacks, released steps) are stored by it the
//! way a push stores them.

use crate::rows::{add_member, enqueue};
use crate::schema::{member, state};
use errand_core::broker::batch::close_head;
use errand_core::broker::{
    BATCH_MAX_AGE, BUILDING, BatchEvent, BatchFired, BatchOutcome, BatchStatus, Enqueue,
    FailurePolicy, MemberState, NewBatch, ScheduledJob, WaitingStep, child_member,
    decode_callbacks, encode_callbacks,
};
use rusqlite::{OptionalExtension, Row, Transaction, params};

/// How many expired batches one pruning transaction deletes (with their members and edges),
/// and at most how many such transactions one promotion turn runs.
pub(crate) const PRUNE_BATCH: i64 = 100;
pub(crate) const PRUNE_ROUNDS: usize = 10;

/// The SQL condition of a batch that has not expired at `?1`, with `?2` the maximum age of a
/// batch that never completes (an expired batch reads as absent until it is pruned).
const LIVE: &str = "COALESCE(expires_at, created_at + ?2) > ?1";

/// [`BATCH_MAX_AGE`] in seconds.
fn max_age() -> f64 {
    BATCH_MAX_AGE.as_secs_f64()
}

/// A batch to create, owned (it moves into the blocking pool).
pub(crate) struct Creation {
    bid: String,
    parent: Option<String>,
    description: String,
    callbacks: String,
    keep: f64,
    steps: Vec<Step>,
    policy: FailurePolicy,
    workflow: Option<String>,
}

/// A waiting step as stored: its parents without repeats (and without itself).
struct Step {
    jid: String,
    queue: String,
    head: String,
    after: Vec<String>,
}

impl Creation {
    pub(crate) fn new(batch: &NewBatch<'_>) -> Self {
        Self {
            bid: batch.bid.to_string(),
            parent: batch.parent.map(str::to_string),
            description: batch.description.to_string(),
            callbacks: encode_callbacks(batch.callbacks),
            keep: batch.keep.as_secs_f64(),
            steps: steps(batch.waiting),
            policy: batch.policy,
            workflow: batch.workflow.map(str::to_string),
        }
    }
}

/// The waiting steps, each jid once (the first wins), each parent once.
fn steps(waiting: &[WaitingStep]) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(waiting.len());
    let mut seen = std::collections::HashSet::new();
    for w in waiting {
        if !seen.insert(w.jid.as_str()) {
            continue;
        }
        let mut after: Vec<String> = Vec::with_capacity(w.after.len());
        for a in &w.after {
            if *a != w.jid && !after.contains(a) {
                after.push(a.clone());
            }
        }
        out.push(Step {
            jid: w.jid.clone(),
            queue: w.job.queue.clone(),
            head: w.job.head.clone(),
            after,
        });
    }
    out
}

/// Deletes batch `bid` with its members and edges.
fn delete_batch(tx: &Transaction<'_>, bid: &str) -> rusqlite::Result<()> {
    for table in ["batch_members", "batch_edges", "batches"] {
        tx.prepare_cached(&format!("DELETE FROM {table} WHERE bid = ?1"))?
            .execute([bid])?;
    }
    Ok(())
}

/// Whether batch `bid` exists, has not expired and has not completed (it takes new members).
fn open(tx: &Transaction<'_>, bid: &str, at: f64) -> rusqlite::Result<bool> {
    tx.prepare_cached(&format!(
        "SELECT 1 FROM batches WHERE bid = ?3 AND {LIVE} AND complete_at IS NULL"
    ))?
    .exists(params![at, max_age(), bid])
}

/// Creates `batch` at `at`: false (nothing written) when its parent is missing or complete.
/// A batch that exists already is left as it is; an expired one not yet pruned is replaced.
pub(crate) fn create(tx: &Transaction<'_>, batch: &Creation, at: f64) -> rusqlite::Result<bool> {
    let live: Option<bool> = tx
        .prepare_cached(&format!("SELECT {LIVE} FROM batches WHERE bid = ?3"))?
        .query_row(params![at, max_age(), batch.bid], |r| r.get(0))
        .optional()?;
    match live {
        Some(true) => return Ok(true),
        Some(false) => delete_batch(tx, &batch.bid)?,
        None => {}
    }
    if let Some(parent) = &batch.parent {
        if !open(tx, parent, at)? {
            return Ok(false);
        }
        let added = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO batch_members(bid, member, state) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![parent, child_member(&batch.bid), member::PENDING])?;
        tx.prepare_cached(
            "UPDATE batches SET total = total + ?2, pending = pending + ?2 WHERE bid = ?1",
        )?
        .execute(params![parent, added as i64])?;
    }
    let n = batch.steps.len() as i64;
    tx.prepare_cached(
        "INSERT INTO batches(bid, parent, description, created_at, keep_secs, policy, workflow,
                             callbacks, total, pending, waiting)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?9)",
    )?
    .execute(params![
        batch.bid,
        batch.parent,
        batch.description,
        at,
        batch.keep,
        batch.policy.as_str(),
        batch.workflow,
        batch.callbacks,
        n
    ])?;
    let mut step = tx.prepare_cached(
        "INSERT INTO batch_members(bid, member, state, queue, head, parents_left)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut edge = tx.prepare_cached(
        "INSERT INTO batch_edges(bid, parent_jid, child_jid) VALUES (?1, ?2, ?3)",
    )?;
    for s in &batch.steps {
        step.execute(params![
            batch.bid,
            s.jid,
            member::WAITING,
            s.queue,
            s.head,
            s.after.len() as i64
        ])?;
        for parent in &s.after {
            edge.execute(params![batch.bid, parent, s.jid])?;
        }
    }
    Ok(true)
}

/// Adds `jids` to batch `bid` as pending members and stores the jobs (`now` onto their queues,
/// `later` into the schedule set): false (nothing written) when the batch is missing or
/// complete.
pub(crate) fn add(
    tx: &Transaction<'_>,
    bid: &str,
    jids: &[String],
    now: &[Enqueue],
    later: &[ScheduledJob],
    at: f64,
) -> rusqlite::Result<bool> {
    if !open(tx, bid, at)? {
        return Ok(false);
    }
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO batch_members(bid, member, state) VALUES (?1, ?2, ?3)",
    )?;
    let mut added = 0i64;
    for jid in jids {
        added += insert.execute(params![bid, jid, member::PENDING])? as i64;
    }
    tx.prepare_cached(
        "UPDATE batches SET total = total + ?2, pending = pending + ?2 WHERE bid = ?1",
    )?
    .execute(params![bid, added])?;
    enqueue(tx, now)?;
    for j in later {
        add_member(tx, state::SCHEDULE, j.at, &j.payload)?;
    }
    Ok(true)
}

/// A batch's row as a record reads it: changed in memory by the step, written back once.
struct Batch {
    bid: String,
    parent: Option<String>,
    keep: f64,
    policy: FailurePolicy,
    callbacks: Vec<(BatchEvent, String, String)>,
    pending: i64,
    failed: i64,
    dead: i64,
    cancelled: i64,
    waiting: i64,
    building: bool,
    complete_at: Option<f64>,
    success_at: Option<f64>,
    death_at: Option<f64>,
}

/// One record's outcome owned (it moves into the blocking pool).
pub(crate) struct Record {
    pub(crate) bid: String,
    pub(crate) member: String,
    pub(crate) outcome: BatchOutcome,
    pub(crate) enqueued_at: String,
}

/// What a record step accumulates over the batches it reaches: the report, and the jobs to
/// push at its end.
struct Effects<'a> {
    fired: BatchFired,
    pushes: Vec<Enqueue>,
    enqueued_at: &'a str,
}

impl Effects<'_> {
    /// Pushes `batch`'s callback for `event`, if it has one.
    fn fire(&mut self, batch: &Batch, event: BatchEvent) {
        if let Some((_, queue, head)) = batch.callbacks.iter().find(|(e, _, _)| *e == event) {
            self.pushes.push(Enqueue {
                queue: queue.clone(),
                payload: close_head(head, self.enqueued_at),
            });
            self.fired.callbacks.push((batch.bid.clone(), event));
        }
    }
}

/// Batch `bid` as of `at`, if it exists and has not expired.
fn load(tx: &Transaction<'_>, bid: &str, at: f64) -> rusqlite::Result<Option<Batch>> {
    tx.prepare_cached(&format!(
        "SELECT parent, keep_secs, policy, callbacks, pending, failed, dead, cancelled, waiting,
                building, complete_at, success_at, death_at
         FROM batches WHERE bid = ?3 AND {LIVE}"
    ))?
    .query_row(params![at, max_age(), bid], |r| {
        Ok(Batch {
            bid: bid.to_string(),
            parent: r.get(0)?,
            keep: r.get(1)?,
            policy: FailurePolicy::parse(&r.get::<_, String>(2)?).unwrap_or_default(),
            callbacks: decode_callbacks(&r.get::<_, String>(3)?),
            pending: r.get(4)?,
            failed: r.get(5)?,
            dead: r.get(6)?,
            cancelled: r.get(7)?,
            waiting: r.get(8)?,
            building: r.get::<_, i64>(9)? != 0,
            complete_at: r.get(10)?,
            success_at: r.get(11)?,
            death_at: r.get(12)?,
        })
    })
    .optional()
}

/// Writes `b`'s counts and event times back.
fn save(tx: &Transaction<'_>, b: &Batch) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE batches SET pending = ?2, failed = ?3, dead = ?4, cancelled = ?5, waiting = ?6,
                building = ?7, complete_at = ?8, success_at = ?9, death_at = ?10,
                expires_at = ?11
         WHERE bid = ?1",
    )?
    .execute(params![
        b.bid,
        b.pending,
        b.failed,
        b.dead,
        b.cancelled,
        b.waiting,
        i64::from(b.building),
        b.complete_at,
        b.success_at,
        b.death_at,
        b.complete_at.map(|c| c + b.keep)
    ])?;
    Ok(())
}

/// Marks `ready` steps of `b` (member, queue, head) pending, no longer waiting, and pushes
/// their jobs.
fn push_steps(
    tx: &Transaction<'_>,
    b: &mut Batch,
    ready: Vec<(String, Option<String>, Option<String>)>,
    fx: &mut Effects<'_>,
) -> rusqlite::Result<()> {
    let mut pend = tx.prepare_cached(
        "UPDATE batch_members SET state = ?3, queue = NULL, head = NULL
         WHERE bid = ?1 AND member = ?2",
    )?;
    for (jid, queue, head) in ready {
        pend.execute(params![b.bid, jid, member::PENDING])?;
        b.waiting -= 1;
        if let (Some(queue), Some(head)) = (queue, head) {
            fx.pushes.push(Enqueue {
                queue,
                payload: close_head(&head, fx.enqueued_at),
            });
            fx.fired.released += 1;
        }
    }
    Ok(())
}

/// Member `jid` of `b` succeeded: the steps waiting on it and on nothing else are pushed.
fn release(
    tx: &Transaction<'_>,
    b: &mut Batch,
    jid: &str,
    fx: &mut Effects<'_>,
) -> rusqlite::Result<()> {
    let counted: Vec<(String, i64, Option<String>, Option<String>)> = tx
        .prepare_cached(
            "UPDATE batch_members SET parents_left = parents_left - 1
             WHERE bid = ?1 AND state = ?3 AND member IN
               (SELECT child_jid FROM batch_edges WHERE bid = ?1 AND parent_jid = ?2)
             RETURNING member, parents_left, queue, head",
        )?
        .query_map(params![b.bid, jid, member::WAITING], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let ready = counted
        .into_iter()
        .filter(|(_, left, _, _)| *left <= 0)
        .map(|(jid, _, queue, head)| (jid, queue, head))
        .collect();
    push_steps(tx, b, ready, fx)
}

/// Batch `b` was sealed: steps that wait for nothing (no parents) are pushed now.
fn release_parentless(
    tx: &Transaction<'_>,
    b: &mut Batch,
    fx: &mut Effects<'_>,
) -> rusqlite::Result<()> {
    let ready = tx
        .prepare_cached(
            "SELECT member, queue, head FROM batch_members
             WHERE bid = ?1 AND state = ?2 AND parents_left <= 0",
        )?
        .query_map(params![b.bid, member::WAITING], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    push_steps(tx, b, ready, fx)
}

/// Member `jid` of `b` died: cancels waiting steps under the batch's failure policy (every
/// one, or the transitive dependents of `jid`).
fn cancel(
    tx: &Transaction<'_>,
    b: &mut Batch,
    jid: &str,
    fx: &mut Effects<'_>,
) -> rusqlite::Result<()> {
    let n = match b.policy {
        FailurePolicy::CancelAll => tx
            .prepare_cached(
                "UPDATE batch_members SET state = ?3, queue = NULL, head = NULL
                 WHERE bid = ?1 AND state = ?2",
            )?
            .execute(params![b.bid, member::WAITING, member::CANCELLED])?,
        FailurePolicy::CancelDependents => {
            let mut cancel = tx.prepare_cached(
                "UPDATE batch_members SET state = ?4, queue = NULL, head = NULL
                 WHERE bid = ?1 AND state = ?3 AND member IN
                   (SELECT child_jid FROM batch_edges WHERE bid = ?1 AND parent_jid = ?2)
                 RETURNING member",
            )?;
            let mut frontier = vec![jid.to_string()];
            let mut n = 0;
            while let Some(parent) = frontier.pop() {
                let gone: Vec<String> = cancel
                    .query_map(
                        params![b.bid, parent, member::WAITING, member::CANCELLED],
                        |r| r.get(0),
                    )?
                    .collect::<Result<_, _>>()?;
                n += gone.len();
                frontier.extend(gone);
            }
            n
        }
    };
    let n = n as i64;
    b.waiting -= n;
    b.pending -= n;
    b.cancelled += n;
    fx.fired.cancelled += n as usize;
    Ok(())
}

/// Moves member `name` of `b` for `outcome`; false when nothing changed (a member that is not
/// pending, a repeated record, a stale attempt).
fn apply(
    tx: &Transaction<'_>,
    b: &mut Batch,
    name: &str,
    outcome: BatchOutcome,
    at: f64,
    fx: &mut Effects<'_>,
) -> rusqlite::Result<bool> {
    if name == BUILDING {
        if outcome != BatchOutcome::Succeeded || !b.building {
            return Ok(false);
        }
        b.building = false;
        release_parentless(tx, b, fx)?;
        return Ok(true);
    }
    let st: Option<i64> = tx
        .prepare_cached("SELECT state FROM batch_members WHERE bid = ?1 AND member = ?2")?
        .query_row(params![b.bid, name], |r| r.get(0))
        .optional()?;
    let Some(st) = st else {
        return Ok(false); // succeeded already, or never a member
    };
    let set = |to: i64| -> rusqlite::Result<()> {
        tx.prepare_cached("UPDATE batch_members SET state = ?3 WHERE bid = ?1 AND member = ?2")?
            .execute(params![b.bid, name, to])?;
        Ok(())
    };
    match (outcome, st) {
        (BatchOutcome::Succeeded, member::PENDING | member::FAILED | member::DEAD) => {
            tx.prepare_cached("DELETE FROM batch_members WHERE bid = ?1 AND member = ?2")?
                .execute(params![b.bid, name])?;
            if st == member::DEAD {
                b.dead -= 1;
            } else {
                b.pending -= 1;
            }
            if st == member::FAILED {
                b.failed -= 1;
            }
            release(tx, b, name, fx)?;
        }
        (BatchOutcome::Failed, member::PENDING) => {
            set(member::FAILED)?;
            b.failed += 1;
        }
        (BatchOutcome::Died, member::PENDING | member::FAILED) => {
            set(member::DEAD)?;
            b.pending -= 1;
            if st == member::FAILED {
                b.failed -= 1;
            }
            b.dead += 1;
            if b.death_at.is_none() {
                b.death_at = Some(at);
                fx.fire(b, BatchEvent::Death);
            }
            cancel(tx, b, name, fx)?;
        }
        // Waiting steps have not been pushed (no attempt of theirs can end), cancelled ones
        // never will be; anything else is a repeat or a stale attempt.
        _ => return Ok(false),
    }
    Ok(true)
}

/// Records `rec` at `at` and everything it causes, in the caller's transaction: the member's
/// move, the steps it releases or cancels, the callbacks whose event happens for the first
/// time, and the same for each ancestor the batch's completion reaches. The jobs are stored
/// at the end, onto their queues.
pub(crate) fn record(tx: &Transaction<'_>, rec: &Record, at: f64) -> rusqlite::Result<BatchFired> {
    let mut fx = Effects {
        fired: BatchFired::default(),
        pushes: Vec::new(),
        enqueued_at: &rec.enqueued_at,
    };
    let mut next = Some((rec.bid.clone(), rec.member.clone(), rec.outcome));
    while let Some((bid, name, outcome)) = next.take() {
        let Some(mut b) = load(tx, &bid, at)? else {
            break; // gone (expired): ignored
        };
        if !apply(tx, &mut b, &name, outcome, at, &mut fx)? {
            break;
        }
        let done = b.pending == 0 && !b.building;
        let completed = done && b.complete_at.is_none();
        if completed {
            b.complete_at = Some(at);
            fx.fire(&b, BatchEvent::Complete);
        }
        let succeeded = done && b.dead == 0 && b.cancelled == 0 && b.success_at.is_none();
        if succeeded {
            b.success_at = Some(at);
            fx.fire(&b, BatchEvent::Success);
        }
        save(tx, &b)?;
        next = match b.parent {
            Some(parent) if succeeded => {
                Some((parent, child_member(&bid), BatchOutcome::Succeeded))
            }
            Some(parent) if completed => Some((parent, child_member(&bid), BatchOutcome::Died)),
            _ => None,
        };
    }
    enqueue(tx, &fx.pushes)?;
    Ok(fx.fired)
}

/// The columns [`status`] reads, in its order.
const STATUS_COLUMNS: &str = "bid, parent, description, created_at, total, pending, failed, dead,
    cancelled, waiting, building, complete_at, success_at, death_at, callbacks, workflow, policy";

fn status(r: &Row<'_>) -> rusqlite::Result<BatchStatus> {
    let count = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(BatchStatus {
        bid: r.get(0)?,
        parent: r.get(1)?,
        description: r.get(2)?,
        created_at: r.get(3)?,
        total: count(4)?,
        pending: count(5)?,
        failed: count(6)?,
        dead: count(7)?,
        cancelled: count(8)?,
        waiting: count(9)?,
        building: r.get::<_, i64>(10)? != 0,
        complete_at: r.get(11)?,
        success_at: r.get(12)?,
        death_at: r.get(13)?,
        callbacks: decode_callbacks(&r.get::<_, String>(14)?)
            .into_iter()
            .map(|(e, _, _)| e.as_str().to_string())
            .collect(),
        workflow: r.get(15)?,
        policy: r.get(16)?,
    })
}

/// Batch `bid`'s state as of `at`, unless it is missing or expired.
pub(crate) fn get(
    conn: &rusqlite::Connection,
    bid: &str,
    at: f64,
) -> rusqlite::Result<Option<BatchStatus>> {
    conn.prepare_cached(&format!(
        "SELECT {STATUS_COLUMNS} FROM batches WHERE bid = ?3 AND {LIVE}"
    ))?
    .query_row(params![at, max_age(), bid], status)
    .optional()
}

/// The batches that have not expired at `at`, newest first, `limit` from `offset`, and how
/// many there are.
pub(crate) fn list(
    conn: &rusqlite::Connection,
    offset: usize,
    limit: usize,
    at: f64,
) -> rusqlite::Result<(Vec<BatchStatus>, usize)> {
    let page = conn
        .prepare_cached(&format!(
            "SELECT {STATUS_COLUMNS} FROM batches WHERE {LIVE}
             ORDER BY created_at DESC, bid DESC LIMIT ?3 OFFSET ?4"
        ))?
        .query_map(
            params![
                at,
                max_age(),
                limit.min(i64::MAX as usize) as i64,
                offset as i64
            ],
            status,
        )?
        .collect::<Result<_, _>>()?;
    let total: i64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM batches WHERE {LIVE}"))?
        .query_row(params![at, max_age()], |r| r.get(0))?;
    Ok((page, total as usize))
}

/// The member states that make up `state` (pending includes failed and waiting), three of
/// them, repeated as needed, for `state IN (?, ?, ?)`.
fn states(state: MemberState) -> [i64; 3] {
    match state {
        MemberState::Pending => [member::PENDING, member::FAILED, member::WAITING],
        MemberState::Failed => [member::FAILED; 3],
        MemberState::Dead => [member::DEAD; 3],
        MemberState::Cancelled => [member::CANCELLED; 3],
        MemberState::Waiting => [member::WAITING; 3],
    }
}

/// Batch `bid`'s members in `state`, sorted, `limit` from `offset` (none when the batch is
/// missing or expired at `at`).
pub(crate) fn members(
    conn: &rusqlite::Connection,
    bid: &str,
    state: MemberState,
    offset: usize,
    limit: usize,
    at: f64,
) -> rusqlite::Result<Vec<String>> {
    let [a, b, c] = states(state);
    conn.prepare_cached(&format!(
        "SELECT member FROM batch_members
         WHERE bid = ?3 AND state IN (?4, ?5, ?6)
           AND EXISTS (SELECT 1 FROM batches WHERE bid = ?3 AND {LIVE})
         ORDER BY member LIMIT ?7 OFFSET ?8"
    ))?
    .query_map(
        params![
            at,
            max_age(),
            bid,
            a,
            b,
            c,
            limit.min(i64::MAX as usize) as i64,
            offset as i64
        ],
        |r| r.get(0),
    )?
    .collect()
}

/// Deletes up to [`PRUNE_BATCH`] batches expired at `at` (completed ones past their keep, and
/// ones that never completed [`BATCH_MAX_AGE`] after their creation), with their members and
/// edges. Returns how many went. Batches that never completed are found by age in
/// `batches_open` (named: without statistics SQLite would walk every open batch by
/// `expires_at IS NULL` instead).
pub(crate) fn prune(tx: &Transaction<'_>, at: f64) -> rusqlite::Result<usize> {
    let bids: Vec<String> = tx
        .prepare_cached(
            "SELECT bid FROM batches WHERE expires_at <= ?1
             UNION ALL
             SELECT bid FROM batches INDEXED BY batches_open
             WHERE expires_at IS NULL AND created_at <= ?2
             LIMIT ?3",
        )?
        .query_map(params![at, at - max_age(), PRUNE_BATCH], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for bid in &bids {
        delete_batch(tx, bid)?;
    }
    Ok(bids.len())
}
