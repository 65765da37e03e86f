//! Errand's dashboard: an axum [`Router`] an application mounts in its own server (or serves
//! alone with `errand web`), with pages for the totals and live rates, busy processes and
//! running jobs, queues, retries, scheduled and dead jobs with their actions, batches and
//! workflows with their members and steps, and per-class metrics; a JSON API behind every
//! page (described in `openapi.json`, served at `/api/openapi.json`); and Prometheus
//! `/metrics`.
//!
//! It works on every backend through the admin side ([`errand_core::admin::Admin`]; periodic
//! entries and batches through the backend's coordination side), so what it shows and does is
//! the same on Redis and on SQLite, and on Redis it shows Ruby Sidekiq's processes and jobs
//! like Errand's own.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let broker = errand_testing_stub();
//! # fn errand_testing_stub() -> std::sync::Arc<dyn errand_core::admin::Store> { unimplemented!() }
//! use errand_web::{Auth, WebConfig};
//! let app = axum::Router::new().nest(
//!     "/errand",
//!     errand_web::router(broker, WebConfig::default().base_path("/errand").auth(Auth::Token("s3cret".into()))),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7878").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Security
//! Bind to loopback unless authentication is configured ([`Auth`]). Every state-changing
//! request is a POST with a CSRF token bound to the session; everything that comes from a job
//! is escaped when rendered; the Content-Security-Policy forbids inline scripts; paging, filter
//! and chart parameters are bounded. See [`security`].

mod assets;
mod json;
mod pages;
mod params;
mod prom;
pub mod security;
mod trace;

use axum::Router;
use axum::routing::{get, post};
use errand::api;
use errand_core::WireProfile;
use errand_core::admin::{Admin, SetName, Store};
use errand_core::broker::Broker;
use errand_core::broker::DeadLimits;
use std::sync::Arc;

#[cfg(feature = "fuzzing")]
pub use params::params_check;
pub use security::Auth;

/// How the dashboard is set up.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Authentication (none by default).
    pub auth: Auth,
    /// The path the router is nested at (`/errand`), for the links it renders; empty at `/`.
    pub base_path: String,
    /// Timestamp format written into payloads moved by actions.
    pub profile: WireProfile,
    /// Dead-set bounds applied when a person kills a job.
    pub dead_limits: DeadLimits,
    /// Mark cookies `Secure` (serve over HTTPS).
    pub secure_cookies: bool,
    /// Host names the dashboard answers to besides loopback names (see [`security`]).
    pub allowed_hosts: Vec<String>,
    /// How long a request may take before it is answered 503 (30 s by default): one slow
    /// backend call cannot hold a connection forever.
    pub request_timeout: std::time::Duration,
    /// Most live-update streams (`/api/stream`) open at once (16 by default); more are
    /// answered 503.
    pub max_streams: usize,
    /// Most failed sign-ins per client address per minute (10 by default); more are answered
    /// 429 with `Retry-After`.
    pub max_failed_logins: u32,
    /// A link template to a trace viewer, for jobs whose payload carries a W3C `traceparent`
    /// (`https://jaeger.example/trace/{trace_id}`; `{trace_id}` and `{span_id}` are filled in
    /// with the trace's hex ids). None by default: the job page shows the ids without a link.
    /// Set it with [`WebConfig::trace_url()`], which checks it; a value set here directly that
    /// does not pass [`WebConfig::validate`] is not used.
    pub trace_url: Option<String>,
}

/// A dashboard setting that was refused, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            auth: Auth::None,
            base_path: String::new(),
            profile: WireProfile::default(),
            dead_limits: DeadLimits::default(),
            secure_cookies: false,
            allowed_hosts: Vec::new(),
            request_timeout: std::time::Duration::from_secs(30),
            max_streams: 16,
            max_failed_logins: 10,
            trace_url: None,
        }
    }
}

impl WebConfig {
    /// Sets the authentication.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Sets the path the router is mounted at (no trailing slash), e.g. `/errand`.
    pub fn base_path(mut self, path: impl Into<String>) -> Self {
        self.base_path = path.into().trim_end_matches('/').to_string();
        self
    }

    /// Sets the wire profile of payloads the actions write.
    pub fn profile(mut self, profile: WireProfile) -> Self {
        self.profile = profile;
        self
    }

    /// Sets the dead-set bounds applied on kill.
    pub fn dead_limits(mut self, limits: DeadLimits) -> Self {
        self.dead_limits = limits;
        self
    }

    /// Answers requests naming host `host` (`errand.internal`, any port) besides loopback
    /// names. Once a host is allowed, requests naming any other host are refused, with or
    /// without authentication; without authentication only loopback names are answered by
    /// default (DNS rebinding protection, see [`security`]).
    pub fn allow_host(mut self, host: impl Into<String>) -> Self {
        self.allowed_hosts.push(host.into());
        self
    }

    /// Sets how long a request may take before it is answered 503.
    pub fn request_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the most live-update streams open at once.
    pub fn max_streams(mut self, n: usize) -> Self {
        self.max_streams = n;
        self
    }

    /// Sets the most failed sign-ins per client address per minute.
    pub fn max_failed_logins(mut self, n: u32) -> Self {
        self.max_failed_logins = n.max(1);
        self
    }

    /// Marks cookies `Secure`.
    pub fn secure_cookies(mut self, on: bool) -> Self {
        self.secure_cookies = on;
        self
    }

