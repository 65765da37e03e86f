//! The operations people run on a backend, built once on the [`Admin`] primitives (the role
//! Sidekiq's `api.rb` plays): the overview, job views of stored entries, bounded filtering and
//! paging, the actions with Sidekiq's rules (retry now, delete, kill, retry with edited
//! arguments, and each of them on every entry matching a filter), processes and their signals,
//! metrics per class, daily history. The dashboard, its JSON API, Prometheus and `errand ops`
//! all go through here, so a job retried from any of them follows the same rules.

use errand_core::admin::{
    Admin, MoveToDead, MoveToQueue, Order, ProcessRecord, QueueSummary, SetEntry, SetName, SetRange,
};
use errand_core::broker::{Broker, BrokerResult, Cancelled, DeadLimits, Enqueue};
use errand_core::{Payload, WireProfile, activejob};
use serde::Serialize;
use serde_json::Value;

/// Most entries a filtered listing reads before it stops (and says so).
pub const MAX_SCAN: usize = 20_000;
/// Most entries one "all" action touches; the rest wait for the next one.
pub const MAX_ALL: usize = 10_000;
/// Longest one "all" action runs before it stops (under the dashboard's 30 s request
/// timeout); the rest wait for the next one.
pub const ALL_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);
/// Largest page size.
pub const MAX_PER_PAGE: usize = 100;
/// Deepest offset a page may start at.
pub const MAX_OFFSET: usize = 10_000_000;
/// Longest filter text kept (longer input is cut).
pub const MAX_FILTER_LEN: usize = 200;
/// Longest argument preview in a listing, in characters.
const ARGS_PREVIEW: usize = 240;

/// The dashboard's totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overview {
    /// When these were read (backend-independent wall clock, epoch seconds).
    pub time: f64,
    /// Jobs executed.
    pub processed: u64,
    /// Jobs failed.
    pub failed: u64,
    /// Jobs running now.
    pub busy: u64,
    /// Jobs waiting in queues.
    pub enqueued: u64,
    /// Jobs in the retry set.
    pub retries: u64,
    /// Jobs in the schedule set.
    pub scheduled: u64,
    /// Jobs in the dead set.
    pub dead: u64,
    /// Live processes.
    pub processes: u64,
    /// Jobs cancelled while running (since the backend was new).
    pub cancelled: u64,
    /// Jobs dropped unrun past their deadline (since the backend was new).
    pub expired: u64,
}

/// Reads the totals.
pub async fn overview(admin: &dyn Admin) -> BrokerResult<Overview> {
    let counters = admin.counters().await?;
    let queues = admin.queues().await?;
    let processes = admin.processes().await?;
    Ok(Overview {
        time: errand_core::now(),
        processed: counters.processed,
        failed: counters.failed,
        cancelled: counters.cancelled,
        expired: counters.expired,
        busy: processes.iter().map(|p| p.busy).sum(),
        enqueued: queues.iter().map(|q| q.size).sum(),
        retries: admin.set_size(SetName::Retry).await?,
        scheduled: admin.set_size(SetName::Scheduled).await?,
        dead: admin.set_size(SetName::Dead).await?,
        processes: processes.len() as u64,
    })
}

/// A queue with its latency.
#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    /// Name.
    pub name: String,
    /// Jobs waiting.
    pub size: u64,
    /// Seconds since the next job to run was enqueued (0 when empty).
    pub latency: f64,
    /// Whether servers skip it.
    pub paused: bool,
}

impl QueueView {
    /// Latency measured at `now`.
    pub fn new(q: QueueSummary, now: f64) -> Self {
        let latency = q
            .oldest
            .as_deref()
            .and_then(|raw| Payload::parse(raw).ok())
            .and_then(|p| p.time("enqueued_at"))
            .map_or(0.0, |at| (now - at).max(0.0));
        Self {
            name: q.name,
            size: q.size,
            latency,
            paused: q.paused,
        }
    }
}

/// Every queue with its latency.
pub async fn queues(admin: &dyn Admin) -> BrokerResult<Vec<QueueView>> {
    let now = errand_core::now();
    Ok(admin
        .queues()
        .await?
        .into_iter()
        .map(|q| QueueView::new(q, now))
        .collect())
}

