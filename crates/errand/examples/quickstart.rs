//! Quick start: define a job, enqueue it, run a server until it is done.
//!
//! Run with `cargo run -p errand --example quickstart`: on the file `quickstart.sqlite`, or on
//! the Redis at `REDIS_URL` when it is set. The job is an ordinary Sidekiq job too: on Redis,
//! Ruby's `Sidekiq::Client.push("class" => "WelcomeEmail", "args" => [42])` would reach it.

use errand::broker::Broker;
use errand::redis::RedisBroker;
use errand::sqlite::SqliteBroker;
use errand::{Client, Job, JobContext, JobOptions, JobResult, Server};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Arguments are IDs, not objects: they travel as Sidekiq's `args`, here `[42]`.
#[derive(Serialize, Deserialize)]
struct WelcomeEmail {
    user_id: u64,
}

struct Done {
    left: AtomicUsize,
    notify: Notify,
}

impl Job for WelcomeEmail {
    const NAME: &'static str = "WelcomeEmail";

    fn options() -> JobOptions {
        JobOptions::default().queue("critical").retry(5)
    }

    async fn perform(self, cx: &JobContext) -> JobResult {
        println!(
            "sending the welcome email to user {} (job {})",
            self.user_id,
            cx.jid()
        );
        if let Some(done) = cx.data::<std::sync::Arc<Done>>()
            && done.left.fetch_sub(1, Ordering::SeqCst) == 1
        {
            done.notify.notify_one();
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker: std::sync::Arc<dyn Broker> = match std::env::var("REDIS_URL") {
        Ok(url) => std::sync::Arc::new(RedisBroker::connect(&url).await?),
        Err(_) => std::sync::Arc::new(SqliteBroker::open("quickstart.sqlite").await?),
    };

    let client = Client::from_arc(broker.clone());
    for user_id in [1, 2, 3] {
        client.push(WelcomeEmail { user_id }).await?;
    }

    let done = std::sync::Arc::new(Done {
        left: AtomicUsize::new(3),
        notify: Notify::new(),
    });
    let server = Server::builder_arc(broker)
        .register::<WelcomeEmail>()
        .weighted_queues([("critical", 10), ("default", 5)])
        .data(done.clone())
        .build()?;
    // Stops gracefully once the three jobs ran (a real worker would just `run()` until SIGTERM).
    server
        .run_until(async move { done.notify.notified().await })
        .await?;
    Ok(())
}
