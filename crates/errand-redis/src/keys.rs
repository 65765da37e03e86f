//! Every key Errand touches on Redis: Sidekiq's names, with an optional namespace prefix, and
//! Errand's own under `errand:`. No other module formats a key.

use errand_core::admin::SetName;

/// Builds every key Errand touches, with an optional namespace (as `redis-namespace` did for
/// Sidekiq 6: `myapp` gives `myapp:queue:default`).
#[derive(Debug, Clone, Default)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `namespace` (`None` or empty for Sidekiq's bare names).
    pub fn new(namespace: Option<&str>) -> Self {
        let prefix = match namespace {
            Some(ns) if !ns.is_empty() => format!("{ns}:"),
            _ => String::new(),
        };
        Self { prefix }
    }

    /// The namespace prefix, with its trailing colon (empty when none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    // Sidekiq's keys.

    /// `queues`: the set of known queue names.
    pub fn queues(&self) -> String {
        self.key("queues")
    }

    /// `queue:` with the namespace; a queue's list is this plus its name.
    pub fn queue_prefix(&self) -> String {
        self.key("queue:")
    }

    /// The list of queue `name`.
    pub fn queue(&self, name: &str) -> String {
        format!("{}queue:{name}", self.prefix)
    }

    /// One of the sorted sets: `retry`, `schedule`, `dead`.
    pub fn set(&self, set: SetName) -> String {
        self.key(set.key())
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

    /// Every in-flight hash starts with this (`errand:inflight:`, namespaced).
    pub fn inflight_root(&self) -> String {
        self.key("errand:inflight:")
    }

    /// The in-flight hashes of `identity` share this prefix; add the queue name.
    pub fn inflight_prefix(&self, identity: &str) -> String {
        format!("{}errand:inflight:{identity}:", self.prefix)
    }

    /// The in-flight hash of `identity` for `queue` (field: fencing token, value: job string).
    pub fn inflight(&self, identity: &str, queue: &str) -> String {
        format!("{}errand:inflight:{identity}:{queue}", self.prefix)
    }

    /// Errand's registry of server processes (identity → `info`).
    pub fn registry(&self) -> String {
        self.key("errand:processes")
    }

    /// The counter that fetches take their fencing tokens from.
    pub fn fetch_seq(&self) -> String {
        self.key("errand:lease-seq")
    }

    /// Poison pills set aside by recovery, on their way to the dead set.
    pub fn poison(&self) -> String {
        self.key("errand:poison")
    }

    /// Per-job recovery counters share this prefix; add the jid.
    pub fn recoveries_prefix(&self) -> String {
        self.key("errand:recoveries:")
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

    /// A debounce key's record: the job last pushed under it (`errand:debounce:<key>`).
    pub fn debounce(&self, key: &str) -> String {
        format!("{}errand:debounce:{key}", self.prefix)
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
}
