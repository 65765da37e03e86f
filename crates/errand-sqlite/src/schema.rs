//! The file's tables. One `jobs` table holds every job in every state, so each transition is an
//! UPDATE of one row inside one transaction.

/// Job states, as stored in `jobs.state`.
pub(crate) mod state {
    pub const QUEUED: i64 = 0;
    pub const IN_FLIGHT: i64 = 1;
    pub const SCHEDULE: i64 = 2;
    pub const RETRY: i64 = 3;
    pub const DEAD: i64 = 4;
}

/// Batch member states, as stored in `batch_members.state` (the states of
/// [`errand_core::broker::batch`]; a succeeded member has no row). Failed and waiting members
/// are pending too.
pub(crate) mod member {
    pub const PENDING: i64 = 0;
    pub const FAILED: i64 = 1;
    pub const DEAD: i64 = 2;
    pub const CANCELLED: i64 = 3;
    pub const WAITING: i64 = 4;
}

/// Creates what is missing; safe to run from every process at every start.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id      INTEGER PRIMARY KEY,
    state   INTEGER NOT NULL,          -- see schema::state
    queue   TEXT    NOT NULL,          -- queued and in flight: the queue; sets: ''
    seq     INTEGER NOT NULL DEFAULT 0,-- queued: lower is fetched first
    score   REAL    NOT NULL DEFAULT 0,-- sets: Sidekiq's score; in flight: fetch order
    owner   TEXT,                      -- in flight: the process identity
    member  INTEGER NOT NULL DEFAULT 0,-- sets: hash of the payload (members are unique)
    payload TEXT    NOT NULL,
    recoveries INTEGER NOT NULL DEFAULT 0 -- times recovered from a dead process (poison pills)
);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs(state, queue, seq);
CREATE INDEX IF NOT EXISTS jobs_by_score ON jobs(state, score);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs(owner) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_member ON jobs(state, member) WHERE state >= 2;
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY);
-- Once-only steps: a claim (output NULL) until the step completes, then its output; the row
-- counts as absent after expires_at and is swept by orphan recovery.
-- Lease sets (mutexes, unique locks, concurrency limits): one row per live holder.
CREATE TABLE IF NOT EXISTS leases (
    key        TEXT NOT NULL,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, holder)
);
-- Periodic entries: the definition as last declared, and the scheduling state (the newest
-- tick claimed: ticks at or before it are never enqueued).
CREATE TABLE IF NOT EXISTS periodic (
    name      TEXT PRIMARY KEY,
    spec      TEXT NOT NULL,
    zone      TEXT NOT NULL,
    queue     TEXT NOT NULL,
    template  TEXT NOT NULL,
    missed    TEXT NOT NULL,
    paused    INTEGER NOT NULL DEFAULT 0,
    last_tick REAL NOT NULL,
    last_jid  TEXT,
    last_run  REAL,
    seen_at   REAL NOT NULL
);
-- Fencing counters: the last token handed out per lease key, and when the row may go (tokens
-- are at least the time in ms, so they still grow after it went).
CREATE TABLE IF NOT EXISTS fences (key TEXT PRIMARY KEY, last INTEGER NOT NULL,
                                   expires_at REAL NOT NULL DEFAULT 0);
