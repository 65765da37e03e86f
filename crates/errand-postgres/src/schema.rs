//! The schema, as numbered migrations applied by the library on connect (or printed, for teams
//! that run migrations themselves: [`crate::migrations_sql`]). Everything lives in one schema
//! of its own (`errand` by default); `{s}` below is that schema's quoted name.

/// Job states, as stored in `jobs.state`.
pub(crate) mod state {
    pub const QUEUED: i16 = 0;
    pub const IN_FLIGHT: i16 = 1;
    pub const SCHEDULE: i16 = 2;
    pub const RETRY: i16 = 3;
    pub const DEAD: i16 = 4;
    /// Finished and kept ([`crate::PostgresConfig::keep_finished`]); below every other state,
    /// so the partial indexes of the others (`state = 0`, `state >= 2`) never hold these rows.
    pub const FINISHED: i16 = -1;
}

/// Batch member states, as stored in `batch_members.state` (the states of
/// [`errand_core::broker::batch`]; a succeeded member has no row). Failed and waiting members
/// are pending too.
pub(crate) mod member {
    pub const PENDING: i16 = 0;
    pub const FAILED: i16 = 1;
    pub const DEAD: i16 = 2;
    pub const CANCELLED: i16 = 3;
    pub const WAITING: i16 = 4;
}