/// A stored job as people read it. Built from any string: an entry that is not a job payload
/// still gets a view (class `(unreadable)`, the text as its preview).
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// The class to show (an ActiveJob's wrapped class).
    pub class: String,
    /// The stored class when it differs (the ActiveJob wrapper).
    pub wrapper: Option<String>,
    /// Queue.
    pub queue: String,
    /// Job id (empty when unreadable).
    pub jid: String,
    /// Arguments (the wrapped job's for ActiveJob).
    pub args: Vec<Value>,
    /// `error_class`.
    pub error_class: Option<String>,
    /// `error_message`.
    pub error_message: Option<String>,
    /// Attempts failed so far (`retry_count` + 1 once it has failed).
    pub retry_count: Option<u64>,
    /// `created_at`, epoch seconds.
    pub created_at: Option<f64>,
    /// `enqueued_at`, epoch seconds.
    pub enqueued_at: Option<f64>,
    /// `failed_at`, epoch seconds.
    pub failed_at: Option<f64>,
    /// `retried_at`, epoch seconds.
    pub retried_at: Option<f64>,
    /// Whether the entry parsed as a job payload.
    pub readable: bool,
    /// Why not, when it did not.
    pub unreadable_reason: Option<String>,
}

impl JobView {
    /// A view of `raw`.
    pub fn new(raw: &str) -> Self {
        match Payload::parse(raw) {
            Ok(p) => Self::of(&p),
            Err(e) => Self {
                class: "(unreadable)".into(),
                wrapper: None,
                queue: String::new(),
                jid: String::new(),
                args: vec![Value::String(preview(raw, ARGS_PREVIEW))],
                error_class: None,
                error_message: None,
                retry_count: None,
                created_at: None,
                enqueued_at: None,
                failed_at: None,
                retried_at: None,
                readable: false,
                unreadable_reason: Some(e.to_string()),
            },
        }
    }

    /// A view of a parsed payload.
    pub fn of(p: &Payload) -> Self {
        let (class, wrapper, args) = match activejob::unwrap(p) {
            Some((class, args)) => (class, Some(p.class().to_string()), args),
            None => (p.display_class().to_string(), None, p.args().to_vec()),
        };
        let text = |k: &str| p.get(k).map(value_text);
        Self {
            class,
            wrapper,
            queue: p.queue().to_string(),
            jid: p.jid().to_string(),
            args,
            error_class: text("error_class"),
            error_message: text("error_message"),
            retry_count: p.get("retry_count").and_then(Value::as_u64),
            created_at: p.time("created_at"),
            enqueued_at: p.time("enqueued_at"),
            failed_at: p.time("failed_at"),
            retried_at: p.time("retried_at"),
            readable: true,
            unreadable_reason: None,
        }
    }

    /// The arguments as compact JSON, cut to a preview length.
    pub fn args_preview(&self) -> String {
        let json = serde_json::to_string(&self.args).unwrap_or_default();
        let inner = json
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(&json);
        preview(inner, ARGS_PREVIEW)
    }

    /// Whether this job passes `filter`.
    pub fn matches(&self, filter: &Filter) -> bool {
        let has = |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.to_lowercase());
        filter.class.as_deref().is_none_or(|c| {
            has(&self.class, c) || self.wrapper.as_deref().is_some_and(|w| has(w, c))
        }) && filter.queue.as_deref().is_none_or(|q| self.queue == q)
            && filter.error.as_deref().is_none_or(|e| {
                self.error_class.as_deref().is_some_and(|c| has(c, e))
                    || self.error_message.as_deref().is_some_and(|m| has(m, e))
            })
            && filter.text.as_deref().is_none_or(|t| {
                has(&self.jid, t) || has(&self.args_preview(), t) || has(&self.class, t)
            })
    }
}

/// A JSON value as text (strings unquoted).
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub fn preview(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The backtrace lines of a payload, decoded from any Sidekiq encoding.
pub fn backtrace(raw: &str) -> Option<Vec<String>> {
    let p = Payload::parse(raw).ok()?;
    errand_core::backtrace::decode(p.get("error_backtrace")?)
}

/// A set listing's filter; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// Class contains (case-insensitive).
    pub class: Option<String>,
    /// Queue is exactly.
    pub queue: Option<String>,
    /// Error class or message contains.
    pub error: Option<String>,
    /// Job id, class or arguments contain.
    pub text: Option<String>,
}

impl Filter {
    /// A filter from raw inputs: blanks dropped, each cut to [`MAX_FILTER_LEN`].
    pub fn new(
        class: Option<&str>,
        queue: Option<&str>,
        error: Option<&str>,
        text: Option<&str>,
    ) -> Self {
        let clean = |s: Option<&str>| {
            s.map(|s| s.trim().chars().take(MAX_FILTER_LEN).collect::<String>())
                .filter(|s| !s.is_empty())
        };
        Self {
            class: clean(class),
            queue: clean(queue),
            error: clean(error),
            text: clean(text),
        }
    }

