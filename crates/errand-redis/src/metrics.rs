//! Execution metrics on Redis: per-minute hashes `errand:metrics:<minute>` (kept 26 hours)
//! and the all-time `errand:metrics:total`, each field a class's count (`<Class>|p`, `|f`,
//! `|ms`, `|h<bucket>`), written with HINCRBY so every process adds to the same record.

use crate::RedisBroker;
use errand_core::broker::BrokerResult;
use errand_core::metrics::{ClassMetrics, HISTOGRAM_BUCKETS, merge_by_class};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a per-minute metrics hash lives (the contract asks for at least 25 hours).
pub(crate) const METRICS_MINUTE_TTL: Duration = Duration::from_secs(26 * 3600);

/// The most minutes one [`Admin::metrics`] call reads; a longer range keeps its newest minutes.
pub(crate) const METRICS_MAX_MINUTES: i64 = 1_500;

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
    /// all-time hash. Classes with nothing counted write nothing.
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
#[cfg(test)]
mod tests {
    use super::*;

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
}
