//! The backend's side of periodic jobs: a registry of entries (what to enqueue, on which
//! schedule) and the atomic claim of one tick. The schedule itself (cron parsing, time zones,
//! missed ticks) is computed by the server; the backend only guarantees that each entry's ticks
//! are enqueued at most once each, whoever claims them.

/// A periodic entry as the code declares it ([`Coordination::periodic_upsert`]).
///
/// [`Coordination::periodic_upsert`]: super::Coordination::periodic_upsert
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodicEntry {
    /// The entry's unique name (the dashboard and `errand ops periodic` use it).
    pub name: String,
    /// The cron expression (5 fields, or 6 with seconds, or an alias such as `@hourly`).
    pub spec: String,
    /// The IANA time zone the expression is read in (`UTC`, `Europe/Berlin`).
    pub zone: String,
    /// The queue the job goes to.
    pub queue: String,
    /// The job as pushed, without `jid`, `created_at` and `enqueued_at` (set per tick).
    pub template: String,
    /// What to do with ticks missed while no process was scheduling: `skip`, `latest` or
    /// `backfill:<n>`.
    pub missed: String,
}

/// A periodic entry as the backend holds it ([`Coordination::periodic_list`]).
///
/// [`Coordination::periodic_list`]: super::Coordination::periodic_list
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodicRecord {
    /// The entry as last declared.
    pub entry: PeriodicEntry,
    /// Paused from the dashboard or the CLI: no tick is claimed while paused.
    pub paused: bool,
    /// The scheduled time (epoch seconds) of the newest tick claimed, or of the entry's
    /// registration when none was: ticks at or before it are never claimed.
    pub last_tick: f64,
    /// The jid enqueued by the newest claimed tick.
    pub last_jid: Option<String>,
    /// When the newest claimed tick was enqueued (epoch seconds).
    pub last_run: Option<f64>,
    /// When a process last declared the entry (epoch seconds).
    pub seen_at: f64,
}

/// One tick to enqueue ([`Coordination::periodic_claim`]).
///
/// [`Coordination::periodic_claim`]: super::Coordination::periodic_claim
#[derive(Debug, Clone, Copy)]
pub struct TickClaim<'a> {
    /// The entry's name.
    pub name: &'a str,
    /// The tick's scheduled time, epoch seconds.
    pub at: f64,
    /// The job to enqueue for it (with its own jid).
    pub payload: &'a str,
    /// The jid inside `payload`.
    pub jid: &'a str,
    /// The queue to push it on.
    pub queue: &'a str,
    /// Now, epoch seconds (recorded as the entry's last run).
    pub now: f64,
}
