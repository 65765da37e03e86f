//! Pattern: call an external API with an idempotency key that is the same in every retry of
//! the job, so a retried charge is applied once.
//!
//! Why: the classic failure of a payment call is not "the charge failed" but "the charge went
//! through and the response never came back" (a timeout, a reset connection, a deploy killing
//! the worker). The job cannot tell the two apart, so it must retry — and a retry without a
//! key charges the customer again. `cx.idempotency_key("charge")` is derived from the job id
//! (`errand:<jid>:charge`), so every attempt sends the same key and the API replays the first
//! result instead of charging twice.
//!
//! Run: `cargo run -p errand-examples --bin charge_with_idempotency_key`

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Json, Router, routing::post};
use errand::admin::Admin;
use errand::{Client, Job, JobContext, JobError, JobOptions, JobResult, Server};
use errand_examples::{Scratch, init_logging, quick, run_until, serve};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the payment API answers: the charge it made (or made earlier, for a known key).
#[derive(Clone, Serialize, Deserialize)]
struct Charge {
    id: String,
    amount_cents: i64,
}

/// The payment provider's side: how many requests it saw, and its charges by key.
#[derive(Default)]
struct PaymentApi {
    requests: u32,
    charges: HashMap<String, Charge>,
}

/// `POST /v1/charges`: a request with a key seen before gets the first result back and
/// charges nothing (what Stripe and most payment APIs do).
async fn create_charge(
    State(api): State<Arc<Mutex<PaymentApi>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Charge>, StatusCode> {
    let mut api = api.lock().unwrap();
    api.requests += 1;
    let key = headers.get("Idempotency-Key").and_then(|v| v.to_str().ok());
    let key = key.ok_or(StatusCode::BAD_REQUEST)?.to_string();
    let next_id = format!("ch_{}", api.charges.len() + 1);
    let charge = api.charges.entry(key).or_insert_with(|| Charge {
        id: next_id,
        amount_cents: body["amount_cents"].as_i64().unwrap_or(0),
    });
    Ok(Json(charge.clone()))
}

/// How the jobs reach the payment API, and where they record paid orders.
struct Payments {
    base_url: String,
    http: reqwest::Client,
    paid: Arc<Mutex<Option<Charge>>>,
}

/// Charges order `order_id`.
#[derive(Serialize, Deserialize)]
struct ChargeOrder {
    order_id: i64,
    amount_cents: i64,
}

impl Job for ChargeOrder {
    const NAME: &'static str = "ChargeOrder";
    fn options() -> JobOptions {
        JobOptions::default().retry(5)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let payments = cx.data::<Payments>().expect("registered");
        // The same key in every attempt. A random key per attempt (a fresh UUID each time)
        // would make each retry look like a new charge to the API: 3 attempts, 3 charges.
        let key = cx.idempotency_key("charge");
        let charge: Charge = payments
            .http
            .post(format!("{}/v1/charges", payments.base_url))
            .header("Idempotency-Key", &key)
            .json(&json!({"order_id": self.order_id, "amount_cents": self.amount_cents}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        // Simulate the lost response on the first two attempts: the API has charged, but the
        // job never sees the answer, so from here it looks exactly like a failed charge.
        let attempt = cx.retry_count().map_or(1, |n| n + 2);
        if attempt <= 2 {
            println!("attempt {attempt}: no response from the payment API; retrying");
            return Err(JobError::retry("timed out reading the response").with_class("ReadTimeout"));
        }
        println!(
            "attempt {attempt}: order {} paid by {} (the API replayed its first answer)",
            self.order_id, charge.id
        );
        *payments.paid.lock().unwrap() = Some(charge);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let api = Arc::new(Mutex::new(PaymentApi::default()));
    let base_url = serve(
        Router::new()
            .route("/v1/charges", post(create_charge))
            .with_state(api.clone()),
    )
    .await?;
    let paid = Arc::new(Mutex::new(None));

    let scratch = Scratch::new()?;
    let broker = scratch.broker().await?;
    Client::new(broker.clone())
        .push(ChargeOrder {
            order_id: 1001,
            amount_cents: 4_999,
        })
        .await?;

    let server = quick(Server::builder(broker.clone()))
        .register::<ChargeOrder>()
        .data(Payments {
            base_url,
            http: reqwest::Client::new(),
            paid: paid.clone(),
        })
        // Retry after 100 ms so the example finishes quickly; production keeps Sidekiq's
        // backoff (15 s, 16 s, 31 s, ... with jitter).
        .retry_delay(|_| Duration::from_millis(100))
        .build()?;
    run_until(server, Duration::from_secs(30), || async {
        paid.lock().unwrap().is_some()
    })
    .await?;

    let (stats, api) = (broker.counters().await?, api.lock().unwrap());
    let charge = paid.lock().unwrap().clone().expect("paid");
    assert_eq!(stats.processed, 3, "2 lost responses, then success");
    assert_eq!(api.requests, 3, "every attempt reached the API");
    assert_eq!(api.charges.len(), 1, "but the customer was charged once");
    assert_eq!((charge.id.as_str(), charge.amount_cents), ("ch_1", 4_999));
    println!("ok: 3 attempts, 3 requests, 1 charge");
    Ok(())
}
