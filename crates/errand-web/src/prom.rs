//! Prometheus `/metrics`: queue sizes and latencies, set sizes, processes and busy workers,
//! the processed/failed counters, and per-class execution counters with a duration histogram
//! (all-time totals from the backend, so they only grow).

use crate::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use errand::api;
use errand_core::admin::SetName;
use errand_core::metrics::HISTOGRAM_BOUNDS_MS;
use std::fmt::Write;

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders the exposition text.
pub(crate) async fn render(st: &AppState) -> Result<String, errand_core::BrokerError> {
    let admin = &*st.admin;
    let counters = admin.counters().await?;
    let queues = api::queues(admin).await?;
    let (processes, _) = api::busy(admin).await?;
    let mut out = String::new();

    family(
        &mut out,
        "errand_jobs_processed_total",
        "counter",
        "Jobs executed (Sidekiq's stat:processed).",
    );
    let _ = writeln!(out, "errand_jobs_processed_total {}", counters.processed);
    family(
        &mut out,
        "errand_jobs_failed_total",
        "counter",
        "Jobs failed (Sidekiq's stat:failed).",
    );
    let _ = writeln!(out, "errand_jobs_failed_total {}", counters.failed);
    family(
        &mut out,
        "errand_jobs_cancelled_total",
        "counter",
        "Jobs cancelled while running (they stopped on cx.cancelled()).",
    );
    let _ = writeln!(out, "errand_jobs_cancelled_total {}", counters.cancelled);
    family(
        &mut out,
        "errand_jobs_expired_total",
        "counter",
        "Jobs dropped without running: fetched past their expires_in deadline.",
    );
    let _ = writeln!(out, "errand_jobs_expired_total {}", counters.expired);

    family(
        &mut out,
        "errand_queue_size",
        "gauge",
        "Jobs waiting in a queue.",
    );
    for q in &queues {
        let _ = writeln!(
            out,
            "errand_queue_size{{queue=\"{}\"}} {}",
            label(&q.name),
            q.size
        );
    }
    family(
        &mut out,
        "errand_queue_latency_seconds",
        "gauge",
        "Age of the next job to run in a queue.",
    );
    for q in &queues {
        let _ = writeln!(
            out,
            "errand_queue_latency_seconds{{queue=\"{}\"}} {:.3}",
            label(&q.name),
            q.latency
        );
    }
    family(
        &mut out,
        "errand_queue_paused",
        "gauge",
        "1 when a queue is paused.",
    );
    for q in &queues {
        let _ = writeln!(
            out,
            "errand_queue_paused{{queue=\"{}\"}} {}",
            label(&q.name),
            u8::from(q.paused)
        );
    }

    family(
        &mut out,
        "errand_set_size",
        "gauge",
        "Jobs in the retry, schedule and dead sets.",
    );
    for set in SetName::ALL {
        let _ = writeln!(
            out,
            "errand_set_size{{set=\"{}\"}} {}",
            set.key(),
            admin.set_size(set).await?
        );
    }

    family(
        &mut out,
        "errand_processes",
        "gauge",
        "Live worker processes (Errand and Sidekiq).",
    );
    let _ = writeln!(out, "errand_processes {}", processes.len());
    family(
        &mut out,
        "errand_busy_workers",
        "gauge",
        "Jobs running now.",
    );
    let _ = writeln!(
        out,
        "errand_busy_workers {}",
        processes.iter().map(|p| p.busy).sum::<u64>()
    );
    family(
        &mut out,
        "errand_worker_slots",
        "gauge",
        "Worker slots of the live processes.",
    );
    let _ = writeln!(
        out,
        "errand_worker_slots {}",
        processes.iter().map(|p| p.concurrency).sum::<u64>()
    );

    let classes = admin.metrics_totals().await?;
    family(
        &mut out,
        "errand_job_executions_total",
        "counter",
        "Attempts run per job class.",
    );
    for c in &classes {
        let _ = writeln!(
            out,
            "errand_job_executions_total{{class=\"{}\"}} {}",
            label(&c.class),
            c.executions
        );
    }
    family(
        &mut out,
        "errand_job_failures_total",
        "counter",
        "Attempts failed per job class.",
    );
    for c in &classes {
        let _ = writeln!(
            out,
            "errand_job_failures_total{{class=\"{}\"}} {}",
            label(&c.class),
            c.failures
        );
    }
    family(
        &mut out,
        "errand_job_duration_seconds",
        "histogram",
        "Run time of successful attempts per job class.",
    );
    for c in &classes {
        let class = label(&c.class);
        let mut cumulative = 0;
        for (i, bound) in HISTOGRAM_BOUNDS_MS.iter().enumerate() {
            cumulative += c.histogram[i];
            let _ = writeln!(
                out,
                "errand_job_duration_seconds_bucket{{class=\"{class}\",le=\"{}\"}} {cumulative}",
                *bound as f64 / 1000.0
            );
        }
        cumulative += c.histogram[HISTOGRAM_BOUNDS_MS.len()];
        let _ = writeln!(
            out,
            "errand_job_duration_seconds_bucket{{class=\"{class}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "errand_job_duration_seconds_sum{{class=\"{class}\"}} {:.3}",
            c.total_ms as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "errand_job_duration_seconds_count{{class=\"{class}\"}} {cumulative}"
        );
    }
    Ok(out)
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(st): State<AppState>) -> Response {
    match render(&st).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_escaped() {
        assert_eq!(super::label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