-- Rate limits: the current interval's count (bucket) and the uses in the window (window).
CREATE TABLE IF NOT EXISTS rate_buckets (key TEXT PRIMARY KEY, slot INTEGER NOT NULL, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rate_uses (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_uses_by_key ON rate_uses(key, at);
-- Uses turned away, per limiter.
CREATE TABLE IF NOT EXISTS limit_hits (name TEXT PRIMARY KEY, hits INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS once_steps (
    key        TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    output     TEXT,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS processes (
    identity    TEXT PRIMARY KEY,
    info        TEXT NOT NULL,
    beat        REAL,                  -- NULL until the first heartbeat
    expires_at  REAL,                  -- beat + ttl: alive while in the future
    busy        INTEGER NOT NULL DEFAULT 0,
    concurrency INTEGER NOT NULL DEFAULT 0,
    quiet       INTEGER NOT NULL DEFAULT 0,
    rss_kb      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS work (
    identity TEXT NOT NULL,
    tid      TEXT NOT NULL,
    json     TEXT NOT NULL,
    PRIMARY KEY (identity, tid)
);
CREATE TABLE IF NOT EXISTS signals (
    id       INTEGER PRIMARY KEY,
    identity TEXT NOT NULL,
    name     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- The tables below came with the admin side; files made before it get them here, at the next
-- open (CREATE TABLE IF NOT EXISTS is the whole migration: nothing existing changes).
-- Queues servers leave out of their fetches (paused from the dashboard or the CLI).
CREATE TABLE IF NOT EXISTS paused_queues (name TEXT PRIMARY KEY);
-- Execution metrics per minute (minutes since the epoch, UTC) and class, kept 26 hours;
-- `histogram` is a JSON array of errand_core::metrics::HISTOGRAM_BUCKETS counts.
CREATE TABLE IF NOT EXISTS metrics (
    minute     INTEGER NOT NULL,
    class      TEXT    NOT NULL,
    executions INTEGER NOT NULL,
    failures   INTEGER NOT NULL,
    total_ms   INTEGER NOT NULL,
    histogram  TEXT    NOT NULL,
    PRIMARY KEY (minute, class)
) WITHOUT ROWID;
-- The same counts per class since the file was new (monotonic, for Prometheus).
CREATE TABLE IF NOT EXISTS metrics_totals (
    class      TEXT    PRIMARY KEY,
    executions INTEGER NOT NULL,
    failures   INTEGER NOT NULL,
    total_ms   INTEGER NOT NULL,
    histogram  TEXT    NOT NULL
) WITHOUT ROWID;
-- Cancelled jobs (Coordination::cancel_job), read by each process for the jobs it runs.
CREATE TABLE IF NOT EXISTS cancels (
    jid        TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
-- Debounce keys: the job row last pushed under each key (Coordination::push_replacing).
CREATE TABLE IF NOT EXISTS debounce_keys (
    key        TEXT PRIMARY KEY,
    jid        TEXT NOT NULL,
    job_id     INTEGER NOT NULL,
    payload    TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
-- Kept job results (JobOptions::keep_result), until they expire.
CREATE TABLE IF NOT EXISTS results (
    jid        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_expiry ON results(expires_at);
-- Batches (Coordination::batch_*): one row per batch with its member counts, kept up to date
-- by each record (never counted over the members). `callbacks` is a JSON array of
-- {"event", "queue", "head"}; the *_at columns say which events happened. `expires_at` is set
-- when the batch completes (complete_at + keep_secs); one that never completes goes
-- BATCH_MAX_AGE after created_at. An expired batch reads as absent until pruned.
CREATE TABLE IF NOT EXISTS batches (
    bid         TEXT PRIMARY KEY,
    parent      TEXT,
    description TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    keep_secs   REAL    NOT NULL,
    policy      TEXT    NOT NULL,
    workflow    TEXT,
    callbacks   TEXT    NOT NULL,
    total       INTEGER NOT NULL DEFAULT 0,
    pending     INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    dead        INTEGER NOT NULL DEFAULT 0,
    cancelled   INTEGER NOT NULL DEFAULT 0,
    waiting     INTEGER NOT NULL DEFAULT 0,
    building    INTEGER NOT NULL DEFAULT 1,
    complete_at REAL,
    success_at  REAL,
    death_at    REAL,
    expires_at  REAL
);
CREATE INDEX IF NOT EXISTS batches_by_created ON batches(created_at, bid);
CREATE INDEX IF NOT EXISTS batches_by_expiry ON batches(expires_at);
CREATE INDEX IF NOT EXISTS batches_open ON batches(created_at) WHERE expires_at IS NULL;
-- Members that have not succeeded (see schema::member); a succeeded member's row is deleted,
-- so a repeated record finds nothing to do. A waiting workflow step keeps its job (queue, and
-- head: the payload without `enqueued_at` and its closing brace) and how many of its parents
-- have not succeeded yet.
CREATE TABLE IF NOT EXISTS batch_members (
    bid          TEXT    NOT NULL,
    member       TEXT    NOT NULL,
    state        INTEGER NOT NULL,
    queue        TEXT,
    head         TEXT,
    parents_left INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bid, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batch_members_by_state ON batch_members(bid, state, member);
-- Workflow dependencies: step child_jid waits for member parent_jid of the same batch.
CREATE TABLE IF NOT EXISTS batch_edges (
    bid        TEXT NOT NULL,
    parent_jid TEXT NOT NULL,
    child_jid  TEXT NOT NULL,
    PRIMARY KEY (bid, parent_jid, child_jid)
) WITHOUT ROWID;
"#;

/// A stable 64-bit FNV-1a hash of a set member, so uniqueness checks use an index instead of
/// comparing payloads. Hand-written (five lines) because it must never change between builds
/// that share a file, which `std`'s hasher does not promise.
pub(crate) fn member_hash(payload: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in payload.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}
