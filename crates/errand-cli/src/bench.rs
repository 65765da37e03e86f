//! `errand bench`: a load test in the spirit of Sidekiq's own.
//!
//! Four figures, one phase each, on a fresh SQLite file or a Redis namespace emptied first:
//! 1. enqueue: `--jobs N` no-op jobs pushed with `Client::push_bulk` (into one Errand batch
//!    with `--in-batch`), `--batch` per call, then
//!    `--single` more pushed one at a time, each awaited (Sidekiq's `perform_async` loop);
//! 2. drain: a server of `--concurrency C` (in this process, or `--processes P` worker
//!    processes) runs them all; the CPU time of the worker side is measured over this phase;
//! 3. latency: with the server idle, single pushes at `--rate R` jobs/s for `--seconds S`; each
//!    job records now − its `enqueued_at` when it starts;
//! 4. peak RSS of the worker process(es).
//!
//! On Redis, Redis's own CPU seconds and its commands per job (`INFO cpu`, `INFO commandstats`)
//! are read around the drain as well: what limits how many jobs one Redis carries.
//!
//! Worker processes are this binary re-run as `errand bench --worker`, speaking one JSON object
//! per line on stdout (`ready`, `progress`, `report`, `final`) and reading commands on stdin
//! (`go`, `report`; end of input stops it).

use crate::BenchArgs;
use crate::backend::Backend;
use anyhow::Context as _;
use errand::broker::Broker;
use errand::{Client, Job, JobContext, JobError, JobOptions, JobResult, Server};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, Semaphore, mpsc};

/// The queue the bench's jobs go through.
const QUEUE: &str = "bench";
/// Giving up when no job finished for this long (a worker wedged or crashed).
const STALL: Duration = Duration::from_secs(60);
/// At most this many latency-phase pushes in flight at once.
const PUSHES_IN_FLIGHT: usize = 64;

/// The no-op job: a sequence number, and whether to record its enqueue-to-start latency.
#[derive(Serialize, Deserialize)]
struct Noop(u64, bool);

impl Job for Noop {
    const NAME: &'static str = "ErrandBench::Noop";
    fn options() -> JobOptions {
        JobOptions::default().queue(QUEUE)
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        let tally = cx
            .data::<Arc<Tally>>()
            .ok_or_else(|| JobError::dead("the bench tally is not registered"))?;
        if self.1
            && let Some(enqueued) = cx.payload().time("enqueued_at")
        {
            let ms = (errand_core::now() - enqueued).max(0.0) * 1000.0;
            tally
                .latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(ms);
        }
        tally.add(1);
        Ok(())
    }
}

/// Finished jobs, counted where the bench waits for them.
struct Tally {
    done: AtomicU64,
    /// The count being waited for: reaching it wakes the waiter.
    target: AtomicU64,
    reached: Notify,
    /// Worker processes that ended without their final report.
    lost: AtomicUsize,
    /// Enqueue-to-start latencies of latency-phase jobs, in milliseconds.
    latencies: Mutex<Vec<f64>>,
}

impl Tally {
    fn new() -> Self {
        Self {
            done: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            reached: Notify::new(),
            lost: AtomicUsize::new(0),
            latencies: Mutex::new(Vec::new()),
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    fn add(&self, n: u64) {
        let now = self.done.fetch_add(n, Ordering::SeqCst) + n;
        if now >= self.target.load(Ordering::SeqCst) {
            self.reached.notify_one();
        }
    }
}

/// CPU time (user + system, every thread) of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Peak resident set size of this process so far (`VmHWM`), in MB; 0 where unknown.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The nearest-rank percentile `q` (0..=1) of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn server(
    broker: Arc<dyn Broker>,
    tally: Arc<Tally>,
    concurrency: usize,
) -> anyhow::Result<Server> {
    Ok(Server::builder_arc(broker)
        .register::<Noop>()
        .queues([QUEUE])
        .concurrency(concurrency)
        .data(tally)
        .clear_middleware()
        .handle_signals(false)
        .shutdown_timeout(Duration::from_secs(5))
        .build()?)
}

/// One progress line on stderr: redrawn in place on a terminal, else a line per second and
/// one at the end of each phase.
struct Progress {
    live: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new() -> Self {
        let live = std::io::stderr().is_terminal();
        Self {
            live,
            last: (!live).then(Instant::now),
        }
    }

