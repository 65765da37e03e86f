//! Errors: a job's own outcome ([`JobError`]) and client/server failures ([`Error`]).

use errand_core::{BrokerError, PayloadError};
use std::fmt;
use std::time::Duration;

/// What `perform` returns: `Ok(())` when done, or a [`JobError`] saying what to do next.
pub type JobResult = Result<(), JobError>;

/// What should happen to a job after a failed or deferred attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobErrorKind {
    /// Retry with backoff while retries remain, then dead (the default for `?`).
    Retry,
    /// An expected failure: no retry, no dead entry.
    Discard,
    /// Skip remaining retries and go to the dead set now.
    Dead,
    /// Run again after the duration; not a failure.
    Snooze(Duration),
}

/// A job's failed (or deferred) attempt: what to do next, and the error to record.
///
/// Any `std::error::Error` converts with `?` into a retryable error whose `error_class` is the
/// error's type name and whose message includes its source chain. `JobError` itself does not
/// implement `std::error::Error`, so that this conversion can exist (as with `anyhow::Error`).
#[derive(Debug, Clone)]
pub struct JobError {
    kind: JobErrorKind,
    class: String,
    message: String,
    backtrace: Vec<String>,
}

impl JobError {
    fn new(kind: JobErrorKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            class: "Errand::JobError".into(),
            message: message.to_string(),
            backtrace: Vec::new(),
        }
    }

    /// A retryable failure with `message`.
    pub fn retry(message: impl fmt::Display) -> Self {
        Self::new(JobErrorKind::Retry, message)
    }

    /// An expected failure: recorded in the log and the failed count, never retried, no dead
    /// entry.
    pub fn discard(reason: impl fmt::Display) -> Self {
        Self::new(JobErrorKind::Discard, reason)
    }

    /// A failure that skips remaining retries and sends the job to the dead set now.
    pub fn dead(reason: impl fmt::Display) -> Self {
        Self::new(JobErrorKind::Dead, reason)
    }

    /// Run the job again after `delay`, without counting a failure.
    pub fn snooze(delay: Duration) -> Self {
        let mut e = Self::new(JobErrorKind::Snooze(delay), "snoozed");
        e.class = "Errand::Snooze".into();
        e
    }

    /// Sets the recorded `error_class` (shown by Sidekiq's Web UI), e.g. `"Stripe::CardError"`.
    pub fn with_class(mut self, class: impl Into<String>) -> Self {
        self.class = class.into();
        self
    }

    /// Changes what happens next, keeping the recorded error: `JobError::from(e).kind(Dead)`.
    pub fn with_kind(mut self, kind: JobErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets backtrace lines (stored when the job's `backtrace` option asks for them).
    pub fn with_backtrace(mut self, lines: Vec<String>) -> Self {
        self.backtrace = lines;
        self
    }

    /// What happens next.
    pub fn kind(&self) -> JobErrorKind {
        self.kind
    }

    /// The recorded error class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The recorded error message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The backtrace lines.
    pub fn backtrace(&self) -> &[String] {
        &self.backtrace
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut backtrace = Vec::new();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            backtrace.push(format!("caused by: {s}"));
            source = s.source();
        }
        // Captured only when RUST_BACKTRACE/RUST_LIB_BACKTRACE ask for it.
        let bt = std::backtrace::Backtrace::capture();
        if bt.status() == std::backtrace::BacktraceStatus::Captured {
            backtrace.extend(bt.to_string().lines().map(|l| l.trim().to_string()));
        }
        let class = std::any::type_name::<E>();
        Self {
            kind: JobErrorKind::Retry,
            class: class.split('<').next().unwrap_or(class).to_string(),
            message,
            backtrace,
        }
    }
}

/// The message a panic was raised with (`panic!("...")` with a literal or a formatted
/// string); `None` for any other payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> Option<&str> {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
}

/// A failure of the client or server machinery (not of a job).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job's payload could not be built (bad arguments, too large, empty queue).
    #[error("invalid job")]
    Payload(#[from] PayloadError),
    /// The backend failed.
    #[error("backend")]
    Broker(#[from] BrokerError),
    /// The server configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Installing OS signal handlers failed.
    #[error("signal handler")]
    Signal(#[source] std::io::Error),
    /// A unique job was not enqueued: a job with the same unique key is already queued,
    /// scheduled, running or retrying (see `JobOptions::unique_for`).
    #[error("duplicate of unique job {existing_jid}")]
    Duplicate {
        /// The id of the job that holds the unique key.
        existing_jid: String,
    },
    /// A client middleware stopped the push: nothing was stored
    /// ([`ClientMiddleware`](crate::ClientMiddleware)).
    #[error("a client middleware stopped the push; nothing was stored")]
    NotPushed,
    /// A kept result does not decode as the type asked for ([`crate::Client::result`]).
    #[error("job result does not decode")]
    Result(#[source] serde_json::Error),
}

impl Error {
    /// True when the backend could not be reached; the operation may succeed later.
    pub fn is_connection_error(&self) -> bool {
        matches!(self, Error::Broker(b) if b.is_connection_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn std_errors_convert_with_their_chain() {
        let e: JobError = Outer(std::io::Error::other("disk full")).into();
        assert_eq!(e.kind(), JobErrorKind::Retry);
        assert!(e.class().ends_with("Outer"), "{}", e.class());
        assert_eq!(e.message(), "outer: disk full");
    }

    #[test]
    fn helpers_set_kinds() {
        assert_eq!(JobError::discard("x").kind(), JobErrorKind::Discard);
        assert_eq!(JobError::dead("x").kind(), JobErrorKind::Dead);
        let s = JobError::snooze(Duration::from_secs(3));
        assert_eq!(s.kind(), JobErrorKind::Snooze(Duration::from_secs(3)));
        assert_eq!(JobError::retry("m").with_class("C").to_string(), "C: m");
    }
}
