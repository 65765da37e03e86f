//! Periodic jobs: a job enqueued on a cron schedule, in a time zone, exactly once per tick
//! across the whole fleet.
//!
//! Declare entries on the server with [`ServerBuilder::periodic`](crate::ServerBuilder::periodic)
//! (or [`ServerBuilder::periodic_entry`](crate::ServerBuilder::periodic_entry) for a name, a
//! zone, options and a missed-tick policy). Every server declares its entries in the backend;
//! one of them, the leader (a fenced lease any server can take over when the leader stops
//! renewing it), computes the due ticks of every declared entry and enqueues each through
//! [`Coordination::periodic_claim`](errand_core::broker::Coordination::periodic_claim): the
//! claim and the push are one atomic step that only succeeds for a tick later than the entry's
//! last, so a leader change, a paused leader that wakes, or two leaders at once never enqueue a
//! tick twice.
//!
//! Expressions are parsed by the `croner` crate: five fields (minute precision), six (with
//! seconds first), or an alias (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`). Time
//! zones are IANA names (`chrono-tz`). Across a daylight-saving change a fixed-time entry runs
//! once: on a spring-forward day a 02:30 entry runs right after the gap, on a fall-back day at
//! the first 02:30 only.
//!
//! A tick up to [`ON_TIME`] late is enqueued as usual (a short leader change loses nothing);
//! older ticks were missed (every server was down, a deploy) and follow the entry's [`Missed`]
//! policy. The job carries its tick's time (`cx.scheduled_at()`) and the entry's name under
//! Errand's own payload keys, which a Ruby Sidekiq ignores.

use crate::{Error, Job, JobOptions, encode_args};
use chrono::TimeZone;
use chrono_tz::Tz;
use croner::Cron;
use errand_core::broker::PeriodicEntry;
use errand_core::{Payload, WireProfile};
use serde_json::Value;
use std::str::FromStr;
use std::time::Duration;

/// How late a tick may be enqueued and still count as on time (not missed).
pub const ON_TIME: Duration = Duration::from_secs(60);

/// Payload key holding the tick's scheduled time (epoch seconds).
pub const SCHEDULED_AT_KEY: &str = "errand_scheduled_at";
/// Payload key holding the periodic entry's name.
pub const PERIODIC_KEY: &str = "errand_periodic";

/// What to do with ticks missed while no server was scheduling (older than [`ON_TIME`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missed {
    /// Drop them (the default): the entry goes on with its next tick.
    #[default]
    Skip,
    /// Enqueue the latest missed tick once.
    Latest,
    /// Enqueue up to this many of the latest missed ticks, oldest first.
    Backfill(u32),
}

impl Missed {
    /// The form stored in the backend: `skip`, `latest`, `backfill:<n>`.
    pub fn as_stored(self) -> String {
        match self {
            Missed::Skip => "skip".into(),
            Missed::Latest => "latest".into(),
            Missed::Backfill(n) => format!("backfill:{n}"),
        }
    }

    /// Reads the stored form; anything else is [`Missed::Skip`].
    pub fn from_stored(s: &str) -> Self {
        match s {
            "latest" => Missed::Latest,
            _ => s
                .strip_prefix("backfill:")
                .and_then(|n| n.parse().ok())
                .map_or(Missed::Skip, Missed::Backfill),
        }
    }
}

