//! Unique jobs, the fenced mutex and the limiters over the memory backend (the same code runs
//! on Redis and SQLite; their lease and rate primitives pass the conformance suite).

use errand::{
    Admission, Client, Error, Job, JobContext, JobError, JobOptions, JobResult, Limiter, Mutex,
    UniqueUntil,
};
use errand_testing::{ManualClock, MemoryBroker, TestJobs};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// A unique job (for an hour) whose outcome is its argument: "ok", "fail", "discard", "die".
#[derive(Serialize, Deserialize, Clone)]
struct Charge(u64, String);

impl Job for Charge {
    const NAME: &'static str = "Charge";
    fn options() -> JobOptions {
        JobOptions::default()
            .unique_for(Duration::from_secs(3600))
            .retry(3)
    }
    fn unique_key(&self) -> Option<String> {
        // Duplicates are per order, whatever the outcome argument says.
        Some(format!("order-{}", self.0))
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        match self.1.as_str() {
            "fail" => Err(JobError::retry("gateway timeout")),
            "discard" => Err(JobError::discard("card declined")),
            "die" => Err(JobError::dead("fraud")),
            _ => Ok(()),
        }
    }
}

/// Unique per id (a named key), released when it starts: the first generation pushes the
/// next one while it runs, which must be accepted.
#[derive(Serialize, Deserialize)]
struct Reindex(u64, u32);

impl Job for Reindex {
    const NAME: &'static str = "Reindex";
    fn options() -> JobOptions {
        JobOptions::default()
            .unique_for(Duration::from_secs(60))
            .unique_until(UniqueUntil::Start)
    }
    fn unique_key(&self) -> Option<String> {
        Some(self.0.to_string())
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        if self.1 == 0 {
            match cx.client().push(Reindex(self.0, 1)).await {
                Ok(_) => {}
                Err(e) => return Err(JobError::dead(format!("the key was still held: {e}"))),
            }
        }
        Ok(())
    }
}

fn jobs() -> TestJobs {
    TestJobs::with_server(|s| {
        s.register::<Charge>()
            .register::<Reindex>()
            .retry_delay(|_| Duration::ZERO)
    })
}

fn duplicate_of(result: Result<String, Error>) -> String {
    match result {
        Err(Error::Duplicate { existing_jid }) => existing_jid,
        other => panic!("expected a duplicate, got {other:?}"),
    }
}

#[tokio::test]
async fn a_duplicate_push_returns_the_existing_job_until_it_succeeds() {
    let jobs = jobs();
    let client = jobs.client();
    let jid = client.push(Charge(1, "ok".into())).await.unwrap();
    assert_eq!(
        duplicate_of(client.push(Charge(1, "other".into())).await),
        jid
    );
    client.push(Charge(2, "ok".into())).await.unwrap();
    assert_eq!(jobs.enqueued_payloads().len(), 2);
    assert_eq!(jobs.drain().await.performed, 2);
    client
        .push(Charge(1, "ok".into()))
        .await
        .expect("free again after success");
}

#[tokio::test]
async fn the_key_is_kept_through_retries_and_freed_by_death_and_discard() {
    let jobs = jobs();
    let client = jobs.client();
    // Fails every attempt: held through three retries, freed when it dies.
    let failing = client.push(Charge(1, "fail".into())).await.unwrap();
    let discarded = client.push(Charge(2, "discard".into())).await.unwrap();
    let dying = client.push(Charge(3, "die".into())).await.unwrap();
    let first = jobs.drain().await;
    assert_eq!(
        first.performed, 6,
        "three jobs, the first retried three times"
    );
    assert_eq!(jobs.dead().len(), 2, "the exhausted and the dead-now job");
    for n in 1..=3 {
        let again = client.push(Charge(n, "ok".into())).await;
        assert!(
            again.is_ok(),
            "order {n} is free after its job ended: {again:?}"
        );
    }
    assert!(![failing, discarded, dying].iter().any(|j| j.is_empty()));
}

