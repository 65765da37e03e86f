//! The ops commands: what the dashboard shows and does, from a terminal or a script
//! (`--json`). Built on the same admin layer as the dashboard (`errand::api`), so a job
//! retried here follows exactly the dashboard's rules.

use crate::backend::Backend;
use crate::{OpsArgs, OpsCommand, PeriodicCommand};
use anyhow::{Context, bail};
use errand::admin::{Admin, Order, SetName};
use errand::api::{self, Action, ActionConfig};
use errand::broker::RemoteSignal;
use errand::{Client, Push, RawJob};
use serde_json::{Value, json};
use std::time::Duration;

fn set_name(name: &str) -> anyhow::Result<SetName> {
    SetName::parse(name)
        .with_context(|| format!("no set named {name:?}: use retries, scheduled or dead"))
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Left-aligned columns, the widest cell setting each column's width.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let out: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn ago(epoch: f64) -> String {
    let d = errand_core::now() - epoch;
    let (n, unit) = match d.abs() {
        a if a < 60.0 => (a, "s"),
        a if a < 3600.0 => (a / 60.0, "min"),
        a if a < 86_400.0 => (a / 3600.0, "h"),
        a => (a / 86_400.0, "d"),
    };
    if d >= 0.0 {
        format!("{n:.0} {unit} ago")
    } else {
        format!("in {n:.0} {unit}")
    }
}

