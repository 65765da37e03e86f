//! Batches on PostgreSQL (`Coordination::batch_*`, the model of [`errand_core::broker::batch`]):
//! a `batches` row per batch holding its member counts, kept up to date by each record (never
//! counted over the members: a 10,000-job batch records 10,000 times); `batch_members` for the
//! members that have not succeeded (a succeeded member's row is deleted, so a repeated record
//! finds nothing to do); `batch_edges` for what each workflow step waits for.
//!
//! Each operation is one transaction that first locks the batch's row (`FOR UPDATE`), so the
//! records of one batch apply one after the other whatever connection they come on (the last
//! members of a batch finishing at once fire its callbacks once), while different batches never
//! wait on each other. A record locks its batch, then the parent its completion reaches, and so
//! on up: always child before parent, so two records cannot wait on each other. Times are the
//! server's clock.

use crate::fleet::NOW;
use crate::queue::{add_member, enqueue};
use crate::schema::{member, state};
use deadpool_postgres::Transaction;
use errand_core::broker::batch::close_head;
use errand_core::broker::{
    BATCH_MAX_AGE, BUILDING, BatchEvent, BatchFired, BatchOutcome, BatchRecord, BatchStatus,
    Enqueue, FailurePolicy, MemberState, NewBatch, ScheduledJob, WaitingStep, child_member,
    decode_callbacks, encode_callbacks,
};
use tokio_postgres::{Error, GenericClient, Row};

/// How many expired batches one pruning statement deletes (with their members and edges), and
/// at most how many such statements one promotion turn runs.
pub(crate) const PRUNE_BATCH: i64 = 100;
pub(crate) const PRUNE_ROUNDS: usize = 10;

/// The SQL condition of a batch that has not expired (an expired batch reads as absent until
/// it is pruned; one that never completes expires [`BATCH_MAX_AGE`] after its creation).
fn live() -> String {
    format!(
        "COALESCE(expires_at, created_at + {}) > {NOW}",
        BATCH_MAX_AGE.as_secs()
    )
}

/// A waiting step as stored: its parents without repeats (and without itself).
struct Step<'a> {
    jid: &'a str,
    job: &'a errand_core::broker::JobHead,
    after: Vec<&'a str>,
}

/// The waiting steps, each jid once (the first wins), each parent once.
fn steps(waiting: &[WaitingStep]) -> Vec<Step<'_>> {
    let mut out: Vec<Step<'_>> = Vec::with_capacity(waiting.len());
    let mut seen = std::collections::HashSet::new();
    for w in waiting {
        if !seen.insert(w.jid.as_str()) {
            continue;
        }
        let mut after: Vec<&str> = Vec::with_capacity(w.after.len());
        for a in &w.after {
            if *a != w.jid && !after.contains(&a.as_str()) {
                after.push(a);
            }
        }
        out.push(Step {
            jid: &w.jid,
            job: &w.job,
            after,
        });
    }
    out
}

/// Deletes batch `bid` with its members and edges (one statement).
async fn delete_batch(tx: &Transaction<'_>, s: &str, bid: &str) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(&format!(
            "WITH m AS (DELETE FROM {s}.batch_members WHERE bid = $1),
                  e AS (DELETE FROM {s}.batch_edges WHERE bid = $1)
             DELETE FROM {s}.batches WHERE bid = $1"
        ))
        .await?;
    tx.execute(&stmt, &[&bid]).await?;
    Ok(())
}

/// Locks batch `bid`'s row; whether it exists, has not expired and has not completed (it
/// takes new members).
async fn lock_open(tx: &Transaction<'_>, s: &str, bid: &str) -> Result<bool, Error> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {live} AND complete_at IS NULL FROM {s}.batches WHERE bid = $1 FOR UPDATE",
            live = live()
        ))
        .await?;
    Ok(tx
        .query_opt(&stmt, &[&bid])
        .await?
        .is_some_and(|r| r.get(0)))
}

