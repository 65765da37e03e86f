//! [`Inspect`]: what the cases read to check what a backend stores. Every read goes through
//! the backend's own admin side ([`Admin`]) and fleet duties ([`Fleet::held`]), the API the
//! dashboard and `errand ops` use, so the suite reads no backend's keys or tables behind its
//! back; a backend's test file supplies only what no API offers (a raw signal, moving an
//! injectable clock).

use async_trait::async_trait;
use errand_core::admin::{Admin, Counters, Order, QueueRange, SetName, SetRange};
use errand_core::broker::Broker;
use std::time::Duration;

/// Entries read per page when a case reads a whole queue or set.
const PAGE: usize = 10_000;

/// A read-only view of what a backend stores, for assertions; methods panic on backend errors
/// (they are test support).
#[async_trait]
pub trait Inspect: Send + Sync {
    /// The backend's admin side.
    fn admin(&self) -> &dyn Admin;

    /// The backend's runtime side (for what a process holds in flight).
    fn broker(&self) -> &dyn Broker;

    /// Queues remote signal `name` for `identity` as Sidekiq's Web UI does (`LPUSH
    /// <identity>-signals`), any name, known or not. Returns false when the backend cannot
    /// receive signals; the signal cases then stop early.
    async fn push_signal(&self, identity: &str, name: &str) -> bool;

    /// Lets `by` of backend time pass where the backend's clock is injectable. A backend on
    /// real time does nothing; cases then wait on a condition with a deadline.
    async fn let_time_pass(&self, by: Duration);

    /// The jobs waiting in queue `name`, the next to be fetched first.
    async fn queue(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let page = self
                .admin()
                .queue_page(QueueRange {
                    queue: name,
                    offset: out.len(),
                    limit: PAGE,
                    order: Order::Asc,
                })
                .await
                .expect("queue page");
            let last = page.len() < PAGE;
            out.extend(page);
            if last {
                return out;
            }
        }
    }

    /// The number of jobs waiting in queue `name`.
    async fn queue_len(&self, name: &str) -> usize {
        self.admin()
            .queues()
            .await
            .expect("queues")
            .into_iter()
            .find(|q| q.name == name)
            .map_or(0, |q| q.size as usize)
    }

    /// Every queue name pushed or promoted to (Sidekiq's `queues` set), sorted.
    async fn known_queues(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .admin()
            .queues()
            .await
            .expect("queues")
            .into_iter()
            .map(|q| q.name)
            .collect();
        names.sort();
        names
    }

    /// Sorted set `name` (`retry`, `schedule` or `dead`) as `(score, member)`, lowest first.
    async fn set(&self, name: &str) -> Vec<(f64, String)> {
        let set = SetName::parse(name).expect("a set name");
        let mut out = Vec::new();
        loop {
            let page = self
                .admin()
                .set_page(SetRange {
                    set,
                    offset: out.len(),
                    limit: PAGE,
                    order: Order::Asc,
                })
                .await
                .expect("set page");
            let last = page.len() < PAGE;
            out.extend(page.into_iter().map(|e| (e.score, e.raw)));
            if last {
                return out;
            }
        }
    }

    /// The jobs `identity` holds in flight from `queue`, oldest fetched first.
    async fn in_flight(&self, identity: &str, queue: &str) -> Vec<String> {
        self.broker()
            .held(identity, &[queue.to_string()])
            .await
            .expect("held")
            .into_iter()
            .map(|j| j.raw)
            .collect()
    }

    /// The total counters.
    async fn stats(&self) -> Counters {
        self.admin().counters().await.expect("counters")
    }

    /// The counters of one UTC day (`YYYY-MM-DD`).
    async fn daily_stats(&self, date: &str) -> Counters {
        self.admin()
            .daily_counters(&[date.to_string()])
            .await
            .expect("daily counters")
            .pop()
            .unwrap_or_default()
    }
}
