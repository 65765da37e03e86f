//! Execution metrics per job class: counts, total time and Sidekiq 7's duration histogram.
//! Servers record them ([`crate::broker::Fleet::record_metrics`]); the admin side reads them
//! ([`crate::admin::Admin::metrics`]).

/// Upper bounds, in milliseconds, of the execution-time histogram buckets (Sidekiq 7's); a
/// 26th bucket holds everything slower.
pub const HISTOGRAM_BOUNDS_MS: [u64; 25] = [
    20, 30, 45, 65, 100, 150, 225, 335, 500, 750, 1100, 1700, 2500, 3800, 5750, 8500, 13000, 20000,
    30000, 45000, 65000, 100000, 150000, 225000, 335000,
];

/// Number of histogram buckets: the bounds plus one for slower runs.
pub const HISTOGRAM_BUCKETS: usize = HISTOGRAM_BOUNDS_MS.len() + 1;

/// The histogram bucket a run of `ms` milliseconds falls in: the first whose bound is above
/// it (Sidekiq 7's rule, `ms < bound`: a run of exactly 20 ms is in the second bucket).
pub fn histogram_bucket(ms: u64) -> usize {
    HISTOGRAM_BOUNDS_MS
        .iter()
        .position(|&bound| ms < bound)
        .unwrap_or(HISTOGRAM_BOUNDS_MS.len())
}

/// Execution metrics of one job class over some span (a minute when recorded, a window when
/// read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMetrics {
    /// The job class (an ActiveJob's wrapped class).
    pub class: String,
    /// Attempts run, failed ones included.
    pub executions: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Total run time of the successful attempts, in milliseconds (Sidekiq's rule: failures
    /// are not timed).
    pub total_ms: u64,
    /// Successful attempts per execution-time bucket ([`HISTOGRAM_BOUNDS_MS`]).
    pub histogram: [u64; HISTOGRAM_BUCKETS],
}

impl ClassMetrics {
    /// Empty metrics for `class`.
    pub fn new(class: impl Into<String>) -> Self {
        Self {
            class: class.into(),
            executions: 0,
            failures: 0,
            total_ms: 0,
            histogram: [0; HISTOGRAM_BUCKETS],
        }
    }

    /// Counts one attempt that took `ms` milliseconds.
    pub fn record(&mut self, ms: u64, failed: bool) {
        self.executions += 1;
        if failed {
            self.failures += 1;
        } else {
            self.total_ms += ms;
            self.histogram[histogram_bucket(ms)] += 1;
        }
    }

    /// Adds `other`'s counts (same class) to these.
    pub fn merge(&mut self, other: &ClassMetrics) {
        self.executions += other.executions;
        self.failures += other.failures;
        self.total_ms += other.total_ms;
        for (a, b) in self.histogram.iter_mut().zip(other.histogram.iter()) {
            *a += b;
        }
    }

    /// The upper bound (ms) of the bucket holding quantile `q` (0..=1) of the successful
    /// runs; `None` when there were none, `Some(u64::MAX)` when it is the open last bucket.
    pub fn percentile_ms(&self, q: f64) -> Option<u64> {
        let total: u64 = self.histogram.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.histogram.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(HISTOGRAM_BOUNDS_MS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// Merges per-minute (or per-bucket) rows into one [`ClassMetrics`] per class, sorted by class.
pub fn merge_by_class(rows: impl IntoIterator<Item = ClassMetrics>) -> Vec<ClassMetrics> {
    let mut by: std::collections::BTreeMap<String, ClassMetrics> = Default::default();
    for row in rows {
        match by.get_mut(&row.class) {
            Some(m) => m.merge(&row),
            None => {
                by.insert(row.class.clone(), row);
            }
        }
    }
    by.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_sidekiqs_bounds() {
        assert_eq!(histogram_bucket(0), 0);
        assert_eq!(histogram_bucket(19), 0);
        assert_eq!(histogram_bucket(20), 1, "Sidekiq 7: ms < bound");
        assert_eq!(histogram_bucket(334_999), 24);
        assert_eq!(histogram_bucket(335_000), 25);
        assert_eq!(HISTOGRAM_BUCKETS, 26);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut m = ClassMetrics::new("A");
        assert_eq!(m.percentile_ms(0.5), None);
        for _ in 0..90 {
            m.record(10, false);
        }
        for _ in 0..10 {
            m.record(600, false);
        }
        m.record(5, true);
        assert_eq!(m.executions, 101);
        assert_eq!(m.failures, 1);
        assert_eq!(m.total_ms, 90 * 10 + 10 * 600);
        assert_eq!(m.percentile_ms(0.5), Some(20));
        assert_eq!(m.percentile_ms(0.9), Some(20));
        assert_eq!(m.percentile_ms(0.95), Some(750));
        assert_eq!(m.percentile_ms(1.0), Some(750));
        m.record(10_000_000, false);
        assert_eq!(m.percentile_ms(1.0), Some(u64::MAX));
    }

    #[test]
    fn merge_sums_per_class() {
        let mut a = ClassMetrics::new("A");
        a.record(10, false);
        let mut b = ClassMetrics::new("B");
        b.record(10, true);
        let mut a2 = ClassMetrics::new("A");
        a2.record(100, false);
        let merged = merge_by_class([b, a, a2]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].class, "A");
        assert_eq!(merged[0].executions, 2);
        assert_eq!(merged[0].total_ms, 110);
        assert_eq!(merged[1].failures, 1);
    }
}
