//! Every key Errand touches on Redis: Sidekiq's names, with an optional namespace prefix, and
//! Errand's own under `errand:`. No other module formats a key.
//!
//! # Cluster mode
//! On a Redis Cluster ([`Keys::cluster`]) a Lua script may only touch keys of one hash slot, so
//! the keys carry hash tags. A queue belongs to one of [`CLUSTER_SHARDS`] *shards*, chosen by
//! its name; a shard's keys share one tag: its queues' lists and in-flight hashes, its part of
//! the `retry`, `schedule` and `dead` sets, its fencing counter, poison list and outbox. Each
//! shard's tag is chosen so the shards' slots are spread evenly over the 16384, and so over the
//! masters. Everything else (the fleet's process state, stats, metrics, coordination records)
//! shares one more tag, `{f}`. On one server there is one shard and no tag: Sidekiq's layout.

use errand_core::admin::SetName;

/// How many queue shards a cluster-mode layout has. Fixed: it decides where every queue's keys
/// live, so every process of a fleet must agree on it.
pub const CLUSTER_SHARDS: usize = 16;

/// Redis Cluster's hash slots.
const SLOTS: u16 = 16384;

/// The hash slot of `key` (CRC16-XMODEM of its hash tag, or of the whole key), as Redis
/// Cluster computes it.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % SLOTS
}

/// Builds every key Errand touches, with an optional namespace (as `redis-namespace` did for
/// Sidekiq 6: `myapp` gives `myapp:queue:default`).
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// The namespace with its colon, and in cluster mode the fleet's tag (`{f}:`).
    prefix: String,
    /// Cluster mode: each shard's key prefix (namespace and the shard's tag). Empty on one
    /// server.
    shards: Vec<String>,
}

impl Keys {
    /// Keys under `namespace` (`None` or empty for Sidekiq's bare names).
    pub fn new(namespace: Option<&str>) -> Self {
        let prefix = match namespace {
            Some(ns) if !ns.is_empty() => format!("{ns}:"),
            _ => String::new(),
        };
        Self {
            prefix,
            shards: Vec::new(),
        }
    }

    /// Cluster-mode keys under `namespace` (see the module's docs). The namespace must not
    /// hold `{` or `}` (it would become the hash tag).
    pub fn cluster(namespace: Option<&str>) -> Self {
        let ns = match namespace {
            Some(ns) if !ns.is_empty() => format!("{ns}:"),
            _ => String::new(),
        };
        let width = SLOTS as usize / CLUSTER_SHARDS;
        let shards = (0..CLUSTER_SHARDS)
            .map(|i| {
                // The first tag `s<i>-<n>` whose slot falls in the shard's even share.
                let tag = (0u32..)
                    .map(|n| format!("s{i}-{n}"))
                    .find(|t| slot_of(t) as usize / width == i)
                    .expect("some tag lands in every range");
                format!("{ns}{{{tag}}}:")
            })
            .collect();
        Self {
            prefix: format!("{ns}{{f}}:"),
            shards,
        }
    }

    /// Whether these are cluster-mode keys.
    pub fn is_cluster(&self) -> bool {
        !self.shards.is_empty()
    }

    /// The queue shards: `0..1` on one server, `0..CLUSTER_SHARDS` in cluster mode.
    pub fn shards(&self) -> std::ops::Range<usize> {
        0..self.shards.len().max(1)
    }

    /// The shard queue `name` belongs to (0 on one server).
    pub fn shard_of(&self, queue: &str) -> usize {
        if self.shards.is_empty() {
            0
        } else {
            crc16::State::<crc16::XMODEM>::calculate(queue.as_bytes()) as usize % self.shards.len()
        }
    }

    /// The prefix of shard `shard`'s keys (the namespace prefix on one server).
    fn shard_prefix(&self, shard: usize) -> &str {
        self.shards.get(shard).map_or(&self.prefix, String::as_str)
    }