/// Creates `batch`: false (nothing written) when its parent is missing or complete. A batch
/// that exists already is left as it is; an expired one not yet pruned is replaced.
pub(crate) async fn create(
    tx: &Transaction<'_>,
    s: &str,
    batch: &NewBatch<'_>,
) -> Result<bool, Error> {
    let existing = tx
        .prepare_cached(&format!(
            "SELECT {live} FROM {s}.batches WHERE bid = $1 FOR UPDATE",
            live = live()
        ))
        .await?;
    match tx.query_opt(&existing, &[&batch.bid]).await? {
        Some(r) if r.get::<_, bool>(0) => return Ok(true),
        Some(_) => delete_batch(tx, s, batch.bid).await?,
        None => {}
    }
    if let Some(parent) = batch.parent {
        if !lock_open(tx, s, parent).await? {
            return Ok(false);
        }
        let add = tx
            .prepare_cached(&format!(
                "WITH added AS (
                   INSERT INTO {s}.batch_members(bid, member, state) VALUES ($1, $2, {pending})
                   ON CONFLICT DO NOTHING RETURNING 1)
                 UPDATE {s}.batches SET total = total + (SELECT count(*) FROM added),
                   pending = pending + (SELECT count(*) FROM added)
                 WHERE bid = $1",
                pending = member::PENDING
            ))
            .await?;
        tx.execute(&add, &[&parent, &child_member(batch.bid)])
            .await?;
    }
    let steps = steps(batch.waiting);
    let n = steps.len() as i64;
    let insert = tx
        .prepare_cached(&format!(
            "INSERT INTO {s}.batches(bid, parent, description, created_at, keep_secs, policy,
                                     workflow, callbacks, total, pending, waiting)
             VALUES ($1, $2, $3, {NOW}, $4, $5, $6, $7, $8, $8, $8)
             ON CONFLICT DO NOTHING"
        ))
        .await?;
    let created = tx
        .execute(
            &insert,
            &[
                &batch.bid,
                &batch.parent,
                &batch.description,
                &batch.keep.as_secs_f64(),
                &batch.policy.as_str(),
                &batch.workflow,
                &encode_callbacks(batch.callbacks),
                &n,
            ],
        )
        .await?;
    if created == 0 {
        // Created meanwhile on another connection (the same call, retried): left as it is.
        // Its parent's member was there already (the parent's lock ordered the two), so
        // nothing above changed anything.
        return Ok(true);
    }
    if !steps.is_empty() {
        let jids: Vec<&str> = steps.iter().map(|w| w.jid).collect();
        let queues: Vec<&str> = steps.iter().map(|w| w.job.queue.as_str()).collect();
        let heads: Vec<&str> = steps.iter().map(|w| w.job.head.as_str()).collect();
        let left: Vec<i32> = steps.iter().map(|w| w.after.len() as i32).collect();
        let members = tx
            .prepare_cached(&format!(
                "INSERT INTO {s}.batch_members(bid, member, state, queue, head, parents_left)
                 SELECT $1, m, {waiting}, q, h, l
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::int[]) AS t(m, q, h, l)",
                waiting = member::WAITING
            ))
            .await?;
        tx.execute(&members, &[&batch.bid, &jids, &queues, &heads, &left])
            .await?;
        let (parents, children): (Vec<&str>, Vec<&str>) = steps
            .iter()
            .flat_map(|w| w.after.iter().map(move |a| (*a, w.jid)))
            .unzip();
        let edges = tx
            .prepare_cached(&format!(
                "INSERT INTO {s}.batch_edges(bid, parent_jid, child_jid)
                 SELECT $1, p, c FROM unnest($2::text[], $3::text[]) AS t(p, c)"
            ))
            .await?;
        tx.execute(&edges, &[&batch.bid, &parents, &children])
            .await?;
    }
    Ok(true)
}

