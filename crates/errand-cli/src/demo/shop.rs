//! The demo's shop: its jobs and the fake services they call (a user table, a payment gateway
//! that honours idempotency keys, a flaky inventory API, a broken legacy feed).

use errand::{Job, JobContext, JobError, JobOptions, JobResult};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Everything the jobs share (registered with `ServerBuilder::data`).
#[derive(Default)]
pub struct Shop {
    /// Users that still exist; welcome emails for others end cleanly.
    pub users: Mutex<HashSet<u64>>,
    /// Idempotency key → order id, for charges the gateway accepted.
    pub charges: Mutex<HashMap<String, u64>>,
    /// Calls that reached the gateway (including replays it deduplicated).
    pub gateway_calls: AtomicUsize,
    /// Inventory API attempts per SKU.
    pub inventory_attempts: Mutex<HashMap<u64, u32>>,
    /// Orders whose receipt step already failed once (to force one retry after the charge).
    pub receipt_failed: Mutex<HashSet<u64>>,
    /// Jobs finished successfully, by class.
    pub done: Mutex<HashMap<&'static str, usize>>,
    /// Welcome emails skipped because the user was deleted.
    pub skipped: AtomicUsize,
    /// Failed attempts (each one retried or killed).
    pub failures: AtomicUsize,
    /// Exported rows.
    pub exported_rows: AtomicU64,
    /// Enqueue-to-start waits per queue, in milliseconds.
    pub waits: Mutex<HashMap<String, Vec<f64>>>,
    /// Lines to print above the progress line.
    pub events: Mutex<Vec<String>>,
}

impl Shop {
    fn from(cx: &JobContext) -> Result<&Shop, JobError> {
        cx.data::<std::sync::Arc<Shop>>()
            .map(|s| s.as_ref())
            .ok_or_else(|| JobError::dead("the shop is not registered"))
    }

    fn event(&self, line: String) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }

    fn started(&self, cx: &JobContext) {
        if let Some(enqueued) = cx.payload().time("enqueued_at") {
            let waited = (errand_core::now() - enqueued).max(0.0) * 1000.0;
            self.waits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(cx.queue().to_string())
                .or_default()
                .push(waited);
        }
    }

    fn finished(&self, class: &'static str) {
        *self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(class)
            .or_default() += 1;
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// How many jobs of `class` finished successfully.
    pub fn done_count(&self, class: &str) -> usize {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(class)
            .copied()
            .unwrap_or(0)
    }

    /// All jobs finished successfully.
    pub fn done_total(&self) -> usize {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// Sends a welcome email. Takes the user's ID, not the user: a user deleted before the job
/// runs is not an error, the job just has nothing to do.
#[derive(Serialize, Deserialize)]
pub struct WelcomeEmail {
    /// The user to welcome.
    pub user_id: u64,
}

impl Job for WelcomeEmail {
    const NAME: &'static str = "WelcomeEmail";
    fn options() -> JobOptions {
        JobOptions::default().queue("critical").retry(5)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let shop = Shop::from(cx)?;
        shop.started(cx);
        let exists = shop
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&self.user_id);
        if !exists {
            shop.skipped.fetch_add(1, Ordering::Relaxed);
            shop.event(format!(
                "  welcome    user {} was deleted before the job ran: nothing to send, no retry",
                self.user_id
            ));
        }
        shop.finished(Self::NAME);
        Ok(())
    }
}

/// Charges an order through the payment gateway with an idempotency key derived from the job
/// id, so a retry after a later step failed never charges twice.
#[derive(Serialize, Deserialize)]
pub struct ProcessOrder {
    /// The order.
    pub order_id: u64,
    /// Its amount in cents.
    pub cents: u64,
}

impl Job for ProcessOrder {
    const NAME: &'static str = "ProcessOrder";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let shop = Shop::from(cx)?;
        shop.started(cx);
        // Stable across every retry of this job (`errand:<jid>:charge`), never random.
        let key = cx.idempotency_key("charge");
        shop.gateway_calls.fetch_add(1, Ordering::Relaxed);
        let replay = {
            let mut charges = shop.charges.lock().unwrap_or_else(|p| p.into_inner());
            charges.insert(key.clone(), self.order_id).is_some()
        };
        if replay {
            shop.event(format!(
                "  payments   order {} retried: the gateway recognised key {key}, no second charge",
                self.order_id
            ));
        }
        // Every seventh order's receipt service times out once, after the charge went through.
        if self.order_id.is_multiple_of(7)
            && shop
                .receipt_failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.order_id)
        {
            shop.failed();
            return Err(
                JobError::retry("receipt service timed out after the charge")
                    .with_class("Receipts::Timeout"),
            );
        }
        shop.finished(Self::NAME);
        Ok(())
    }
}