    /// Links a job's trace to a trace viewer: `template` is an `http(s)` URL containing
    /// `{trace_id}` (and, if wanted, `{span_id}`), e.g.
    /// `https://jaeger.example/trace/{trace_id}`. Refused with a [`ConfigError`] saying why
    /// when it is not an `http(s)` URL with a host, has spaces, or lacks `{trace_id}`.
    pub fn trace_url(mut self, template: impl Into<String>) -> Result<Self, ConfigError> {
        let template = template.into();
        trace::check_template(&template).map_err(ConfigError)?;
        self.trace_url = Some(template);
        Ok(self)
    }

    /// Checks the settings that can be refused (the [trace link template](Self::trace_url())),
    /// for a configuration whose fields were set directly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(t) = &self.trace_url {
            trace::check_template(t).map_err(ConfigError)?;
        }
        Ok(())
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub admin: Arc<dyn Admin>,
    /// The same backend's runtime side (periodic entries, batches).
    pub broker: Arc<dyn Broker>,
    /// Permits for live-update streams ([`WebConfig::max_streams`]).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Failed sign-ins per client address in the last minute.
    pub failed_logins: Arc<security::LoginLimiter>,
    pub config: Arc<WebConfig>,
    pub secret: Arc<[u8; 32]>,
}

impl AppState {
    pub(crate) fn actions(&self) -> api::ActionConfig {
        api::ActionConfig {
            profile: self.config.profile,
            dead_limits: self.config.dead_limits,
        }
    }

    /// A path under the mount point.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_path)
    }
}

/// The page name of a set (`retries`, `scheduled`, `dead`).
pub(crate) fn set_slug(set: SetName) -> &'static str {
    match set {
        SetName::Retry => "retries",
        SetName::Scheduled => "scheduled",
        SetName::Dead => "dead",
    }
}

/// The dashboard, its JSON API and `/metrics`, on `store` (any backend: `Arc::new(broker)`).
///
/// A [`trace_url`](WebConfig::trace_url()) set directly on the field that does not pass
/// [`WebConfig::validate`] is logged and not used: no link is made from it.
pub fn router(store: Arc<dyn Store>, mut config: WebConfig) -> Router {
    let timeout = config.request_timeout;
    if let Err(e) = config.validate() {
        tracing::error!(error = %e, "dashboard trace link template refused; jobs' traces are shown without links");
        config.trace_url = None;
    }
    let state = AppState {
        admin: store.clone(),
        broker: store,
        streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
        failed_logins: Arc::new(security::LoginLimiter::new(config.max_failed_logins)),
        config: Arc::new(config),
        secret: Arc::new(security::new_secret()),
    };
    let mut r = Router::new()
        .route("/", get(pages::dashboard))
        .route("/busy", get(pages::busy))
        .route("/busy/{action}", post(pages::busy_action))
        .route("/jobs/cancel", post(pages::cancel_job))
        .route("/queues", get(pages::queues))
        .route("/queues/{name}", get(pages::queue))
        .route("/queues/{name}/{action}", post(pages::queue_action))
        .route("/job-metrics", get(pages::metrics))
        .route("/periodic", get(pages::periodic))
        .route("/periodic/{name}/{action}", post(pages::periodic_action))
        .route("/batches", get(pages::batches))
        .route("/batches/{bid}", get(pages::batch))
        .route("/api/batches", get(json::batches))
        .route("/api/batches/{bid}", get(json::batch))
        .route("/api/periodic", get(json::periodic))
        .route("/api/periodic/{name}/{action}", post(json::periodic_action))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/metrics", get(prom::metrics))
        .route("/assets/{file}", get(assets::serve))
        .route("/api/stats", get(json::stats))
        .route("/api/history", get(json::history))
        .route("/api/stream", get(json::stream))
        .route("/api/busy", get(json::busy))
        .route("/api/busy/{action}", post(json::busy_action))
        .route("/api/jobs/{jid}/cancel", post(json::cancel_job))
        .route("/api/jobs/{jid}/result", get(json::job_result))
        .route("/api/queues", get(json::queues))
        .route("/api/queues/{name}", get(json::queue))
        .route("/api/queues/{name}/{action}", post(json::queue_action))
        .route("/api/metrics", get(json::metrics))
        .route("/api/openapi.json", get(json::openapi));
    for set in SetName::ALL {
        let slug = set_slug(set);
        r = r
            .route(
                &format!("/{slug}"),
                get(move |s, sec, q| pages::set_list(s, sec, q, set)),
            )
            .route(
                &format!("/{slug}/job"),
                get(move |s, sec, q| pages::set_job(s, sec, q, set)),
            )
            .route(
                &format!("/{slug}/job/{{action}}"),
                post(move |s, sec, p, req| pages::set_job_action(s, sec, p, req, set)),
            )
            .route(
                &format!("/{slug}/bulk"),
                post(move |s, req| pages::set_bulk(s, req, set)),
            )
            .route(
                &format!("/{slug}/all"),
                post(move |s, req| pages::set_all(s, req, set)),
            )
            .route(
                &format!("/api/{slug}"),
                get(move |s, q| json::set_list(s, q, set)),
            )
            .route(
                &format!("/api/{slug}/job"),
                get(move |s, q| json::set_job(s, q, set)),
            )
            .route(
                &format!("/api/{slug}/job/{{action}}"),
                post(move |s, p, req| json::set_job_action(s, p, req, set)),
            )
            .route(
                &format!("/api/{slug}/bulk"),
                post(move |s, req| json::set_bulk(s, req, set)),
            )
            .route(
                &format!("/api/{slug}/all"),
                post(move |s, req| json::set_all(s, req, set)),
            );
    }
    r.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        security::guard,
    ))
    .layer(axum::extract::DefaultBodyLimit::max(params::MAX_BODY))
    .layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        timeout,
    ))
    .with_state(state)
}

/// Whether `addr` is a loopback address (where running without authentication is fine).
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}