/// Adds `jids` to batch `bid` as pending members and stores the jobs (`now` onto their queues,
/// `later` into the schedule set): false (nothing written) when the batch is missing or
/// complete.
pub(crate) async fn add(
    tx: &Transaction<'_>,
    s: &str,
    bid: &str,
    jids: &[&str],
    now: &[Enqueue],
    later: &[ScheduledJob],
) -> Result<bool, Error> {
    if !lock_open(tx, s, bid).await? {
        return Ok(false);
    }
    let add = tx
        .prepare_cached(&format!(
            "WITH added AS (
               INSERT INTO {s}.batch_members(bid, member, state)
               SELECT $1, unnest($2::text[]), {pending}
               ON CONFLICT DO NOTHING RETURNING 1)
             UPDATE {s}.batches SET total = total + (SELECT count(*) FROM added),
               pending = pending + (SELECT count(*) FROM added)
             WHERE bid = $1",
            pending = member::PENDING
        ))
        .await?;
    tx.execute(&add, &[&bid, &jids]).await?;
    enqueue(&**tx, s, now).await?;
    for j in later {
        add_member(&**tx, s, state::SCHEDULE, j.at, &j.payload).await?;
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
    /// The server's clock when the row was locked: the time of the events this step fires.
    at: f64,
}

/// What a record accumulates over the batches it reaches: the report, and the jobs to push at
/// its end.
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

/// Locks batch `bid`'s row and reads it, if it exists and has not expired.
async fn load(tx: &Transaction<'_>, s: &str, bid: &str) -> Result<Option<Batch>, Error> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT parent, keep_secs, policy, callbacks, pending, failed, dead, cancelled,
                    waiting, building, complete_at, success_at, death_at, {NOW}, {live}
             FROM {s}.batches WHERE bid = $1 FOR UPDATE",
            live = live()
        ))
        .await?;
    let Some(r) = tx.query_opt(&stmt, &[&bid]).await? else {
        return Ok(None);
    };
    if !r.get::<_, bool>(14) {
        return Ok(None);
    }
    Ok(Some(Batch {
        bid: bid.to_string(),
        parent: r.get(0),
        keep: r.get(1),
        policy: FailurePolicy::parse(r.get(2)).unwrap_or_default(),
        callbacks: decode_callbacks(r.get(3)),
        pending: r.get(4),
        failed: r.get(5),
        dead: r.get(6),
        cancelled: r.get(7),
        waiting: r.get(8),
        building: r.get(9),
        complete_at: r.get(10),
        success_at: r.get(11),
        death_at: r.get(12),
        at: r.get(13),
    }))
}

/// Writes `b`'s counts and event times back.
async fn save(tx: &Transaction<'_>, s: &str, b: &Batch) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(&format!(
            "UPDATE {s}.batches SET pending = $2, failed = $3, dead = $4, cancelled = $5,
               waiting = $6, building = $7, complete_at = $8, success_at = $9, death_at = $10,
               expires_at = $11
             WHERE bid = $1"
        ))
        .await?;
    tx.execute(
        &stmt,
        &[
            &b.bid,
            &b.pending,
            &b.failed,
            &b.dead,
            &b.cancelled,
            &b.waiting,
            &b.building,
            &b.complete_at,
            &b.success_at,
            &b.death_at,
            &b.complete_at.map(|c| c + b.keep),
        ],
    )
    .await?;
    Ok(())
}

