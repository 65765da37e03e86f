//! Cases for the coordination primitives ([`Coordination`](errand_core::broker::Coordination)):
//! once-only records, permit sets with fencing tokens, rate limits.

use errand_core::broker::{Cancelled, Heartbeat, ReplacePush, ScheduledJob, Settle, WorkEntry};
use errand_core::broker::{
    Capabilities, OnceClaim, OnceCompletion, OnceRequest, PermitGrant, PermitRenewal,
    PermitRequest, RateKind, RateRequest, UniquePush, UniquePushed,
};
use errand_core::broker::{PeriodicEntry, TickClaim};
use std::time::Duration;

use crate::support::*;
use crate::{BackendFactory, TestBackend};

/// A once-only step record: one owner claims it, others see it busy; only the owner renews,
/// completes or releases it; a completed step hands its output to every later claim; a
/// released claim is free for the next owner.
pub async fn once_records_claim_complete_release(f: &impl BackendFactory) {
    let TestBackend { broker, .. } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let ttl = Duration::from_secs(30);
    let keep = Duration::from_secs(3600);
    let claim =
        |key: &'static str, owner: &'static str| b.once_claim(OnceRequest { key, owner, ttl });

    assert_eq!(
        claim("j1:send", "a").await.unwrap(),
        OnceClaim::Claimed,
        "{n}"
    );
    assert_eq!(
        claim("j1:send", "b").await.unwrap(),
        OnceClaim::Busy,
        "{n}: held by a"
    );
    assert_eq!(
        claim("j1:send", "a").await.unwrap(),
        OnceClaim::Claimed,
        "{n}: a again"
    );
    assert_eq!(
        claim("j2:send", "b").await.unwrap(),
        OnceClaim::Claimed,
        "{n}: keys are separate"
    );
    assert!(
        b.once_renew(OnceRequest {
            key: "j1:send",
            owner: "a",
            ttl
        })
        .await
        .unwrap(),
        "{n}: owner renews"
    );
    assert!(
        !b.once_renew(OnceRequest {
            key: "j1:send",
            owner: "b",
            ttl
        })
        .await
        .unwrap(),
        "{n}: others cannot"
    );
    b.once_release("j1:send", "b").await.unwrap();
    assert_eq!(
        claim("j1:send", "b").await.unwrap(),
        OnceClaim::Busy,
        "{n}: b's release did nothing"
    );
    assert!(
        !b.once_complete(OnceCompletion {
            key: "j1:send",
            owner: "b",
            output: "1",
            keep
        })
        .await
        .unwrap(),
        "{n}: only the owner completes"
    );
    assert!(
        b.once_complete(OnceCompletion {
            key: "j1:send",
            owner: "a",
            output: r#"{"sent":true}"#,
            keep
        })
        .await
        .unwrap(),
        "{n}"
    );
    for owner in ["a", "b", "c"] {
        assert_eq!(
            claim("j1:send", owner).await.unwrap(),
            OnceClaim::Done(r#"{"sent":true}"#.into()),
            "{n}: completed for {owner}"
        );
    }
    assert!(
        !b.once_renew(OnceRequest {
            key: "j1:send",
            owner: "a",
            ttl
        })
        .await
        .unwrap(),
        "{n}: done is not renewed"
    );
    assert!(
        !b.once_complete(OnceCompletion {
            key: "j1:send",
            owner: "a",
            output: "2",
            keep
        })
        .await
        .unwrap(),
        "{n}: completes once"
    );
    b.once_release("j1:send", "a").await.unwrap();
    assert_eq!(
        claim("j1:send", "c").await.unwrap(),
        OnceClaim::Done(r#"{"sent":true}"#.into()),
        "{n}: a completed step cannot be released"
    );
    b.once_release("j2:send", "b").await.unwrap();
    assert_eq!(
        claim("j2:send", "c").await.unwrap(),
        OnceClaim::Claimed,
        "{n}: released → free"
    );
}

/// A claim whose holder stops renewing frees itself after its lease, and a completed record
/// is gone after the time it is kept.
pub async fn once_claims_and_records_expire(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let short = Duration::from_millis(1_000);
    assert_eq!(
        b.once_claim(OnceRequest {
            key: "j:step",
            owner: "dead-holder",
            ttl: short
        })
        .await
        .unwrap(),
        OnceClaim::Claimed
    );
    assert_eq!(
        b.once_claim(OnceRequest {
            key: "j:step",
            owner: "c",
            ttl: Duration::from_secs(30)
        })
        .await
        .unwrap(),
        OnceClaim::Busy,
        "{n}"
    );
    assert_eq!(
        b.once_claim(OnceRequest {
            key: "j:done",
            owner: "a",
            ttl: Duration::from_secs(30)
        })
        .await
        .unwrap(),
        OnceClaim::Claimed
    );
    assert!(
        b.once_complete(OnceCompletion {
            key: "j:done",
            owner: "a",
            output: "7",
            keep: short
        })
        .await
        .unwrap(),
        "{n}"
    );
    inspect.let_time_pass(Duration::from_millis(1_100)).await;
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let step = b
            .once_claim(OnceRequest {
                key: "j:step",
                owner: "c",
                ttl: Duration::from_secs(30),
            })
            .await
            .unwrap();
        let done = b
            .once_claim(OnceRequest {
                key: "j:done",
                owner: "c",
                ttl: Duration::from_secs(30),
            })
            .await
            .unwrap();
        if step == OnceClaim::Claimed && done == OnceClaim::Claimed {
            break;
        }
        // Until the record expires, "c" sees it busy (or done); a claim that succeeded stays
        // "c"'s, so later rounds see Claimed as well.
        assert!(
            std::time::Instant::now() < deadline,
            "{n}: expired records were never freed: {step:?} {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !b.once_renew(OnceRequest {
            key: "j:step",
            owner: "dead-holder",
            ttl: short
        })
        .await
        .unwrap(),
        "{n}: the expired holder lost its claim"
    );
}

