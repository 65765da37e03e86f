//! The `errand` command-line tool.
//!
//! # Overview
//! - `errand demo`: a shop's background jobs on the embedded SQLite backend (or `--redis URL`),
//!   processed with live progress, retries, a dead job with an alert, and a summary.
//! - `errand bench`: a load test: bulk enqueue, drain, enqueue-to-start latency at a steady
//!   rate, CPU per 100,000 jobs and peak RSS, on SQLite or Redis (`--json` for scripts).
//! - `errand web`: the dashboard (pages, JSON API, Prometheus `/metrics`) on SQLite or Redis.
//! - `errand stats | queues | pause | resume | clear | jobs | retry | delete | kill | enqueue |
//!   processes | quiet | stop`: the dashboard's figures and actions from a terminal (`--json`).

mod backend;
pub mod bench;
pub mod demo;
pub mod ops;
#[cfg(feature = "web")]
pub mod web;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Errand: background jobs for Rust, compatible with Sidekiq.
#[derive(Debug, Parser)]
#[command(name = "errand", version, about)]
pub struct Cli {
    /// Log lines on stderr as `text`, or `json` (one object per line, for log pipelines).
    /// Which events: `RUST_LOG` (errors only by default; `RUST_LOG=info` adds a line per job
    /// attempt).
    #[arg(
        long,
        global = true,
        env = errand::logs::FORMAT_ENV,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: errand::logs::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a demo shop backend: enqueue a realistic mix of jobs and process them live.
    Demo(DemoArgs),
    /// Measure throughput, latency, CPU and memory with no-op jobs (a load test).
    Bench(BenchArgs),
    /// Serve the dashboard: queues, busy, retries, scheduled, dead, metrics, with actions.
    #[cfg(feature = "web")]
    Web(WebArgs),
    /// The dashboard's figures and actions from a terminal: stats, queues, pause, resume,
    /// clear, jobs, job (retry/delete/kill), enqueue, processes, quiet, stop.
    Ops {
        /// The backend.
        #[command(flatten)]
        backend: OpsArgs,
        /// What to do.
        #[command(subcommand)]
        command: OpsCommand,
    },
}

/// Which backend an ops command works on, and how it prints.
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// The SQLite file. The default backend.
    #[arg(long, global = true, default_value = "errand.sqlite")]
    pub sqlite: PathBuf,
    /// The Redis server at this URL instead.
    #[arg(long, global = true, env = "REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// The PostgreSQL database at this URL instead (`postgres://user:password@host/db`).
    #[arg(
        long,
        global = true,
        env = "ERRAND_POSTGRES_URL",
        hide_env_values = true,
        conflicts_with = "redis"
    )]
    pub postgres: Option<String>,
    /// Keys under this namespace (`myapp` gives `myapp:queue:default`), as redis-namespace and
    /// `RedisConfig::namespace` write them.
    #[arg(
        long,
        global = true,
        env = "ERRAND_REDIS_NAMESPACE",
        requires = "redis",
        hide_env_values = true
    )]
    pub namespace: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Filters for set listings and `--all` actions.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Class contains (case-insensitive).
    #[arg(long)]
    pub class: Option<String>,
    /// Queue is exactly.
    #[arg(long)]
    pub queue: Option<String>,
    /// Error class or message contains.
    #[arg(long)]
    pub error: Option<String>,
    /// Job id, class or arguments contain.
    #[arg(long = "match")]
    pub text: Option<String>,
}

impl FilterArgs {
    /// As the dashboard's filter.
    pub fn filter(&self) -> errand::api::Filter {
        errand::api::Filter::new(
            self.class.as_deref(),
            self.queue.as_deref(),
            self.error.as_deref(),
            self.text.as_deref(),
        )
    }
}

