//! Log output for worker processes: human-readable text, or JSON with one object per line for
//! log pipelines (Loki, Elasticsearch, CloudWatch, `jq`).
//!
//! [`init`] installs a global `tracing` subscriber writing to stderr, so a command's own output
//! on stdout stays apart. In JSON, each line is one event: `timestamp` (UTC, RFC 3339), `level`,
//! `target`, `message`, the event's fields at the top level, and `span` when inside one. The
//! default [`Logging`](crate::middleware::Logging) middleware writes one such line per job
//! attempt, on target [`errand::job`](crate::middleware::LOG_TARGET):
//!
//! ```text
//! {"timestamp":"2025-01-01T12:00:00.123456Z","level":"WARN","message":"job failed","jid":"4f…",
//!  "class":"SyncInventory","queue":"default","attempt":2,"duration_ms":12.5,"outcome":"failed",
//!  "error":"503 Service Unavailable","error_class":"Inventory::Unavailable","target":"errand::job"}
//! ```
//!
//! ```rust,no_run
//! use errand::logs::{self, LogFormat};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // ERRAND_LOG_FORMAT=json picks JSON; RUST_LOG, when set, replaces "info".
//! logs::init(LogFormat::from_env()?, "info")?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable [`LogFormat::from_env`] reads: `text` or `json`.
pub const FORMAT_ENV: &str = "ERRAND_LOG_FORMAT";

/// The environment variable whose filter directives, when set, replace [`init`]'s default
/// (`info`, `warn,errand::job=info`, ...: the `tracing_subscriber::EnvFilter` syntax).
pub const FILTER_ENV: &str = "RUST_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

impl LogFormat {
    /// `"text"` or `"json"`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// The format [`FORMAT_ENV`] (`ERRAND_LOG_FORMAT`) names; [`LogFormat::Text`] when it is
    /// unset or empty.
    ///
    /// # Errors
    /// It is set to something else than `text` or `json`.
    pub fn from_env() -> Result<Self, LogError> {
        match std::env::var_os(FORMAT_ENV) {
            None => Ok(LogFormat::Text),
            Some(v) if v.is_empty() => Ok(LogFormat::Text),
            Some(v) => v
                .to_str()
                .ok_or_else(|| LogError::UnknownFormat(v.to_string_lossy().into_owned()))?
                .parse(),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogFormat {
    type Err = LogError;

    /// `text` or `json`, in any case, spaces around ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("text") {
            Ok(LogFormat::Text)
        } else if s.eq_ignore_ascii_case("json") {
            Ok(LogFormat::Json)
        } else {
            Err(LogError::UnknownFormat(s.to_string()))
        }
    }
}

/// Why a log format or filter was refused, or logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// Not a log format.
    #[error("unknown log format {0:?}: expected \"text\" or \"json\"")]
    UnknownFormat(String),
    /// Filter directives that do not parse.
    #[error("invalid log filter {directives:?} ({from}): {reason}")]
    Filter {
        /// The directives.
        directives: String,
        /// Where they came from: `RUST_LOG` or the default.
        from: &'static str,
        /// What is wrong with them.
        reason: String,
    },
    /// A global subscriber (or `log` logger) was installed already.
    #[error("logging could not be set up: {0}")]
    Install(String),
}

/// Installs the process's global `tracing` subscriber: `format` lines on stderr, filtered by
/// [`FILTER_ENV`] (`RUST_LOG`) when it is set and not empty, else by `default_filter`
/// (`"info"`, `"warn,errand::job=info"`). Timestamps are UTC, RFC 3339 with microseconds.
/// Events of the `log` crate are forwarded too.
///
/// In JSON, a panic is also logged as one event (`level` `ERROR`, target `errand::panic`,
/// with `panic`, `location`, `thread` and, when `RUST_BACKTRACE` asks for it, `backtrace`)
/// in place of Rust's default panic message, so every line of stderr stays JSON.
///
/// # Errors
/// Filter directives that do not parse ([`LogError::Filter`]), or a global subscriber already
/// installed ([`LogError::Install`]).
pub fn init(format: LogFormat, default_filter: &str) -> Result<(), LogError> {
    let filter = env_filter(default_filter)?;
    let ansi = format == LogFormat::Text && std::io::stderr().is_terminal();
    build(format, filter, std::io::stderr, ansi)
        .try_init()
        .map_err(|e| LogError::Install(e.to_string()))?;
    if format == LogFormat::Json {
        log_panics();
    }
    Ok(())
}