#[tokio::test]
async fn a_retrying_job_keeps_its_key() {
    let jobs = TestJobs::with_server(|s| s.register::<Charge>());
    let client = jobs.client();
    let jid = client.push(Charge(1, "fail".into())).await.unwrap();
    let drained = jobs.drain().await;
    assert_eq!((drained.performed, drained.failed), (1, 1));
    assert_eq!(jobs.retries().len(), 1, "waiting for its retry");
    assert_eq!(duplicate_of(client.push(Charge(1, "ok".into())).await), jid);
}

#[tokio::test]
async fn a_key_expires_by_itself_after_unique_for() {
    let jobs = jobs();
    let client = jobs.client();
    let jid = client.push(Charge(1, "ok".into())).await.unwrap();
    jobs.advance(Duration::from_secs(3599));
    assert_eq!(duplicate_of(client.push(Charge(1, "ok".into())).await), jid);
    jobs.advance(Duration::from_secs(2));
    client
        .push(Charge(1, "ok".into()))
        .await
        .expect("free after unique_for, though the first never ran (its worker died)");
}

#[tokio::test]
async fn unique_until_start_frees_the_key_when_the_job_starts() {
    let jobs = jobs();
    jobs.client().push(Reindex(1, 0)).await.unwrap();
    assert!(
        jobs.client().push(Reindex(1, 0)).await.is_err(),
        "queued: held"
    );
    let drained = jobs.drain().await;
    assert!(jobs.dead().is_empty(), "{:?}", jobs.dead());
    assert_eq!((drained.performed, drained.failed), (2, 0));
}

#[tokio::test]
async fn bulk_push_applies_uniqueness_per_job() {
    let jobs = jobs();
    let all: Vec<Charge> = (0..30).map(|i| Charge(i % 10, "ok".into())).collect();
    let jids = jobs.client().push_bulk(all).await.unwrap();
    assert_eq!(jids.len(), 30);
    assert_eq!(jobs.enqueued_payloads().len(), 10);
    assert_eq!(
        jids[0], jids[10],
        "a duplicate reports the job holding its key"
    );
}

#[tokio::test]
async fn mutex_tokens_grow_and_a_drop_releases() {
    let broker: Arc<dyn errand::broker::Broker> = Arc::new(MemoryBroker::new());
    let m = Mutex::new(broker.clone(), "order-1", Duration::from_secs(30));
    let a = m.try_lock().await.unwrap().expect("free");
    assert!(m.try_lock().await.unwrap().is_none(), "held");
    let first = a.token();
    drop(a);
    let b = m
        .lock(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("freed by the drop");
    assert!(b.token() > first);
    assert_eq!(m.holders().await.unwrap().len(), 1);
    assert!(b.release().await.unwrap());
    assert!(m.holders().await.unwrap().is_empty());
}

/// The fencing scenario: a holder stalls past its lease, a second holder takes the lock, and
/// the protected resource refuses the stalled holder's late write by its older token.
#[tokio::test]
async fn a_stalled_holder_is_fenced_off_by_its_token() {
    let clock = ManualClock::starting_now();
    let broker: Arc<dyn errand::broker::Broker> = Arc::new(MemoryBroker::with_manual_clock(&clock));
    let m = Mutex::new(broker, "ledger", Duration::from_secs(10));
    let mut stalled = m.try_lock().await.unwrap().unwrap();
    stalled.stop_renewing(); // a GC pause, a SIGSTOP: it stops renewing
    clock.advance(Duration::from_secs(11));
    let next = m
        .try_lock()
        .await
        .unwrap()
        .expect("the stalled lease ran out");
    assert!(next.token() > stalled.token());

    let resource = FencedStore::default();
    resource.write(next.token(), "from the new holder").unwrap();
    let late = resource.write(stalled.token(), "from the stalled holder");
    assert!(late.is_err(), "the late write is rejected: {late:?}");
    assert_eq!(resource.value(), "from the new holder");
}

/// A resource that remembers the newest fencing token and refuses older ones.
#[derive(Default)]
struct FencedStore(std::sync::Mutex<(u64, String)>);

impl FencedStore {
    fn write(&self, token: u64, value: &str) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        if token < s.0 {
            return Err(format!("stale token {token} < {}", s.0));
        }
        *s = (token, value.to_string());
        Ok(())
    }
    fn value(&self) -> String {
        self.0.lock().unwrap().1.clone()
    }
}

