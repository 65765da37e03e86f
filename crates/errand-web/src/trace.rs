//! A job's W3C trace context (its payload's top-level `traceparent`, as Errand's
//! `opentelemetry` feature and Ruby's OpenTelemetry Sidekiq instrumentation write it), read for
//! the job page and its API, and the configured link to a trace viewer.
//!
//! A `traceparent` is trusted only when it is valid per W3C Trace Context: two lowercase hex
//! digits of version (not `ff`), a 32-digit trace id and a 16-digit parent id (lowercase hex,
//! not all zeros) and two digits of flags. Only those hex digits are ever put into a link, so a
//! payload cannot inject anything into it; anything else is shown as text, marked invalid.

use serde_json::{Value, json};

/// Longest invalid `traceparent` shown (in characters); longer ones are cut.
const MAX_INVALID_SHOWN: usize = 128;

/// A valid trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceParent {
    /// 32 lowercase hex digits, not all zeros.
    pub trace_id: String,
    /// The parent span's id: 16 lowercase hex digits, not all zeros.
    pub span_id: String,
    /// The `sampled` flag (bit 0 of the flags).
    pub sampled: bool,
}

/// What a payload says about its trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trace {
    /// A valid `traceparent`.
    Valid(TraceParent),
    /// A `traceparent` that is not valid, as text (cut to [`MAX_INVALID_SHOWN`] characters).
    Invalid(String),
}

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn all_zeros(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

/// Parses a `traceparent` value per W3C Trace Context (level 1, section 3.2): `None` when it
/// is not valid. A version above `00` may carry more fields after the flags (`-…`).
pub(crate) fn parse_traceparent(s: &str) -> Option<TraceParent> {
    let b = s.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    // The checks above are on ASCII dashes, so these slices are on character boundaries once
    // the pieces are known to be ASCII hex.
    let version = s.get(0..2)?;
    let trace_id = s.get(3..35)?;
    let span_id = s.get(36..52)?;
    let flags = s.get(53..55)?;
    if !(lower_hex(version) && lower_hex(trace_id) && lower_hex(span_id) && lower_hex(flags)) {
        return None;
    }
    if version == "ff" || all_zeros(trace_id) || all_zeros(span_id) {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may go on, after a dash.
    if b.len() > 55 && (version == "00" || b[55] != b'-') {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceParent {
        trace_id: trace_id.to_string(),
        span_id: span_id.to_string(),
        sampled: flags & 1 == 1,
    })
}

/// The trace context of a raw payload: `None` when it has no `traceparent` (or is not a JSON
/// object).
pub(crate) fn of_raw(raw: &str) -> Option<Trace> {
    let v: Value = serde_json::from_str(raw).ok()?;
    let tp = v.as_object()?.get("traceparent")?;
    let text = match tp {
        Value::Null => return None,
        Value::String(s) => match parse_traceparent(s) {
            Some(t) => return Some(Trace::Valid(t)),
            None => s.clone(),
        },
        other => other.to_string(),
    };
    let mut shown: String = text.chars().take(MAX_INVALID_SHOWN).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    Some(Trace::Invalid(shown))
}

/// Why a trace link template was refused.
fn template_error(template: &str) -> Option<String> {
    let lower = template.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &template[8..]
    } else if lower.starts_with("http://") {
        &template[7..]
    } else {
        return Some(format!(
            "the trace link template must be an http:// or https:// URL, got {template:?}"
        ));
    };
    if template
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "the trace link template must not contain spaces or control characters, got {template:?}"
        ));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with('{') {
        return Some(format!(
            "the trace link template must name its host (https://jaeger.example/trace/{{trace_id}}), got {template:?}"
        ));
    }
    if !template.contains("{trace_id}") {
        return Some(format!(
            "the trace link template must contain {{trace_id}} (https://jaeger.example/trace/{{trace_id}}), got {template:?}"
        ));
    }
    None
}

/// Checks a trace link template: an `http(s)` URL with a host, no spaces, and `{trace_id}`
/// in it.
pub(crate) fn check_template(template: &str) -> Result<(), String> {
    match template_error(template) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The link to trace `t` from (checked) template `template`.
pub(crate) fn link(template: &str, t: &TraceParent) -> String {
    template
        .replace("{trace_id}", &t.trace_id)
        .replace("{span_id}", &t.span_id)
}

/// The API's `trace` object for a raw payload: `null` without a valid `traceparent`.
pub(crate) fn json_of(raw: &str, template: Option<&str>) -> Value {
    match of_raw(raw) {
        Some(Trace::Valid(t)) => json!({
            "trace_id": t.trace_id,
            "span_id": t.span_id,
            "sampled": t.sampled,
            "url": template.map(|tpl| link(tpl, &t)),
        }),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparents_are_read() {
        let t = parse_traceparent(VALID).unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id, "00f067aa0ba902b7");
        assert!(t.sampled);
        let t = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!t.unwrap().sampled);
        // A later version may carry more after a dash.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
                .is_some()
        );
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "<script>alert(1)</script>",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn payloads_give_their_trace() {
        assert_eq!(of_raw(r#"{"class":"A"}"#), None);
        assert_eq!(of_raw("{not json"), None);
        assert!(matches!(
            of_raw(&format!(r#"{{"traceparent":"{VALID}"}}"#)),
            Some(Trace::Valid(_))
        ));
        assert_eq!(
            of_raw(r#"{"traceparent":42}"#),
            Some(Trace::Invalid("42".into()))
        );
        let long = format!(r#"{{"traceparent":"{}"}}"#, "x".repeat(500));
        let Some(Trace::Invalid(shown)) = of_raw(&long) else {
            panic!("invalid")
        };
        assert_eq!(shown.chars().count(), MAX_INVALID_SHOWN + 1);
    }

    #[test]
    fn templates_are_checked_and_filled() {
        for good in [
            "https://jaeger.example/trace/{trace_id}",
            "http://localhost:16686/trace/{trace_id}?uiFind={span_id}",
            "HTTPS://tempo.example/{trace_id}",
        ] {
            assert!(check_template(good).is_ok(), "{good}");
        }
        for bad in [
            "javascript:alert('{trace_id}')",
            "//jaeger.example/trace/{trace_id}",
            "ftp://jaeger.example/{trace_id}",
            "https://jaeger.example/trace/",
            "https:///{trace_id}",
            "https://{trace_id}",
            "https://jaeger.example/trace/{trace_id} x",
            "https://jaeger.example/\n{trace_id}",
            "",
        ] {
            assert!(check_template(bad).is_err(), "{bad:?}");
        }
        let t = parse_traceparent(VALID).unwrap();
        assert_eq!(
            link(
                "https://j.example/t/{trace_id}?s={span_id}&x={trace_id}",
                &t
            ),
            "https://j.example/t/4bf92f3577b34da6a3ce929d0e0e4736?s=00f067aa0ba902b7&x=4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