/// The ops commands: the dashboard's figures and actions from a terminal.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Totals: processed, failed, busy, enqueued, retries, scheduled, dead, processes.
    Stats,
    /// Every queue with its size, latency and status.
    Queues,
    /// Pause a queue: servers stop fetching from it within a heartbeat.
    Pause {
        /// The queue.
        queue: String,
    },
    /// Resume a paused queue.
    Resume {
        /// The queue.
        queue: String,
    },
    /// Delete every job waiting in a queue.
    Clear {
        /// The queue.
        queue: String,
    },
    /// List a set's jobs (retries, scheduled or dead), soonest or oldest first.
    Jobs {
        /// retries, scheduled or dead.
        set: String,
        /// Filters.
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many (1..=100).
        #[arg(long, default_value_t = 25)]
        limit: usize,
        /// Newest (highest score) first.
        #[arg(long)]
        desc: bool,
    },
    /// Retry now (retries, dead) or run now (scheduled), delete, or kill (to dead) jobs by KEY,
    /// or --all of a set (matching the filters); or `cancel JID…`: cancel jobs by jid wherever
    /// they are (a waiting job is removed, a running one told to stop).
    #[command(name = "job")]
    Act {
        /// retry, delete, kill, or cancel.
        action: String,
        /// retries, scheduled or dead (for cancel: the first JID).
        set: String,
        /// Keys as `errand ops jobs` lists them (`<score>-<jid>`); for cancel, more JIDs.
        keys: Vec<String>,
        /// Every job of the set (matching the filters) instead of KEYs.
        #[arg(long, conflicts_with = "keys")]
        all: bool,
        /// Filters for --all.
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Enqueue a job by class name (Errand's or Ruby's); prints its jid.
    Enqueue {
        /// The class (Sidekiq's `class`).
        class: String,
        /// Arguments: each is JSON when it parses as JSON (`42`, `{"a":1}`), else a string.
        args: Vec<String>,
        /// The queue.
        #[arg(long, default_value = "default")]
        queue: String,
        /// Run it this many seconds from now.
        #[arg(long = "in")]
        delay: Option<f64>,
    },
    /// Live processes (Errand's and Ruby Sidekiq's).
    Processes,
    /// Quiet a process (stop fetching): an identity from `errand ops processes`, or `all`.
    Quiet {
        /// The identity, or `all`.
        identity: String,
    },
    /// Stop a process gracefully: an identity, or `all`.
    Stop {
        /// The identity, or `all`.
        identity: String,
    },
    /// Batches and workflows, newest first: counts and state.
    Batches {
        /// At most this many (1..=100).
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=100))]
        limit: u64,
        /// Skip this many.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// One batch or workflow: its counts, times, callbacks, its members by state and, for a
    /// workflow, each step's state.
    Batch {
        /// The batch id.
        bid: String,
    },
    /// Periodic entries: list them, pause or resume one, or run one now.
    Periodic {
        /// What to do.
        #[command(subcommand)]
        command: PeriodicCommand,
    },
}

/// `errand ops periodic …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PeriodicCommand {
    /// Every entry: schedule, next and last run, status.
    List,
    /// Stop enqueueing an entry's ticks.
    Pause {
        /// The entry's name.
        name: String,
    },
    /// Enqueue an entry's ticks again (from its next tick on).
    Resume {
        /// The entry's name.
        name: String,
    },
    /// Enqueue an entry's job now, outside its schedule; prints the jid.
    Run {
        /// The entry's name.
        name: String,
    },
}

