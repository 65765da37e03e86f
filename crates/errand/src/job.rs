//! The [`Job`] trait, per-job options, and how typed arguments map to Sidekiq's `args` array.

use crate::{JobContext, JobError, JobResult};
use errand_core::{Payload, PayloadError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::time::Duration;

/// A background job: its arguments (the implementing type) and the code that runs it.
///
/// The type's fields travel as Sidekiq's positional `args` array, in declaration order: a
/// struct `{ user_id: u64, name: String }` is pushed as `[42, "x"]`, and a Ruby
/// `perform_async(42, "x")` deserializes into it. Tuples and tuple structs map the same way; a
/// type that takes one value (a newtype, a map) also accepts a one-element `args`. Fields with
/// `skip_serializing_if` would shift positions: avoid them in job arguments; give trailing
/// optional fields `#[serde(default)]` so a shorter Ruby `args` still fits. Pass IDs, not
/// objects.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name (Sidekiq's `class`) under which this job is enqueued and dispatched.
    /// Renaming the Rust type does not orphan queued jobs as long as this stays.
    const NAME: &'static str;

    /// Default options for every push of this job.
    fn options() -> JobOptions {
        JobOptions::default()
    }

    /// Runs the job. Return `Ok(())` when done; `?` on any error retries with backoff; see
    /// [`JobError`] for discard, dead and snooze.
    fn perform(self, cx: &JobContext) -> impl Future<Output = JobResult> + Send;

    /// A custom delay before retry number `count` (0 after the first failure), replacing
    /// Sidekiq's `count⁴ + 15` seconds; jitter is still added. `None` keeps the default.
    fn retry_in(count: u32, error: &JobError) -> Option<Duration> {
        let _ = (count, error);
        None
    }

    /// Called once when the job's retries run out, before it goes to the dead set
    /// (Sidekiq's `sidekiq_retries_exhausted`). A panic here is logged and ignored.
    fn retries_exhausted(payload: &Payload, error: &JobError) {
        let _ = (payload, error);
    }

    /// For jobs with [`JobOptions::unique_for`]: the key that makes two pushes duplicates.
    /// `None` (the default) uses the class, queue and arguments; name a key to make jobs with
    /// different arguments duplicates (`Some(format!("order-{}", self.order_id))`, ignoring a
    /// timestamp argument).
    fn unique_key(&self) -> Option<String> {
        None
    }
}

/// When a unique job's lock is released (besides when the job dies or is discarded, and
/// when `unique_for` runs out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UniqueUntil {
    /// When the job starts: a duplicate may be pushed while it runs.
    Start,
    /// When the job succeeds (the default): no duplicate while it waits, runs or retries.
    #[default]
    Success,
}

/// A job's `retry` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retry {
    /// The server's maximum (25 unless configured).
    #[default]
    Default,
    /// At most this many retries; `0` sends the first failure straight to the dead set.
    Count(u32),
    /// No retries and no dead entry: a failure is logged, counted, handed to death handlers
    /// and dropped.
    Disabled,
}

/// Per-job options, written into each payload at push time (Sidekiq's `sidekiq_options`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobOptions {
    pub(crate) queue: String,
    pub(crate) retry: Retry,
    pub(crate) retry_queue: Option<String>,
    pub(crate) backtrace: Option<usize>,
    pub(crate) tags: Vec<String>,
    pub(crate) dead: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) unique_for: Option<Duration>,
    pub(crate) unique_until: UniqueUntil,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) keep_result: Option<Duration>,
    pub(crate) debounce: Option<Duration>,
}

/// The payload key of a debounced job's key ([`JobOptions::debounce`]). Errand's own key: Ruby
/// Sidekiq ignores it.
pub const DEBOUNCE_KEY: &str = "errand_debounce_key";

/// The payload key of how long a job's result is kept ([`JobOptions::keep_result`]), in
/// seconds. Errand's own key: Ruby Sidekiq ignores it.
pub const KEEP_RESULT: &str = "errand_keep_result";

/// The payload key of a job's deadline ([`JobOptions::expires_in`]): epoch seconds, after which
/// a server drops the job unrun. Errand's own key: Ruby Sidekiq ignores it.
pub const EXPIRES_AT: &str = "errand_expires_at";

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            queue: "default".into(),
            retry: Retry::Default,
            retry_queue: None,
            backtrace: None,
            tags: Vec::new(),
            dead: true,
            timeout: None,
            unique_for: None,
            unique_until: UniqueUntil::Success,
            expires_in: None,
            keep_result: None,
            debounce: None,
        }
    }
}

