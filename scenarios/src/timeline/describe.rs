//! How the timeline words what it draws: which backend and daemon events are too quiet to
//! draw or are faults, a step's name and arguments, compact JSON for hover details.

use fake_backend::{kinds, Event};
use serde_json::Value;

use crate::model::Step;

/// Backend events too frequent or too internal to draw.
pub(super) const QUIET: &[&str] = &[
    kinds::MESSAGE_SENT,
    kinds::MESSAGE_RECEIVED,
    kinds::LEASE_RENEWED,
    kinds::POLICY_SAMPLED,
    kinds::LOGS_RECEIVED,
    kinds::MQTT_SUBSCRIBED,
    kinds::WORKER_STATE,
    kinds::POOL_CREATED,
    kinds::RUN_QUEUED,
    kinds::RUN_TRANSITION, // drawn as the run lane's colours instead
];

/// Events whose data is the run spec the harness sent (its env may hold anything).
pub(super) const SPEC_EVENTS: &[&str] = &[kinds::RUN_CREATED, kinds::RUN_OFFERED];

/// Docker actions too frequent to draw.
pub(super) const DOCKER_QUIET: &[&str] =
    &["attach", "resize", "connect", "disconnect", "exec_create"];

/// Whether an event is drawn as a fault: an injected fault, a refusal, an expiry, a crash.
pub(super) fn is_fault(e: &Event) -> bool {
    let kind = e.kind.as_str();
    if kind == kinds::WORKER_GONE {
        // Gone after a goodbye is the normal end; gone without one is a crash.
        return e.data.get("crashed").and_then(Value::as_bool) != Some(false);
    }
    kind.starts_with("fault.")
        || [
            ".refused",
            ".expired",
            ".invalid",
            ".denied",
            ".protocol_error",
            ".unknown_type",
            ".interruption",
        ]
        .iter()
        .any(|s| kind.ends_with(s))
        || kind == kinds::BACKEND_STOPPED
}

/// A step's snake_case name (`fault: broker_down` for faults) and its arguments.
pub(super) fn step_parts(step: &Step) -> (String, serde_json::Map<String, Value>) {
    let split = |v: Value| match v {
        Value::String(s) => (s, serde_json::Map::new()),
        Value::Object(o) if o.len() == 1 => {
            let (k, v) = o.into_iter().next().expect("one key");
            let args = match v {
                Value::Object(a) => a,
                other => [("value".to_string(), other)].into_iter().collect(),
            };
            (k, args)
        }
        other => (other.to_string(), serde_json::Map::new()),
    };
    let (name, mut args) = split(serde_json::to_value(step).unwrap_or(Value::Null));
    if name == "fault" {
        let (fault, inner) = split(args.remove("value").unwrap_or(Value::Object(args)));
        return (format!("fault: {fault}"), inner);
    }
    // The env of a schedule step is whatever the scenario put there: drawn by keys only.
    if let Some(Value::Object(env)) = args.get_mut("env") {
        for v in env.values_mut() {
            *v = Value::String("…".into());
        }
    }
    (name, args)
}

/// The transition's fields worth a hover (not `from`, which the previous span shows).
pub(super) fn transition_data(data: &Value) -> Value {
    match data {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, v)| *k != "from" && *k != "to" && !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Value::Null,
    }
}

pub(super) fn compact(v: &impl serde::Serialize) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    if s == "{}" || s == "null" {
        String::new()
    } else {
        s
    }
}

pub(super) fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