/// Options of `errand web`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// The SQLite file to show. The default backend.
    #[arg(long, default_value = "errand.sqlite", conflicts_with_all = ["redis", "postgres"])]
    pub sqlite: PathBuf,
    /// Show the Redis server at this URL instead (Sidekiq's data included).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// Show the PostgreSQL database at this URL instead (`postgres://user:password@host/db`).
    #[arg(
        long,
        env = "ERRAND_POSTGRES_URL",
        hide_env_values = true,
        conflicts_with = "redis"
    )]
    pub postgres: Option<String>,
    /// Keys under this namespace (`myapp` gives `myapp:queue:default`), as redis-namespace and
    /// `RedisConfig::namespace` write them.
    #[arg(
        long,
        env = "ERRAND_REDIS_NAMESPACE",
        requires = "redis",
        hide_env_values = true
    )]
    pub namespace: Option<String>,
    /// Address to listen on. Anything but loopback needs authentication.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub bind: std::net::SocketAddr,
    /// Require this access token (a bearer header, or the sign-in form).
    #[arg(
        long,
        env = "ERRAND_WEB_TOKEN",
        hide_env_values = true,
        conflicts_with = "basic"
    )]
    pub token: Option<String>,
    /// Require HTTP basic authentication, as `user:password`.
    #[arg(long, env = "ERRAND_WEB_BASIC", hide_env_values = true)]
    pub basic: Option<String>,
    /// Serve a non-loopback address without authentication anyway (anyone who reaches it can
    /// delete jobs and stop processes).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Mount the dashboard under this path (`/errand`) instead of `/`.
    #[arg(long, default_value = "")]
    pub base_path: String,
    /// Link each job's trace to your trace viewer: a URL template with `{trace_id}` (and
    /// optionally `{span_id}`), e.g. `https://jaeger.internal/trace/{trace_id}`.
    #[arg(long, env = "ERRAND_WEB_TRACE_URL", value_name = "TEMPLATE")]
    pub trace_url: Option<String>,
    /// Answer requests naming this host (repeatable; `errand.internal`), besides loopback names
    /// and the bound address. Once one is given, every other host name is refused; without
    /// authentication only loopback names are answered by default (DNS rebinding protection).
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_hosts: Vec<String>,
    /// A job killed from the dashboard trims the dead set to this many entries (set it as
    /// the servers' `dead_max_jobs` is set).
    #[arg(long, default_value_t = 10_000)]
    pub dead_max_jobs: u64,
    /// A job killed from the dashboard trims dead entries older than this many days (as the
    /// servers' `dead_max_age` is set).
    #[arg(long, default_value_t = 180)]
    pub dead_max_age_days: u64,
}

/// Options of `errand demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// The SQLite file to use (replaced at start). The default backend.
    #[arg(long, default_value = "errand-demo.sqlite", conflicts_with_all = ["redis", "postgres"])]
    pub sqlite: PathBuf,
    /// Use the Redis server at this URL instead of SQLite. Errand's and Sidekiq's keys in its
    /// namespace are deleted first; other keys stay.
    #[arg(long)]
    pub redis: Option<String>,
    /// Use the PostgreSQL database at this URL instead of SQLite. Errand's schema (`errand`)
    /// is dropped and made again first; nothing else in the database changes.
    #[arg(long, conflicts_with = "redis")]
    pub postgres: Option<String>,
    /// Keys under this namespace (`myapp` gives `myapp:queue:default`), as redis-namespace and
    /// `RedisConfig::namespace` write them.
    #[arg(
        long,
        env = "ERRAND_REDIS_NAMESPACE",
        requires = "redis",
        hide_env_values = true
    )]
    pub namespace: Option<String>,
    /// Use Sidekiq's real retry backoff (15 s, 16 s, 31 s, ...) instead of the demo's 1 s steps;
    /// the run then takes minutes.
    #[arg(long)]
    pub real_backoff: bool,
    /// How many bulk-export chunks to enqueue in the low-priority queue.
    #[arg(long, default_value_t = 300)]
    pub export_chunks: u64,
    /// Print a progress line per second instead of updating one line in place.
    #[arg(long)]
    pub plain: bool,
    /// Serve the dashboard here while the demo runs (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub web: Option<std::net::SocketAddr>,
    /// Do not serve the dashboard.
    #[arg(long)]
    pub no_web: bool,
    /// Keep serving the dashboard after the summary until Ctrl-C (the default on a terminal).
    #[arg(long)]
    pub serve: bool,
}