fn permit<'a>(
    key: &'a str,
    holder: &'a str,
    max: u32,
    ttl: Duration,
    fence: bool,
) -> PermitRequest<'a> {
    PermitRequest {
        key,
        holder,
        max,
        ttl,
        fence,
    }
}

fn token(grant: PermitGrant) -> u64 {
    match grant {
        PermitGrant::Granted { token } => token,
        PermitGrant::Full { holder } => {
            panic!("expected a grant, the set is full (held by {holder})")
        }
    }
}

/// A permit set admits at most `max` holders, names a holder when full, renews and releases
/// only for its holders, and hands out fencing tokens that only grow.
pub async fn permit_sets_bound_holders_and_fence(f: &impl BackendFactory) {
    let TestBackend { broker, .. } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let ttl = Duration::from_secs(30);

    let t1 = token(
        b.permit_acquire(permit("mutex:order-1", "a", 1, ttl, true))
            .await
            .unwrap(),
    );
    assert!(t1 >= 1, "{n}: fencing tokens start at 1");
    assert_eq!(
        b.permit_acquire(permit("mutex:order-1", "b", 1, ttl, true))
            .await
            .unwrap(),
        PermitGrant::Full { holder: "a".into() },
        "{n}: a mutex has one holder"
    );
    let t2 = token(
        b.permit_acquire(permit("mutex:order-1", "a", 1, ttl, true))
            .await
            .unwrap(),
    );
    assert!(t2 > t1, "{n}: re-acquiring hands out a newer token");
    assert!(
        b.permit_renew(PermitRenewal {
            key: "mutex:order-1",
            holder: "a",
            ttl
        })
        .await
        .unwrap(),
        "{n}"
    );
    assert!(
        !b.permit_renew(PermitRenewal {
            key: "mutex:order-1",
            holder: "b",
            ttl
        })
        .await
        .unwrap(),
        "{n}: b holds nothing"
    );
    assert!(
        !b.permit_release("mutex:order-1", "b").await.unwrap(),
        "{n}"
    );
    assert!(b.permit_release("mutex:order-1", "a").await.unwrap(), "{n}");
    assert!(
        !b.permit_release("mutex:order-1", "a").await.unwrap(),
        "{n}: released once"
    );
    let t3 = token(
        b.permit_acquire(permit("mutex:order-1", "b", 1, ttl, true))
            .await
            .unwrap(),
    );
    assert!(
        t3 > t2,
        "{n}: tokens keep growing across holders: {t1} {t2} {t3}"
    );
    let other = token(
        b.permit_acquire(permit("mutex:order-2", "a", 1, ttl, true))
            .await
            .unwrap(),
    );
    assert!(other >= 1, "{n}: keys are independent");

    for holder in ["w1", "w2", "w3"] {
        let t = token(
            b.permit_acquire(permit("limit:api", holder, 3, ttl, false))
                .await
                .unwrap(),
        );
        assert_eq!(t, 0, "{n}: no token unless asked");
    }
    assert!(
        matches!(
            b.permit_acquire(permit("limit:api", "w4", 3, ttl, false))
                .await
                .unwrap(),
            PermitGrant::Full { .. }
        ),
        "{n}: the fourth of three is refused"
    );
    let holders = b.permit_holders("limit:api").await.unwrap();
    let mut names: Vec<&str> = holders.iter().map(|(h, _)| h.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["w1", "w2", "w3"], "{n}");
    assert!(
        holders.windows(2).all(|w| w[0].1 <= w[1].1),
        "{n}: soonest first"
    );
    assert!(b.permit_release("limit:api", "w2").await.unwrap(), "{n}");
    token(
        b.permit_acquire(permit("limit:api", "w4", 3, ttl, false))
            .await
            .unwrap(),
    );
    assert!(
        b.permit_holders("mutex:nobody").await.unwrap().is_empty(),
        "{n}"
    );
}

