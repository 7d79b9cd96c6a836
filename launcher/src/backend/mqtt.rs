//! The backend's push channel: MQTT 3.1.1 over TLS (rumqttc 0.25) with the pool certificate
//! as client certificate.
//!
//! - Client id = worker ULID; clean session; keep-alive; Last Will =
//!   `WorkerMessage::Gone { crashed: true }` on the writeonly topic (QoS 1).
//! - On every (re)connect: subscribe the readonly topic (QoS 1); once the SUBACK arrives,
//!   emit [`BackendEvent::Connected`] and publish a heartbeat.
//! - Heartbeats (`WorkerMessage::Heartbeat`, `seq` increasing from 0) every
//!   `heartbeat_interval` from the status watch's current value, and at once when it changes.
//! - Server messages become [`BackendEvent::Message`]; malformed payloads and unknown types
//!   are logged and counted ([`MqttCounters`], read through [`MqttSession::counters`]; they
//!   are not exported to `/metrics`), never fatal.
//! - Reconnects: we drive them ourselves (never rumqttc's immediate re-poll), with
//!   full-jitter backoff from 1 s doubling to 64 s ([`Backoff`], seeded), on tokio time.
//!   A lost connection emits one [`BackendEvent::Disconnected`].
//! - Fatal errors (CONNACK "not authorized"/"bad user name or password", a TLS alert about
//!   our certificate, a broker certificate we do not trust, a refused subscription): the
//!   session emits `Disconnected("fatal: ...")`, records the error (watched with
//!   [`MqttSession::fatal`]) and stops, which closes the event channel. `app` watches it
//!   and hands it to the supervisor as a [`Fatal`], which stops the runs and exits non-zero
//!   with its message. (`ports::BackendEvent` is left unchanged.)
//! - [`MqttSession::shutdown`] publishes `Gone { crashed: false }`, waits for its PUBACK
//!   (bounded), then sends DISCONNECT so the broker drops the Last Will.
//!   [`MqttSession::abort`] drops the connection without DISCONNECT (crash simulation): the
//!   broker publishes the Last Will.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::messages::{Heartbeat, Incoming, ServerMessage, WorkerMessage};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::config::LauncherConfig;
use crate::error::Fatal;
use crate::ports::{BackendEvent, WorkerStatus};
use crate::tls::find_rustls_error;

/// Why the MQTT session cannot (or can no longer) work. Retrying cannot help.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum MqttError {
    #[error("MQTT configuration: {0}")]
    Config(String),
    #[error(
        "the MQTT broker refused the pool's credentials: {0}; check that SPACELIFT_TOKEN and \
         SPACELIFT_POOL_PRIVATE_KEY are the pool's current ones (a pool reset revokes the old \
         certificate)"
    )]
    Unauthorized(String),
    #[error(
        "the MQTT broker's certificate is not trusted: {0}; check the token's ca_certificate \
         and ADDITIONAL_ROOT_CAS"
    )]
    UntrustedBroker(String),
}

/// Refused credentials keep their own kind (the operator is told what to check); anything
/// else ends the session with its message.
impl From<MqttError> for Fatal {
    fn from(e: MqttError) -> Fatal {
        match e {
            MqttError::Unauthorized(m) => Fatal::Unauthorized(m),
            other => Fatal::Mqtt(other.to_string()),
        }
    }
}

