//! Quick start: define a job, enqueue it, run a server until it is done.
//!
//! Run with `cargo run -p errand --example quickstart` against a Redis at `REDIS_URL`
//! (default `redis://127.0.0.1:6379`). The job is an ordinary Sidekiq job too: Ruby's
//! `Sidekiq::Client.push("class" => "WelcomeEmail", "args" => [42])` would reach it.

use errand::redis::RedisBroker;
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
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let broker = RedisBroker::connect(&url).await?;

    let client = Client::new(broker.clone());
    for user_id in [1, 2, 3] {
        client.push(WelcomeEmail { user_id }).await?;
    }

    let done = std::sync::Arc::new(Done {
        left: AtomicUsize::new(3),
        notify: Notify::new(),
    });
    let server = Server::builder(broker)
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
