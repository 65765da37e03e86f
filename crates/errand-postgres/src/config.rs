//! [`PostgresConfig`]: the URL, the schema, the pool's size and whether to migrate on connect.

/// Settings for [`PostgresBroker::connect_with`](crate::PostgresBroker::connect_with).
#[derive(Clone)]
pub struct PostgresConfig {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) pool_size: usize,
    pub(crate) migrate: bool,
    pub(crate) keep_finished: Option<std::time::Duration>,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("migrate", &self.migrate)
            .field("keep_finished", &self.keep_finished)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// A config for `url` (`postgres://user:password@host:port/db`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "errand".into(),
            pool_size: 16,
            migrate: true,
            keep_finished: None,
        }
    }

    /// Keeps every table in `schema`. Defaults to `errand`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// At most `n` pooled connections (the LISTEN connection is one more). Defaults to 16.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Whether connecting applies missing migrations. Defaults to true; teams that run
    /// migrations themselves apply [`crate::migrations_sql`] and turn this off.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Keeps each successfully finished job's row for `keep` (state `finished`, its finish
    /// time in `score`) instead of deleting it at the ack, for inspection and audits in SQL;
    /// the process holding the fleet's promotion turn deletes the expired ones in batches of
    /// 1,000. Defaults to off: a finished job's row is deleted by its ack.
    pub fn keep_finished(mut self, keep: std::time::Duration) -> Self {
        self.keep_finished = Some(keep);
        self
    }
}