    /// Whether nothing is filtered.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One entry of a set as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// How to address it: `<score>-<jid>`.
    pub key: String,
    /// Its score (due time or time of death), epoch seconds.
    pub score: f64,
    /// The job.
    pub job: JobView,
    /// The exact stored string.
    pub raw: String,
}

impl Entry {
    /// The listing entry for a stored member.
    pub fn new(e: SetEntry) -> Self {
        let job = JobView::new(&e.raw);
        Self {
            key: entry_key(e.score, &job.jid),
            score: e.score,
            job,
            raw: e.raw,
        }
    }
}

/// A page of a set.
#[derive(Debug, Clone, Serialize)]
pub struct SetPage {
    /// Entries on this page.
    pub entries: Vec<Entry>,
    /// Entries in the set (matching, when filtered and fully scanned).
    pub total: u64,
    /// When filtered: whether the scan stopped at [`MAX_SCAN`] entries before the end.
    pub truncated: bool,
    /// 1-based page number.
    pub page: usize,
    /// Page size.
    pub per_page: usize,
}

/// Page `page` (1-based) of `set` with `per_page` entries, filtered. A filtered listing scans
/// at most [`MAX_SCAN`] entries.
pub async fn set_page(
    admin: &dyn Admin,
    set: SetName,
    page: usize,
    per_page: usize,
    order: Order,
    filter: &Filter,
) -> BrokerResult<SetPage> {
    let per_page = per_page.clamp(1, MAX_PER_PAGE);
    let page = page.max(1);
    let offset = ((page - 1) * per_page).min(MAX_OFFSET);
    if filter.is_empty() {
        let total = admin.set_size(set).await?;
        let entries = admin
            .set_page(SetRange {
                set,
                offset,
                limit: per_page,
                order,
            })
            .await?
            .into_iter()
            .map(Entry::new)
            .collect();
        return Ok(SetPage {
            entries,
            total,
            truncated: false,
            page,
            per_page,
        });
    }
    let mut matched = 0usize;
    let mut entries = Vec::new();
    let mut scanned = 0usize;
    let chunk = 1_000;
    let mut truncated = false;
    loop {
        let batch = admin
            .set_page(SetRange {
                set,
                offset: scanned,
                limit: chunk,
                order,
            })
            .await?;
        let n = batch.len();
        for e in batch {
            let entry = Entry::new(e);
            if entry.job.matches(filter) {
                if matched >= offset && entries.len() < per_page {
                    entries.push(entry);
                }
                matched += 1;
            }
        }
        scanned += n;
        if n < chunk {
            break;
        }
        if scanned >= MAX_SCAN {
            truncated = admin.set_size(set).await? > scanned as u64;
            break;
        }
    }
    Ok(SetPage {
        entries,
        total: matched as u64,
        truncated,
        page,
        per_page,
    })
}

/// The key addressing a set entry, as Sidekiq's Web UI builds it: `<score>-<jid>`.
pub fn entry_key(score: f64, jid: &str) -> String {
    format!("{score}-{jid}")
}

/// Splits an entry key into score and jid.
pub fn parse_key(key: &str) -> Option<(f64, String)> {
    // A negative score starts with '-', so look for the separator after the first character.
    let start = usize::from(key.starts_with('-'));
    let at = key[start..].find('-')? + start;
    let score: f64 = key[..at].parse().ok()?;
    if score.is_nan() {
        return None;
    }
    Some((score, key[at + 1..].to_string()))
}

/// Finds the entry a key addresses (members at its score whose jid matches; an unreadable
/// member matches an empty jid).
pub async fn find(admin: &dyn Admin, set: SetName, key: &str) -> BrokerResult<Option<Entry>> {
    let Some((score, jid)) = parse_key(key) else {
        return Ok(None);
    };
    Ok(admin
        .set_at_score(set, score)
        .await?
        .into_iter()
        .map(Entry::new)
        .find(|e| e.job.jid == jid))
}

/// What a person can do to set entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Retry now (retries, dead) / run now (scheduled): push onto its queue.
    Retry,
    /// Remove it.
    Delete,
    /// Move it to the dead set (retries, scheduled).
    Kill,
}

impl Action {
    /// Parses `retry`, `run`, `delete`, `kill`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "retry" | "run" | "enqueue" => Some(Action::Retry),
            "delete" => Some(Action::Delete),
            "kill" => Some(Action::Kill),
            _ => None,
        }
    }

    /// Past tense for messages.
    pub fn done(self) -> &'static str {
        match self {
            Action::Retry => "enqueued",
            Action::Delete => "deleted",
            Action::Kill => "killed",
        }
    }
}

