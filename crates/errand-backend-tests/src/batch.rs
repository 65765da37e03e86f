//! Cases for batches and workflow steps (`Coordination::batch_*`): the model in
//! [`errand_core::broker::batch`], one case per rule.

use errand_core::BrokerError;
use errand_core::broker::{
    BUILDING, BatchCallback, BatchEvent, BatchFired, BatchOutcome, BatchRecord, Broker,
    FailurePolicy, JobHead, MemberState, NewBatch, ScheduledJob, WaitingStep, child_member,
};
use std::time::Duration;

use crate::support::*;
use crate::{BackendFactory, TestBackend};

const AT: &str = "1700000000.25";

fn head(queue: &str, n: u64) -> JobHead {
    JobHead::new(queue, &unstamped(queue, n)).expect("an object")
}

/// Conformance job `n` of `queue` without its `enqueued_at` (as callbacks and steps are stored).
fn unstamped(queue: &str, n: u64) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&job(queue, n)).unwrap();
    v.as_object_mut().unwrap().remove("enqueued_at");
    v.to_string()
}

fn jid(queue: &str, n: u64) -> String {
    format!("{queue}-{n:024}")
}

fn callbacks(events: &[BatchEvent]) -> Vec<BatchCallback> {
    events
        .iter()
        .enumerate()
        .map(|(i, &event)| BatchCallback {
            event,
            job: head("callbacks", 900 + i as u64),
        })
        .collect()
}

fn new_batch<'a>(bid: &'a str, cbs: &'a [BatchCallback]) -> NewBatch<'a> {
    NewBatch {
        bid,
        parent: None,
        description: "conformance",
        callbacks: cbs,
        keep: Duration::from_secs(3600),
        waiting: &[],
        policy: FailurePolicy::CancelAll,
        workflow: None,
    }
}

async fn record(b: &dyn Broker, bid: &str, member: &str, outcome: BatchOutcome) -> BatchFired {
    step(
        "batch_record",
        b.batch_record(BatchRecord {
            bid,
            member,
            outcome,
            enqueued_at: AT,
        }),
    )
    .await
    .expect("batch_record")
}

async fn add(b: &dyn Broker, bid: &str, queue: &str, ns: &[u64]) {
    let jids: Vec<String> = ns.iter().map(|&n| jid(queue, n)).collect();
    let jids: Vec<&str> = jids.iter().map(String::as_str).collect();
    let now: Vec<_> = ns.iter().map(|&n| enqueue(queue, job(queue, n))).collect();
    step("batch_add", b.batch_add(bid, &jids, &now, &[]))
        .await
        .expect("batch_add");
}

fn fired(list: &[(&str, BatchEvent)]) -> Vec<(String, BatchEvent)> {
    list.iter().map(|(b, e)| (b.to_string(), *e)).collect()
}

/// The callback job `i` (900 + its index in `callbacks`) as the backend pushes it.
fn pushed_callback(i: u64) -> String {
    head("callbacks", 900 + i).close(AT)
}