/// Marks the waiting steps of `b` in `ready` (member, queue, head) pending, no longer waiting,
/// and pushes their jobs.
async fn push_steps(
    tx: &Transaction<'_>,
    s: &str,
    b: &mut Batch,
    ready: Vec<(String, Option<String>, Option<String>)>,
    fx: &mut Effects<'_>,
) -> Result<(), Error> {
    if ready.is_empty() {
        return Ok(());
    }
    let jids: Vec<&str> = ready.iter().map(|(j, _, _)| j.as_str()).collect();
    let stmt = tx
        .prepare_cached(&format!(
            "UPDATE {s}.batch_members SET state = {pending}, queue = NULL, head = NULL
             WHERE bid = $1 AND member = ANY($2)",
            pending = member::PENDING
        ))
        .await?;
    tx.execute(&stmt, &[&b.bid, &jids]).await?;
    b.waiting -= ready.len() as i64;
    for (_, queue, head) in ready {
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
async fn release(
    tx: &Transaction<'_>,
    s: &str,
    b: &mut Batch,
    jid: &str,
    fx: &mut Effects<'_>,
) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(&format!(
            "UPDATE {s}.batch_members SET parents_left = parents_left - 1
             WHERE bid = $1 AND state = {waiting} AND member IN
               (SELECT child_jid FROM {s}.batch_edges WHERE bid = $1 AND parent_jid = $2)
             RETURNING member, parents_left, queue, head",
            waiting = member::WAITING
        ))
        .await?;
    let ready = tx
        .query(&stmt, &[&b.bid, &jid])
        .await?
        .iter()
        .filter(|r| r.get::<_, i32>(1) <= 0)
        .map(|r| (r.get(0), r.get(2), r.get(3)))
        .collect();
    push_steps(tx, s, b, ready, fx).await
}

/// Batch `b` was sealed: steps that wait for nothing (no parents) are pushed now.
async fn release_parentless(
    tx: &Transaction<'_>,
    s: &str,
    b: &mut Batch,
    fx: &mut Effects<'_>,
) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT member, queue, head FROM {s}.batch_members
             WHERE bid = $1 AND state = {waiting} AND parents_left <= 0",
            waiting = member::WAITING
        ))
        .await?;
    let ready = tx
        .query(&stmt, &[&b.bid])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    push_steps(tx, s, b, ready, fx).await
}

/// Member `jid` of `b` died: cancels waiting steps under the batch's failure policy (every
/// one, or the transitive dependents of `jid` that still wait).
async fn cancel(
    tx: &Transaction<'_>,
    s: &str,
    b: &mut Batch,
    jid: &str,
    fx: &mut Effects<'_>,
) -> Result<(), Error> {
    let (waiting, cancelled) = (member::WAITING, member::CANCELLED);
    let n = match b.policy {
        FailurePolicy::CancelAll => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE {s}.batch_members SET state = {cancelled}, queue = NULL, head = NULL
                     WHERE bid = $1 AND state = {waiting}"
                ))
                .await?;
            tx.execute(&stmt, &[&b.bid]).await?
        }
        FailurePolicy::CancelDependents => {
            // Down the edges from the dead member, through steps that still wait.
            let stmt = tx
                .prepare_cached(&format!(
                    "WITH RECURSIVE down(jid) AS (
                       SELECT $2::text COLLATE \"C\"
                       UNION
                       SELECT e.child_jid FROM down d
                       JOIN {s}.batch_edges e ON e.bid = $1 AND e.parent_jid = d.jid
                       JOIN {s}.batch_members m ON m.bid = $1 AND m.member = e.child_jid
                         AND m.state = {waiting})
                     UPDATE {s}.batch_members SET state = {cancelled}, queue = NULL, head = NULL
                     WHERE bid = $1 AND state = {waiting} AND member IN (SELECT jid FROM down)"
                ))
                .await?;
            tx.execute(&stmt, &[&b.bid, &jid]).await?
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
async fn apply(
    tx: &Transaction<'_>,
    s: &str,
    b: &mut Batch,
    name: &str,
    outcome: BatchOutcome,
    fx: &mut Effects<'_>,
) -> Result<bool, Error> {
    if name == BUILDING {
        if outcome != BatchOutcome::Succeeded || !b.building {
            return Ok(false);
        }
        b.building = false;
        release_parentless(tx, s, b, fx).await?;
        return Ok(true);
    }
    let read = tx
        .prepare_cached(&format!(
            "SELECT state FROM {s}.batch_members WHERE bid = $1 AND member = $2"
        ))
        .await?;
    let Some(st) = tx
        .query_opt(&read, &[&b.bid, &name])
        .await?
        .map(|r| r.get::<_, i16>(0))
    else {
        return Ok(false); // succeeded already, or never a member
    };
    let set = tx
        .prepare_cached(&format!(
            "UPDATE {s}.batch_members SET state = $3 WHERE bid = $1 AND member = $2"
        ))
        .await?;
    match (outcome, st) {
        (BatchOutcome::Succeeded, member::PENDING | member::FAILED | member::DEAD) => {
            let delete = tx
                .prepare_cached(&format!(
                    "DELETE FROM {s}.batch_members WHERE bid = $1 AND member = $2"
                ))
                .await?;
            tx.execute(&delete, &[&b.bid, &name]).await?;
            if st == member::DEAD {
                b.dead -= 1;
            } else {
                b.pending -= 1;
            }
            if st == member::FAILED {
                b.failed -= 1;
            }
            release(tx, s, b, name, fx).await?;
        }
        (BatchOutcome::Failed, member::PENDING) => {
            tx.execute(&set, &[&b.bid, &name, &member::FAILED]).await?;
            b.failed += 1;
        }
        (BatchOutcome::Died, member::PENDING | member::FAILED) => {
            tx.execute(&set, &[&b.bid, &name, &member::DEAD]).await?;
            b.pending -= 1;
            if st == member::FAILED {
                b.failed -= 1;
            }
            b.dead += 1;
            if b.death_at.is_none() {
                b.death_at = Some(b.at);
                fx.fire(b, BatchEvent::Death);
            }
            cancel(tx, s, b, name, fx).await?;
        }
        // Waiting steps have not been pushed (no attempt of theirs can end), cancelled ones
        // never will be; anything else is a repeat or a stale attempt.
        _ => return Ok(false),
    }
    Ok(true)
}

