//! Request parameters: query strings with every number clamped, and POST bodies (a form or a
//! JSON object) read into one shape, with the CSRF token checked before anything is done.

use crate::security::{self, CSRF_FIELD, RequestSecurity};
use axum::extract::{FromRequest, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use errand::api::{Filter, MAX_PER_PAGE};
use errand_core::admin::Order;
use errand_core::broker::MemberState;
use serde::Deserialize;
use serde_json::Value;

/// Largest POST body (a dead job's edited arguments can be large; the payload limit is 1 MiB).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// The query parameters a listing takes. Unknown keys are ignored; numbers that do not parse
/// fall back to their defaults; every number is clamped.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// 1-based page.
    pub page: Option<String>,
    /// Page size.
    pub per_page: Option<String>,
    /// `asc` or `desc`.
    pub sort: Option<String>,
    /// Class filter.
    pub class: Option<String>,
    /// Queue filter.
    pub queue: Option<String>,
    /// Error filter.
    pub error: Option<String>,
    /// Free-text filter (jid, class, args).
    pub q: Option<String>,
    /// A set entry's key (detail pages).
    pub key: Option<String>,
    /// Which member list of a batch `page` applies to (`pending`, `failed`, `waiting`, `dead`,
    /// `cancelled`).
    pub state: Option<String>,
    /// History length in days.
    pub days: Option<String>,
    /// Metrics window (`hour`, `day`).
    pub window: Option<String>,
    /// Stream interval in seconds.
    pub interval: Option<String>,
    /// The outcome of the last action (set by the redirect after a POST).
    pub done: Option<String>,
    /// How many entries the last action changed.
    pub n: Option<String>,
}

/// Parses an unsigned number, clamped to `lo..=hi`, `default` when absent or unreadable.
pub fn clamp_num(v: Option<&str>, default: u64, lo: u64, hi: u64) -> u64 {
    v.and_then(|s| s.trim().parse::<i128>().ok())
        .map_or(default, |n| n.clamp(i128::from(lo), i128::from(hi)) as u64)
}

impl ListQuery {
    /// The page number, 1..=1,000,000.
    pub fn page(&self) -> usize {
        clamp_num(self.page.as_deref(), 1, 1, 1_000_000) as usize
    }

    /// The page size, 1..=100 (25 by default).
    pub fn per_page(&self) -> usize {
        clamp_num(self.per_page.as_deref(), 25, 1, MAX_PER_PAGE as u64) as usize
    }

    /// The sort order, or `default`.
    pub fn order(&self, default: Order) -> Order {
        match self.sort.as_deref() {
            Some("asc") => Order::Asc,
            Some("desc") => Order::Desc,
            _ => default,
        }
    }

    /// The filter.
    pub fn filter(&self) -> Filter {
        Filter::new(
            self.class.as_deref(),
            self.queue.as_deref(),
            self.error.as_deref(),
            self.q.as_deref(),
        )
    }

    /// History days, 1..=180 (30 by default).
    pub fn days(&self) -> u32 {
        clamp_num(self.days.as_deref(), 30, 1, 180) as u32
    }

    /// Stream interval, 2..=60 s (2 by default): the poll floor is enforced here.
    pub fn interval(&self) -> u64 {
        clamp_num(self.interval.as_deref(), 2, 2, 60)
    }

    /// The batch member list `page` applies to (none when absent or unknown).
    pub fn member_state(&self) -> Option<MemberState> {
        self.state.as_deref().and_then(MemberState::parse)
    }
}

/// Fuzzing support (RELIABILITY-PLAN B10; `fuzz/fuzz_targets/web_query.rs` and the corpus
/// replay in this module's tests; public only with the `fuzzing` feature): reads `query` (a URL query string without its `?`) into the listing query type exactly
/// as the listing handlers do, and panics if an accessor breaks its bounds: page 1..=1,000,000,
/// per_page 1..=100, days 1..=180, interval 2..=60, filter fields at most 200 characters, and
/// entry keys round-trip (`parse_key(entry_key(score, jid))`). Bytes a request URI cannot
/// carry are percent-encoded first (a real request's URI always parses).
#[cfg(any(test, feature = "fuzzing"))]
pub fn params_check(query: &[u8]) {
    use errand::api::{MAX_FILTER_LEN, Window, entry_key, parse_key};
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
    /// What a query may carry as it is (RFC 3986's query characters, `%` included so that
    /// encoded input stays as given); everything else is percent-encoded.
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'&')
        .remove(b'=')
        .remove(b'%')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'!')
        .remove(b'$')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')')
        .remove(b'*')
        .remove(b',')
        .remove(b';')
        .remove(b':')
        .remove(b'@')
        .remove(b'/')
        .remove(b'?');
    let encoded = format!("/?{}", percent_encode(query, KEEP));
    let Ok(uri) = encoded.parse::<axum::http::Uri>() else {
        return;
    };
    // A query the handlers refuse (400) has nothing more to check.
    let Ok(axum::extract::Query(q)) = axum::extract::Query::<ListQuery>::try_from_uri(&uri) else {
        return;
    };
    assert!((1..=1_000_000).contains(&q.page()));
    assert!((1..=MAX_PER_PAGE).contains(&q.per_page()));
    assert!((1..=180).contains(&q.days()));
    assert!((2..=60).contains(&q.interval()));
    let _ = (
        q.order(Order::Asc),
        Window::parse(q.window.as_deref()).minutes(),
        q.member_state(),
    );
    let f = q.filter();
    for field in [&f.class, &f.queue, &f.error, &f.text]
        .into_iter()
        .flatten()
    {
        assert!(field.chars().count() <= MAX_FILTER_LEN, "{field:?}");
    }
    if let Some(key) = q.key.as_deref()
        && let Some((score, jid)) = parse_key(key)
    {
        assert_eq!(parse_key(&entry_key(score, &jid)), Some((score, jid)));
    }
    // Any score and jid: the key a listing builds finds the entry again.
    let score = q.n.as_deref().and_then(|n| n.trim().parse::<f64>().ok());
    if let Some(score) = score.filter(|s| !s.is_nan()) {
        let jid = q.q.clone().unwrap_or_default();
        let (back, back_jid) = parse_key(&entry_key(score, &jid)).expect("a built key parses");
        assert!(back == score && back.is_sign_negative() == score.is_sign_negative());
        assert_eq!(back_jid, jid);
    }
}