/// Settings the actions need.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActionConfig {
    /// Timestamp format written into payloads.
    pub profile: WireProfile,
    /// Bounds of the dead set on kill.
    pub dead_limits: DeadLimits,
}

/// Applies `action` to one stored member of `set`. Returns false when the member was no longer
/// there (moved or deleted meanwhile) or the action does not apply (kill from dead).
pub async fn apply(
    admin: &dyn Admin,
    cfg: ActionConfig,
    set: SetName,
    raw: &str,
    action: Action,
) -> BrokerResult<bool> {
    let done = match action {
        Action::Delete => admin.set_remove(set, raw).await?,
        Action::Retry => {
            let Ok(mut p) = Payload::parse(raw) else {
                // An unreadable entry cannot run; it stays for a person to read or delete.
                return Ok(false);
            };
            if set != SetName::Scheduled {
                decrement_retry_count(&mut p);
            }
            p.stamp_enqueued(cfg.profile, errand_core::now());
            let queue = p.queue().to_string();
            return admin
                .set_to_queue(MoveToQueue {
                    set,
                    member: raw,
                    queue: &queue,
                    payload: &p.to_json(),
                })
                .await;
        }
        Action::Kill => {
            if set == SetName::Dead {
                return Ok(false);
            }
            let now = errand_core::now();
            admin
                .set_to_dead(MoveToDead {
                    set,
                    member: raw,
                    payload: raw,
                    now,
                    limits: cfg.dead_limits,
                })
                .await?
        }
    };
    // A job of a batch that will not run now (deleted from the retries or the schedule, or
    // killed) is dead to its batch, which would otherwise wait for it forever.
    if done && set != SetName::Dead {
        record_removed(admin, raw).await?;
    }
    Ok(done)
}

/// Records the job `raw`, taken out of the way by a person, as dead in its batch (if it is in
/// one and the backend has batches).
async fn record_removed(admin: &dyn Admin, raw: &str) -> BrokerResult<()> {
    match admin.coordination() {
        Some(c) => errand_core::broker::record_removed(c, raw).await,
        None => Ok(()),
    }
}

/// Sidekiq's rule for a manual retry: the failure that follows counts again, so one is taken
/// off `retry_count` first.
fn decrement_retry_count(p: &mut Payload) {
    if let Some(n) = p.get("retry_count").and_then(Value::as_u64)
        && n > 0
    {
        p.set("retry_count", n - 1);
    }
}

/// Retries a dead (or retrying) job with new arguments: `args` must be a JSON array. For an
/// ActiveJob job the wrapped job's `arguments` are replaced. Returns false when the entry was
/// no longer there.
pub async fn retry_with_args(
    admin: &dyn Admin,
    cfg: ActionConfig,
    set: SetName,
    raw: &str,
    args: &str,
) -> Result<bool, String> {
    let args: Value =
        serde_json::from_str(args).map_err(|e| format!("the arguments are not JSON: {e}"))?;
    let Value::Array(args) = args else {
        return Err("the arguments must be a JSON array, like [42, \"x\"]".into());
    };
    let mut p = Payload::parse(raw).map_err(|e| format!("the stored job is unreadable: {e}"))?;
    if activejob::is_wrapper(p.class()) {
        let mut wrapped = p.args().to_vec();
        match wrapped.first_mut() {
            Some(Value::Object(job)) => {
                job.insert("arguments".into(), Value::Array(args));
            }
            _ => return Err("the ActiveJob wrapper has no job object".into()),
        }
        p.set_args(wrapped);
    } else {
        p.set_args(args);
    }
    decrement_retry_count(&mut p);
    p.stamp_enqueued(cfg.profile, errand_core::now());
    let queue = p.queue().to_string();
    admin
        .set_to_queue(MoveToQueue {
            set,
            member: raw,
            queue: &queue,
            payload: &p.to_json(),
        })
        .await
        .map_err(|e| e.to_string())
}

/// What one "all" action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Entries changed.
    pub done: u64,
    /// Whether matching entries remain because the action stopped at its bounds
    /// ([`MAX_ALL`] entries, [`ALL_BUDGET`] of time): run it again for the rest.
    pub more: bool,
}