/// Records `rec` and everything it causes, in `tx`: the member's move, the steps it releases
/// or cancels, the callbacks whose event happens for the first time, and the same for each
/// ancestor the batch's completion reaches. The jobs are stored at the end, at the back of
/// their queues (the caller wakes the fleet after the commit).
pub(crate) async fn record(
    tx: &Transaction<'_>,
    s: &str,
    rec: &BatchRecord<'_>,
) -> Result<BatchFired, Error> {
    let mut fx = Effects {
        fired: BatchFired::default(),
        pushes: Vec::new(),
        enqueued_at: rec.enqueued_at,
    };
    let mut next = Some((rec.bid.to_string(), rec.member.to_string(), rec.outcome));
    while let Some((bid, name, outcome)) = next.take() {
        let Some(mut b) = load(tx, s, &bid).await? else {
            break; // gone (expired): ignored
        };
        if !apply(tx, s, &mut b, &name, outcome, &mut fx).await? {
            break;
        }
        let done = b.pending == 0 && !b.building;
        let completed = done && b.complete_at.is_none();
        if completed {
            b.complete_at = Some(b.at);
            fx.fire(&b, BatchEvent::Complete);
        }
        let succeeded = done && b.dead == 0 && b.cancelled == 0 && b.success_at.is_none();
        if succeeded {
            b.success_at = Some(b.at);
            fx.fire(&b, BatchEvent::Success);
        }
        save(tx, s, &b).await?;
        next = match b.parent {
            Some(parent) if succeeded => {
                Some((parent, child_member(&bid), BatchOutcome::Succeeded))
            }
            Some(parent) if completed => Some((parent, child_member(&bid), BatchOutcome::Died)),
            _ => None,
        };
    }
    enqueue(&**tx, s, &fx.pushes).await?;
    Ok(fx.fired)
}

/// The columns [`status`] reads, in its order.
const STATUS_COLUMNS: &str = "bid, parent, description, created_at, total, pending, failed, dead,
    cancelled, waiting, building, complete_at, success_at, death_at, callbacks, workflow, policy";

fn status(r: &Row) -> BatchStatus {
    let count = |i: usize| r.get::<_, i64>(i).max(0) as u64;
    BatchStatus {
        bid: r.get(0),
        parent: r.get(1),
        description: r.get(2),
        created_at: r.get(3),
        total: count(4),
        pending: count(5),
        failed: count(6),
        dead: count(7),
        cancelled: count(8),
        waiting: count(9),
        building: r.get(10),
        complete_at: r.get(11),
        success_at: r.get(12),
        death_at: r.get(13),
        callbacks: decode_callbacks(r.get(14))
            .into_iter()
            .map(|(e, _, _)| e.as_str().to_string())
            .collect(),
        workflow: r.get(15),
        policy: r.get(16),
    }
}

