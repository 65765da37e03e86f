//! [`SqliteConfig`]: the file, its durability and the busy timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous = FULL`: a committed push or transition survives power loss.
    #[default]
    Full,
    /// `synchronous = NORMAL`: survives a process crash (SIGKILL, OOM) but the last commits may
    /// be lost on power loss; several times faster.
    Normal,
}

/// Settings for [`SqliteBroker::open_with`](crate::SqliteBroker::open_with).
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub(crate) path: PathBuf,
    pub(crate) durability: Durability,
    pub(crate) busy_timeout: Duration,
}

impl SqliteConfig {
    /// The file at `path` (created if missing).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            durability: Durability::default(),
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// What a commit survives. Defaults to [`Durability::Full`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long to wait for another process's write lock before failing. Defaults to 5 s.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
}
