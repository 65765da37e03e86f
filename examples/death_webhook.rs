//! Pattern: a death handler that posts an alert to a webhook (Slack, PagerDuty, your own
//! endpoint) when a job has used up its retries.
//!
//! Why: a job in the dead set is work that will never happen unless someone acts, and nobody
//! looks at the dead set until a customer complains. The death handler runs exactly once per
//! death, with the payload and the final error, so it is the place to tell a human. It is a
//! plain (sync) closure that runs on the worker: it must not block, so it hands the alert to a
//! channel and one background task does the HTTP posting.
//!
//! Run: `cargo run -p errand-examples --bin death_webhook`

use axum::extract::State;
use axum::{Json, Router, routing::post};
use errand::admin::SetName;
use errand::{Client, Job, JobContext, JobError, JobOptions, JobResult, Payload, Server};
use errand_examples::{Scratch, entries, init_logging, quick, run_until, serve};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Refreshes stock levels from a warehouse whose API is down for the whole example.
#[derive(Serialize, Deserialize)]
struct SyncInventory {
    warehouse_id: i64,
}

impl Job for SyncInventory {
    const NAME: &'static str = "SyncInventory";
    fn options() -> JobOptions {
        JobOptions::default().retry(1)
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Err(JobError::retry(format!(
            "warehouse {} answered 503 Service Unavailable",
            self.warehouse_id
        ))
        .with_class("WarehouseUnavailable"))
    }
}

/// The webhook receiver: keeps every JSON body it is sent.
async fn receive(State(alerts): State<Arc<Mutex<Vec<Value>>>>, Json(alert): Json<Value>) {
    alerts.lock().unwrap().push(alert);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let received = Arc::new(Mutex::new(Vec::new()));
    let webhook_url = serve(
        Router::new()
            .route("/alerts", post(receive))
            .with_state(received.clone()),
    )
    .await?;
    let webhook_url = format!("{webhook_url}/alerts");

    // The death handler only queues the alert; this task posts it. A webhook that is slow or
    // down delays alerts, never the workers.
    let (alerts, mut outbox) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        while let Some(alert) = outbox.recv().await {
            let sent = http.post(&webhook_url).json(&alert).send().await;
            if let Err(e) = sent.and_then(reqwest::Response::error_for_status) {
                eprintln!("posting a death alert failed: {e}");
            }
        }
    });

    let scratch = Scratch::new()?;
    let broker = scratch.broker().await?;
    let jid = Client::new(broker.clone())
        .push(SyncInventory { warehouse_id: 7 })
        .await?;

    let server = quick(Server::builder(broker.clone()))
        .register::<SyncInventory>()
        .death_handler(move |payload: &Payload, err: &JobError| {
            let _ = alerts.send(json!({
                "class": payload.display_class(),
                "jid": payload.jid(),
                "error_class": err.class(),
                "error_message": err.message(),
            }));
        })
        // Retry after 100 ms so the example finishes quickly; production keeps Sidekiq's
        // backoff (15 s, 16 s, 31 s, ... with jitter).
        .retry_delay(|_| Duration::from_millis(100))
        .build()?;
    let dead_set = broker.clone();
    run_until(server, Duration::from_secs(30), || async {
        let dead = entries(&dead_set, SetName::Dead)
            .await
            .map_or(0, |d| d.len());
        dead == 1 && received.lock().unwrap().len() == 1
    })
    .await?;

    let alerts = received.lock().unwrap().clone();
    let alert = &alerts[0];
    println!(
        "alert received: {} died: {}: {}",
        alert["class"].as_str().unwrap_or("?"),
        alert["error_class"].as_str().unwrap_or("?"),
        alert["error_message"].as_str().unwrap_or("?"),
    );
    assert_eq!(alerts.len(), 1, "one death, one alert");
    assert_eq!(alert["class"], "SyncInventory");
    assert_eq!(alert["jid"], jid.as_str());
    assert_eq!(alert["error_class"], "WarehouseUnavailable");
    assert_eq!(
        alert["error_message"],
        "warehouse 7 answered 503 Service Unavailable"
    );
    let dead = entries(&broker, SetName::Dead).await?;
    let entry = Payload::parse(&dead[0].raw)?;
    assert_eq!((dead.len(), entry.jid()), (1, jid.as_str()));
    assert_eq!(
        entry.retry_count(),
        Some(1),
        "the first attempt and 1 retry"
    );
    println!("ok: 1 alert posted, 1 job in the dead set");
    Ok(())
}