/// A cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Parses `spec` (5 or 6 fields, or an alias) in IANA zone `zone`.
    ///
    /// # Errors
    /// A message naming what is wrong with the expression or the zone.
    pub fn parse(spec: &str, zone: &str) -> Result<Self, String> {
        let cron = Cron::from_str(spec).map_err(|e| format!("cron expression {spec:?}: {e}"))?;
        let zone = Tz::from_str(zone).map_err(|_| format!("unknown time zone {zone:?}"))?;
        Ok(Self { cron, zone })
    }

    fn at(&self, t: f64) -> Option<chrono::DateTime<Tz>> {
        let secs = t.floor();
        let nanos = ((t - secs) * 1e9) as u32;
        self.zone
            .timestamp_opt(secs as i64, nanos.min(999_999_999))
            .single()
    }

    /// The first tick strictly after `t` (epoch seconds).
    pub fn next_after(&self, t: f64) -> Option<f64> {
        let next = self.cron.find_next_occurrence(&self.at(t)?, false).ok()?;
        Some(next.timestamp() as f64)
    }

    /// The last tick at or before `t` (`inclusive`) or strictly before it.
    fn previous(&self, t: f64, inclusive: bool) -> Option<f64> {
        let prev = self
            .cron
            .find_previous_occurrence(&self.at(t)?, inclusive)
            .ok()?;
        Some(prev.timestamp() as f64)
    }

    /// The ticks in `(after, until]`, newest first, at most `max`.
    fn back(&self, after: f64, until: f64, max: usize) -> Vec<f64> {
        let mut out = Vec::new();
        let mut t = self.previous(until, true);
        while let Some(tick) = t {
            if tick <= after || out.len() >= max {
                break;
            }
            out.push(tick);
            t = self.previous(tick, false);
        }
        out
    }

    /// The ticks to enqueue at `now` for an entry whose last claimed tick is `last`, oldest
    /// first: every tick in the last [`ON_TIME`], plus what `missed` asks for of the older ones.
    pub fn due(&self, last: f64, now: f64, missed: Missed) -> Vec<f64> {
        let on_time_from = now - ON_TIME.as_secs_f64();
        // More than a minute's worth of on-time ticks only with a seconds field: bounded anyway.
        let mut due = self.back(last.max(on_time_from), now, 600);
        if last < on_time_from {
            let older = match missed {
                Missed::Skip => Vec::new(),
                Missed::Latest => self.back(last, on_time_from, 1),
                Missed::Backfill(n) => self.back(last, on_time_from, n as usize),
            };
            due.extend(older);
        }
        due.reverse();
        due
    }
}

/// A periodic entry: a job, its schedule, and what to do with missed ticks.
#[derive(Debug, Clone)]
pub struct Periodic {
    pub(crate) name: String,
    pub(crate) spec: String,
    pub(crate) zone: String,
    class: String,
    args: Result<Vec<Value>, String>,
    options: JobOptions,
    pub(crate) missed: Missed,
}

impl Periodic {
    /// Entry `name` enqueuing `job` on cron expression `spec`, in UTC, with the job's own
    /// options, skipping missed ticks.
    pub fn new<J: Job>(name: impl Into<String>, spec: impl Into<String>, job: J) -> Self {
        Self {
            name: name.into(),
            spec: spec.into(),
            zone: "UTC".into(),
            class: J::NAME.to_string(),
            args: encode_args(&job).map_err(|e| e.to_string()),
            options: J::options(),
            missed: Missed::Skip,
        }
    }

    /// Reads the expression in IANA time zone `zone` (`Europe/Berlin`).
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = zone.into();
        self
    }

    /// Enqueues on `queue` instead of the job's queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.options = self.options.queue(queue);
        self
    }

    /// Retries each run up to `n` times instead of the job's setting.
    pub fn retry(mut self, n: u32) -> Self {
        self.options = self.options.retry(n);
        self
    }

    /// Never retries a run.
    pub fn no_retry(mut self) -> Self {
        self.options = self.options.no_retry();
        self
    }

    /// What to do with ticks missed while no server was scheduling.
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// The entry's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the entry and turns it into what the backend stores.
    pub(crate) fn declare(&self, profile: WireProfile) -> Result<PeriodicEntry, String> {
        if self.name.is_empty() {
            return Err("a periodic entry needs a name".into());
        }
        Schedule::parse(&self.spec, &self.zone)
            .map_err(|e| format!("periodic {}: {e}", self.name))?;
        let args = self
            .args
            .clone()
            .map_err(|e| format!("periodic {}: arguments: {e}", self.name))?;
        let mut p = Payload::new(&self.class, args, &self.options.queue, profile);
        self.options.apply(&mut p);
        p.remove("jid");
        p.remove("created_at");
        Ok(PeriodicEntry {
            name: self.name.clone(),
            spec: self.spec.clone(),
            zone: self.zone.clone(),
            queue: self.options.queue.clone(),
            template: p.to_json(),
            missed: self.missed.as_stored(),
        })
    }
}

