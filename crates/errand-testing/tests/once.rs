//! `JobContext::once` and `idempotency_key` over the memory backend: racing attempts of one
//! job never both run a step, a failed step runs again, outputs come back typed.

use errand::{Client, Data, JobContext, JobError, Payload, WireProfile};
use errand_testing::MemoryBroker;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A context for an attempt of job `jid` (two contexts with one jid are two attempts).
fn attempt(broker: &MemoryBroker, jid: &str) -> JobContext {
    let mut p = Payload::new("Charge", vec![42.into()], "default", WireProfile::V7);
    p.set("jid", jid);
    JobContext::new(p, Client::new(broker.clone()), Arc::new(Data::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_attempts_run_a_step_once_and_share_its_output() {
    let broker = MemoryBroker::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (cx, runs) = (attempt(&broker, "abc"), runs.clone());
            tokio::spawn(async move {
                cx.once("charge", async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // Long enough that the other attempts arrive while it runs.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, JobError>(format!("ch_{}", cx.idempotency_key("charge")))
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        let out = t.await.unwrap().expect("every attempt gets the output");
        assert_eq!(out, "ch_errand:abc:charge");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the step ran once");
}

#[tokio::test]
async fn a_failed_step_runs_again_and_steps_and_jobs_are_separate() {
    let broker = MemoryBroker::new();
    let runs = AtomicUsize::new(0);
    let cx = attempt(&broker, "j1");
    let failed: Result<u32, JobError> = cx
        .once("send", async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err(std::io::Error::other("smtp timeout"))
        })
        .await;
    assert!(failed.unwrap_err().message().contains("smtp timeout"));
    let again = attempt(&broker, "j1");
    let out: u32 = again
        .once("send", async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, JobError>(250)
        })
        .await
        .unwrap();
    assert_eq!(
        (out, runs.load(Ordering::SeqCst)),
        (250, 2),
        "the failed step ran again"
    );

    let third = attempt(&broker, "j1");
    let out: u32 = third
        .once("send", async { Ok::<_, JobError>(999) })
        .await
        .unwrap();
    assert_eq!(out, 250, "a completed step returns its recorded output");
    let other_step: u32 = third
        .once("receipt", async { Ok::<_, JobError>(1) })
        .await
        .unwrap();
    let other_job: u32 = attempt(&broker, "j2")
        .once("send", async { Ok::<_, JobError>(2) })
        .await
        .unwrap();
    assert_eq!((other_step, other_job), (1, 2));
}

#[tokio::test]
async fn idempotency_keys_are_per_job_and_scope_and_stable() {
    let broker = MemoryBroker::new();
    let a1 = attempt(&broker, "aaa");
    let a2 = attempt(&broker, "aaa");
    let b = attempt(&broker, "bbb");
    assert_eq!(a1.idempotency_key("charge"), a2.idempotency_key("charge"));
    assert_ne!(a1.idempotency_key("charge"), a1.idempotency_key("refund"));
    assert_ne!(a1.idempotency_key("charge"), b.idempotency_key("charge"));
}
