//! An MQTT session without a connection, for simulations: the same CONNECT checks, ACL,
//! session table, kicks, outages and Last Will as a TLS session, with packets replaced by
//! calls. The client end is [`MemorySession`].

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use super::{acl, session::connect_check, Broker, SessionCmd, SessionKey};
use crate::events::{kinds, NewEvent};

/// Why the broker refused an in-memory CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The CONNACK code a TLS client would get (`NotAuthorized`, `ServiceUnavailable`, ...).
    pub code: String,
    pub reason: String,
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Message {
        topic: String,
        payload: Bytes,
    },
    /// The broker closed the session (a kick, an outage, a takeover, the backend stopping).
    Closed(String),
}

/// The client end of one in-memory MQTT session. Dropped without
/// [`MemorySession::disconnect`], it is a lost connection: the Last Will fires.
pub struct MemorySession {
    broker: Arc<Broker>,
    key: SessionKey,
    conn_id: u64,
    will: Option<(String, Bytes)>,
    rx: mpsc::UnboundedReceiver<SessionCmd>,
    closed: bool,
}

fn ev(key: &SessionKey, kind: &str) -> NewEvent {
    NewEvent::new(kind).pool(&key.0).worker(&key.1)
}

impl Broker {
    /// CONNECT from `client_id` with the certificate `fingerprint` and an optional Last
    /// Will `(topic, payload)`.
    pub(crate) fn connect_in_memory(
        self: &Arc<Self>,
        fingerprint: &str,
        client_id: &str,
        will: Option<(String, Bytes)>,
    ) -> Result<MemorySession, Refused> {
        let refuse = |code: String, reason: String| {
            self.core
                .record(NewEvent::new(kinds::MQTT_REFUSED).data(json!({
                    "peer": "in-memory", "client_id": client_id, "reason": reason,
                })));
            Refused { code, reason }
        };
        if self.is_down() {
            // A TLS client would not even get a CONNACK: the listener drops it.
            return Err(refuse("ServiceUnavailable".into(), "broker down".into()));
        }
        let pool = self
            .core
            .pool_for_fingerprint(fingerprint)
            .map_err(|why| refuse("NotAuthorized".into(), why))?;
        let will_topic = will.as_ref().map(|(t, _)| t.as_str());
        if let Some((code, why)) = connect_check(self, &pool, client_id, will_topic) {
            return Err(refuse(format!("{code:?}"), why));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let key = (pool, client_id.to_string());
        let conn_id = self.register(&key, fingerprint, tx);
        self.core
            .record(ev(&key, kinds::MQTT_CONNECTED).data(json!({
                "peer": "in-memory", "keep_alive_s": 0, "clean_session": true,
                "has_will": will.is_some(),
            })));
        Ok(MemorySession {
            broker: self.clone(),
            key,
            conn_id,
            will,
            rx,
            closed: false,
        })
    }
}

impl MemorySession {
    /// SUBSCRIBE to one filter; false when the ACL denies it.
    pub fn subscribe(&mut self, filter: &str) -> bool {
        let core = &self.broker.core;
        let (pool, id) = &self.key;
        if acl::may_subscribe(&core.namespace, pool, id, filter) {
            self.broker
                .add_subscription(&self.key, self.conn_id, filter);
            core.record(ev(&self.key, kinds::MQTT_SUBSCRIBED).data(json!({ "filter": filter })));
            true
        } else {
            core.record(ev(&self.key, kinds::MQTT_DENIED).data(json!({
                "action": "subscribe", "topic": filter,
            })));
            false
        }
    }

    /// PUBLISH; a denied topic closes the session (as over TLS) and returns false.
    pub fn publish(&mut self, topic: &str, payload: Bytes) -> bool {
        if self.closed {
            return false;
        }
        let core = &self.broker.core;
        let (pool, id) = &self.key;
        if !acl::may_publish(&core.namespace, pool, id, topic) {
            core.record(ev(&self.key, kinds::MQTT_DENIED).data(json!({
                "action": "publish", "topic": topic,
            })));
            self.close(false, true, format!("publish to {topic:?} not allowed"));
            return false;
        }
        let _ = self.broker.inbound.send((topic.to_string(), payload));
        true
    }

    /// The next message for this client, or why the session closed (then always that).
    pub async fn recv(&mut self) -> Delivery {
        if self.closed {
            return Delivery::Closed("session closed".into());
        }
        match self.rx.recv().await {
            Some(SessionCmd::Publish { topic, payload }) => Delivery::Message { topic, payload },
            Some(SessionCmd::Kick { fire_will, reason }) => {
                self.close(false, fire_will, reason.clone());
                Delivery::Closed(reason)
            }
            None => {
                self.close(false, false, "broker gone".into());
                Delivery::Closed("broker gone".into())
            }
        }
    }

    /// DISCONNECT: a clean end, no will.
    pub fn disconnect(mut self) {
        self.close(true, false, "client sent DISCONNECT".into());
    }

    fn close(&mut self, clean: bool, fire_will: bool, reason: String) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.broker.unregister(&self.key, self.conn_id);
        let will_fired = !clean && fire_will && self.will.is_some();
        self.broker
            .core
            .record(ev(&self.key, kinds::MQTT_DISCONNECTED).data(json!({
                "clean": clean, "will_fired": will_fired, "reason": reason,
            })));
        if will_fired {
            if let Some((topic, payload)) = self.will.take() {
                let _ = self.broker.inbound.send((topic, payload));
            }
        }
    }
}

impl Drop for MemorySession {
    fn drop(&mut self) {
        // The connection is gone without a DISCONNECT: a crash, as the broker sees it.
        self.close(false, true, "connection lost".into());
    }
}
