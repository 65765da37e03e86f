//! Pattern: a dead set bounded by size and by age, so a flood of failures cannot fill the
//! backend and forgotten corpses do not stay forever.
//!
//! Why: every dead job keeps its whole payload. A broken deploy that kills a million jobs
//! would otherwise keep a million payloads in Redis (memory) or SQLite (disk) until someone
//! clears them. `DeadLimits` trims the set on every insert: entries older than `max_age` go
//! first, then the oldest beyond `max_jobs`. Nothing is trimmed between deaths: an old entry
//! stays until the next job dies.
//!
//! Run: `cargo run -p errand-examples --bin dead_set_limits`

use errand::admin::SetName;
use errand::sqlite::SqliteBroker;
use errand::{
    Client, DeadLimits, Job, JobContext, JobError, JobOptions, JobResult, Payload, Server,
    decode_args, system_clock,
};
use errand_examples::{Scratch, entries, init_logging, quick, run_until};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Imports a partner's product feed, which is malformed for the whole example.
#[derive(Serialize, Deserialize)]
struct ImportFeed {
    feed_id: i64,
}

impl Job for ImportFeed {
    const NAME: &'static str = "ImportFeed";
    fn options() -> JobOptions {
        // No retries: a malformed feed stays malformed; the first failure is a death.
        JobOptions::default().retry(0)
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Err(
            JobError::retry(format!("feed {} is not valid XML", self.feed_id))
                .with_class("ParseError"),
        )
    }
}

/// Production uses Sidekiq's defaults, `DeadLimits::default()`: 10,000 jobs and 180 days.
/// Tiny limits here so both trims happen within seconds.
const LIMITS: DeadLimits = DeadLimits {
    max_jobs: 3,
    max_age: Duration::from_secs(1),
};

/// Runs a server until job `jid` is in the dead set, then returns the feed ids it holds,
/// oldest first. One worker, so the feeds die in the order they were pushed.
async fn run_until_dead(broker: &SqliteBroker, jid: &str) -> anyhow::Result<Vec<i64>> {
    let server = quick(Server::builder(broker.clone()))
        .register::<ImportFeed>()
        .concurrency(1)
        .dead_limits(LIMITS)
        .build()?;
    run_until(server, Duration::from_secs(30), || async {
        let dead = entries(broker, SetName::Dead).await.unwrap_or_default();
        dead.iter()
            .any(|e| Payload::parse(&e.raw).is_ok_and(|p| p.jid() == jid))
    })
    .await?;
    let mut feeds = Vec::new();
    for e in entries(broker, SetName::Dead).await? {
        feeds.push(decode_args::<ImportFeed>(Payload::parse(&e.raw)?.args())?.feed_id);
    }
    Ok(feeds)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let scratch = Scratch::new()?;
    let broker = scratch.broker().await?;
    let client = Client::new(broker.clone());

    // Size: five feeds die; each death trims the set to the 3 newest.
    let mut last = String::new();
    for feed_id in 1..=5 {
        last = client.push(ImportFeed { feed_id }).await?;
    }
    let feeds = run_until_dead(&broker, &last).await?;
    println!("after 5 deaths with max_jobs 3: dead set holds feeds {feeds:?}");
    assert_eq!(feeds, [3, 4, 5], "the 2 oldest were trimmed by size");

    // Age: wait until even the newest entry is older than max_age (read from the set itself,
    // checked every 20 ms, with a deadline). Until another job dies, they all stay.
    let newest = entries(&broker, SetName::Dead)
        .await?
        .last()
        .map_or(0.0, |e| e.score);
    let now = system_clock();
    let deadline = Instant::now() + Duration::from_secs(10);
    while now() - newest <= LIMITS.max_age.as_secs_f64() {
        anyhow::ensure!(Instant::now() < deadline, "max_age did not pass in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        entries(&broker, SetName::Dead).await?.len(),
        3,
        "no death, no trim"
    );

    let sixth = client.push(ImportFeed { feed_id: 6 }).await?;
    let feeds = run_until_dead(&broker, &sixth).await?;
    println!("after max_age passed, 1 more death: dead set holds feeds {feeds:?}");
    assert_eq!(feeds, [6], "the 3 expired entries were trimmed by age");
    println!("ok: size trim kept 3 of 5, age trim kept 1 of 4");
    Ok(())
}
