//! The embedded MQTT 3.1.1 broker over TLS (see README: why not rumqttd). Clients must
//! present a live pool's certificate; the topic ACL confines each to its own topics.
//! Publishes from workers go to the backend in-process; the backend publishes to
//! subscribers directly. It can drop one client or go down entirely, for fault tests.
//! `inbound` turns any broker's worker publishes into calls to the rules.

mod acl;
mod in_memory;
mod inbound;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::events::{kinds, NewEvent};
use crate::rules::Core;

pub use in_memory::{Delivery, MemorySession, Refused};
pub(crate) use inbound::on_worker_publish;

pub(crate) enum SessionCmd {
    Publish { topic: String, payload: Bytes },
    Kick { fire_will: bool, reason: String },
}

/// Sessions are keyed by (pool, client id): a client id alone is only unique within its
/// pool, and one pool's certificate must never reach another pool's session.
type SessionKey = (String, String);

struct SessionEntry {
    conn_id: u64,
    fingerprint: String,
    subscriptions: Vec<String>,
    tx: mpsc::UnboundedSender<SessionCmd>,
}

pub(crate) struct Broker {
    core: Arc<Core>,
    sessions: Mutex<HashMap<SessionKey, SessionEntry>>,
    next_conn: AtomicU64,
    down: Mutex<Option<(u64, CancellationToken)>>,
    inbound: mpsc::UnboundedSender<(String, Bytes)>,
    /// None for a broker reached only in memory (no listener).
    acceptor: Option<TlsAcceptor>,
}

impl Broker {
    pub(crate) fn new(
        core: Arc<Core>,
        acceptor: Option<TlsAcceptor>,
        inbound: mpsc::UnboundedSender<(String, Bytes)>,
    ) -> Arc<Broker> {
        Arc::new(Broker {
            core,
            sessions: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            down: Mutex::new(None),
            inbound,
            acceptor,
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, SessionEntry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = crate::net::accept(&listener) => {
                    let (tcp, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!("mqtt accept: {e}");
                            continue;
                        }
                    };
                    if self.is_down() {
                        self.core.record(NewEvent::new(kinds::MQTT_REFUSED)
                            .data(json!({ "peer": peer.to_string(), "reason": "broker down" })));
                        drop(tcp);
                        continue;
                    }
                    let me = self.clone();
                    conns.spawn(async move { session::run(me, tcp, peer).await });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        self.kick_all("backend shutting down");
        conns.shutdown().await;
    }

    fn register(
        &self,
        key: &SessionKey,
        fingerprint: &str,
        tx: mpsc::UnboundedSender<SessionCmd>,
    ) -> u64 {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let old = self.sessions().insert(
            key.clone(),
            SessionEntry {
                conn_id,
                fingerprint: fingerprint.to_string(),
                subscriptions: Vec::new(),
                tx,
            },
        );
        if let Some(old) = old {
            // Session takeover: the old connection closes without its will (a reconnect
            // is not a crash).
            let _ = old.tx.send(SessionCmd::Kick {
                fire_will: false,
                reason: "session taken over by a new connection".into(),
            });
        }
        conn_id
    }

    fn unregister(&self, key: &SessionKey, conn_id: u64) {
        let mut s = self.sessions();
        if s.get(key).is_some_and(|e| e.conn_id == conn_id) {
            s.remove(key);
        }
    }

    fn add_subscription(&self, key: &SessionKey, conn_id: u64, filter: &str) {
        if let Some(e) = self
            .sessions()
            .get_mut(key)
            .filter(|e| e.conn_id == conn_id)
        {
            if !e.subscriptions.iter().any(|f| f == filter) {
                e.subscriptions.push(filter.to_string());
            }
        }
    }

    fn remove_subscription(&self, key: &SessionKey, conn_id: u64, filter: &str) {
        if let Some(e) = self
            .sessions()
            .get_mut(key)
            .filter(|e| e.conn_id == conn_id)
        {
            e.subscriptions.retain(|f| f != filter);
        }
    }

    /// Publishes to every subscriber of `topic` (QoS 1); returns how many got it.
    pub(crate) fn publish(&self, topic: &str, payload: Bytes) -> usize {
        let s = self.sessions();
        let mut n = 0;
        for e in s.values() {
            if e.subscriptions.iter().any(|f| rumqttc::matches(topic, f)) {
                let sent = e.tx.send(SessionCmd::Publish {
                    topic: topic.to_string(),
                    payload: payload.clone(),
                });
                n += usize::from(sent.is_ok());
            }
        }
        n
    }

    /// Closes one client's connection. Returns false when it is not connected. A worker
    /// id is registered in one pool only, so at most one session matches.
    pub(crate) fn kick(&self, client_id: &str, fire_will: bool, reason: &str) -> bool {
        let s = self.sessions();
        match s.iter().find(|((_, id), _)| id == client_id) {
            Some((_, e)) => {
                e.tx.send(SessionCmd::Kick {
                    fire_will,
                    reason: reason.to_string(),
                })
                .is_ok()
            }
            None => false,
        }
    }

    /// Closes every connection made with a certificate that is no longer valid.
    pub(crate) fn kick_fingerprint(&self, fingerprint: &str, reason: &str) {
        for e in self
            .sessions()
            .values()
            .filter(|e| e.fingerprint == fingerprint)
        {
            let _ = e.tx.send(SessionCmd::Kick {
                fire_will: false,
                reason: reason.to_string(),
            });
        }
    }

    pub(crate) fn kick_all(&self, reason: &str) {
        for e in self.sessions().values() {
            let _ = e.tx.send(SessionCmd::Kick {
                fire_will: false,
                reason: reason.to_string(),
            });
        }
    }

    /// The connection `client_id` has now, if any.
    pub(crate) fn connection_of(&self, client_id: &str) -> Option<u64> {
        self.sessions()
            .iter()
            .find(|((_, id), _)| id == client_id)
            .map(|(_, e)| e.conn_id)
    }

    pub(crate) fn connected_pool(&self, client_id: &str) -> Option<String> {
        self.sessions()
            .keys()
            .find(|(_, id)| id == client_id)
            .map(|(pool, _)| pool.clone())
    }

    /// Takes the broker down (all connections closed, new ones refused) until
    /// [`Broker::up`] or, with `for_`, that long on tokio's clock.
    pub(crate) fn down(self: &Arc<Self>, for_: Option<Duration>) {
        let gen = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let previous = self
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace((gen, token.clone()));
        if let Some((_, p)) = previous {
            p.cancel();
        }
        self.kick_all("broker down (fault)");
        if let Some(d) = for_ {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(d) => me.up_if(Some(gen)),
                    _ = token.cancelled() => {}
                }
            });
        }
    }

    /// Brings the broker back (if `gen` is given, only if that outage is still on).
    fn up_if(&self, gen: Option<u64>) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down
            .as_ref()
            .is_some_and(|(g, _)| gen.is_none_or(|x| x == *g))
        {
            if let Some((_, t)) = down.take() {
                t.cancel();
            }
            drop(down);
            self.core.record(
                NewEvent::new(kinds::FAULT_CLEARED).data(json!({ "fault": "broker_down" })),
            );
        }
    }

    pub(crate) fn up(&self) {
        self.up_if(None);
    }
}