    fn show(&mut self, phase: &str, done: u64, total: u64, since: Instant, force: bool) {
        let every = if self.live {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        if !force && self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let width = 30;
        let filled = usize::try_from(
            (done.min(total) * width as u64)
                .checked_div(total)
                .unwrap_or(width as u64),
        )
        .unwrap_or(width);
        let secs = since.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let line = format!(
            "  {phase:<8} [{}{}] {done}/{total}  {rate:.0} jobs/s  {secs:.1} s",
            "#".repeat(filled),
            ".".repeat(width - filled),
        );
        let mut err = std::io::stderr().lock();
        if self.live {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    /// Shows the phase's last state and ends its line.
    fn end(&mut self, phase: &str, done: u64, total: u64, since: Instant) {
        self.show(phase, done, total, since, true);
        if self.live {
            eprintln!();
            self.last = None;
        } else {
            self.last = Some(Instant::now());
        }
    }
}

/// Waits until `tally` counts `target` finished jobs, drawing progress from `base`.
async fn wait_for(
    tally: &Tally,
    target: u64,
    base: u64,
    progress: &mut Progress,
    phase: &str,
    since: Instant,
) -> anyhow::Result<()> {
    tally.target.store(target, Ordering::SeqCst);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut last_done, mut last_change) = (tally.done(), Instant::now());
    loop {
        let done = tally.done();
        if done >= target {
            progress.end(phase, done - base, target - base, since);
            return Ok(());
        }
        if tally.lost.load(Ordering::SeqCst) > 0 {
            anyhow::bail!("a worker process ended early ({done}/{target} jobs done)");
        }
        if done != last_done {
            (last_done, last_change) = (done, Instant::now());
        } else if last_change.elapsed() > STALL {
            anyhow::bail!("no job finished for {STALL:?} ({done}/{target} jobs done)");
        }
        progress.show(phase, done - base, target - base, since, false);
        tokio::select! {
            _ = tally.reached.notified() => {}
            _ = tick.tick() => {}
        }
    }
}

/// A worker process and what it reported.
struct Child {
    process: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    events: mpsc::UnboundedReceiver<Value>,
}

impl Child {
    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("worker stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// The next event named `name` (progress is counted by the reader, never queued here).
    async fn expect(&mut self, name: &str) -> anyhow::Result<Value> {
        let v = self
            .events
            .recv()
            .await
            .with_context(|| format!("a worker process exited before its {name:?} report"))?;
        anyhow::ensure!(
            v["event"] == name,
            "worker sent {v} while {name:?} was expected"
        );
        Ok(v)
    }
}

/// Where the jobs are run.
enum Workers {
    InProcess {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), errand::Error>>,
        cpu_start: f64,
    },
    Processes {
        children: Vec<Child>,
        cpu_start: f64,
    },
}

fn worker_command(args: &BenchArgs) -> anyhow::Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("locating the errand binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--log-format")
        .arg(args.log_format.as_str())
        .arg("bench")
        .arg("--worker");
    match (&args.redis, &args.postgres) {
        (Some(url), _) => cmd.arg("--redis").arg(url),
        (None, Some(url)) => cmd.arg("--postgres").arg(url),
        (None, None) => cmd.arg("--sqlite").arg(&args.sqlite),
    };
    if let Some(ns) = &args.namespace {
        cmd.arg("--namespace").arg(ns);
    }
    cmd.arg("--concurrency")
        .arg(args.concurrency.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Starts `args.processes` worker processes and waits until each is ready.
async fn spawn_children(args: &BenchArgs, tally: &Arc<Tally>) -> anyhow::Result<Vec<Child>> {
    let mut children = Vec::new();
    for _ in 0..args.processes {
        let mut process = worker_command(args)?
            .spawn()
            .context("starting a worker process")?;
        let stdin = process.stdin.take();
        let stdout = process.stdout.take().context("worker stdout")?;
        let (tx, events) = mpsc::unbounded_channel();
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let (mut counted, mut finished) = (0u64, false);
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(done) = v["done"].as_u64()
                    && done > counted
                {
                    tally.add(done - counted);
                    counted = done;
                }
                if v["event"] == "progress" {
                    continue;
                }
                finished |= v["event"] == "final";
                let _ = tx.send(v);
            }
            if !finished {
                tally.lost.fetch_add(1, Ordering::SeqCst);
                tally.reached.notify_one();
            }
        });
        children.push(Child {
            process,
            stdin,
            events,
        });
    }
    for c in &mut children {
        c.expect("ready").await?;
    }
    Ok(children)
}

/// What the worker side measured.
struct WorkerFigures {
    drain_cpu_s: f64,
    peak_rss_mb: f64,
    latencies: Vec<f64>,
}

impl Workers {
    /// Starts processing; returns when the work began (worker processes are started and
    /// ready before that).
    async fn start(
        args: &BenchArgs,
        broker: &Arc<dyn Broker>,
        tally: &Arc<Tally>,
    ) -> anyhow::Result<(Self, Instant)> {
        if args.processes == 0 {
            let server = server(broker.clone(), tally.clone(), args.concurrency)?;
            let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let started = Instant::now();
            let cpu_start = cpu_seconds();
            let task = tokio::spawn(server.run_until(async move {
                let _ = stop_rx.await;
            }));
            let workers = Workers::InProcess {
                stop,
                task,
                cpu_start,
            };
            return Ok((workers, started));
        }
        let mut children = spawn_children(args, tally).await?;
        let mut cpu_start = 0.0;
        for c in &mut children {
            c.send("report").await?;
            cpu_start += c.expect("report").await?["cpu_s"].as_f64().unwrap_or(0.0);
        }
        let started = Instant::now();
        for c in &mut children {
            c.send("go").await?;
        }
        let workers = Workers::Processes {
            children,
            cpu_start,
        };
        Ok((workers, started))
    }

