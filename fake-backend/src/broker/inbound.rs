//! Worker publishes (and Last Wills) from either broker, embedded or external, into the
//! rules: the topic names the pool and worker, the payload is parsed here, and what does
//! not parse is recorded and dropped, never fatal.

use protocol::messages::{Incoming, WorkerMessage};
use protocol::topics::{self, Direction};
use serde_json::json;

use crate::events::{kinds, NewEvent};
use crate::rules::Core;

/// A message a worker published (or its Last Will). Bad input is recorded, never fatal.
pub(crate) fn on_worker_publish(core: &Core, topic: &str, payload: &[u8]) {
    let Some((Direction::FromWorker, pool, worker)) = topics::parse(&core.namespace, topic) else {
        core.record(
            NewEvent::new(kinds::MESSAGE_IGNORED)
                .data(json!({ "topic": topic, "reason": "not a worker topic" })),
        );
        return;
    };
    let msg = match WorkerMessage::parse(payload) {
        Err(e) => {
            core.record(
                NewEvent::new(kinds::MESSAGE_INVALID)
                    .pool(&pool)
                    .worker(&worker)
                    .data(json!({ "topic": topic, "error": e.to_string() })),
            );
            return;
        }
        Ok(Incoming::UnknownType(t)) => {
            core.record(
                NewEvent::new(kinds::MESSAGE_UNKNOWN_TYPE)
                    .pool(&pool)
                    .worker(&worker)
                    .data(json!({ "topic": topic, "type": t })),
            );
            return;
        }
        Ok(Incoming::Message(m)) => m,
    };
    core.on_worker_message(pool, worker, topic, msg);
}
