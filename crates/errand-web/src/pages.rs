//! The HTML pages and their form actions. Rendered with maud, which escapes every value that
//! is not explicitly marked pre-escaped (none here comes from a job), so job data always
//! renders as text.

use crate::params::{ListQuery, Posted, clamp_num};
use crate::security::{self, RequestSecurity};
use crate::{AppState, set_slug};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use errand::api::{self, Action, Entry, JobView, Overview, SetPage, Window};
use errand_core::BrokerError;
use errand_core::admin::{Order, QueueRange, SetName};
use errand_core::broker::{BatchStatus, MemberState, RemoteSignal};
use maud::{DOCTYPE, Markup, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// The value of a backend call, or (from the handler) the error reply.
macro_rules! or_fail {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return failure(e),
        }
    };
}

/// Characters kept as they are in a query-string value.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query-string or path-segment value.
pub(crate) fn enc(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string()
}

/// The request's security facts (nonce, CSRF token), put there by [`security::guard`].
pub(crate) struct Sec(pub RequestSecurity);

impl<S: Send + Sync> FromRequestParts<S> for Sec {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestSecurity>()
            .cloned()
            .map(Sec)
            .ok_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// What the layout needs.
struct Ctx<'a> {
    st: &'a AppState,
    sec: &'a RequestSecurity,
    overview: Overview,
    info: errand_core::admin::BackendInfo,
    backend: String,
    now: f64,
}

impl Ctx<'_> {
    fn url(&self, path: &str) -> String {
        self.st.url(path)
    }

    /// The hidden CSRF field every form carries.
    fn csrf(&self) -> Markup {
        html! { input type="hidden" name=(security::CSRF_FIELD) value=(self.sec.csrf); }
    }
}

async fn ctx<'a>(st: &'a AppState, sec: &'a RequestSecurity) -> Result<Ctx<'a>, BrokerError> {
    let overview = api::overview(&*st.admin).await?;
    let info = st.admin.backend_info().await?;
    let version = info
        .facts
        .iter()
        .find(|(k, _)| k == "version" || k == "redis_version" || k == "sqlite_version")
        .map(|(_, v)| format!(" {v}"))
        .unwrap_or_default();
    Ok(Ctx {
        st,
        sec,
        now: overview.time,
        overview,
        backend: format!("{}{version}", info.kind),
        info,
    })
}