/// The job a tick of an entry enqueues: its stored template with a new jid, `created_at` and
/// `enqueued_at` of `now`, the tick's time and the entry's name.
///
/// # Errors
/// A template that is not a job payload.
pub fn tick_payload(
    entry: &PeriodicEntry,
    tick: f64,
    now: f64,
    profile: WireProfile,
) -> Result<Payload, Error> {
    let mut p = Payload::parse(&entry.template)?;
    p.set("jid", errand_core::id::new_jid());
    p.set("created_at", profile.encode(now));
    p.stamp_enqueued(profile, now);
    p.set(PERIODIC_KEY, entry.name.as_str());
    p.set(SCHEDULED_AT_KEY, tick);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(zone: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> f64 {
        zone.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .unwrap()
            .timestamp() as f64
    }

    fn ticks(s: &Schedule, from: f64, to: f64) -> Vec<f64> {
        let mut out = Vec::new();
        let mut t = from;
        while let Some(next) = s.next_after(t) {
            if next > to {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }

    #[test]
    fn a_0230_entry_runs_once_on_both_dst_days() {
        let berlin = Tz::Europe__Berlin;
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let shown = |t: &[f64]| -> Vec<String> {
            t.iter()
                .map(|t| {
                    let at = berlin.timestamp_opt(*t as i64, 0).unwrap();
                    at.format("%F %H:%M %Z").to_string()
                })
                .collect()
        };
        // Spring forward: 2026-03-29, 02:00 → 03:00 (02:30 does not exist that day).
        let spring = ticks(
            &s,
            epoch(berlin, 2026, 3, 28, 12, 0),
            epoch(berlin, 2026, 3, 30, 12, 0),
        );
        assert_eq!(
            shown(&spring),
            ["2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST"],
            "once on the 29th, right after the gap"
        );
        // Fall back: 2026-10-25, 03:00 → 02:00 (02:30 happens twice that day).
        let fall = ticks(
            &s,
            epoch(berlin, 2026, 10, 24, 12, 0),
            epoch(berlin, 2026, 10, 26, 12, 0),
        );
        assert_eq!(
            shown(&fall),
            ["2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"],
            "once on the 25th, at the first 02:30"
        );
    }

    #[test]
    fn an_hourly_entry_follows_the_wall_clock_in_its_zone() {
        let ny = Tz::America__New_York;
        let s = Schedule::parse("@hourly", "America/New_York").unwrap();
        // The spring-forward day has 23 hours, the fall-back day 25.
        let day = |d| {
            ticks(
                &s,
                epoch(ny, 2026, 3, d, 0, 0) - 1.0,
                epoch(ny, 2026, 3, d + 1, 0, 0) - 1.0,
            )
        };
        assert_eq!(day(8).len(), 23);
        assert_eq!(day(9).len(), 24);
        let nov1 = ticks(
            &s,
            epoch(ny, 2026, 11, 1, 0, 0) - 1.0,
            epoch(ny, 2026, 11, 2, 0, 0) - 1.0,
        );
        assert_eq!(nov1.len(), 25);
    }

    #[test]
    fn seconds_and_aliases_parse_and_bad_input_is_named() {
        let s = Schedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(s.next_after(1_000.0), Some(1_010.0));
        assert!(Schedule::parse("@daily", "UTC").is_ok());
        let e = Schedule::parse("61 * * * *", "UTC").unwrap_err();
        assert!(e.contains("61 * * * *"), "{e}");
        let e = Schedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("Mars/Olympus"), "{e}");
    }

    #[test]
    fn due_ticks_follow_the_missed_policy() {
        let s = Schedule::parse("* * * * * *", "UTC").unwrap(); // every second
        let now = 10_000.0;
        // On time: every tick since the last one, within the on-time window.
        assert_eq!(
            s.due(9_997.0, now, Missed::Skip),
            [9_998.0, 9_999.0, 10_000.0]
        );
        assert!(s.due(now, now, Missed::Skip).is_empty());
        // Ten minutes down: the last minute is on time, the rest was missed.
        let last = now - 600.0;
        let skip = s.due(last, now, Missed::Skip);
        assert_eq!(skip.len(), 60);
        assert_eq!(skip[0], now - 59.0);
        let latest = s.due(last, now, Missed::Latest);
        assert_eq!(latest.len(), 61);
        assert_eq!(
            latest[0],
            now - 60.0,
            "the latest missed tick, then the on-time ones"
        );
        let backfill = s.due(last, now, Missed::Backfill(5));
        assert_eq!(
            &backfill[..5],
            [now - 64.0, now - 63.0, now - 62.0, now - 61.0, now - 60.0]
        );
        assert_eq!(backfill.len(), 65);
        let hourly = Schedule::parse("0 * * * *", "UTC").unwrap();
        // A day down on an hourly entry with backfill 3: the three latest missed hours.
        let now = 100.0 * 3600.0 + 1800.0;
        assert_eq!(
            hourly.due(now - 86_400.0, now, Missed::Backfill(3)),
            [98.0 * 3600.0, 99.0 * 3600.0, 100.0 * 3600.0]
        );
        assert!(hourly.due(now - 86_400.0, now, Missed::Skip).is_empty());
    }

    #[test]
    fn missed_policies_round_trip() {
        for m in [Missed::Skip, Missed::Latest, Missed::Backfill(7)] {
            assert_eq!(Missed::from_stored(&m.as_stored()), m);
        }
    }
}
