//! The event log: every connection, message, claim, transition, log batch, download and
//! fault, as JSON lines in `events.jsonl` with a monotonically increasing `seq`. Tests
//! wait on events (`wait_for`), never on wall-clock sleeps.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::{BackendError, Result};

/// One recorded event. `kind` is a dotted name (see [`kinds`]); `data` holds the details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Backend clock (fixed base + tokio elapsed), never the wall clock.
    pub at_ms: u64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

impl Event {
    /// A field of `data` as a string, for terse predicates.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }
}

/// Event kinds. Strings rather than an enum so readers of `events.jsonl` tolerate new ones.
pub mod kinds {
    pub const BACKEND_STARTED: &str = "backend.started";
    pub const BACKEND_STOPPED: &str = "backend.stopped";
    pub const POOL_CREATED: &str = "pool.created";
    pub const POOL_RESET: &str = "pool.reset";
    pub const MQTT_CONNECTED: &str = "mqtt.connected";
    pub const MQTT_REFUSED: &str = "mqtt.refused";
    pub const MQTT_DISCONNECTED: &str = "mqtt.disconnected";
    pub const MQTT_SUBSCRIBED: &str = "mqtt.subscribed";
    pub const MQTT_DENIED: &str = "mqtt.denied";
    pub const MQTT_PROTOCOL_ERROR: &str = "mqtt.protocol_error";
    pub const TLS_REFUSED: &str = "tls.refused";
    pub const MESSAGE_SENT: &str = "message.sent";
    pub const MESSAGE_RECEIVED: &str = "message.received";
    pub const MESSAGE_INVALID: &str = "message.invalid";
    pub const MESSAGE_UNKNOWN_TYPE: &str = "message.unknown_type";
    pub const MESSAGE_IGNORED: &str = "message.ignored";
    pub const WORKER_REGISTERED: &str = "worker.registered";
    pub const WORKER_ONLINE: &str = "worker.online";
    pub const WORKER_STATE: &str = "worker.state";
    pub const WORKER_OFFLINE: &str = "worker.offline";
    pub const WORKER_GONE: &str = "worker.gone";
    pub const WORKER_DRAIN: &str = "worker.drain";
    pub const WORKER_UNDRAIN: &str = "worker.undrain";
    pub const WORKER_CYCLE: &str = "worker.cycle";
    /// A heartbeat carried a (new) spot interruption notice.
    pub const WORKER_INTERRUPTION: &str = "worker.interruption";
    pub const RUN_CREATED: &str = "run.created";
    pub const RUN_QUEUED: &str = "run.queued";
    pub const RUN_OFFERED: &str = "run.offered";
    pub const RUN_OFFER_EXPIRED: &str = "run.offer_expired";
    pub const RUN_CANCEL_REQUESTED: &str = "run.cancel_requested";
    pub const RUN_TRANSITION: &str = "run.transition";
    pub const TRANSITION_REFUSED: &str = "transition.refused";
    pub const TRANSITION_REPEATED: &str = "transition.repeated";
    pub const CLAIM_GRANTED: &str = "claim.granted";
    pub const CLAIM_REFUSED: &str = "claim.refused";
    pub const LEASE_RENEWED: &str = "lease.renewed";
    pub const LEASE_REFUSED: &str = "lease.refused";
    pub const LEASE_EXPIRED: &str = "lease.expired";
    pub const LOGS_RECEIVED: &str = "logs.received";
    pub const POLICY_SAMPLED: &str = "policy.sampled";
    pub const BINARY_PUBLISHED: &str = "binary.published";
    pub const BINARY_DOWNLOAD: &str = "binary.download";
    pub const HTTP_REFUSED: &str = "http.refused";
    pub const FAULT_INJECTED: &str = "fault.injected";
    pub const FAULT_TRIGGERED: &str = "fault.triggered";
    pub const FAULT_CLEARED: &str = "fault.cleared";
}

/// What a caller records; the log adds `seq` and `at_ms`.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub kind: String,
    pub pool: Option<String>,
    pub worker: Option<String>,
    pub run: Option<String>,
    pub data: Value,
}