/// A backend failure as a page.
fn failure(e: BrokerError) -> Response {
    tracing::error!(error = %e, "dashboard request failed");
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Errand — error" } }
            body { main { h1 { "The backend could not be read" } p { (e.to_string()) } } }
        }
    };
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// Job text for display: the bidirectional-control characters (U+202E and friends) are shown
/// as `\u202e` escapes, so job data can neither reorder the page around it nor pass one file
/// name off as another; inside JSON text the escape is the same character to a parser, so an
/// edited argument list keeps its meaning. Everything is HTML-escaped by maud on top of this.
pub(crate) fn v(s: &str) -> std::borrow::Cow<'_, str> {
    const BIDI: [char; 12] = [
        '\u{061c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}',
        '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
    ];
    if !s.contains(BIDI) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for ch in s.chars() {
        if BIDI.contains(&ch) {
            out.push_str(&format!("\\u{:04x}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Formats `n` with thousands separators.
pub(crate) fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 job`, `2 jobs`.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", num(n), if n == 1 { one } else { many })
}

/// A duration for people: `12 ms`, `3.2 s`, `4 min`, `3 h`, `2 d`.
pub(crate) fn dur(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 1.0 {
        format!("{} ms", (secs * 1000.0).round())
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        format!("{} min", (secs / 60.0).floor())
    } else if secs < 86_400.0 {
        format!("{} h", (secs / 3600.0).floor())
    } else {
        format!("{} d", (secs / 86_400.0).floor())
    }
}

fn ms(v: Option<u64>) -> String {
    match v {
        None => "—".into(),
        Some(u64::MAX) => "> 335 s".into(),
        Some(ms) if ms < 1000 => format!("≤ {ms} ms"),
        Some(ms) => format!("≤ {:.1} s", ms as f64 / 1000.0),
    }
}

fn exact(epoch: f64) -> String {
    chrono::DateTime::from_timestamp_millis((epoch * 1000.0) as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| epoch.to_string())
}

fn relative(epoch: f64, now: f64) -> String {
    if !epoch.is_finite() {
        return if epoch > 0.0 { "never" } else { "always" }.into();
    }
    let d = now - epoch;
    let a = d.abs();
    if a < 5.0 {
        return "just now".into();
    }
    let (n, unit) = if a < 60.0 {
        (a.floor(), "second")
    } else if a < 3600.0 {
        ((a / 60.0).floor(), "minute")
    } else if a < 86_400.0 {
        ((a / 3600.0).floor(), "hour")
    } else {
        ((a / 86_400.0).floor(), "day")
    };
    let plural = if n == 1.0 { "" } else { "s" };
    if d >= 0.0 {
        format!("{n} {unit}{plural} ago")
    } else {
        format!("in {n} {unit}{plural}")
    }
}

/// A time shown relative, with the exact time on hover (and refreshed by app.js).
fn time(epoch: f64, now: f64) -> Markup {
    if !epoch.is_finite() {
        return html! { span.muted { (relative(epoch, now)) } };
    }
    let iso = chrono::DateTime::from_timestamp_millis((epoch * 1000.0) as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    html! {
        time.rel datetime=(iso) data-epoch=(epoch) title=(exact(epoch)) { (relative(epoch, now)) }
    }
}

fn opt_time(epoch: Option<f64>, now: f64) -> Markup {
    match epoch {
        Some(t) => time(t, now),
        None => html! { span.muted { "—" } },
    }
}

const NAV: [(&str, &str); 9] = [
    ("dashboard", "Dashboard"),
    ("busy", "Busy"),
    ("queues", "Queues"),
    ("retries", "Retries"),
    ("scheduled", "Scheduled"),
    ("dead", "Dead"),
    ("batches", "Batches"),
    ("periodic", "Periodic"),
    ("job-metrics", "Metrics"),
];

/// The live-stats field a nav entry's count follows.
fn stat_key(slug: &str) -> &str {
    match slug {
        "queues" => "enqueued",
        other => other,
    }
}

fn layout(c: &Ctx<'_>, title: &str, active: &str, flash: Option<Markup>, body: Markup) -> Markup {
    let o = &c.overview;
    let count = |slug: &str| match slug {
        "busy" => Some(o.busy),
        "queues" => Some(o.enqueued),
        "retries" => Some(o.retries),
        "scheduled" => Some(o.scheduled),
        "dead" => Some(o.dead),
        _ => None,
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                meta name="csrf-token" content=(c.sec.csrf);
                title { (v(title)) " · Errand" }
                link rel="icon" href=(c.url("/assets/favicon.svg")) type="image/svg+xml";
                link rel="stylesheet" href=(c.url("/assets/app.css"));
                script src=(c.url("/assets/theme.js")) nonce=(c.sec.nonce) {}
                script src=(c.url("/assets/app.js")) nonce=(c.sec.nonce) defer {}
            }
            body {
                header.topbar {
                    a.brand href=(c.url("/")) {
                        img src=(c.url("/assets/favicon.svg")) alt="" width="22" height="22";
                        " Errand"
                    }
                    nav.nav aria-label="Main" {
                        @for (slug, label) in NAV {
                            @let href = if slug == "dashboard" { c.url("/") } else { c.url(&format!("/{slug}")) };
                            a.nav-link.active[slug == active] href=(href) aria-current=[(slug == active).then_some("page")] {
                                (label)
                                @if let Some(n) = count(slug).filter(|n| *n > 0) {
                                    " " span.count data-stat=(stat_key(slug)) { (num(n)) }
                                }
                            }
                        }
                    }
                    span.backend { (c.backend) }
                    @if c.st.config.auth.is_enabled() {
                        form.inline method="post" action=(c.url("/logout")) {
                            (c.csrf())
                            button.btn.btn-ghost.btn-sm type="submit" { "Sign out" }
                        }
                    }
                    button #theme-toggle.icon-btn type="button" aria-label="Toggle dark mode" title="Toggle dark mode" {}
                }
                main.container {
                    @if let Some(f) = flash { (f) }
                    (body)
                    footer.footer {
                        "Errand " (env!("CARGO_PKG_VERSION")) " · rendered " (time(c.now, c.now))
                    }
                }
            }
        }
    }
}

fn page(c: &Ctx<'_>, title: &str, active: &str, q: &ListQuery, body: Markup) -> Response {
    let flash = flash(q);
    let mut resp = layout(c, title, active, flash, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// The message after an action, from the fixed codes the redirects use (never free text).
fn flash(q: &ListQuery) -> Option<Markup> {
    let n = clamp_num(q.n.as_deref(), 0, 0, u64::MAX);
    let jobs = |n: u64| format!("{} job{}", num(n), if n == 1 { "" } else { "s" });
    let done = q.done.as_deref()?;
    if let Some(action) = done.strip_suffix("-more") {
        let did = match action {
            "retry" => "enqueued",
            "delete" => "deleted",
            "kill" => "moved to Dead",
            _ => return None,
        };
        return Some(html! {
            div.flash.flash-ok role="status" {
                (jobs(n)) " " (did) "; more remain (one action does at most "
                (num(api::MAX_ALL as u64)) " jobs, or 20 s of work): run it again for the rest."
            }
        });
    }
    let (ok, text) = match done {
        "retry" => (true, format!("{} enqueued", jobs(n))),
        "delete" => (true, format!("{} deleted", jobs(n))),
        "kill" => (true, format!("{} moved to Dead", jobs(n))),
        "gone" => (
            false,
            "That job is no longer there (it ran, moved or was deleted meanwhile).".into(),
        ),
        "paused" => (
            true,
            "Queue paused: servers stop fetching from it within a heartbeat.".into(),
        ),
        "resumed" => (true, "Queue resumed.".into()),
        "periodic-paused" => (
            true,
            "Periodic entry paused: no tick is enqueued until it is resumed.".into(),
        ),
        "periodic-resumed" => (true, "Periodic entry resumed.".into()),
        "periodic-run" => (true, "Job enqueued now.".into()),
        "periodic-gone" => (
            false,
            "That periodic entry is no longer there (no server declares it).".into(),
        ),
        "cleared" => (true, format!("Queue cleared: {} removed", jobs(n))),
        "cancel-queued" => (true, "Job cancelled: removed from its queue before it ran.".into()),
        "cancel-scheduled" => (true, "Job cancelled: removed from the schedule before it ran.".into()),
        "cancel-retrying" => (true, "Job cancelled: removed from the retries; it will not run again.".into()),
        "cancel-running" => (
            true,
            "Cancel sent: the job is told to stop at its process's next heartbeat.".into(),
        ),
        "cancel-not_found" => (
            false,
            "That job is not waiting or running: it already finished (or is dead, or never existed)."
                .into(),
        ),
        "quiet" => (
            true,
            format!(
                "Quiet sent to {} process{} (taken at the next heartbeat)",
                num(n),
                if n == 1 { "" } else { "es" }
            ),
        ),
        "stop" => (
            true,
            format!(
                "Stop sent to {} process{} (taken at the next heartbeat)",
                num(n),
                if n == 1 { "" } else { "es" }
            ),
        ),
        _ => return None,
    };
    Some(html! {
        div class=(if ok { "flash flash-ok" } else { "flash flash-error" }) role="status" { (text) }
    })
}

/// Where to go after an action: `return_to` when it is a path of ours, else `fallback`.
fn back(st: &AppState, posted: &Posted, fallback: &str, done: &str, n: u64) -> Response {
    let base = &st.config.base_path;
    let target = posted
        .get("return_to")
        .filter(|r| {
            r.starts_with(&format!("{base}/"))
                && !r.starts_with("//")
                && !r.contains("://")
                && !r.contains('\\')
        })
        .map(str::to_string)
        .unwrap_or_else(|| st.url(fallback));
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let kept: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "done" && k != "n")
        .map(|(k, v)| format!("{}={}", enc(&k), enc(&v)))
        .collect();
    let mut q = kept.join("&");
    if !q.is_empty() {
        q.push('&');
    }
    q.push_str(&format!("done={done}&n={n}"));
    Redirect::to(&format!("{path}?{q}")).into_response()
}

fn cards(o: &Overview) -> Markup {
    let items: [(&str, &str, u64, &str); 8] = [
        ("processed", "Processed", o.processed, ""),
        (
            "failed",
            "Failed",
            o.failed,
            if o.failed > 0 { "stat-danger" } else { "" },
        ),
        ("busy", "Busy", o.busy, ""),
        ("enqueued", "Enqueued", o.enqueued, ""),
        (
            "retries",
            "Retries",
            o.retries,
            if o.retries > 0 { "stat-warn" } else { "" },
        ),
        ("scheduled", "Scheduled", o.scheduled, ""),
        (
            "dead",
            "Dead",
            o.dead,
            if o.dead > 0 { "stat-danger" } else { "" },
        ),
        ("processes", "Processes", o.processes, ""),
    ];
    // Cancelled and expired jobs are rare: their cards appear once there are some.
    let rare = [
        ("cancelled", "Cancelled", o.cancelled),
        ("expired", "Expired", o.expired),
    ];
    html! {
        section.cards {
            @for (key, label, value, extra) in items {
                div class=(format!("card stat {extra}")) {
                    div.stat-label { (label) }
                    div.stat-value data-stat=(key) { (num(value)) }
                }
            }
            @for (key, label, value) in rare {
                @if value > 0 {
                    div class="card stat" {
                        div.stat-label { (label) }
                        div.stat-value data-stat=(key) { (num(value)) }
                    }
                }
            }
        }
    }
}

/// A server-rendered SVG line chart of daily history.
fn history_chart(days: &[(String, u64, u64)]) -> Markup {
    let (w, h, left, bottom, top) = (800.0, 200.0, 48.0, 22.0, 10.0);
    let max = days
        .iter()
        .map(|(_, p, f)| (*p).max(*f))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = days.len().max(2) as f64 - 1.0;
    let x = |i: usize| left + (w - left - 8.0) * i as f64 / n;
    let y = |v: u64| top + (h - top - bottom) * (1.0 - v as f64 / max);
    let points = |pick: fn(&(String, u64, u64)) -> u64| {
        days.iter()
            .enumerate()
            .map(|(i, d)| format!("{:.1},{:.1}", x(i), y(pick(d))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let first = days.first().map(|d| d.0.as_str()).unwrap_or("");
    let last = days.last().map(|d| d.0.as_str()).unwrap_or("");
    let total_p: u64 = days.iter().map(|d| d.1).sum();
    let total_f: u64 = days.iter().map(|d| d.2).sum();
    html! {
        svg.chart.history viewBox="0 0 800 200" role="img"
            aria-label=(format!("Processed and failed per day from {first} to {last}: {} processed, {} failed", num(total_p), num(total_f))) {
            g.grid {
                @for i in 0..=4 {
                    @let gy = top + (h - top - bottom) * f64::from(i) / 4.0;
                    line x1=(left) x2=(w - 8.0) y1=(format!("{gy:.1}")) y2=(format!("{gy:.1}")) {}
                }
            }
            polyline.series.series-processed points=(points(|d| d.1)) {}
            polyline.series.series-failed points=(points(|d| d.2)) {}
            g.axis {
                text x="4" y=(top + 10.0) { (num(max as u64)) }
                text x="4" y=(h - bottom) { "0" }
                text x=(left) y=(h - 4.0) { (first) }
                text x=(w - 8.0) y=(h - 4.0) text-anchor="end" { (last) }
            }
        }
        div.legend { span.key.key-processed { "Processed" } span.key.key-failed { "Failed" } }
    }
}

/// `GET /`: totals, live rates, history, backend facts.
pub(crate) async fn dashboard(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Query(q): Query<ListQuery>,
) -> Response {
    let c = or_fail!(ctx(&st, &sec).await);
    let days = q.days();
    let history = or_fail!(api::history(&*st.admin, days).await);
    let info = &c.info;
    let body = html! {
        div.page-head {
            h1 { "Dashboard" }
            p.subtitle { "Everything Errand (and Sidekiq) holds on this " (info.kind) " backend." }
        }
        (cards(&c.overview))
        section.panel {
            div.panel-head { h2 { "Live" } div.panel-tools { span.muted { "processed and failed per second" } } }
            div.live data-stream=(c.url("/api/stream?interval=2")) {
                svg.chart.live-chart viewBox="0 0 800 200" aria-label="Processed and failed per second" {}
                div.live-status aria-live="polite" { "Live chart needs JavaScript." }
            }
        }
        section.panel {
            div.panel-head {
                h2 { "History" }
                div.panel-tools {
                    @for d in [7u32, 30, 90, 180] {
                        a.page-link.active[d == days] href=(c.url(&format!("/?days={d}"))) { (d) " days" }
                    }
                }
            }
            (history_chart(&history))
        }
        section.panel {
            div.panel-head { h2 { "Backend" } }
            dl.kv {
                dt { "Kind" } dd { (info.kind) }
                @for (k, v) in &info.facts {
                    dt { (k) } dd.mono { (v) }
                }
            }
        }
    };
    page(&c, "Dashboard", "dashboard", &q, body)
}

/// `GET /busy`: processes and running jobs.
pub(crate) async fn busy(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Query(q): Query<ListQuery>,
) -> Response {
    let c = or_fail!(ctx(&st, &sec).await);
    let (processes, work) = or_fail!(api::busy(&*st.admin).await);
    let return_to = c.url("/busy");
    let body = html! {
        div.page-head {
            h1 { "Busy" }
            p.subtitle { (plural(processes.len() as u64, "process", "processes")) ", " (plural(work.len() as u64, "job", "jobs")) " running" }
            div.actions {
                form.inline method="post" action=(c.url("/busy/quiet")) {
                    (c.csrf()) input type="hidden" name="identity" value="all";
                    input type="hidden" name="return_to" value=(return_to);
                    button.btn data-confirm="Quiet every process? They stop fetching new jobs." { "Quiet all" }
                }
                form.inline method="post" action=(c.url("/busy/stop")) {
                    (c.csrf()) input type="hidden" name="identity" value="all";
                    input type="hidden" name="return_to" value=(return_to);
                    button.btn.btn-danger data-confirm="Stop every process? They finish or requeue their jobs and exit." { "Stop all" }
                }
            }
        }
        section.panel {
            div.panel-head { h2 { "Processes" } }
            @if processes.is_empty() {
                div.empty { "No live processes. Start a server and it appears here within a heartbeat." }
            } @else {
                div.table-wrap { table.table {
                    thead { tr {
                        th { "Process" } th { "Queues" } th { "Busy" } th { "Started" } th { "Last beat" } th { "RSS" } th { "Status" } th { }
                    } }
                    tbody {
                        @for p in &processes {
                            tr {
                                td {
                                    div.mono { (v(&p.hostname)) ":" (p.pid) }
                                    div.muted.small {
                                        @if !p.tag.is_empty() { span.badge.badge-info { (v(&p.tag)) } " " }
                                        (if p.errand { p.version.as_str() } else if p.version.is_empty() { "sidekiq (ruby)" } else { p.version.as_str() })
                                    }
                                }
                                td.mono { (v(&p.queues.join(", "))) }
                                td {
                                    (p.busy) " / " (p.concurrency)
                                    div.bar data-value=(p.busy) data-max=(p.concurrency.max(1)) { div.bar-fill {} }
                                }
                                td { (opt_time(p.started_at, c.now)) }
                                td { (time(p.beat, c.now)) }
                                td { (format!("{:.1} MB", p.rss_kb as f64 / 1024.0)) }
                                td {
                                    @if p.quiet { span.badge.badge-warn { "quiet" } } @else { span.badge.badge-ok { "running" } }
                                }
                                td.row-actions {
                                    @if !p.quiet {
                                        form.inline method="post" action=(c.url("/busy/quiet")) {
                                            (c.csrf()) input type="hidden" name="identity" value=(p.identity);
                                            input type="hidden" name="return_to" value=(return_to);
                                            button.btn.btn-sm { "Quiet" }
                                        }
                                    }
                                    form.inline method="post" action=(c.url("/busy/stop")) {
                                        (c.csrf()) input type="hidden" name="identity" value=(p.identity);
                                        input type="hidden" name="return_to" value=(return_to);
                                        button.btn.btn-sm.btn-danger data-confirm=(format!("Stop {}:{}?", p.hostname, p.pid)) { "Stop" }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
        section.panel {
            div.panel-head { h2 { "Running jobs" } }
            @if work.is_empty() {
                div.empty { "Nothing is running right now." }
            } @else {
                div.table-wrap { table.table {
                    thead { tr { th { "Process" } th { "Queue" } th { "Job" } th { "Arguments" } th { "Started" } th { "Progress" } th { } } }
                    tbody {
                        @for w in &work {
                            tr {
                                td.mono.small { (v(&w.identity)) " " span.muted { (v(&w.tid)) } }
                                td { a href=(c.url(&format!("/queues/{}", enc(&w.queue)))) { (v(&w.queue)) } }
                                td { div { (v(&w.job.class)) } div.mono.muted.small { (v(&w.job.jid)) } }
                                td.args { code { (v(&w.job.args_preview())) } }
                                td { (time(w.run_at, c.now)) " " span.muted { "(" (dur(c.now - w.run_at)) ")" } }
                                td.progress {
                                    @if let Some(p) = &w.progress {
                                        div.small { (p.percent) "% " span.muted { (v(&p.message)) } }
                                        div.bar data-value=(p.percent) data-max="100" { div.bar-fill {} }
                                    } @else { span.muted { "—" } }
                                }
                                td.row-actions {
                                    @if !w.job.jid.is_empty() {
                                        (cancel_button(&c, &w.job.jid, &return_to))
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    };
    page(&c, "Busy", "busy", &q, body)
}

/// A form that cancels job `jid` (`POST /jobs/cancel`), then returns to `return_to`.
fn cancel_button(c: &Ctx<'_>, jid: &str, return_to: &str) -> Markup {
    html! {
        form.inline method="post" action=(c.url("/jobs/cancel")) {
            (c.csrf())
            input type="hidden" name="jid" value=(jid);
            input type="hidden" name="return_to" value=(return_to);
            button.btn.btn-sm.btn-danger data-confirm=(format!("Cancel job {jid}? A running job is told to stop at its process's next heartbeat.")) { "Cancel" }
        }
    }
}

/// `POST /jobs/cancel` (`jid`): cancels a job wherever it is (see `errand::Client::cancel`).
pub(crate) async fn cancel_job(State(st): State<AppState>, posted: Posted) -> Response {
    let Some(jid) = posted.get("jid").filter(|j| !j.trim().is_empty()) else {
        return security::status(StatusCode::BAD_REQUEST);
    };
    match api::cancel(&*st.broker, jid).await {
        Ok(found) => {
            let (code, _) = api::cancel_outcome(&found);
            back(&st, &posted, "/busy", &format!("cancel-{code}"), 1)
        }
        Err(e) => failure(e),
    }
}

/// `POST /busy/{quiet|stop}`: signals one process (`identity`) or all (`identity=all`).
pub(crate) async fn busy_action(
    State(st): State<AppState>,
    Path(action): Path<String>,
    posted: Posted,
) -> Response {
    let signal = match action.as_str() {
        "quiet" => RemoteSignal::Quiet,
        "stop" => RemoteSignal::Stop,
        _ => return security::status(StatusCode::NOT_FOUND),
    };
    match api::send_signal(&*st.admin, posted.get("identity").unwrap_or(""), signal).await {
        Ok(n) => back(&st, &posted, "/busy", &action, n),
        Err(e) => failure(e),
    }
}

/// `GET /queues`.
pub(crate) async fn queues(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Query(q): Query<ListQuery>,
) -> Response {
    let c = or_fail!(ctx(&st, &sec).await);
    let queues = or_fail!(api::queues(&*st.admin).await);
    let return_to = c.url("/queues");
    let body = html! {
        div.page-head { h1 { "Queues" } p.subtitle { (plural(queues.len() as u64, "queue", "queues")) ", " (plural(c.overview.enqueued, "job", "jobs")) " waiting" } }
        section.panel {
            @if queues.is_empty() {
                div.empty { "No queues yet: they appear when the first job is pushed." }
            } @else {
                div.table-wrap { table.table {
                    thead { tr { th { "Queue" } th.num { "Size" } th.num { "Latency" } th { "Status" } th { } } }
                    tbody {
                        @for qv in &queues {
                            @let base = format!("/queues/{}", enc(&qv.name));
                            tr {
                                td { a href=(c.url(&base)) { (v(&qv.name)) } }
                                td.num { (num(qv.size)) }
                                td.num title="Age of the next job to run" { @if qv.size > 0 { (dur(qv.latency)) } @else { span.muted { "—" } } }
                                td { @if qv.paused { span.badge.badge-warn { "paused" } } @else { span.badge.badge-ok { "active" } } }
                                td.row-actions {
                                    form.inline method="post" action=(c.url(&format!("{base}/{}", if qv.paused { "resume" } else { "pause" }))) {
                                        (c.csrf()) input type="hidden" name="return_to" value=(return_to);
                                        button.btn.btn-sm { @if qv.paused { "Resume" } @else { "Pause" } }
                                    }
                                    form.inline method="post" action=(c.url(&format!("{base}/clear"))) {
                                        (c.csrf()) input type="hidden" name="return_to" value=(return_to);
                                        button.btn.btn-sm.btn-danger data-confirm=(format!("Delete all {} jobs in {}?", num(qv.size), qv.name)) { "Clear" }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    };
    page(&c, "Queues", "queues", &q, body)
}

/// `GET /periodic`.
pub(crate) async fn periodic(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Query(q): Query<ListQuery>,
) -> Response {
    let c = or_fail!(ctx(&st, &sec).await);
    let entries = or_fail!(api::periodic(&*st.broker, c.now).await);
    let return_to = c.url("/periodic");
    let body = html! {
        div.page-head { h1 { "Periodic" } p.subtitle { (plural(entries.len() as u64, "entry", "entries")) ", enqueued once per tick by the leading server" } }
        section.panel {
            @if entries.is_empty() {
                div.empty { "No periodic entries: declare them with ServerBuilder::periodic." }
            } @else {
                div.table-wrap { table.table {
                    thead { tr { th { "Name" } th { "Schedule" } th { "Job" } th { "Next run" } th { "Last run" } th { "Status" } th { } } }
                    tbody {
                        @for e in &entries {
                            @let base = format!("/periodic/{}", enc(&e.name));
                            tr {
                                td { (v(&e.name)) }
                                td { code { (v(&e.spec)) } " " span.muted { (v(&e.zone)) } }
                                td { (v(&e.class)) " " span.muted { "on " (v(&e.queue)) } }
                                td { (opt_time(e.next_run, c.now)) }
                                td {
                                    (opt_time(e.last_run, c.now))
                                    @if let Some(jid) = &e.last_jid {
                                        " " span.muted title="The job it enqueued" { (v(jid)) }
                                    }
                                }
                                td { @if e.paused { span.badge.badge-warn { "paused" } } @else { span.badge.badge-ok { "active" } } }
                                td.row-actions {
                                    form.inline method="post" action=(c.url(&format!("{base}/{}", if e.paused { "resume" } else { "pause" }))) {
                                        (c.csrf()) input type="hidden" name="return_to" value=(return_to);
                                        button.btn.btn-sm { @if e.paused { "Resume" } @else { "Pause" } }
                                    }
                                    form.inline method="post" action=(c.url(&format!("{base}/run"))) {
                                        (c.csrf()) input type="hidden" name="return_to" value=(return_to);
                                        button.btn.btn-sm { "Run now" }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    };
    page(&c, "Periodic", "periodic", &q, body)
}

/// `POST /periodic/{name}/{pause|resume|run}`.
pub(crate) async fn periodic_action(
    State(st): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    posted: Posted,
) -> Response {
    match crate::json::periodic_op(&st, &name, &action).await {
        Ok(Some((done, n))) => back(&st, &posted, "/periodic", done, n),
        Ok(None) => security::status(StatusCode::NOT_FOUND),
        Err(e) => failure(e),
    }
}

/// The link to batch `bid`'s page.
fn batch_url(c: &Ctx<'_>, bid: &str) -> String {
    c.url(&format!("/batches/{}", enc(bid)))
}

/// A batch's state as a badge (see [`BatchStatus::state`]).
fn batch_badge(s: &BatchStatus) -> Markup {
    let state = s.state();
    let (class, title) = match state {
        "succeeded" => ("badge badge-ok", "Every member succeeded"),
        "complete" => (
            "badge badge-warn",
            "Every member finished, and some are dead or cancelled",
        ),
        "building" => (
            "badge badge-muted",
            "Still being filled: it cannot complete yet",
        ),
        _ => (
            "badge badge-info",
            "Members are waiting, running or retrying",
        ),
    };
    html! { span class=(class) title=(title) { (state) } }
}

/// How much of a batch is done (succeeded, dead or cancelled), as a percentage and a bar.
fn batch_progress(s: &BatchStatus) -> Markup {
    let (done, percent) = s.done();
    html! {
        div.small { (percent) "% " span.muted { (num(done)) " of " (num(s.total)) " done" } }
        div.bar.share data-value=(percent) data-max="100" { div.bar-fill {} }
    }
}

/// A batch member: a child batch links to its page, a dead or retrying job to its set filtered
/// by its jid; other jobs are waiting, running or gone, and show as text.
fn member_link(c: &Ctx<'_>, member: &str, state: &str) -> Markup {
    if let Some(child) = member.strip_prefix("child:") {
        return html! { "batch " a.mono href=(batch_url(c, child)) { (v(child)) } };
    }
    let set = match state {
        "dead" => Some("dead"),
        "failed" | "retrying" => Some("retries"),
        _ => None,
    };
    match set {
        Some(slug) => html! {
            a.mono href=(c.url(&format!("/{slug}?q={}", enc(member)))) title="Look the job up" { (v(member)) }
        },
        None => html! { span.mono { (v(member)) } },
    }
}

/// A workflow step's state as a badge.
fn step_badge(state: &str) -> Markup {
    let class = match state {
        "succeeded" => "badge badge-ok",
        "dead" => "badge badge-danger",
        "retrying" => "badge badge-warn",
        "enqueued" => "badge badge-info",
        _ => "badge badge-muted",
    };
    let title = match state {
        "waiting" => "Waits for the steps it comes after",
        "enqueued" => "Queued or running",
        "retrying" => "Failed, and will be retried",
        "dead" => "In the dead set",
        "cancelled" => "Will never run: a step it needs died",
        _ => "Succeeded",
    };
    html! { span class=(class) title=(title) { (state) } }
}

fn member_title(state: MemberState) -> (&'static str, &'static str) {
    match state {
        MemberState::Pending => (
            "Pending",
            "not yet succeeded nor dead: waiting, running or retrying (failed and waiting members included)",
        ),
        MemberState::Failed => ("Failed", "failed at least once, and will be retried"),
        MemberState::Waiting => ("Waiting", "workflow steps not pushed yet"),
        MemberState::Dead => ("Dead", "in the dead set"),
        MemberState::Cancelled => (
            "Cancelled",
            "workflow steps that will never run: a step they need died",
        ),
    }
}

fn no_batches() -> Markup {
    html! {
        div.page-head { h1 { "Batches" } }
        section.panel { div.empty { "This backend does not keep batches." } }
    }
}

/// `GET /batches`: batches, newest first, paged.
pub(crate) async fn batches(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Query(q): Query<ListQuery>,
) -> Response {
    let c = or_fail!(ctx(&st, &sec).await);
    if !st.broker.capabilities().batches {
        return page(&c, "Batches", "batches", &q, no_batches());
    }
    let per_page = q.per_page();
    let page_no = q.page();
    let offset = ((page_no - 1) * per_page).min(api::MAX_OFFSET);
    let (list, total) = or_fail!(st.broker.batch_list(offset, per_page).await);
    let body = html! {
        div.page-head {
            h1 { "Batches" }
            p.subtitle { (plural(total as u64, "batch", "batches")) ", newest first; a batch is kept for a while after it completes" }
        }
        section.panel {
            @if list.is_empty() {
                div.empty {
                    @if total == 0 { "No batches: they appear when a batch or a workflow is created." }
                    @else { "No batches on this page." }
                }
            } @else {
                div.table-wrap { table.table {
                    thead { tr {
                        th { "Batch" } th { "Created" } th.num { "Total" } th.num { "Pending" } th.num { "Failed" }
                        th.num { "Dead" } th.num { "Cancelled" } th { "Done" } th { "State" }
                    } }
                    tbody {
                        @for s in &list {
                            tr {
                                td {
                                    a.mono href=(batch_url(&c, &s.bid)) { (v(&s.bid)) }
                                    @if s.workflow.is_some() { " " span.badge.badge-info.workflow-mark title="A workflow: steps that wait for others" { "workflow" } }
                                    @if !s.description.is_empty() { div.small { (v(&s.description)) } }
                                    @if let Some(p) = &s.parent { div.muted.small { "in batch " a.mono href=(batch_url(&c, p)) { (v(p)) } } }
                                }
                                td { (time(s.created_at, c.now)) }
                                td.num { (num(s.total)) }
                                td.num { (num(s.pending)) }
                                td.num { (num(s.failed)) }
                                td.num { (num(s.dead)) }
                                td.num { (num(s.cancelled)) }
                                td.progress { (batch_progress(s)) }
                                td { (batch_badge(s)) }
                            }
                        }
                    }
                } }
            }
            (pager(&c, "/batches", &q, page_no, per_page, total as u64))
        }
    };
    page(&c, "Batches", "batches", &q, body)
}

/// `GET /batches/{bid}`: a batch's status, its workflow's steps, and its members by state
/// (each list paged on its own: `state` says which list `page` is for).
pub(crate) async fn batch(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Path(bid): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let c = or_fail!(ctx(&st, &sec).await);
    let list = c.url("/batches");
    let supported = st.broker.capabilities().batches;
    let detail = if supported {
        or_fail!(api::batch_detail(&*st.broker, &bid).await)
    } else {
        None
    };
    let Some(detail) = detail else {
        let body = html! {
            div.page-head { h1 { "Batch not found" } }
            div.empty {
                @if supported { "This batch does not exist (or it completed and has expired). " }
                @else { "This backend does not keep batches. " }
                a href=(list) { "Back to Batches" }
            }
        };
        let mut resp = page(&c, "Batch not found", "batches", &q, body);
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    };
    let s = &detail.batch;
    let wf = detail.steps.as_ref();
    let step_names: std::collections::HashMap<&str, &str> = wf
        .into_iter()
        .flatten()
        .map(|step| (step.jid.as_str(), step.name.as_str()))
        .collect();
    let per_page = q.per_page();
    let selected = q.member_state();
    let mut sections = Vec::new();
    for state in MemberState::ALL {
        let count = crate::json::member_count(s, state);
        if count == 0 {
            continue;
        }
        let page_no = if selected == Some(state) { q.page() } else { 1 };
        let offset = ((page_no - 1) * per_page).min(api::MAX_OFFSET);
        let members =
            or_fail!(crate::json::member_page(&st, &detail, state, offset, per_page).await);
        sections.push((state, count, page_no, offset, members));
    }
    let base = format!("/batches/{}", enc(&bid));
    let body = html! {
        div.page-head {
            h1 { "Batch " span.mono { (v(&s.bid)) } }
            p.subtitle {
                a href=(list) { "‹ Batches" } " · " (batch_badge(s))
                @if s.workflow.is_some() { " " span.badge.badge-info.workflow-mark { "workflow" } }
                @if !s.description.is_empty() { " · " (v(&s.description)) }
            }
        }
        section.panel {
            dl.kv {
                dt { "Description" } dd { @if s.description.is_empty() { span.muted { "—" } } @else { (v(&s.description)) } }
                dt { "State" } dd { (batch_badge(s)) @if s.building { " " span.muted.small { "(still being filled)" } } }
                dt { "Done" } dd.progress { (batch_progress(s)) }
                dt { "Total" } dd { (num(s.total)) }
                dt { "Pending" } dd { (num(s.pending)) }
                dt { "Failed" } dd { (num(s.failed)) }
                dt { "Waiting" } dd { (num(s.waiting)) }
                dt { "Dead" } dd { (num(s.dead)) }
                dt { "Cancelled" } dd { (num(s.cancelled)) }
                dt { "Created" } dd { (time(s.created_at, c.now)) " " span.muted.small { (exact(s.created_at)) } }
                dt { "Completed" } dd { (opt_time(s.complete_at, c.now)) }
                dt { "Succeeded" } dd { (opt_time(s.success_at, c.now)) }
                dt { "First death" } dd { (opt_time(s.death_at, c.now)) }
                dt { "Parent batch" } dd {
                    @if let Some(p) = &s.parent { a.mono href=(batch_url(&c, p)) { (v(p)) } } @else { span.muted { "—" } }
                }
                dt { "Callbacks" } dd {
                    @if s.callbacks.is_empty() { span.muted { "none" } } @else { (v(&s.callbacks.join(", "))) }
                }
                @if wf.is_some() { dt { "Failure policy" } dd.mono { (v(&s.policy)) } }
            }
        }
        @if let Some(steps) = wf {
            section.panel {
                div.panel-head { h2 { "Steps" } div.panel-tools { span.muted { "each step's state, from the member lists" } } }
                @if steps.is_empty() {
                    div.empty { "No steps could be read from the workflow's definition." }
                    pre.code { (v(s.workflow.as_deref().unwrap_or_default())) }
                } @else {
                    div.table-wrap { table.table.steps {
                        thead { tr { th { "Step" } th { "Job" } th { "State" } th { "Waits for" } } }
                        tbody {
                            @for step in steps {
                                tr data-step=(step.name) {
                                    td { (v(&step.name)) }
                                    td {
                                        @if !step.class.is_empty() {
                                            div { (v(&step.class)) @if !step.queue.is_empty() { " " span.muted { "on " (v(&step.queue)) } } }
                                        }
                                        div.small { (member_link(&c, &step.jid, step.state)) }
                                    }
                                    td.step-state { (step_badge(step.state)) }
                                    td {
                                        @if step.after.is_empty() { span.muted { "—" } }
                                        @else { (v(&step.after.join(", "))) }
                                    }
                                }
                            }
                        }
                    } }
                }
            }
        }
        @if sections.is_empty() {
            section.panel {
                div.panel-head { h2 { "Members" } }
                div.empty { "No member is pending, dead or cancelled: every member succeeded." }
            }
        }
        @for (state, count, page_no, offset, members) in &sections {
            @let (title, about) = member_title(*state);
            @let pq = ListQuery { state: Some(state.as_str().to_string()), per_page: q.per_page.clone(), ..Default::default() };
            section.panel id=(format!("members-{}", state.as_str())) {
                div.panel-head { h2 { (title) " " span.muted { "(" (num(*count)) ")" } } div.panel-tools { span.muted { (about) } } }
                @if members.is_empty() {
                    div.empty { "No members on this page." }
                } @else {
                    div.table-wrap { table.table {
                        thead { tr { th.num { "#" } th { "Member" } @if wf.is_some() { th { "Step" } } } }
                        tbody {
                            @for (i, m) in members.iter().enumerate() {
                                tr {
                                    td.num.muted { (num((offset + i + 1) as u64)) }
                                    td { (member_link(&c, m, state.as_str())) }
                                    @if wf.is_some() { td { (v(step_names.get(m.as_str()).copied().unwrap_or(""))) } }
                                }
                            }
                        }
                    } }
                }
                (pager(&c, &base, &pq, *page_no, per_page, *count))
            }
        }
    };
    page(&c, &format!("Batch {bid}"), "batches", &q, body)
}

fn pager(
    c: &Ctx<'_>,
    path: &str,
    q: &ListQuery,
    page: usize,
    per_page: usize,
    total: u64,
) -> Markup {
    let pages = (total as usize).div_ceil(per_page).max(1);
    let link = |p: usize| {
        let mut parts = vec![format!("page={p}")];
        for (k, v) in [
            ("per_page", q.per_page.as_deref()),
            ("sort", q.sort.as_deref()),
            ("class", q.class.as_deref()),
            ("queue", q.queue.as_deref()),
            ("error", q.error.as_deref()),
            ("q", q.q.as_deref()),
            ("state", q.state.as_deref()),
        ] {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                parts.push(format!("{k}={}", enc(v)));
            }
        }
        c.url(&format!("{path}?{}", parts.join("&")))
    };
    html! {
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if page > 1 { a.page-link href=(link(page - 1)) rel="prev" { "‹ Prev" } }
                span.page-info { "Page " (num(page as u64)) " of " (num(pages as u64)) }
                @if page < pages { a.page-link href=(link(page + 1)) rel="next" { "Next ›" } }
            }
        }
    }
}

/// `GET /queues/{name}`: a queue's jobs, paged.
pub(crate) async fn queue(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let c = or_fail!(ctx(&st, &sec).await);
    let all = or_fail!(api::queues(&*st.admin).await);
    let info = all.into_iter().find(|x| x.name == name);
    let (size, paused) = info.as_ref().map_or((0, false), |i| (i.size, i.paused));
    let per_page = q.per_page();
    let page_no = q.page();
    let order = q.order(Order::Asc);
    let offset = ((page_no - 1) * per_page).min(api::MAX_OFFSET);
    let entries = or_fail!(
        st.admin
            .queue_page(QueueRange {
                queue: &name,
                offset,
                limit: per_page,
                order
            })
            .await
    );
    let base = format!("/queues/{}", enc(&name));
    let return_to = c.url(&format!(
        "{base}?page={page_no}&sort={}",
        if order == Order::Asc { "asc" } else { "desc" }
    ));
    let body = html! {
        div.page-head {
            h1 { "Queue " span.mono { (v(&name)) } }
            p.subtitle {
                (plural(size, "job", "jobs"))
                @if let Some(i) = &info { @if i.size > 0 { " · latency " (dur(i.latency)) } }
                @if paused { " · " span.badge.badge-warn { "paused" } }
            }
            div.actions {
                form.inline method="post" action=(c.url(&format!("{base}/{}", if paused { "resume" } else { "pause" }))) {
                    (c.csrf()) input type="hidden" name="return_to" value=(return_to);
                    button.btn { @if paused { "Resume" } @else { "Pause" } }
                }
                form.inline method="post" action=(c.url(&format!("{base}/clear"))) {
                    (c.csrf()) input type="hidden" name="return_to" value=(c.url("/queues"));
                    button.btn.btn-danger data-confirm=(format!("Delete all {} jobs in {name}?", num(size))) { "Clear queue" }
                }
            }
        }
        section.panel {
            @if entries.is_empty() {
                div.empty { "This queue is empty." }
            } @else {
                div.table-wrap { table.table {
                    thead { tr {
                        th.num {
                            a.sort href=(c.url(&format!("{base}?sort={}", if order == Order::Asc { "desc" } else { "asc" }))) {
                                @if order == Order::Asc { "Next to run ▴" } @else { "Newest ▾" }
                            }
                        }
                        th { "Job" } th { "Arguments" } th { "Enqueued" } th { }
                    } }
                    tbody {
                        @for (i, raw) in entries.iter().enumerate() {
                            @let job = JobView::new(raw);
                            tr {
                                td.num.muted { (num((offset + i + 1) as u64)) }
                                td { div { (v(&job.class)) } div.mono.muted.small { (v(&job.jid)) } }
                                td.args { code { (v(&job.args_preview())) } }
                                td { (opt_time(job.enqueued_at, c.now)) }
                                td.row-actions {
                                    form.inline method="post" action=(c.url(&format!("{base}/delete"))) {
                                        (c.csrf()) input type="hidden" name="raw" value=(raw);
                                        input type="hidden" name="return_to" value=(return_to);
                                        button.btn.btn-sm.btn-danger data-confirm="Delete this job?" { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                } }
                (pager(&c, &base, &q, page_no, per_page, size))
            }
        }
    };
    page(&c, &format!("Queue {name}"), "queues", &q, body)
}

/// `POST /queues/{name}/{pause|resume|clear|delete}`.
pub(crate) async fn queue_action(
    State(st): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    posted: Posted,
) -> Response {
    let fallback = format!("/queues/{}", enc(&name));
    match crate::json::queue_op(&st, &name, &action, posted.get("raw")).await {
        Ok(Some((done, n))) => back(&st, &posted, &fallback, done, n),
        Ok(None) => security::status(StatusCode::NOT_FOUND),
        Err(e) => failure(e),
    }
}

fn set_title(set: SetName) -> &'static str {
    match set {
        SetName::Retry => "Retries",
        SetName::Scheduled => "Scheduled",
        SetName::Dead => "Dead",
    }
}

fn default_order(set: SetName) -> Order {
    match set {
        SetName::Dead => Order::Desc,
        _ => Order::Asc,
    }
}

fn retry_label(set: SetName) -> &'static str {
    match set {
        SetName::Scheduled => "Run now",
        _ => "Retry now",
    }
}

fn when_label(set: SetName) -> &'static str {
    match set {
        SetName::Retry => "Next retry",
        SetName::Scheduled => "Runs",
        SetName::Dead => "Died",
    }
}

fn row_actions(c: &Ctx<'_>, set: SetName, e: &Entry, return_to: &str) -> Markup {
    let slug = set_slug(set);
    let form = |action: &str, label: &str, class: &str, confirm: Option<&str>| {
        html! {
            form.inline method="post" action=(c.url(&format!("/{slug}/job/{action}"))) {
                (c.csrf())
                input type="hidden" name="key" value=(e.key);
                input type="hidden" name="return_to" value=(return_to);
                button class=(format!("btn btn-sm {class}")) data-confirm=[confirm] { (label) }
            }
        }
    };
    html! {
        @if e.job.readable { (form("retry", retry_label(set), "", None)) }
        @if set != SetName::Dead { (form("kill", "Kill", "", Some("Move this job to Dead?"))) }
        (form("delete", "Delete", "btn-danger", Some("Delete this job?")))
    }
}

/// `GET /retries`, `/scheduled`, `/dead`: a set, paged, sortable and filtered.
pub(crate) async fn set_list(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Query(q): Query<ListQuery>,
    set: SetName,
) -> Response {
    let c = or_fail!(ctx(&st, &sec).await);
    let order = q.order(default_order(set));
    let filter = q.filter();
    let listing: SetPage =
        or_fail!(api::set_page(&*st.admin, set, q.page(), q.per_page(), order, &filter).await);
    let slug = set_slug(set);
    let path = format!("/{slug}");
    let mut here = vec![format!("page={}", listing.page)];
    for (k, v) in [
        ("sort", q.sort.as_deref()),
        ("class", filter.class.as_deref()),
        ("queue", filter.queue.as_deref()),
        ("error", filter.error.as_deref()),
        ("q", filter.text.as_deref()),
    ] {
        if let Some(v) = v {
            here.push(format!("{k}={}", enc(v)));
        }
    }
    let return_to = c.url(&format!("{path}?{}", here.join("&")));
    let flip = if order == Order::Asc { "desc" } else { "asc" };
    let mut sort_link = vec![format!("sort={flip}")];
    sort_link.extend(
        here.iter()
            .skip(1)
            .filter(|p| !p.starts_with("sort="))
            .cloned(),
    );
    let filter_fields = html! {
        @if let Some(v) = &filter.class { input type="hidden" name="class" value=(v); }
        @if let Some(v) = &filter.queue { input type="hidden" name="queue" value=(v); }
        @if let Some(v) = &filter.error { input type="hidden" name="error" value=(v); }
        @if let Some(v) = &filter.text { input type="hidden" name="q" value=(v); }
    };
    let scope = if filter.is_empty() {
        "all"
    } else {
        "all matching"
    };
    let body = html! {
        div.page-head {
            h1 { (set_title(set)) }
            p.subtitle {
                (num(listing.total)) @if listing.total == 1 { " job" } @else { " jobs" } @if !filter.is_empty() { " matching" }
                @if listing.truncated { " (only the first " (num(api::MAX_SCAN as u64)) " were searched)" }
            }
            div.actions {
                form.inline method="post" action=(c.url(&format!("{path}/all"))) {
                    (c.csrf()) (filter_fields)
                    input type="hidden" name="return_to" value=(return_to);
                    @if set != SetName::Dead || listing.total > 0 {
                        button.btn name="action" value="retry" data-confirm=(format!("{} {scope} {} jobs?", retry_label(set), num(listing.total))) disabled[listing.total == 0] { @if filter.is_empty() { (retry_label(set).replace(" now", "")) " all" } @else { (retry_label(set)) " all matching" } }
                    }
                    @if set != SetName::Dead {
                        button.btn name="action" value="kill" data-confirm=(format!("Kill {scope} {} jobs?", num(listing.total))) disabled[listing.total == 0] { "Kill " (scope) }
                    }
                    button.btn.btn-danger name="action" value="delete" data-confirm=(format!("Delete {scope} {} jobs?", num(listing.total))) disabled[listing.total == 0] { "Delete " (scope) }
                }
            }
        }
        div.toolbar {
            form.filters method="get" action=(c.url(&path)) {
                input.input type="search" name="class" placeholder="Class" value=[filter.class.as_deref()] aria-label="Class";
                input.input type="search" name="queue" placeholder="Queue" value=[filter.queue.as_deref()] aria-label="Queue";
                @if set != SetName::Scheduled {
                    input.input type="search" name="error" placeholder="Error text" value=[filter.error.as_deref()] aria-label="Error text";
                }
                input.input type="search" name="q" placeholder="Job id or arguments" value=[filter.text.as_deref()] aria-label="Job id or arguments";
                @if let Some(s) = &q.sort { input type="hidden" name="sort" value=(s); }
                button.btn type="submit" { "Filter" }
                @if !filter.is_empty() { a.btn.btn-ghost href=(c.url(&path)) { "Reset" } }
            }
        }
        section.panel {
            @if listing.entries.is_empty() {
                div.empty {
                    @if !filter.is_empty() { "No job matches this filter." }
                    @else { @match set {
                        SetName::Retry => "No retries — all clear.",
                        SetName::Scheduled => "Nothing scheduled.",
                        SetName::Dead => "No dead jobs.",
                    } }
                }
            } @else {
                form #bulk.bulk-bar method="post" action=(c.url(&format!("{path}/bulk"))) {
                    (c.csrf())
                    input type="hidden" name="return_to" value=(return_to);
                    span.selected-count data-group="jobs" { "0 selected" }
                    button.btn.btn-sm name="action" value="retry" data-needs-selection { (retry_label(set)) }
                    @if set != SetName::Dead {
                        button.btn.btn-sm name="action" value="kill" data-needs-selection data-confirm="Kill the selected jobs?" { "Kill" }
                    }
                    button.btn.btn-sm.btn-danger name="action" value="delete" data-needs-selection data-confirm="Delete the selected jobs?" { "Delete" }
                }
                div.table-wrap { table.table {
                    thead { tr {
                        th.check { input.select-all type="checkbox" data-group="jobs" aria-label="Select all"; }
                        th { a.sort href=(c.url(&format!("{path}?{}", sort_link.join("&")))) { (when_label(set)) @if order == Order::Asc { " ▴" } @else { " ▾" } } }
                        th { "Job" } th { "Queue" } th { "Arguments" }
                        @if set != SetName::Scheduled { th { "Error" } }
                        @if set == SetName::Retry { th.num { "Retries" } }
                        th { }
                    } }
                    tbody {
                        @for e in &listing.entries {
                            @let detail = c.url(&format!("{path}/job?key={}", enc(&e.key)));
                            tr {
                                td.check { input.row-select type="checkbox" data-group="jobs" name="key" value=(e.key) form="bulk" aria-label="Select"; }
                                td { a href=(detail) { (time(e.score, c.now)) } }
                                td { a href=(detail) { (v(&e.job.class)) } div.mono.muted.small { (v(&e.job.jid)) } }
                                td { (v(&e.job.queue)) }
                                td.args { code { (v(&e.job.args_preview())) } }
                                @if set != SetName::Scheduled {
                                    td.error-text {
                                        @if let Some(ec) = &e.job.error_class { strong { (v(ec)) } ": " }
                                        (v(&api::preview(e.job.error_message.as_deref().or(e.job.unreadable_reason.as_deref()).unwrap_or(""), 200)))
                                    }
                                }
                                @if set == SetName::Retry { td.num { (e.job.retry_count.map(num).unwrap_or_default()) } }
                                td.row-actions { (row_actions(&c, set, e, &return_to)) }
                            }
                        }
                    }
                } }
                (pager(&c, &path, &q, listing.page, listing.per_page, listing.total))
            }
        }
    };
    page(&c, set_title(set), slug, &q, body)
}

/// The job page's "Trace" row: a valid trace context's ids, the trace id linked to the
/// configured trace viewer (the link holds only the ids' hex digits); an invalid one as text,
/// marked invalid and never linked.
fn trace_row(c: &Ctx<'_>, t: &crate::trace::Trace) -> Markup {
    use crate::trace::Trace;
    html! {
        dt { "Trace" }
        @match t {
            Trace::Valid(tp) => { dd.trace {
                @if let Some(tpl) = &c.st.config.trace_url {
                    a.mono.trace-id href=(crate::trace::link(tpl, tp)) target="_blank" rel="noopener noreferrer" title="Open the trace" { (tp.trace_id) }
                } @else {
                    span.mono.trace-id { (tp.trace_id) }
                }
                " " span.muted.small { "parent span " span.mono.span-id { (tp.span_id) } @if !tp.sampled { " · not sampled" } }
            } }
            Trace::Invalid(text) => { dd.trace {
                span.badge.badge-warn { "invalid" } " " span.mono.trace-invalid { (v(text)) }
            } }
        }
    }
}

/// `GET /{set}/job?key=…`: one job in full.
pub(crate) async fn set_job(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Query(q): Query<ListQuery>,
    set: SetName,
) -> Response {
    job_page(&st, &sec, &q, set, None).await
}

async fn job_page(
    st: &AppState,
    sec: &RequestSecurity,
    q: &ListQuery,
    set: SetName,
    error: Option<(String, String)>,
) -> Response {
    let c = or_fail!(ctx(st, sec).await);
    let key = q.key.clone().unwrap_or_default();
    let entry = or_fail!(api::find(&*st.admin, set, &key).await);
    let slug = set_slug(set);
    let list = c.url(&format!("/{slug}"));
    let Some(e) = entry else {
        let body = html! {
            div.page-head { h1 { "Job not found" } }
            div.empty { "This job is no longer in " (set_title(set)) " (it ran, moved or was deleted). " a href=(list) { "Back to " (set_title(set)) } }
        };
        let mut resp = page(&c, "Job not found", slug, q, body);
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    };
    let j = &e.job;
    let pretty_args = serde_json::to_string_pretty(&j.args).unwrap_or_default();
    let pretty_raw = serde_json::from_str::<serde_json::Value>(&e.raw)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| e.raw.clone());
    let trace = api::backtrace(&e.raw);
    let trace_ctx = crate::trace::of_raw(&e.raw);
    let (edit_error, edit_value) = match &error {
        Some((msg, args)) => (Some(msg.as_str()), args.clone()),
        None => (None, pretty_args.clone()),
    };
    let body = html! {
        div.page-head {
            h1 { (v(&j.class)) }
            p.subtitle { a href=(list) { "‹ " (set_title(set)) } " · " span.mono { (v(&j.jid)) } }
            div.actions {
                (row_actions(&c, set, &e, &list))
                @if set != SetName::Dead && !j.jid.is_empty() { " " (cancel_button(&c, &j.jid, &list)) }
            }
        }
        section.panel {
            dl.kv {
                dt { "Class" } dd { (v(&j.class)) @if let Some(w) = &j.wrapper { " " span.muted.small { "(" (v(w)) ")" } } }
                dt { "Queue" } dd { a href=(c.url(&format!("/queues/{}", enc(&j.queue)))) { (v(&j.queue)) } }
                dt { "Job id" } dd.mono { (v(&j.jid)) }
                @if let Some(t) = &trace_ctx { (trace_row(&c, t)) }
                dt { (when_label(set)) } dd { (time(e.score, c.now)) " " span.muted.small { (exact(e.score)) } }
                dt { "Created" } dd { (opt_time(j.created_at, c.now)) }
                dt { "Enqueued" } dd { (opt_time(j.enqueued_at, c.now)) }
                @if j.failed_at.is_some() { dt { "Failed" } dd { (opt_time(j.failed_at, c.now)) } }
                @if j.retried_at.is_some() { dt { "Retried" } dd { (opt_time(j.retried_at, c.now)) } }
                @if let Some(n) = j.retry_count { dt { "Retry count" } dd { (n) } }
                @if let Some(ec) = &j.error_class { dt { "Error class" } dd.mono { (v(ec)) } }
                @if let Some(m) = &j.error_message { dt { "Error message" } dd.error-text { (v(m)) } }
                @if let Some(r) = &j.unreadable_reason { dt { "Unreadable" } dd.error-text { (v(r)) } }
            }
        }
        section.panel {
            div.panel-head { h2 { "Arguments" } }
            pre.code { (v(&pretty_args)) }
        }
        @if let Some(lines) = &trace {
            section.panel {
                div.panel-head { h2 { "Backtrace" } }
                pre.code.backtrace { @for l in lines { (v(l)) "\n" } }
            }
        }
        @if set == SetName::Dead && j.readable {
            section.panel {
                div.panel-head { h2 { "Retry with edited arguments" } }
                form method="post" action=(c.url(&format!("/{slug}/job/edit"))) {
                    (c.csrf())
                    input type="hidden" name="key" value=(e.key);
                    input type="hidden" name="return_to" value=(list);
                    @if let Some(msg) = edit_error { div.flash.flash-error role="alert" { (msg) } }
                    textarea.input.code-input name="args" rows="8" aria-label="Arguments as a JSON array" { (v(&edit_value)) }
                    p { button.btn.btn-primary type="submit" { "Retry with these arguments" } }
                }
            }
        }
        section.panel {
            div.panel-head { h2 { "Payload" } }
            pre.code { (v(&pretty_raw)) }
        }
    };
    let mut resp = page(&c, &j.class, slug, q, body);
    if error.is_some() {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
    }
    resp
}

/// `POST /{set}/job/{retry|delete|kill|edit}` with the entry's `key`.
pub(crate) async fn set_job_action(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Path(action): Path<String>,
    posted: Posted,
    set: SetName,
) -> Response {
    let key = posted.get("key").unwrap_or("");
    let list = format!("/{}", set_slug(set));
    let entry = match api::find(&*st.admin, set, key).await {
        Ok(Some(e)) => e,
        Ok(None) => return back(&st, &posted, &list, "gone", 0),
        Err(e) => return failure(e),
    };
    if action == "edit" {
        let args = posted.get("args").unwrap_or("");
        return match api::retry_with_args(&*st.admin, st.actions(), set, &entry.raw, args).await {
            Ok(true) => back(&st, &posted, &list, "retry", 1),
            Ok(false) => back(&st, &posted, &list, "gone", 0),
            Err(msg) => {
                let q = ListQuery {
                    key: Some(key.to_string()),
                    ..Default::default()
                };
                job_page(&st, &sec, &q, set, Some((msg, args.to_string()))).await
            }
        };
    }
    let Some(action) = Action::parse(&action) else {
        return security::status(StatusCode::NOT_FOUND);
    };
    match api::apply(&*st.admin, st.actions(), set, &entry.raw, action).await {
        Ok(true) => back(&st, &posted, &list, action_code(action), 1),
        Ok(false) => back(&st, &posted, &list, "gone", 0),
        Err(e) => failure(e),
    }
}

/// The flash code of an "all" action that stopped at its bounds.
fn action_more_code(a: Action) -> &'static str {
    match a {
        Action::Retry => "retry-more",
        Action::Delete => "delete-more",
        Action::Kill => "kill-more",
    }
}

fn action_code(a: Action) -> &'static str {
    match a {
        Action::Retry => "retry",
        Action::Delete => "delete",
        Action::Kill => "kill",
    }
}

/// `POST /{set}/bulk`: `action` on every selected `key`.
pub(crate) async fn set_bulk(State(st): State<AppState>, posted: Posted, set: SetName) -> Response {
    let list = format!("/{}", set_slug(set));
    let Some(action) = posted.get("action").and_then(Action::parse) else {
        return security::status(StatusCode::BAD_REQUEST);
    };
    match crate::json::bulk(&st, set, action, &posted.all("key")).await {
        Ok(n) => back(&st, &posted, &list, action_code(action), n),
        Err(e) => failure(e),
    }
}

/// `POST /{set}/all`: `action` on every entry (matching the filter fields, when given).
pub(crate) async fn set_all(State(st): State<AppState>, posted: Posted, set: SetName) -> Response {
    let list = format!("/{}", set_slug(set));
    let Some(action) = posted.get("action").and_then(Action::parse) else {
        return security::status(StatusCode::BAD_REQUEST);
    };
    match api::apply_all(&*st.admin, st.actions(), set, action, &posted.filter()).await {
        Ok(a) if a.more => back(&st, &posted, &list, action_more_code(action), a.done),
        Ok(a) => back(&st, &posted, &list, action_code(action), a.done),
        Err(e) => failure(e),
    }
}

/// `GET /job-metrics`: executions, failures and durations per class.
pub(crate) async fn metrics(
    State(st): State<AppState>,
    Sec(sec): Sec,
    Query(q): Query<ListQuery>,
) -> Response {
    let c = or_fail!(ctx(&st, &sec).await);
    let window = Window::parse(q.window.as_deref());
    let rows = or_fail!(api::class_metrics(&*st.admin, window).await);
    let max = rows.iter().map(|r| r.executions).max().unwrap_or(1).max(1);
    let body = html! {
        div.page-head {
            h1 { "Metrics" }
            p.subtitle { "Per job class, " @if window == Window::Hour { "over the last hour" } @else { "over the last 24 hours" } ". Durations are of successful runs, from a histogram (upper bucket bounds)." }
            div.actions {
                a.page-link.active[window == Window::Hour] href=(c.url("/job-metrics?window=hour")) { "Last hour" }
                a.page-link.active[window == Window::Day] href=(c.url("/job-metrics?window=day")) { "Last 24 hours" }
            }
        }
        section.panel {
            @if rows.is_empty() {
                div.empty { "No job ran in this window." }
            } @else {
                div.table-wrap { table.table {
                    thead { tr {
                        th { "Class" } th.num { "Executions" } th.num { "Failures" } th.num { "Failure rate" }
                        th.num { "Mean" } th.num { "p50" } th.num { "p95" } th.num { "p99" }
                    } }
                    tbody {
                        @for r in &rows {
                            tr {
                                td {
                                    div { (v(&r.class)) }
                                    div.bar.share data-value=(r.executions) data-max=(max) { div.bar-fill {} }
                                }
                                td.num { (num(r.executions)) }
                                td.num { (num(r.failures)) }
                                td.num { (format!("{:.1} %", 100.0 * r.failures as f64 / r.executions.max(1) as f64)) }
                                td.num { (r.mean_ms.map(|m| if m < 1.0 { "< 1 ms".to_string() } else { format!("{m:.1} ms") }).unwrap_or_else(|| "—".into())) }
                                td.num { (ms(r.p50_ms)) }
                                td.num { (ms(r.p95_ms)) }
                                td.num { (ms(r.p99_ms)) }
                            }
                        }
                    }
                } }
            }
        }
    };
    page(&c, "Metrics", "job-metrics", &q, body)
}

/// `GET /login`: the token form (with token authentication).
pub(crate) async fn login_form(State(st): State<AppState>, Sec(sec): Sec) -> Response {
    login_page(&st, &sec, None)
}

fn login_page(st: &AppState, sec: &RequestSecurity, error: Option<&str>) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Errand" }
                link rel="stylesheet" href=(st.url("/assets/app.css"));
                script src=(st.url("/assets/theme.js")) nonce=(sec.nonce) {}
            }
            body {
                main.container.login {
                    section.panel {
                        h1 { "Errand" }
                        @if let Some(e) = error { div.flash.flash-error role="alert" { (e) } }
                        form method="post" action=(st.url("/login")) {
                            input type="hidden" name=(security::CSRF_FIELD) value=(sec.csrf);
                            label for="token" { "Access token" }
                            input #token.input type="password" name="token" autocomplete="current-password" required;
                            p { button.btn.btn-primary type="submit" { "Sign in" } }
                        }
                    }
                }
            }
        }
    };
    let mut resp = body.into_response();
    if error.is_some() {
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
    }
    resp
}

/// `POST /login`: checks the token and sets the auth cookie.
pub(crate) async fn login(State(st): State<AppState>, Sec(sec): Sec, posted: Posted) -> Response {
    let Some(value) = security::auth_cookie_value(&st, posted.get("token").unwrap_or("")) else {
        st.failed_logins.failed(sec.client);
        return login_page(&st, &sec, Some("That token is not right."));
    };
    let mut resp = Redirect::to(&st.url("/")).into_response();
    let cookie = format!(
        "{}={value}; Path={}; HttpOnly; SameSite=Strict{}",
        security::AUTH_COOKIE,
        security::cookie_path(&st),
        if st.config.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /logout`: clears the auth cookie.
pub(crate) async fn logout(State(st): State<AppState>, _posted: Posted) -> Response {
    let mut resp = Redirect::to(&st.url("/login")).into_response();
    let cookie = format!(
        "{}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0",
        security::AUTH_COOKIE,
        security::cookie_path(&st)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(num(0), "0");
        assert_eq!(num(1234567), "1,234,567");
        assert_eq!(dur(0.012), "12 ms");
        assert_eq!(dur(3.24), "3.2 s");
        assert_eq!(dur(600.0), "10 min");
        assert_eq!(relative(100.0, 100.0), "just now");
        assert_eq!(relative(100.0, 280.0), "3 minutes ago");
        assert_eq!(relative(400.0, 100.0), "in 5 minutes");
        assert_eq!(relative(f64::INFINITY, 100.0), "never");
        assert_eq!(v("plain"), "plain");
        assert_eq!(v("\u{202e}fdp.exe"), "\\u202efdp.exe");
        let json = serde_json::to_string(&["\u{202e}x"]).unwrap();
        let shown = v(&json);
        let back: Vec<String> = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, vec!["\u{202e}x".to_string()]);
    }
}
