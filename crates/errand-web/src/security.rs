//! Authentication, CSRF protection and the security headers every response carries.
//!
//! - **Authentication** (optional): a bearer token (`Authorization: Bearer <token>`, or a login
//!   form that sets an `HttpOnly; SameSite=Strict` cookie), or HTTP basic auth. Compared in
//!   constant time.
//! - **CSRF**: every state-changing request is a POST that must carry a token bound to the
//!   browser's session cookie (`_csrf` form field or `X-CSRF-Token` header), and is refused
//!   when the browser says it came from another site (`Sec-Fetch-Site`) or its `Origin` is not
//!   this host. Requests authenticated by an explicit bearer header (scripts, not browsers)
//!   need no token.
//! - **Hosts** (DNS rebinding): a page on another site whose name an attacker points at this
//!   machine is same-origin with the dashboard as far as the browser knows, so the `Host` a
//!   request names must be one the dashboard answers to: loopback names (`localhost`,
//!   `127.0.0.1`, `[::1]`, any port) and the hosts configured with
//!   [`WebConfig::allow_host`](crate::WebConfig::allow_host). Checked for every request when
//!   hosts are configured, and always without authentication (where rebinding would reach an
//!   open dashboard); anything else is refused with 403.
//! - **Headers**: a Content-Security-Policy with a fresh nonce per response and no
//!   `'unsafe-inline'`, `nosniff`, `frame-ancestors 'none'`, no referrer leaks, `no-store`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::AppState;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie the CSRF token is bound to.
pub const SESSION_COOKIE: &str = "errand_session";
/// The cookie a token login sets.
pub const AUTH_COOKIE: &str = "errand_auth";
/// The form field carrying the CSRF token.
pub const CSRF_FIELD: &str = "_csrf";
/// The header carrying the CSRF token (JSON API).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How people sign in.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No authentication (the default; fine on 127.0.0.1).
    None,
    /// A shared secret: `Authorization: Bearer <token>`, or the login form.
    Token(String),
    /// HTTP basic authentication.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        match self {
            Auth::None => f.write_str("Auth::None"),
            Auth::Token(_) => f.write_str("Auth::Token(…)"),
            Auth::Basic { user, .. } => write!(f, "Auth::Basic({user}, …)"),
        }
    }
}

impl Auth {
    /// Whether any authentication is configured.
    pub fn is_enabled(&self) -> bool {
        !matches!(self, Auth::None)
    }
}

/// Per-request facts the pages need: the CSP nonce and the CSRF token.
#[derive(Debug, Clone)]
pub struct RequestSecurity {
    /// The nonce of this response's CSP (on every `<script>`).
    pub nonce: String,
    /// The CSRF token for this session (in every form).
    pub csrf: String,
    /// Whether the request was authenticated by a bearer header (no CSRF token needed).
    pub bearer: bool,
    /// The client's address (unspecified when the server gives none).
    pub client: std::net::IpAddr,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random server secret.
pub fn new_secret() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::fill(&mut k);
    k
}

