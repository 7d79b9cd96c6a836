//! The launcher's push channel in memory: what the production MQTT adapter does
//! (`launcher::backend::mqtt`), over the fake backend's broker session table. The backend's
//! messages become [`BackendEvent`]s; the status watch becomes heartbeats; a crash (the
//! session dropped) fires the Last Will; refused credentials are fatal.

use std::time::Duration;

use bytes::Bytes;
use fake_backend::{Delivery, MemorySession};
use launcher::backend::mqtt::MqttError;
use launcher::backoff::Backoff;
use launcher::ports::{BackendEvent, WorkerStatus};
use protocol::messages::{Heartbeat, Incoming, ServerMessage, WorkerMessage};
use tokio::sync::{mpsc, oneshot, watch};

use super::Net;

/// The production adapter's reconnect backoff (1 s doubling to 64 s, full jitter).
const RECONNECT_BASE: Duration = Duration::from_secs(1);
const RECONNECT_CAP: Duration = Duration::from_secs(64);

pub struct PushConfig {
    pub net: Net,
    pub fingerprint: String,
    pub namespace: String,
    pub pool_ulid: String,
    pub worker_ulid: String,
    pub heartbeat: Duration,
    pub seed: u64,
}

/// The running channel: `shutdown` says goodbye (`worker.gone`, clean disconnect);
/// dropping it is a crash (the will fires).
pub struct PushChannel {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    fatal: watch::Receiver<Option<MqttError>>,
}

impl PushChannel {
    pub fn start(
        cfg: PushConfig,
        status: watch::Receiver<WorkerStatus>,
    ) -> (PushChannel, mpsc::Receiver<BackendEvent>) {
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (fatal_tx, fatal) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(drive(cfg, status, events_tx, fatal_tx, stop_rx));
        (
            PushChannel {
                stop: Some(stop_tx),
                task,
                fatal,
            },
            events_rx,
        )
    }

    pub fn fatal(&self) -> watch::Receiver<Option<MqttError>> {
        self.fatal.clone()
    }

    /// `worker.gone { crashed: false }`, then a clean disconnect.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for PushChannel {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

struct Driver {
    cfg: PushConfig,
    readonly: String,
    writeonly: String,
    status: watch::Receiver<WorkerStatus>,
    events: mpsc::Sender<BackendEvent>,
    seq: u64,
}

impl Driver {
    fn heartbeat(&mut self, session: &mut MemorySession) {
        let status = self.status.borrow_and_update().clone();
        let msg = WorkerMessage::Heartbeat(Heartbeat {
            worker_ulid: self.cfg.worker_ulid.clone(),
            seq: self.seq,
            state: status.state,
            runs: status.runs,
            capacity: status.capacity,
            interruption: status.interruption,
        });
        if session.publish(&self.writeonly, Bytes::from(msg.to_json())) {
            self.seq += 1;
        }
    }

    fn connect(&self) -> Result<MemorySession, (bool, String)> {
        let will = WorkerMessage::Gone {
            worker_ulid: self.cfg.worker_ulid.clone(),
            crashed: true,
        }
        .to_json();
        let Some(backend) = self.cfg.net.backend() else {
            return Err((false, "connection refused (the backend is down)".into()));
        };
        backend
            .mqtt_connect(
                &self.cfg.fingerprint,
                &self.cfg.worker_ulid,
                Some((self.writeonly.clone(), Bytes::from(will))),
            )
            .map_err(|r| {
                (
                    r.code == "NotAuthorized",
                    format!("{}: {}", r.code, r.reason),
                )
            })
    }
}

async fn drive(
    cfg: PushConfig,
    status: watch::Receiver<WorkerStatus>,
    events: mpsc::Sender<BackendEvent>,
    fatal: watch::Sender<Option<MqttError>>,
    mut stop: oneshot::Receiver<()>,
) {
    let readonly = protocol::topics::readonly(&cfg.namespace, &cfg.pool_ulid, &cfg.worker_ulid);
    let writeonly = protocol::topics::writeonly(&cfg.namespace, &cfg.pool_ulid, &cfg.worker_ulid);
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_CAP, cfg.seed);
    let mut d = Driver {
        cfg,
        readonly,
        writeonly,
        status,
        events,
        seq: 0,
    };
    let mut status_alive = true;
    let mut announced_down = false;
    loop {
        let mut session = match d.connect() {
            Ok(s) => s,
            Err((true, why)) => {
                let _ = fatal.send(Some(MqttError::Unauthorized(why.clone())));
                let _ = d
                    .events
                    .send(BackendEvent::Disconnected(format!("fatal: {why}")))
                    .await;
                return;
            }
            Err((false, why)) => {
                if !announced_down {
                    announced_down = true;
                    if d.events
                        .send(BackendEvent::Disconnected(why))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay(None)) => continue,
                    _ = &mut stop => return,
                }
            }
        };
        if !session.subscribe(&d.readonly.clone()) {
            let why = format!("subscription to {} refused", d.readonly);
            let _ = fatal.send(Some(MqttError::Unauthorized(why.clone())));
            let _ = d
                .events
                .send(BackendEvent::Disconnected(format!("fatal: {why}")))
                .await;
            return;
        }
        backoff.reset();
        if d.events.send(BackendEvent::Connected).await.is_err() {
            return;
        }
        d.heartbeat(&mut session);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + d.cfg.heartbeat,
            d.cfg.heartbeat,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = loop {
            tokio::select! {
                biased;
                _ = &mut stop => {
                    if d.status.borrow().has_changed() {
                        d.heartbeat(&mut session);
                    }
                    let gone = WorkerMessage::Gone {
                        worker_ulid: d.cfg.worker_ulid.clone(),
                        crashed: false,
                    };
                    session.publish(&d.writeonly, Bytes::from(gone.to_json()));
                    session.disconnect();
                    return;
                }
                delivery = session.recv() => match delivery {
                    Delivery::Message { topic, payload } => {
                        if topic != d.readonly {
                            tracing::warn!(%topic, "MQTT message on an unexpected topic; ignored");
                            continue;
                        }
                        match ServerMessage::parse(&payload) {
                            Ok(Incoming::Message(m)) => {
                                if d.events.send(BackendEvent::Message(m)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(Incoming::UnknownType(kind)) => {
                                tracing::warn!(%kind, "MQTT message of an unknown type; skipped");
                            }
                            Err(e) => tracing::warn!(error = %e, "malformed MQTT message; skipped"),
                        }
                    }
                    Delivery::Closed(why) => break why,
                },
                _ = tick.tick() => d.heartbeat(&mut session),
                changed = d.status.changed(), if status_alive => match changed {
                    Ok(()) => {
                        d.heartbeat(&mut session);
                        tick.reset();
                    }
                    Err(_) => status_alive = false,
                },
            }
        };
        // Announced here; a failing reconnect says nothing more until it is back.
        announced_down = true;
        if d.events
            .send(BackendEvent::Disconnected(lost.clone()))
            .await
            .is_err()
        {
            return;
        }
        tracing::warn!(error = %lost, "MQTT connection lost");
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay(None)) => {}
            _ = &mut stop => return,
        }
    }
}
