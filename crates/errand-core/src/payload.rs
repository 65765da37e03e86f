//! A job payload as Sidekiq stores it.

use crate::{PayloadError, WireProfile, backtrace};
use serde_json::{Map, Value};

/// Sidekiq's cap on a stored `error_message`.
const MAX_ERROR_MESSAGE: usize = 10_000;

/// What a payload's `retry` key asks for (spec §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySetting {
    /// `true`: the server's maximum (25 by default).
    Default,
    /// An integer: that many retries; `0` sends the first failure straight to the dead set.
    Count(u32),
    /// `false`: a failure drops the job (death handlers still run).
    Disabled,
    /// The key is absent (or not a bool/integer).
    Absent,
}

/// A job payload: an ordered JSON object that keeps every key, known or not.
///
/// Unknown keys (Ruby middleware, Sidekiq Pro's `bid`, tracing context) are carried unchanged
/// through retries, scheduling and the dead set. Key order is kept too.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    map: Map<String, Value>,
}

impl Payload {
    /// Parses and validates a raw queue entry: a JSON object with a string `class` and an
    /// array `args`.
    ///
    /// # Errors
    /// Returns [`PayloadError`] naming what is wrong.
    pub fn parse(raw: &str) -> Result<Self, PayloadError> {
        let value: Value =
            serde_json::from_str(raw).map_err(|e| PayloadError::Json(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(PayloadError::NotAnObject);
        };
        Self::from_map(map)
    }

    /// Validates an already parsed object.
    ///
    /// # Errors
    /// [`PayloadError::MissingClass`] or [`PayloadError::MissingArgs`].
    pub fn from_map(map: Map<String, Value>) -> Result<Self, PayloadError> {
        if !map.get("class").is_some_and(Value::is_string) {
            return Err(PayloadError::MissingClass);
        }
        if !map.get("args").is_some_and(Value::is_array) {
            return Err(PayloadError::MissingArgs);
        }
        Ok(Self { map })
    }

    /// A new payload with Sidekiq's defaults merged in: `retry: true`, `queue`, `class`, `args`,
    /// a fresh `jid` and `created_at`.
    pub fn new(class: &str, args: Vec<Value>, queue: &str, profile: WireProfile) -> Self {
        let mut map = Map::new();
        map.insert("retry".into(), Value::Bool(true));
        map.insert("queue".into(), Value::from(queue));
        map.insert("args".into(), Value::Array(args));
        map.insert("class".into(), Value::from(class));
        map.insert("jid".into(), Value::from(crate::id::new_jid()));
        map.insert("created_at".into(), profile.encode(crate::now()));
        Self { map }
    }

    /// The job class name (Sidekiq's `class`).
    pub fn class(&self) -> &str {
        self.map.get("class").and_then(Value::as_str).unwrap_or("")
    }

    /// The class to show and dispatch on: `wrapped` for ActiveJob payloads, else `class`.
    pub fn display_class(&self) -> &str {
        self.str("wrapped").unwrap_or_else(|| self.class())
    }

    /// The positional arguments.
    pub fn args(&self) -> &[Value] {
        self.map
            .get("args")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Replaces the positional arguments.
    pub fn set_args(&mut self, args: Vec<Value>) {
        self.map.insert("args".into(), Value::Array(args));
    }

    /// The job id (empty if absent).
    pub fn jid(&self) -> &str {
        self.str("jid").unwrap_or("")
    }

    /// The queue name, `default` when absent.
    pub fn queue(&self) -> &str {
        self.str("queue").unwrap_or("default")
    }

    /// A string-valued key.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.map.get(key).and_then(Value::as_str)
    }

    /// Any key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// Sets a key, keeping its position when it already exists.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.map.insert(key.to_string(), value.into());
    }

