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
}

/// `(version, SQL)`, applied in order, each once, recorded in `{s}.migrations`.
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[(
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
"#,
)];

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