/// Members are counted by state; a retry of a member already counted, and a repeated record,
/// change nothing; the `complete` and `success` callbacks are pushed once, closed with the
/// record's `enqueued_at`, when the last pending member succeeds.
pub async fn batch_counts_members_and_fires_callbacks_once(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    assert!(b.capabilities().batches, "{n}");
    let cbs = callbacks(&[BatchEvent::Complete, BatchEvent::Success, BatchEvent::Death]);
    b.batch_create(&new_batch("b1", &cbs)).await.unwrap();
    b.batch_create(&new_batch("b1", &cbs))
        .await
        .expect("creating it again changes nothing");
    add(b, "b1", "q", &[1, 2]).await;
    let later = ScheduledJob {
        at: errand_core::now() + 3600.0,
        payload: job("q", 3),
    };
    b.batch_add("b1", &[&jid("q", 3)], &[], &[later])
        .await
        .unwrap();
    assert_eq!(
        inspect.queue("q").await,
        vec![job("q", 1), job("q", 2)],
        "{n}"
    );
    assert_eq!(inspect.set("schedule").await.len(), 1, "{n}");
    let s = b.batch_status("b1").await.unwrap().expect("exists");
    assert_eq!((s.total, s.pending, s.failed, s.dead), (3, 3, 0, 0), "{n}");
    assert!(s.building && s.complete_at.is_none(), "{n}");
    assert_eq!(s.description, "conformance", "{n}");
    assert!(s.created_at > 1.6e9, "{n}: created on the backend's clock");
    assert_eq!(s.callbacks, vec!["complete", "success", "death"], "{n}");

    assert_eq!(
        record(b, "b1", BUILDING, BatchOutcome::Succeeded).await,
        BatchFired::default(),
        "{n}"
    );
    assert_eq!(
        record(b, "b1", &jid("q", 1), BatchOutcome::Failed).await,
        BatchFired::default(),
        "{n}"
    );
    assert_eq!(
        record(b, "b1", &jid("q", 1), BatchOutcome::Failed).await,
        BatchFired::default(),
        "{n}"
    );
    let s = b.batch_status("b1").await.unwrap().unwrap();
    assert_eq!((s.pending, s.failed, s.building), (3, 1, false), "{n}");
    assert_eq!(
        b.batch_members("b1", MemberState::Failed, 0, 10)
            .await
            .unwrap(),
        vec![jid("q", 1)],
        "{n}"
    );
    record(b, "b1", &jid("q", 1), BatchOutcome::Succeeded).await;
    record(b, "b1", &jid("q", 1), BatchOutcome::Succeeded).await;
    record(b, "b1", &jid("q", 1), BatchOutcome::Failed).await; // a stale attempt
    record(b, "b1", &jid("q", 2), BatchOutcome::Succeeded).await;
    let s = b.batch_status("b1").await.unwrap().unwrap();
    assert_eq!((s.total, s.pending, s.failed, s.dead), (3, 1, 0, 0), "{n}");
    assert!(
        inspect.queue("callbacks").await.is_empty(),
        "{n}: not before the last"
    );
    let last = record(b, "b1", &jid("q", 3), BatchOutcome::Succeeded).await;
    assert_eq!(
        last.callbacks,
        fired(&[("b1", BatchEvent::Complete), ("b1", BatchEvent::Success)]),
        "{n}"
    );
    assert_eq!(
        record(b, "b1", &jid("q", 3), BatchOutcome::Succeeded).await,
        BatchFired::default(),
        "{n}: once"
    );
    let mut pushed = inspect.queue("callbacks").await;
    pushed.sort();
    let mut want = vec![pushed_callback(0), pushed_callback(1)];
    want.sort();
    assert_eq!(pushed, want, "{n}: pushed byte for byte with enqueued_at");
    assert!(
        inspect
            .known_queues()
            .await
            .contains(&"callbacks".to_string()),
        "{n}"
    );
    let s = b.batch_status("b1").await.unwrap().unwrap();
    assert_eq!((s.pending, s.failed, s.dead), (0, 0, 0), "{n}");
    assert!(
        s.complete_at.is_some() && s.success_at.is_some() && s.death_at.is_none(),
        "{n}"
    );
    assert!(s.complete_at.unwrap() >= s.created_at, "{n}");
    assert!(b.batch_status("nope").await.unwrap().is_none(), "{n}");
    assert_eq!(
        record(b, "nope", "x", BatchOutcome::Succeeded).await,
        BatchFired::default(),
        "{n}: a batch that is gone is ignored"
    );
}