/// A POST body as name → values (a form's repeated fields, or a JSON object whose arrays give
/// several values), read only after the CSRF token checked out.
#[derive(Debug, Default)]
pub struct Posted {
    pairs: Vec<(String, String)>,
}

impl Posted {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The filter fields, as on a listing.
    pub fn filter(&self) -> Filter {
        Filter::new(
            self.get("class"),
            self.get("queue"),
            self.get("error"),
            self.get("q"),
        )
    }

    fn from_json(v: Value) -> Option<Self> {
        let Value::Object(map) = v else { return None };
        let mut pairs = Vec::new();
        for (k, v) in map {
            match v {
                Value::Array(items) if k != "args" => {
                    for item in items {
                        pairs.push((k.clone(), text(item)));
                    }
                }
                // Arguments are sent as JSON; keep them as JSON text.
                Value::Array(_) => pairs.push((k, v.to_string())),
                other => pairs.push((k, text(other))),
            }
        }
        Some(Self { pairs })
    }
}

fn text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn bad_request(msg: &str) -> Response {
    (
        axum::http::StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("400 Bad Request: {msg}\n"),
    )
        .into_response()
}

impl<S: Send + Sync> FromRequest<S> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let sec = req
            .extensions()
            .get::<RequestSecurity>()
            .cloned()
            .ok_or_else(|| bad_request("no security context"))?;
        let headers = req.headers().clone();
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/json"));
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let posted = if is_json {
            if body.is_empty() {
                Posted::default()
            } else {
                let v: Value = serde_json::from_slice(&body)
                    .map_err(|e| bad_request(&format!("the body is not JSON: {e}")))?;
                Posted::from_json(v).ok_or_else(|| bad_request("the body must be a JSON object"))?
            }
        } else {
            Posted {
                pairs: form_urlencoded::parse(&body).into_owned().collect(),
            }
        };
        security::check_csrf(&sec, &headers, posted.get(CSRF_FIELD)).map_err(|r| *r)?;
        Ok(posted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn numbers_are_clamped() {
        assert_eq!(clamp_num(Some("922337"), 30, 1, 180), 180);
        assert_eq!(clamp_num(Some("-1"), 30, 1, 180), 1);
        assert_eq!(
            clamp_num(Some("1000000000000000000000000"), 30, 1, 180),
            180
        );
        assert_eq!(clamp_num(Some(&"9".repeat(50)), 30, 1, 180), 30);
        assert_eq!(clamp_num(Some("abc"), 30, 1, 180), 30);
        assert_eq!(clamp_num(None, 30, 1, 180), 30);
        let q = ListQuery {
            per_page: Some("1000000000".into()),
            page: Some("-5".into()),
            interval: Some("1".into()),
            ..Default::default()
        };
        assert_eq!(q.per_page(), 100);
        assert_eq!(q.page(), 1);
        assert_eq!(q.interval(), 2);
    }

    #[test]
    fn json_bodies_give_repeated_values() {
        let p = Posted::from_json(
            serde_json::json!({"action": "retry", "keys": ["a", "b"], "args": [1, "x"]}),
        )
        .unwrap();
        assert_eq!(p.get("action"), Some("retry"));
        assert_eq!(p.all("keys"), vec!["a", "b"]);
        assert_eq!(p.get("args"), Some("[1,\"x\"]"));
    }

    /// Replays the `web_query` fuzz target's corpus (`fuzz/corpus/web_query/`) through
    /// [`params_check`], the same invariants the target checks, so every test run exercises
    /// them without a fuzzer (`cargo fuzz run web_query` in `fuzz/` explores further).
    #[test]
    fn the_web_query_corpus_holds_its_invariants() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/web_query");
        let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "the web_query corpus has inputs");
        for input in &inputs {
            params_check(input);
        }
        // And a few shapes written out here, bounds included.
        for q in [
            &b""[..],
            b"page=0&per_page=0&days=0&interval=0",
            b"page=99999999999999999999999&days=-922337",
            b"key=--&key2=x",
            b"key=nan-x&n=NaN",
            b"n=-inf&q=\xff\xfe",
            b"q=\xe2\x80\xa6",
        ] {
            params_check(q);
        }
    }
}