/// Options of `errand bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The SQLite file to use (replaced at start). The default backend.
    #[arg(long, default_value = "errand-bench.sqlite", conflicts_with_all = ["redis", "postgres"])]
    pub sqlite: PathBuf,
    /// Use the Redis server at this URL instead of SQLite. Errand's and Sidekiq's keys in its
    /// namespace are deleted first; other keys stay.
    #[arg(long)]
    pub redis: Option<String>,
    /// Use the PostgreSQL database at this URL instead of SQLite. Errand's schema (`errand`)
    /// is dropped and made again first; nothing else in the database changes.
    #[arg(long, conflicts_with = "redis")]
    pub postgres: Option<String>,
    /// Keys under this namespace (`myapp` gives `myapp:queue:default`), as redis-namespace and
    /// `RedisConfig::namespace` write them.
    #[arg(
        long,
        env = "ERRAND_REDIS_NAMESPACE",
        requires = "redis",
        hide_env_values = true
    )]
    pub namespace: Option<String>,
    /// How many no-op jobs to enqueue in bulk and drain.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
    /// Jobs per `push_bulk` call while enqueueing.
    #[arg(long, default_value_t = 10_000)]
    pub batch: u64,
    /// Push the `--jobs` into one Errand batch (`errand::Batch`), so the drain also records
    /// every job's outcome in it; the figures then show what a batch costs per job.
    #[arg(long)]
    pub in_batch: bool,
    /// Jobs then pushed one at a time (`Client::push`, awaited one by one) to measure single
    /// enqueue; they are drained with the rest.
    #[arg(long, default_value_t = 10_000)]
    pub single: u64,
    /// Jobs run at once by each server.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Drain with this many separate worker processes (each with `--concurrency`); 0 runs the
    /// server inside the bench process.
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Jobs per second pushed one by one for the latency measurement (0 skips it).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long the latency measurement pushes, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Print only one JSON object with the figures, for scripts (progress still goes to
    /// stderr).
    #[arg(long)]
    pub json: bool,
    /// Run on the backend as it is instead of emptying it first (the bench's queue must be
    /// empty): to watch a database across runs, as scripts/bench-pg-bloat does.
    #[arg(long)]
    pub keep: bool,
    /// Internal: run as one of the bench's worker processes.
    #[arg(long, hide = true)]
    pub worker: bool,
    /// The log format (the global `--log-format`), passed on to worker processes.
    #[arg(skip)]
    pub log_format: errand::logs::LogFormat,
}

/// The log filter when `RUST_LOG` is unset: errors only, so the commands' own output stays
/// readable.
const DEFAULT_LOG_FILTER: &str = "error";

/// Installs the log subscriber: `format` lines on stderr, filtered by `RUST_LOG` or
/// the default (errors only).
///
/// # Errors
/// `RUST_LOG` does not parse. One already installed (a test running commands in its own
/// process) is kept.
pub fn init_logs(format: errand::logs::LogFormat) -> anyhow::Result<()> {
    match errand::logs::init(format, DEFAULT_LOG_FILTER) {
        Ok(()) | Err(errand::logs::LogError::Install(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Prints the error a command ended with on stderr: `error: …`, or in the JSON log format one
/// JSON line (`level` `ERROR`, `message`, `error`), so that stderr stays JSON throughout.
pub fn report_error(format: errand::logs::LogFormat, e: &anyhow::Error) {
    match format {
        errand::logs::LogFormat::Text => eprintln!("error: {e:#}"),
        errand::logs::LogFormat::Json => {
            use tracing_subscriber::fmt::time::FormatTime;
            let mut timestamp = String::new();
            let _ = tracing_subscriber::fmt::time::SystemTime.format_time(
                &mut tracing_subscriber::fmt::format::Writer::new(&mut timestamp),
            );
            let line = serde_json::json!({
                "timestamp": timestamp,
                "level": "ERROR",
                "message": "command failed",
                "error": format!("{e:#}"),
                "target": "errand",
            });
            eprintln!("{line}");
        }
    }
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command reports (backend unreachable, invalid options), or a `RUST_LOG` that
/// does not parse.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    init_logs(cli.log_format)?;
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(mut args) => {
            args.log_format = cli.log_format;
            bench::run(args).await
        }
        #[cfg(feature = "web")]
        Command::Web(args) => web::run(args).await,
        Command::Ops { backend, command } => ops::run(backend, command).await,
    }
}