/// Applies `action` to the entries of `set` matching `filter`: at most [`MAX_ALL`] of them, for
/// at most [`ALL_BUDGET`] (read before any is changed, so jobs that fail straight back are not
/// retried in a loop). A delete of everything, unfiltered, is one step of the backend's.
pub async fn apply_all(
    admin: &dyn Admin,
    cfg: ActionConfig,
    set: SetName,
    action: Action,
    filter: &Filter,
) -> BrokerResult<Applied> {
    if action == Action::Delete && filter.is_empty() {
        let done = admin.set_clear(set).await?;
        return Ok(Applied { done, more: false });
    }
    let started = std::time::Instant::now();
    let mut members = Vec::new();
    let mut scanned = 0;
    let mut more = false;
    let chunk = 1_000;
    // Read matching entries (a filter reads at most MAX_SCAN) until MAX_ALL are found.
    loop {
        let batch = admin
            .set_page(SetRange {
                set,
                offset: scanned,
                limit: chunk,
                order: Order::Asc,
            })
            .await?;
        let n = batch.len();
        scanned += n;
        for e in batch {
            if members.len() >= MAX_ALL {
                more = true;
                break;
            }
            if filter.is_empty() || JobView::new(&e.raw).matches(filter) {
                members.push(e.raw);
            }
        }
        if more || n < chunk {
            break;
        }
        if !filter.is_empty() && scanned >= MAX_SCAN {
            more = true;
            break;
        }
    }
    let mut done = 0;
    for raw in &members {
        if started.elapsed() >= ALL_BUDGET {
            more = true;
            break;
        }
        if apply(admin, cfg, set, raw, action).await? {
            done += 1;
        }
    }
    Ok(Applied { done, more })
}

/// What a cancel found, for people: `(code, sentence)`; the code is what the JSON API and
/// `errand ops --json` say (`queued`, `scheduled`, `retrying`, `running`, `not_found`).
pub fn cancel_outcome(c: &Cancelled) -> (&'static str, String) {
    match c {
        Cancelled::Queued(q) => ("queued", format!("removed from queue {q} before it ran")),
        Cancelled::Scheduled => (
            "scheduled",
            "removed from the schedule before it ran".into(),
        ),
        Cancelled::Retrying => (
            "retrying",
            "removed from the retries; it will not run again".into(),
        ),
        Cancelled::Running(p) => (
            "running",
            format!("running on {p}: told to stop at the process's next heartbeat"),
        ),
        Cancelled::NotFound => (
            "not_found",
            "not waiting or running: it already finished (or is dead, or never existed)".into(),
        ),
    }
}

/// Cancels job `jid` (see [`crate::Client::cancel`]).
///
/// # Errors
/// A backend failure, or a backend without cancellation.
pub async fn cancel(backend: &dyn Broker, jid: &str) -> BrokerResult<Cancelled> {
    backend
        .cancel_job(jid.trim(), errand_core::broker::CANCEL_MARK_TTL)
        .await
}

/// A running job as the Busy page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkView {
    /// The process running it.
    pub identity: String,
    /// Worker slot id.
    pub tid: String,
    /// Queue it came from.
    pub queue: String,
    /// When it started, epoch seconds.
    pub run_at: f64,
    /// The job.
    pub job: JobView,
    /// What the job last reported with `cx.progress` (as of its process's last heartbeat).
    pub progress: Option<crate::Progress>,
}

/// A process as the Busy page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    /// `host:pid:nonce`.
    pub identity: String,
    /// Host name.
    pub hostname: String,
    /// Process id.
    pub pid: u64,
    /// Tag (the app's name, usually).
    pub tag: String,
    /// Queues it works.
    pub queues: Vec<String>,
    /// Worker slots.
    pub concurrency: u64,
    /// Jobs running.
    pub busy: u64,
    /// When it started, epoch seconds.
    pub started_at: Option<f64>,
    /// Last heartbeat, epoch seconds.
    pub beat: f64,
    /// Quiet or stopping.
    pub quiet: bool,
    /// Resident memory in KB.
    pub rss_kb: u64,
    /// What wrote it (`errand 0.1`, or empty for Ruby Sidekiq 6.4).
    pub version: String,
    /// Whether it is an Errand process (Ruby processes get the same buttons; this is shown).
    pub errand: bool,
}

/// Every live process and every running job.
pub async fn busy(admin: &dyn Admin) -> BrokerResult<(Vec<ProcessView>, Vec<WorkView>)> {
    let records = admin.processes().await?;
    let mut processes = Vec::with_capacity(records.len());
    let mut work = Vec::new();
    for r in records {
        let (p, w) = process_view(r);
        processes.push(p);
        work.extend(w);
    }
    work.sort_by(|a, b| a.run_at.total_cmp(&b.run_at));
    Ok((processes, work))
}

