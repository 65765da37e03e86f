//! What every example shares: a fresh embedded backend in a temporary folder, a SQLite
//! database for the application's own tables, running a server until a condition holds, and a
//! small local HTTP service to stand in for an external API or a webhook receiver.
//!
//! The examples are binaries (`cargo run -p errand-examples --bin <name>`); each checks its
//! own outcome with `assert!` and prints it, and `tests/run.rs` runs every one of them.

use errand::admin::{Admin, Order, SetEntry, SetName, SetRange};
use errand::sqlite::SqliteBroker;
use errand::{Server, ServerBuilder};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A scratch folder holding the job database and the application's database; removed on drop.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new, empty folder.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    /// A path inside the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The embedded job backend (`jobs.sqlite` in the folder).
    pub async fn broker(&self) -> anyhow::Result<SqliteBroker> {
        Ok(SqliteBroker::open(self.path("jobs.sqlite")).await?)
    }

    /// The application's own database (`app.sqlite` in the folder), in WAL mode.
    pub fn app_db(&self) -> anyhow::Result<rusqlite::Connection> {
        let db = rusqlite::Connection::open(self.path("app.sqlite"))?;
        db.busy_timeout(Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        Ok(db)
    }
}

/// Logs to stderr at `warn` (or `RUST_LOG`), so the examples' own output stays readable.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// The settings the examples share on top of `builder`: no signal handling, short poll,
/// fetch and heartbeat intervals so retries are picked up and stats written promptly.
pub fn quick(builder: ServerBuilder) -> ServerBuilder {
    builder
        .handle_signals(false)
        .heartbeat_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
        .fetch_wait(Duration::from_millis(200))
}

/// Runs `server` until `done` returns true (checked every 20 ms), then stops it gracefully.
///
/// # Errors
/// `done` did not become true within `limit`, or the server failed.
pub async fn run_until<F, Fut>(server: Server, limit: Duration, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    let deadline = Instant::now() + limit;
    let outcome = loop {
        if done().await {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the example did not finish within {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    handle.stop();
    running.await??;
    outcome
}

/// Serves `router` on a free loopback port; returns its base URL (`http://127.0.0.1:PORT`).
/// The server runs until the process ends.
///
/// # Errors
/// No port could be bound.
pub async fn serve(router: axum::Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(url)
}

/// For the tests: runs example binary `bin` (its path from `env!("CARGO_BIN_EXE_<name>")`)
/// and returns its stdout.
///
/// # Panics
/// When it cannot start or does not exit successfully (both streams are shown).
pub fn run_example(bin: &str) -> String {
    let out = std::process::Command::new(bin)
        .env("RUST_LOG", "warn")
        .output()
        .expect("start the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{bin} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// For the tests: asserts that `stdout` has a line equal to `line`.
///
/// # Panics
/// When it has not.
pub fn assert_line(stdout: &str, line: &str) {
    assert!(
        stdout.lines().any(|l| l == line),
        "expected the line {line:?} in:\n{stdout}"
    );
}

/// Every entry of `set` (retries, scheduled or dead), oldest first, read through the admin API
/// the dashboard and `errand ops` use.
pub async fn entries(broker: &SqliteBroker, set: SetName) -> anyhow::Result<Vec<SetEntry>> {
    Ok(broker
        .set_page(SetRange {
            set,
            offset: 0,
            limit: 10_000,
            order: Order::Asc,
        })
        .await?)
}