/// The first death pushes the `death` callback once; the batch completes with its dead member
/// (no `success`); when the dead job is retried by hand and succeeds, `success` is pushed.
pub async fn batch_death_fires_once_and_success_follows_a_dead_job_that_succeeds(
    f: &impl BackendFactory,
) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let cbs = callbacks(&[BatchEvent::Complete, BatchEvent::Success, BatchEvent::Death]);
    b.batch_create(&new_batch("b1", &cbs)).await.unwrap();
    add(b, "b1", "q", &[1, 2, 3]).await;
    record(b, "b1", BUILDING, BatchOutcome::Succeeded).await;
    let death = record(b, "b1", &jid("q", 1), BatchOutcome::Died).await;
    assert_eq!(death.callbacks, fired(&[("b1", BatchEvent::Death)]), "{n}");
    assert_eq!(
        inspect.queue("callbacks").await,
        vec![pushed_callback(2)],
        "{n}"
    );
    assert_eq!(
        record(b, "b1", &jid("q", 1), BatchOutcome::Died).await,
        BatchFired::default(),
        "{n}"
    );
    assert_eq!(
        record(b, "b1", &jid("q", 2), BatchOutcome::Died).await,
        BatchFired::default(),
        "{n}: death is the first death only"
    );
    let s = b.batch_status("b1").await.unwrap().unwrap();
    assert_eq!((s.pending, s.dead), (1, 2), "{n}");
    assert!(s.death_at.is_some(), "{n}");
    assert_eq!(
        b.batch_members("b1", MemberState::Dead, 0, 10)
            .await
            .unwrap(),
        vec![jid("q", 1), jid("q", 2)],
        "{n}"
    );
    let done = record(b, "b1", &jid("q", 3), BatchOutcome::Succeeded).await;
    assert_eq!(
        done.callbacks,
        fired(&[("b1", BatchEvent::Complete)]),
        "{n}"
    );
    record(b, "b1", &jid("q", 1), BatchOutcome::Succeeded).await;
    let s = b.batch_status("b1").await.unwrap().unwrap();
    assert!(s.success_at.is_none() && s.dead == 1, "{n}");
    let success = record(b, "b1", &jid("q", 2), BatchOutcome::Succeeded).await;
    assert_eq!(
        success.callbacks,
        fired(&[("b1", BatchEvent::Success)]),
        "{n}"
    );
    assert_eq!(
        inspect.queue("callbacks").await.len(),
        3,
        "{n}: death, complete, success"
    );
}

/// A batch does not complete while it is being filled, even when every job added so far has
/// finished; sealing it then completes it. An empty batch completes when sealed.
pub async fn batch_completes_only_once_sealed(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let cbs = callbacks(&[BatchEvent::Complete, BatchEvent::Success]);
    b.batch_create(&new_batch("b1", &cbs)).await.unwrap();
    add(b, "b1", "q", &[1]).await;
    assert_eq!(
        record(b, "b1", &jid("q", 1), BatchOutcome::Succeeded).await,
        BatchFired::default(),
        "{n}"
    );
    add(b, "b1", "q", &[2]).await;
    record(b, "b1", &jid("q", 2), BatchOutcome::Succeeded).await;
    assert!(inspect.queue("callbacks").await.is_empty(), "{n}");
    let sealed = record(b, "b1", BUILDING, BatchOutcome::Succeeded).await;
    assert_eq!(
        sealed.callbacks,
        fired(&[("b1", BatchEvent::Complete), ("b1", BatchEvent::Success)]),
        "{n}"
    );
    b.batch_create(&new_batch("empty", &[])).await.unwrap();
    let sealed = record(b, "empty", BUILDING, BatchOutcome::Succeeded).await;
    assert!(sealed.callbacks.is_empty(), "{n}: no callbacks to push");
    let s = b.batch_status("empty").await.unwrap().unwrap();
    assert!(s.complete_at.is_some() && s.success_at.is_some(), "{n}");
    assert_eq!(s.total, 0, "{n}");
}

/// A completed batch, or one that does not exist, takes no new members and stores nothing.
pub async fn batch_add_is_refused_once_complete(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    b.batch_create(&new_batch("b1", &[])).await.unwrap();
    record(b, "b1", BUILDING, BatchOutcome::Succeeded).await;
    let refused = b
        .batch_add("b1", &[&jid("q", 1)], &[enqueue("q", job("q", 1))], &[])
        .await;
    assert!(
        matches!(refused, Err(BrokerError::BatchClosed(ref bid)) if bid == "b1"),
        "{n}: {refused:?}"
    );
    let refused = b
        .batch_add("nope", &[&jid("q", 1)], &[enqueue("q", job("q", 1))], &[])
        .await;
    assert!(matches!(refused, Err(BrokerError::BatchClosed(_))), "{n}");
    let mut child = new_batch("c1", &[]);
    child.parent = Some("b1");
    assert!(
        matches!(
            b.batch_create(&child).await,
            Err(BrokerError::BatchClosed(_))
        ),
        "{n}"
    );
    assert!(b.batch_status("c1").await.unwrap().is_none(), "{n}");
    assert!(inspect.queue("q").await.is_empty(), "{n}");
}