    /// CPU seconds of the worker side since the start.
    async fn cpu_since_start(&mut self) -> anyhow::Result<f64> {
        match self {
            Workers::InProcess { cpu_start, .. } => Ok(cpu_seconds() - *cpu_start),
            Workers::Processes {
                children,
                cpu_start,
            } => {
                let mut total = 0.0;
                for c in children.iter_mut() {
                    c.send("report").await?;
                }
                for c in children.iter_mut() {
                    total += c.expect("report").await?["cpu_s"].as_f64().unwrap_or(0.0);
                }
                Ok(total - *cpu_start)
            }
        }
    }

    /// Stops every worker and collects their figures.
    async fn stop(self, tally: &Tally, drain_cpu_s: f64) -> anyhow::Result<WorkerFigures> {
        match self {
            Workers::InProcess { stop, task, .. } => {
                let _ = stop.send(());
                task.await??;
                Ok(WorkerFigures {
                    drain_cpu_s,
                    peak_rss_mb: peak_rss_mb(),
                    latencies: std::mem::take(
                        &mut *tally.latencies.lock().unwrap_or_else(|p| p.into_inner()),
                    ),
                })
            }
            Workers::Processes { mut children, .. } => {
                let mut figures = WorkerFigures {
                    drain_cpu_s,
                    peak_rss_mb: 0.0,
                    latencies: Vec::new(),
                };
                for c in &mut children {
                    // End of input is the stop command.
                    drop(c.stdin.take());
                }
                for c in &mut children {
                    let fin = c.expect("final").await?;
                    figures.peak_rss_mb = figures
                        .peak_rss_mb
                        .max(fin["peak_rss_mb"].as_f64().unwrap_or(0.0));
                    figures.latencies.extend(
                        fin["latencies_ms"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_f64),
                    );
                    let status = c.process.wait().await?;
                    anyhow::ensure!(status.success(), "a worker process failed: {status}");
                }
                Ok(figures)
            }
        }
    }
}

/// Pushes `count` single jobs at `rate` per second, numbered from `first`.
async fn push_at_rate(
    client: &Client,
    first: u64,
    count: u64,
    rate: f64,
    progress: &mut Progress,
    tally: &Tally,
    base: u64,
) -> anyhow::Result<(Instant, f64)> {
    let permits = Arc::new(Semaphore::new(PUSHES_IN_FLIGHT));
    let mut pushes = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(count);
        while sent < due {
            let permit = permits.clone().acquire_owned().await?;
            let client = client.clone();
            let n = first + sent;
            pushes.spawn(async move {
                let out = client.push(Noop(n, true)).await;
                drop(permit);
                out
            });
            sent += 1;
        }
        while let Some(done) = pushes.try_join_next() {
            done??;
        }
        progress.show("latency", tally.done() - base, count, started, false);
    }
    while let Some(done) = pushes.join_next().await {
        done??;
    }
    Ok((started, started.elapsed().as_secs_f64()))
}

