//! Pattern: control over a job's life — cancel a long export, watch its progress, read a
//! report's result, drop work that is too late to matter, and debounce a burst of pushes.
//!
//! Why: a user who clicked "export" by mistake wants it stopped, not finished and retried; a
//! web request wants the answer a job computed; a "your ride is here" notification an hour late
//! is worse than none; and a search index rebuilt on every keystroke wastes the fleet.
//!
//! Run: `cargo run -p errand-examples --bin job_control`

use errand::admin::Admin;
use errand::{Client, Job, JobContext, JobError, JobOptions, JobResult, Push, Server};
use errand_examples::{Scratch, init_logging, quick, run_until};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the jobs did, in order.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn add(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn has(&self, prefix: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.starts_with(prefix))
    }
}

/// Exports a customer's rows, one batch at a time, reporting progress and stopping when
/// cancelled.
#[derive(Serialize, Deserialize)]
struct ExportRows {
    customer_id: u64,
}

impl Job for ExportRows {
    const NAME: &'static str = "ExportRows";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let log = cx.data::<Arc<Log>>().expect("log");
        for batch in 0..10_000u32 {
            if cx.is_cancelled() {
                log.add(format!(
                    "export {} stopped after {batch} batches",
                    self.customer_id
                ));
                return Err(JobError::discard("cancelled by the customer"));
            }
            cx.progress(
                (batch / 100).min(99) as u8,
                format!("batch {batch} of 10000"),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Sums an invoice; the caller reads the total.
#[derive(Serialize, Deserialize)]
struct TotalInvoice {
    lines: Vec<u64>,
}

impl Job for TotalInvoice {
    const NAME: &'static str = "TotalInvoice";
    fn options() -> JobOptions {
        JobOptions::default().keep_result(Duration::from_secs(3600))
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        cx.set_result(&self.lines.iter().sum::<u64>())?;
        Ok(())
    }
}

/// Tells a rider their car is here: worthless a minute later.
#[derive(Serialize, Deserialize)]
struct CarArrived {
    ride_id: u64,
}

impl Job for CarArrived {
    const NAME: &'static str = "CarArrived";
    fn options() -> JobOptions {
        JobOptions::default().expires_in(Duration::from_secs(60))
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let log = cx.data::<Arc<Log>>().expect("log");
        log.add(format!("notified ride {}", self.ride_id));
        Ok(())
    }
}

/// Rebuilds a product's search entry; a burst of edits rebuilds once, after the last.
#[derive(Serialize, Deserialize)]
struct Reindex {
    product_id: u64,
    revision: u64,
}

impl Job for Reindex {
    const NAME: &'static str = "Reindex";
    fn options() -> JobOptions {
        JobOptions::default().debounce(Duration::from_millis(300))
    }
    fn unique_key(&self) -> Option<String> {
        Some(format!("product-{}", self.product_id))
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let log = cx.data::<Arc<Log>>().expect("log");
        log.add(format!(
            "reindexed product {} at revision {}",
            self.product_id, self.revision
        ));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());
    let log = Arc::new(Log::default());

    let export = client.push(ExportRows { customer_id: 7 }).await?;
    let invoice = client
        .push(TotalInvoice {
            lines: vec![1200, 850, 99],
        })
        .await?;
    // A notification pushed with a deadline already behind it (as after a long outage).
    client
        .push_with(
            CarArrived { ride_id: 1 },
            Push::new().set(errand::EXPIRES_AT, client.now() - 1.0),
        )
        .await?;
    client.push(CarArrived { ride_id: 2 }).await?;
    let mut replaced = 0;
    for revision in 1..=5 {
        let pushed = client
            .push_debounced(
                Reindex {
                    product_id: 42,
                    revision,
                },
                Push::new(),
            )
            .await?;
        replaced += usize::from(pushed.replaced.is_some());
    }

    let server = quick(Server::builder(broker.clone()))
        .register::<ExportRows>()
        .register::<TotalInvoice>()
        .register::<CarArrived>()
        .register::<Reindex>()
        .data(log.clone())
        .build()?;
    let (client2, log2, admin) = (client.clone(), log.clone(), broker.clone());
    let total = Arc::new(Mutex::new(None::<u64>));
    let total2 = total.clone();
    let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    run_until(server, Duration::from_secs(30), move || {
        let (client, log, total) = (client2.clone(), log2.clone(), total2.clone());
        let (export, invoice, admin) = (export.clone(), invoice.clone(), admin.clone());
        let cancelled = cancelled.clone();
        async move {
            // Once the Busy listing (what the dashboard shows) has the export running…
            let running = admin
                .processes()
                .await
                .unwrap_or_default()
                .iter()
                .any(|p| p.work.iter().any(|(_, w)| w.contains(&export)));
            let cancel_now = running && !cancelled.swap(true, std::sync::atomic::Ordering::SeqCst);
            if cancel_now {
                // …cancel it: it stops at its process's next beat.
                let found = client.cancel(&export).await.expect("cancel");
                println!("cancel: {found:?}");
            }
            if let Ok(Some(sum)) = client.result::<u64>(&invoice).await {
                *total.lock().unwrap() = Some(sum);
            }
            log.has("export 7 stopped")
                && log.has("notified ride 2")
                && log.has("reindexed product 42")
                && total.lock().unwrap().is_some()
        }
    })
    .await?;

    let lines = log.0.lock().unwrap().clone();
    for line in &lines {
        println!("{line}");
    }
    let total = total.lock().unwrap().expect("a total");
    println!("invoice total: {total}");
    let reindexed = lines.iter().filter(|l| l.starts_with("reindexed")).count();
    let expired_ran = lines.iter().any(|l| l == "notified ride 1");
    anyhow::ensure!(total == 2149, "the invoice total is {total}");
    anyhow::ensure!(
        reindexed == 1 && replaced == 4,
        "reindexed {reindexed} times"
    );
    anyhow::ensure!(!expired_ran, "a notification past its deadline was sent");
    println!(
        "ok: export cancelled while running, invoice total {total} read back, late notification \
         dropped, 5 reindex pushes ran once ({replaced} replaced)"
    );
    Ok(())
}