/// A child batch is a pending member of its parent: the parent completes after it, in the
/// same step as the child's last record (children's callbacks first); a child that completes
/// with a dead member is a dead member of its parent (the parent's `death` fires, and its
/// `success` does not), until the dead job succeeds.
pub async fn nested_batch_completes_after_its_child(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let cbs = callbacks(&[BatchEvent::Complete, BatchEvent::Success, BatchEvent::Death]);
    b.batch_create(&new_batch("p", &cbs)).await.unwrap();
    let mut child = new_batch("c", &cbs);
    child.parent = Some("p");
    b.batch_create(&child).await.unwrap();
    let mut grandchild = new_batch("g", &cbs);
    grandchild.parent = Some("c");
    b.batch_create(&grandchild).await.unwrap();
    add(b, "g", "q", &[1]).await;
    add(b, "c", "q", &[2]).await;
    for bid in ["g", "c", "p"] {
        assert_eq!(
            record(b, bid, BUILDING, BatchOutcome::Succeeded).await,
            BatchFired::default(),
            "{n}"
        );
    }
    let p = b.batch_status("p").await.unwrap().unwrap();
    assert_eq!((p.total, p.pending), (1, 1), "{n}: the child");
    assert_eq!(
        b.batch_members("p", MemberState::Pending, 0, 10)
            .await
            .unwrap(),
        vec![child_member("c")],
        "{n}"
    );
    assert_eq!(
        b.batch_status("g")
            .await
            .unwrap()
            .unwrap()
            .parent
            .as_deref(),
        Some("c"),
        "{n}"
    );
    assert_eq!(
        record(b, "c", &jid("q", 2), BatchOutcome::Succeeded).await,
        BatchFired::default(),
        "{n}"
    );
    let last = record(b, "g", &jid("q", 1), BatchOutcome::Succeeded).await;
    assert_eq!(
        last.callbacks,
        fired(&[
            ("g", BatchEvent::Complete),
            ("g", BatchEvent::Success),
            ("c", BatchEvent::Complete),
            ("c", BatchEvent::Success),
            ("p", BatchEvent::Complete),
            ("p", BatchEvent::Success),
        ]),
        "{n}"
    );
    assert_eq!(inspect.queue("callbacks").await.len(), 6, "{n}");

    // A child that completes with a dead member is a dead member of its parent.
    b.batch_create(&new_batch("p2", &cbs)).await.unwrap();
    let mut child = new_batch("c2", &cbs);
    child.parent = Some("p2");
    b.batch_create(&child).await.unwrap();
    add(b, "c2", "q", &[3]).await;
    record(b, "c2", BUILDING, BatchOutcome::Succeeded).await;
    record(b, "p2", BUILDING, BatchOutcome::Succeeded).await;
    let died = record(b, "c2", &jid("q", 3), BatchOutcome::Died).await;
    assert_eq!(
        died.callbacks,
        fired(&[
            ("c2", BatchEvent::Death),
            ("c2", BatchEvent::Complete),
            ("p2", BatchEvent::Death),
            ("p2", BatchEvent::Complete),
        ]),
        "{n}"
    );
    let p2 = b.batch_status("p2").await.unwrap().unwrap();
    assert_eq!((p2.pending, p2.dead), (0, 1), "{n}");
    // The dead job retried by hand succeeds: the child succeeds, and so does the parent.
    let healed = record(b, "c2", &jid("q", 3), BatchOutcome::Succeeded).await;
    assert_eq!(
        healed.callbacks,
        fired(&[("c2", BatchEvent::Success), ("p2", BatchEvent::Success)]),
        "{n}"
    );
}

/// The last members of a batch recorded at the same instant from many tasks push each
/// callback exactly once.
pub async fn concurrent_last_records_fire_callbacks_once(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let n = f.name();
    let cbs = callbacks(&[BatchEvent::Complete, BatchEvent::Success]);
    broker.batch_create(&new_batch("b1", &cbs)).await.unwrap();
    let ns: Vec<u64> = (1..=100).collect();
    add(&*broker, "b1", "q", &ns).await;
    record(&*broker, "b1", BUILDING, BatchOutcome::Succeeded).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(ns.len()));
    let tasks: Vec<_> = ns
        .iter()
        .map(|&i| {
            let (broker, barrier) = (broker.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                record(&*broker, "b1", &jid("q", i), BatchOutcome::Succeeded).await
            })
        })
        .collect();
    let mut fired_total = Vec::new();
    for t in tasks {
        fired_total.extend(t.await.unwrap().callbacks);
    }
    fired_total.sort_by_key(|(_, e)| e.as_str());
    assert_eq!(
        fired_total,
        fired(&[("b1", BatchEvent::Complete), ("b1", BatchEvent::Success)]),
        "{n}"
    );
    assert_eq!(inspect.queue("callbacks").await.len(), 2, "{n}");
    let s = broker.batch_status("b1").await.unwrap().unwrap();
    assert_eq!((s.total, s.pending), (100, 0), "{n}");
}

