//! Execution metrics on Redis: per-minute hashes `errand:metrics:<minute>` (kept 26 hours)
//! and the all-time `errand:metrics:total`, each field a class's count (`<Class>|p`, `|f`,
//! `|ms`, `|h<bucket>`), written with HINCRBY so every process adds to the same record.
//!
//! With [`RedisConfig::sidekiq_metrics`](crate::RedisConfig::sidekiq_metrics) the same numbers
//! also go, in the same MULTI, into Sidekiq 7's keys (as `lib/sidekiq/metrics/tracking.rb` and
//! `shared.rb` of Sidekiq 7.0–7.3 write them), so a Sidekiq 7 Web UI's Metrics tab shows them:
//! - `j|<YYYYMMDD>|<H>:<M>` (UTC, hour and minute not padded): HINCRBY of `<Class>|p`
//!   (executions, failed ones included), `<Class>|f` (failures) and `<Class>|ms` (total ms of
//!   the successful runs, present once one succeeded); EXPIRE 8 hours.
//! - `<Class>-<DD>-<HH>:<M>` (UTC day of the month and hour padded, minute not): the successful
//!   runs' histogram, 26 unsigned 16-bit counters, bucket `i` at `#i` (bit offset 16·i, the
//!   fastest first), `BITFIELD … OVERFLOW SAT INCRBY u16 #i n` of the non-zero buckets; EXPIRE
//!   8 hours. Errand's bucket `i` is written as Sidekiq's bucket `i` (both by `ms < bound`).

use crate::RedisBroker;
use errand_core::broker::BrokerResult;
use errand_core::metrics::{ClassMetrics, HISTOGRAM_BUCKETS, merge_by_class};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a per-minute metrics hash lives (the contract asks for at least 25 hours).
pub(crate) const METRICS_MINUTE_TTL: Duration = Duration::from_secs(26 * 3600);

/// The most minutes one [`Admin::metrics`] call reads; a longer range keeps its newest minutes.
pub(crate) const METRICS_MAX_MINUTES: i64 = 1_500;

/// How long Sidekiq 7 keeps a `j|…` minute hash and a histogram (`SHORT_TERM`,
/// `HISTOGRAM_TTL`: 8 hours, renewed at each write).
pub(crate) const SIDEKIQ7_METRICS_TTL: Duration = Duration::from_secs(8 * 3600);

/// The largest count a Sidekiq 7 histogram bucket holds (an unsigned 16-bit counter that
/// saturates).
const SIDEKIQ7_BUCKET_MAX: u64 = u16::MAX as u64;

/// The `j|…` hash fields of one class's metrics, as Sidekiq 7 counts them: `<Class>|p` (every
/// execution, failed ones included), `<Class>|f` (failures, when any) and `<Class>|ms` (total ms
/// of the successful runs, when any succeeded, so possibly 0). Empty when nothing ran.
pub(crate) fn sidekiq7_fields(m: &ClassMetrics) -> Vec<(String, u64)> {
    let c = &m.class;
    let mut fields = Vec::new();
    if m.executions > 0 {
        fields.push((format!("{c}|p"), m.executions));
    }
    if m.failures > 0 {
        fields.push((format!("{c}|f"), m.failures));
    }
    if m.executions > m.failures || m.total_ms > 0 {
        fields.push((format!("{c}|ms"), m.total_ms));
    }
    fields
}

/// The arguments after the key of Sidekiq 7's histogram write for one class:
/// `OVERFLOW SAT` then `INCRBY u16 #<i> <n>` for each non-zero bucket (`n` at most 65535, which
/// saturation gives anyway). `None` when every bucket is zero (Sidekiq then writes nothing).
pub(crate) fn sidekiq7_bitfield_args(m: &ClassMetrics) -> Option<Vec<String>> {
    let mut args = vec!["OVERFLOW".to_string(), "SAT".to_string()];
    for (i, &n) in m.histogram.iter().enumerate() {
        if n > 0 {
            args.push("INCRBY".into());
            args.push("u16".into());
            args.push(format!("#{i}"));
            args.push(n.min(SIDEKIQ7_BUCKET_MAX).to_string());
        }
    }
    (args.len() > 2).then_some(args)
}

