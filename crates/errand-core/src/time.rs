//! Timestamps in Sidekiq's payloads: written in the chosen wire profile, read in either form.

use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which Sidekiq generation's timestamp format Errand writes into payloads.
///
/// A mixed cluster must use the profile of its oldest reader (the Web UI counts as a reader).
/// Sorted-set scores are float seconds in every profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WireProfile {
    /// Sidekiq 6.x and 7.x: float epoch seconds, backoff jitter `rand(10) * (count + 1)`.
    /// Sidekiq 8 reads this too, so it is the default.
    #[default]
    V7,
    /// Sidekiq 8.x: integer epoch milliseconds, backoff jitter `rand(10 * (count + 1))`.
    V8,
}

impl WireProfile {
    /// Encodes `secs` (epoch seconds) as a payload timestamp in this profile.
    pub fn encode(self, secs: f64) -> Value {
        match self {
            // serde_json always writes an f64 with a fractional part or exponent-free decimal,
            // so Ruby reads it back as a Float (seconds), never an Integer.
            WireProfile::V7 => Value::from(secs),
            WireProfile::V8 => Value::from((secs * 1000.0).round() as i64),
        }
    }

    /// Decodes a payload timestamp written by any Sidekiq version into epoch seconds.
    ///
    /// A JSON float is seconds; an integer of at least 1e11 is milliseconds, a smaller integer is
    /// seconds (lenient toward other producers).
    pub fn decode(value: &Value) -> Option<f64> {
        let n = value.as_number()?;
        if n.is_f64() {
            return n.as_f64();
        }
        let i = n.as_i64()? as f64;
        Some(if i >= 1e11 { i / 1000.0 } else { i })
    }
}

/// Current wall-clock time as float epoch seconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The UTC date of `secs` as `YYYY-MM-DD`, the suffix of Sidekiq's daily stat keys.
pub fn utc_date(secs: f64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// A source of the current time in float epoch seconds: [`now`] by default, a controllable
/// clock in tests (`errand_testing::ManualClock`).
pub type Clock = std::sync::Arc<dyn Fn() -> f64 + Send + Sync>;

/// The wall clock as a [`Clock`].
pub fn system_clock() -> Clock {
    std::sync::Arc::new(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_writes_floats_with_a_fraction() {
        let v = WireProfile::V7.encode(1_700_000_000.0);
        assert_eq!(serde_json::to_string(&v).unwrap(), "1700000000.0");
        let v = WireProfile::V7.encode(1_795_853_128.527_193_8);
        assert!(v.as_number().unwrap().is_f64());
    }

    #[test]
    fn v8_writes_integer_millis() {
        let v = WireProfile::V8.encode(1_795_853_128.528);
        assert_eq!(serde_json::to_string(&v).unwrap(), "1795853128528");
    }

    #[test]
    fn decode_reads_every_form() {
        let f: Value = serde_json::from_str("1795853128.5").unwrap();
        assert_eq!(WireProfile::decode(&f), Some(1_795_853_128.5));
        let ms: Value = serde_json::from_str("1795853128528").unwrap();
        assert_eq!(WireProfile::decode(&ms), Some(1_795_853_128.528));
        let s: Value = serde_json::from_str("1795853128").unwrap();
        assert_eq!(WireProfile::decode(&s), Some(1_795_853_128.0));
        assert_eq!(WireProfile::decode(&Value::from("x")), None);
    }

    #[test]
    fn utc_date_formats() {
        assert_eq!(utc_date(1_795_853_128.0), "2026-11-28");
    }
}
