//! What a running job can see: its payload, the application's shared data, a client, and the
//! server's shutdown signal.

use crate::Client;
use errand_core::Payload;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Application state shared with every job (a database pool, an HTTP client), keyed by type.
#[derive(Default, Clone)]
pub struct Data {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data")
            .field("entries", &self.map.len())
            .finish()
    }
}

impl Data {
    /// Stores `value`, replacing any earlier value of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The stored value of type `T`.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.map.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

/// The context of one job attempt.
#[derive(Debug, Clone)]
pub struct JobContext {
    payload: Arc<Payload>,
    queue: Arc<str>,
    data: Arc<Data>,
    client: Client,
    shutdown: CancellationToken,
}

impl JobContext {
    /// A context for running a job outside a server (tests, inline execution).
    pub fn new(payload: Payload, client: Client, data: Arc<Data>) -> Self {
        let queue = Arc::from(payload.queue());
        Self {
            payload: Arc::new(payload),
            queue,
            data,
            client,
            shutdown: CancellationToken::new(),
        }
    }

    pub(crate) fn with_shutdown(mut self, token: CancellationToken, queue: &str) -> Self {
        self.shutdown = token;
        self.queue = Arc::from(queue);
        self
    }

    /// Takes the payload back once the attempt is over (copies it only if a clone of this
    /// context is still alive, e.g. held by a task the job spawned).
    pub(crate) fn into_payload(self) -> Payload {
        Arc::try_unwrap(self.payload).unwrap_or_else(|shared| (*shared).clone())
    }

    /// The job id.
    pub fn jid(&self) -> &str {
        self.payload.jid()
    }

    /// The job's class name (`wrapped` for ActiveJob payloads).
    pub fn class(&self) -> &str {
        self.payload.display_class()
    }

    /// The queue the job was fetched from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// How many times the job has failed before (`None` on the first attempt).
    pub fn retry_count(&self) -> Option<u32> {
        self.payload.retry_count()
    }

    /// The whole payload as stored (including keys added by other systems).
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Shared application data of type `T`, registered with `ServerBuilder::data`.
    pub fn data<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.data.get::<T>()
    }

    /// A client for enqueuing further jobs.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Cancelled when the server's shutdown deadline passes; long jobs can stop early and
    /// return an error so they are retried.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
}
