//! `errand demo`: a shop's background jobs, processed live on the embedded backend.
//!
//! It enqueues welcome emails (two for users deleted before the job runs), orders charged with a
//! stable idempotency key (some retried after the charge), inventory syncs against a flaky API,
//! a broken feed import that dies and raises an alert, and a bulk export in the low-priority
//! queue; then it runs a server with weighted queues, shows progress, and prints a summary.

mod shop;

pub use shop::Shop;

use crate::DemoArgs;
use crate::backend::Backend;
use errand::admin::{Admin, SetName};
use errand::broker::Broker;
use errand::{Client, Server};
use shop::{
    BulkExport, ImportLegacyFeed, InventoryReport, ProcessOrder, SyncInventory, WelcomeEmail,
};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const USERS: u64 = 12;
const DELETED_USERS: [u64; 2] = [4, 9];
const ORDERS: u64 = 20;
const SKUS: u64 = 3;

/// A snapshot of where every job is.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    queued: usize,
    retry: usize,
    scheduled: usize,
    dead: usize,
}

/// Reads the counts through the admin side (what the dashboard shows).
async fn counts(admin: &dyn Admin) -> anyhow::Result<Counts> {
    let queued = admin.queues().await?.iter().map(|q| q.size).sum::<u64>();
    Ok(Counts {
        queued: queued as usize,
        retry: admin.set_size(SetName::Retry).await? as usize,
        scheduled: admin.set_size(SetName::Scheduled).await? as usize,
        dead: admin.set_size(SetName::Dead).await? as usize,
    })
}

async fn open(
    args: &DemoArgs,
) -> anyhow::Result<(Arc<dyn Broker>, Arc<dyn errand::admin::Store>, String)> {
    // A fresh file or database each run, so the summary is about this run only.
    let backend = Backend::open(
        &args.sqlite,
        args.redis.as_deref(),
        args.postgres.as_deref(),
        args.namespace.as_deref(),
        true,
    )
    .await?;
    let label = match (&args.redis, &args.postgres) {
        (Some(url), _) => format!("redis at {url}"),
        (None, Some(_)) => "postgres database".to_string(),
        (None, None) => format!("sqlite file {}", args.sqlite.display()),
    };
    Ok((backend.broker(), backend.store(), label))
}

/// Serves the dashboard on `addr` in the background; `None` (with a note) when the address
/// cannot be had, since the demo runs fine without it.
#[cfg(feature = "web")]
async fn serve_dashboard(
    addr: std::net::SocketAddr,
    store: Arc<dyn errand::admin::Store>,
) -> Option<std::net::SocketAddr> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            println!("(dashboard not started: cannot listen on {addr}: {e})\n");
            return None;
        }
    };
    let local = listener.local_addr().ok()?;
    let app = errand_web::router(store, errand_web::WebConfig::default());
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let _ = axum::serve(listener, app).await;
    });
    Some(local)
}

/// Without the `web` feature there is no dashboard to serve: says so, and the demo runs on.
#[cfg(not(feature = "web"))]
async fn serve_dashboard(
    _addr: std::net::SocketAddr,
    _store: Arc<dyn errand::admin::Store>,
) -> Option<std::net::SocketAddr> {
    println!("(dashboard not built in: build errand-cli with its `web` feature)\n");
    None
}

/// Prints event lines and one progress line, in place on a terminal.
struct Screen {
    live: bool,
    last_plain: Option<Instant>,
}

impl Screen {
    fn events(&self, shop: &Shop) {
        let lines: Vec<String> =
            std::mem::take(&mut *shop.events.lock().unwrap_or_else(|p| p.into_inner()));
        let mut out = std::io::stdout().lock();
        for l in lines {
            if self.live {
                let _ = write!(out, "\r\x1b[2K");
            }
            let _ = writeln!(out, "{l}");
        }
    }

    fn progress(&mut self, done: usize, total: usize, c: Counts, force: bool) {
        let width = 24;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        let line = format!(
            "  [{}{}] {done}/{total} done | {} queued | {} retrying | {} scheduled | {} dead",
            "#".repeat(filled),
            ".".repeat(width - filled),
            c.queued,
            c.retry,
            c.scheduled,
            c.dead
        );
        let mut out = std::io::stdout().lock();
        if self.live {
            let _ = write!(out, "\r\x1b[2K{line}");
            let _ = out.flush();
        } else if force
            || self
                .last_plain
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            let _ = writeln!(out, "{line}");
            self.last_plain = Some(Instant::now());
        }
    }
}

fn percentile_max(waits: &[f64]) -> (f64, f64) {
    if waits.is_empty() {
        return (0.0, 0.0);
    }
    let mut w = waits.to_vec();
    w.sort_by(f64::total_cmp);
    let median = w[w.len() / 2];
    (median, w[w.len() - 1])
}