/// The hash fields one class's metrics are counted under: `<Class>|p` (executions), `|f`
/// (failures), `|ms` (total ms), and `|h<i>` for each non-zero histogram bucket. Empty for a
/// class with nothing counted.
pub(crate) fn metric_fields(m: &ClassMetrics) -> Vec<(String, u64)> {
    if m.executions == 0
        && m.failures == 0
        && m.total_ms == 0
        && m.histogram.iter().all(|&n| n == 0)
    {
        return Vec::new();
    }
    let c = &m.class;
    let mut fields = vec![
        (format!("{c}|p"), m.executions),
        (format!("{c}|f"), m.failures),
        (format!("{c}|ms"), m.total_ms),
    ];
    for (i, &n) in m.histogram.iter().enumerate() {
        if n > 0 {
            fields.push((format!("{c}|h{i}"), n));
        }
    }
    fields
}

/// Parses a metrics hash back into one row per class. The LAST `|` of a field separates the
/// class from the suffix; unknown suffixes and non-numeric values are skipped.
fn parse_metrics(hash: BTreeMap<String, String>) -> Vec<ClassMetrics> {
    let mut by: BTreeMap<String, ClassMetrics> = BTreeMap::new();
    for (field, value) in hash {
        let Some((class, suffix)) = field.rsplit_once('|') else {
            continue;
        };
        let Ok(n) = value.trim().parse::<i64>() else {
            continue;
        };
        let n = n.max(0) as u64;
        let slot = match suffix {
            "p" | "f" | "ms" => None,
            h => match h.strip_prefix('h').and_then(|i| i.parse::<usize>().ok()) {
                Some(i) if i < HISTOGRAM_BUCKETS => Some(i),
                _ => continue,
            },
        };
        let m = by
            .entry(class.to_string())
            .or_insert_with(|| ClassMetrics::new(class));
        match (suffix, slot) {
            ("p", _) => m.executions += n,
            ("f", _) => m.failures += n,
            ("ms", _) => m.total_ms += n,
            (_, Some(i)) => m.histogram[i] += n,
            _ => {}
        }
    }
    by.into_values().collect()
}

