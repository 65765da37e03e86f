//! The periodic scheduler (see [`crate::periodic`]): declares this server's entries in the
//! backend, and while this server holds the leader lease, enqueues the due ticks of every
//! declared entry through atomic tick claims.

use super::state::Shared;
use crate::periodic::{Missed, Schedule, tick_payload};
use errand_core::broker::{PermitGrant, PermitRenewal, PermitRequest, TickClaim};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The permit set of the scheduler's leader.
const LEADER_KEY: &str = "periodic:leader";
/// How often entries are declared again (their `seen_at`) and stale ones pruned.
const REDECLARE: Duration = Duration::from_secs(600);
/// The longest sleep between two looks.
const TICK: Duration = Duration::from_secs(1);

pub(crate) async fn run(s: Arc<Shared>) {
    let entries = s.config().periodic.clone();
    let identity = s.identity.clone();
    let mut declared_at: Option<tokio::time::Instant> = None;
    let mut leading = false;
    let mut schedules: HashMap<(String, String), Option<Schedule>> = HashMap::new();
    loop {
        if declared_at.is_none_or(|t| t.elapsed() >= REDECLARE) {
            match s.broker().periodic_upsert(&entries, s.now()).await {
                Ok(()) => declared_at = Some(tokio::time::Instant::now()),
                Err(e) => tracing::warn!(error = %e, "could not declare the periodic entries"),
            }
        }
        leading = lead(&s, &identity, leading).await;
        let mut wait = TICK;
        if leading {
            if declared_at.is_some_and(|t| t.elapsed() < TICK) {
                prune(&s).await;
            }
            if let Some(next) = schedule(&s, &mut schedules).await {
                wait = wait.min(next);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = s.quiet.cancelled() => break,
        }
    }
    if leading {
        let _ = s.broker().permit_release(LEADER_KEY, &identity).await;
    }
}

/// Takes or keeps the leader lease. A leader that fails to renew (its lease ran out while it
/// was paused, and another took it) stops leading at once.
async fn lead(s: &Shared, identity: &str, leading: bool) -> bool {
    let ttl = s.config().periodic_lease;
    if leading {
        let renewed = s
            .broker()
            .permit_renew(PermitRenewal {
                key: LEADER_KEY,
                holder: identity,
                ttl,
            })
            .await;
        match renewed {
            Ok(true) => return true,
            Ok(false) => tracing::info!("periodic scheduler: lost the leader lease"),
            Err(e) => {
                tracing::warn!(error = %e, "periodic scheduler: could not renew the leader lease");
                return false;
            }
        }
    }
    let grant = s
        .broker()
        .permit_acquire(PermitRequest {
            key: LEADER_KEY,
            holder: identity,
            max: 1,
            ttl,
            fence: true,
        })
        .await;
    match grant {
        Ok(PermitGrant::Granted { token }) => {
            tracing::info!(token, "periodic scheduler: leading");
            true
        }
        Ok(PermitGrant::Full { .. }) => false,
        Err(e) => {
            tracing::warn!(error = %e, "periodic scheduler: could not take the leader lease");
            false
        }
    }
}

/// Removes entries no server has declared within the grace period.
async fn prune(s: &Shared) {
    let before = s.now() - s.config().periodic_grace.as_secs_f64();
    match s.broker().periodic_prune(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(entries = n, "removed periodic entries no server declares"),
        Err(e) => tracing::warn!(error = %e, "could not prune periodic entries"),
    }
}

/// Enqueues every declared entry's due ticks; returns how long until the soonest next tick.
async fn schedule(
    s: &Shared,
    schedules: &mut HashMap<(String, String), Option<Schedule>>,
) -> Option<Duration> {
    let records = match s.broker().periodic_list().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the periodic entries");
            return None;
        }
    };
    let profile = s.config().profile;
    let now = s.now();
    let mut soonest: Option<f64> = None;
    for r in records {
        let e = &r.entry;
        let key = (e.spec.clone(), e.zone.clone());
        let schedule = schedules.entry(key).or_insert_with(|| {
            Schedule::parse(&e.spec, &e.zone)
                .map_err(
                    |err| tracing::error!(entry = %e.name, error = %err, "periodic entry skipped"),
                )
                .ok()
        });
        let Some(schedule) = schedule else { continue };
        if let Some(next) = schedule.next_after(now) {
            soonest = Some(soonest.map_or(next, |t| t.min(next)));
        }
        if r.paused {
            continue;
        }
        for tick in schedule.due(r.last_tick, now, Missed::from_stored(&e.missed)) {
            let payload = match tick_payload(e, tick, now, profile) {
                Ok(p) => p,
                Err(err) => {
                    tracing::error!(entry = %e.name, error = %err, "periodic entry's job is not a payload");
                    break;
                }
            };
            let json = payload.to_json();
            let claim = TickClaim {
                name: &e.name,
                at: tick,
                payload: &json,
                jid: payload.jid(),
                queue: &e.queue,
                now,
            };
            match s.broker().periodic_claim(claim).await {
                Ok(true) => {
                    tracing::info!(entry = %e.name, tick, jid = payload.jid(), "periodic tick enqueued")
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(entry = %e.name, error = %err, "could not claim a periodic tick");
                    break;
                }
            }
        }
    }
    soonest.map(|t| Duration::from_secs_f64((t - s.now()).max(0.0)))
}