    /// Every prefix Errand's keys start with: the namespace's (on one server), or the fleet's
    /// and each shard's (in cluster mode).
    pub fn all_prefixes(&self) -> Vec<String> {
        std::iter::once(self.prefix.clone())
            .chain(self.shards.iter().cloned())
            .collect()
    }

    /// The namespace prefix, with its trailing colon (empty when none; in cluster mode with the
    /// fleet's hash tag).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    // Sidekiq's keys.

    /// `queues`: the set of known queue names (in cluster mode, of the queues of `shard`).
    pub fn queues_in(&self, shard: usize) -> String {
        format!("{}queues", self.shard_prefix(shard))
    }

    /// `queues`, the set of known queue names (the first shard's, in cluster mode).
    pub fn queues(&self) -> String {
        self.queues_in(0)
    }

    /// `queue:` with the namespace (and shard `shard`'s tag in cluster mode); a queue's list is
    /// this plus its name.
    pub fn queue_prefix_in(&self, shard: usize) -> String {
        format!("{}queue:", self.shard_prefix(shard))
    }

    /// `queue:` with the namespace (the first shard's, in cluster mode).
    pub fn queue_prefix(&self) -> String {
        self.queue_prefix_in(0)
    }

    /// The list of queue `name`.
    pub fn queue(&self, name: &str) -> String {
        format!("{}queue:{name}", self.shard_prefix(self.shard_of(name)))
    }

    /// One of the sorted sets, `retry`, `schedule` or `dead`: shard `shard`'s part of it in
    /// cluster mode.
    pub fn set_in(&self, set: SetName, shard: usize) -> String {
        format!("{}{}", self.shard_prefix(shard), set.key())
    }

    /// One of the sorted sets: `retry`, `schedule`, `dead` (the first shard's part of it, in
    /// cluster mode).
    pub fn set(&self, set: SetName) -> String {
        self.set_in(set, 0)
    }

    /// Every part of a sorted set: the set itself on one server, one per shard in cluster mode.
    pub fn set_parts(&self, set: SetName) -> Vec<String> {
        self.shards().map(|shard| self.set_in(set, shard)).collect()
    }

    /// `processes`: the set of live process identities.
    pub fn processes(&self) -> String {
        self.key("processes")
    }

    /// A process's heartbeat hash, named by its identity.
    pub fn process(&self, identity: &str) -> String {
        self.key(identity)
    }

    /// A process's work hash: `:workers` (Sidekiq 6.4) or `:work` (6.5+).
    pub fn work(&self, identity: &str, suffix: &str) -> String {
        format!("{}{identity}:{suffix}", self.prefix)
    }

    /// A process's remote-signal list, `<identity>-signals` (LPUSHed by the Web UI and the
    /// admin side, RPOPed by the process at each heartbeat).
    pub fn signals(&self, identity: &str) -> String {
        format!("{}{identity}-signals", self.prefix)
    }

    /// `stat:processed` or `stat:failed` (`counter` is `processed` or `failed`).
    pub fn stat(&self, counter: &str) -> String {
        format!("{}stat:{counter}", self.prefix)
    }

    /// One of Errand's own counters, `errand:stat:<counter>` (`cancelled`, `expired`): not
    /// under `stat:`, where Sidekiq keeps its own.
    pub fn errand_stat(&self, counter: &str) -> String {
        format!("{}errand:stat:{counter}", self.prefix)
    }

    /// A counter's daily key, `stat:<counter>:<YYYY-MM-DD>`.
    pub fn stat_daily(&self, counter: &str, date: &str) -> String {
        format!("{}stat:{counter}:{date}", self.prefix)
    }

    /// The set of paused queue names, `paused` (Sidekiq Pro's key, read by Sidekiq 8's UI).
    pub fn paused(&self) -> String {
        self.key("paused")
    }

    // Errand's keys.