/// The subscriber [`init`] installs, writing to `writer` and filtered by `filter` alone
/// (`RUST_LOG` is not read), without color: for tests and for embedding in a larger set-up
/// (`tracing::subscriber::with_default`, `tracing::dispatcher::set_default`).
///
/// # Errors
/// `filter` does not parse.
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> Result<Box<dyn tracing::Subscriber + Send + Sync>, LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    Ok(build(format, parse_filter(filter, "given")?, writer, false))
}

/// The same log lines as a `tracing_subscriber` layer over stderr, filtered by `RUST_LOG` when
/// it is set and not empty, else by `default_filter` — to compose with other layers, such as
/// `tracing-opentelemetry`'s, in one subscriber:
///
/// ```rust,no_run
/// use tracing_subscriber::layer::SubscriberExt;
/// use tracing_subscriber::util::SubscriberInitExt;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// tracing_subscriber::registry()
///     .with(errand::logs::layer(errand::logs::LogFormat::Json, "info")?)
///     // .with(tracing_opentelemetry::layer().with_tracer(tracer))
///     .init();
/// # Ok(()) }
/// ```
///
/// # Errors
/// Filter directives that do not parse ([`LogError::Filter`]).
pub fn layer<S>(
    format: LogFormat,
    default_filter: &str,
) -> Result<Box<dyn tracing_subscriber::Layer<S> + Send + Sync>, LogError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    let filter = env_filter(default_filter)?;
    let ansi = format == LogFormat::Text && std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_timer(SystemTime)
        .with_ansi(ansi);
    Ok(match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    })
}

/// `RUST_LOG`'s filter when it is set and not empty, else `default_filter`'s.
fn env_filter(default_filter: &str) -> Result<EnvFilter, LogError> {
    match std::env::var(FILTER_ENV) {
        Ok(env) if !env.trim().is_empty() => parse_filter(&env, "from RUST_LOG"),
        _ => parse_filter(default_filter, "the default filter"),
    }
}

fn parse_filter(directives: &str, from: &'static str) -> Result<EnvFilter, LogError> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LogError::Filter {
            directives: directives.to_string(),
            from,
            reason: e.to_string(),
        })
}

fn build<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_timer(SystemTime)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// Replaces the default panic message (plain text on stderr) with an error event.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let panic = crate::error::panic_message(info.payload()).unwrap_or("Box<dyn Any>");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(
                target: "errand::panic",
                panic,
                location,
                thread,
                backtrace = %backtrace,
                "panicked"
            );
        } else {
            tracing::error!(target: "errand::panic", panic, location, thread, "panicked");
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn formats_parse_and_print() {
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!(" JSON ".parse::<LogFormat>().unwrap(), LogFormat::Json);
        let e = "xml".parse::<LogFormat>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown log format \"xml\": expected \"text\" or \"json\""
        );
        assert!("".parse::<LogFormat>().is_err());
        assert_eq!(LogFormat::Json.to_string(), "json");
        assert_eq!(LogFormat::default(), LogFormat::Text);
    }

    #[test]
    fn a_bad_filter_is_refused() {
        let Err(e) = subscriber(LogFormat::Json, "errand=loud", std::io::sink) else {
            panic!("a bad filter was taken");
        };
        assert!(matches!(e, LogError::Filter { .. }), "{e}");
        assert!(e.to_string().contains("errand=loud"), "{e}");
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_are_flat_with_a_utc_timestamp_and_the_current_span() {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = subscriber(LogFormat::Json, "info", move || out.clone()).unwrap();
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("batch", bid = "b1");
            let _g = span.enter();
            tracing::info!(target: "errand::job", jid = "j1", attempt = 2u32, "job done");
            tracing::debug!("filtered out");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["message"], "job done", "{v}");
        assert_eq!(v["jid"], "j1", "{v}");
        assert_eq!(v["attempt"], 2, "{v}");
        assert_eq!(v["level"], "INFO", "{v}");
        assert_eq!(v["target"], "errand::job", "{v}");
        assert_eq!(v["span"]["name"], "batch", "{v}");
        assert_eq!(v["span"]["bid"], "b1", "{v}");
        let ts = v["timestamp"].as_str().unwrap();
        // 2025-01-01T12:00:00.123456Z
        assert!(
            ts.len() >= 20 && &ts[4..5] == "-" && &ts[10..11] == "T" && ts.ends_with('Z'),
            "{ts}"
        );
    }

    #[test]
    fn text_lines_carry_the_fields() {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = subscriber(LogFormat::Text, "info", move || out.clone()).unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(target: "errand::job", jid = "j1", outcome = "failed", "job failed");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("WARN errand::job: job failed jid=\"j1\" outcome=\"failed\""),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "no color: {text}");
    }
}