#[tokio::test]
async fn a_guard_learns_it_lost_the_lease() {
    let clock = ManualClock::starting_now();
    let broker: Arc<dyn errand::broker::Broker> = Arc::new(MemoryBroker::with_manual_clock(&clock));
    let m = Mutex::new(broker, "report", Duration::from_millis(300));
    let guard = m.try_lock().await.unwrap().unwrap();
    assert!(!guard.is_lost());
    // The backend's clock jumps past the lease before the next renewal (every 100 ms).
    clock.advance(Duration::from_secs(1));
    tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("the renewal notices within a period");
    assert!(guard.is_lost());
}

#[tokio::test]
async fn limiters_admit_up_to_their_limit_and_count_refusals() {
    let broker: Arc<dyn errand::broker::Broker> = Arc::new(MemoryBroker::new());
    let conc = Limiter::concurrent(broker.clone(), "api", 2, Duration::from_secs(30));
    let a = conc.acquire("acme").await.unwrap();
    let b = conc.acquire("acme").await.unwrap();
    assert!(matches!(a, Admission::Admitted(_)) && matches!(b, Admission::Admitted(_)));
    assert!(matches!(
        conc.acquire("acme").await.unwrap(),
        Admission::Over { retry_after: None }
    ));
    assert!(
        matches!(
            conc.acquire("globex").await.unwrap(),
            Admission::Admitted(_)
        ),
        "per key"
    );
    assert_eq!(conc.holders("acme").await.unwrap().len(), 2);
    if let Admission::Admitted(p) = a {
        p.release().await.unwrap();
    }
    assert!(matches!(
        conc.acquire("acme").await.unwrap(),
        Admission::Admitted(_)
    ));

    let bucket = Limiter::bucket(broker.clone(), "emails", 3, Duration::from_secs(3600));
    for _ in 0..3 {
        assert!(matches!(
            bucket.acquire("u1").await.unwrap(),
            Admission::Admitted(_)
        ));
    }
    match bucket.acquire("u1").await.unwrap() {
        Admission::Over {
            retry_after: Some(w),
        } => assert!(w <= Duration::from_secs(3600)),
        other => panic!("expected over the limit, got {other:?}"),
    }
    let hits = broker.refusal_counts().await.unwrap();
    assert_eq!(
        hits,
        vec![("api".to_string(), 1), ("emails".to_string(), 1)]
    );
}

/// Jobs over a limit snooze (run again later) instead of failing; with the manual clock the
/// snoozed job runs once the time has come.
#[tokio::test]
async fn a_job_over_its_limit_snoozes_and_runs_later() {
    #[derive(Serialize, Deserialize)]
    struct Sync(u64);
    impl Job for Sync {
        const NAME: &'static str = "Sync";
        async fn perform(self, cx: &JobContext) -> JobResult {
            let limiter = Limiter::bucket(
                cx.client().broker().clone(),
                "crm",
                2,
                Duration::from_secs(60),
            );
            let _permit = cx.limit(&limiter, "acme").await?;
            Ok(())
        }
    }
    let jobs = TestJobs::with_server(|s| s.register::<Sync>());
    let client: Client = jobs.client();
    for i in 0..3 {
        client.push(Sync(i)).await.unwrap();
    }
    let first = jobs.drain().await;
    assert_eq!(
        (first.performed, first.failed),
        (3, 0),
        "the third snoozed, not failed"
    );
    let scheduled = jobs.enqueued_payloads();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].get("snoozes"), Some(&1.into()));
    jobs.advance(Duration::from_secs(120));
    let later = jobs.drain().await;
    assert_eq!((later.performed, later.failed), (1, 0));
    assert!(jobs.enqueued_payloads().is_empty() && jobs.retries().is_empty());
}