impl RedisBroker {
    /// One MULTI: HINCRBY of each class's counts (`|p`, `|f`, `|ms` and its non-zero histogram
    /// buckets) into the minute's hash (which then expires after 26 hours) and into the
    /// all-time hash. Classes with nothing counted write nothing. With
    /// [`RedisConfig::sidekiq_metrics`](crate::RedisConfig::sidekiq_metrics) (never in cluster
    /// mode, where the config is refused) the same MULTI also writes Sidekiq 7's keys (see the
    /// module's docs).
    pub(crate) async fn write_metrics(
        &self,
        minute: i64,
        classes: &[ClassMetrics],
    ) -> BrokerResult<()> {
        let minute_key = self.keys.metrics_minute(minute);
        let total_key = self.keys.metrics_total();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut any = false;
        if self.config.sidekiq_metrics && !self.keys.is_cluster() {
            self.add_sidekiq7_metrics(&mut pipe, minute, classes);
        }
        for m in classes {
            for (field, n) in metric_fields(m) {
                any = true;
                pipe.cmd("HINCRBY")
                    .arg(&minute_key)
                    .arg(&field)
                    .arg(n)
                    .ignore();
                pipe.cmd("HINCRBY")
                    .arg(&total_key)
                    .arg(&field)
                    .arg(n)
                    .ignore();
            }
        }
        if !any {
            return Ok(());
        }
        pipe.cmd("EXPIRE")
            .arg(&minute_key)
            .arg(METRICS_MINUTE_TTL.as_secs())
            .ignore();
        pipe.query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))
    }

    /// Adds Sidekiq 7's writes of `classes` for `minute` to `pipe`: HINCRBY of the `j|…` fields
    /// and EXPIRE of the hash, and per class with a timed run BITFIELD of its histogram and
    /// EXPIRE. Nothing for classes with nothing counted.
    fn add_sidekiq7_metrics(
        &self,
        pipe: &mut redis::Pipeline,
        minute: i64,
        classes: &[ClassMetrics],
    ) {
        let ttl = SIDEKIQ7_METRICS_TTL.as_secs();
        let jobs_key = self.keys.sidekiq7_metrics(minute);
        let mut any = false;
        for m in classes {
            for (field, n) in sidekiq7_fields(m) {
                any = true;
                pipe.cmd("HINCRBY")
                    .arg(&jobs_key)
                    .arg(field)
                    .arg(n)
                    .ignore();
            }
            if let Some(args) = sidekiq7_bitfield_args(m) {
                let key = self.keys.sidekiq7_histogram(&m.class, minute);
                pipe.cmd("BITFIELD").arg(&key).arg(args).ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(ttl).ignore();
            }
        }
        if any {
            pipe.cmd("EXPIRE").arg(&jobs_key).arg(ttl).ignore();
        }
    }

    /// Reads at most the newest 1,500 minutes of the range (a longer range is
    /// clamped silently), one pipelined HGETALL per minute.
    pub(crate) async fn read_metrics(
        &self,
        from_minute: i64,
        to_minute: i64,
    ) -> BrokerResult<Vec<ClassMetrics>> {
        if from_minute > to_minute {
            return Ok(Vec::new());
        }
        let from = from_minute.max(to_minute.saturating_sub(METRICS_MAX_MINUTES - 1));
        let k = self.keys();
        let mut pipe = redis::pipe();
        for minute in from..=to_minute {
            pipe.cmd("HGETALL").arg(k.metrics_minute(minute));
        }
        let hashes: Vec<BTreeMap<String, String>> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(merge_by_class(hashes.into_iter().flat_map(parse_metrics)))
    }

    pub(crate) async fn read_metrics_totals(&self) -> BrokerResult<Vec<ClassMetrics>> {
        let hash: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys().metrics_total())
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(parse_metrics(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keys;

    #[test]
    fn metric_fields_round_trip_through_parse() {
        let mut m = ClassMetrics::new("Billing::Charge|v2");
        m.record(10, false);
        m.record(600, false);
        m.record(5, true);
        let hash: BTreeMap<String, String> = metric_fields(&m)
            .into_iter()
            .map(|(f, n)| (f, n.to_string()))
            .collect();
        assert!(hash.contains_key("Billing::Charge|v2|h0"));
        assert!(
            !hash.contains_key("Billing::Charge|v2|h1"),
            "zero buckets are not written"
        );
        assert_eq!(parse_metrics(hash), vec![m]);
    }

    #[test]
    fn empty_metrics_write_nothing_and_junk_is_skipped() {
        assert!(metric_fields(&ClassMetrics::new("A")).is_empty());
        let hash: BTreeMap<String, String> = [
            ("nobar", "1"),
            ("A|zz", "1"),
            ("A|h99", "1"),
            ("A|p", "x"),
            ("B|p", "2"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let rows = parse_metrics(hash);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].class, "B");
        assert_eq!(rows[0].executions, 2);
    }

    /// Minutes since the epoch of a UTC date and time (`date -u -d … +%s` / 60).
    const MAR_5_2024_07_04: i64 = 28_493_704;
    const DEC_31_2024_23_59: i64 = 28_928_159;
    const JAN_1_2025_00_00: i64 = 28_928_160;
    const FEB_29_2024_12_30: i64 = 28_486_830;

    #[test]
    fn sidekiq7_minute_keys_follow_rubys_strftime() {
        let k = Keys::new(None);
        // "j|%Y%m%d|%-H:%-M": hour and minute unpadded.
        assert_eq!(k.sidekiq7_metrics(MAR_5_2024_07_04), "j|20240305|7:4");
        assert_eq!(k.sidekiq7_metrics(DEC_31_2024_23_59), "j|20241231|23:59");
        assert_eq!(k.sidekiq7_metrics(JAN_1_2025_00_00), "j|20250101|0:0");
        assert_eq!(k.sidekiq7_metrics(FEB_29_2024_12_30), "j|20240229|12:30");
        assert_eq!(k.sidekiq7_metrics(0), "j|19700101|0:0");
        assert_eq!(k.sidekiq7_metrics(-1), "j|19691231|23:59");
        // "<Class>-%d-%H:%-M": day and hour padded, minute not; no month or year.
        assert_eq!(
            k.sidekiq7_histogram("HardJob", MAR_5_2024_07_04),
            "HardJob-05-07:4"
        );
        assert_eq!(
            k.sidekiq7_histogram("Shop::Charge", DEC_31_2024_23_59),
            "Shop::Charge-31-23:59"
        );
        assert_eq!(k.sidekiq7_histogram("A", JAN_1_2025_00_00), "A-01-00:0");
        assert_eq!(k.sidekiq7_histogram("A", -1), "A-31-23:59");
        // A namespace prefixes them as it does Sidekiq's other keys.
        let ns = Keys::new(Some("app"));
        assert_eq!(ns.sidekiq7_metrics(MAR_5_2024_07_04), "app:j|20240305|7:4");
        assert_eq!(
            ns.sidekiq7_histogram("HardJob", MAR_5_2024_07_04),
            "app:HardJob-05-07:4"
        );
        assert_eq!(ns.stat("processed"), "app:stat:processed");
    }

    #[test]
    fn sidekiq7_fields_count_like_sidekiq() {
        let mut m = ClassMetrics::new("Shop::Charge");
        m.record(10, false);
        m.record(600, false);
        m.record(5, true);
        assert_eq!(
            sidekiq7_fields(&m),
            vec![
                ("Shop::Charge|p".to_string(), 3),
                ("Shop::Charge|f".to_string(), 1),
                ("Shop::Charge|ms".to_string(), 610),
            ]
        );
        // Only failures: no `|ms` (failures are not timed), and no histogram.
        let mut failed = ClassMetrics::new("F");
        failed.record(50, true);
        assert_eq!(
            sidekiq7_fields(&failed),
            vec![("F|p".to_string(), 1), ("F|f".to_string(), 1)]
        );
        assert_eq!(sidekiq7_bitfield_args(&failed), None);
        // A 0 ms success still has its `|ms` field, and no `|f`.
        let mut quick = ClassMetrics::new("Q");
        quick.record(0, false);
        assert_eq!(
            sidekiq7_fields(&quick),
            vec![("Q|p".to_string(), 1), ("Q|ms".to_string(), 0)]
        );
        assert!(sidekiq7_fields(&ClassMetrics::new("Idle")).is_empty());
        assert_eq!(sidekiq7_bitfield_args(&ClassMetrics::new("Idle")), None);
    }

    #[test]
    fn sidekiq7_histogram_is_saturating_u16_counters_by_bucket_index() {
        let mut m = ClassMetrics::new("A");
        m.record(10, false); // bucket 0
        m.record(600, false); // bucket 9 (500 < 600 <= 750)
        m.record(600, false);
        m.record(10_000_000, false); // bucket 25, "Slow"
        m.histogram[3] = 70_000;
        let args = sidekiq7_bitfield_args(&m).unwrap();
        let expect: Vec<String> = [
            "OVERFLOW", "SAT", "INCRBY", "u16", "#0", "1", "INCRBY", "u16", "#3", "65535",
            "INCRBY", "u16", "#9", "2", "INCRBY", "u16", "#25", "1",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(args, expect);
        assert_eq!(SIDEKIQ7_METRICS_TTL.as_secs(), 28_800);
    }
}