    /// Removes a key, keeping the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.map.shift_remove(key)
    }

    /// The `retry` setting.
    pub fn retry(&self) -> RetrySetting {
        match self.map.get("retry") {
            Some(Value::Bool(true)) => RetrySetting::Default,
            Some(Value::Bool(false)) => RetrySetting::Disabled,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if i > 0 => RetrySetting::Count(i.min(i64::from(u32::MAX)) as u32),
                Some(_) => RetrySetting::Count(0),
                None => RetrySetting::Absent,
            },
            _ => RetrySetting::Absent,
        }
    }

    /// The `retry_count` (absent before the first failure).
    ///
    /// Sidekiq's manual "Retry now" decrements it first, so it can be `-1`; that reads as 0.
    pub fn retry_count(&self) -> Option<u32> {
        self.map
            .get("retry_count")
            .and_then(Value::as_i64)
            .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    /// Which attempt a run of this payload is: 1 for the first run, 2 for the first retry
    /// (Sidekiq's `retry_count` 0), and so on.
    pub fn attempt(&self) -> u32 {
        self.retry_count().map_or(1, |n| n.saturating_add(2))
    }

    /// A timestamp key (`created_at`, `enqueued_at`, `failed_at`, ...) in epoch seconds, whatever
    /// profile wrote it.
    pub fn time(&self, key: &str) -> Option<f64> {
        self.map.get(key).and_then(WireProfile::decode)
    }

    /// Sets `enqueued_at` to `now` in the given profile, as every push to a queue list does.
    pub fn stamp_enqueued(&mut self, profile: WireProfile, now: f64) {
        self.set("enqueued_at", profile.encode(now));
    }

    /// Records a failed attempt (spec §3.4 steps 3–6) and returns the new `retry_count`.
    ///
    /// Sets `queue` to `retry_queue` or `fetched_from`, the error fields, `failed_at` or
    /// `retried_at`, and `error_backtrace` when the job asked for backtraces.
    pub fn record_failure(&mut self, failure: &Failure<'_>) -> u32 {
        let queue = self
            .str("retry_queue")
            .unwrap_or(failure.fetched_from)
            .to_string();
        self.set("queue", queue);
        self.set(
            "error_message",
            truncate(failure.message, MAX_ERROR_MESSAGE),
        );
        self.set("error_class", failure.class);
        let stamp = failure.profile.encode(failure.now);
        // Any present count means an earlier failure, including Sidekiq's -1 after a manual
        // retry (which makes the next count 0 again, so manual retries use no budget).
        let previous = self.map.get("retry_count").and_then(Value::as_i64);
        let count = match previous {
            Some(c) => {
                self.set("retried_at", stamp);
                (c + 1).clamp(0, i64::from(u32::MAX)) as u32
            }
            None => {
                self.set("failed_at", stamp);
                0
            }
        };
        self.set("retry_count", count);
        let keep = match self.map.get("backtrace") {
            Some(Value::Bool(true)) => Some(usize::MAX),
            Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
            _ => None,
        };
        if let Some(n) = keep.filter(|n| *n > 0) {
            let lines: Vec<String> = failure.backtrace.iter().take(n).cloned().collect();
            self.set("error_backtrace", backtrace::encode(&lines));
        }
        count
    }

    /// The object behind the payload.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// Consumes the payload into its object.
    pub fn into_map(self) -> Map<String, Value> {
        self.map
    }

    /// Encodes the payload as compact JSON.
    pub fn to_json(&self) -> String {
        // A Map of Values always serializes.
        serde_json::to_string(&self.map).unwrap_or_default()
    }
}

/// One failed attempt, as recorded into a payload by [`Payload::record_failure`].
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// The error's class name (`error_class`).
    pub class: &'a str,
    /// The error message (`error_message`); cut to 10,000 characters.
    pub message: &'a str,
    /// Backtrace lines, stored when the job's `backtrace` option asks for them.
    pub backtrace: &'a [String],
    /// The queue the job was fetched from.
    pub fetched_from: &'a str,
    /// The time of the failure in epoch seconds.
    pub now: f64,
    /// The timestamp format to write.
    pub profile: WireProfile,
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// How much of a bad queue entry a dead-set entry keeps (in `raw`, and again as its argument):
/// enough to see what it was, bounded so a 10 MB blob does not become a 10 MB dead entry.
pub const MALFORMED_PREVIEW: usize = 32 * 1024;

