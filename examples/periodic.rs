//! Pattern: periodic work (a report every few seconds here; `0 3 * * *` in production) declared
//! on every server, enqueued once per tick by whichever server leads.
//!
//! Why: a cron job on every machine runs N times; a cron job on one machine stops when that
//! machine does. Each server declares the entry (`ServerBuilder::periodic_entry`); one holds a
//! leader lease and enqueues each due tick through an atomic claim that only succeeds once per
//! (entry, scheduled time), so even two leaders at once cannot enqueue a tick twice. The job
//! learns which tick it serves from `cx.scheduled_at()`.
//!
//! Run: `cargo run -p errand-examples --bin periodic`

use errand::{Job, JobContext, JobResult, Missed, Periodic, Server};
use errand_examples::{Scratch, init_logging, quick, run_until};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The ticks the report ran for, and which server ran each.
#[derive(Default)]
struct Runs(Mutex<Vec<(f64, &'static str)>>);

/// Which server this is (the example runs two in one process).
struct Name(&'static str);

/// Collects the statistics of the period that ends at the tick.
#[derive(Serialize, Deserialize)]
struct CollectStats;

impl Job for CollectStats {
    const NAME: &'static str = "CollectStats";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let tick = cx.scheduled_at().expect("enqueued by a periodic entry");
        let server = cx.data::<Name>().expect("name").0;
        cx.data::<Arc<Runs>>()
            .expect("runs")
            .0
            .lock()
            .unwrap()
            .push((tick, server));
        Ok(())
    }
}

fn server(broker: errand::sqlite::SqliteBroker, name: &'static str, runs: Arc<Runs>) -> Server {
    quick(Server::builder(broker))
        .register::<CollectStats>()
        .data(runs)
        .data(Name(name))
        // Every two seconds, read in Berlin time; a tick missed while every server was down
        // is run once when one comes back.
        .periodic_entry(
            Periodic::new("stats", "*/2 * * * * *", CollectStats)
                .zone("Europe/Berlin")
                .missed(Missed::Latest),
        )
        .build()
        .expect("valid settings")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let runs = Arc::new(Runs::default());
    // Two servers on one SQLite file, as two processes of one machine would be.
    let a = server(scratch.broker().await?, "a", runs.clone());
    let b = server(scratch.broker().await?, "b", runs.clone());
    let b_handle = b.handle();
    let b_running = tokio::spawn(b.run());
    let count = || runs.0.lock().unwrap().len();
    run_until(a, Duration::from_secs(30), || async { count() >= 3 }).await?;
    b_handle.stop();
    b_running.await??;

    let mut runs = runs.0.lock().unwrap().clone();
    runs.sort_by(|x, y| x.0.total_cmp(&y.0));
    for (tick, server) in &runs {
        println!("tick {tick:.0} ran once, on server {server}");
    }
    let ticks: Vec<f64> = runs.iter().map(|(t, _)| *t).collect();
    let mut distinct = ticks.clone();
    distinct.dedup();
    assert_eq!(distinct, ticks, "a tick ran twice: {ticks:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 2.0),
        "ticks two seconds apart, none missing: {ticks:?}"
    );
    println!(
        "ok: {} ticks two seconds apart, each enqueued once by one of 2 servers",
        ticks.len()
    );
    Ok(())
}