/// Batch `bid`'s state, unless it is missing or expired.
pub(crate) async fn get(
    c: &impl GenericClient,
    s: &str,
    bid: &str,
) -> Result<Option<BatchStatus>, Error> {
    Ok(c.query_opt(
        &format!(
            "SELECT {STATUS_COLUMNS} FROM {s}.batches WHERE bid = $1 AND {live}",
            live = live()
        ),
        &[&bid],
    )
    .await?
    .as_ref()
    .map(status))
}

/// The batches that have not expired, newest first, `limit` from `offset`, and how many there
/// are.
pub(crate) async fn list(
    c: &impl GenericClient,
    s: &str,
    offset: usize,
    limit: usize,
) -> Result<(Vec<BatchStatus>, usize), Error> {
    let live = live();
    let page = c
        .query(
            &format!(
                "SELECT {STATUS_COLUMNS} FROM {s}.batches WHERE {live}
                 ORDER BY created_at DESC, bid DESC LIMIT $1 OFFSET $2"
            ),
            &[
                &(limit.min(i64::MAX as usize) as i64),
                &(offset.min(i64::MAX as usize) as i64),
            ],
        )
        .await?
        .iter()
        .map(status)
        .collect();
    let total: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {s}.batches WHERE {live}"),
            &[],
        )
        .await?
        .get(0);
    Ok((page, total as usize))
}

/// The member states that make up `state` (pending includes failed and waiting).
fn states(state: MemberState) -> Vec<i16> {
    match state {
        MemberState::Pending => vec![member::PENDING, member::FAILED, member::WAITING],
        MemberState::Failed => vec![member::FAILED],
        MemberState::Dead => vec![member::DEAD],
        MemberState::Cancelled => vec![member::CANCELLED],
        MemberState::Waiting => vec![member::WAITING],
    }
}

/// Batch `bid`'s members in `state`, sorted, `limit` from `offset` (none when the batch is
/// missing or expired).
pub(crate) async fn members(
    c: &impl GenericClient,
    s: &str,
    bid: &str,
    state: MemberState,
    offset: usize,
    limit: usize,
) -> Result<Vec<String>, Error> {
    Ok(c.query(
        &format!(
            "SELECT member FROM {s}.batch_members
             WHERE bid = $1 AND state = ANY($2)
               AND EXISTS (SELECT 1 FROM {s}.batches WHERE bid = $1 AND {live})
             ORDER BY member LIMIT $3 OFFSET $4",
            live = live()
        ),
        &[
            &bid,
            &states(state),
            &(limit.min(i64::MAX as usize) as i64),
            &(offset.min(i64::MAX as usize) as i64),
        ],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Deletes up to [`PRUNE_BATCH`] expired batches (completed ones past their keep, and ones that
/// never completed [`BATCH_MAX_AGE`] after their creation) with their members and edges, in
/// one statement; batches a record holds are left for the next turn. Returns how many went.
pub(crate) async fn prune(c: &deadpool_postgres::Client, s: &str) -> Result<u64, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH gone AS (
               DELETE FROM {s}.batches WHERE bid IN (
                 SELECT bid FROM {s}.batches
                 WHERE expires_at <= {NOW}
                    OR (expires_at IS NULL AND created_at <= {NOW} - {max_age})
                 LIMIT $1 FOR UPDATE SKIP LOCKED)
               RETURNING bid),
             m AS (DELETE FROM {s}.batch_members WHERE bid IN (SELECT bid FROM gone)),
             e AS (DELETE FROM {s}.batch_edges WHERE bid IN (SELECT bid FROM gone))
             SELECT count(*) FROM gone",
            max_age = BATCH_MAX_AGE.as_secs()
        ))
        .await?;
    Ok(c.query_one(&stmt, &[&PRUNE_BATCH]).await?.get::<_, i64>(0) as u64)
}