    /// Every in-flight hash of shard `shard` starts with this (`errand:inflight:`, namespaced).
    pub fn inflight_root_in(&self, shard: usize) -> String {
        format!("{}errand:inflight:", self.shard_prefix(shard))
    }

    /// The in-flight hashes of `identity` in shard `shard` share this prefix; add the queue
    /// name.
    pub fn inflight_prefix_in(&self, identity: &str, shard: usize) -> String {
        format!("{}errand:inflight:{identity}:", self.shard_prefix(shard))
    }

    /// The in-flight hash of `identity` for `queue` (field: fencing token, value: job string).
    pub fn inflight(&self, identity: &str, queue: &str) -> String {
        format!(
            "{}errand:inflight:{identity}:{queue}",
            self.shard_prefix(self.shard_of(queue))
        )
    }

    /// Errand's registry of server processes (identity → `info`).
    pub fn registry(&self) -> String {
        self.key("errand:processes")
    }

    /// The counter that fetches take their fencing tokens from (shard `shard`'s, in cluster
    /// mode).
    pub fn fetch_seq_in(&self, shard: usize) -> String {
        format!("{}errand:lease-seq", self.shard_prefix(shard))
    }

    /// Poison pills set aside by recovery, on their way to the dead set (shard `shard`'s, in
    /// cluster mode).
    pub fn poison_in(&self, shard: usize) -> String {
        format!("{}errand:poison", self.shard_prefix(shard))
    }

    /// Per-job recovery counters share this prefix; add the jid (on one server).
    pub fn recoveries_prefix_in(&self, shard: usize) -> String {
        format!("{}errand:recoveries:", self.shard_prefix(shard))
    }

    /// Cluster mode: shard `shard`'s recovery counts, a hash of jid → count (kept a week after
    /// its last change), declared to the rescue script with the shard's other keys.
    pub fn recoveries_in(&self, shard: usize) -> String {
        format!("{}errand:recoveries", self.shard_prefix(shard))
    }

    /// Cluster mode: jobs that a step in the fleet's slot (a unique push, a periodic tick, a
    /// batch's record) stored for a queue's shard, each `<queue>\n<job>` (or
    /// `\t<score>\n<job>` for the schedule), until they are pushed there.
    pub fn outbox_fleet(&self) -> String {
        self.key("errand:outbox")
    }

    /// Cluster mode: jobs a shard's promotion moved out of its sets for a queue of another
    /// shard, each `<queue>\n<job>`, until they are pushed there.
    pub fn outbox_in(&self, shard: usize) -> String {
        format!("{}errand:outbox", self.shard_prefix(shard))
    }

    /// The fleet's turn to sweep for in-flight hashes of unregistered processes (`SET NX PX`).
    pub fn sweeper(&self) -> String {
        self.key("errand:sweeper")
    }

    /// The fleet's promotion turn (`SET NX PX`).
    pub fn poller(&self) -> String {
        self.key("errand:poller")
    }

    /// A permit set: a sorted set of holders scored by when their permit ends (stored under
    /// the name `errand:lease:<key>`, kept from before permits had their name).
    pub fn permits(&self, key: &str) -> String {
        format!("{}errand:lease:{key}", self.prefix)
    }

    /// A permit set's fencing-token counter.
    pub fn fence(&self, key: &str) -> String {
        format!("{}errand:fence:{key}", self.prefix)
    }

    /// Periodic entries' definitions: a hash of name → JSON.
    pub fn periodic(&self) -> String {
        self.key("errand:periodic")
    }

    /// A periodic entry's scheduling state: a hash of `last_tick`, `last_jid`, `last_run`,
    /// `paused` and `seen_at`.
    pub fn periodic_state(&self, name: &str) -> String {
        format!("{}errand:periodic:{name}", self.prefix)
    }

    /// The mark of a cancelled job (`errand:cancel:<jid>`, a string with a TTL).
    pub fn cancel(&self, jid: &str) -> String {
        format!("{}errand:cancel:{jid}", self.prefix)
    }