/// A holder that stops renewing loses its lease after the ttl: another takes the slot with a
/// newer fencing token, and the old holder can no longer renew or release.
pub async fn permit_expires_without_renewal(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let stalled = token(
        b.permit_acquire(permit(
            "mutex:report",
            "stalled",
            1,
            Duration::from_millis(1_000),
            true,
        ))
        .await
        .unwrap(),
    );
    inspect.let_time_pass(Duration::from_millis(1_100)).await;
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    let next = loop {
        match b
            .permit_acquire(permit(
                "mutex:report",
                "next",
                1,
                Duration::from_secs(30),
                true,
            ))
            .await
            .unwrap()
        {
            PermitGrant::Granted { token } => break token,
            PermitGrant::Full { holder } => {
                assert_eq!(holder, "stalled", "{n}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "{n}: the lease never ran out"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        next > stalled,
        "{n}: the new holder's token is newer ({stalled} → {next})"
    );
    assert!(
        !b.permit_renew(PermitRenewal {
            key: "mutex:report",
            holder: "stalled",
            ttl: Duration::from_secs(30)
        })
        .await
        .unwrap(),
        "{n}: the stalled holder cannot renew"
    );
    assert!(
        !b.permit_release("mutex:report", "stalled").await.unwrap(),
        "{n}"
    );
    assert_eq!(
        b.permit_holders("mutex:report").await.unwrap().len(),
        1,
        "{n}"
    );
}

/// `push_unique` stores the job and takes its permit together: another jid is refused while
/// the permit lives (nothing stored), a second call with the same jid (a retry after a lost
/// reply) stores nothing more, a scheduled job goes to the schedule set, and once the permit
/// runs out the key is free for the next job.
pub async fn push_unique_takes_the_permit_and_stores_the_job_together(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let first = job("q", 1);
    let req = |jid, payload, ttl, at| UniquePush {
        key: "unique:Report:abc",
        jid,
        ttl,
        queue: "q",
        payload,
        at,
    };
    let long = Duration::from_secs(60);
    assert_eq!(
        b.push_unique(req("j1", &first, Duration::from_millis(1_000), None))
            .await
            .unwrap(),
        UniquePushed::Pushed,
        "{n}"
    );
    assert_eq!(inspect.queue("q").await, vec![first.clone()], "{n}");
    assert!(
        inspect.known_queues().await.contains(&"q".to_string()),
        "{n}"
    );
    let holders = b.permit_holders("unique:Report:abc").await.unwrap();
    assert_eq!(holders.len(), 1, "{n}");
    assert_eq!(holders[0].0, "j1", "{n}: the job holds its key");

    let second = job("q", 2);
    assert_eq!(
        b.push_unique(req("j2", &second, long, None)).await.unwrap(),
        UniquePushed::Duplicate {
            holder: "j1".into()
        },
        "{n}"
    );
    assert_eq!(
        b.push_unique(req("j1", &first, long, None)).await.unwrap(),
        UniquePushed::Pushed,
        "{n}: a retry of the same push"
    );
    assert_eq!(
        inspect.queue("q").await,
        vec![first.clone()],
        "{n}: neither the duplicate nor the retry stored anything"
    );

    inspect.let_time_pass(Duration::from_millis(1_100)).await;
    let later = job("q", 3);
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    loop {
        match b
            .push_unique(req("j3", &later, long, Some(4_000_000_000.0)))
            .await
            .unwrap()
        {
            UniquePushed::Pushed => break,
            UniquePushed::Duplicate { holder } => {
                assert_eq!(holder, "j1", "{n}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "{n}: the permit never ran out"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(
        inspect.set("schedule").await,
        vec![(4_000_000_000.0, later)],
        "{n}: a scheduled unique job waits in the schedule set"
    );
    assert_eq!(inspect.queue("q").await, vec![first], "{n}");
}

/// Periodic entries: a declared entry starts after its registration time; each tick is
/// claimed (and its job enqueued) once, however many claim it at once, and never one at or
/// before the last; a paused entry claims nothing; declaring again keeps the state; an entry
/// not declared since a time is pruned.
pub async fn periodic_ticks_are_claimed_once(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let entry = |spec: &str| PeriodicEntry {
        name: "report".into(),
        spec: spec.into(),
        zone: "Europe/Berlin".into(),
        queue: "q".into(),
        template: r#"{"class":"Report","args":[],"queue":"q"}"#.into(),
        missed: "skip".into(),
    };
    b.periodic_upsert(&[entry("0 3 * * *")], 1_000.0)
        .await
        .unwrap();
    let listed = b.periodic_list().await.unwrap();
    assert_eq!(listed.len(), 1, "{n}");
    assert_eq!(listed[0].entry, entry("0 3 * * *"), "{n}");
    assert_eq!(
        (listed[0].paused, listed[0].last_tick, listed[0].seen_at),
        (false, 1_000.0, 1_000.0),
        "{n}: a new entry starts at its registration"
    );
    assert_eq!(listed[0].last_jid, None, "{n}");
    let claim = |name: &'static str, at: f64, jid: &'static str| {
        let payload = job("q", at as u64);
        async move {
            b.periodic_claim(TickClaim {
                name,
                at,
                payload: &payload,
                jid,
                queue: "q",
                now: at + 0.5,
            })
            .await
            .unwrap()
        }
    };
    assert!(
        !claim("report", 999.0, "j0").await,
        "{n}: before registration"
    );
    assert!(
        !claim("report", 1_000.0, "j0").await,
        "{n}: at registration"
    );
    assert!(claim("report", 1_001.0, "j1").await, "{n}: the first tick");
    assert!(
        !claim("report", 1_001.0, "j1b").await,
        "{n}: the same tick again"
    );
    assert!(!claim("report", 1_000.5, "j0b").await, "{n}: an older tick");
    assert!(claim("report", 1_002.0, "j2").await, "{n}: the next tick");
    assert!(!claim("ghost", 1_003.0, "jx").await, "{n}: no such entry");
    assert_eq!(
        inspect.queue("q").await,
        vec![job("q", 1_001), job("q", 1_002)],
        "{n}: one job per tick claimed"
    );
    let r = &b.periodic_list().await.unwrap()[0];
    assert_eq!(
        (r.last_tick, r.last_jid.as_deref(), r.last_run),
        (1_002.0, Some("j2"), Some(1_002.5)),
        "{n}"
    );

    assert!(b.periodic_pause("report", true).await.unwrap(), "{n}");
    assert!(!b.periodic_pause("ghost", true).await.unwrap(), "{n}");
    assert!(!claim("report", 1_003.0, "j3").await, "{n}: paused");
    b.periodic_upsert(&[entry("*/5 * * * *")], 2_000.0)
        .await
        .unwrap();
    let r = &b.periodic_list().await.unwrap()[0];
    assert_eq!(r.entry.spec, "*/5 * * * *", "{n}: the new definition");
    assert_eq!(
        (r.paused, r.last_tick, r.seen_at),
        (true, 1_002.0, 2_000.0),
        "{n}: declaring again keeps the state"
    );
    assert!(b.periodic_pause("report", false).await.unwrap(), "{n}");

    // Many claimers of one tick at once (leaders during a partition): one wins.
    let wins = futures::future::join_all((0..8).map(|_| claim("report", 1_004.0, "jr"))).await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{n}: {wins:?}");
    assert_eq!(inspect.queue("q").await.len(), 3, "{n}");

    assert_eq!(
        b.periodic_prune(1_999.0).await.unwrap(),
        0,
        "{n}: seen since"
    );
    assert_eq!(
        b.periodic_prune(2_001.0).await.unwrap(),
        1,
        "{n}: not seen since"
    );
    assert!(b.periodic_list().await.unwrap().is_empty(), "{n}");
    assert!(!claim("report", 1_005.0, "j5").await, "{n}: pruned");
}

/// Both kinds of rate limit let `limit` uses through and refuse the next with the wait until
/// one would pass; keys are independent; refusals are counted per limiter.
pub async fn rate_limits_count_and_refuse(f: &impl BackendFactory) {
    let TestBackend { broker, .. } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let day = Duration::from_secs(24 * 3600);
    for kind in [RateKind::Bucket, RateKind::Window] {
        let key = format!("{kind:?}:customer-1");
        for i in 0..3 {
            assert_eq!(
                b.rate_take(RateRequest {
                    key: &key,
                    kind,
                    limit: 3,
                    interval: day
                })
                .await
                .unwrap(),
                None,
                "{n}: {kind:?} use {i}"
            );
        }
        let wait = b
            .rate_take(RateRequest {
                key: &key,
                kind,
                limit: 3,
                interval: day,
            })
            .await
            .unwrap()
            .expect("the fourth is refused");
        assert!(
            wait > Duration::ZERO && wait <= day,
            "{n}: {kind:?} wait {wait:?}"
        );
        if kind == RateKind::Window {
            assert!(
                wait > day - Duration::from_secs(60),
                "{n}: the window frees a day after the first use: {wait:?}"
            );
        }
        let other = format!("{kind:?}:customer-2");
        assert_eq!(
            b.rate_take(RateRequest {
                key: &other,
                kind,
                limit: 3,
                interval: day
            })
            .await
            .unwrap(),
            None,
            "{n}: keys are independent"
        );
    }
    b.refusal_add("api").await.unwrap();
    b.refusal_add("api").await.unwrap();
    b.refusal_add("exports").await.unwrap();
    let mut hits = b.refusal_counts().await.unwrap();
    hits.sort();
    assert_eq!(
        hits,
        vec![("api".to_string(), 2), ("exports".to_string(), 1)],
        "{n}"
    );
}

/// A sliding window lets a use through again once the oldest use in it is older than the
/// interval.
pub async fn rate_window_frees_as_uses_age(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let second = Duration::from_millis(1_000);
    assert_eq!(
        b.rate_take(RateRequest {
            key: "w",
            kind: RateKind::Window,
            limit: 2,
            interval: second
        })
        .await
        .unwrap(),
        None
    );
    assert_eq!(
        b.rate_take(RateRequest {
            key: "w",
            kind: RateKind::Window,
            limit: 2,
            interval: second
        })
        .await
        .unwrap(),
        None
    );
    assert!(
        b.rate_take(RateRequest {
            key: "w",
            kind: RateKind::Window,
            limit: 2,
            interval: second
        })
        .await
        .unwrap()
        .is_some(),
        "{n}"
    );
    inspect.let_time_pass(Duration::from_millis(1_100)).await;
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while b
        .rate_take(RateRequest {
            key: "w",
            kind: RateKind::Window,
            limit: 2,
            interval: second,
        })
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{n}: the window never moved on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The backend says it provides every coordination primitive (the three built-in backends do;
/// a backend without them must say so, and callers then refuse with a clear error).
pub async fn coordination_capabilities_are_all_there(f: &impl BackendFactory) {
    let TestBackend { broker, .. } = f.new_backend().await;
    assert_eq!(broker.capabilities(), Capabilities::ALL, "{}", f.name());
}

/// Cancelling by jid: a job waiting in a queue, the schedule set or the retry set is removed
/// (and only it), a running job is found on the process whose heartbeat lists it, a job that
/// is nowhere is not found; every cancelled jid is marked, and the mark expires.
pub async fn cancel_removes_waiting_jobs_and_finds_running_ones(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let jid = |i: u64| format!("q-{i:024}");
    let keep = Duration::from_secs(3600);
    let later = errand_core::now() + 3600.0;
    b.push(&[enqueue("q", job("q", 4)), enqueue("q", job("q", 5))])
        .await
        .unwrap();
    let got = fetch(b, "p1", &["q"], 2, Duration::ZERO).await;
    assert_eq!(got.len(), 2, "{n}");
    let (retrying, running) = if got[0].raw.contains(&jid(4)) {
        (&got[0], &got[1])
    } else {
        (&got[1], &got[0])
    };
    assert!(
        b.settle(
            retrying,
            &Settle::Retry {
                payload: retrying.raw.clone(),
                at: later
            }
        )
        .await
        .unwrap(),
        "{n}"
    );
    let work = [WorkEntry {
        tid: "t1".into(),
        json: serde_json::json!({"queue": "q", "payload": running.raw, "run_at": 1}).to_string(),
    }];
    b.register("p1", &queues(&["q"])).await.unwrap();
    b.heartbeat(&Heartbeat {
        identity: "p1",
        info: r#"{"queues":["q"]}"#,
        busy: 1,
        concurrency: 5,
        beat: errand_core::now(),
        quiet: false,
        rss_kb: 1024,
        work: &work,
        processed: 0,
        failed: 0,
        cancelled: 0,
        expired: 0,
        ttl: Duration::from_secs(60),
    })
    .await
    .unwrap();
    b.push(&[enqueue("q", job("q", 1)), enqueue("q", job("q", 2))])
        .await
        .unwrap();
    b.push_scheduled(&[ScheduledJob {
        at: later,
        payload: job("q", 3),
    }])
    .await
    .unwrap();

    let cancel = |i: u64| async move { b.cancel_job(&jid(i), keep).await.unwrap() };
    assert_eq!(cancel(1).await, Cancelled::Queued("q".into()), "{n}");
    assert_eq!(cancel(3).await, Cancelled::Scheduled, "{n}");
    assert_eq!(cancel(4).await, Cancelled::Retrying, "{n}");
    assert_eq!(cancel(5).await, Cancelled::Running("p1".into()), "{n}");
    assert_eq!(cancel(9).await, Cancelled::NotFound, "{n}");
    assert_eq!(cancel(1).await, Cancelled::NotFound, "{n}: removed once");
    let left = inspect.queue("q").await;
    assert_eq!(left.len(), 1, "{n}: {left:?}");
    assert!(left[0].contains(&jid(2)), "{n}: only the other job stays");
    assert!(inspect.set("schedule").await.is_empty(), "{n}");
    assert!(inspect.set("retry").await.is_empty(), "{n}");
    let (j1, j2, j5, j9, j7) = (jid(1), jid(2), jid(5), jid(9), jid(7));
    assert_eq!(
        b.cancelled(&[&j1, &j2, &j5, &j9, &j7]).await.unwrap(),
        vec![true, false, true, true, false],
        "{n}: every cancelled jid is marked, found or not"
    );
    assert!(b.cancelled(&[]).await.unwrap().is_empty(), "{n}");

    // Marks expire.
    b.cancel_job("short", Duration::from_millis(1_000))
        .await
        .unwrap();
    assert_eq!(b.cancelled(&["short"]).await.unwrap(), vec![true], "{n}");
    inspect.let_time_pass(Duration::from_millis(1_100)).await;
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while b.cancelled(&["short"]).await.unwrap() != vec![false] {
        assert!(
            std::time::Instant::now() < deadline,
            "{n}: the mark never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A kept result is read back as stored, replaced by a later put, and gone once it expires;
/// a job without one has none.
pub async fn results_are_kept_and_expire(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let keep = Duration::from_secs(3600);
    assert_eq!(b.result_get("j1").await.unwrap(), None, "{n}");
    b.result_put("j1", r#"{"rows":1}"#, keep).await.unwrap();
    b.result_put("j2", "[1,2]", Duration::from_millis(1_000))
        .await
        .unwrap();
    assert_eq!(
        b.result_get("j1").await.unwrap().as_deref(),
        Some(r#"{"rows":1}"#),
        "{n}"
    );
    b.result_put("j1", r#"{"rows":2}"#, keep).await.unwrap();
    assert_eq!(
        b.result_get("j1").await.unwrap().as_deref(),
        Some(r#"{"rows":2}"#),
        "{n}: replaced"
    );
    assert_eq!(b.result_get("j2").await.unwrap().as_deref(), Some("[1,2]"));
    inspect.let_time_pass(Duration::from_millis(1_100)).await;
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while b.result_get("j2").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "{n}: the result never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.result_get("j1").await.unwrap().is_some(), "{n}: kept");
}

/// A replacing push removes the job last pushed under the same key while it waits (in its
/// queue or the schedule set) and reports its jid; a job already fetched is not touched (it
/// runs, and so does the new one); keys are independent.
pub async fn push_replacing_keeps_the_last_waiting_job(f: &impl BackendFactory) {
    let TestBackend { broker, inspect } = f.new_backend().await;
    let b = &*broker;
    let n = f.name();
    let later = errand_core::now() + 3600.0;
    let jid = |i: u64| format!("q-{i:024}");
    let push = |key: &'static str, i: u64, at: Option<f64>| {
        let (payload, jid) = (job("q", i), jid(i));
        async move {
            b.push_replacing(ReplacePush {
                key,
                jid: &jid,
                ttl: Duration::from_secs(3600),
                queue: "q",
                payload: &payload,
                at,
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(push("k", 1, None).await, None, "{n}");
    assert_eq!(push("k", 2, None).await, Some(jid(1)), "{n}");
    assert_eq!(inspect.queue("q").await, vec![job("q", 2)], "{n}");
    assert_eq!(push("k", 3, Some(later)).await, Some(jid(2)), "{n}");
    assert!(inspect.queue("q").await.is_empty(), "{n}");
    assert_eq!(push("k", 4, Some(later + 1.0)).await, Some(jid(3)), "{n}");
    assert_eq!(
        inspect.set("schedule").await,
        vec![(later + 1.0, job("q", 4))],
        "{n}"
    );
    assert_eq!(
        push("other", 5, None).await,
        None,
        "{n}: keys are independent"
    );
    // A job already fetched runs; the next push under its key does not touch it.
    let got = fetch(b, "p1", &["q"], 1, Duration::ZERO).await;
    assert_eq!(raws(&got), vec![job("q", 5)], "{n}");
    assert_eq!(
        push("other", 6, None).await,
        None,
        "{n}: not waiting any more"
    );
    assert_eq!(inspect.queue("q").await, vec![job("q", 6)], "{n}");
    assert_eq!(inspect.in_flight("p1", "q").await, vec![job("q", 5)], "{n}");
    assert!(
        inspect.known_queues().await.contains(&"q".to_string()),
        "{n}"
    );
}
