//! Pattern: a nightly report as a workflow — steps that wait for the steps they need and read
//! their outputs, fan-out and fan-in, and a failure policy for when a step dies.
//!
//! Why: "fetch the orders and the exchange rates, convert, then build the report" is four jobs
//! with an order between them. Chaining them by hand (each job pushes the next) loses the
//! chain when a job dies, runs the join twice when its two inputs finish at once, and leaves
//! nobody who can say what state the whole thing is in. A workflow is one batch: each step is
//! pushed exactly once, when the last step it needs has succeeded, and reads their results
//! (`cx.parent_output`); the dashboard's batch page shows each step's state.
//!
//! The graph: `orders` and `rates` start together; `convert` needs both; `report` needs
//! `convert`; `archive` needs only `orders`. The first night everything works. The second
//! night the rates service is down, `rates` dies, and with `CancelDependents` the steps that
//! need it (`convert`, `report`) are cancelled while `archive` still runs.
//!
//! Run: `cargo run -p errand-examples --bin workflow_report`

use errand::{
    Client, FailurePolicy, Job, JobContext, JobError, JobOptions, JobResult, Server, Workflow,
};
use errand_examples::{Scratch, init_logging, quick, run_until};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the steps did, in order.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn add(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn log(cx: &JobContext) -> Arc<Log> {
    cx.data::<Arc<Log>>().expect("log").clone()
}

/// Fetches the night's orders (amounts in their currencies).
#[derive(Serialize, Deserialize)]
struct FetchOrders {
    night: String,
}

impl Job for FetchOrders {
    const NAME: &'static str = "FetchOrders";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let orders: Vec<(String, u64)> = vec![
            ("EUR".into(), 12_000),
            ("USD".into(), 5_000),
            ("EUR".into(), 3_000),
        ];
        cx.set_result(&orders)?;
        log(cx).add(format!("{}: orders fetched ({})", self.night, orders.len()));
        Ok(())
    }
}

/// Fetches exchange rates to EUR, in thousandths; the service is down on `down` nights.
#[derive(Serialize, Deserialize)]
struct FetchRates {
    night: String,
    down: bool,
}

impl Job for FetchRates {
    const NAME: &'static str = "FetchRates";
    fn options() -> JobOptions {
        JobOptions::default().retry(0)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        if self.down {
            log(cx).add(format!("{}: rates service down", self.night));
            return Err(JobError::retry("rates service: 503 Service Unavailable"));
        }
        let rates: BTreeMap<String, u64> =
            [("EUR".to_string(), 1_000), ("USD".to_string(), 920)].into();
        cx.set_result(&rates)?;
        Ok(())
    }
}

/// Converts every order to EUR cents: needs `orders` and `rates`.
#[derive(Serialize, Deserialize)]
struct Convert;

impl Job for Convert {
    const NAME: &'static str = "Convert";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let orders: Vec<(String, u64)> = cx
            .parent_output("orders")
            .await?
            .ok_or_else(|| JobError::dead("no orders"))?;
        let rates: BTreeMap<String, u64> = cx
            .parent_output("rates")
            .await?
            .ok_or_else(|| JobError::dead("no rates"))?;
        let total: u64 = orders
            .iter()
            .map(|(cur, amount)| amount * rates[cur] / 1_000)
            .sum();
        cx.set_result(&total)?;
        Ok(())
    }
}

/// Builds the report from the converted total.
#[derive(Serialize, Deserialize)]
struct Report {
    night: String,
}

impl Job for Report {
    const NAME: &'static str = "Report";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let total: u64 = cx
            .parent_output("convert")
            .await?
            .ok_or_else(|| JobError::dead("no total"))?;
        log(cx).add(format!("{}: report total EUR {total}", self.night));
        Ok(())
    }
}

/// Archives the raw orders: needs only `orders`.
#[derive(Serialize, Deserialize)]
struct Archive {
    night: String,
}

impl Job for Archive {
    const NAME: &'static str = "Archive";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let orders: Vec<(String, u64)> = cx
            .parent_output("orders")
            .await?
            .ok_or_else(|| JobError::dead("no orders"))?;
        log(cx).add(format!("{}: archived {} orders", self.night, orders.len()));
        Ok(())
    }
}

fn nightly(night: &str, rates_down: bool) -> Workflow {
    let night = night.to_string();
    Workflow::new()
        .description(format!("nightly report {night}"))
        .add(
            "orders",
            FetchOrders {
                night: night.clone(),
            },
        )
        .add(
            "rates",
            FetchRates {
                night: night.clone(),
                down: rates_down,
            },
        )
        .add_after("convert", Convert, ["orders", "rates"])
        .add_after(
            "report",
            Report {
                night: night.clone(),
            },
            ["convert"],
        )
        .add_after("archive", Archive { night }, ["orders"])
        .on_failure(FailurePolicy::CancelDependents)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());
    let log = Arc::new(Log::default());

    // A cycle is refused before anything is stored.
    let cyclic = Workflow::new()
        .add_after("a", Convert, ["b"])
        .add_after("b", Convert, ["a"])
        .start(&client)
        .await;
    let refused = cyclic.expect_err("a cycle is refused").to_string();
    println!("refused: {refused}");

    let good = nightly("2026-12-04", false).start(&client).await?;
    let bad = nightly("2026-12-05", true).start(&client).await?;

    let server = quick(Server::builder(broker.clone()))
        .register::<FetchOrders>()
        .register::<FetchRates>()
        .register::<Convert>()
        .register::<Report>()
        .register::<Archive>()
        .data(log.clone())
        .build()?;
    let (client2, ids) = (client.clone(), [good.id.clone(), bad.id.clone()]);
    run_until(server, Duration::from_secs(60), move || {
        let (client, ids) = (client2.clone(), ids.clone());
        async move {
            for id in &ids {
                let complete = client
                    .batch_status(id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.complete_at.is_some());
                if !complete {
                    return false;
                }
            }
            true
        }
    })
    .await?;

    for line in log.lines() {
        println!("{line}");
    }
    let mut states = Vec::new();
    for run in [&good, &bad] {
        let detail = errand::api::batch_detail(&**client.broker(), &run.id)
            .await?
            .expect("kept");
        let steps: Vec<String> = detail
            .steps
            .unwrap_or_default()
            .iter()
            .map(|s| format!("{}={}", s.name, s.state))
            .collect();
        println!(
            "{}: {} ({})",
            detail.batch.description,
            detail.batch.state(),
            steps.join(" ")
        );
        states.push((detail.batch.state(), steps.join(" ")));
    }
    let lines = log.lines();
    // 12,000 + 5,000 × 0.92 + 3,000
    assert!(lines.contains(&"2026-12-04: report total EUR 19600".to_string()));
    assert!(lines.contains(&"2026-12-05: archived 3 orders".to_string()));
    assert!(!lines.iter().any(|l| l.starts_with("2026-12-05: report")));
    assert_eq!(
        states[0],
        (
            "succeeded",
            "orders=succeeded rates=succeeded convert=succeeded report=succeeded archive=succeeded"
                .to_string()
        )
    );
    assert_eq!(
        states[1],
        (
            "complete",
            "orders=succeeded rates=dead convert=cancelled report=cancelled archive=succeeded"
                .to_string()
        )
    );
    assert!(refused.contains("cycle"), "{refused}");
    println!(
        "ok: night 1 report EUR 19600 after its four steps; night 2 rates died, convert and \
         report cancelled, archive ran"
    );
    Ok(())
}
