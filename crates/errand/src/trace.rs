//! Spans for pushes and attempts (feature `spans`), and one trace across processes and
//! languages (feature `opentelemetry`).
//!
//! With `spans`, every push runs in a producer span and every attempt in a consumer span,
//! named and attributed after OpenTelemetry's messaging conventions:
//!
//! | span | name | kind | attributes |
//! | --- | --- | --- | --- |
//! | a push ([`PushSpans`], a client middleware installed by default) | `send <queue>` | producer | `messaging.system` = `errand`, `messaging.operation.type` = `send`, `messaging.destination.name`, `messaging.message.id` (one job) or `messaging.batch.message_count` (several), `messaging.errand.job.class`, `messaging.errand.push.kind` |
//! | an attempt (around the server middleware and the job) | `process <queue>` | consumer | `messaging.system`, `messaging.operation.type` = `process`, `messaging.destination.name`, `messaging.message.id`, `messaging.errand.job.class`, `messaging.errand.attempt` (1 for the first run), `messaging.errand.outcome` (`done`, `failed`, `dead`, `discarded`, `snoozed`, `cancelled`: the words of the job log lines), `error.type` on a failure |
//!
//! Field names `otel.name`, `otel.kind` and `otel.status_code` are what
//! `tracing-opentelemetry` turns into the OpenTelemetry span's name, kind and status.
//!
//! With `opentelemetry`, a push writes the W3C trace context of its span into each payload
//! (top-level `traceparent` and, when there is one, `tracestate` and `baggage` — the keys Ruby's
//! `opentelemetry-instrumentation-sidekiq` writes, since it injects into the job hash itself),
//! and an attempt reads it back: its span continues the pusher's trace as a child
//! ([`Propagation::Child`], the default) or starts a trace of its own linked to it
//! ([`Propagation::Link`], Ruby's default). A Ruby push traced by that gem is continued by an
//! Errand worker, and an Errand push by a Ruby worker running the gem. The application
//! installs the exporter: a `tracing_opentelemetry` layer over an OpenTelemetry tracer
//! provider (OTLP, for instance).

use crate::client_middleware::{ClientMiddleware, ClientNext, Outgoing};
use crate::{Error, JobError, JobErrorKind};
use async_trait::async_trait;
use errand_core::Payload;
use tracing::Instrument;
use tracing::field::Empty;

/// The value of `messaging.system` on Errand's spans.
pub const MESSAGING_SYSTEM: &str = "errand";

/// Opens a producer span around every push ([`crate::trace`]), and with the feature
/// `opentelemetry` writes its trace context into every payload. Installed first on every
/// [`Client`](crate::Client) by default.
#[derive(Debug, Default, Clone, Copy)]
pub struct PushSpans;

#[async_trait]
impl ClientMiddleware for PushSpans {
    fn active(&self) -> bool {
        tracing::enabled!(kind: tracing::metadata::Kind::SPAN, target: "errand::push", tracing::Level::INFO)
    }

    async fn call(&self, jobs: &mut Outgoing, next: ClientNext<'_>) -> Result<(), Error> {
        let Some(first) = jobs.jobs().first() else {
            return next.run(jobs).await;
        };
        let queue = first.queue().to_string();
        let span = tracing::info_span!(
            target: "errand::push",
            "errand.push",
            otel.name = %format_args!("send {queue}"),
            otel.kind = "producer",
            otel.status_code = Empty,
            messaging.system = MESSAGING_SYSTEM,
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = %queue,
            messaging.message.id = Empty,
            messaging.batch.message_count = Empty,
            messaging.errand.job.class = %first.display_class(),
            messaging.errand.push.kind = jobs.kind().as_str(),
            error.type = Empty,
        );
        if jobs.jobs().len() == 1 {
            span.record("messaging.message.id", first.jid());
        } else {
            span.record("messaging.batch.message_count", jobs.jobs().len() as u64);
        }
        #[cfg(feature = "opentelemetry")]
        otel::inject(&span, jobs.jobs_mut());
        let result = next.run(jobs).instrument(span.clone()).await;
        if let Err(e) = &result {
            span.record("otel.status_code", "error");
            span.record("error.type", error_type(e));
        }
        result
    }
}

