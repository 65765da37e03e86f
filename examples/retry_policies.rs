//! Pattern: a retry policy per job — retry what a retry can fix, and send what it cannot
//! straight to the dead set.
//!
//! Why: the server default (25 retries over about 3 weeks) suits a flaky dependency, not a bug.
//! A call to an external API that answers 503 for a minute succeeds on a later attempt, so
//! that job gets a handful of retries (`retry(5)`). An import whose input our parser cannot
//! read fails the same way on every attempt: retrying only delays the alert and floods the log,
//! so that job gets `retry(0)` and lands in the dead set on its first failure, where someone
//! can fix the parser and press "Retry" in the Web UI.
//!
//! Run: `cargo run -p errand-examples --bin retry_policies`

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use errand::admin::SetName;
use errand::{Client, Job, JobContext, JobError, JobOptions, JobResult, Payload, Server};
use errand_examples::{Scratch, entries, init_logging, quick, run_until, serve};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// The exchange-rate API's address, shared with the jobs.
struct RatesApi(String);

/// Set once the rates are in.
#[derive(Default)]
struct RatesSynced(AtomicBool);

/// Fetches the day's exchange rates from an API that is briefly unavailable.
#[derive(Serialize, Deserialize)]
struct SyncExchangeRates {
    base: String,
}

impl Job for SyncExchangeRates {
    const NAME: &'static str = "SyncExchangeRates";
    fn options() -> JobOptions {
        JobOptions::default().retry(5) // transient failures: a few retries
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let attempt = cx.retry_count().map_or(1, |n| n + 2);
        let (api, base) = (&cx.data::<RatesApi>().expect("registered").0, &self.base);
        let response = reqwest::get(format!("{api}/rates/{base}")).await?;
        // An error status is a failure too; `?` on the error makes it a retryable one.
        if let Err(e) = response.error_for_status_ref() {
            println!("SyncExchangeRates attempt {attempt}: {}", response.status());
            return Err(e.into());
        }
        let usd = response.json::<serde_json::Value>().await?["USD"].clone();
        println!("SyncExchangeRates attempt {attempt}: 1 {base} = {usd} USD");
        let synced = cx.data::<Arc<RatesSynced>>().expect("registered");
        synced.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Imports one row of a partner's invoice file: `number;amount;currency`.
#[derive(Serialize, Deserialize)]
struct ImportInvoice {
    row: String,
}

impl Job for ImportInvoice {
    const NAME: &'static str = "ImportInvoice";
    fn options() -> JobOptions {
        JobOptions::default().retry(0) // a logic error: no retry, straight to the dead set
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let attempt = cx.retry_count().map_or(1, |n| n + 2);
        println!("ImportInvoice attempt {attempt}: {}", self.row);
        let amount = self.row.split(';').nth(1).unwrap_or_default();
        // "12,50" uses a decimal comma our parser does not handle: every attempt fails alike.
        let _cents: f64 = amount.parse().map_err(|e| {
            JobError::retry(format!("amount {amount:?}: {e}")).with_class("Invoice::ParseError")
        })?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    // The API answers 503 twice, then the rates.
    let calls = Arc::new(AtomicUsize::new(0));
    let api = Router::new()
        .route(
            "/rates/{base}",
            get(|State(calls): State<Arc<AtomicUsize>>| async move {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(StatusCode::SERVICE_UNAVAILABLE),
                    _ => Ok(Json(serde_json::json!({ "USD": 1.08 }))),
                }
            }),
        )
        .with_state(calls.clone());
    let api_url = serve(api).await?;

    let scratch = Scratch::new()?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());
    client
        .push(SyncExchangeRates { base: "EUR".into() })
        .await?;
    client
        .push(ImportInvoice {
            row: "INV-2041;12,50;EUR".into(),
        })
        .await?;

    let synced = Arc::new(RatesSynced::default());
    let server = quick(Server::builder(broker.clone()))
        .register::<SyncExchangeRates>()
        .register::<ImportInvoice>()
        .data(RatesApi(api_url))
        .data(synced.clone())
        // Retry after 100 ms so the example finishes fast; production keeps Sidekiq's backoff.
        .retry_delay(|_| Duration::from_millis(100))
        .build()?;
    let dead_set = broker.clone();
    run_until(server, Duration::from_secs(30), || async {
        synced.0.load(Ordering::SeqCst)
            && entries(&dead_set, SetName::Dead)
                .await
                .is_ok_and(|d| d.len() == 1)
    })
    .await?;

    let dead = entries(&broker, SetName::Dead).await?;
    let entry = Payload::parse(&dead[0].raw)?;
    println!(
        "dead set: {} ({}: {}), retry_count {:?}",
        entry.class(),
        entry.str("error_class").unwrap_or_default(),
        entry.str("error_message").unwrap_or_default(),
        entry.retry_count(),
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "2 failures, then success");
    assert_eq!(
        (entry.class(), entry.retry_count()),
        ("ImportInvoice", Some(0))
    );
    assert_eq!(
        entries(&broker, SetName::Retry).await?.len(),
        0,
        "nothing left to retry"
    );
    println!("ok: rates synced on attempt 3 of 6; invoice import dead after 1 attempt, 0 retries");
    Ok(())
}
