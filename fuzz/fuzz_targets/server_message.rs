//! MQTT payloads: `ServerMessage::parse` (what the launcher reads) and
//! `WorkerMessage::parse` (what the fake backend reads). A message that parses
//! re-serializes to a payload that parses to the same message; an unknown type is
//! reported as the payload's own `type`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::messages::{Incoming, ServerMessage, WorkerMessage};

fn payload_type(data: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    Some(v.get("type")?.as_str()?.to_string())
}

fuzz_target!(|data: &[u8]| {
    match ServerMessage::parse(data) {
        Ok(Incoming::Message(m)) => {
            assert_eq!(
                ServerMessage::parse(&m.to_json()).unwrap(),
                Incoming::Message(m.clone())
            );
        }
        Ok(Incoming::UnknownType(kind)) => assert_eq!(Some(kind), payload_type(data)),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match WorkerMessage::parse(data) {
        Ok(Incoming::Message(m)) => assert_eq!(
            WorkerMessage::parse(&m.to_json()).unwrap(),
            Incoming::Message(m.clone())
        ),
        Ok(Incoming::UnknownType(kind)) => assert_eq!(Some(kind), payload_type(data)),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