fn process_view(r: ProcessRecord) -> (ProcessView, Vec<WorkView>) {
    let info: Value = serde_json::from_str(&r.info).unwrap_or(Value::Null);
    let s = |k: &str| {
        info.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let concurrency = if r.concurrency > 0 {
        r.concurrency
    } else {
        info.get("concurrency").and_then(Value::as_u64).unwrap_or(0)
    };
    let version = s("version");
    let work = r
        .work
        .iter()
        .map(|(tid, json)| {
            let w: Value = serde_json::from_str(json).unwrap_or(Value::Null);
            let payload = match w.get("payload") {
                Some(Value::String(raw)) => raw.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            WorkView {
                identity: r.identity.clone(),
                tid: tid.clone(),
                queue: w
                    .get("queue")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                run_at: w
                    .get("run_at")
                    .and_then(WireProfile::decode)
                    .unwrap_or(r.beat),
                job: JobView::new(&payload),
                progress: w
                    .get("errand_progress")
                    .and_then(|p| serde_json::from_value(p.clone()).ok()),
            }
        })
        .collect();
    let view = ProcessView {
        hostname: s("hostname"),
        pid: info.get("pid").and_then(Value::as_u64).unwrap_or(0),
        tag: s("tag"),
        queues: errand_core::broker::info_queues(&r.info),
        concurrency,
        busy: r.busy,
        started_at: info.get("started_at").and_then(WireProfile::decode),
        beat: r.beat,
        quiet: r.quiet,
        rss_kb: r.rss_kb,
        errand: version.starts_with("errand"),
        version,
        identity: r.identity,
    };
    (view, work)
}

/// Signals one live process, or every live one for `all`. Returns how many were signalled.
pub async fn send_signal(
    admin: &dyn Admin,
    identity: &str,
    signal: errand_core::broker::RemoteSignal,
) -> BrokerResult<u64> {
    let live = admin.processes().await?;
    let mut n = 0;
    for p in live
        .iter()
        .filter(|p| identity == "all" || p.identity == identity)
    {
        admin.signal(&p.identity, signal).await?;
        n += 1;
    }
    Ok(n)
}

/// One class's metrics over a window, as the Metrics page shows them.
#[derive(Debug, Clone, Serialize)]
pub struct ClassView {
    /// Job class.
    pub class: String,
    /// Attempts run.
    pub executions: u64,
    /// Attempts failed.
    pub failures: u64,
    /// Mean run time of successful attempts, ms.
    pub mean_ms: Option<f64>,
    /// Median (upper bucket bound), ms.
    pub p50_ms: Option<u64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<u64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<u64>,
}

/// The metrics window a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// The last 60 minutes.
    Hour,
    /// The last 24 hours.
    Day,
}

impl Window {
    /// `hour` or `day` (anything else is an hour).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("day") | Some("24h") => Window::Day,
            _ => Window::Hour,
        }
    }

    /// Minutes in the window.
    pub fn minutes(self) -> i64 {
        match self {
            Window::Hour => 60,
            Window::Day => 24 * 60,
        }
    }
}

/// Per-class metrics over `window`, busiest first.
pub async fn class_metrics(admin: &dyn Admin, window: Window) -> BrokerResult<Vec<ClassView>> {
    let now_minute = (errand_core::now() / 60.0).floor() as i64;
    let rows = admin
        .metrics(now_minute - window.minutes() + 1, now_minute)
        .await?;
    let mut out: Vec<ClassView> = rows
        .into_iter()
        .map(|m| {
            let ok = m.executions - m.failures.min(m.executions);
            ClassView {
                mean_ms: (ok > 0).then(|| m.total_ms as f64 / ok as f64),
                p50_ms: m.percentile_ms(0.5),
                p95_ms: m.percentile_ms(0.95),
                p99_ms: m.percentile_ms(0.99),
                class: m.class,
                executions: m.executions,
                failures: m.failures,
            }
        })
        .collect();
    out.sort_by(|a, b| b.executions.cmp(&a.executions).then(a.class.cmp(&b.class)));
    Ok(out)
}

/// Processed and failed per UTC day, oldest first, for the last `days` days (1..=180).
pub async fn history(admin: &dyn Admin, days: u32) -> BrokerResult<Vec<(String, u64, u64)>> {
    let days = days.clamp(1, 180);
    let now = errand_core::now();
    let dates: Vec<String> = (0..days)
        .rev()
        .map(|d| errand_core::utc_date(now - f64::from(d) * 86_400.0))
        .collect();
    let counts = admin.daily_counters(&dates).await?;
    Ok(dates
        .into_iter()
        .zip(counts)
        .map(|(d, c)| (d, c.processed, c.failed))
        .collect())
}