/// Runs an ops command.
pub async fn run(args: OpsArgs, command: OpsCommand) -> anyhow::Result<()> {
    let backend = Backend::open(
        &args.sqlite,
        args.redis.as_deref(),
        args.postgres.as_deref(),
        args.namespace.as_deref(),
        false,
    )
    .await?;
    let admin = backend.admin();
    let admin: &dyn Admin = &*admin;
    let actions = ActionConfig::default();
    match command {
        OpsCommand::Stats => {
            let o = api::overview(admin).await?;
            if args.json {
                return print_json(&serde_json::to_value(&o)?);
            }
            for (label, v) in [
                ("processed", o.processed),
                ("failed", o.failed),
                ("busy", o.busy),
                ("enqueued", o.enqueued),
                ("retries", o.retries),
                ("scheduled", o.scheduled),
                ("dead", o.dead),
                ("processes", o.processes),
                ("cancelled", o.cancelled),
                ("expired", o.expired),
            ] {
                println!("{label:<10} {v}");
            }
        }
        OpsCommand::Queues => {
            let queues = api::queues(admin).await?;
            if args.json {
                return print_json(&json!({ "queues": queues }));
            }
            let rows: Vec<Vec<String>> = queues
                .iter()
                .map(|q| {
                    vec![
                        q.name.clone(),
                        q.size.to_string(),
                        format!("{:.1} s", q.latency),
                        if q.paused { "paused" } else { "active" }.into(),
                    ]
                })
                .collect();
            table(&["QUEUE", "SIZE", "LATENCY", "STATUS"], &rows);
        }
        OpsCommand::Pause { queue } => {
            admin.set_paused(&queue, true).await?;
            println!("paused {queue}: servers stop fetching from it within a heartbeat");
        }
        OpsCommand::Resume { queue } => {
            admin.set_paused(&queue, false).await?;
            println!("resumed {queue}");
        }
        OpsCommand::Clear { queue } => {
            let n = admin.queue_clear(&queue).await?;
            println!("cleared {queue}: {n} jobs deleted");
        }
        OpsCommand::Jobs {
            set,
            filter,
            limit,
            desc,
        } => {
            let set = set_name(&set)?;
            let order = if desc { Order::Desc } else { Order::Asc };
            let page = api::set_page(admin, set, 1, limit, order, &filter.filter()).await?;
            if args.json {
                return print_json(&serde_json::to_value(&page)?);
            }
            let rows: Vec<Vec<String>> = page
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.key.clone(),
                        ago(e.score),
                        e.job.class.clone(),
                        e.job.queue.clone(),
                        api::preview(&e.job.args_preview(), 40),
                        api::preview(e.job.error_message.as_deref().unwrap_or(""), 50),
                    ]
                })
                .collect();
            table(&["KEY", "WHEN", "CLASS", "QUEUE", "ARGS", "ERROR"], &rows);
            println!(
                "{} of {} shown{}",
                page.entries.len(),
                page.total,
                if page.truncated {
                    " (search stopped at 20,000)"
                } else {
                    ""
                }
            );
        }
        OpsCommand::Act {
            action,
            set,
            keys,
            all,
            filter,
        } => {
            if action == "cancel" {
                return cancel(&*backend.broker(), set, keys, args.json).await;
            }
            let set = set_name(&set)?;
            let act = Action::parse(&action).with_context(|| {
                format!("no action {action:?}: use retry, delete, kill or cancel")
            })?;
            let n = if all {
                let a = api::apply_all(admin, actions, set, act, &filter.filter()).await?;
                if a.more {
                    eprintln!(
                        "stopped at {} jobs or 20 s of work; more remain: run it again",
                        api::MAX_ALL
                    );
                }
                a.done
            } else {
                if keys.is_empty() {
                    bail!(
                        "name the jobs by KEY (see `errand ops jobs {}`), or pass --all",
                        set.key()
                    );
                }
                let mut n = 0;
                for key in &keys {
                    match api::find(admin, set, key).await? {
                        Some(e) if api::apply(admin, actions, set, &e.raw, act).await? => n += 1,
                        _ => eprintln!("not found (it ran, moved or was deleted): {key}"),
                    }
                }
                n
            };
            println!("{n} job(s) {}", act.done());
        }
        OpsCommand::Enqueue {
            class,
            args: job_args,
            queue,
            delay,
        } => {
            let mut parsed = Vec::with_capacity(job_args.len());
            for a in &job_args {
                // Each argument is JSON when it parses as JSON, a string otherwise.
                parsed.push(serde_json::from_str(a).unwrap_or_else(|_| Value::String(a.clone())));
            }
            let client = Client::from_arc(backend.broker());
            let mut push = Push::new();
            if let Some(secs) = delay {
                push = push.delay(Duration::from_secs_f64(secs.max(0.0)));
            }
            let jid = client
                .push_raw(RawJob::new(class, parsed).queue(queue), push)
                .await?;
            println!("{jid}");
        }
        OpsCommand::Processes => {
            let (processes, work) = api::busy(admin).await?;
            if args.json {
                return print_json(&json!({"processes": processes, "work": work}));
            }
            let rows: Vec<Vec<String>> = processes
                .iter()
                .map(|p| {
                    vec![
                        p.identity.clone(),
                        p.queues.join(","),
                        format!("{}/{}", p.busy, p.concurrency),
                        ago(p.beat),
                        format!("{:.1} MB", p.rss_kb as f64 / 1024.0),
                        if p.quiet { "quiet" } else { "running" }.into(),
                    ]
                })
                .collect();
            table(
                &["IDENTITY", "QUEUES", "BUSY", "BEAT", "RSS", "STATUS"],
                &rows,
            );
            if !work.is_empty() {
                println!();
                let rows: Vec<Vec<String>> = work
                    .iter()
                    .map(|w| {
                        vec![
                            w.job.jid.clone(),
                            w.job.class.clone(),
                            w.identity.clone(),
                            ago(w.run_at),
                            w.progress
                                .as_ref()
                                .map(|p| format!("{}% {}", p.percent, api::preview(&p.message, 50)))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["JID", "CLASS", "PROCESS", "STARTED", "PROGRESS"], &rows);
            }
        }
        OpsCommand::Quiet { identity } => signal(admin, &identity, RemoteSignal::Quiet).await?,
        OpsCommand::Stop { identity } => signal(admin, &identity, RemoteSignal::Stop).await?,
        OpsCommand::Periodic { command } => {
            periodic(&*backend.broker(), command, args.json).await?
        }
        OpsCommand::Batches { limit, offset } => {
            batches(
                &*backend.broker(),
                offset as usize,
                limit as usize,
                args.json,
            )
            .await?
        }
        OpsCommand::Batch { bid } => batch(&*backend.broker(), &bid, args.json).await?,
    }
    Ok(())
}

/// `errand ops batches`.
async fn batches(
    broker: &dyn errand::broker::Broker,
    offset: usize,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let (list, total) = broker.batch_list(offset, limit).await?;
    if json {
        return print_json(&json!({ "total": total, "batches": list }));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            vec![
                b.bid.clone(),
                if b.workflow.is_some() {
                    "workflow"
                } else {
                    "batch"
                }
                .into(),
                b.description.clone(),
                ago(b.created_at),
                b.total.to_string(),
                b.pending.to_string(),
                b.failed.to_string(),
                b.dead.to_string(),
                b.cancelled.to_string(),
                b.state().into(),
            ]
        })
        .collect();
    table(
        &[
            "BID",
            "KIND",
            "DESCRIPTION",
            "CREATED",
            "TOTAL",
            "PENDING",
            "FAILED",
            "DEAD",
            "CANCELLED",
            "STATE",
        ],
        &rows,
    );
    println!("{} of {total}", list.len());
    Ok(())
}