impl JobOptions {
    /// The queue to push to. Defaults to `default`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// At most `n` retries (`retry(0)`: straight to the dead set on the first failure).
    /// Defaults to the server's maximum, 25.
    pub fn retry(mut self, n: u32) -> Self {
        self.retry = Retry::Count(n);
        self
    }

    /// No retries, no dead entry (Sidekiq's `retry: false`). Defaults to retrying.
    pub fn no_retry(mut self) -> Self {
        self.retry = Retry::Disabled;
        self
    }

    /// The queue retries go to. Defaults to the queue the job ran from.
    pub fn retry_queue(mut self, queue: impl Into<String>) -> Self {
        self.retry_queue = Some(queue.into());
        self
    }

    /// Store up to `lines` backtrace lines with each failure. Defaults to none.
    pub fn backtrace(mut self, lines: usize) -> Self {
        self.backtrace = Some(lines);
        self
    }

    /// Labels shown by the Web UI. Defaults to none.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// When false, a job whose retries run out is dropped instead of going to the dead set
    /// (death handlers still run). Defaults to true.
    pub fn dead(mut self, dead: bool) -> Self {
        self.dead = dead;
        self
    }

    /// Fail an attempt that runs longer than `timeout` (a retryable `Errand::Timeout`).
    /// Defaults to the server's job timeout (none unless set).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Makes the job unique for `period`: while a job with the same key (class, queue and
    /// arguments, or [`Job::unique_key`]) is queued, scheduled, running or retrying, pushing
    /// another returns [`crate::Error::Duplicate`] with the existing job's id instead of
    /// enqueuing it. The lock is released when the job succeeds (or starts, see
    /// [`JobOptions::unique_until`]), dies or is discarded, and expires by itself after
    /// `period` (plus the delay, for a scheduled push), so a crashed worker can never hold a
    /// key forever. Choose `period` longer than the job normally waits and runs.
    pub fn unique_for(mut self, period: Duration) -> Self {
        self.unique_for = Some(period);
        self
    }

    /// Drops the job unrun when it has not started within `period` of the time it was due (the
    /// push, or its scheduled time): a server that fetches it later acks it without running
    /// it, counts it as expired and logs it (Sidekiq Pro's `expires_in`). A retry after the
    /// deadline is dropped the same way. For work that is useless when late (a cache warm-up,
    /// a notification about a moment that has passed). Defaults to never.
    pub fn expires_in(mut self, period: Duration) -> Self {
        self.expires_in = Some(period);
        self
    }

    /// Keeps the result a successful attempt sets with
    /// [`JobContext::set_result`](crate::JobContext::set_result) for `ttl`, for
    /// [`Client::result`](crate::Client::result) and [`Client::wait`](crate::Client::wait) to
    /// read (and the dashboard's `/api/jobs/{jid}/result`). Defaults to keeping none.
    pub fn keep_result(mut self, ttl: Duration) -> Self {
        self.keep_result = Some(ttl);
        self
    }

    /// Debounces the job: each push runs after `window` (or at the push's own time, when it
    /// sets one), and a later push with the same key — class, queue and arguments, or
    /// [`Job::unique_key`] — replaces it while it still waits, so a burst of pushes runs once,
    /// with the last push's arguments, `window` after the burst (BullMQ's debounce,
    /// graphile-worker's `job_key` replace). `Duration::ZERO` replaces a job still waiting in
    /// its queue without delaying the new one. A job already fetched is not touched: it runs,
    /// and so does the new push. [`Client::push_debounced`](crate::Client::push_debounced)
    /// reports the replaced jid. Not combined with [`JobOptions::unique_for`] (which keeps the
    /// first push instead). Defaults to off.
    pub fn debounce(mut self, window: Duration) -> Self {
        self.debounce = Some(window);
        self
    }

    /// When a unique job's lock is released. Defaults to [`UniqueUntil::Success`].
    pub fn unique_until(mut self, until: UniqueUntil) -> Self {
        self.unique_until = until;
        self
    }