fn mac(secret: &[u8], purpose: &str, value: &str) -> String {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(purpose.as_bytes());
    m.update(b"\0");
    m.update(value.as_bytes());
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The CSRF token of session `session`.
pub fn csrf_token(secret: &[u8], session: &str) -> String {
    mac(secret, "csrf", session)
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name`, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request carries valid credentials; `Some(true)` when by a bearer header.
fn authenticated(state: &AppState, headers: &HeaderMap) -> Option<bool> {
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match &state.config.auth {
        Auth::None => Some(false),
        Auth::Token(token) => {
            if let Some(given) = authz.and_then(|a| a.strip_prefix("Bearer ")) {
                return ct_eq(given.trim(), token).then_some(true);
            }
            let expected = mac(&state.secret[..], "auth", token);
            cookie(headers, AUTH_COOKIE)
                .is_some_and(|c| ct_eq(c, &expected))
                .then_some(false)
        }
        Auth::Basic { user, password } => {
            let given = authz.and_then(|a| a.strip_prefix("Basic "))?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(given.trim())
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (u, p) = decoded.split_once(':')?;
            (ct_eq(u, user) & ct_eq(p, password)).then_some(false)
        }
    }
}

/// The cookie value a successful token login sets.
pub(crate) fn auth_cookie_value(state: &AppState, token: &str) -> Option<String> {
    match &state.config.auth {
        Auth::Token(t) if ct_eq(token, t) => Some(mac(&state.secret[..], "auth", t)),
        _ => None,
    }
}

/// Whether the browser says this request came from another site, or its Origin is not ours.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return true;
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        return origin == "null" || origin_host != host;
    }
    false
}

/// The host name of a `Host` header value (`name:port`, `[v6]:port`), lower-cased.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']')
            .next()
            .map(|h| format!("[{h}]"))
            .unwrap_or_default()
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
            .to_string()
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a request naming `host` may be answered: see the module docs. A request without
/// a `Host` header (not a browser's) is answered.
pub(crate) fn host_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let configured = &state.config.allowed_hosts;
    if configured.is_empty() && state.config.auth.is_enabled() {
        return true;
    }
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = host_name(host);
    ["localhost", "127.0.0.1", "[::1]"].contains(&name.as_str())
        || name.ends_with(".localhost")
        || configured.iter().any(|h| host_name(h) == name)
}

/// Failed sign-ins per client address over the last minute, to slow down guessing.
pub(crate) struct LoginLimiter {
    max: u32,
    failures:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Vec<std::time::Instant>>>,
}

const LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Most client addresses remembered (the oldest are forgotten first).
const LOGIN_ADDRESSES: usize = 10_000;

impl LoginLimiter {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            failures: Default::default(),
        }
    }

    /// `Some(seconds to wait)` when `ip` has used up its failed sign-ins for the minute.
    pub(crate) fn blocked(&self, ip: std::net::IpAddr) -> Option<u64> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let times = f.get_mut(&ip)?;
        times.retain(|t| now.duration_since(*t) < LOGIN_WINDOW);
        if times.len() < self.max as usize {
            return None;
        }
        let oldest = times.first().copied()?;
        Some((LOGIN_WINDOW - now.duration_since(oldest)).as_secs().max(1))
    }

    /// Counts one failed sign-in from `ip`.
    pub(crate) fn failed(&self, ip: std::net::IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if f.len() >= LOGIN_ADDRESSES {
            f.retain(|_, times| {
                times
                    .last()
                    .is_some_and(|t| now.duration_since(*t) < LOGIN_WINDOW)
            });
        }
        f.entry(ip).or_default().push(now);
    }
}

/// The client's address (when the server was started with connect info), else unspecified:
/// then every client shares one budget of failed sign-ins.
pub(crate) fn client_ip(req: &Request) -> std::net::IpAddr {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

/// 429 with `Retry-After`.
pub(crate) fn too_many_logins(wait: u64) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, wait.to_string())],
        "429 Too Many Requests: too many failed sign-ins from this address; wait a minute\n",
    )
        .into_response()
}

fn forbidden(why: &'static str) -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("403 Forbidden: {why}\n"),
    )
        .into_response()
}

/// Whether the path is one that works without signing in.
fn public_path(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/")
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// The middleware every request goes through: session cookie, authentication, CSRF for POSTs
/// (the token itself is checked where the body is read: [`check_csrf`]), security headers.
pub(crate) async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let headers = req.headers().clone();
    let path = req.uri().path().to_string();
    let session = cookie(&headers, SESSION_COOKIE)
        .filter(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string);
    let new_session = session.is_none();
    let session = session.unwrap_or_else(|| random_hex(16));
    let nonce = random_hex(16);

    if !host_allowed(&state, &headers) {
        let mut resp = forbidden(
            "this dashboard does not answer to that host name (DNS rebinding protection): \
             allow it with `errand web --allow-host NAME` or WebConfig::allow_host",
        );
        secure_headers(resp.headers_mut(), &nonce);
        return resp;
    }

    let ip = client_ip(&req);
    let tries_login = headers.contains_key(header::AUTHORIZATION)
        || (path == "/login" && req.method() == Method::POST);
    if state.config.auth.is_enabled()
        && tries_login
        && let Some(wait) = state.failed_logins.blocked(ip)
    {
        let mut resp = too_many_logins(wait);
        secure_headers(resp.headers_mut(), &nonce);
        return resp;
    }
    let bearer = match authenticated(&state, &headers) {
        Some(bearer) => bearer,
        None if public_path(&path) => false,
        None => {
            if headers.contains_key(header::AUTHORIZATION) {
                state.failed_logins.failed(ip);
            }
            let mut resp = match &state.config.auth {
                Auth::Basic { .. } => (
                    StatusCode::UNAUTHORIZED,
                    [(
                        header::WWW_AUTHENTICATE,
                        "Basic realm=\"Errand\", charset=\"UTF-8\"",
                    )],
                    "401 Unauthorized\n",
                )
                    .into_response(),
                _ if req.method() == Method::GET && wants_html(&headers) => {
                    Redirect::to(&format!("{}/login", state.config.base_path)).into_response()
                }
                _ => (StatusCode::UNAUTHORIZED, "401 Unauthorized\n").into_response(),
            };
            secure_headers(resp.headers_mut(), &nonce);
            return resp;
        }
    };

    if req.method() != Method::GET && req.method() != Method::HEAD {
        if req.method() != Method::POST {
            let mut resp =
                (StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n").into_response();
            secure_headers(resp.headers_mut(), &nonce);
            return resp;
        }
        if cross_site(&headers) {
            let mut resp = forbidden("cross-site request refused");
            secure_headers(resp.headers_mut(), &nonce);
            return resp;
        }
    }

    let csrf = csrf_token(&state.secret[..], &session);
    req.extensions_mut().insert(RequestSecurity {
        nonce: nonce.clone(),
        csrf,
        bearer,
        client: ip,
    });
    let mut resp = next.run(req).await;
    if new_session {
        let cookie = format!(
            "{SESSION_COOKIE}={session}; Path={}; HttpOnly; SameSite=Strict{}",
            cookie_path(&state),
            if state.config.secure_cookies {
                "; Secure"
            } else {
                ""
            }
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    secure_headers(resp.headers_mut(), &nonce);
    resp
}

/// The Path attribute of the dashboard's cookies.
pub(crate) fn cookie_path(state: &AppState) -> &str {
    if state.config.base_path.is_empty() {
        "/"
    } else {
        &state.config.base_path
    }
}

/// Checks a POST's CSRF token (from the form field or the header) against the session.
/// Bearer-authenticated requests pass.
pub fn check_csrf(
    sec: &RequestSecurity,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<(), Box<Response>> {
    if sec.bearer {
        return Ok(());
    }
    let given = form_token.or_else(|| headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()));
    match given {
        Some(t) if ct_eq(t, &sec.csrf) => Ok(()),
        Some(_) => Err(Box::new(forbidden("invalid CSRF token"))),
        None => Err(Box::new(forbidden("missing CSRF token"))),
    }
}

fn secure_headers(h: &mut HeaderMap, nonce: &str) {
    let csp = format!(
        "default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// An empty body with a status (for tests and small replies).
pub fn status(code: StatusCode) -> Response {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_the_session_and_the_secret() {
        let a = csrf_token(b"k1", "s1");
        assert_eq!(a, csrf_token(b"k1", "s1"));
        assert_ne!(a, csrf_token(b"k1", "s2"));
        assert_ne!(a, csrf_token(b"k2", "s1"));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7878"));
        assert!(!cross_site(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.2:7878"),
        );
        assert!(cross_site(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7878"),
        );
        assert!(!cross_site(&h));
    }

    #[test]
    fn host_names_are_read_without_their_port() {
        assert_eq!(host_name("LocalHost:7878"), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("errand.internal.:443"), "errand.internal");
        assert_eq!(host_name("evil.example"), "evil.example");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; errand_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "nope"), None);
    }
}
