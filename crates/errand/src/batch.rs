//! Batches and workflows: jobs tracked as a set, with callbacks enqueued exactly once.
//!
//! # Batches
//! ```rust,ignore
//! let batch = Batch::new(&client)
//!     .description("import 2026-12-05")
//!     .on_success(ImportDone { file_id })
//!     .on_death(ImportBroken { file_id })
//!     .open()
//!     .await?;
//! for row in rows {
//!     batch.push(ImportRow { file_id, row }).await?;
//! }
//! let bid = batch.seal().await?;
//! ```
//! A batch **completes** when every job in it has succeeded or is in the dead set, and
//! **succeeds** when every job has succeeded; its **death** is the first of its jobs to reach
//! the dead set. Each of the three callbacks is an ordinary job, enqueued exactly once when its
//! event happens: the server records each attempt's outcome in the batch before it acks the
//! job, in one atomic step with the callback's push, so two last jobs finishing at the same
//! instant, a worker killed between finishing a job and acking it (the job runs again; its
//! second success is not counted twice), and a retry of a job that already counted cannot push
//! a callback twice or lose it. Callbacks run like any job (at least once: an effect they must
//! not repeat belongs in [`JobContext::once`](crate::JobContext::once)). `success` comes after
//! `complete` when a dead job of the batch is retried by hand and succeeds.
//!
//! Callbacks go to the queue their job names, or to the `callbacks` queue when it names none
//! (the `default` queue), so they do not wait behind the batch's own work: run a server on that
//! queue. A callback reads which batch and event it runs for with
//! [`JobContext::batch_callback`](crate::JobContext::batch_callback).
//!
//! A batch holds open until it is sealed ([`BatchHandle::seal`]), so it cannot complete while it
//! is being filled; its running jobs can add jobs to it ([`JobContext::batch`](crate::JobContext::batch)),
//! and a batch can have child batches ([`BatchHandle::child`]): a parent completes after its
//! children. Jobs carry their batch's id in the payload's `bid` key (Sidekiq Pro's), which a
//! Ruby Sidekiq without Pro ignores.
//!
//! # Workflows
//! A [`Workflow`] is a batch whose jobs (steps) wait for others: a step is pushed when all the
//! steps it comes after have succeeded, and reads their results with
//! [`JobContext::parent_output`](crate::JobContext::parent_output). A step that dies cancels the
//! steps not yet pushed ([`FailurePolicy::CancelAll`], the default) or only those that need it
//! ([`FailurePolicy::CancelDependents`]).

use crate::Push;
use crate::client::Client;
use crate::client_middleware::PushKind;
use crate::error::Error;
use crate::job::{Job, KEEP_RESULT};
use errand_core::broker::{
    BATCH_KEEP, BUILDING, BatchCallback, BatchEvent, BatchOutcome, BatchRecord, BatchStatus,
    Enqueue, JobHead, NewBatch, ScheduledJob, WaitingStep,
};
use errand_core::{Payload, PayloadError};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use errand_core::broker::FailurePolicy;

/// The payload key of a job's batch id (Sidekiq Pro's name).
pub const BID: &str = errand_core::broker::BID_KEY;
/// The payload key that marks a batch callback: `{"bid": "...", "event": "complete"}`.
pub const CALLBACK: &str = "errand_callback";
/// The payload key of a workflow step: `{"step": "parse", "parents": {"fetch": "<jid>"}}`.
pub const STEP: &str = "errand_step";
/// The queue callbacks go to when their job names none.
pub const CALLBACK_QUEUE: &str = "callbacks";

type Build = Box<dyn FnOnce(&Client, &Push) -> Result<Payload, Error> + Send>;

fn builder<J: Job>(job: J) -> Build {
    Box::new(move |client: &Client, push: &Push| client.build(&job, push))
}

/// A callback's payload: the job, on its queue (or [`CALLBACK_QUEUE`]), marked with its batch
/// and event, as a head closed by the backend when it pushes it.
fn callback_head(
    client: &Client,
    build: Build,
    queue: Option<&str>,
    bid: &str,
    event: BatchEvent,
) -> Result<BatchCallback, Error> {
    let mut p = build(client, &Push::new())?;
    let queue = match queue {
        Some(q) => q.to_string(),
        None if p.queue() == "default" => CALLBACK_QUEUE.to_string(),
        None => p.queue().to_string(),
    };
    p.set("queue", queue.as_str());
    p.set(CALLBACK, json!({"bid": bid, "event": event.as_str()}));
    Ok(BatchCallback {
        event,
        job: head(client, &queue, &p)?,
    })
}

