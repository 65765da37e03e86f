//! Client middleware: code that wraps every push (add a tenant id, write a trace context,
//! refuse a push, time it), the mirror of the server's [`Middleware`](crate::middleware::Middleware).
//!
//! A middleware receives the [`Outgoing`] jobs and a [`ClientNext`] to call the rest of the
//! chain, which ends in the store. It may change the jobs' payloads before, read what was
//! stored after (the payloads as written, `enqueued_at` included), or return without calling
//! the rest: then nothing is stored and the push fails with [`Error::NotPushed`]. An error it
//! returns is the push's error.
//!
//! Every push of a [`Client`] runs the chain: one job ([`Client::push`], `push_in`, `push_at`,
//! `push_raw`, `push_active_job`, `push_payload`, unique and debounced pushes), many at once
//! ([`Client::push_bulk`]: one call of the chain for the whole call, as one send), the jobs of
//! a batch or a workflow's first steps, and the pushes inside an application transaction
//! (`push_tx`, `push_pg_tx`: the chain runs before the rows are written into the transaction).
//! Jobs the backend pushes on its own later — retries, periodic ticks, batch callbacks and
//! workflow steps released by their parents — do not run it, as Sidekiq's retries do not.

use crate::{Client, Error};
use async_trait::async_trait;
use errand_core::Payload;
use std::sync::Arc;

/// Wraps each push of a [`Client`]: [`Client::client_middleware`] installs one.
#[async_trait]
pub trait ClientMiddleware: Send + Sync + 'static {
    /// Runs around one push; call `next.run(jobs).await` to store the jobs.
    async fn call(&self, jobs: &mut Outgoing, next: ClientNext<'_>) -> Result<(), Error>;

    /// Whether this middleware has work for the next push (true by default). When no
    /// middleware of a chain has, a push goes straight to the store: a bulk push then skips
    /// building a payload object per job for the chain. The default push spans answer false
    /// while no subscriber records them.
    fn active(&self) -> bool {
        true
    }
}

/// True when some middleware of `chain` has work for the next push.
pub(crate) fn any_active(chain: &[Arc<dyn ClientMiddleware>]) -> bool {
    chain.iter().any(|m| m.active())
}

/// What kind of push the jobs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushKind {
    /// One job, to its queue or the schedule.
    One,
    /// A unique job ([`JobOptions::unique_for`](crate::JobOptions::unique_for)): stored with
    /// its lock, or refused as a duplicate ([`Error::Duplicate`]) by the store.
    Unique,
    /// A debounced job, replacing the waiting one of its key.
    Debounced,
    /// Many jobs in one call ([`Client::push_bulk`]).
    Bulk,
    /// Jobs joining a batch or starting a workflow, stored with the batch's records.
    Batch,
    /// Jobs written inside the application's own transaction: stored when it commits.
    Transaction,
}

impl PushKind {
    /// A short name: `one`, `unique`, `debounced`, `bulk`, `batch`, `transaction`.
    pub fn as_str(self) -> &'static str {
        match self {
            PushKind::One => "one",
            PushKind::Unique => "unique",
            PushKind::Debounced => "debounced",
            PushKind::Bulk => "bulk",
            PushKind::Batch => "batch",
            PushKind::Transaction => "transaction",
        }
    }
}

/// The jobs of one push, as the chain sees them.
#[derive(Debug)]
pub struct Outgoing {
    pub(crate) jobs: Vec<Payload>,
    pub(crate) at: Option<f64>,
    pub(crate) kind: PushKind,
    pub(crate) stored: bool,
}

impl Outgoing {
    pub(crate) fn new(jobs: Vec<Payload>, at: Option<f64>, kind: PushKind) -> Self {
        Self {
            jobs,
            at,
            kind,
            stored: false,
        }
    }

    /// The jobs' payloads (one for a single push). After the store, as written.
    pub fn jobs(&self) -> &[Payload] {
        &self.jobs
    }

    /// The payloads to change before the store: set a key (`p.set("tenant", 7)`), or a
    /// different queue (`p.set("queue", "eu")`). Changing `jid` changes the id the push
    /// returns.
    pub fn jobs_mut(&mut self) -> &mut [Payload] {
        &mut self.jobs
    }

    /// When the jobs are to run, float epoch seconds; `None` for now.
    pub fn at(&self) -> Option<f64> {
        self.at
    }

    /// What kind of push this is.
    pub fn kind(&self) -> PushKind {
        self.kind
    }

    /// True once the store accepted the jobs (for a transaction: once they are written into
    /// it); false before `next.run` and when a middleware stopped the push.
    pub fn stored(&self) -> bool {
        self.stored
    }
}

/// Where a push's chain ends.
#[async_trait]
pub(crate) trait Store: Send + Sync {
    /// Stores `jobs`, marking them stored.
    async fn store(&self, client: &Client, jobs: &mut Outgoing) -> Result<(), Error>;
}

/// The rest of the client middleware chain, ending in the store.
pub struct ClientNext<'a> {
    rest: &'a [Arc<dyn ClientMiddleware>],
    client: &'a Client,
    store: &'a dyn Store,
}

impl<'a> ClientNext<'a> {
    pub(crate) fn new(
        rest: &'a [Arc<dyn ClientMiddleware>],
        client: &'a Client,
        store: &'a dyn Store,
    ) -> Self {
        Self {
            rest,
            client,
            store,
        }
    }

    /// Runs the remaining middleware and the store.
    ///
    /// # Errors
    /// What a later middleware or the store returned.
    pub async fn run(self, jobs: &mut Outgoing) -> Result<(), Error> {
        match self.rest.split_first() {
            Some((m, rest)) => {
                m.call(jobs, ClientNext::new(rest, self.client, self.store))
                    .await
            }
            None => self.store.store(self.client, jobs).await,
        }
    }
}

/// Runs `jobs` through `chain` into `store`: [`Error::NotPushed`] when a middleware stopped
/// the push.
pub(crate) async fn send(
    chain: &[Arc<dyn ClientMiddleware>],
    client: &Client,
    store: &dyn Store,
    jobs: &mut Outgoing,
) -> Result<(), Error> {
    ClientNext::new(chain, client, store).run(jobs).await?;
    if jobs.stored {
        Ok(())
    } else {
        Err(Error::NotPushed)
    }
}

/// The store of pushes whose jobs another step writes (a transaction, a batch): the chain
/// only marks them accepted.
pub(crate) struct Accept;

#[async_trait]
impl Store for Accept {
    async fn store(&self, _: &Client, jobs: &mut Outgoing) -> Result<(), Error> {
        jobs.stored = true;
        Ok(())
    }
}