fn step_job(name: &str, after: &[&str]) -> WaitingStep {
    let n = name.as_bytes()[0] as u64;
    WaitingStep {
        jid: jid("w", n),
        job: head("w", n),
        after: after
            .iter()
            .map(|a| jid("w", a.as_bytes()[0] as u64))
            .collect(),
    }
}

fn wjid(name: &str) -> String {
    jid("w", name.as_bytes()[0] as u64)
}

async fn add_root(b: &dyn Broker, bid: &str, name: &str) {
    add(b, bid, "w", &[name.as_bytes()[0] as u64]).await;
}

/// Workflow steps wait for all their parents: in a diamond a → (b, c) → d, the record of `a`
/// pushes b and c (closed with the record's `enqueued_at`), and d is pushed by the later of
/// b and c; the workflow then completes and succeeds.
pub async fn workflow_steps_wait_for_their_parents(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let cbs = callbacks(&[BatchEvent::Complete, BatchEvent::Success]);
    let waiting = [
        step_job("b", &["a"]),
        step_job("c", &["a"]),
        step_job("d", &["b", "c"]),
    ];
    let mut wf = new_batch("wf", &cbs);
    wf.waiting = &waiting;
    wf.workflow = Some(r#"{"steps":[]}"#);
    b.batch_create(&wf).await.unwrap();
    add_root(b, "wf", "a").await;
    record(b, "wf", BUILDING, BatchOutcome::Succeeded).await;
    let s = b.batch_status("wf").await.unwrap().unwrap();
    assert_eq!((s.total, s.pending, s.waiting), (4, 4, 3), "{n}");
    assert_eq!(s.workflow.as_deref(), Some(r#"{"steps":[]}"#), "{n}");
    let mut w = b
        .batch_members("wf", MemberState::Waiting, 0, 10)
        .await
        .unwrap();
    w.sort();
    assert_eq!(w, vec![wjid("b"), wjid("c"), wjid("d")], "{n}");
    assert_eq!(inspect.queue("w").await, vec![job("w", b'a' as u64)], "{n}");
    let a = record(b, "wf", &wjid("a"), BatchOutcome::Succeeded).await;
    assert_eq!(a.released, 2, "{n}");
    let mut q = inspect.queue("w").await;
    q.sort();
    let mut want = vec![
        job("w", b'a' as u64),
        head("w", b'b' as u64).close(AT),
        head("w", b'c' as u64).close(AT),
    ];
    want.sort();
    assert_eq!(q, want, "{n}");
    assert_eq!(
        record(b, "wf", &wjid("b"), BatchOutcome::Succeeded)
            .await
            .released,
        0,
        "{n}"
    );
    assert_eq!(
        record(b, "wf", &wjid("b"), BatchOutcome::Succeeded)
            .await
            .released,
        0,
        "{n}: once"
    );
    assert_eq!(
        record(b, "wf", &wjid("c"), BatchOutcome::Succeeded)
            .await
            .released,
        1,
        "{n}"
    );
    assert_eq!(
        record(b, "wf", &wjid("c"), BatchOutcome::Succeeded)
            .await
            .released,
        0,
        "{n}: once"
    );
    assert_eq!(inspect.queue("w").await.len(), 4, "{n}: d pushed once");
    let d = record(b, "wf", &wjid("d"), BatchOutcome::Succeeded).await;
    assert_eq!(
        d.callbacks,
        fired(&[("wf", BatchEvent::Complete), ("wf", BatchEvent::Success)]),
        "{n}"
    );
}

/// A dead step under `CancelDependents` cancels only the steps that need it (directly or not);
/// an independent branch runs on; under `CancelAll` every step not pushed yet is cancelled. The
/// workflow completes (without success) either way.
pub async fn workflow_failure_policies_cancel_steps(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let cbs = callbacks(&[BatchEvent::Complete, BatchEvent::Success, BatchEvent::Death]);
    // a → (b, c) → d → e; x → y (independent)
    let waiting = [
        step_job("b", &["a"]),
        step_job("c", &["a"]),
        step_job("d", &["b", "c"]),
        step_job("e", &["d"]),
        step_job("y", &["x"]),
    ];
    for (bid, policy) in [
        ("dep", FailurePolicy::CancelDependents),
        ("all", FailurePolicy::CancelAll),
    ] {
        let mut wf = new_batch(bid, &cbs);
        wf.waiting = &waiting;
        wf.policy = policy;
        b.batch_create(&wf).await.unwrap();
        // The two workflows share jids; each counts its own members.
        add_root(b, bid, "a").await;
        add_root(b, bid, "x").await;
        record(b, bid, BUILDING, BatchOutcome::Succeeded).await;
        assert_eq!(
            b.batch_status(bid).await.unwrap().unwrap().policy,
            policy.as_str(),
            "{n}"
        );
    }
    assert_eq!(inspect.queue("w").await.len(), 4, "{n}: the roots of both");
    // CancelDependents: b dies → d and e are cancelled; c, x and y go on.
    record(b, "dep", &wjid("a"), BatchOutcome::Succeeded).await;
    let died = record(b, "dep", &wjid("b"), BatchOutcome::Died).await;
    assert_eq!(
        (died.cancelled, died.callbacks.clone()),
        (2, fired(&[("dep", BatchEvent::Death)])),
        "{n}"
    );
    let mut c = b
        .batch_members("dep", MemberState::Cancelled, 0, 10)
        .await
        .unwrap();
    c.sort();
    assert_eq!(c, vec![wjid("d"), wjid("e")], "{n}");
    assert_eq!(
        record(b, "dep", &wjid("c"), BatchOutcome::Succeeded)
            .await
            .released,
        0,
        "{n}: d is cancelled"
    );
    assert_eq!(
        record(b, "dep", &wjid("x"), BatchOutcome::Succeeded)
            .await
            .released,
        1,
        "{n}: y runs"
    );
    let done = record(b, "dep", &wjid("y"), BatchOutcome::Succeeded).await;
    assert_eq!(
        done.callbacks,
        fired(&[("dep", BatchEvent::Complete)]),
        "{n}"
    );
    let s = b.batch_status("dep").await.unwrap().unwrap();
    assert_eq!(
        (s.pending, s.dead, s.cancelled, s.waiting),
        (0, 1, 2, 0),
        "{n}"
    );
    // CancelAll: b dies → d, e and y (not pushed yet) are cancelled.
    record(b, "all", &wjid("a"), BatchOutcome::Succeeded).await;
    let died = record(b, "all", &wjid("b"), BatchOutcome::Died).await;
    assert_eq!(died.cancelled, 3, "{n}");
    assert_eq!(
        record(b, "all", &wjid("x"), BatchOutcome::Succeeded)
            .await
            .released,
        0,
        "{n}"
    );
    let done = record(b, "all", &wjid("c"), BatchOutcome::Succeeded).await;
    assert_eq!(
        done.callbacks,
        fired(&[("all", BatchEvent::Complete)]),
        "{n}"
    );
    let s = b.batch_status("all").await.unwrap().unwrap();
    assert_eq!((s.pending, s.dead, s.cancelled), (0, 1, 3), "{n}");
}

/// Batches are listed newest first with a total; members list by state, sorted and paged.
pub async fn batches_are_listed_and_paged(f: &impl BackendFactory) {
    let TestBackend { broker, .. } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    for bid in ["b1", "b2", "b3"] {
        b.batch_create(&new_batch(bid, &[])).await.unwrap();
    }
    add(b, "b2", "q", &[1, 2, 3, 4, 5]).await;
    let (all, total) = b.batch_list(0, 10).await.unwrap();
    assert_eq!(total, 3, "{n}");
    let mut bids: Vec<_> = all.iter().map(|s| s.bid.clone()).collect();
    assert!(
        all.windows(2).all(|w| w[0].created_at >= w[1].created_at),
        "{n}: newest first"
    );
    bids.sort();
    assert_eq!(bids, vec!["b1", "b2", "b3"], "{n}");
    let (page, total) = b.batch_list(1, 1).await.unwrap();
    assert_eq!((page.len(), total), (1, 3), "{n}");
    assert_eq!(page[0].bid, all[1].bid, "{n}");
    assert_eq!(
        b.batch_members("b2", MemberState::Pending, 1, 2)
            .await
            .unwrap(),
        vec![jid("q", 2), jid("q", 3)],
        "{n}: sorted, paged, without `building`"
    );
    assert!(
        b.batch_members("b2", MemberState::Dead, 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "{n}"
    );
}

/// A completed batch is kept for its `keep`, then it is gone (status `None`, out of the list).
pub async fn completed_batches_expire(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let mut short = new_batch("short", &[]);
    short.keep = Duration::from_secs(1);
    b.batch_create(&short).await.unwrap();
    add(b, "short", "q", &[1]).await;
    b.batch_create(&new_batch("open", &[])).await.unwrap();
    record(b, "short", BUILDING, BatchOutcome::Succeeded).await;
    record(b, "short", &jid("q", 1), BatchOutcome::Succeeded).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        inspect.let_time_pass(Duration::from_secs(2)).await;
        // SQL backends prune in the promotion turn.
        let _ = b
            .promote_due(errand_core::now(), errand_core::WireProfile::V7)
            .await;
        if b.batch_status("short").await.unwrap().is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n}: the completed batch never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (list, total) = b.batch_list(0, 10).await.unwrap();
    assert_eq!(total, 1, "{n}");
    assert_eq!(list[0].bid, "open", "{n}: an open batch is kept");
}

/// Records that no attempt can make are ignored, the same on every backend: `failed` or `died`
/// for `building` (only a success seals), any record for a workflow step not pushed yet or for
/// a cancelled one, and any record for a jid that was never a member. Adding a jid that is
/// already a member (pending, dead, cancelled or waiting) does not count it again, although its
/// job is stored.
pub async fn batch_ignores_records_no_attempt_can_make(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let cbs = callbacks(&[BatchEvent::Complete, BatchEvent::Death]);
    let waiting = [step_job("b", &["a"]), step_job("c", &["b"])];
    let mut wf = new_batch("wf", &cbs);
    wf.waiting = &waiting;
    b.batch_create(&wf).await.unwrap();
    add_root(b, "wf", "a").await;
    add_root(b, "wf", "x").await;
    let none = BatchFired::default();
    for outcome in [BatchOutcome::Failed, BatchOutcome::Died] {
        assert_eq!(
            record(b, "wf", BUILDING, outcome).await,
            none,
            "{n}: {outcome:?}"
        );
    }
    for outcome in [
        BatchOutcome::Succeeded,
        BatchOutcome::Failed,
        BatchOutcome::Died,
    ] {
        assert_eq!(
            record(b, "wf", &wjid("b"), outcome).await,
            none,
            "{n}: waiting b, {outcome:?}"
        );
        assert_eq!(
            record(b, "wf", "stranger", outcome).await,
            none,
            "{n}: {outcome:?}"
        );
    }
    let s = b.batch_status("wf").await.unwrap().unwrap();
    assert_eq!(
        (s.total, s.pending, s.failed, s.dead, s.waiting, s.building),
        (4, 4, 0, 0, 2, true),
        "{n}: nothing changed"
    );
    assert_eq!(inspect.queue("w").await.len(), 2, "{n}: only the roots");
    // a dies: CancelAll cancels b and c.
    record(b, "wf", BUILDING, BatchOutcome::Succeeded).await;
    let died = record(b, "wf", &wjid("a"), BatchOutcome::Died).await;
    assert_eq!(died.cancelled, 2, "{n}");
    for outcome in [
        BatchOutcome::Succeeded,
        BatchOutcome::Failed,
        BatchOutcome::Died,
    ] {
        assert_eq!(
            record(b, "wf", &wjid("c"), outcome).await,
            none,
            "{n}: cancelled c, {outcome:?}"
        );
    }
    // Adding members again (dead a, cancelled c, pending x) counts nothing new.
    add_root(b, "wf", "a").await;
    add_root(b, "wf", "x").await;
    let again = [wjid("c")];
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    b.batch_add("wf", &again, &[enqueue("w", job("w", b'c' as u64))], &[])
        .await
        .unwrap();
    let s = b.batch_status("wf").await.unwrap().unwrap();
    assert_eq!(
        (s.total, s.pending, s.dead, s.cancelled),
        (4, 1, 1, 2),
        "{n}: re-adding counts nothing"
    );
    let done = record(b, "wf", &wjid("x"), BatchOutcome::Succeeded).await;
    assert_eq!(
        done.callbacks,
        fired(&[("wf", BatchEvent::Complete)]),
        "{n}"
    );
}

/// A waiting job of a batch cancelled by jid (from its queue, the schedule or the retries) will
/// not run: it is dead to its batch, which then completes instead of waiting for it.
pub async fn cancelling_a_waiting_batch_job_counts_it_dead(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let cbs = callbacks(&[BatchEvent::Complete, BatchEvent::Death]);
    b.batch_create(&new_batch("b1", &cbs)).await.unwrap();
    let with_bid = |i: u64| {
        let mut v: serde_json::Value = serde_json::from_str(&job("q", i)).unwrap();
        v["bid"] = "b1".into();
        v.to_string()
    };
    let later = ScheduledJob {
        at: errand_core::now() + 3600.0,
        payload: with_bid(2),
    };
    b.batch_add(
        "b1",
        &[&jid("q", 1), &jid("q", 2)],
        &[enqueue("q", with_bid(1))],
        &[later],
    )
    .await
    .unwrap();
    record(b, "b1", BUILDING, BatchOutcome::Succeeded).await;
    assert!(
        matches!(
            b.cancel_job(&jid("q", 1), Duration::from_secs(60))
                .await
                .unwrap(),
            errand_core::broker::Cancelled::Queued(_)
        ),
        "{n}"
    );
    let s = b.batch_status("b1").await.unwrap().unwrap();
    assert_eq!((s.pending, s.dead), (1, 1), "{n}");
    assert!(s.death_at.is_some(), "{n}");
    assert_eq!(
        b.cancel_job(&jid("q", 2), Duration::from_secs(60))
            .await
            .unwrap(),
        errand_core::broker::Cancelled::Scheduled,
        "{n}"
    );
    let s = b.batch_status("b1").await.unwrap().unwrap();
    assert_eq!((s.pending, s.dead), (0, 2), "{n}");
    assert!(
        s.complete_at.is_some(),
        "{n}: completes without the cancelled jobs"
    );
    assert_eq!(
        inspect.queue("callbacks").await.len(),
        2,
        "{n}: death and complete"
    );
    assert!(inspect.queue("q").await.is_empty(), "{n}");
}

/// Many records in one call apply in order, each as alone: a repeated one changes nothing, and
/// the one that completes the batch reports its callbacks.
pub async fn batch_records_in_one_call_apply_in_order(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let cbs = callbacks(&[BatchEvent::Complete, BatchEvent::Success]);
    b.batch_create(&new_batch("b1", &cbs)).await.unwrap();
    add(b, "b1", "q", &[1, 2]).await;
    let (j1, j2) = (jid("q", 1), jid("q", 2));
    let records = [
        (BUILDING, BatchOutcome::Succeeded),
        (j1.as_str(), BatchOutcome::Succeeded),
        (j1.as_str(), BatchOutcome::Succeeded),
        (j2.as_str(), BatchOutcome::Failed),
        (j2.as_str(), BatchOutcome::Succeeded),
    ]
    .map(|(member, outcome)| BatchRecord {
        bid: "b1",
        member,
        outcome,
        enqueued_at: AT,
    });
    let out = b.batch_record_many(&records).await.unwrap();
    let none = BatchFired::default();
    assert_eq!(out.len(), 5, "{n}");
    assert_eq!(
        &out[..4],
        &[none.clone(), none.clone(), none.clone(), none],
        "{n}"
    );
    assert_eq!(
        out[4].callbacks,
        fired(&[("b1", BatchEvent::Complete), ("b1", BatchEvent::Success)]),
        "{n}"
    );
    assert_eq!(inspect.queue("callbacks").await.len(), 2, "{n}");
    assert!(b.batch_record_many(&[]).await.unwrap().is_empty(), "{n}");
}