/// Runs the demo.
///
/// # Errors
/// The backend cannot be opened or reached.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (broker, store, label) = open(&args).await?;
    let admin: Arc<dyn Admin> = store.clone();
    println!("Errand demo: a shop's background jobs on the {label}\n");
    let dashboard = match args.web {
        Some(addr) if !args.no_web => serve_dashboard(addr, store).await,
        _ => None,
    };
    if let Some(addr) = dashboard {
        println!("Dashboard: http://{addr}/ (live while the demo runs)\n");
    }

    let shop = Arc::new(Shop::default());
    shop.users
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend((1..=USERS).filter(|u| !DELETED_USERS.contains(u)));

    let client = Client::from_arc(broker.clone());
    // The export goes in first, yet the critical emails pushed after it do not wait for it.
    client
        .push_bulk((0..args.export_chunks).map(|chunk| BulkExport { chunk }))
        .await?;
    client
        .push_bulk((1..=USERS).map(|user_id| WelcomeEmail { user_id }))
        .await?;
    client
        .push_bulk((1..=ORDERS).map(|i| ProcessOrder {
            order_id: 1000 + i,
            cents: 1_500 + 250 * i,
        }))
        .await?;
    // The inventory syncs are one batch: its report runs once, after the last SKU synced.
    let inventory = errand::Batch::new(&client)
        .description("inventory sync")
        .on_success(InventoryReport)
        .open()
        .await?;
    inventory
        .push_bulk((1..=SKUS).map(|sku| SyncInventory { sku }))
        .await?;
    inventory.seal().await?;
    client.push(ImportLegacyFeed { feed_id: 42 }).await?;
    let enqueued = (args.export_chunks + USERS + ORDERS + SKUS + 1) as usize;
    // And the batch's callback, enqueued when the batch succeeds.
    let total = enqueued + 1;
    println!(
        "Enqueued {enqueued} jobs: {} export chunks (bulk), {USERS} welcome emails (critical), {ORDERS} orders, {SKUS} inventory syncs (one batch, with a report when all succeed), 1 feed import\n",
        args.export_chunks
    );

    let alerts = Arc::new(AtomicUsize::new(0));
    let alert_count = alerts.clone();
    let alert_shop = shop.clone();
    let mut builder =
        Server::builder_arc(broker.clone())
            .register::<WelcomeEmail>()
            .register::<ProcessOrder>()
            .register::<SyncInventory>()
            .register::<ImportLegacyFeed>()
            .register::<BulkExport>()
            .register::<InventoryReport>()
            .weighted_queues([
                ("critical", 10),
                ("callbacks", 5),
                ("default", 5),
                ("bulk", 1),
            ])
            .concurrency(10)
            .data(shop.clone())
            .heartbeat_interval(Duration::from_secs(1))
            .poll_interval(Duration::from_millis(200))
            .handle_signals(false)
            .death_handler(move |payload, error| {
                alert_count.fetch_add(1, Ordering::SeqCst);
                alert_shop.events.lock().unwrap_or_else(|p| p.into_inner()).push(format!(
                "  ALERT      {} (job {}) is dead after {} attempts: {}: {} -> paging on-call",
                payload.display_class(),
                payload.jid(),
                payload.retry_count().unwrap_or(0) + 1,
                error.class(),
                error.message()
            ));
            });
    if !args.real_backoff {
        // Demo pacing: 0.5 s, 1 s, 1.5 s ... instead of Sidekiq's 15 s, 16 s, 31 s ...
        builder = builder.retry_delay(|count| Duration::from_millis(500 * (u64::from(count) + 1)));
    }
    let server = builder.build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = stop_rx.await;
    }));

    let mut screen = Screen {
        live: std::io::stdout().is_terminal() && !args.plain,
        last_plain: None,
    };
    let limit = if args.real_backoff {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(120)
    };
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let counts = loop {
        let c = counts(&*admin).await?;
        screen.events(&shop);
        let done = shop.done_total();
        screen.progress(done + c.dead, total, c, false);
        if done + c.dead == total && c.queued + c.retry + c.scheduled == 0 {
            screen.progress(done + c.dead, total, c, true);
            break c;
        }
        if started.elapsed() > limit {
            anyhow::bail!("the demo did not finish within {limit:?}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut ctrl_c => { interrupted = true; break c; }
        }
    };
    if screen.live {
        println!();
    }
    let _ = stop_tx.send(());
    task.await??;
    screen.events(&shop);

    let waits = shop.waits.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (crit_median, crit_max) = percentile_max(waits.get("critical").map_or(&[], |v| v));
    let (bulk_median, bulk_max) = percentile_max(waits.get("bulk").map_or(&[], |v| v));
    let charges = shop.charges.lock().unwrap_or_else(|p| p.into_inner()).len();
    let calls = shop.gateway_calls.load(Ordering::Relaxed);
    println!(
        "\nSummary{} ({label}, {:.1} s)",
        if interrupted { " (interrupted)" } else { "" },
        started.elapsed().as_secs_f64()
    );
    println!("  enqueued          {enqueued} jobs, and 1 batch callback");
    println!(
        "  processed         {} ok: {} welcome emails ({} skipped: user deleted), {} orders, {} inventory syncs, {} export chunks, {} batch report",
        shop.done_total(),
        shop.done_count("WelcomeEmail"),
        shop.skipped.load(Ordering::Relaxed),
        shop.done_count("ProcessOrder"),
        shop.done_count("SyncInventory"),
        shop.done_count("BulkExport"),
        shop.done_count("InventoryReport"),
    );
    println!(
        "  failed attempts   {} (retried with backoff until they succeeded or ran out)",
        shop.failures.load(Ordering::Relaxed)
    );
    println!(
        "  dead              {} job(s); {} alert(s) raised by the death handler",
        counts.dead,
        alerts.load(Ordering::SeqCst)
    );
    println!(
        "  payments          {charges} orders charged once each; {} retried charge(s) deduplicated by idempotency key",
        calls.saturating_sub(charges)
    );
    println!(
        "  queue priority    critical waited {crit_median:.0} ms (median), {crit_max:.0} ms (max); bulk waited {bulk_median:.0} ms (median), {bulk_max:.0} ms (max)"
    );
    println!(
        "  exported          {} rows",
        shop.exported_rows.load(Ordering::Relaxed)
    );
    let keep_serving = args.serve || (std::io::stdout().is_terminal() && !args.plain);
    if let Some(addr) = dashboard.filter(|_| keep_serving && !interrupted) {
        println!(
            "\nThe dashboard stays up at http://{addr}/ : the dead job is under Dead (retry it, \
             edit its arguments, delete it). Ctrl-C to exit."
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    Ok(())
}
