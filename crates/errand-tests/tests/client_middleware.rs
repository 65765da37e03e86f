//! Client middleware on a real SQLite file: every kind of push runs the chain, a change to the
//! payload is what gets stored and what the job sees, a middleware can stop a push (nothing
//! stored) or see the store's answer, and a push inside a SQLite transaction refuses a
//! middleware that would wait.

use errand::admin::{Admin, Order, QueueRange, SetName, SetRange};
use errand::sqlite::SqliteBroker;
use errand::{
    Batch, Client, ClientMiddleware, ClientNext, Error, Job, JobContext, JobOptions, JobResult,
    Outgoing, Push, PushKind, RawJob,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Adds `tenant: 7` to every job, and records each push's kind, its job count and whether
/// the store took it (read after `next.run`).
#[derive(Clone, Default)]
struct Tenant {
    seen: Arc<Mutex<Vec<(PushKind, usize, bool)>>>,
}

#[errand::async_trait]
impl ClientMiddleware for Tenant {
    async fn call(&self, jobs: &mut Outgoing, next: ClientNext<'_>) -> Result<(), Error> {
        for p in jobs.jobs_mut() {
            p.set("tenant", 7);
        }
        let result = next.run(jobs).await;
        self.seen
            .lock()
            .unwrap()
            .push((jobs.kind(), jobs.jobs().len(), jobs.stored()));
        result
    }
}

/// Refuses jobs whose first argument is "blocked": the push stores nothing.
struct Gate;

#[errand::async_trait]
impl ClientMiddleware for Gate {
    async fn call(&self, jobs: &mut Outgoing, next: ClientNext<'_>) -> Result<(), Error> {
        if jobs
            .jobs()
            .iter()
            .any(|p| p.args().first() == Some(&Value::from("blocked")))
        {
            return Ok(());
        }
        next.run(jobs).await
    }
}

/// Waits on a timer before going on: not allowed inside a SQLite transaction's push.
struct Slow;

#[errand::async_trait]
impl ClientMiddleware for Slow {
    async fn call(&self, jobs: &mut Outgoing, next: ClientNext<'_>) -> Result<(), Error> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        next.run(jobs).await
    }
}

#[derive(Serialize, Deserialize)]
struct Note(String);

impl Job for Note {
    const NAME: &'static str = "Note";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let tenant = cx.payload().get("tenant").cloned().unwrap_or(Value::Null);
        cx.data::<Arc<Mutex<Vec<Value>>>>()
            .expect("shared")
            .lock()
            .unwrap()
            .push(tenant);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Once(u32);

impl Job for Once {
    const NAME: &'static str = "Once";
    fn options() -> JobOptions {
        JobOptions::default().unique_for(Duration::from_secs(60))
    }
    async fn perform(self, _: &JobContext) -> JobResult {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Search(u32);

impl Job for Search {
    const NAME: &'static str = "Search";
    fn options() -> JobOptions {
        JobOptions::default().debounce(Duration::from_secs(30))
    }
    async fn perform(self, _: &JobContext) -> JobResult {
        Ok(())
    }
}

async fn open(dir: &tempfile::TempDir) -> (SqliteBroker, std::path::PathBuf) {
    let path = dir.path().join("jobs.sqlite");
    (SqliteBroker::open(&path).await.unwrap(), path)
}

async fn queued(b: &SqliteBroker, queue: &str) -> Vec<Value> {
    b.queue_page(QueueRange {
        queue,
        offset: 0,
        limit: 1000,
        order: Order::Asc,
    })
    .await
    .unwrap()
    .iter()
    .map(|raw| serde_json::from_str(raw).unwrap())
    .collect()
}

async fn scheduled(b: &SqliteBroker) -> Vec<Value> {
    b.set_page(SetRange {
        set: SetName::Scheduled,
        offset: 0,
        limit: 1000,
        order: Order::Asc,
    })
    .await
    .unwrap()
    .iter()
    .map(|e| serde_json::from_str(&e.raw).unwrap())
    .collect()
}

#[tokio::test]
async fn every_kind_of_push_runs_the_chain_and_stores_what_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, path) = open(&dir).await;
    let tenant = Tenant::default();
    let client = Client::new(broker.clone()).client_middleware(tenant.clone());

    let one = client.push(Note("a".into())).await.unwrap();
    client
        .push_in(Duration::from_secs(600), Note("later".into()))
        .await
        .unwrap();
    let bulk = client
        .push_bulk((0..3).map(|i| Note(format!("bulk {i}"))))
        .await
        .unwrap();
    client
        .push_raw(
            RawJob::new("RubyJob", vec![Value::from(1)]),
            Push::new().queue("ruby"),
        )
        .await
        .unwrap();
    client
        .push_active_job("RubyAjJob", &[Value::from(2)], "default")
        .await
        .unwrap();
    client.push(Once(1)).await.unwrap();
    let dup = client.push(Once(1)).await;
    assert!(
        matches!(dup, Err(Error::Duplicate { .. })),
        "the store's refusal reaches the caller through the chain: {dup:?}"
    );
    client.push(Search(1)).await.unwrap();
    {
        let mut db = errand::sqlite::rusqlite::Connection::open(&path).unwrap();
        let tx = db.transaction().unwrap();
        client.push_tx(&tx, Note("in tx".into())).unwrap();
        client
            .push_bulk_tx(&tx, [Note("tx 1".into()), Note("tx 2".into())])
            .unwrap();
        tx.commit().unwrap();
    }
    let batch = Batch::new(&client).description("b").open().await.unwrap();
    batch.push(Note("in batch".into())).await.unwrap();

    let seen = tenant.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (PushKind::One, 1, true),
            (PushKind::One, 1, true),
            (PushKind::Bulk, 3, true),
            (PushKind::One, 1, true),
            (PushKind::One, 1, true),
            (PushKind::Unique, 1, true),
            (PushKind::Unique, 1, false),
            (PushKind::Debounced, 1, true),
            (PushKind::Transaction, 1, true),
            (PushKind::Transaction, 2, true),
            (PushKind::Batch, 1, true),
        ],
        "one call of the chain per push, with its kind and jobs"
    );

    let mut stored = queued(&broker, "default").await;
    stored.extend(queued(&broker, "ruby").await);
    stored.extend(scheduled(&broker).await);
    // a, later, 3 bulk, raw, ActiveJob, unique, debounced (scheduled), 1 + 2 in tx, batch.
    assert_eq!(stored.len(), 13, "{stored:#?}");
    for p in &stored {
        assert_eq!(p["tenant"], 7, "every stored job carries the key: {p}");
    }
    let jids: Vec<&str> = stored.iter().filter_map(|p| p["jid"].as_str()).collect();
    assert!(jids.contains(&one.as_str()));
    for jid in &bulk {
        assert!(
            jids.contains(&jid.as_str()),
            "bulk jid {jid} returned and stored"
        );
    }
    for p in queued(&broker, "default").await {
        assert!(
            p.get("enqueued_at").is_some(),
            "queued jobs are stamped: {p}"
        );
    }
}