/// A periodic entry as the dashboard and `errand ops periodic` show it.
#[derive(Debug, Clone, Serialize)]
pub struct PeriodicView {
    /// The entry's name.
    pub name: String,
    /// The cron expression.
    pub spec: String,
    /// Its time zone.
    pub zone: String,
    /// The job's class.
    pub class: String,
    /// The queue its jobs go to.
    pub queue: String,
    /// Paused: no tick is enqueued.
    pub paused: bool,
    /// The next tick (epoch seconds); `None` when paused or the expression cannot be read.
    pub next_run: Option<f64>,
    /// The newest tick enqueued (epoch seconds), if any.
    pub last_tick: Option<f64>,
    /// When it was enqueued.
    pub last_run: Option<f64>,
    /// The jid it enqueued.
    pub last_jid: Option<String>,
    /// The missed-tick policy (`skip`, `latest`, `backfill:<n>`).
    pub missed: String,
    /// When a server last declared the entry.
    pub seen_at: f64,
}

/// Every periodic entry, with its next tick computed at `now`.
///
/// # Errors
/// A backend failure, or a backend without periodic entries.
pub async fn periodic(broker: &dyn Broker, now: f64) -> BrokerResult<Vec<PeriodicView>> {
    Ok(broker
        .periodic_list()
        .await?
        .into_iter()
        .map(|r| {
            let next_run = (!r.paused)
                .then(|| crate::periodic::Schedule::parse(&r.entry.spec, &r.entry.zone).ok())
                .flatten()
                .and_then(|s| s.next_after(now));
            let class = Payload::parse(&r.entry.template)
                .map(|p| p.display_class().to_string())
                .unwrap_or_default();
            PeriodicView {
                name: r.entry.name,
                spec: r.entry.spec,
                zone: r.entry.zone,
                class,
                queue: r.entry.queue,
                paused: r.paused,
                next_run,
                last_tick: r.last_jid.is_some().then_some(r.last_tick),
                last_run: r.last_run,
                last_jid: r.last_jid,
                missed: r.entry.missed,
                seen_at: r.seen_at,
            }
        })
        .collect())
}