impl NewEvent {
    pub fn new(kind: &str) -> NewEvent {
        NewEvent {
            kind: kind.to_string(),
            ..NewEvent::default()
        }
    }
    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }
    pub fn worker(mut self, worker: impl Into<String>) -> Self {
        self.worker = Some(worker.into());
        self
    }
    pub fn run(mut self, run: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self
    }
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

struct Inner {
    events: Vec<Event>,
    file: File,
}

pub struct EventLog {
    path: PathBuf,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Event>,
}

impl EventLog {
    /// Opens (or creates) `dir/events.jsonl`, keeping what is there; `seq` continues.
    /// A torn last line (a crash mid-write) is skipped.
    pub fn open(dir: &Path) -> Result<EventLog> {
        let path = dir.join("events.jsonl");
        let mut events = Vec::new();
        if path.exists() {
            let f = File::open(&path).map_err(|e| BackendError::io("reading", &path, e))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| BackendError::io("reading", &path, e))?;
                if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                    events.push(ev);
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| BackendError::io("opening", &path, e))?;
        let (tx, _) = broadcast::channel(4096);
        Ok(EventLog {
            path,
            inner: Mutex::new(Inner { events, file }),
            tx,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_seq(&self) -> u64 {
        self.lock().events.last().map_or(0, |e| e.seq)
    }

    pub fn last_at_ms(&self) -> u64 {
        self.lock().events.last().map_or(0, |e| e.at_ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, at_ms: u64, new: NewEvent) -> Event {
        let mut inner = self.lock();
        let seq = inner.events.last().map_or(0, |e| e.seq) + 1;
        let ev = Event {
            seq,
            at_ms,
            kind: new.kind,
            pool: new.pool,
            worker: new.worker,
            run: new.run,
            data: new.data,
        };
        tracing::debug!(seq, kind = %ev.kind, "event");
        if let Ok(mut line) = serde_json::to_vec(&ev) {
            line.push(b'\n');
            // One write per line so a crash tears at most the last line.
            if let Err(e) = inner.file.write_all(&line) {
                tracing::error!("writing {}: {e}", self.path.display());
            }
        }
        inner.events.push(ev.clone());
        let _ = self.tx.send(ev.clone());
        ev
    }

    /// Events with `seq > since`.
    pub fn since(&self, since: u64) -> Vec<Event> {
        let inner = self.lock();
        let start = inner.events.partition_point(|e| e.seq <= since);
        inner.events[start..].to_vec()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The first event with `seq > since` matching `pred`, waiting for it if needed.
    pub async fn wait_for_since<F>(&self, since: u64, mut pred: F) -> Event
    where
        F: FnMut(&Event) -> bool,
    {
        let mut checked = since;
        loop {
            // Subscribe before scanning so nothing recorded in between is missed.
            let mut rx = {
                let inner = self.lock();
                let rx = self.tx.subscribe();
                let start = inner.events.partition_point(|e| e.seq <= checked);
                for ev in &inner.events[start..] {
                    if pred(ev) {
                        return ev.clone();
                    }
                }
                checked = inner.events.last().map_or(checked, |e| e.seq.max(checked));
                rx
            };
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if ev.seq <= checked {
                            continue;
                        }
                        checked = ev.seq;
                        if pred(&ev) {
                            return ev;
                        }
                    }
                    // Lagged: rescan the history from the last event checked.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn persists_and_continues_seq() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path()).unwrap();
            log.record(1, NewEvent::new("a"));
            log.record(2, NewEvent::new("b").run("R"));
        }
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.last_seq(), 2);
        let ev = log.record(3, NewEvent::new("c"));
        assert_eq!(ev.seq, 3);
        let got = log
            .wait_for_since(0, |e| e.run.as_deref() == Some("R"))
            .await;
        assert_eq!(got.kind, "b");
        assert_eq!(log.since(1).len(), 2);
    }

    #[tokio::test]
    async fn waits_for_future_events() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(EventLog::open(dir.path()).unwrap());
        let l2 = log.clone();
        let waiter = tokio::spawn(async move { l2.wait_for_since(0, |e| e.kind == "z").await });
        tokio::task::yield_now().await;
        log.record(1, NewEvent::new("y"));
        log.record(2, NewEvent::new("z"));
        assert_eq!(waiter.await.unwrap().seq, 2);
    }
}