/// `errand ops batch BID`.
async fn batch(broker: &dyn errand::broker::Broker, bid: &str, json: bool) -> anyhow::Result<()> {
    let Some(detail) = api::batch_detail(broker, bid).await? else {
        bail!("no batch {bid:?} (it never existed, or expired; see `errand ops batches`)");
    };
    if json {
        return print_json(&serde_json::to_value(&detail)?);
    }
    let status = &detail.batch;
    let when = |t: Option<f64>| t.map_or("-".to_string(), ago);
    println!("batch       {}", status.bid);
    if !status.description.is_empty() {
        println!("description {}", status.description);
    }
    if let Some(parent) = &status.parent {
        println!("parent      {parent}");
    }
    println!("state       {}", status.state());
    println!(
        "jobs        {} total, {} pending, {} failed, {} dead, {} cancelled, {} waiting",
        status.total, status.pending, status.failed, status.dead, status.cancelled, status.waiting
    );
    println!("created     {}", ago(status.created_at));
    println!("completed   {}", when(status.complete_at));
    println!("succeeded   {}", when(status.success_at));
    println!("first death {}", when(status.death_at));
    println!("callbacks   {}", status.callbacks.join(", "));
    match &detail.steps {
        Some(steps) => {
            let rows: Vec<Vec<String>> = steps
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.state.to_string(),
                        s.class.clone(),
                        s.after.join(", "),
                        s.jid.clone(),
                    ]
                })
                .collect();
            println!();
            table(&["STEP", "STATE", "CLASS", "AFTER", "JID"], &rows);
        }
        None => {
            for (state, list) in &detail.members {
                if !list.is_empty() {
                    println!("{state:<11} {}", list.join(" "));
                }
            }
        }
    }
    Ok(())
}

/// `errand ops job cancel JID…`: each job cancelled wherever it is, and where that was.
async fn cancel(
    broker: &dyn errand::broker::Broker,
    first: String,
    more: Vec<String>,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for jid in std::iter::once(first).chain(more) {
        let found = api::cancel(broker, &jid).await?;
        let (code, text) = api::cancel_outcome(&found);
        if !json {
            println!("{jid}: {text}");
        }
        out.push(json!({"jid": jid, "cancelled": code, "message": text}));
    }
    if json {
        print_json(&json!({ "cancelled": out }))?;
    }
    Ok(())
}

/// `errand ops periodic …`.
async fn periodic(
    broker: &dyn errand::broker::Broker,
    command: PeriodicCommand,
    json: bool,
) -> anyhow::Result<()> {
    let unknown =
        |name: &str| anyhow::anyhow!("no periodic entry {name:?} (see `errand ops periodic list`)");
    match command {
        PeriodicCommand::List => {
            let entries = api::periodic(broker, broker.now().await?).await?;
            if json {
                return print_json(&json!({ "periodic": entries }));
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.name.clone(),
                        format!("{} ({})", e.spec, e.zone),
                        e.class.clone(),
                        e.next_run.map_or("-".into(), ago),
                        e.last_run.map_or("never".into(), ago),
                        e.last_jid.clone().unwrap_or_else(|| "-".into()),
                        if e.paused { "paused" } else { "active" }.into(),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME", "SCHEDULE", "CLASS", "NEXT", "LAST", "LAST JID", "STATUS",
                ],
                &rows,
            );
        }
        PeriodicCommand::Pause { name } => {
            if !broker.periodic_pause(&name, true).await? {
                return Err(unknown(&name));
            }
            println!("paused {name}: no tick is enqueued until it is resumed");
        }
        PeriodicCommand::Resume { name } => {
            if !broker.periodic_pause(&name, false).await? {
                return Err(unknown(&name));
            }
            println!("resumed {name}");
        }
        PeriodicCommand::Run { name } => {
            match api::periodic_run_now(broker, &name, errand::WireProfile::default()).await? {
                Some(jid) => println!("{jid}"),
                None => return Err(unknown(&name)),
            }
        }
    }
    Ok(())
}

/// Signals one live process, or all of them for `all`.
async fn signal(admin: &dyn Admin, identity: &str, signal: RemoteSignal) -> anyhow::Result<()> {
    let n = api::send_signal(admin, identity, signal).await?;
    if n == 0 {
        bail!("no live process {identity:?} (see `errand ops processes`)");
    }
    println!(
        "{} sent to {n} process(es); taken at their next heartbeat",
        errand::admin::signal_name(signal)
    );
    Ok(())
}
