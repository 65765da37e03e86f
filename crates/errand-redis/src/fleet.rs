//! A process's fleet duties on Redis ([`Fleet`]): Sidekiq's process set, heartbeat hash, work
//! hashes and stat counters; Errand's registry of processes, whose in-flight hashes a live
//! process recovers when their heartbeat expires (one script per process).

use crate::RedisBroker;
use crate::scripts;
use async_trait::async_trait;
use errand_core::admin::SetName;
use errand_core::broker::{
    BrokerResult, Fetched, Fleet, Heartbeat, RemoteSignal, RescuePolicy, info_queues,
};
use errand_core::metrics::ClassMetrics;
use std::time::Duration;

/// Sidekiq keeps daily stat keys for five years.
const DAILY_STAT_TTL: i64 = 5 * 365 * 24 * 3600;

/// How often one process of the fleet looks for in-flight hashes whose owner is neither
/// registered nor alive (a SCAN over the keyspace, so one process per interval does it).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl RedisBroker {
    /// The sweep that needs no registration: in-flight hashes (`errand:inflight:*`, found with
    /// SCAN, never KEYS) whose owner is neither registered nor beating go back to their queues,
    /// as a dead process's do. A process stopped without handing its jobs back leaves such
    /// keys. At most once per [`SWEEP_EVERY`] across the fleet.
    async fn sweep_unregistered(
        &self,
        registered: &[(String, String)],
        policy: &RescuePolicy,
    ) -> BrokerResult<usize> {
        let mut conn = self.connection();
        let turn: Option<String> = redis::cmd("SET")
            .arg(self.keys.sweeper())
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(SWEEP_EVERY.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        if turn.is_none() {
            return Ok(0);
        }
        let live: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.processes())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let mut total = 0;
        for shard in self.keys.shards() {
            let owners: Vec<String> = registered
                .iter()
                .map(|(identity, _)| identity)
                .chain(&live)
                .map(|identity| self.keys.inflight_prefix_in(identity, shard))
                .collect();
            let root = self.keys.inflight_root_in(shard);
            let all = format!("{}*", crate::broker::escape_glob(&root));
            let lists = crate::broker::scan(&mut conn, &all)
                .await
                .map_err(|e| self.fail(e))?;
            for list in lists {
                if owners
                    .iter()
                    .any(|prefix| list.starts_with(prefix.as_str()))
                {
                    continue;
                }
                // `<identity>:<queue>`; Errand's identities are `host:pid:nonce`. Any split
                // gives back the same key; the identity is also the heartbeat key checked for
                // life.
                let rest = &list[root.len()..];
                let cut = rest
                    .match_indices(':')
                    .nth(2)
                    .map_or(rest.rfind(':'), |(i, _)| Some(i));
                let Some(cut) = cut else { continue };
                let (identity, queue) = (&rest[..cut], &rest[cut + 1..]);
                let n = self
                    .rescue(identity, &[queue.to_string()], true, policy.max_recoveries)
                    .await?;
                if n > 0 {
                    tracing::warn!(
                        identity,
                        jobs = n,
                        "recovered in-flight jobs of a process that was not registered"
                    );
                    total += n as usize;
                }
            }
        }
        Ok(total)
    }
    /// Moves the poison list's jobs (set aside by recovery) to the dead set as
    /// `Errand::PoisonPill` entries, one atomic step each, so a crash in between leaves a job
    /// on the list for the next pass, never nowhere.
    async fn bury_poison(&self, policy: &RescuePolicy) -> BrokerResult<()> {
        for shard in self.keys.shards() {
            self.bury_poison_in(shard, policy).await?;
        }
        Ok(())
    }

    /// [`RedisBroker::bury_poison`] for one shard's poison list (the only one, on one server).
    async fn bury_poison_in(&self, shard: usize, policy: &RescuePolicy) -> BrokerResult<()> {
        let poison = self.keys.poison_in(shard);
        let dead = self.keys.set_in(SetName::Dead, shard);
        let mut conn = self.connection();
        loop {
            let raw: Option<String> = redis::cmd("LINDEX")
                .arg(&poison)
                .arg(0)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            let Some(raw) = raw else {
                return Ok(());
            };
            let now = errand_core::now();
            let entry =
                errand_core::broker::poison_entry(&raw, policy.max_recoveries, now, policy.profile)
                    .unwrap_or_else(|| raw.clone());
            let limits = policy.dead_limits;
            let _: i64 = scripts::SETTLE
                .key(&poison)
                .key(&dead)
                .arg(&raw)
                .arg(&entry)
                .arg(now)
                .arg(now - limits.max_age.as_secs_f64())
                .arg(limits.max_jobs)
                .arg(crate::queue::BY_ENTRY)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            tracing::error!(
                recoveries = policy.max_recoveries,
                "poison pill: a job killed its worker repeatedly; moved to the dead set"
            );
        }
    }

    async fn rescue(
        &self,
        identity: &str,
        queues: &[String],
        require_dead: bool,
        max_recoveries: u32,
    ) -> BrokerResult<i64> {
        if self.keys.is_cluster() {
            return self
                .rescue_by_shard(identity, queues, require_dead, max_recoveries)
                .await;
        }
        let poison = self.keys.poison_in(0);
        let mut inv = scripts::RESCUE.prepare_invoke();
        inv.key(self.keys.process(identity))
            .key(self.keys.registry())
            .key(self.keys.processes())
            .key(&poison)
            .key(&poison);
        for q in queues {
            inv.key(self.keys.inflight(identity, q))
                .key(self.keys.queue(q));
        }
        inv.arg(identity)
            .arg(if require_dead { "1" } else { "0" })
            .arg(max_recoveries.max(1))
            .arg(self.keys.recoveries_prefix_in(0));
        inv.invoke_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    /// Cluster mode's recovery, in steps of one slot each: the heartbeat checked, each shard's
    /// in-flight hashes moved back to their queues by the rescue script, and only then the
    /// process unregistered (a crash before that leaves it registered for the next pass). A
    /// process that beats again between the check and a shard's step has its jobs put back
    /// while it runs them: they run again, and its own completions are refused by their fencing
    /// tokens.
    async fn rescue_by_shard(
        &self,
        identity: &str,
        queues: &[String],
        require_dead: bool,
        max_recoveries: u32,
    ) -> BrokerResult<i64> {
        let mut conn = self.connection();
        if require_dead {
            let alive: bool = redis::cmd("EXISTS")
                .arg(self.keys.process(identity))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            if alive {
                return Ok(-1);
            }
        }
        let mut by_shard: std::collections::BTreeMap<usize, Vec<&String>> = Default::default();
        for q in queues {
            by_shard.entry(self.keys.shard_of(q)).or_default().push(q);
        }
        let mut n = 0;
        for (shard, queues) in by_shard {
            let poison = self.keys.poison_in(shard);
            let mut inv = scripts::RESCUE.prepare_invoke();
            inv.key(&poison)
                .key(&poison)
                .key(&poison)
                .key(&poison)
                .key(self.keys.recoveries_in(shard));
            for q in queues {
                inv.key(self.keys.inflight(identity, q))
                    .key(self.keys.queue(q));
            }
            inv.arg(identity)
                .arg(if require_dead { "2" } else { "0" })
                .arg(max_recoveries.max(1))
                .arg("");
            let moved: i64 = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            n += moved;
        }
        if require_dead {
            let mut pipe = redis::pipe();
            pipe.cmd("HDEL")
                .arg(self.keys.registry())
                .arg(identity)
                .ignore()
                .cmd("SREM")
                .arg(self.keys.processes())
                .arg(identity)
                .ignore();
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
        }
        Ok(n)
    }
}