/// Pushes stock levels to an external inventory API that fails twice before it answers.
#[derive(Serialize, Deserialize)]
pub struct SyncInventory {
    /// The product.
    pub sku: u64,
}

impl Job for SyncInventory {
    const NAME: &'static str = "SyncInventory";
    fn options() -> JobOptions {
        JobOptions::default().retry(5)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let shop = Shop::from(cx)?;
        shop.started(cx);
        let attempt = {
            let mut attempts = shop
                .inventory_attempts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let a = attempts.entry(self.sku).or_default();
            *a += 1;
            *a
        };
        if attempt < 3 {
            shop.failed();
            shop.event(format!(
                "  inventory  SKU-{} attempt {attempt}: 503 from the inventory API, will retry",
                self.sku
            ));
            return Err(
                JobError::retry("503 Service Unavailable").with_class("Inventory::Unavailable")
            );
        }
        shop.event(format!(
            "  inventory  SKU-{} synced on attempt {attempt}",
            self.sku
        ));
        shop.finished(Self::NAME);
        Ok(())
    }
}

/// The inventory batch's `on_success` callback: runs once, after the last SKU synced (however
/// many retries they took), and reports from the batch's status.
#[derive(Serialize, Deserialize)]
pub struct InventoryReport;

impl Job for InventoryReport {
    const NAME: &'static str = "InventoryReport";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let shop = Shop::from(cx)?;
        shop.started(cx);
        let (bid, event) = cx
            .batch_callback()
            .ok_or_else(|| JobError::dead("not a batch callback"))?;
        let status = cx
            .client()
            .batch_status(&bid)
            .await?
            .ok_or_else(|| JobError::dead("the batch expired"))?;
        shop.event(format!(
            "  batch      inventory sync {}: {} of {} SKUs synced, {} pending -> report sent once",
            event.as_str(),
            status.total - status.pending - status.dead,
            status.total,
            status.pending
        ));
        shop.finished(Self::NAME);
        Ok(())
    }
}

/// Imports a partner's legacy feed, which is broken: it fails every time and ends in the dead
/// set after its two retries, where the death handler raises an alert.
#[derive(Serialize, Deserialize)]
pub struct ImportLegacyFeed {
    /// The partner feed.
    pub feed_id: u64,
}

impl Job for ImportLegacyFeed {
    const NAME: &'static str = "ImportLegacyFeed";
    fn options() -> JobOptions {
        JobOptions::default().retry(2).backtrace(5)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let shop = Shop::from(cx)?;
        shop.started(cx);
        shop.failed();
        Err(
            JobError::retry(format!("feed {}: malformed CSV at line 1", self.feed_id))
                .with_class("Feeds::MalformedCsv"),
        )
    }
}

/// One chunk of a large export, in the low-priority `bulk` queue.
#[derive(Serialize, Deserialize)]
pub struct BulkExport {
    /// The chunk number.
    pub chunk: u64,
}

impl Job for BulkExport {
    const NAME: &'static str = "BulkExport";
    fn options() -> JobOptions {
        JobOptions::default().queue("bulk")
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let shop = Shop::from(cx)?;
        shop.started(cx);
        // Simulated work: writing 1,000 rows.
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        shop.exported_rows.fetch_add(1_000, Ordering::Relaxed);
        shop.finished(Self::NAME);
        Ok(())
    }
}
