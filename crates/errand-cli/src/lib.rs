//! The `errand` command-line tool.
//!
//! # Overview
//! - `errand demo`: a shop's background jobs on the embedded SQLite backend (or `--redis URL`),
//!   processed with live progress, retries, a dead job with an alert, and a summary.

pub mod demo;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Errand: background jobs for Rust, compatible with Sidekiq.
#[derive(Debug, Parser)]
#[command(name = "errand", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a demo shop backend: enqueue a realistic mix of jobs and process them live.
    Demo(DemoArgs),
}

/// Options of `errand demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// The SQLite file to use (replaced at start). The default backend.
    #[arg(long, default_value = "errand-demo.sqlite", conflicts_with = "redis")]
    pub sqlite: PathBuf,
    /// Use the Redis server at this URL instead of SQLite (its database is flushed first).
    #[arg(long)]
    pub redis: Option<String>,
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
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command reports (backend unreachable, invalid options).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
    }
}
