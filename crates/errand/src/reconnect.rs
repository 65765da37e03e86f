//! One backoff for every backend step that must not be dropped because the backend blinked (a
//! completion, a once-only record) and for the fetch loop: exponential, doubling from a first
//! wait up to a longest one, retrying connection errors only. Built on `backon`.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use errand_core::{BrokerError, BrokerResult};
use std::future::Future;
use std::time::Duration;

/// The first wait of a backend step's retries.
const FIRST: Duration = Duration::from_millis(50);
/// The longest wait between two attempts of a backend step.
const LONGEST: Duration = Duration::from_secs(10);

/// Delays between attempts, doubling from `first` up to `longest`: `attempts - 1` of them (then
/// the caller gives up), or unbounded with `None`.
pub(crate) fn delays(
    first: Duration,
    longest: Duration,
    attempts: Option<usize>,
) -> ExponentialBackoff {
    let builder = ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(longest);
    match attempts {
        Some(n) => builder.with_max_times(n.saturating_sub(1)),
        None => builder.without_max_times(),
    }
    .build()
}

/// Runs `op` up to `attempts` times while it fails with a connection error, waiting
/// [`delays`] (from 50 ms up to 10 s) in between; returns its last result. Other errors return at once.
pub(crate) async fn retry<T, F, Fut>(what: &'static str, attempts: usize, op: F) -> BrokerResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BrokerResult<T>>,
{
    op.retry(DelaysFor(attempts))
        .sleep(tokio::time::sleep)
        .when(BrokerError::is_connection_error)
        .notify(|e, wait| {
            tracing::warn!(what, error = %e, retry_in_ms = wait.as_millis() as u64, "backend unavailable, retrying");
        })
        .await
}

/// [`delays`] as a backon builder.
#[derive(Debug, Clone, Copy)]
struct DelaysFor(usize);

impl BackoffBuilder for DelaysFor {
    type Backoff = ExponentialBackoff;

    fn build(self) -> Self::Backoff {
        delays(FIRST, LONGEST, Some(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_longest() {
        let d: Vec<Duration> = delays(FIRST, LONGEST, Some(12)).collect();
        assert_eq!(d.len(), 11);
        assert_eq!(d[0], FIRST);
        // backon multiplies by an f32 factor: the second wait is 100 ms give or take 1 µs.
        assert!(
            d[1].abs_diff(FIRST * 2) < Duration::from_micros(1),
            "{:?}",
            d[1]
        );
        assert_eq!(d[10], LONGEST);
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays(FIRST, LONGEST, None).take(1000).count(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn only_connection_errors_are_retried() {
        let mut calls = 0;
        let out: BrokerResult<()> = retry("test", 3, || {
            calls += 1;
            async { Err(BrokerError::Connection("down".into())) }
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls, 3);
        let mut calls = 0;
        let out: BrokerResult<()> = retry("test", 3, || {
            calls += 1;
            async { Err(BrokerError::Config("bad".into())) }
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls, 1);
    }
}