#[async_trait]
impl Fleet for RedisBroker {
    async fn register(&self, identity: &str, queues: &[String]) -> BrokerResult<()> {
        let info = serde_json::json!({ "queues": queues }).to_string();
        redis::cmd("HSETNX")
            .arg(self.keys.registry())
            .arg(identity)
            .arg(info)
            .query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn requeue_in_flight(&self, identity: &str, queues: &[String]) -> BrokerResult<usize> {
        Ok(self.rescue(identity, queues, false, u32::MAX).await?.max(0) as usize)
    }

    async fn held(&self, identity: &str, queues: &[String]) -> BrokerResult<Vec<Fetched>> {
        let mut out = Vec::new();
        for q in queues {
            let location = self.keys.inflight(identity, q);
            let fields: Vec<(u64, String)> = redis::cmd("HGETALL")
                .arg(&location)
                .query_async(&mut self.connection())
                .await
                .map_err(|e| self.fail(e))?;
            let mut held: Vec<Fetched> = fields
                .into_iter()
                .map(|(token, raw)| Fetched {
                    token,
                    queue: q.clone(),
                    raw,
                    location: location.clone(),
                })
                .collect();
            // Tokens grow with each fetch: oldest fetched first.
            held.sort_by_key(|f| f.token);
            out.extend(held);
        }
        Ok(out)
    }

    async fn isolated(
        &self,
    ) -> BrokerResult<Option<std::sync::Arc<dyn errand_core::broker::Broker>>> {
        if self.cluster.is_some() {
            let broker = RedisBroker::connect_cluster(self.config.clone()).await?;
            return Ok(Some(std::sync::Arc::new(broker)));
        }
        let sentinel = self
            .config
            .sentinel_client()?
            .map(|s| std::sync::Arc::new(tokio::sync::Mutex::new(s)));
        let broker = RedisBroker::assemble(self.client(), sentinel, self.config.clone()).await?;
        Ok(Some(std::sync::Arc::new(broker)))
    }

    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> BrokerResult<Option<RemoteSignal>> {
        let k = &self.keys;
        let ident = k.process(beat.identity);
        let ttl = beat.ttl.as_secs().max(1) as i64;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if beat.processed > 0 || beat.failed > 0 {
            let date = errand_core::utc_date(beat.beat);
            for (name, n) in [("processed", beat.processed), ("failed", beat.failed)] {
                let daily = k.stat_daily(name, &date);
                pipe.cmd("INCRBY").arg(k.stat(name)).arg(n).ignore();
                pipe.cmd("INCRBY").arg(&daily).arg(n).ignore();
                pipe.cmd("EXPIRE").arg(&daily).arg(DAILY_STAT_TTL).ignore();
            }
        }
        for (name, n) in [("cancelled", beat.cancelled), ("expired", beat.expired)] {
            if n > 0 {
                pipe.cmd("INCRBY").arg(k.errand_stat(name)).arg(n).ignore();
            }
        }
        // Sidekiq 6.5+ reads `:work`, 6.4 `:workers`: the running jobs are sent once, into
        // `:work`, and copied by the server (COPY, Redis 6.2+).
        let (work, workers) = (
            k.work(beat.identity, "work"),
            k.work(beat.identity, "workers"),
        );
        pipe.cmd("DEL").arg(&work).ignore();
        if beat.work.is_empty() {
            pipe.cmd("DEL").arg(&workers).ignore();
        } else {
            let fields: Vec<(&str, &str)> = beat
                .work
                .iter()
                .map(|w| (w.tid.as_str(), w.json.as_str()))
                .collect();
            pipe.cmd("HSET").arg(&work).arg(fields).ignore();
            pipe.cmd("EXPIRE").arg(&work).arg(ttl).ignore();
            pipe.cmd("COPY")
                .arg(&work)
                .arg(&workers)
                .arg("REPLACE")
                .ignore();
            pipe.cmd("EXPIRE").arg(&workers).arg(ttl).ignore();
        }
        pipe.cmd("SADD")
            .arg(k.processes())
            .arg(beat.identity)
            .ignore();
        pipe.cmd("HSET")
            .arg(&ident)
            .arg("info")
            .arg(beat.info)
            .arg("busy")
            .arg(beat.busy)
            .arg("beat")
            .arg(beat.beat)
            .arg("quiet")
            .arg(if beat.quiet { "true" } else { "false" })
            .arg("rss")
            .arg(beat.rss_kb)
            .arg("rtt_us")
            .arg(0)
            .arg("concurrency")
            .arg(beat.concurrency)
            .ignore();
        pipe.cmd("EXPIRE").arg(&ident).arg(ttl).ignore();
        // Re-assert the registration each beat: a process that was paused past its TTL and had
        // its jobs recovered is registered again as soon as it beats.
        pipe.cmd("HSET")
            .arg(k.registry())
            .arg(beat.identity)
            .arg(beat.info)
            .ignore();
        pipe.cmd("RPOP").arg(k.signals(beat.identity));
        let (signal,): (Option<String>,) = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(signal.as_deref().and_then(RemoteSignal::from_name))
    }

    async fn rescue_orphans(&self, policy: &RescuePolicy) -> BrokerResult<usize> {
        let registered: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.keys.registry())
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        let mut total = self.sweep_unregistered(&registered, policy).await?;
        for (identity, info) in registered {
            let n = self
                .rescue(&identity, &info_queues(&info), true, policy.max_recoveries)
                .await?;
            if n > 0 {
                tracing::warn!(
                    identity,
                    jobs = n,
                    "recovered in-flight jobs of a dead process"
                );
                total += n as usize;
                // A crash between two dead processes' recoveries (the failpoint tests).
                #[cfg(feature = "failpoints")]
                fail::fail_point!("inside_reaper_requeue", |_| {
                    eprintln!("failpoint inside_reaper_requeue: exiting with status 137");
                    std::process::exit(137)
                });
            }
        }
        self.bury_poison(policy).await?;
        self.trim_dead_parts(errand_core::now(), policy.dead_limits)
            .await?;
        Ok(total)
    }

    async fn unregister(&self, identity: &str) -> BrokerResult<()> {
        let k = &self.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SREM")
            .arg(k.processes())
            .arg(identity)
            .ignore()
            .cmd("HDEL")
            .arg(k.registry())
            .arg(identity)
            .ignore()
            .cmd("DEL")
            .arg(k.work(identity, "workers"))
            .arg(k.work(identity, "work"))
            .arg(k.process(identity))
            .ignore();
        pipe.query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn claim_poll(&self, window: Duration) -> BrokerResult<bool> {
        let won: Option<String> = redis::cmd("SET")
            .arg(self.keys.poller())
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(window.as_millis().max(1) as u64)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(won.is_some())
    }

    async fn process_count(&self) -> BrokerResult<usize> {
        redis::cmd("SCARD")
            .arg(self.keys.processes())
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    async fn paused_queues(&self) -> BrokerResult<Vec<String>> {
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.paused())
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        names.sort();
        Ok(names)
    }

    async fn record_metrics(&self, minute: i64, classes: &[ClassMetrics]) -> BrokerResult<()> {
        self.write_metrics(minute, classes).await
    }
}