/// Connection parameters (from the token, or set by tests).
#[derive(Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub tls: Arc<rustls::ClientConfig>,
    /// Topic namespace (`spacelift`).
    pub namespace: String,
    pub keep_alive: Duration,
    /// TCP + TLS + CONNACK, per attempt (whole seconds, at least 1).
    pub connect_timeout: Duration,
    /// Reconnect backoff: full jitter from `reconnect_base` doubling to `reconnect_cap`.
    pub reconnect_base: Duration,
    pub reconnect_cap: Duration,
    /// How long `shutdown` waits for the broker to acknowledge `Gone`.
    pub shutdown_timeout: Duration,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("namespace", &self.namespace)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl MqttConfig {
    /// The broker from the token's `.broker.endpoint`, TLS from [`crate::tls::client_config`].
    pub fn from_launcher(cfg: &LauncherConfig) -> Result<MqttConfig, MqttError> {
        let (host, port) = cfg
            .credentials
            .token
            .broker_host_port()
            .map_err(|e| MqttError::Config(e.to_string()))?;
        let tls = crate::tls::client_config(cfg).map_err(|e| MqttError::Config(e.to_string()))?;
        Ok(MqttConfig::new(
            host,
            port,
            tls,
            cfg.credentials.token.namespace().to_string(),
        ))
    }

    /// Production defaults: keep-alive 30 s, connect timeout 10 s, backoff 1 s..64 s.
    pub fn new(
        host: String,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
        namespace: String,
    ) -> MqttConfig {
        MqttConfig {
            host,
            port,
            tls,
            namespace,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect_base: Duration::from_secs(1),
            reconnect_cap: Duration::from_secs(64),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// The session's own counters (monotonic), for tests and diagnostics: `/metrics` does not
/// export them.
#[derive(Debug, Default)]
pub struct MqttCounters {
    pub messages: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown_type: AtomicU64,
    pub heartbeats: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
}

enum Command {
    Shutdown(oneshot::Sender<()>),
}

/// A running MQTT session (its own task).
pub struct MqttSession {
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
    fatal: watch::Receiver<Option<MqttError>>,
    counters: Arc<MqttCounters>,
}

impl std::fmt::Debug for MqttSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSession").finish_non_exhaustive()
    }
}

impl MqttSession {
    /// Starts the session for `cfg`'s broker. Returns at once; connection progress arrives
    /// as events. Must be called inside a tokio runtime.
    pub fn start(
        cfg: &LauncherConfig,
        pool_ulid: &str,
        worker_ulid: &str,
        heartbeat_interval: Duration,
        status: watch::Receiver<WorkerStatus>,
        seed: u64,
    ) -> Result<(MqttSession, mpsc::Receiver<BackendEvent>), MqttError> {
        let config = MqttConfig::from_launcher(cfg)?;
        MqttSession::start_with(
            config,
            pool_ulid,
            worker_ulid,
            heartbeat_interval,
            status,
            seed,
        )
    }

    /// As [`MqttSession::start`], with explicit connection parameters.
    pub fn start_with(
        config: MqttConfig,
        pool_ulid: &str,
        worker_ulid: &str,
        heartbeat_interval: Duration,
        status: watch::Receiver<WorkerStatus>,
        seed: u64,
    ) -> Result<(MqttSession, mpsc::Receiver<BackendEvent>), MqttError> {
        if worker_ulid.is_empty() || pool_ulid.is_empty() {
            return Err(MqttError::Config(
                "pool and worker ULIDs must not be empty".into(),
            ));
        }
        if heartbeat_interval.is_zero() {
            return Err(MqttError::Config(
                "the heartbeat interval must be positive".into(),
            ));
        }
        let readonly = protocol::topics::readonly(&config.namespace, pool_ulid, worker_ulid);
        let writeonly = protocol::topics::writeonly(&config.namespace, pool_ulid, worker_ulid);
        let will = WorkerMessage::Gone {
            worker_ulid: worker_ulid.to_string(),
            crashed: true,
        }
        .to_json();

        let mut options = MqttOptions::new(worker_ulid, config.host.clone(), config.port);
        options
            .set_clean_session(true)
            .set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
            .set_last_will(LastWill::new(&writeonly, will, QoS::AtLeastOnce, false))
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                config.tls.clone(),
            )))
            .set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        eventloop.set_network_options(crate::net::mqtt_network_options(config.connect_timeout));

        let (events_tx, events_rx) = mpsc::channel(1024);
        let (commands, commands_rx) = mpsc::channel(1);
        let (fatal_tx, fatal) = watch::channel(None);
        let counters = Arc::new(MqttCounters::default());
        let driver = Driver {
            client,
            eventloop,
            events: events_tx,
            commands: commands_rx,
            fatal: fatal_tx,
            counters: counters.clone(),
            status,
            status_alive: true,
            heartbeat_interval,
            seq: 0,
            worker_ulid: worker_ulid.to_string(),
            readonly,
            writeonly,
            backoff: Backoff::new(config.reconnect_base, config.reconnect_cap, seed),
            shutdown_timeout: config.shutdown_timeout,
        };
        let task = tokio::spawn(driver.run());
        Ok((
            MqttSession {
                commands,
                task,
                fatal,
                counters,
            },
            events_rx,
        ))
    }

    /// Watch for the fatal error (changes once, from None to Some).
    pub fn fatal(&self) -> watch::Receiver<Option<MqttError>> {
        self.fatal.clone()
    }

    pub fn counters(&self) -> Arc<MqttCounters> {
        self.counters.clone()
    }

    /// Graceful stop: `Gone { crashed: false }`, then DISCONNECT (no Last Will).
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }

    /// Drops the connection without DISCONNECT: the broker publishes the Last Will.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