    /// A debounce key's record: the job last pushed under it (`errand:debounce:<key>`; in
    /// cluster mode in the shard of the queue it pushes to).
    pub fn debounce_in(&self, key: &str, shard: usize) -> String {
        format!("{}errand:debounce:{key}", self.shard_prefix(shard))
    }

    /// The prefix of every batch's keys (`errand:batch:`; add the bid, and a suffix for its
    /// member sets).
    pub fn batch_prefix(&self) -> String {
        self.key("errand:batch:")
    }

    /// The index of batches (`errand:batches`, a sorted set of bids by creation time).
    pub fn batches(&self) -> String {
        self.key("errand:batches")
    }

    /// A job's kept result (`errand:result:<jid>`, a string with a TTL).
    pub fn result(&self, jid: &str) -> String {
        format!("{}errand:result:{jid}", self.prefix)
    }

    /// A once-only step's record.
    pub fn once(&self, key: &str) -> String {
        format!("{}errand:once:{key}", self.prefix)
    }

    /// A rate limit's counter (bucket) or sorted set of uses (window).
    pub fn rate(&self, key: &str) -> String {
        format!("{}errand:rate:{key}", self.prefix)
    }

    /// A sliding-window rate limit's sequence (unique members for equal timestamps).
    pub fn rate_seq(&self, key: &str) -> String {
        format!("{}errand:rate-seq:{key}", self.prefix)
    }

    /// The limiters' refusal counts (a hash: limiter name → count; stored as
    /// `errand:limit-hits`).
    pub fn refusals(&self) -> String {
        self.key("errand:limit-hits")
    }

    /// Errand's execution metrics of one minute (`minute` = minutes since the epoch, UTC).
    pub fn metrics_minute(&self, minute: i64) -> String {
        format!("{}errand:metrics:{minute}", self.prefix)
    }

    /// Errand's all-time execution metrics.
    pub fn metrics_total(&self) -> String {
        self.key("errand:metrics:total")
    }

    // Sidekiq 7's execution metrics (written only with `RedisConfig::sidekiq_metrics`).

    /// Sidekiq 7's execution metrics of one minute (`minute` = minutes since the epoch, UTC):
    /// `j|<YYYYMMDD>|<H>:<M>`, hour and minute not zero-padded (Ruby's
    /// `strftime("%Y%m%d|%-H:%-M")`), e.g. `j|20240305|7:4`.
    pub fn sidekiq7_metrics(&self, minute: i64) -> String {
        let t = UtcMinute::of(minute);
        format!("{}j|{}|{}:{}", self.prefix, t.ymd, t.hour, t.minute)
    }

    /// Sidekiq 7's execution-time histogram of `class` for one minute: `<Class>-<DD>-<HH>:<M>`,
    /// day of the month and hour zero-padded, minute not (Ruby's `strftime("%d-%H:%-M")`), e.g.
    /// `HardJob-05-07:4`.
    pub fn sidekiq7_histogram(&self, class: &str, minute: i64) -> String {
        let t = UtcMinute::of(minute);
        format!(
            "{}{class}-{}-{:02}:{}",
            self.prefix,
            &t.ymd[t.ymd.len().saturating_sub(2)..],
            t.hour,
            t.minute
        )
    }
}

/// A minute since the epoch as UTC calendar parts, for Sidekiq 7's metrics key names.
struct UtcMinute {
    /// `YYYYMMDD`.
    ymd: String,
    hour: i64,
    minute: i64,
}

impl UtcMinute {
    fn of(minute: i64) -> Self {
        let date = errand_core::utc_date(minute.saturating_mul(60) as f64);
        let of_day = minute.rem_euclid(24 * 60);
        Self {
            ymd: date.chars().filter(|c| *c != '-').collect(),
            hour: of_day / 60,
            minute: of_day % 60,
        }
    }
}
