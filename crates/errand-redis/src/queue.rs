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
use redis::{AsyncConnectionConfig, RedisError};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long past its wait a blocking fetch may go without a reply before the link counts as
/// broken.
const BLOCKING_MARGIN: Duration = Duration::from_secs(5);

/// How many values one LPUSH/ZADD carries in a bulk push.
const PUSH_CHUNK: usize = 1_000;

/// How many due jobs one promote round moves.
const PROMOTE_BATCH: isize = 100;

/// Where the settle script finds the job it ends: a field of an in-flight hash (named by the
/// attempt's fencing token) or, for lists (the poison list), the entry itself.
pub(crate) const BY_FIELD: &str = "field";
/// See [`BY_FIELD`]: the job is an entry of a list.
pub(crate) const BY_ENTRY: &str = "entry";

impl RedisBroker {
    /// One run of the fetch script: up to `req.max` jobs into flight, each with its token.
    async fn fetch_now(&self, req: &FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        let prefix = self.keys.inflight_prefix(req.identity);
        let mut inv = scripts::FETCH.prepare_invoke();
        for q in req.queues {
            inv.key(self.keys.queue(q));
        }
        inv.arg(req.max).arg(&prefix).arg(self.keys.fetch_seq());
        for q in req.queues {
            inv.arg(q);
        }
        let flat: Vec<redis::Value> = inv
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let first_token: u64 = match flat.first() {
            Some(v) => redis::from_redis_value_ref(v).map_err(|e| cmd_err(e.into()))?,
            None => 0,
        };
        let pairs = flat.get(1..).unwrap_or_default().chunks_exact(2);
        for (token, pair) in (first_token..).zip(pairs) {
            let idx: usize =
                redis::from_redis_value_ref(&pair[0]).map_err(|e| cmd_err(e.into()))?;
            let bytes: Vec<u8> =
                redis::from_redis_value_ref(&pair[1]).map_err(|e| cmd_err(e.into()))?;
            let queue = req.queues[idx - 1].clone();
            let location = self.keys.inflight(req.identity, &queue);
            if let Some(raw) = self.text_or_bury(&location, &queue, token, bytes).await? {
                out.push(Fetched {
                    location,
                    queue,
                    raw,
                    token,
                });
            }
        }
        Ok(out)
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
            .key(self.keys().set(set))
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

    /// Waits up to `wait` for queue `list` to hold a job, on the blocking connection: true when
    /// one is there. Moves nothing (the queue is rotated onto itself, its right end to its
    /// right end).
    async fn wait_for_job(&self, list: &str, wait: Duration) -> BrokerResult<bool> {
        let mut slot = self.blocking.lock().await;
        if slot.is_none() {
            let cfg = AsyncConnectionConfig::new()
                .set_response_timeout(None)
                .set_connection_timeout(Some(Duration::from_secs(5)));
            *slot = Some(
                self.client()
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .map_err(|e| self.fail(e))?,
            );
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
            .key(self.keys.set(SetName::Dead))
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
        let key = self.keys.set(SetName::Scheduled);
        let mut pipe = redis::pipe();
        for chunk in jobs.chunks(PUSH_CHUNK) {
            let members: Vec<(f64, &str)> =
                chunk.iter().map(|j| (j.at, j.payload.as_str())).collect();
            pipe.cmd("ZADD").arg(&key).arg(members).ignore();
        }
        pipe.query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    /// Every job is moved by the fetch script, which hands out its fencing token in the same
    /// step. When every queue is empty, a blocking wait on the first queue (a `BLMOVE` of the
    /// queue onto itself: it moves nothing, and returns as soon as a job is there) is followed
    /// by the script again; another process may have taken the job meanwhile, which is fine.
    async fn fetch(&self, req: FetchRequest<'_>) -> BrokerResult<Vec<Fetched>> {
        if req.queues.is_empty() || req.max == 0 {
            return Ok(Vec::new());
        }
        let out = self.fetch_now(&req).await?;
        if !out.is_empty() || req.wait.is_zero() {
            return Ok(out);
        }
        // Everything is empty: wait on the first queue in this round's order. With several
        // queues the wait is short so the others are polled again soon.
        let wait = if req.queues.len() == 1 {
            req.wait
        } else {
            req.wait.min(Duration::from_millis(100))
        };
        if self
            .wait_for_job(&self.keys.queue(&req.queues[0]), wait)
            .await?
        {
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
        let mut inv = scripts::ACK.prepare_invoke();
        let mut order = Vec::new();
        for (key, acks) in &by_key {
            inv.key(*key).arg(acks.len());
            for (i, token) in acks {
                inv.arg(*token);
                order.push(*i);
            }
        }
        let mut conn = self.connection();
        let acked = async {
            if order.is_empty() {
                Ok(Vec::new())
            } else {
                inv.invoke_async::<Vec<i64>>(&mut conn).await
            }
        };
        let settled = futures::future::join_all(
            settles
                .into_iter()
                .map(|(i, f)| async move { (i, f.await) }),
        );
        let (acked, settled) = futures::join!(acked, settled);
        let mut held = vec![false; batch.len()];
        for (i, removed) in order.into_iter().zip(acked.map_err(|e| self.fail(e))?) {
            held[i] = removed > 0;
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
        let mut moved = 0;
        for set in [SetName::Retry, SetName::Scheduled] {
            let key = self.keys.set(set);
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
                    .arg(self.keys.queue_prefix())
                    .arg(self.keys.queues());
                for raw in &due {
                    match Payload::parse(raw) {
                        Ok(mut p) => {
                            p.stamp_enqueued(profile, now);
                            let queue = p.queue().to_string();
                            inv.arg(raw).arg(p.to_json()).arg(queue);
                        }
                        // Unreadable members go to `default` unchanged, where the worker files
                        // them in the dead set with the reason: nothing sits unseen in a set.
                        Err(_) => {
                            inv.arg(raw).arg(raw).arg("default");
                        }
                    }
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
        }
        Ok(moved)
    }
}