struct Driver {
    client: AsyncClient,
    eventloop: EventLoop,
    events: mpsc::Sender<BackendEvent>,
    commands: mpsc::Receiver<Command>,
    fatal: watch::Sender<Option<MqttError>>,
    counters: Arc<MqttCounters>,
    status: watch::Receiver<WorkerStatus>,
    status_alive: bool,
    heartbeat_interval: Duration,
    seq: u64,
    worker_ulid: String,
    readonly: String,
    writeonly: String,
    backoff: Backoff,
    shutdown_timeout: Duration,
}

impl Driver {
    async fn run(mut self) {
        let mut connected = false; // CONNACK received on the current connection
        let mut subscribed = false; // SUBACK received: Connected was emitted
        let mut announced_down = false;
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                cmd = self.commands.recv() => {
                    match cmd {
                        Some(Command::Shutdown(ack)) => {
                            if connected {
                                self.graceful().await;
                            }
                            let _ = ack.send(());
                        }
                        // The session handle was dropped: stop like abort.
                        None => {}
                    }
                    return;
                }
                polled = self.eventloop.poll() => match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        self.backoff.reset();
                        if let Err(e) = self.client.try_subscribe(&self.readonly, QoS::AtLeastOnce) {
                            tracing::warn!(error = %e, "cannot queue the MQTT subscription");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                            self.fail(MqttError::Unauthorized(format!(
                                "subscription to {} refused", self.readonly
                            ))).await;
                            return;
                        }
                        subscribed = true;
                        announced_down = false;
                        self.counters.connects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(topic = %self.readonly, "MQTT connected and subscribed");
                        if self.events.send(BackendEvent::Connected).await.is_err() {
                            return;
                        }
                        self.publish_heartbeat();
                        heartbeat.reset();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if !self.on_publish(&p.topic, &p.payload).await {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(fatal) = classify(&e) {
                            self.fail(fatal).await;
                            return;
                        }
                        let was_up = subscribed;
                        connected = false;
                        subscribed = false;
                        if was_up {
                            self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        if !announced_down {
                            announced_down = true;
                            if self.events.send(BackendEvent::Disconnected(e.to_string())).await.is_err() {
                                return;
                            }
                        }
                        let delay = self.backoff.next_delay(None);
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT connection failed");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            cmd = self.commands.recv() => {
                                if let Some(Command::Shutdown(ack)) = cmd {
                                    let _ = ack.send(());
                                }
                                return;
                            }
                        }
                    }
                },
                _ = heartbeat.tick(), if subscribed => self.publish_heartbeat(),
                changed = self.status.changed(), if subscribed && self.status_alive => {
                    match changed {
                        Ok(()) => {
                            self.publish_heartbeat();
                            heartbeat.reset();
                        }
                        Err(_) => self.status_alive = false,
                    }
                }
            }
        }
    }

    /// Handles a PUBLISH; false when the event receiver is gone.
    async fn on_publish(&mut self, topic: &str, payload: &[u8]) -> bool {
        if topic != self.readonly {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%topic, "MQTT message on an unexpected topic; ignored");
            return true;
        }
        match ServerMessage::parse(payload) {
            Ok(Incoming::Message(m)) => {
                self.counters.messages.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(message_id = %m.message_id(), "MQTT message");
                self.events.send(BackendEvent::Message(m)).await.is_ok()
            }
            Ok(Incoming::UnknownType(kind)) => {
                self.counters.unknown_type.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%kind, "MQTT message of an unknown type; skipped");
                true
            }
            Err(e) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, bytes = payload.len(), "malformed MQTT message; skipped");
                true
            }
        }
    }

    fn publish_heartbeat(&mut self) {
        let status = self.status.borrow_and_update().clone();
        let msg = WorkerMessage::Heartbeat(Heartbeat {
            worker_ulid: self.worker_ulid.clone(),
            seq: self.seq,
            state: status.state,
            runs: status.runs,
            capacity: status.capacity,
            interruption: status.interruption,
        });
        match self
            .client
            .try_publish(&self.writeonly, QoS::AtLeastOnce, false, msg.to_json())
        {
            Ok(()) => {
                self.seq += 1;
                self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat dropped (MQTT request queue full)"),
        }
    }

    async fn fail(&mut self, e: MqttError) {
        tracing::error!(error = %e, "MQTT session stopped");
        // Record it before telling: a reader of the event must find the error.
        let message = format!("fatal: {e}");
        let _ = self.fatal.send(Some(e));
        let _ = self.events.send(BackendEvent::Disconnected(message)).await;
    }

    /// `Gone { crashed: false }`, its PUBACK (bounded wait), then DISCONNECT.
    async fn graceful(&mut self) {
        // The last status (drained, an interruption notice) may not have gone out yet. Not
        // `Receiver::has_changed`: the supervisor has returned, so the sender is gone.
        if self.status.borrow().has_changed() {
            self.publish_heartbeat();
        }
        let gone = WorkerMessage::Gone {
            worker_ulid: self.worker_ulid.clone(),
            crashed: false,
        };
        let deadline = tokio::time::sleep(self.shutdown_timeout);
        tokio::pin!(deadline);
        if self
            .client
            .try_publish(&self.writeonly, QoS::AtLeastOnce, false, gone.to_json())
            .is_ok()
        {
            // Requests go out in order: the last outgoing PUBLISH is ours. Wait for it.
            let mut pkid = None;
            loop {
                tokio::select! {
                    _ = &mut deadline => {
                        tracing::warn!("no acknowledgement of worker.gone before the shutdown timeout");
                        break;
                    }
                    polled = self.eventloop.poll() => match polled {
                        Ok(Event::Outgoing(Outgoing::Publish(id))) => pkid = Some(id),
                        Ok(Event::Incoming(Packet::PubAck(ack))) if Some(ack.pkid) == pkid => break,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "MQTT connection lost during shutdown");
                            return;
                        }
                    }
                }
            }
        }
        if self.client.try_disconnect().is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                polled = self.eventloop.poll() => match polled {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Errors retrying cannot fix.
fn classify(e: &ConnectionError) -> Option<MqttError> {
    if let ConnectionError::ConnectionRefused(code) = e {
        return match code {
            ConnectReturnCode::NotAuthorized => {
                Some(MqttError::Unauthorized("CONNACK: not authorized".into()))
            }
            ConnectReturnCode::BadUserNamePassword => Some(MqttError::Unauthorized(
                "CONNACK: bad user name or password".into(),
            )),
            _ => None,
        };
    }
    let tls = find_rustls_error(e)?;
    match tls {
        rustls::Error::AlertReceived(alert) if crate::tls::rejects_client_certificate(*alert) => {
            Some(MqttError::Unauthorized(format!(
                "TLS alert {alert:?} about the pool certificate"
            )))
        }
        rustls::Error::InvalidCertificate(why) => {
            Some(MqttError::UntrustedBroker(format!("{why:?}")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::testing::TestPool;
    use crate::tls::{build_client_config, SystemRoots};
    use protocol::messages::WorkerState;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use tokio::io::AsyncBufReadExt;

    const POOL: &str = "01HZY0000000000000000POOL1";

    fn mosquitto_path() -> Option<&'static str> {
        [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    }

    /// A Mosquitto broker on 127.0.0.1 requiring client certificates from `pool`'s CA.
    struct Broker {
        child: tokio::process::Child,
        port: u16,
        dir: tempfile::TempDir,
        logs: mpsc::UnboundedReceiver<String>,
    }

    impl Broker {
        async fn start(pool: &TestPool, port: Option<u16>) -> Option<Broker> {
            use protocol::test_support::{require_component, INSTALL_DEPS};
            let bin = mosquitto_path();
            if !require_component(bin.is_some(), "mosquitto", INSTALL_DEPS) {
                return None;
            }
            let bin = bin?;
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = pool.pki.server_cert();
            std::fs::write(dir.path().join("ca.pem"), &pool.pki.ca_cert_pem).unwrap();
            std::fs::write(dir.path().join("server.pem"), cert).unwrap();
            std::fs::write(dir.path().join("server.key"), key).unwrap();
            let port = port.unwrap_or_else(|| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            });
            Broker::spawn(bin, dir, port).await
        }

        async fn spawn(bin: &str, dir: tempfile::TempDir, port: u16) -> Option<Broker> {
            let d = dir.path().display();
            std::fs::write(
                dir.path().join("mosquitto.conf"),
                format!(
                    "persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
                     listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
                     require_certificate true\nuse_identity_as_username true\n"
                ),
            )
            .unwrap();
            let mut child = tokio::process::Command::new(bin)
                .arg("-c")
                .arg(dir.path().join("mosquitto.conf"))
                .stderr(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let (tx, mut logs) = mpsc::unbounded_channel();
            let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
            tokio::spawn(async move {
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = tx.send(l);
                }
            });
            // Ready when it says so (event, not sleep).
            let mut seen = Vec::new();
            loop {
                match logs.recv().await {
                    Some(l) => {
                        let ready = l.contains(" running");
                        seen.push(l);
                        if ready {
                            break;
                        }
                    }
                    None => panic!("mosquitto exited: {seen:#?}"),
                }
            }
            Some(Broker {
                child,
                port,
                dir,
                logs,
            })
        }

        async fn restart(mut self) -> Broker {
            self.child.kill().await.unwrap();
            let _ = self.child.wait().await;
            Broker::spawn(mosquitto_path().unwrap(), self.dir, self.port)
                .await
                .unwrap()
        }

        async fn stop(mut self) -> (tempfile::TempDir, u16) {
            self.child.kill().await.unwrap();
            let _ = self.child.wait().await;
            while self.logs.try_recv().is_ok() {}
            (self.dir, self.port)
        }
    }

    fn config(pool: &TestPool, port: u16, server_ca_of: &TestPool) -> MqttConfig {
        let creds = pool.credentials(&format!("mqtts://127.0.0.1:{port}"), "https://127.0.0.1:1");
        let extra: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(server_ca_of.pki.ca_cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let tls = build_client_config(&creds, &extra, SystemRoots::Exclude).unwrap();
        let mut c = MqttConfig::new("127.0.0.1".into(), port, tls, "spacelift".into());
        c.reconnect_base = Duration::from_millis(20);
        c.reconnect_cap = Duration::from_millis(200);
        c.connect_timeout = Duration::from_secs(5);
        c
    }

    /// A second client (same pool certificate) that watches the writeonly topic and can
    /// publish to the readonly one.
    struct Observer {
        client: AsyncClient,
        seen: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
        _task: JoinHandle<()>,
    }

    impl Observer {
        async fn start(pool: &TestPool, port: u16, worker: &str) -> Observer {
            let cfg = config(pool, port, pool);
            let mut options = MqttOptions::new("observer", "127.0.0.1", port);
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                cfg.tls,
            )));
            let (client, mut eventloop) = AsyncClient::new(options, 16);
            client
                .subscribe(
                    protocol::topics::writeonly("spacelift", POOL, worker),
                    QoS::AtLeastOnce,
                )
                .await
                .unwrap();
            let (tx, seen) = mpsc::unbounded_channel();
            let (ready_tx, ready_rx) = oneshot::channel();
            let task = tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                        }
                        Ok(_) => {}
                        Err(e) => panic!("observer: {e}"),
                    }
                }
            });
            ready_rx.await.unwrap();
            Observer {
                client,
                seen,
                _task: task,
            }
        }

        async fn next(&mut self) -> WorkerMessage {
            let (_, payload) = self.seen.recv().await.unwrap();
            match WorkerMessage::parse(&payload).unwrap() {
                Incoming::Message(m) => m,
                other => panic!("{other:?}"),
            }
        }

        async fn next_heartbeat(&mut self) -> Heartbeat {
            match self.next().await {
                WorkerMessage::Heartbeat(h) => h,
                other => panic!("expected a heartbeat, got {other:?}"),
            }
        }

        async fn send_to_worker(&self, worker: &str, payload: Vec<u8>) {
            self.client
                .publish(
                    protocol::topics::readonly("spacelift", POOL, worker),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
    }

    /// A session for worker W1 whose status starts idle; the status sender comes back too.
    fn start_session(
        cfg: MqttConfig,
        heartbeat: Duration,
    ) -> (
        watch::Sender<WorkerStatus>,
        MqttSession,
        mpsc::Receiver<BackendEvent>,
    ) {
        let (status_tx, status_rx) = watch::channel(status(WorkerState::Idle, &[]));
        let (session, events) =
            MqttSession::start_with(cfg, POOL, "W1", heartbeat, status_rx, 7).unwrap();
        (status_tx, session, events)
    }

    fn status(state: WorkerState, runs: &[&str]) -> WorkerStatus {
        WorkerStatus {
            state,
            runs: runs.iter().map(|s| s.to_string()).collect(),
            capacity: 2,
            interruption: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connects_subscribes_receives_and_heartbeats() {
        let pool = TestPool::new();
        let Some(broker) = Broker::start(&pool, None).await else {
            return;
        };
        let mut obs = Observer::start(&pool, broker.port, "W1").await;
        let (status_tx, session, mut events) =
            start_session(config(&pool, broker.port, &pool), Duration::from_secs(3600));
        assert_eq!(events.recv().await.unwrap(), BackendEvent::Connected);
        let h = obs.next_heartbeat().await;
        assert_eq!((h.seq, h.state, h.capacity), (0, WorkerState::Idle, 2));
        assert_eq!(h.worker_ulid, "W1");

        // A status change is published at once.
        status_tx.send(status(WorkerState::Busy, &["R1"])).unwrap();
        let h = obs.next_heartbeat().await;
        assert_eq!(
            (h.seq, h.state, h.runs.clone()),
            (1, WorkerState::Busy, vec!["R1".to_string()])
        );

        // Garbage and unknown types are survived and counted; the next good one arrives.
        obs.send_to_worker("W1", b"\x00garbage".to_vec()).await;
        obs.send_to_worker(
            "W1",
            br#"{"type":"run.teleport","message_id":"m0"}"#.to_vec(),
        )
        .await;
        let msg = ServerMessage::RunScheduled {
            message_id: "m1".into(),
            run_ulid: "R2".into(),
        };
        obs.send_to_worker("W1", msg.to_json()).await;
        assert_eq!(events.recv().await.unwrap(), BackendEvent::Message(msg));
        let c = session.counters();
        assert_eq!(c.malformed.load(Ordering::Relaxed), 1);
        assert_eq!(c.unknown_type.load(Ordering::Relaxed), 1);
        assert_eq!(c.messages.load(Ordering::Relaxed), 1);
        session.shutdown().await;
        drop(broker);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeats_repeat_every_interval() {
        let pool = TestPool::new();
        let Some(broker) = Broker::start(&pool, None).await else {
            return;
        };
        let mut obs = Observer::start(&pool, broker.port, "W1").await;
        let (_status_tx, session, mut events) = start_session(
            config(&pool, broker.port, &pool),
            Duration::from_millis(100),
        );
        assert_eq!(events.recv().await.unwrap(), BackendEvent::Connected);
        let seqs: Vec<u64> = [
            obs.next_heartbeat().await.seq,
            obs.next_heartbeat().await.seq,
            obs.next_heartbeat().await.seq,
        ]
        .to_vec();
        assert_eq!(seqs, [0, 1, 2]);
        session.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_fires_the_last_will() {
        let pool = TestPool::new();
        let Some(broker) = Broker::start(&pool, None).await else {
            return;
        };
        let mut obs = Observer::start(&pool, broker.port, "W1").await;
        let (_status_tx, session, mut events) =
            start_session(config(&pool, broker.port, &pool), Duration::from_secs(3600));
        assert_eq!(events.recv().await.unwrap(), BackendEvent::Connected);
        obs.next_heartbeat().await;
        session.abort().await;
        assert_eq!(
            obs.next().await,
            WorkerMessage::Gone {
                worker_ulid: "W1".into(),
                crashed: true
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_says_gone_and_fires_no_will() {
        let pool = TestPool::new();
        let Some(broker) = Broker::start(&pool, None).await else {
            return;
        };
        let mut obs = Observer::start(&pool, broker.port, "W1").await;
        let (_status_tx, session, mut events) =
            start_session(config(&pool, broker.port, &pool), Duration::from_secs(3600));
        assert_eq!(events.recv().await.unwrap(), BackendEvent::Connected);
        obs.next_heartbeat().await;
        session.shutdown().await;
        assert_eq!(
            obs.next().await,
            WorkerMessage::Gone {
                worker_ulid: "W1".into(),
                crashed: false
            }
        );
        // The event channel closed with the session, without a fatal error.
        assert_eq!(events.recv().await, None);
        // A marker published after the shutdown must be the next thing the observer sees:
        // a Last Will (crashed: true) would come before it.
        let marker = WorkerMessage::Heartbeat(Heartbeat {
            worker_ulid: "marker".into(),
            seq: 99,
            state: WorkerState::Idle,
            runs: vec![],
            capacity: 0,
            interruption: None,
        });
        obs.client
            .publish(
                protocol::topics::writeonly("spacelift", POOL, "W1"),
                QoS::AtLeastOnce,
                false,
                marker.to_json(),
            )
            .await
            .unwrap();
        assert_eq!(obs.next().await, marker);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn foreign_certificate_is_fatal() {
        let pool = TestPool::new();
        let stranger = TestPool::new();
        let Some(broker) = Broker::start(&pool, None).await else {
            return;
        };
        // The stranger trusts the broker, but the broker does not trust the stranger.
        let (_status_tx, session, mut events) = start_session(
            config(&stranger, broker.port, &pool),
            Duration::from_secs(3600),
        );
        match events.recv().await.unwrap() {
            BackendEvent::Disconnected(m) => assert!(m.starts_with("fatal: "), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(events.recv().await, None);
        let e = session.fatal().borrow().clone().unwrap();
        assert!(matches!(e, MqttError::Unauthorized(_)), "{e:?}");
        assert!(e.to_string().contains("SPACELIFT_POOL_PRIVATE_KEY"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn untrusted_broker_is_fatal() {
        let pool = TestPool::new();
        let other = TestPool::new();
        let Some(broker) = Broker::start(&other, None).await else {
            return;
        };
        let (_status_tx, session, mut events) =
            start_session(config(&pool, broker.port, &pool), Duration::from_secs(3600));
        assert!(
            matches!(events.recv().await.unwrap(), BackendEvent::Disconnected(m) if m.starts_with("fatal: "))
        );
        let e = session.fatal().borrow().clone();
        assert!(matches!(e, Some(MqttError::UntrustedBroker(_))), "{e:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnects_and_resubscribes_after_the_broker_restarts() {
        let pool = TestPool::new();
        let Some(broker) = Broker::start(&pool, None).await else {
            return;
        };
        let (_status_tx, session, mut events) =
            start_session(config(&pool, broker.port, &pool), Duration::from_secs(3600));
        assert_eq!(events.recv().await.unwrap(), BackendEvent::Connected);
        let broker = broker.restart().await;
        assert!(matches!(
            events.recv().await.unwrap(),
            BackendEvent::Disconnected(_)
        ));
        assert_eq!(events.recv().await.unwrap(), BackendEvent::Connected);
        // Resubscribed: a message reaches the session.
        let obs = Observer::start(&pool, broker.port, "W1").await;
        let msg = ServerMessage::Drain {
            message_id: "d1".into(),
        };
        obs.send_to_worker("W1", msg.to_json()).await;
        assert_eq!(events.recv().await.unwrap(), BackendEvent::Message(msg));
        assert_eq!(session.counters().connects.load(Ordering::Relaxed), 2);
        session.shutdown().await;
        let _ = broker.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_broker_backs_off_and_shutdown_still_returns() {
        // Nothing listens on this port; the session keeps retrying on tokio time.
        let pool = TestPool::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (_status_tx, session, mut events) =
            start_session(config(&pool, port, &pool), Duration::from_secs(3600));
        assert!(matches!(
            events.recv().await.unwrap(),
            BackendEvent::Disconnected(_)
        ));
        assert!(session.fatal().borrow().is_none());
        session.shutdown().await;
        assert_eq!(events.recv().await, None);
    }
}