/// Enqueues periodic entry `name`'s job now, outside its schedule (the dashboard's "Run now"):
/// the job carries the entry's name and now as its scheduled time. Returns its jid, or `None`
/// when there is no such entry. The entry's ticks are not affected.
///
/// # Errors
/// A backend failure, or a stored job that is not a payload.
pub async fn periodic_run_now(
    broker: &dyn Broker,
    name: &str,
    profile: WireProfile,
) -> Result<Option<String>, crate::Error> {
    let Some(record) = broker
        .periodic_list()
        .await?
        .into_iter()
        .find(|r| r.entry.name == name)
    else {
        return Ok(None);
    };
    let now = broker.now().await?;
    let payload = crate::periodic::tick_payload(&record.entry, now, now, profile)?;
    broker
        .push(&[Enqueue {
            queue: record.entry.queue.clone(),
            payload: payload.to_json(),
        }])
        .await?;
    Ok(Some(payload.jid().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_negative_and_odd_scores() {
        for (score, jid) in [
            (1796054591.2345, "abc"),
            (-1.5, "x-y"),
            (0.0, ""),
            (f64::INFINITY, "j"),
            (f64::NEG_INFINITY, "j"),
        ] {
            let key = entry_key(score, jid);
            assert_eq!(parse_key(&key), Some((score, jid.to_string())), "{key}");
        }
        assert_eq!(parse_key("nope"), None);
        assert_eq!(parse_key("NaN-x"), None);
    }

    #[test]
    fn filters_match_class_queue_error_and_text() {
        let raw = r#"{"class":"Mailer","args":[42,"hello"],"queue":"mail","jid":"j1","error_class":"Net::Timeout","error_message":"took too long"}"#;
        let job = JobView::new(raw);
        assert!(job.matches(&Filter::default()));
        assert!(job.matches(&Filter::new(Some("mail"), None, None, None)));
        assert!(!job.matches(&Filter::new(Some("Billing"), None, None, None)));
        assert!(job.matches(&Filter::new(None, Some("mail"), None, None)));
        assert!(!job.matches(&Filter::new(None, Some("ma"), None, None)));
        assert!(job.matches(&Filter::new(None, None, Some("TIMEOUT"), None)));
        assert!(job.matches(&Filter::new(None, None, Some("too long"), None)));
        assert!(job.matches(&Filter::new(None, None, None, Some("hello"))));
        assert!(!job.matches(&Filter::new(None, None, None, Some("nothing"))));
    }

    #[test]
    fn filter_input_is_bounded() {
        let long = "x".repeat(1 << 20);
        let f = Filter::new(Some(&long), Some("  "), Some("…"), None);
        assert_eq!(
            f.error.as_deref(),
            Some("…"),
            "an ellipsis is text like any other"
        );
        assert_eq!(
            f.class.as_deref().map(|s| s.chars().count()),
            Some(MAX_FILTER_LEN)
        );
        assert_eq!(f.queue, None);
    }

    #[test]
    fn unreadable_entries_still_get_a_view() {
        let v = JobView::new("{not json");
        assert!(!v.readable);
        assert_eq!(v.class, "(unreadable)");
        assert!(v.unreadable_reason.is_some());
        assert_eq!(v.args_preview(), "\"{not json\"");
    }

    #[test]
    fn activejob_jobs_show_the_wrapped_class() {
        let raw = r#"{"class":"ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper","wrapped":"UserWelcomeJob","queue":"default","args":[{"job_class":"UserWelcomeJob","job_id":"x","queue_name":"default","arguments":[7],"_aj_globalid":null}],"jid":"j"}"#;
        let v = JobView::new(raw);
        assert_eq!(v.class, "UserWelcomeJob");
        assert!(v.wrapper.is_some());
        assert_eq!(v.args, vec![serde_json::json!(7)]);
    }
}

/// Most members of one state [`batch_detail`] reads.
pub const MAX_BATCH_MEMBERS: usize = 1_000;

/// A batch as the dashboard's batch page and `errand ops batch` show it.
#[derive(Debug, Clone, Serialize)]
pub struct BatchDetail {
    /// Its state and counts.
    pub batch: errand_core::broker::BatchStatus,
    /// Its members by state (`pending`, `failed`, `waiting`, `dead`, `cancelled`), sorted, at
    /// most [`MAX_BATCH_MEMBERS`] of each.
    pub members: std::collections::BTreeMap<&'static str, Vec<String>>,
    /// For a workflow: each step with its state, in the order they were added.
    pub steps: Option<Vec<StepView>>,
}

/// A workflow step as dashboards show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    /// The step's name.
    pub name: String,
    /// Its job's id.
    pub jid: String,
    /// Its job's class.
    pub class: String,
    /// Its queue.
    pub queue: String,
    /// The steps it comes after.
    pub after: Vec<String>,
    /// `waiting` (for the steps it comes after), `enqueued` (queued or running), `retrying`,
    /// `succeeded`, `dead` or `cancelled`.
    pub state: &'static str,
}

/// Batch `bid` with its members and, for a workflow, its steps' states; `None` when it does not
/// exist (or expired).
///
/// # Errors
/// A backend failure, or a backend without batches.
pub async fn batch_detail(backend: &dyn Broker, bid: &str) -> BrokerResult<Option<BatchDetail>> {
    use errand_core::broker::MemberState;
    let Some(batch) = backend.batch_status(bid).await? else {
        return Ok(None);
    };
    let mut members = std::collections::BTreeMap::new();
    for state in MemberState::ALL {
        let list = backend
            .batch_members(bid, state, 0, MAX_BATCH_MEMBERS)
            .await?;
        members.insert(state.as_str(), list);
    }
    let steps = batch
        .workflow
        .as_deref()
        .map(|w| workflow_steps(w, &members));
    Ok(Some(BatchDetail {
        batch,
        members,
        steps,
    }))
}

/// Each step of workflow definition `definition` with its state, read from the member lists.
fn workflow_steps(
    definition: &str,
    members: &std::collections::BTreeMap<&'static str, Vec<String>>,
) -> Vec<StepView> {
    let is_in = |state: &str, jid: &str| {
        members
            .get(state)
            .is_some_and(|l| l.binary_search_by(|m| m.as_str().cmp(jid)).is_ok())
    };
    let def: Value = serde_json::from_str(definition).unwrap_or(Value::Null);
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    def.get("steps")
        .and_then(Value::as_array)
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    let jid = text(s, "jid");
                    let state = if is_in("waiting", &jid) {
                        "waiting"
                    } else if is_in("cancelled", &jid) {
                        "cancelled"
                    } else if is_in("dead", &jid) {
                        "dead"
                    } else if is_in("failed", &jid) {
                        "retrying"
                    } else if is_in("pending", &jid) {
                        "enqueued"
                    } else {
                        "succeeded"
                    };
                    StepView {
                        name: text(s, "name"),
                        class: text(s, "class"),
                        queue: text(s, "queue"),
                        after: s
                            .get("after")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(|n| n.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                        jid,
                        state,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}