/// `(version, SQL)`, applied in order, each once, recorded in `{s}.migrations`.
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
-- Every job in every state is one row, so each transition is an UPDATE (or DELETE) of one row
-- in one transaction.
CREATE TABLE {s}.jobs (
    id         bigserial PRIMARY KEY,
    state      smallint NOT NULL,               -- see schema::state
    queue      text     NOT NULL DEFAULT '',    -- queued and in flight: the queue; sets: ''
    seq        bigint   NOT NULL DEFAULT 0,     -- queued: lower is fetched first
    score      double precision NOT NULL DEFAULT 0, -- sets: Sidekiq's score
    owner      text,                            -- in flight: the process identity
    token      bigint   NOT NULL DEFAULT 0,     -- in flight: the fetch's fencing token
    member     bigint   NOT NULL DEFAULT 0,     -- sets: hash of the payload (members are unique)
    payload    text     NOT NULL,
    recoveries integer  NOT NULL DEFAULT 0      -- times recovered from a dead process
);
-- Fetch reads only waiting rows: a million finished (deleted) or dead rows never slow it.
CREATE INDEX jobs_waiting ON {s}.jobs (queue, seq) WHERE state = 0;
CREATE INDEX jobs_in_sets ON {s}.jobs (state, score) WHERE state >= 2;
CREATE INDEX jobs_members ON {s}.jobs (state, member) WHERE state >= 2;
CREATE INDEX jobs_in_flight ON {s}.jobs (owner) WHERE state = 1;
-- Queue positions and fencing tokens: strictly increasing, never reused.
CREATE SEQUENCE {s}.positions;
CREATE TABLE {s}.queues (name text PRIMARY KEY);
-- The fleet: live processes (Sidekiq's process hash), their running jobs, remote signals.
CREATE TABLE {s}.processes (
    identity    text PRIMARY KEY,
    info        text NOT NULL,
    beat        double precision,              -- NULL until the first heartbeat
    expires_at  double precision NOT NULL,     -- alive while in the future (server clock)
    busy        integer NOT NULL DEFAULT 0,
    concurrency integer NOT NULL DEFAULT 0,
    quiet       boolean NOT NULL DEFAULT false,
    rss_kb      bigint  NOT NULL DEFAULT 0
);
CREATE TABLE {s}.work (
    identity text NOT NULL,
    tid      text NOT NULL,
    json     text NOT NULL,
    PRIMARY KEY (identity, tid)
);
CREATE TABLE {s}.signals (
    id       bigserial PRIMARY KEY,
    identity text NOT NULL,
    name     text NOT NULL
);
CREATE INDEX signals_by_identity ON {s}.signals (identity, id);
-- Counters: processed/failed totals and per UTC day (`processed:2026-12-05`), cancelled,
-- expired; and the fleet's promotion turn (`poll_until`, ms).
CREATE TABLE {s}.stats (name text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE {s}.counters (name text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE {s}.paused_queues (name text PRIMARY KEY);
-- Execution metrics per minute (minutes since the epoch, UTC) and class, kept 26 hours, and
-- per class since the schema was new; `histogram` holds errand_core::metrics's buckets.
CREATE TABLE {s}.metrics (
    minute     bigint NOT NULL,
    class      text   NOT NULL,
    executions bigint NOT NULL,
    failures   bigint NOT NULL,
    total_ms   bigint NOT NULL,
    histogram  bigint[] NOT NULL,
    PRIMARY KEY (minute, class)
);
-- Coordination: leases (mutexes, unique locks, limits), fencing counters, once-only steps,
-- periodic entries, rate limits and refusal counts, cancellation marks, kept results, debounce
-- keys. Times are the server's clock in epoch seconds.
CREATE TABLE {s}.leases (
    key text NOT NULL, holder text NOT NULL, expires_at double precision NOT NULL,
    PRIMARY KEY (key, holder)
);
CREATE TABLE {s}.fences (key text PRIMARY KEY, last bigint NOT NULL,
                         expires_at double precision NOT NULL);
CREATE INDEX fences_by_expiry ON {s}.fences (expires_at);
CREATE TABLE {s}.once_steps (key text PRIMARY KEY, owner text NOT NULL, output text,
                             expires_at double precision NOT NULL);
CREATE INDEX once_steps_by_expiry ON {s}.once_steps (expires_at);
CREATE TABLE {s}.periodic (
    name text PRIMARY KEY, spec text NOT NULL, zone text NOT NULL, queue text NOT NULL,
    template text NOT NULL, missed text NOT NULL, paused boolean NOT NULL DEFAULT false,
    last_tick double precision NOT NULL, last_jid text, last_run double precision,
    seen_at double precision NOT NULL
);
CREATE TABLE {s}.rate_buckets (key text PRIMARY KEY, slot bigint NOT NULL, count bigint NOT NULL);
CREATE TABLE {s}.rate_uses (key text NOT NULL, at double precision NOT NULL);
CREATE INDEX rate_uses_by_key ON {s}.rate_uses (key, at);
CREATE TABLE {s}.limit_hits (name text PRIMARY KEY, hits bigint NOT NULL);
CREATE TABLE {s}.cancels (jid text PRIMARY KEY, expires_at double precision NOT NULL);
CREATE TABLE {s}.results (jid text PRIMARY KEY, value text NOT NULL,
                          expires_at double precision NOT NULL);
CREATE INDEX results_by_expiry ON {s}.results (expires_at);
CREATE TABLE {s}.debounce_keys (key text PRIMARY KEY, jid text NOT NULL, job_id bigint NOT NULL,
                                payload text NOT NULL, expires_at double precision NOT NULL);
CREATE TABLE {s}.metrics_totals (
    class      text   PRIMARY KEY,
    executions bigint NOT NULL,
    failures   bigint NOT NULL,
    total_ms   bigint NOT NULL,
    histogram  bigint[] NOT NULL
);
"#,
    ),
    (
        2,
        r#"
-- Finished rows kept for a while (PostgresConfig::keep_finished), pruned oldest first.
CREATE INDEX jobs_finished ON {s}.jobs (score) WHERE state = -1;
"#,
    ),
    (
        3,
        r#"
-- Batches (Coordination::batch_*): one row per batch with its member counts, kept up to date
-- by each record (never counted over the members). `callbacks` is a JSON array of
-- {"event", "queue", "head"}; the *_at columns say which events happened. `expires_at` is set
-- when the batch completes (complete_at + keep_secs); one that never completes goes
-- BATCH_MAX_AGE after created_at. An expired batch reads as absent until pruned.
CREATE TABLE {s}.batches (
    bid         text COLLATE "C" PRIMARY KEY,
    parent      text,
    description text    NOT NULL,
    created_at  double precision NOT NULL,
    keep_secs   double precision NOT NULL,
    policy      text    NOT NULL,
    workflow    text,
    callbacks   text    NOT NULL,
    total       bigint  NOT NULL DEFAULT 0,
    pending     bigint  NOT NULL DEFAULT 0,
    failed      bigint  NOT NULL DEFAULT 0,
    dead        bigint  NOT NULL DEFAULT 0,
    cancelled   bigint  NOT NULL DEFAULT 0,
    waiting     bigint  NOT NULL DEFAULT 0,
    building    boolean NOT NULL DEFAULT true,
    complete_at double precision,
    success_at  double precision,
    death_at    double precision,
    expires_at  double precision
);
CREATE INDEX batches_by_created ON {s}.batches (created_at, bid);
CREATE INDEX batches_by_expiry ON {s}.batches (expires_at);
CREATE INDEX batches_open ON {s}.batches (created_at) WHERE expires_at IS NULL;
-- Members that have not succeeded (see schema::member); a succeeded member's row is deleted,
-- so a repeated record finds nothing to do. A waiting workflow step keeps its job (queue, and
-- head: the payload without `enqueued_at` and its closing brace) and how many of its parents
-- have not succeeded yet.
CREATE TABLE {s}.batch_members (
    bid          text COLLATE "C" NOT NULL,
    member       text COLLATE "C" NOT NULL,
    state        smallint NOT NULL,
    queue        text,
    head         text,
    parents_left integer  NOT NULL DEFAULT 0,
    PRIMARY KEY (bid, member)
);
CREATE INDEX batch_members_by_state ON {s}.batch_members (bid, state, member);
-- Workflow dependencies: step child_jid waits for member parent_jid of the same batch.
CREATE TABLE {s}.batch_edges (
    bid        text COLLATE "C" NOT NULL,
    parent_jid text COLLATE "C" NOT NULL,
    child_jid  text COLLATE "C" NOT NULL,
    PRIMARY KEY (bid, parent_jid, child_jid)
);
"#,
    ),
];

/// The SQL of every migration for schema `schema`, in order, for teams that apply migrations
/// with their own tools (then connect with `migrate(false)`).
pub fn migrations_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    let mut out = format!("CREATE SCHEMA IF NOT EXISTS {s};\n");
    out.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {s}.migrations (version integer PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now());\n"
    ));
    for (version, sql) in MIGRATIONS {
        out.push_str(&format!("-- migration {version}\n"));
        out.push_str(&sql.replace("{s}", &s));
        out.push_str(&format!(
            "INSERT INTO {s}.migrations(version) VALUES ({version});\n"
        ));
    }
    out
}

/// `name` as a PostgreSQL identifier: double-quoted, inner quotes doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Applies the migrations `client`'s database lacks, under a transaction-scoped advisory lock
/// so processes starting together do not race. Returns how many were applied.
pub(crate) async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<usize, tokio_postgres::Error> {
    let s = quote_ident(schema);
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('errand migrations ' || $1, 0))",
        &[&schema],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.migrations (version integer PRIMARY KEY,
           applied_at timestamptz NOT NULL DEFAULT now());"
    ))
    .await?;
    let done: Vec<i32> = tx
        .query(&format!("SELECT version FROM {s}.migrations"), &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = 0;
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(&sql.replace("{s}", &s)).await?;
        tx.execute(
            &format!("INSERT INTO {s}.migrations(version) VALUES ($1)"),
            &[version],
        )
        .await?;
        applied += 1;
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("errand"), "\"errand\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let sql = migrations_sql("jobs");
        assert!(sql.contains("CREATE TABLE \"jobs\".jobs"), "{sql}");
        assert!(!sql.contains("{s}"), "{sql}");
    }
}