/// Runs `errand bench` (or, with `--worker`, one of its worker processes).
///
/// # Errors
/// The backend cannot be opened or reached, a worker process fails, or no job finishes for a
/// minute.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.worker {
        return worker(args).await;
    }
    anyhow::ensure!(args.jobs > 0, "--jobs must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.rate >= 0.0 && args.seconds >= 0.0,
        "--rate and --seconds must not be negative"
    );
    let backend = Backend::open(
        &args.sqlite,
        args.redis.as_deref(),
        args.postgres.as_deref(),
        args.namespace.as_deref(),
        !args.keep,
    )
    .await?;
    let (kind, label) = match &backend {
        Backend::Sqlite(_) => ("sqlite", format!("sqlite file {}", args.sqlite.display())),
        Backend::Redis(_) => (
            "redis",
            format!("redis at {}", args.redis.as_deref().unwrap_or_default()),
        ),
        Backend::Postgres(_) => ("postgres", "postgres database".to_string()),
    };
    let broker = backend.broker();
    let client = Client::from_arc(broker.clone());
    let tally = Arc::new(Tally::new());
    let mut progress = Progress::new();
    let workers_label = if args.processes == 0 {
        "a server in this process".to_string()
    } else {
        format!("{} worker processes", args.processes)
    };
    if !args.json {
        println!(
            "Errand bench: {} no-op jobs on the {label}, concurrency {} on {workers_label}\n",
            args.jobs, args.concurrency
        );
    }

    // 1. Enqueue.
    let started = Instant::now();
    let batch = match args.in_batch {
        true => Some(
            errand::Batch::new(&client)
                .description("errand bench")
                .open()
                .await?,
        ),
        false => None,
    };
    let mut pushed = 0;
    while pushed < args.jobs {
        let end = (pushed + args.batch).min(args.jobs);
        let jobs = (pushed..end).map(|n| Noop(n, false));
        match &batch {
            Some(b) => drop(b.push_bulk(jobs).await?),
            None => drop(client.push_bulk(jobs).await?),
        }
        pushed = end;
        progress.show("enqueue", pushed, args.jobs, started, false);
    }
    let bid = match batch {
        Some(b) => Some(b.seal().await?),
        None => None,
    };
    let enqueue_s = started.elapsed().as_secs_f64();
    progress.end("enqueue", pushed, args.jobs, started);

    // 1b. One at a time, each push awaited before the next (Sidekiq's `perform_async` loop).
    let started = Instant::now();
    for n in 0..args.single {
        client.push(Noop(args.jobs + n, false)).await?;
        if n % 1_000 == 999 {
            progress.show("single", n + 1, args.single, started, false);
        }
    }
    let single_s = started.elapsed().as_secs_f64();
    progress.end("single", args.single, args.single, started);
    let single_rate = if args.single > 0 {
        args.single as f64 / single_s
    } else {
        0.0
    };
    let drained = args.jobs + args.single;

    // 2. Drain. On Redis, what Redis spends is read around it too.
    let mut redis_conn = match &backend {
        Backend::Redis(broker) => Some(broker.connection()),
        _ => None,
    };
    let redis_before = match &mut redis_conn {
        Some(c) => Some(RedisCost::read(c).await?),
        None => None,
    };
    let (mut workers, started) = Workers::start(&args, &broker, &tally).await?;
    wait_for(&tally, drained, 0, &mut progress, "drain", started).await?;
    let drain_s = started.elapsed().as_secs_f64();
    let drain_cpu_s = workers.cpu_since_start().await?;
    let redis_cost = match (&mut redis_conn, &redis_before) {
        (Some(c), Some(before)) => Some(RedisCost::read(c).await?.since(before)),
        _ => None,
    };
    // The jobs count themselves as they run; the last record follows within moments.
    let mut batch_status = None;
    if let Some(bid) = &bid {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = client
                .batch_status(bid)
                .await?
                .context("the bench's batch is gone")?;
            if s.success_at.is_some() || Instant::now() > deadline {
                batch_status = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if let Some(s) = &batch_status {
        anyhow::ensure!(
            s.pending == 0 && s.success_at.is_some() && s.total == args.jobs,
            "the bench's batch did not succeed with every job: {s:?}"
        );
    }

    // 3. Latency at a steady rate, on the now idle server.
    let latency_jobs = (args.rate * args.seconds).round() as u64;
    let mut latency_s = 0.0;
    if latency_jobs > 0 {
        let since;
        (since, latency_s) = push_at_rate(
            &client,
            drained,
            latency_jobs,
            args.rate,
            &mut progress,
            &tally,
            drained,
        )
        .await?;
        wait_for(
            &tally,
            drained + latency_jobs,
            drained,
            &mut progress,
            "latency",
            since,
        )
        .await?;
    }
    let figures = workers.stop(&tally, drain_cpu_s).await?;
    let mut lat = figures.latencies;
    // The slowest starts and when they happened (seconds into the latency phase, from their
    // place in start order at the offered rate): to tell a periodic stall from noise.
    let mut worst: Vec<(f64, f64)> = lat
        .iter()
        .enumerate()
        .map(|(i, &ms)| (i as f64 / args.rate.max(1.0), ms))
        .collect();
    worst.sort_by(|a, b| b.1.total_cmp(&a.1));
    worst.truncate(5);
    lat.sort_by(f64::total_cmp);
    let enqueue_rate = args.jobs as f64 / enqueue_s;
    let drain_rate = drained as f64 / drain_s;
    let cpu_per_100k = figures.drain_cpu_s * 100_000.0 / drained as f64;
    let (p50, p99, max) = (
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
    );
    let offered = if latency_s > 0.0 {
        latency_jobs as f64 / latency_s
    } else {
        0.0
    };

    if args.json {
        let out = json!({
            "backend": kind,
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "processes": args.processes,
            "enqueue_jobs_per_sec": enqueue_rate,
            "single_enqueue_jobs_per_sec": single_rate,
            "drain_jobs_per_sec": drain_rate,
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "latency_max_ms": max,
            "latency_worst": worst.iter().map(|(at, ms)| json!({"at_s": at, "ms": ms})).collect::<Vec<_>>(),
            "latency_jobs": lat.len(),
            "latency_rate_per_sec": offered,
            "cpu_s_per_100k": cpu_per_100k,
            "peak_rss_mb": figures.peak_rss_mb,
            "enqueue_s": enqueue_s,
            "drain_s": drain_s,
            "drain_cpu_s": figures.drain_cpu_s,
            "bench_peak_rss_mb": peak_rss_mb(),
            "in_batch": args.in_batch,
            "redis_cpu_s_per_100k": redis_cost.as_ref().map(|c| c.cpu_s * 100_000.0 / drained as f64),
            "redis_commands_per_job": redis_cost.as_ref().map(|c| c.calls.values().sum::<u64>() as f64 / drained as f64),
            "redis_calls_per_job": redis_cost.as_ref().map(|c| c.calls.iter().map(|(k, v)| (k.clone(), *v as f64 / drained as f64)).collect::<std::collections::BTreeMap<_, _>>()),
        });
        println!("{out}");
        return Ok(());
    }
    println!();
    println!(
        "  enqueue   {enqueue_rate:>10.0} jobs/s   {} jobs in {enqueue_s:.2} s, push_bulk of {}",
        args.jobs, args.batch
    );
    println!(
        "  single    {single_rate:>10.0} jobs/s   {} jobs pushed one at a time",
        args.single
    );
    println!("  drain     {drain_rate:>10.0} jobs/s   {drained} jobs in {drain_s:.2} s");
    if let Some(s) = &batch_status {
        println!(
            "  batch     {} jobs recorded in batch {}: succeeded, 0 pending",
            s.total, s.bid
        );
    }
    if lat.is_empty() {
        println!("  latency   (skipped: --rate or --seconds is 0)");
    } else {
        println!(
            "  latency   p50 {p50:.2} ms   p99 {p99:.2} ms   max {max:.2} ms   ({} jobs at {offered:.0}/s, enqueue to start)",
            lat.len()
        );
    }
    let cpu_note = if args.processes == 0 {
        "this process during the drain, including its idle client"
    } else {
        "the worker processes during the drain"
    };
    println!(
        "  cpu       {cpu_per_100k:>10.2} s per 100,000 jobs ({:.2} s used by {cpu_note})",
        figures.drain_cpu_s
    );
    if let Some(c) = &redis_cost {
        let total: u64 = c.calls.values().sum();
        let mut top: Vec<(&String, &u64)> = c.calls.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = top
            .iter()
            .take(6)
            .map(|(k, v)| format!("{k} {:.2}", **v as f64 / drained as f64))
            .collect();
        println!(
            "  redis     {:>10.2} s CPU per 100,000 jobs, {:.2} commands per job ({})",
            c.cpu_s * 100_000.0 / drained as f64,
            total as f64 / drained as f64,
            top.join(", ")
        );
    }
    println!(
        "  peak rss  {:>10.1} MB{}",
        figures.peak_rss_mb,
        if args.processes > 1 {
            " (the largest worker process)"
        } else {
            ""
        }
    );
    Ok(())
}

/// What Redis itself spent: its CPU seconds (`used_cpu_sys` + `used_cpu_user`) and the calls of
/// each command (`INFO commandstats`), read before and after a phase.
#[derive(Debug, Default, Clone)]
struct RedisCost {
    cpu_s: f64,
    calls: std::collections::BTreeMap<String, u64>,
}

impl RedisCost {
    /// On a cluster, summed over its masters.
    async fn read(conn: &mut errand::redis::RedisConn) -> anyhow::Result<Self> {
        let infos: Vec<(String, String)> = conn
            .on_every_master(redis::cmd("INFO").arg("cpu").arg("commandstats"))
            .await?;
        let mut cost = RedisCost::default();
        for line in infos.iter().flat_map(|(_, info)| info.lines()) {
            if let Some(v) = line
                .strip_prefix("used_cpu_sys:")
                .or_else(|| line.strip_prefix("used_cpu_user:"))
            {
                cost.cpu_s += v.trim().parse::<f64>().unwrap_or(0.0);
            } else if let Some(rest) = line.strip_prefix("cmdstat_") {
                // cmdstat_lrem:calls=5,usec=…
                let (name, fields) = rest.split_once(':').unwrap_or((rest, ""));
                let calls = fields
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                *cost.calls.entry(name.to_string()).or_default() += calls;
            }
        }
        Ok(cost)
    }

    /// What was spent between `before` and `self`.
    fn since(&self, before: &RedisCost) -> RedisCost {
        RedisCost {
            cpu_s: self.cpu_s - before.cpu_s,
            calls: self
                .calls
                .iter()
                .map(|(k, v)| (k.clone(), v - before.calls.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }
}

/// Prints one protocol line to the parent.
fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// A worker process: runs a server on the bench queue between `go` and the end of its input.
async fn worker(args: BenchArgs) -> anyhow::Result<()> {
    let backend = Backend::open(
        &args.sqlite,
        args.redis.as_deref(),
        args.postgres.as_deref(),
        args.namespace.as_deref(),
        false,
    )
    .await?;
    let tally = Arc::new(Tally::new());
    let server = server(backend.broker(), tally.clone(), args.concurrency)?;
    emit(json!({"event": "ready"}));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let report =
        |tally: &Tally| json!({"event": "report", "done": tally.done(), "cpu_s": cpu_seconds()});
    loop {
        match lines.next_line().await? {
            Some(l) if l.trim() == "go" => break,
            Some(l) if l.trim() == "report" => emit(report(&tally)),
            Some(_) => {}
            None => return Ok(()),
        }
    }
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = stop_rx.await;
    }));
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let done = tally.done();
                if done != last {
                    emit(json!({"event": "progress", "done": done}));
                    last = done;
                }
            }
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.trim() == "report" => emit(report(&tally)),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
    let _ = stop.send(());
    task.await??;
    let latencies = std::mem::take(&mut *tally.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    emit(json!({
        "event": "final",
        "done": tally.done(),
        "cpu_s": cpu_seconds(),
        "peak_rss_mb": peak_rss_mb(),
        "latencies_ms": latencies,
    }));
    Ok(())
}