/// A stable name for a push's error, for `error.type`.
fn error_type(e: &Error) -> &'static str {
    match e {
        Error::Payload(_) => "invalid_payload",
        Error::Broker(b) if b.is_connection_error() => "connection",
        Error::Broker(_) => "backend",
        Error::Duplicate { .. } => "duplicate",
        Error::NotPushed => "not_pushed",
        _ => "error",
    }
}

/// How an attempt's span relates to the trace context its payload carries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Propagation {
    /// The attempt's span is a child of the push's span: one trace from the request that
    /// pushed the job to its attempts.
    #[default]
    Child,
    /// The attempt's span starts a trace of its own with a link to the push's span (Ruby's
    /// instrumentation's default, for very long-lived or fan-out traces).
    Link,
    /// The payload's context is ignored.
    None,
}

/// The consumer span of one attempt of the job in `payload` (`attempt` counts from 1), its
/// parent set from the payload's trace context as `propagation` says.
pub(crate) fn attempt_span(
    payload: &Payload,
    attempt: u32,
    propagation: Propagation,
) -> tracing::Span {
    let queue = payload.queue();
    let span = tracing::info_span!(
        target: "errand::perform",
        "errand.perform",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = MESSAGING_SYSTEM,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %queue,
        messaging.message.id = %payload.jid(),
        messaging.errand.job.class = %payload.display_class(),
        messaging.errand.attempt = attempt,
        messaging.errand.outcome = Empty,
        error.type = Empty,
    );
    #[cfg(feature = "opentelemetry")]
    otel::extract_into(&span, payload, propagation);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = propagation;
    span
}

/// Records an attempt's outcome on its span, in the words of the job log lines: an error
/// returned after a cancel is `cancelled` (ended on purpose: no error status), as the server
/// decides.
pub(crate) fn record_outcome(span: &tracing::Span, result: Result<(), &JobError>, cancelled: bool) {
    let outcome = match result {
        Ok(()) => "done",
        Err(_) if cancelled => "cancelled",
        Err(e) => match e.kind() {
            JobErrorKind::Discard => "discarded",
            JobErrorKind::Snooze(_) => "snoozed",
            JobErrorKind::Dead => "dead",
            _ => "failed",
        },
    };
    span.record("messaging.errand.outcome", outcome);
    if let Err(e) = result
        && !cancelled
        && !matches!(e.kind(), JobErrorKind::Snooze(_) | JobErrorKind::Discard)
    {
        span.record("otel.status_code", "error");
        span.record("error.type", e.class());
    }
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use super::Propagation;
    use errand_core::Payload;
    use opentelemetry::propagation::{
        Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
    };
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
    use std::sync::OnceLock;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// W3C trace context and baggage, as Ruby's OpenTelemetry SDK propagates by default.
    fn propagator() -> &'static TextMapCompositePropagator {
        static P: OnceLock<TextMapCompositePropagator> = OnceLock::new();
        P.get_or_init(|| {
            TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ])
        })
    }

    struct Write<'a>(&'a mut Payload);

    impl Injector for Write<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.set(key, value);
        }
    }

    struct Read<'a>(&'a Payload);

    impl Extractor for Read<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.str(key)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.as_map().keys().map(String::as_str).collect()
        }
    }

    /// Writes `span`'s context into every payload (nothing when it has none: no
    /// OpenTelemetry layer, or the span is disabled).
    pub(super) fn inject(span: &tracing::Span, jobs: &mut [Payload]) {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return;
        }
        for p in jobs {
            propagator().inject_context(&cx, &mut Write(p));
        }
    }

    /// Sets `span`'s parent (or link) from the context `payload` carries, if any.
    pub(super) fn extract_into(span: &tracing::Span, payload: &Payload, how: Propagation) {
        if how == Propagation::None || payload.get("traceparent").is_none() {
            return;
        }
        let cx = propagator().extract(&Read(payload));
        let remote = cx.span().span_context().clone();
        if !remote.is_valid() {
            return;
        }
        match how {
            Propagation::Child => {
                let _ = span.set_parent(cx);
            }
            Propagation::Link => span.add_link(remote),
            Propagation::None => {}
        }
    }
}
