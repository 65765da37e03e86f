//! The hot path on Redis ([`JobQueue`]): queues are Sidekiq's `queue:<name>` lists; a fetch
//! moves jobs into the process's in-flight hash (`errand:inflight:<identity>:<queue>`, field
//! = fencing token) in one script; completions go in one round trip.

use crate::RedisBroker;
use crate::error::cmd_err;
use crate::scripts;
use async_trait::async_trait;
use errand_core::admin::SetName;
use errand_core::broker::{
    BrokerResult, Completion, Enqueue, FetchRequest, Fetched, JobQueue, ScheduledJob, Settle,
};
use errand_core::{BrokerError, Payload, WireProfile};
use redis::RedisError;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long past its wait a blocking fetch may go without a reply before the link counts as
/// broken.
const BLOCKING_MARGIN: Duration = Duration::from_secs(5);

/// The most queues of one fetch that get a blocking wait each; a fetch over more queues also
/// looks again every [`MANY_QUEUES_POLL`] for the rest.
pub(crate) const MAX_WATCHED: usize = 8;

/// How often a fetch over more than [`MAX_WATCHED`] queues looks at all of them again.
const MANY_QUEUES_POLL: Duration = Duration::from_millis(100);

/// The per-queue blocking waits of fetches over several queues. A `BLMOVE` takes one source,
/// and a connection blocked in one serves nothing else, so each watched queue has a connection
/// of its own with at most one wait on it; a wait that sees a job wakes the fetch, and a wait
/// still pending from an earlier fetch keeps watching (it is never cancelled, so no reply is
/// ever left behind on a connection).
#[derive(Default)]
pub(crate) struct Watchers {
    by_queue: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Watcher>>>,
    /// Woken (all waiters) when a watched queue holds a job or a wait fails.
    woken: tokio::sync::Notify,
}

#[derive(Default)]
struct Watcher {
    conn: tokio::sync::Mutex<Option<crate::RedisConn>>,
    /// True while its task runs (at most one per queue).
    busy: std::sync::atomic::AtomicBool,
    /// Until when some fetch wants the queue watched.
    until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Watcher {
    /// How long the queue is still wanted watched, if at all.
    fn remaining(&self) -> Option<Duration> {
        let until = (*self.until.lock().ok()?)?;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        // Below Redis's timeout resolution a wait is not worth a command.
        (left >= Duration::from_millis(2)).then_some(left)
    }
}

impl Watchers {
    /// Drops every idle watcher connection (the master moved); busy ones end with their wait.
    pub(crate) fn forget_connections(&self) {
        let all: Vec<_> = self
            .by_queue
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for w in all {
            if let Ok(mut conn) = w.conn.try_lock() {
                *conn = None;
            }
        }
    }
}

/// How many values one LPUSH/ZADD carries in a bulk push.
const PUSH_CHUNK: usize = 1_000;

/// How long a drain's claim on outbox entries lasts before another drain may push them.
const OUTBOX_CLAIM: Duration = Duration::from_secs(60);

/// How many due jobs one promote round moves.
const PROMOTE_BATCH: isize = 100;

/// Where the settle script finds the job it ends: a field of an in-flight hash (named by the
/// attempt's fencing token) or, for lists (the poison list), the entry itself.
pub(crate) const BY_FIELD: &str = "field";
/// See [`BY_FIELD`]: the job is an entry of a list.
pub(crate) const BY_ENTRY: &str = "entry";

impl RedisBroker {
    /// One fetch round: the fetch script once per run of consecutive queues of one shard (on
    /// one server, once), in the round's order, each asked for what is still missing.
    async fn fetch_now(&self, req: &FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        let mut out = Vec::new();
        let mut rest = req.queues;
        while !rest.is_empty() && out.len() < req.max {
            let shard = self.keys.shard_of(&rest[0]);
            let run = rest
                .iter()
                .take_while(|q| self.keys.shard_of(q) == shard)
                .count();
            let (queues, after) = rest.split_at(run);
            rest = after;
            self.fetch_shard(req.identity, queues, shard, req.max - out.len(), &mut out)
                .await?;
        }
        Ok(out)
    }

