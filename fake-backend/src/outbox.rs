//! The outbox: the one task that publishes server -> worker messages, in the order the
//! core queued them, applying message faults (duplicate, delay, reorder) on the way. It
//! publishes through the embedded broker or an external one alike.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::topics;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::events::{kinds, NewEvent};
use crate::external::External;
use crate::faults::MessageFault;
use crate::rules::{Core, Outbound};

#[derive(Clone)]
pub(crate) enum Bus {
    Embedded(Arc<Broker>),
    External(Arc<External>),
}

impl Bus {
    async fn publish(&self, topic: &str, payload: Bytes) -> Option<usize> {
        match self {
            Bus::Embedded(b) => Some(b.publish(topic, payload)),
            Bus::External(x) => {
                x.publish(topic, payload).await;
                None
            }
        }
    }

    /// The connection `worker` has now (`Some(None)`: none); None when the bus cannot tell.
    fn connection(&self, worker: &str) -> Option<Option<u64>> {
        match self {
            Bus::Embedded(b) => Some(b.connection_of(worker)),
            Bus::External(_) => None,
        }
    }
}

enum Item {
    Out(Outbound),
    Release(String),
    /// A delayed message, with the connection it was sent on: published without applying
    /// faults again, or lost if that connection is gone (late on a connection, a message
    /// never reaches the worker's next one).
    Late(Outbound, Option<Option<u64>>),
}

async fn publish(core: &Core, bus: &Bus, o: &Outbound, note: Option<&str>) {
    let topic = topics::readonly(&core.namespace, &o.pool, &o.worker);
    let payload = Bytes::from(o.msg.to_json());
    let delivered = bus.publish(&topic, payload).await;
    record_sent(core, o, &topic, delivered, note);
}

fn record_sent(
    core: &Core,
    o: &Outbound,
    topic: &str,
    delivered: Option<usize>,
    note: Option<&str>,
) {
    let kind = serde_json::to_value(&o.msg)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string));
    let mut ev = NewEvent::new(kinds::MESSAGE_SENT)
        .pool(&o.pool)
        .worker(&o.worker)
        .data(json!({
            "topic": topic,
            "type": kind,
            "message": o.msg,
            "delivered": delivered,
            "fault": note,
        }));
    if let protocol::messages::ServerMessage::RunScheduled { run_ulid, .. }
    | protocol::messages::ServerMessage::RunCancel { run_ulid, .. } = &o.msg
    {
        ev = ev.run(run_ulid);
    }
    core.record(ev);
}

pub(crate) async fn run(
    core: Arc<Core>,
    bus: Bus,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    shutdown: CancellationToken,
) {
    let (late_tx, mut late_rx) = mpsc::unbounded_channel::<Item>();
    let mut held: HashMap<String, Outbound> = HashMap::new();
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            o = rx.recv() => match o { Some(o) => Item::Out(o), None => break },
            Some(i) = late_rx.recv() => i,
        };
        match item {
            Item::Late(o, sent_on) => {
                let lost = match sent_on {
                    Some(Some(conn)) => bus.connection(&o.worker) != Some(Some(conn)),
                    // Nobody was connected: sent at once, it would have reached nobody too.
                    Some(None) => true,
                    None => false,
                };
                if lost {
                    let topic = topics::readonly(&core.namespace, &o.pool, &o.worker);
                    let note = "delayed; lost: its connection closed";
                    record_sent(&core, &o, &topic, Some(0), Some(note));
                } else {
                    publish(&core, &bus, &o, Some("delayed")).await
                }
            }
            Item::Release(worker) => {
                if let Some(o) = held.remove(&worker) {
                    publish(&core, &bus, &o, Some("reordered (released after hold)")).await;
                }
            }
            Item::Out(o) => {
                let fault = core.faults.take_message(&o.worker);
                if let Some(f) = fault {
                    core.record(
                        NewEvent::new(kinds::FAULT_TRIGGERED)
                            .pool(&o.pool)
                            .worker(&o.worker)
                            .data(json!({ "fault": format!("{f:?}"), "message": o.msg })),
                    );
                }
                match fault {
                    None => publish(&core, &bus, &o, None).await,
                    Some(MessageFault::Duplicate) => {
                        publish(&core, &bus, &o, None).await;
                        publish(&core, &bus, &o, Some("duplicate")).await;
                    }
                    Some(MessageFault::Delay(ms)) => {
                        let tx = late_tx.clone();
                        let sent_on = bus.connection(&o.worker);
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            let _ = tx.send(Item::Late(o, sent_on));
                        });
                        continue;
                    }
                    Some(MessageFault::Reorder(hold_ms)) => {
                        let worker = o.worker.clone();
                        if let Some(prev) = held.insert(worker.clone(), o) {
                            publish(&core, &bus, &prev, None).await;
                        }
                        let tx = late_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                            let _ = tx.send(Item::Release(worker));
                        });
                        continue;
                    }
                }
                // A message held for reordering goes out after the one that followed it.
                if let Some(h) = held.remove(&o.worker) {
                    publish(&core, &bus, &h, Some("reordered")).await;
                }
            }
        }
    }
}