/// `p` as a head for the backend to push later, checked against the client's size limit (no
/// push checks it then).
fn head(client: &Client, queue: &str, p: &Payload) -> Result<JobHead, Error> {
    let json = client.check_size(p.to_json())?;
    JobHead::new(queue, &json).ok_or(Error::Payload(PayloadError::NotAnObject))
}

/// A batch being defined: its description, callbacks and parent. [`Batch::open`] creates it.
pub struct Batch {
    client: Client,
    bid: String,
    parent: Option<String>,
    description: String,
    callbacks: Vec<(BatchEvent, Build)>,
    callback_queue: Option<String>,
    keep: Duration,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("bid", &self.bid)
            .field("parent", &self.parent)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// A new batch on `client`'s backend, with a fresh id.
    pub fn new(client: &Client) -> Self {
        Self {
            client: client.clone(),
            bid: errand_core::id::new_jid(),
            parent: None,
            description: String::new(),
            callbacks: Vec::new(),
            callback_queue: None,
            keep: BATCH_KEEP,
        }
    }

    /// Free text shown by the dashboard and `errand ops batches`.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    fn callback<J: Job>(mut self, event: BatchEvent, job: J) -> Self {
        self.callbacks.retain(|(e, _)| *e != event);
        self.callbacks.push((event, builder(job)));
        self
    }

    /// Enqueues `job` once every job of the batch (and every child batch) has succeeded or
    /// is dead.
    pub fn on_complete<J: Job>(self, job: J) -> Self {
        self.callback(BatchEvent::Complete, job)
    }

    /// Enqueues `job` once every job of the batch (and every child batch) has succeeded.
    pub fn on_success<J: Job>(self, job: J) -> Self {
        self.callback(BatchEvent::Success, job)
    }

    /// Enqueues `job` when the first job of the batch (or of a child batch) dies.
    pub fn on_death<J: Job>(self, job: J) -> Self {
        self.callback(BatchEvent::Death, job)
    }

    /// The queue every callback goes to (by default: the callback job's own queue, or
    /// [`CALLBACK_QUEUE`] for a job on the `default` queue).
    pub fn callback_queue(mut self, queue: impl Into<String>) -> Self {
        self.callback_queue = Some(queue.into());
        self
    }

    /// How long the batch's state is kept once it completes (7 days by default).
    pub fn keep(mut self, after_complete: Duration) -> Self {
        self.keep = after_complete;
        self
    }

    /// Makes this a child of batch `bid`: the parent completes only after it.
    pub fn child_of(mut self, bid: impl Into<String>) -> Self {
        self.parent = Some(bid.into());
        self
    }

    /// Creates the batch, open for jobs until [`BatchHandle::seal`].
    ///
    /// # Errors
    /// A callback that cannot be encoded, a parent that is gone or complete
    /// ([`BrokerError::BatchClosed`](errand_core::BrokerError::BatchClosed)), a backend
    /// without batches, or a backend failure.
    pub async fn open(self) -> Result<BatchHandle, Error> {
        let callbacks = self
            .callbacks
            .into_iter()
            .map(|(event, build)| {
                callback_head(
                    &self.client,
                    build,
                    self.callback_queue.as_deref(),
                    &self.bid,
                    event,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.client
            .broker()
            .batch_create(&NewBatch {
                bid: &self.bid,
                parent: self.parent.as_deref(),
                description: &self.description,
                callbacks: &callbacks,
                keep: self.keep,
                waiting: &[],
                policy: FailurePolicy::default(),
                workflow: None,
            })
            .await?;
        Ok(BatchHandle {
            client: self.client,
            bid: self.bid,
        })
    }
}

/// An existing batch that jobs can be added to: from [`Batch::open`], from
/// [`JobContext::batch`](crate::JobContext::batch) inside a job of the batch, or
/// [`BatchHandle::new`] by id.
#[derive(Debug, Clone)]
pub struct BatchHandle {
    client: Client,
    bid: String,
}

impl BatchHandle {
    /// A handle on batch `bid`.
    pub fn new(client: &Client, bid: impl Into<String>) -> Self {
        Self {
            client: client.clone(),
            bid: bid.into(),
        }
    }

    /// The batch id.
    pub fn bid(&self) -> &str {
        &self.bid
    }

    /// Adds `job` to the batch and enqueues it, in one step. Returns its jid.
    ///
    /// # Errors
    /// As [`Client::push`]; a batch that has completed (or is gone) refuses it
    /// ([`BrokerError::BatchClosed`](errand_core::BrokerError::BatchClosed)), and unique or
    /// debounced jobs cannot join a batch ([`Error::Config`]).
    pub async fn push<J: Job>(&self, job: J) -> Result<String, Error> {
        self.push_with(job, Push::new()).await
    }

    /// Adds `job`, run after `delay`, to the batch.
    ///
    /// # Errors
    /// As [`BatchHandle::push`].
    pub async fn push_in<J: Job>(&self, delay: Duration, job: J) -> Result<String, Error> {
        self.push_with(job, Push::new().delay(delay)).await
    }

    /// Adds `job` with per-push overrides.
    ///
    /// # Errors
    /// As [`BatchHandle::push`].
    pub async fn push_with<J: Job>(&self, job: J, push: Push) -> Result<String, Error> {
        Ok(self.push_bulk_with(vec![job], push).await?.remove(0))
    }

    /// Adds jobs to the batch and enqueues them, all in one step. Returns their jids in order.
    ///
    /// # Errors
    /// As [`BatchHandle::push`].
    pub async fn push_bulk<J, I>(&self, jobs: I) -> Result<Vec<String>, Error>
    where
        J: Job,
        I: IntoIterator<Item = J>,
    {
        self.push_bulk_with(jobs, Push::new()).await
    }

    async fn push_bulk_with<J, I>(&self, jobs: I, push: Push) -> Result<Vec<String>, Error>
    where
        J: Job,
        I: IntoIterator<Item = J>,
    {
        let opts = J::options();
        if opts.unique_for.is_some() || opts.debounce.is_some() {
            return Err(Error::Config(format!(
                "{} is unique or debounced: such jobs cannot join a batch",
                J::NAME
            )));
        }
        if let Some(jid) = push.jid_override()
            && (jid == BUILDING || jid.starts_with("child:"))
        {
            return Err(Error::Config(format!(
                "jid {jid:?} is reserved in batches (`building`, `child:…`)"
            )));
        }
        let push = push.set(BID, self.bid.as_str());
        let at = self.client.run_at(&push);
        let built = jobs
            .into_iter()
            .map(|job| self.client.build(&job, &push))
            .collect::<Result<Vec<_>, _>>()?;
        let built = self.client.accept(built, at, PushKind::Batch).await?;
        let (mut now, mut later, mut jids) = (Vec::new(), Vec::new(), Vec::new());
        for p in built {
            jids.push(p.jid().to_string());
            let (queue, at, payload) = self.client.stored(p, at)?;
            match at {
                Some(at) => later.push(ScheduledJob { at, payload }),
                None => now.push(Enqueue { queue, payload }),
            }
        }
        // The jids of the jobs now, then of those later (as `batch_add` takes them).
        let order: Vec<&str> = jids.iter().map(String::as_str).collect();
        if !jids.is_empty() {
            self.client
                .broker()
                .batch_add(&self.bid, &order, &now, &later)
                .await?;
        }
        Ok(jids)
    }

    /// A child batch of this one (see [`Batch::child_of`]).
    pub fn child(&self) -> Batch {
        Batch::new(&self.client).child_of(self.bid.clone())
    }

    /// Ends the filling: from now on the batch completes when its jobs are done (at once, when
    /// they all are already). Jobs of the batch can still add jobs while it runs. Returns the
    /// batch id.
    ///
    /// # Errors
    /// A backend failure.
    pub async fn seal(self) -> Result<String, Error> {
        record_member(&self.client, &self.bid, BUILDING, BatchOutcome::Succeeded).await?;
        Ok(self.bid)
    }

    /// The batch's state ([`Client::batch_status`]).
    ///
    /// # Errors
    /// A backend failure.
    pub async fn status(&self) -> Result<Option<BatchStatus>, Error> {
        self.client.batch_status(&self.bid).await
    }
}

pub(crate) async fn record_member(
    client: &Client,
    bid: &str,
    member: &str,
    outcome: BatchOutcome,
) -> Result<errand_core::broker::BatchFired, Error> {
    let enqueued_at = client.profile().encode(client.now()).to_string();
    Ok(client
        .broker()
        .batch_record(BatchRecord {
            bid,
            member,
            outcome,
            enqueued_at: &enqueued_at,
        })
        .await?)
}

struct Step {
    name: String,
    after: Vec<String>,
    build: Build,
}

/// A DAG of jobs run as one batch: each step is pushed once every step it comes after has
/// succeeded. See the [module docs](self).
///
/// ```rust,ignore
/// let run = Workflow::new()
///     .add("fetch", Fetch { day })
///     .add("rates", Rates { day })
///     .add_after("parse", Parse, ["fetch"])
///     .add_after("report", Report { day }, ["parse", "rates"])
///     .on_success(Notify { day })
///     .start(&client)
///     .await?;
/// ```
pub struct Workflow {
    description: String,
    steps: Vec<Step>,
    policy: FailurePolicy,
    keep_results: Duration,
    callbacks: Vec<(BatchEvent, Build)>,
    callback_queue: Option<String>,
    keep: Duration,
    parent: Option<String>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("description", &self.description)
            .field(
                "steps",
                &self.steps.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Default for Workflow {
    fn default() -> Self {
        Self::new()
    }
}

/// A workflow that has started: its id (the batch's) and each step's jid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRun {
    /// The workflow's batch id.
    pub id: String,
    /// Each step's job id, by step name.
    pub steps: BTreeMap<String, String>,
}

impl Workflow {
    /// An empty workflow.
    pub fn new() -> Self {
        Self {
            description: String::new(),
            steps: Vec::new(),
            policy: FailurePolicy::default(),
            keep_results: BATCH_KEEP,
            callbacks: Vec::new(),
            callback_queue: None,
            keep: BATCH_KEEP,
            parent: None,
        }
    }

    /// Free text shown by the dashboard.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// Adds step `name`, which starts with the workflow.
    pub fn add<J: Job>(self, name: impl Into<String>, job: J) -> Self {
        self.add_after(name, job, std::iter::empty::<String>())
    }

    /// Adds step `name`, pushed once every step in `after` has succeeded.
    pub fn add_after<J, I, S>(mut self, name: impl Into<String>, job: J, after: I) -> Self
    where
        J: Job,
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.steps.push(Step {
            name: name.into(),
            after: after.into_iter().map(Into::into).collect(),
            build: builder(job),
        });
        self
    }

    /// What a dead step does to the rest ([`FailurePolicy::CancelAll`] by default).
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long each step's result ([`JobContext::set_result`](crate::JobContext::set_result))
    /// is kept for the steps after it (7 days by default).
    pub fn keep_results(mut self, ttl: Duration) -> Self {
        self.keep_results = ttl;
        self
    }

    /// Enqueues `job` once every step has succeeded or is dead or cancelled.
    pub fn on_complete<J: Job>(mut self, job: J) -> Self {
        self.callbacks.retain(|(e, _)| *e != BatchEvent::Complete);
        self.callbacks.push((BatchEvent::Complete, builder(job)));
        self
    }

    /// Enqueues `job` once every step has succeeded.
    pub fn on_success<J: Job>(mut self, job: J) -> Self {
        self.callbacks.retain(|(e, _)| *e != BatchEvent::Success);
        self.callbacks.push((BatchEvent::Success, builder(job)));
        self
    }

    /// Enqueues `job` when the first step dies.
    pub fn on_death<J: Job>(mut self, job: J) -> Self {
        self.callbacks.retain(|(e, _)| *e != BatchEvent::Death);
        self.callbacks.push((BatchEvent::Death, builder(job)));
        self
    }

    /// The queue the callbacks go to (as [`Batch::callback_queue`]).
    pub fn callback_queue(mut self, queue: impl Into<String>) -> Self {
        self.callback_queue = Some(queue.into());
        self
    }

    /// How long the workflow's state is kept once it completes (7 days by default).
    pub fn keep(mut self, after_complete: Duration) -> Self {
        self.keep = after_complete;
        self
    }

    /// Runs the workflow as a child of batch `bid`.
    pub fn child_of(mut self, bid: impl Into<String>) -> Self {
        self.parent = Some(bid.into());
        self
    }

    /// Checks the graph: unique step names, known dependencies, no cycle. Returns the steps in
    /// an order where each comes after its dependencies.
    fn check(&self) -> Result<Vec<usize>, Error> {
        let bad = |m: String| Err(Error::Config(format!("workflow: {m}")));
        if self.steps.is_empty() {
            return bad("it has no steps".into());
        }
        let mut index = BTreeMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            if s.name.is_empty() {
                return bad("a step has an empty name".into());
            }
            if index.insert(s.name.as_str(), i).is_some() {
                return bad(format!("two steps are named `{}`", s.name));
            }
        }
        for s in &self.steps {
            for a in &s.after {
                if !index.contains_key(a.as_str()) {
                    return bad(format!("step `{}` comes after unknown step `{a}`", s.name));
                }
                if *a == s.name {
                    return bad(format!("step `{}` comes after itself", s.name));
                }
            }
        }
        // Depth-first, with the path kept to name a cycle.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        fn visit(
            w: &Workflow,
            index: &BTreeMap<&str, usize>,
            i: usize,
            marks: &mut [Mark],
            path: &mut Vec<usize>,
            order: &mut Vec<usize>,
        ) -> Result<(), String> {
            match marks[i] {
                Mark::Done => return Ok(()),
                Mark::Open => {
                    let from = path.iter().position(|&p| p == i).unwrap_or(0);
                    let mut names: Vec<&str> = path[from..]
                        .iter()
                        .map(|&p| w.steps[p].name.as_str())
                        .collect();
                    names.push(&w.steps[i].name);
                    return Err(format!("steps form a cycle: {}", names.join(" → ")));
                }
                Mark::New => {}
            }
            marks[i] = Mark::Open;
            path.push(i);
            for a in &w.steps[i].after {
                visit(w, index, index[a.as_str()], marks, path, order)?;
            }
            path.pop();
            marks[i] = Mark::Done;
            order.push(i);
            Ok(())
        }
        let mut marks = vec![Mark::New; self.steps.len()];
        let mut order = Vec::with_capacity(self.steps.len());
        for i in 0..self.steps.len() {
            if let Err(m) = visit(self, &index, i, &mut marks, &mut Vec::new(), &mut order) {
                return bad(m);
            }
        }
        Ok(order)
    }

    /// Checks the graph and starts the workflow: its steps without dependencies are enqueued,
    /// the others wait in the backend.
    ///
    /// # Errors
    /// [`Error::Config`] for a workflow with no steps, two steps of one name, a dependency on an
    /// unknown step, or a cycle (named in the message); otherwise as [`Batch::open`].
    pub async fn start(self, client: &Client) -> Result<WorkflowRun, Error> {
        self.check()?;
        let bid = errand_core::id::new_jid();
        let jids: BTreeMap<String, String> = self
            .steps
            .iter()
            .map(|s| (s.name.clone(), errand_core::id::new_jid()))
            .collect();
        let keep_results = self.keep_results.as_secs_f64();
        // Every step's payload is built now (the waiting ones are stored as heads the
        // backend pushes later) and goes through the client middleware once, at the start.
        let mut built = Vec::new();
        let mut steps = Vec::new();
        for s in self.steps {
            let jid = &jids[&s.name];
            let parents: BTreeMap<String, String> = s
                .after
                .iter()
                .map(|a| (a.clone(), jids[a].clone()))
                .collect();
            let push = Push::new()
                .jid(jid.as_str())
                .set(BID, bid.as_str())
                .set(STEP, json!({"step": s.name, "parents": parents}));
            let mut p = (s.build)(client, &push)?;
            if p.get(KEEP_RESULT).is_none() {
                p.set(KEEP_RESULT, keep_results);
            }
            built.push(p);
            steps.push((s.name, s.after, parents));
        }
        let built = client.accept(built, None, PushKind::Batch).await?;
        let mut roots = Vec::new();
        let mut waiting = Vec::new();
        let mut graph = Vec::new();
        for (p, (name, after_names, parents)) in built.into_iter().zip(steps) {
            let jid = &jids[&name];
            if p.jid() != jid {
                return Err(Error::Config(format!(
                    "a client middleware changed the jid of workflow step {name:?}: a \
                     workflow's steps keep the ids their graph names"
                )));
            }
            graph.push(json!({
                "name": name,
                "jid": jid,
                "class": p.display_class(),
                "queue": p.queue(),
                "after": after_names,
            }));
            let after: BTreeSet<&str> = parents.values().map(String::as_str).collect();
            if after.is_empty() {
                roots.push(p);
            } else {
                waiting.push(WaitingStep {
                    jid: jid.clone(),
                    job: head(client, p.queue(), &p)?,
                    after: after.into_iter().map(str::to_string).collect(),
                });
            }
        }
        let callbacks = self
            .callbacks
            .into_iter()
            .map(|(event, build)| {
                callback_head(client, build, self.callback_queue.as_deref(), &bid, event)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let definition = json!({"policy": self.policy.as_str(), "steps": graph}).to_string();
        client
            .broker()
            .batch_create(&NewBatch {
                bid: &bid,
                parent: self.parent.as_deref(),
                description: &self.description,
                callbacks: &callbacks,
                keep: self.keep,
                waiting: &waiting,
                policy: self.policy,
                workflow: Some(&definition),
            })
            .await?;
        let (mut now, mut order) = (Vec::new(), Vec::new());
        for p in roots {
            order.push(p.jid().to_string());
            let (queue, _, payload) = client.stored(p, None)?;
            now.push(Enqueue { queue, payload });
        }
        let order: Vec<&str> = order.iter().map(String::as_str).collect();
        // With waiting steps (pending members from the creation on) the workflow is sealed
        // before its roots are pushed: it cannot complete in between, and once a root runs
        // the workflow is whole, so a crash between two of these steps never leaves running
        // steps in a workflow that cannot complete. Without any, it is a plain batch.
        if waiting.is_empty() {
            client.broker().batch_add(&bid, &order, &now, &[]).await?;
            record_member(client, &bid, BUILDING, BatchOutcome::Succeeded).await?;
        } else {
            record_member(client, &bid, BUILDING, BatchOutcome::Succeeded).await?;
            client.broker().batch_add(&bid, &order, &now, &[]).await?;
        }
        Ok(WorkflowRun {
            id: bid,
            steps: jids,
        })
    }
}

/// The batch a payload belongs to, if any.
pub(crate) fn bid_of(p: &Payload) -> Option<&str> {
    p.get(BID).and_then(Value::as_str).filter(|b| !b.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobContext, JobResult};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Noop;

    impl Job for Noop {
        const NAME: &'static str = "Noop";
        async fn perform(self, _: &JobContext) -> JobResult {
            Ok(())
        }
    }

    fn config_error(w: Workflow) -> String {
        match w.check() {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn workflows_are_checked_before_they_start() {
        let ok = Workflow::new()
            .add("a", Noop)
            .add_after("b", Noop, ["a"])
            .add_after("c", Noop, ["a"])
            .add_after("d", Noop, ["b", "c"]);
        let order = ok.check().unwrap();
        let pos = |i: usize| order.iter().position(|&o| o == i).unwrap();
        assert!(pos(0) < pos(1) && pos(1) < pos(3) && pos(2) < pos(3));
        assert_eq!(config_error(Workflow::new()), "workflow: it has no steps");
        assert_eq!(
            config_error(Workflow::new().add("a", Noop).add("a", Noop)),
            "workflow: two steps are named `a`"
        );
        assert_eq!(
            config_error(Workflow::new().add_after("a", Noop, ["x"])),
            "workflow: step `a` comes after unknown step `x`"
        );
        assert_eq!(
            config_error(Workflow::new().add_after("a", Noop, ["a"])),
            "workflow: step `a` comes after itself"
        );
        assert_eq!(
            config_error(
                Workflow::new()
                    .add("root", Noop)
                    .add_after("a", Noop, ["root", "c"])
                    .add_after("b", Noop, ["a"])
                    .add_after("c", Noop, ["b"])
            ),
            "workflow: steps form a cycle: a → c → b → a"
        );
    }
}
