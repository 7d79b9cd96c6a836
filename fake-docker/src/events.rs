//! The ordered event log: the admin API's record of everything the daemon did,
//! and the source of Docker's `/events` stream.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One entry of the log. `kind` is `container`, `image` or `network` (these also
/// appear on `/events`), or `request`, `fault`, `daemon` (admin-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// RFC3339Nano wall-clock time (base time + tokio elapsed).
    pub time: String,
    #[serde(skip)]
    pub at: Option<OffsetDateTime>,
    pub kind: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    pub fn is_docker_event(&self) -> bool {
        matches!(self.kind.as_str(), "container" | "image" | "network")
    }

    /// The `/events` wire form.
    pub fn docker_json(&self) -> serde_json::Value {
        let at = self.at.unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let mut v = serde_json::json!({
            "Type": self.kind,
            "Action": self.action,
            "Actor": {"ID": self.id, "Attributes": self.attributes},
            "scope": "local",
            "time": at.unix_timestamp(),
            "timeNano": i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX),
        });
        if self.kind == "container" {
            v["status"] = self.action.clone().into();
            v["id"] = self.id.clone().into();
            if let Some(img) = self.attributes.get("image") {
                v["from"] = img.clone().into();
            }
        }
        v
    }
}

#[derive(Debug, Default)]
pub struct EventLog {
    events: Vec<Event>,
}

impl EventLog {
    pub fn push(
        &mut self,
        at: OffsetDateTime,
        kind: &str,
        action: &str,
        id: &str,
        attributes: BTreeMap<String, String>,
    ) {
        let seq = self.events.len() as u64;
        self.events.push(Event {
            seq,
            time: crate::clock::rfc3339_nano(at),
            at: Some(at),
            kind: kind.into(),
            action: action.into(),
            id: id.into(),
            attributes,
        });
    }

    pub fn all(&self) -> &[Event] {
        &self.events
    }

    pub fn since(&self, seq: usize) -> &[Event] {
        self.events.get(seq..).unwrap_or(&[])
    }
}