    /// One run of the fetch script on `queues` (all of shard `shard`): up to `max` jobs into
    /// flight, each with its token, appended to `out`.
    async fn fetch_shard(
        &self,
        identity: &str,
        queues: &[String],
        shard: usize,
        max: usize,
        out: &mut Vec<Fetched>,
    ) -> BrokerResult<()> {
        let mut inv = scripts::FETCH.prepare_invoke();
        for q in queues {
            inv.key(self.keys.queue(q));
        }
        for q in queues {
            inv.key(self.keys.inflight(identity, q));
        }
        inv.key(self.keys.fetch_seq_in(shard));
        inv.arg(max).arg(queues.len());
        // Cluster mode: each shard has its own counter, so tokens also follow Redis's clock and
        // never fall below one this broker handed out (see fetch.lua).
        if self.keys.is_cluster() {
            inv.arg(self.last_token.load(std::sync::atomic::Ordering::Relaxed) + 1);
        } else {
            inv.arg("");
        }
        let flat: Vec<redis::Value> = inv
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        let first_token: u64 = match flat.first() {
            Some(v) => redis::from_redis_value_ref(v).map_err(|e| cmd_err(e.into()))?,
            None => 0,
        };
        let pairs = flat.get(1..).unwrap_or_default().chunks_exact(2);
        // Known before any later step can fail: the next fetch never hands out a smaller token.
        if pairs.len() > 0 {
            self.last_token.fetch_max(
                first_token + pairs.len() as u64 - 1,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        for (token, pair) in (first_token..).zip(pairs) {
            let idx: usize =
                redis::from_redis_value_ref(&pair[0]).map_err(|e| cmd_err(e.into()))?;
            let bytes: Vec<u8> =
                redis::from_redis_value_ref(&pair[1]).map_err(|e| cmd_err(e.into()))?;
            let queue = queues[idx - 1].clone();
            let location = self.keys.inflight(identity, &queue);
            if let Some(raw) = self.text_or_bury(&location, &queue, token, bytes).await? {
                out.push(Fetched {
                    location,
                    queue,
                    raw,
                    token,
                });
            }
        }
        Ok(())
    }

    /// One settle: the job leaves its in-flight hash and enters its set in one script (1 when
    /// it was still held).
    fn settle_one(
        &self,
        job: &Fetched,
        to: &Settle,
    ) -> impl std::future::Future<Output = Result<i64, RedisError>> + Send + 'static {
        let (set, payload, score, trim) = match to {
            Settle::Retry { payload, at } => (SetName::Retry, payload, *at, None),
            Settle::Scheduled { payload, at } => (SetName::Scheduled, payload, *at, None),
            Settle::Dead {
                payload,
                now,
                limits,
            } => (
                SetName::Dead,
                payload,
                *now,
                Some((now - limits.max_age.as_secs_f64(), limits.max_jobs)),
            ),
        };
        let mut inv = scripts::SETTLE.prepare_invoke();
        inv.key(&job.location)
            .key(self.keys().set_in(set, self.keys.shard_of(&job.queue)))
            .arg(job.token)
            .arg(payload)
            .arg(score);
        match trim {
            Some((before, max)) => inv.arg(before).arg(max),
            None => inv.arg("").arg(""),
        };
        inv.arg(BY_FIELD);
        let mut conn = self.connection();
        async move { inv.invoke_async(&mut conn).await }
    }

    /// Waits up to `wait` for queue `list` to hold a job, on the blocking connection in `slot`
    /// (made when missing): true when one is there. Moves nothing (the queue is rotated onto
    /// itself, its right end to its right end).
    async fn wait_for_job(
        &self,
        slot: &tokio::sync::Mutex<Option<crate::RedisConn>>,
        list: &str,
        wait: Duration,
    ) -> BrokerResult<bool> {
        let mut slot = slot.lock().await;
        if slot.is_none() {
            *slot = Some(self.blocking_connection().await?);
        }
        let conn = slot.as_mut().expect("set above");
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(list)
            .arg(list)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(wait.as_secs_f64());
        let query = cmd.query_async::<Option<Vec<u8>>>(conn);
        // The connection has no response timeout of its own (the wait is the point); a reply
        // later than the wait plus a margin means the link is gone (a partition, a stalled
        // server). The wait moves nothing, so a lost reply strands nothing.
        let res: Result<Option<Vec<u8>>, RedisError> =
            match tokio::time::timeout(wait + BLOCKING_MARGIN, query).await {
                Ok(res) => res,
                Err(_) => {
                    *slot = None;
                    self.lost();
                    return Err(BrokerError::Connection(
                        format!(
                            "no reply to a blocking fetch within {:?}",
                            wait + BLOCKING_MARGIN
                        )
                        .into(),
                    ));
                }
            };
        if res.is_err() {
            // Drop a broken blocking connection; the next wait makes a new one.
            *slot = None;
        }
        res.map(|job| job.is_some()).map_err(|e| self.fail(e))
    }

    /// Has `queue` watched for `wait` from now, on its own connection: by the task already on
    /// it (which keeps waiting while some fetch wants the queue watched), or by a new one. A
    /// wait that sees a job (or fails) wakes [`Watchers::woken`] and ends the task; the next
    /// fetch starts another.
    fn watch(&self, queue: &str, wait: Duration) {
        use std::sync::atomic::Ordering;
        let watcher = {
            let Ok(mut map) = self.watchers.by_queue.lock() else {
                return;
            };
            map.entry(queue.to_string()).or_default().clone()
        };
        if let Ok(mut until) = watcher.until.lock() {
            let want = tokio::time::Instant::now() + wait;
            *until = Some(until.map_or(want, |u| u.max(want)));
        }
        if watcher.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let list = self.keys.queue(queue);
        tokio::spawn(async move {
            loop {
                let Some(left) = watcher.remaining() else {
                    watcher.busy.store(false, Ordering::Release);
                    // A fetch may have asked for more between the check and the store.
                    if watcher.remaining().is_some() && !watcher.busy.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    return;
                };
                match this.wait_for_job(&watcher.conn, &list, left).await {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(e) => tracing::debug!(error = %e, list, "a queue's blocking wait failed"),
                }
                if let Ok(mut until) = watcher.until.lock() {
                    *until = None;
                }
                watcher.busy.store(false, Ordering::Release);
                this.watchers.woken.notify_waiters();
                return;
            }
        });
    }

    /// Waits up to `wait` for a job on any of `queues`: the first [`MAX_WATCHED`] each get a
    /// blocking wait on a connection of their own, and the fetch wakes when one sees a job (or
    /// fails): true when woken. Over more queues the wait is cut to [`MANY_QUEUES_POLL`], so
    /// the rest are looked at again soon.
    async fn wait_for_any(&self, queues: &[String], wait: Duration) -> bool {
        let wait = if queues.len() > MAX_WATCHED {
            wait.min(MANY_QUEUES_POLL)
        } else {
            wait
        };
        let woken = self.watchers.woken.notified();
        tokio::pin!(woken);
        // Registered before the waits start, so a wake in between is not missed.
        woken.as_mut().enable();
        for queue in queues.iter().take(MAX_WATCHED) {
            self.watch(queue, wait);
        }
        tokio::time::timeout(wait, woken).await.is_ok()
    }

    /// A fetched entry as text; an entry that is not UTF-8 (raw bytes pushed by another
    /// client) cannot be a job: it goes from flight to the dead set at once, as an
    /// `Errand::InvalidPayload` entry showing its text lossily, dated by Redis's clock, and
    /// `None` is returned. The dead set is not trimmed here: the backend does not know the
    /// limits the fleet is configured with (the next death trims with them).
    async fn text_or_bury(
        &self,
        location: &str,
        queue: &str,
        token: u64,
        bytes: Vec<u8>,
    ) -> BrokerResult<Option<String>> {
        let bytes = match String::from_utf8(bytes) {
            Ok(text) => return Ok(Some(text)),
            Err(e) => e.into_bytes(),
        };
        let now = self.now().await?;
        let entry = errand_core::malformed_entry(
            &String::from_utf8_lossy(&bytes),
            queue,
            "not UTF-8 text",
            WireProfile::default(),
            now,
        );
        let _: i64 = scripts::SETTLE
            .key(location)
            .key(self.keys.set_in(SetName::Dead, self.keys.shard_of(queue)))
            .arg(token)
            .arg(entry.to_json())
            .arg(now)
            .arg("")
            .arg("")
            .arg(BY_FIELD)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        tracing::error!(
            queue,
            "a queue entry that is not UTF-8 text moved to the dead set"
        );
        Ok(None)
    }
}

#[async_trait]
impl JobQueue for RedisBroker {
    async fn push(&self, jobs: &[Enqueue]) -> BrokerResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut by_queue: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for j in jobs {
            by_queue.entry(&j.queue).or_default().push(&j.payload);
        }
        if self.keys.is_cluster() {
            return self.push_by_shard(&by_queue).await;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(self.keys.queues())
            .arg(by_queue.keys().collect::<Vec<_>>())
            .ignore();
        for (queue, payloads) in &by_queue {
            let key = self.keys.queue(queue);
            for chunk in payloads.chunks(PUSH_CHUNK) {
                pipe.cmd("LPUSH").arg(&key).arg(chunk).ignore();
            }
        }
        pipe.query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn push_scheduled(&self, jobs: &[ScheduledJob]) -> BrokerResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        // In cluster mode a job waits in its queue's shard of the schedule.
        let mut by_shard: BTreeMap<usize, Vec<&ScheduledJob>> = BTreeMap::new();
        for j in jobs {
            let shard = if self.keys.is_cluster() {
                self.keys.shard_of(&queue_of(&j.payload))
            } else {
                0
            };
            by_shard.entry(shard).or_default().push(j);
        }
        for (shard, jobs) in by_shard {
            let key = self.keys.set_in(SetName::Scheduled, shard);
            let mut pipe = redis::pipe();
            for chunk in jobs.chunks(PUSH_CHUNK) {
                let members: Vec<(f64, &str)> =
                    chunk.iter().map(|j| (j.at, j.payload.as_str())).collect();
                pipe.cmd("ZADD").arg(&key).arg(members).ignore();
            }
            pipe.query_async::<()>(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Every job is moved by the fetch script, which hands out its fencing token in the same
    /// step. When every queue is empty, a blocking wait (a `BLMOVE` of a queue onto itself: it
    /// moves nothing, and returns as soon as a job is there) on the queue, or on each of the
    /// queues (one connection each), is followed by the script again; another process may have taken
    /// the job meanwhile, which is fine.
    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        if req.queues.is_empty() || req.max == 0 {
            return Ok(Vec::new());
        }
        let out = self.fetch_now(&req).await?;
        if !out.is_empty() || req.wait.is_zero() {
            return Ok(out);
        }
        // Everything is empty. One queue: a blocking wait on the fetch's own connection.
        if let [queue] = req.queues {
            if self
                .wait_for_job(&self.blocking, &self.keys.queue(queue), req.wait)
                .await?
            {
                return self.fetch_now(&req).await;
            }
            return Ok(out);
        }
        // Several: a wait on each (a job on any of them wakes the fetch), then the script
        // again in this round's order; another process may have taken the job meanwhile.
        if self.wait_for_any(req.queues, req.wait).await {
            return self.fetch_now(&req).await;
        }
        Ok(out)
    }

    /// Acks are one run of the ack script (per in-flight hash, one `HMGET` and one `HDEL` for
    /// the whole group); each settle is one script, sent on the same multiplexed connection at
    /// the same time, so a whole batch costs one round trip.
    async fn complete_many(&self, batch: &[Completion<'_>]) -> BrokerResult<Vec<bool>> {
        let mut by_key: BTreeMap<&str, Vec<(usize, u64)>> = BTreeMap::new();
        let mut settles = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            match c {
                Completion::Ack(job) => by_key
                    .entry(job.location.as_str())
                    .or_default()
                    .push((i, job.token)),
                Completion::Settle(job, to) => settles.push((i, self.settle_one(job, to))),
            }
        }
        // One ack script per shard (each touches one slot); on one server, one.
        let mut by_shard: BTreeMap<usize, (redis::ScriptInvocation<'_>, Vec<usize>)> =
            BTreeMap::new();
        for (key, acks) in &by_key {
            let shard = match batch[acks[0].0] {
                Completion::Ack(job) | Completion::Settle(job, _) => self.keys.shard_of(&job.queue),
            };
            let (inv, order) = by_shard
                .entry(shard)
                .or_insert_with(|| (scripts::ACK.prepare_invoke(), Vec::new()));
            inv.key(*key).arg(acks.len());
            for (i, token) in acks {
                inv.arg(*token);
                order.push(*i);
            }
        }
        let conn = self.connection();
        let acked = futures::future::join_all(by_shard.into_values().map(|(inv, order)| {
            let mut conn = conn.clone();
            async move { (order, inv.invoke_async::<Vec<i64>>(&mut conn).await) }
        }));
        let settled = futures::future::join_all(
            settles
                .into_iter()
                .map(|(i, f)| async move { (i, f.await) }),
        );
        let (acked, settled) = futures::join!(acked, settled);
        let mut held = vec![false; batch.len()];
        for (order, removed) in acked {
            for (i, removed) in order.into_iter().zip(removed.map_err(|e| self.fail(e))?) {
                held[i] = removed > 0;
            }
        }
        for (i, moved) in settled {
            held[i] = moved.map_err(|e| self.fail(e))? == 1;
        }
        Ok(held)
    }

    async fn release(&self, job: &Fetched) -> BrokerResult<bool> {
        let n: i64 = scripts::RELEASE
            .key(&job.location)
            .key(self.keys.queue(&job.queue))
            .arg(job.token)
            .arg(&job.raw)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    async fn now(&self) -> BrokerResult<f64> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(secs as f64 + micros as f64 / 1e6)
    }

    async fn promote_due(&self, now: f64, profile: WireProfile) -> BrokerResult<usize> {
        // Each shard on its own: one whose slot is migrating does not hold up the others; the
        // first error is returned after all were tried.
        let mut moved = 0;
        let mut first_err = None;
        for shard in self.keys.shards() {
            for set in [SetName::Retry, SetName::Scheduled] {
                match self.promote_part(set, shard, now, profile).await {
                    Ok(n) => moved += n,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if self.keys.is_cluster()
                && let Err(e) = self.drain_outbox(&self.keys.outbox_in(shard)).await
            {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = self.drain_outbox_now().await {
            first_err.get_or_insert(e);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }
}

impl RedisBroker {
    /// Promotes the due jobs of one part of `set` (the set itself on one server).
    async fn promote_part(
        &self,
        set: SetName,
        shard: usize,
        now: f64,
        profile: WireProfile,
    ) -> BrokerResult<usize> {
        let key = self.keys.set_in(set, shard);
        let outbox = if self.keys.is_cluster() {
            self.keys.outbox_in(shard)
        } else {
            String::new()
        };
        let mut moved = 0;
        loop {
            let due: Vec<String> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg("-inf")
                .arg(now)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(PROMOTE_BATCH)
                .query_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            if due.is_empty() {
                break;
            }
            let mut inv = scripts::PROMOTE.prepare_invoke();
            inv.key(&key)
                .key(self.keys.queues_in(shard))
                .key(if outbox.is_empty() { &key } else { &outbox });
            // Each queue's list declared once, at the index the quadruples name.
            let mut lists: Vec<String> = Vec::new();
            let mut args: Vec<(String, String, String, usize)> = Vec::new();
            for raw in &due {
                let (payload, queue) = match Payload::parse(raw) {
                    Ok(mut p) => {
                        p.stamp_enqueued(profile, now);
                        let queue = p.queue().to_string();
                        (p.to_json(), queue)
                    }
                    // Unreadable members go to `default` unchanged, where the worker files
                    // them in the dead set with the reason: nothing sits unseen in a set.
                    Err(_) => (raw.clone(), "default".to_string()),
                };
                let at = if self.keys.shard_of(&queue) == shard {
                    let list = self.keys.queue(&queue);
                    let i = match lists.iter().position(|l| *l == list) {
                        Some(i) => i,
                        None => {
                            lists.push(list);
                            lists.len() - 1
                        }
                    };
                    i + 4
                } else {
                    0
                };
                args.push((raw.clone(), payload, queue, at));
            }
            for list in &lists {
                inv.key(list);
            }
            for (raw, payload, queue, at) in args {
                inv.arg(raw).arg(payload).arg(queue).arg(at);
            }
            let n: usize = inv
                .invoke_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            moved += n;
            if (due.len() as isize) < PROMOTE_BATCH {
                break;
            }
        }
        Ok(moved)
    }

    /// Cluster mode: pushes the jobs waiting in `outbox` (a shard's, holding what its promotion
    /// moved for a queue of another shard, or the fleet's, holding what a coordination step
    /// stored) onto their queues or into the schedule. Entries are claimed first (`outbox.lua`),
    /// so concurrent callers never push one twice, and a claim ends once its job is pushed. A
    /// crash between the claim and the push leaves the claim to lapse ([`OUTBOX_CLAIM`]); the
    /// next drain (the poller drains every outbox) puts it back and pushes it: at least once,
    /// never lost.
    pub(crate) async fn drain_outbox(&self, outbox: &str) -> BrokerResult<()> {
        let claims = format!("{outbox}:claims");
        loop {
            let entries: Vec<String> = scripts::OUTBOX
                .key(outbox)
                .key(&claims)
                .arg(OUTBOX_CLAIM.as_millis() as u64)
                .arg("")
                .arg(PROMOTE_BATCH)
                .invoke_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            if entries.is_empty() {
                return Ok(());
            }
            for entry in &entries {
                let (head, payload) = entry.split_once('\n').unwrap_or(("default", entry));
                match head.strip_prefix('\t').map(str::parse::<f64>) {
                    Some(Ok(at)) => {
                        self.push_scheduled(&[ScheduledJob {
                            at,
                            payload: payload.to_string(),
                        }])
                        .await?
                    }
                    _ => self.push_one(head, payload).await?,
                }
                let _: i64 = redis::cmd("ZREM")
                    .arg(&claims)
                    .arg(entry)
                    .query_async(&mut self.connection())
                    .await
                    .map_err(|e| self.fail(e))?;
            }
        }
    }

    /// Cluster mode: [`RedisBroker::drain_outbox`] of the fleet's outbox (nothing on one
    /// server).
    async fn drain_outbox_now(&self) -> BrokerResult<()> {
        if self.keys.is_cluster() {
            self.drain_outbox(&self.keys.outbox_fleet()).await?;
        }
        Ok(())
    }

    /// After a step that committed jobs to the fleet's outbox: pushes them on now. A failure is
    /// logged, not returned (the step itself is done, and retrying it would push its jobs
    /// again): the poller's next round drains the outbox.
    pub(crate) async fn drain_fleet_outbox(&self) {
        if let Err(e) = self.drain_outbox_now().await {
            tracing::warn!(error = %e, "could not push the jobs of the fleet's outbox yet; the poller will");
        }
    }

    /// One job pushed onto `queue`.
    pub(crate) async fn push_one(&self, queue: &str, payload: &str) -> BrokerResult<()> {
        self.push(&[Enqueue {
            queue: queue.to_string(),
            payload: payload.to_string(),
        }])
        .await
    }

    /// Cluster mode: `by_queue`'s jobs pushed with one script per shard.
    async fn push_by_shard(&self, by_queue: &BTreeMap<&str, Vec<&str>>) -> BrokerResult<()> {
        let mut by_shard: BTreeMap<usize, Vec<(&str, &Vec<&str>)>> = BTreeMap::new();
        for (queue, payloads) in by_queue {
            by_shard
                .entry(self.keys.shard_of(queue))
                .or_default()
                .push((queue, payloads));
        }
        for (shard, queues) in by_shard {
            let mut inv = scripts::PUSH.prepare_invoke();
            inv.key(self.keys.queues_in(shard));
            for (queue, payloads) in queues {
                inv.key(self.keys.queue(queue))
                    .arg(queue)
                    .arg(payloads.len())
                    .arg(payloads.as_slice());
            }
            let _: i64 = inv
                .invoke_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }
}

/// The queue a payload names (`default` when it names none or does not parse).
pub(crate) fn queue_of(payload: &str) -> String {
    Payload::parse(payload)
        .map(|p| p.queue().to_string())
        .unwrap_or_else(|_| "default".to_string())
}