    /// Writes these options into a payload, as Sidekiq merges class options into each push.
    pub(crate) fn apply(&self, p: &mut Payload) {
        p.set(
            "retry",
            match self.retry {
                Retry::Default => Value::Bool(true),
                Retry::Count(n) => Value::from(n),
                Retry::Disabled => Value::Bool(false),
            },
        );
        p.set("queue", self.queue.as_str());
        if let Some(q) = &self.retry_queue {
            p.set("retry_queue", q.as_str());
        }
        if let Some(n) = self.backtrace {
            p.set("backtrace", n);
        }
        if !self.tags.is_empty() {
            p.set("tags", self.tags.clone());
        }
        if !self.dead {
            p.set("dead", false);
        }
        if let Some(ttl) = self.keep_result {
            p.set(KEEP_RESULT, ttl.as_secs_f64());
        }
        if let Some(period) = self.unique_for {
            p.set("unique_for", period.as_secs_f64());
            p.set(
                "unique_until",
                match self.unique_until {
                    UniqueUntil::Start => "start",
                    UniqueUntil::Success => "success",
                },
            );
        }
    }
}

/// Encodes a job's arguments as Sidekiq's positional `args` array.
///
/// # Errors
/// [`PayloadError::NotSerializable`] when serde cannot represent the value as JSON.
pub fn encode_args<T: Serialize + ?Sized>(job: &T) -> Result<Vec<Value>, PayloadError> {
    match serde_json::to_value(job).map_err(|e| PayloadError::NotSerializable(e.to_string()))? {
        Value::Array(a) => Ok(a),
        // With serde_json's `preserve_order`, fields keep declaration order.
        Value::Object(m) => Ok(m.into_iter().map(|(_, v)| v).collect()),
        Value::Null => Ok(Vec::new()),
        v => Ok(vec![v]),
    }
}

/// Decodes Sidekiq's positional `args` into a job's arguments.
///
/// Tries the whole array first (structs, tuples), then, for one-element arrays, the element
/// itself (newtypes, maps), then, for an empty array, `null` (unit structs).
///
/// # Errors
/// The serde error of the first attempt when none fits.
pub fn decode_args<T: DeserializeOwned>(args: &[Value]) -> Result<T, serde_json::Error> {
    let first = match T::deserialize(ArgsDeserializer(args)) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    match args {
        [one] => T::deserialize(one).map_err(|_| first),
        [] => T::deserialize(&Value::Null).map_err(|_| first),
        _ => Err(first),
    }
}

/// Deserializes a borrowed slice as a JSON array without cloning it into a `Value`.
struct ArgsDeserializer<'a>(&'a [Value]);

impl<'de> serde::Deserializer<'de> for ArgsDeserializer<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::value::SeqDeserializer;
        let mut seq = SeqDeserializer::new(self.0.iter());
        let v = visitor.visit_seq(&mut seq)?;
        seq.end()?;
        Ok(v)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// Builds the error recorded when `args` do not fit a job's type.
pub(crate) fn args_error(class: &str, e: &serde_json::Error) -> JobError {
    JobError::retry(format!("arguments do not fit {class}: {e}"))
        .with_class("Errand::ArgumentError")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Named {
        id: u64,
        name: String,
        extra: Option<Value>,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Newtype(u64);

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Unit;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Opts {
        x: u64,
    }

    #[test]
    fn structs_travel_positionally() {
        let job = Named {
            id: 1,
            name: "two".into(),
            extra: Some(json!({"x": 3})),
        };
        let args = encode_args(&job).unwrap();
        assert_eq!(Value::Array(args.clone()), json!([1, "two", {"x": 3}]));
        assert_eq!(decode_args::<Named>(&args).unwrap(), job);
    }

    #[test]
    fn ruby_style_args_decode() {
        let n: Named = decode_args(&[json!(42), json!("x"), Value::Null]).unwrap();
        assert_eq!(
            n,
            Named {
                id: 42,
                name: "x".into(),
                extra: None
            }
        );
        let t: (u64, String) = decode_args(&[json!(42), json!("x")]).unwrap();
        assert_eq!(t, (42, "x".into()));
        let nt: Newtype = decode_args(&[json!(7)]).unwrap();
        assert_eq!(nt, Newtype(7));
        assert_eq!(encode_args(&Newtype(7)).unwrap(), vec![json!(7)]);
        let u: Unit = decode_args(&[]).unwrap();
        assert_eq!(u, Unit);
        assert!(encode_args(&Unit).unwrap().is_empty());
        // A single hash argument fills a struct by name.
        let o: Opts = decode_args(&[json!({"x": 3})]).unwrap();
        assert_eq!(o, Opts { x: 3 });
    }

    #[test]
    fn mismatches_report_the_serde_error() {
        let e = decode_args::<Named>(&[json!("nope")]).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    #[test]
    fn unserializable_args_are_refused() {
        let mut m = std::collections::HashMap::new();
        m.insert(vec![1u8], 1);
        assert!(matches!(
            encode_args(&m),
            Err(PayloadError::NotSerializable(_))
        ));
    }
}