/// The dead-set entry for a queue entry that is not a runnable job: a valid payload of class
/// `Errand::InvalidPayload` whose `error_message` names `reason`, with the original text kept in
/// `raw` (and as the only argument) — cut to [`MALFORMED_PREVIEW`] bytes with the original size
/// noted when it is longer.
pub fn malformed_entry(
    raw: &str,
    queue: &str,
    reason: &str,
    profile: WireProfile,
    now: f64,
) -> Payload {
    let (kept, message) = if raw.len() > MALFORMED_PREVIEW {
        let mut end = MALFORMED_PREVIEW;
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        (
            &raw[..end],
            format!(
                "queue entry is not a runnable job ({reason}); the first {end} of its {} bytes are kept in \"raw\"",
                raw.len()
            ),
        )
    } else {
        (
            raw,
            format!(
                "queue entry is not a runnable job ({reason}); the original text is kept in \"raw\""
            ),
        )
    };
    let mut p = Payload::new(
        "Errand::InvalidPayload",
        vec![Value::from(kept)],
        queue,
        profile,
    );
    p.set("retry", false);
    p.set("error_class", "Errand::InvalidPayload");
    p.set("error_message", message);
    p.set("failed_at", profile.encode(now));
    p.set("retry_count", 0);
    p.set("raw", kept);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUBY: &str = r#"{"retry":2,"queue":"default","backtrace":5,"tags":["alpha"],"args":[1,"two",{"x":3}],"class":"HardJob","jid":"60b967fef914162cf232d022","created_at":1795853128.5271938,"enqueued_at":1795853128.5274427,"foo":{"bar":[]},"bid":"abc"}"#;

    fn failure(now: f64) -> Failure<'static> {
        Failure {
            class: "RuntimeError",
            message: "boom",
            backtrace: &[],
            fetched_from: "default",
            now,
            profile: WireProfile::V7,
        }
    }

    #[test]
    fn round_trip_is_byte_identical() {
        let p = Payload::parse(RUBY).unwrap();
        assert_eq!(p.to_json(), RUBY);
        assert_eq!(p.class(), "HardJob");
        assert_eq!(p.retry(), RetrySetting::Count(2));
        assert_eq!(p.args().len(), 3);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(matches!(
            Payload::parse("not json"),
            Err(PayloadError::Json(_))
        ));
        assert_eq!(Payload::parse("[1]"), Err(PayloadError::NotAnObject));
        assert_eq!(
            Payload::parse(r#"{"args":[]}"#),
            Err(PayloadError::MissingClass)
        );
        assert_eq!(
            Payload::parse(r#"{"class":"X","args":{}}"#),
            Err(PayloadError::MissingArgs)
        );
    }

    #[test]
    fn failures_follow_sidekiq_fields() {
        let mut p = Payload::parse(RUBY).unwrap();
        assert_eq!(p.record_failure(&failure(10.5)), 0);
        assert_eq!(p.time("failed_at"), Some(10.5));
        assert!(p.get("retried_at").is_none());
        let bt = backtrace::decode(p.get("error_backtrace").unwrap()).unwrap();
        assert!(bt.is_empty());
        assert_eq!(p.record_failure(&failure(20.0)), 1);
        assert_eq!(p.time("retried_at"), Some(20.0));
        assert_eq!(p.time("failed_at"), Some(10.5));
        assert_eq!(p.retry_count(), Some(1));
        // Unknown keys survive, and an empty array stays an array.
        assert!(p.to_json().contains(r#""foo":{"bar":[]}"#));
        assert_eq!(p.str("bid"), Some("abc"));
    }

    #[test]
    fn manual_retry_decrement_is_a_previous_failure() {
        let mut p = Payload::parse(RUBY).unwrap();
        p.record_failure(&failure(10.0));
        p.set("retry_count", -1);
        assert_eq!(p.retry_count(), Some(0));
        assert_eq!(p.record_failure(&failure(20.0)), 0);
        assert_eq!(p.time("failed_at"), Some(10.0));
        assert_eq!(p.time("retried_at"), Some(20.0));
    }

    #[test]
    fn retry_queue_wins() {
        let mut p = Payload::parse(RUBY).unwrap();
        p.set("retry_queue", "low");
        p.record_failure(&failure(1.0));
        assert_eq!(p.queue(), "low");
    }

    #[test]
    fn long_messages_are_cut() {
        let mut p = Payload::parse(RUBY).unwrap();
        let long = "é".repeat(20_000);
        let mut f = failure(1.0);
        f.message = &long;
        p.record_failure(&f);
        assert_eq!(p.str("error_message").unwrap().chars().count(), 10_000);
    }

    #[test]
    fn retry_settings() {
        let r = |s: &str| {
            Payload::parse(&format!(r#"{{"class":"X","args":[],"retry":{s}}}"#))
                .unwrap()
                .retry()
        };
        assert_eq!(r("true"), RetrySetting::Default);
        assert_eq!(r("false"), RetrySetting::Disabled);
        assert_eq!(r("0"), RetrySetting::Count(0));
        assert_eq!(r("5"), RetrySetting::Count(5));
        assert_eq!(r("null"), RetrySetting::Absent);
    }

    #[test]
    fn malformed_entries_keep_a_bounded_preview() {
        let small = malformed_entry("{not json", "default", "bad", WireProfile::V7, 1.0);
        assert_eq!(small.get("raw"), Some(&Value::from("{not json")));
        let huge = "é".repeat(MALFORMED_PREVIEW);
        let p = malformed_entry(&huge, "default", "too big", WireProfile::V7, 1.0);
        let kept = p.get("raw").and_then(Value::as_str).unwrap();
        assert!(kept.len() <= MALFORMED_PREVIEW && huge.starts_with(kept));
        let message = p.get("error_message").and_then(Value::as_str).unwrap();
        assert!(
            message.contains(&format!("of its {} bytes", huge.len())),
            "{message}"
        );
    }
}