#[tokio::test]
async fn a_middleware_can_stop_a_push_and_the_job_sees_what_it_added() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = open(&dir).await;
    let client = Client::new(broker.clone())
        .client_middleware(Tenant::default())
        .client_middleware(Gate);

    let stopped = client.push(Note("blocked".into())).await;
    assert!(matches!(stopped, Err(Error::NotPushed)), "{stopped:?}");
    let stopped_bulk = client
        .push_bulk([Note("fine".into()), Note("blocked".into())])
        .await;
    assert!(matches!(stopped_bulk, Err(Error::NotPushed)));
    assert!(
        queued(&broker, "default").await.is_empty(),
        "a stopped push stores nothing, not even the bulk's other jobs"
    );

    client.push(Note("runs".into())).await.unwrap();
    let tenants: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let server = errand::Server::builder(broker.clone())
        .register::<Note>()
        .data(tenants.clone())
        .handle_signals(false)
        .build()
        .unwrap();
    server.drain().await.unwrap();
    assert_eq!(*tenants.lock().unwrap(), vec![Value::from(7)]);
}

#[tokio::test]
async fn a_transaction_push_refuses_a_middleware_that_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, path) = open(&dir).await;
    let client = Client::new(broker.clone()).client_middleware(Slow);
    // Outside a transaction a waiting middleware is fine.
    client.push(Note("async".into())).await.unwrap();
    let mut db = errand::sqlite::rusqlite::Connection::open(&path).unwrap();
    let tx = db.transaction().unwrap();
    let refused = client.push_tx(&tx, Note("in tx".into()));
    assert!(
        matches!(&refused, Err(Error::Config(m)) if m.contains("push_tx")),
        "{refused:?}"
    );
    tx.commit().unwrap();
    assert_eq!(
        queued(&broker, "default").await.len(),
        1,
        "the refused push wrote no row"
    );
}
