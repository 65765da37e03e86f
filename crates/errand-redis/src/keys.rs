//! Key names: Sidekiq's, with an optional namespace prefix, and Errand's own under `errand:`.

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

    /// A bare key with the namespace applied.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `queue:` with the namespace; a queue's list is this plus its name.
    pub fn queue_prefix(&self) -> String {
        self.key("queue:")
    }

    /// The list of queue `name`.
    pub fn queue(&self, name: &str) -> String {
        format!("{}queue:{name}", self.prefix)
    }

    /// The in-flight lists of `identity` share this prefix; add the queue name.
    pub fn inflight_prefix(&self, identity: &str) -> String {
        format!("{}errand:inflight:{identity}:", self.prefix)
    }

    /// Errand's registry of live server processes.
    pub fn registry(&self) -> String {
        self.key("errand:processes")
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

    /// The set of paused queue names, `paused` (Sidekiq Pro's key, read by Sidekiq 8's UI).
    pub fn paused(&self) -> String {
        self.key("paused")
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
