//! MQTT payloads: JSON objects with a `type` tag.
//!
//! Server -> worker messages carry a `message_id` so a worker can log and dedupe them;
//! the run ULID is what dedupes runs (a message may arrive twice, late or after a reconnect).

use serde::{Deserialize, Serialize};

use crate::api::WorkerBinary;
use crate::error::ProtocolError;

/// Server -> worker, on `<ns>/readonly/<pool>/<worker>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    /// A run is waiting for this worker. The worker must claim it over HTTPS before
    /// doing anything else; the claim response carries the run's details.
    #[serde(rename = "run.scheduled")]
    RunScheduled {
        message_id: String,
        run_ulid: String,
    },
    /// Stop a run: grace period, then kill; report it canceled.
    #[serde(rename = "run.cancel")]
    RunCancel {
        message_id: String,
        run_ulid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Take no new runs; finish the ones in flight.
    #[serde(rename = "worker.drain")]
    Drain { message_id: String },
    #[serde(rename = "worker.undrain")]
    Undrain { message_id: String },
    /// Self-destruct: drain, then exit (the host is expected to replace the worker).
    #[serde(rename = "worker.cycle")]
    Cycle { message_id: String },
    /// A new worker binary exists; the worker may prefetch it.
    #[serde(rename = "worker_binary.published")]
    BinaryPublished {
        message_id: String,
        binary: WorkerBinary,
    },
}

/// Worker -> server, on `<ns>/writeonly/<pool>/<worker>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum WorkerMessage {
    #[serde(rename = "worker.heartbeat")]
    Heartbeat(Heartbeat),
    /// Sent on a graceful stop with `crashed: false`; registered as the MQTT Last Will
    /// with `crashed: true`, so the broker sends it when the worker dies.
    #[serde(rename = "worker.gone")]
    Gone { worker_ulid: String, crashed: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker_ulid: String,
    /// Increments per heartbeat of one launcher process; lets the backend spot reordering.
    pub seq: u64,
    pub state: WorkerState,
    /// Runs this worker holds (claimed and not yet reported terminal).
    #[serde(default)]
    pub runs: Vec<String>,
    pub capacity: u32,
    /// The cloud's notice that the worker's machine is about to be reclaimed (a spot or
    /// preemptible instance); absent until one arrives. Older backends ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption: Option<InterruptionNotice>,
}

/// A spot / preemptible instance's interruption notice, as the worker read it from its
/// cloud's metadata service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptionNotice {
    /// `aws`, `gcp` or `azure`.
    pub cloud: String,
    /// What the cloud will do: EC2's `terminate` / `stop` / `hibernate`, GCP's and
    /// Azure's `preempt`.
    pub action: String,
    /// When the machine goes, RFC 3339 UTC. Runs still going a stop grace before it
    /// are stopped and reported failed (`spot_interruption`).
    pub deadline: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WorkerState {
    Idle,
    Busy,
    Drained,
}

/// The outcome of reading an MQTT payload that should be a [`ServerMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<T> {
    Message(T),
    /// Well-formed JSON with a `type` this version does not know: skip it, don't fail.
    UnknownType(String),
}

fn parse_tagged<T: serde::de::DeserializeOwned>(
    what: &str,
    payload: &[u8],
) -> Result<Incoming<T>, ProtocolError> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|source| ProtocolError::Json {
            what: what.to_string(),
            source,
        })?;
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_string)
    else {
        return Err(ProtocolError::MissingField {
            what: what.to_string(),
            field: "type",
        });
    };
    match serde_json::from_value::<T>(value) {
        Ok(m) => Ok(Incoming::Message(m)),
        Err(e) if e.to_string().starts_with("unknown variant") => Ok(Incoming::UnknownType(kind)),
        Err(source) => Err(ProtocolError::Json {
            what: format!("{what} of type {kind:?}"),
            source,
        }),
    }
}

impl ServerMessage {
    pub fn parse(payload: &[u8]) -> Result<Incoming<ServerMessage>, ProtocolError> {
        parse_tagged("server message", payload)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("message serializes")
    }

    pub fn message_id(&self) -> &str {
        match self {
            ServerMessage::RunScheduled { message_id, .. }
            | ServerMessage::RunCancel { message_id, .. }
            | ServerMessage::Drain { message_id }
            | ServerMessage::Undrain { message_id }
            | ServerMessage::Cycle { message_id }
            | ServerMessage::BinaryPublished { message_id, .. } => message_id,
        }
    }
}

impl WorkerMessage {
    pub fn parse(payload: &[u8]) -> Result<Incoming<WorkerMessage>, ProtocolError> {
        parse_tagged("worker message", payload)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("message serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_is_skipped_not_an_error() {
        let got = ServerMessage::parse(br#"{"type":"run.teleport","message_id":"m"}"#).unwrap();
        assert_eq!(got, Incoming::UnknownType("run.teleport".into()));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = ServerMessage::parse(b"\x00\xffnot json").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("server message: not valid JSON"),
            "{err}"
        );
        let err = ServerMessage::parse(br#"{"run_ulid":"x"}"#).unwrap_err();
        assert_eq!(err.to_string(), "server message: type is missing or empty");
        let err = ServerMessage::parse(br#"{"type":"run.scheduled"}"#).unwrap_err();
        assert!(err.to_string().contains("\"run.scheduled\""), "{err}");
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let got = ServerMessage::parse(
            br#"{"type":"run.scheduled","message_id":"m","run_ulid":"r","priority":9}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            Incoming::Message(ServerMessage::RunScheduled {
                message_id: "m".into(),
                run_ulid: "r".into()
            })
        );
    }
}
