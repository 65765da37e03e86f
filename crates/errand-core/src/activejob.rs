//! Rails ActiveJob payloads (spec §1.6): unwrapping them for Errand jobs, and building them for
//! Ruby ActiveJob classes.
//!
//! ActiveJob with the Sidekiq adapter pushes `class` = a wrapper class, `wrapped` = the ActiveJob
//! class, and `args` = one hash whose `arguments` holds ActiveJob's own argument encoding.

use crate::{Payload, WireProfile};
use serde_json::{Map, Value};

/// The wrapper class through Sidekiq 7.x (Rails' adapter).
pub const RAILS_WRAPPER: &str = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper";
/// The wrapper class Sidekiq 8.0+ writes; equivalent to [`RAILS_WRAPPER`].
pub const SIDEKIQ8_WRAPPER: &str = "Sidekiq::ActiveJob::Wrapper";

const GLOBALID: &str = "_aj_globalid";
const SERIALIZED: &str = "_aj_serialized";
const MARKERS: [&str; 3] = [
    "_aj_symbol_keys",
    "_aj_ruby2_keywords",
    "_aj_hash_with_indifferent_access",
];

/// True for either ActiveJob wrapper class name.
pub fn is_wrapper(class: &str) -> bool {
    class == RAILS_WRAPPER || class == SIDEKIQ8_WRAPPER
}

/// For an ActiveJob-wrapped payload, the ActiveJob class and its decoded arguments.
///
/// Plain values come through as they are; hashes lose ActiveJob's key markers
/// (`_aj_symbol_keys`, `_aj_ruby2_keywords`, `_aj_hash_with_indifferent_access`); a GlobalID
/// (`{"_aj_globalid": "gid://app/User/42"}`) becomes its URI string, which [`GlobalId::parse`]
/// reads; a custom-serialized value (`_aj_serialized`) becomes its `value` when it has one.
/// Returns `None` for payloads that are not ActiveJob-wrapped.
pub fn unwrap(payload: &Payload) -> Option<(String, Vec<Value>)> {
    if !is_wrapper(payload.class()) {
        return None;
    }
    let data = payload.args().first()?.as_object()?;
    let class = payload
        .str("wrapped")
        .or_else(|| data.get("job_class").and_then(Value::as_str))?
        .to_string();
    let args = data
        .get("arguments")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(decode_argument).collect())
        .unwrap_or_default();
    Some((class, args))
}

fn decode_argument(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(decode_argument).collect()),
        Value::Object(m) => {
            if let Some(gid) = m.get(GLOBALID) {
                return gid.clone();
            }
            if m.contains_key(SERIALIZED) {
                return m.get("value").map(decode_argument).unwrap_or(Value::Null);
            }
            Value::Object(
                m.iter()
                    .filter(|(k, _)| !MARKERS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), decode_argument(v)))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

fn encode_argument(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(encode_argument).collect()),
        Value::Object(m) => {
            let mut out: Map<String, Value> = m
                .iter()
                .map(|(k, v)| (k.clone(), encode_argument(v)))
                .collect();
            // Rails marks a string-keyed hash with an empty symbol-key list.
            out.insert(MARKERS[0].into(), Value::Array(vec![]));
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Builds a payload that a Ruby ActiveJob class `job_class` runs with `arguments`, in the
/// shape Rails' Sidekiq adapter pushes (wrapper class, `wrapped`, one serialization hash).
pub fn wrap(job_class: &str, arguments: &[Value], queue: &str, profile: WireProfile) -> Payload {
    let now = crate::now();
    let enqueued = chrono::DateTime::from_timestamp_micros((now * 1e6) as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut data = Map::new();
    data.insert("job_class".into(), Value::from(job_class));
    data.insert("job_id".into(), Value::from(crate::id::new_uuid()));
    data.insert("provider_job_id".into(), Value::Null);
    data.insert("queue_name".into(), Value::from(queue));
    data.insert("priority".into(), Value::Null);
    data.insert(
        "arguments".into(),
        Value::Array(arguments.iter().map(encode_argument).collect()),
    );
    data.insert("executions".into(), Value::from(0));
    data.insert("exception_executions".into(), Value::Object(Map::new()));
    data.insert("locale".into(), Value::from("en"));
    data.insert("timezone".into(), Value::from("UTC"));
    data.insert("enqueued_at".into(), Value::from(enqueued));
    let mut p = Payload::new(RAILS_WRAPPER, vec![Value::Object(data)], queue, profile);
    p.set("wrapped", job_class);
    p
}

/// A parsed GlobalID URI, `gid://<app>/<model>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalId {
    /// The application name.
    pub app: String,
    /// The model class name, e.g. `User` or `Admin::User`.
    pub model: String,
    /// The record id, as text.
    pub id: String,
}

impl GlobalId {
    /// Parses `gid://app/Model/id`; `None` for anything else.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("gid://")?;
        let mut parts = rest.splitn(3, '/');
        let app = parts.next()?.to_string();
        let model = parts.next()?.to_string();
        let id = parts.next()?.split('?').next()?.to_string();
        (!app.is_empty() && !model.is_empty() && !id.is_empty()).then_some(Self { app, model, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unwraps_rails_payloads() {
        let raw = json!({
            "class": RAILS_WRAPPER, "wrapped": "UserWelcomeJob", "queue": "default",
            "args": [{"job_class": "UserWelcomeJob", "job_id": "u", "arguments": [
                42, "x", {"a": 1, "_aj_symbol_keys": ["a"]},
                {"_aj_globalid": "gid://shop/User/7"},
                {"_aj_serialized": "ActiveJob::Serializers::SymbolSerializer", "value": "sym"}
            ]}],
            "jid": "j"
        });
        let p = Payload::parse(&raw.to_string()).unwrap();
        let (class, args) = unwrap(&p).unwrap();
        assert_eq!(class, "UserWelcomeJob");
        assert_eq!(
            args,
            vec![
                json!(42),
                json!("x"),
                json!({"a": 1}),
                json!("gid://shop/User/7"),
                json!("sym")
            ]
        );
        let gid = GlobalId::parse(args[3].as_str().unwrap()).unwrap();
        assert_eq!(
            (gid.app.as_str(), gid.model.as_str(), gid.id.as_str()),
            ("shop", "User", "7")
        );
    }

    #[test]
    fn sidekiq8_wrapper_is_equivalent() {
        let raw = json!({"class": SIDEKIQ8_WRAPPER, "args": [{"job_class": "A", "arguments": []}]});
        let (class, args) = unwrap(&Payload::parse(&raw.to_string()).unwrap()).unwrap();
        assert_eq!(class, "A");
        assert!(args.is_empty());
    }

    #[test]
    fn wrap_round_trips() {
        let p = wrap(
            "RubyJob",
            &[json!(1), json!({"k": "v"})],
            "mailers",
            WireProfile::V7,
        );
        assert_eq!(p.class(), RAILS_WRAPPER);
        assert_eq!(p.display_class(), "RubyJob");
        assert_eq!(p.args()[0]["queue_name"], "mailers");
        let (class, args) = unwrap(&p).unwrap();
        assert_eq!(class, "RubyJob");
        assert_eq!(args, vec![json!(1), json!({"k": "v"})]);
    }
}
