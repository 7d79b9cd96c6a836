//! Starting, using and stopping a fake backend in-process: [`FakeBackend::start`] gives a
//! [`BackendHandle`] that tests and the scenario engine drive directly (the admin API and
//! CLI call the same methods).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use protocol::api::WorkerBinary;
use protocol::token::{ApiConfig, BrokerConfig, Token};
use protocol::{Arch, RunState};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::binaries::BinaryContent;
use crate::broker::Broker;
use crate::clock::{Clock, BASE_MS};
use crate::core::{Core, Parts, PoolKeySource, RunView, Timing, WorkerCommand, WorkerView};
use crate::error::{BackendError, Result};
use crate::events::{kinds, Event, EventLog, NewEvent};
use crate::external;
use crate::faults::Fault;
use crate::outbox::{self, Bus};
use crate::pki::{CertifiedKey, Pki};
use crate::store::{Endpoints, Store};
use crate::ScheduleRun;

/// Which MQTT broker the backend uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerMode {
    /// The built-in broker, listening on `BackendConfig::mqtt_bind`.
    Embedded,
    /// An external broker (`mqtts://host:port`) such as Mosquitto; the backend connects
    /// to it as a client with its own certificate (CN `fake-backend`), signed by the CA.
    External(String),
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub data_dir: PathBuf,
    pub mqtt_bind: SocketAddr,
    pub https_bind: SocketAddr,
    pub admin_bind: SocketAddr,
    /// A claim's lease; an unclaimed `run.scheduled` is also re-sent after this long.
    pub lease_ttl: Duration,
    /// Told to workers at registration; a worker silent for 3 intervals goes offline.
    pub heartbeat_interval: Duration,
    /// Seeds every ID (ULIDs) the backend makes.
    pub seed: u64,
    pub broker: BrokerMode,
    /// RSA size of keys made by `create_pool_generated` (4096 like Spacelift; tests may
    /// use 2048 to save time).
    pub pool_key_bits: u32,
    /// Run the admin HTTP API (and write `admin.addr`).
    pub admin: bool,
}

impl BackendConfig {
    /// Loopback, ephemeral ports, 30s leases, 5s heartbeats, seed 0, embedded broker.
    pub fn new(data_dir: impl Into<PathBuf>) -> BackendConfig {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        BackendConfig {
            data_dir: data_dir.into(),
            mqtt_bind: any,
            https_bind: any,
            admin_bind: any,
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            seed: 0,
            broker: BrokerMode::Embedded,
            pool_key_bits: 4096,
            admin: true,
        }
    }
}

/// A pool's credentials as `pool create` hands them out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolCredentials {
    pub pool_ulid: String,
    /// `SPACELIFT_TOKEN`.
    pub token: String,
    /// `SPACELIFT_POOL_PRIVATE_KEY` (base64 of the PEM), when the backend made the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_b64: Option<String>,
    pub certificate_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
}

pub struct FakeBackend;

pub(crate) struct Inner {
    pub core: Arc<Core>,
    pub broker: Option<Arc<Broker>>,
    pub config: BackendConfig,
    pub endpoints: Endpoints,
    pub mqtt_addr: Option<SocketAddr>,
    pub https_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Creates a pool in a data dir without a running backend (the CLI's `pool create` when
/// no `serve` is up). The token names the endpoints the last `serve` recorded, or the
/// CLI defaults.
pub fn create_pool_offline(
    data_dir: &Path,
    csr_pem: Option<&str>,
    key_bits: u32,
) -> Result<PoolCredentials> {
    let core = offline_core(data_dir)?;
    let source = match csr_pem {
        Some(csr) => PoolKeySource::Csr(csr),
        None => PoolKeySource::Generate { bits: key_bits },
    };
    let (pool, key) = core.add_pool(source)?;
    offline_credentials(&core, &pool, key)
}

/// `pool reset` without a running backend.
pub fn reset_pool_offline(
    data_dir: &Path,
    pool: &str,
    csr_pem: Option<&str>,
    key_bits: u32,
) -> Result<PoolCredentials> {
    let core = offline_core(data_dir)?;
    let source = match csr_pem {
        Some(csr) => PoolKeySource::Csr(csr),
        None => PoolKeySource::Generate { bits: key_bits },
    };
    let (key, _) = core.reset_pool(pool, source)?;
    offline_credentials(&core, pool, key)
}

/// Endpoints a token names when no backend has run in the data dir yet.
pub const DEFAULT_MQTT_BIND: &str = "127.0.0.1:1984";
pub const DEFAULT_HTTPS_BIND: &str = "127.0.0.1:8443";

fn offline_core(data_dir: &Path) -> Result<Core> {
    crate::tls::install_default_provider();
    let store = Store::open(data_dir)?;
    let pki = Pki::load_or_create(data_dir)?;
    let events = EventLog::open(data_dir)?;
    let mut state = store.load()?;
    // Offline use is not a backend start.
    state.generation = state.generation.wrapping_add(1000);
    let clock = Clock::new(BASE_MS.max(events.last_at_ms() + 1));
    let (tx, _rx) = mpsc::unbounded_channel();
    let timing = Timing {
        lease_ttl: Duration::from_secs(30),
        heartbeat_interval: Duration::from_secs(5),
        offer_ttl: Duration::from_secs(30),
    };
    let parts = Parts {
        timing,
        clock,
        events,
        store,
        pki,
        seed: 0,
    };
    Ok(Core::new(parts, state, tx))
}

fn offline_credentials(core: &Core, pool: &str, key: Option<String>) -> Result<PoolCredentials> {
    let (cert, endpoints) = core
        .read(|s| {
            s.pools
                .get(pool)
                .map(|p| (p.cert_pem.clone(), s.endpoints.clone()))
        })
        .ok_or_else(|| BackendError::NotFound(format!("pool {pool}")))?;
    let endpoints = endpoints.unwrap_or_else(|| Endpoints {
        broker: format!("mqtts://{DEFAULT_MQTT_BIND}"),
        api: format!("https://{DEFAULT_HTTPS_BIND}"),
    });
    Ok(PoolCredentials {
        pool_ulid: pool.to_string(),
        token: make_token(&endpoints, pool, cert.clone(), core.pki.ca_cert_pem()).encode(),
        private_key_b64: key.as_deref().map(b64),
        certificate_pem: cert,
        private_key_pem: key,
    })
}

/// A running fake backend. Cheap to clone; [`BackendHandle::shutdown`] stops it.
#[derive(Clone)]
pub struct BackendHandle {
    pub(crate) inner: Arc<Inner>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BackendError::Bind { what, addr, source })
}

impl FakeBackend {
    /// Starts (or restarts, from the same data dir) a backend.
    pub async fn start(config: BackendConfig) -> Result<BackendHandle> {
        crate::tls::install_default_provider();
        let dir = &config.data_dir;
        let store = Store::open(dir)?;
        let pki = Pki::load_or_create(dir)?;
        let events = EventLog::open(dir)?;
        let state = store.load()?;
        let clock = Clock::new(BASE_MS.max(events.last_at_ms() + 1));
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let timing = Timing {
            lease_ttl: config.lease_ttl,
            heartbeat_interval: config.heartbeat_interval,
            offer_ttl: config.lease_ttl,
        };
        let parts = Parts {
            timing,
            clock,
            events,
            store,
            pki,
            seed: config.seed,
        };
        let core = Arc::new(Core::new(parts, state, out_tx));
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        // Tokens already handed out name the last endpoints: a restart asked to pick any
        // port (port 0) takes the recorded one again, so those tokens keep working.
        let recorded = core.read(|s| s.endpoints.clone());
        let https_bind = reuse_port(config.https_bind, recorded.as_ref().map(|e| e.api.as_str()));
        let mqtt_bind = reuse_port(
            config.mqtt_bind,
            recorded.as_ref().map(|e| e.broker.as_str()),
        );

        let server = core.pki.generate_server(&[])?;
        let https_listener = bind("HTTPS API", https_bind).await?;
        let https_addr = https_listener
            .local_addr()
            .map_err(|e| BackendError::io("local address of", dir, e))?;
        let https_acceptor = TlsAcceptor::from(crate::tls::server_config(
            &core.pki,
            &server,
            &[b"http/1.1"],
        )?);
        tasks.push(tokio::spawn(crate::api::serve(
            core.clone(),
            https_listener,
            https_acceptor,
            shutdown.clone(),
        )));

        let (in_tx, mut in_rx) = mpsc::unbounded_channel::<(String, Bytes)>();
        let (bus, broker, mqtt_addr, broker_endpoint) = match &config.broker {
            BrokerMode::Embedded => {
                let listener = bind("MQTT broker", mqtt_bind).await?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| BackendError::io("local address of", dir, e))?;
                let acceptor =
                    TlsAcceptor::from(crate::tls::server_config(&core.pki, &server, &[])?);
                let broker = Broker::new(core.clone(), acceptor, in_tx);
                tasks.push(tokio::spawn(
                    broker.clone().serve(listener, shutdown.clone()),
                ));
                (
                    Bus::Embedded(broker.clone()),
                    Some(broker),
                    Some(addr),
                    format!("mqtts://{addr}"),
                )
            }
            BrokerMode::External(url) => {
                let identity = core.pki.generate_ecdsa_client("fake-backend")?;
                let since = core.events.last_seq();
                let client_id = format!("fake-backend-{}", core.new_id());
                let ext = external::connect(
                    core.clone(),
                    url,
                    &identity,
                    client_id,
                    in_tx,
                    shutdown.clone(),
                )?;
                // Worker messages published before the backend subscribes would be lost.
                let subscribed = tokio::time::timeout(
                    Duration::from_secs(15),
                    core.events
                        .wait_for_since(since, |e| e.kind == kinds::MQTT_SUBSCRIBED),
                )
                .await;
                if subscribed.is_err() {
                    shutdown.cancel();
                    return Err(BackendError::Broker(format!(
                        "could not connect and subscribe to {url} within 15s (see events)"
                    )));
                }
                (Bus::External(ext), None, None, url.clone())
            }
        };
        let endpoints = Endpoints {
            broker: broker_endpoint,
            api: format!("https://{https_addr}"),
        };
        set_endpoints(&core, &endpoints);

        // Inbound: worker publishes (and wills) into the core.
        {
            let core = core.clone();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        m = in_rx.recv() => match m {
                            Some((topic, payload)) => core.on_worker_publish(&topic, &payload),
                            None => break,
                        },
                    }
                }
            }));
        }
        tasks.push(tokio::spawn(outbox::run(
            core.clone(),
            bus,
            out_rx,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(crate::core::run_timers(
            core.clone(),
            shutdown.clone(),
        )));

        let admin_listener = match config.admin {
            true => Some(bind("admin API", config.admin_bind).await?),
            false => None,
        };
        let admin_addr = match &admin_listener {
            Some(l) => {
                let addr = l
                    .local_addr()
                    .map_err(|e| BackendError::io("local address of", dir, e))?;
                crate::store::write_atomic(&dir.join("admin.addr"), addr.to_string().as_bytes())?;
                Some(addr)
            }
            None => None,
        };
        let handle = BackendHandle {
            inner: Arc::new(Inner {
                core: core.clone(),
                broker,
                config: config.clone(),
                endpoints: endpoints.clone(),
                mqtt_addr,
                https_addr,
                admin_addr,
                shutdown: shutdown.clone(),
                tasks: std::sync::Mutex::new(tasks),
            }),
        };
        if let Some(listener) = admin_listener {
            let task = tokio::spawn(crate::admin::serve(
                handle.clone(),
                listener,
                shutdown.clone(),
            ));
            handle.push_task(task);
        }
        core.record(NewEvent::new(kinds::BACKEND_STARTED).data(json!({
            "broker": endpoints.broker,
            "api": endpoints.api,
            "admin": handle.inner.admin_addr.map(|a| a.to_string()),
            "generation": core.read(|s| s.generation),
        })));
        Ok(handle)
    }
}

/// `bind` itself, unless it asks for any port (0) on the same IP a recorded endpoint
/// (`scheme://ip:port`) names: then that endpoint's port.
fn reuse_port(bind: SocketAddr, recorded: Option<&str>) -> SocketAddr {
    if bind.port() != 0 {
        return bind;
    }
    let recorded = recorded
        .and_then(|e| e.split_once("://"))
        .and_then(|(_, rest)| rest.trim_end_matches('/').parse::<SocketAddr>().ok());
    match recorded {
        Some(addr) if addr.ip() == bind.ip() => addr,
        _ => bind,
    }
}

fn set_endpoints(core: &Core, endpoints: &Endpoints) {
    core.mutate_inner(false, |tx| tx.set_endpoints(endpoints.clone()));
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl BackendHandle {
    fn push_task(&self, t: JoinHandle<()>) {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t);
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }
    pub fn config(&self) -> &BackendConfig {
        &self.inner.config
    }
    /// The embedded broker's address (None with an external broker).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.inner.mqtt_addr
    }
    pub fn https_addr(&self) -> SocketAddr {
        self.inner.https_addr
    }
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin_addr
    }
    /// `mqtts://host:port` as written into tokens.
    pub fn broker_endpoint(&self) -> &str {
        &self.inner.endpoints.broker
    }
    /// `https://host:port` as written into tokens.
    pub fn api_endpoint(&self) -> &str {
        &self.inner.endpoints.api
    }
    pub fn ca_cert_pem(&self) -> String {
        self.inner.core.pki.ca_cert_pem().to_string()
    }

    // ---- pools -------------------------------------------------------------------

    fn credentials(&self, pool: &str, key_pem: Option<String>) -> Result<PoolCredentials> {
        let cert = self
            .inner
            .core
            .read(|s| s.pools.get(pool).map(|p| p.cert_pem.clone()))
            .ok_or_else(|| BackendError::NotFound(format!("pool {pool}")))?;
        Ok(PoolCredentials {
            pool_ulid: pool.to_string(),
            token: self.token_for(pool)?,
            private_key_b64: key_pem.as_deref().map(b64),
            certificate_pem: cert,
            private_key_pem: key_pem,
        })
    }

    /// A pool from an operator's CSR (PEM), like Spacelift's UI: CSR in, token out.
    pub fn create_pool_from_csr(&self, csr_pem: &str) -> Result<PoolCredentials> {
        let (pool, _) = self.inner.core.add_pool(PoolKeySource::Csr(csr_pem))?;
        self.credentials(&pool, None)
    }

    /// A pool whose key the backend makes: full credentials.
    pub fn create_pool(&self) -> Result<PoolCredentials> {
        let bits = self.inner.config.pool_key_bits;
        let (pool, key) = self.inner.core.add_pool(PoolKeySource::Generate { bits })?;
        self.credentials(&pool, key)
    }

    /// `(SPACELIFT_TOKEN, SPACELIFT_POOL_PRIVATE_KEY)` for a new pool.
    pub fn create_pool_generated(&self) -> Result<(String, String)> {
        let c = self.create_pool()?;
        Ok((c.token, c.private_key_b64.unwrap_or_default()))
    }

    /// Issues a new certificate for `pool` (from `csr_pem`, or a new key when None); the
    /// old certificate is refused from now on and its MQTT connections are closed.
    pub fn reset_pool(&self, pool: &str, csr_pem: Option<&str>) -> Result<PoolCredentials> {
        let source = match csr_pem {
            Some(csr) => PoolKeySource::Csr(csr),
            None => PoolKeySource::Generate {
                bits: self.inner.config.pool_key_bits,
            },
        };
        let (key, old) = self.inner.core.reset_pool(pool, source)?;
        if let Some(b) = &self.inner.broker {
            b.kick_fingerprint(&old, "pool certificate reset");
        }
        self.credentials(pool, key)
    }

    /// The `SPACELIFT_TOKEN` for `pool` with this backend's endpoints.
    pub fn token_for(&self, pool: &str) -> Result<String> {
        let cert = self
            .inner
            .core
            .read(|s| s.pools.get(pool).map(|p| p.cert_pem.clone()))
            .ok_or_else(|| BackendError::NotFound(format!("pool {pool}")))?;
        Ok(make_token(
            &self.inner.endpoints,
            pool,
            cert,
            self.inner.core.pki.ca_cert_pem(),
        )
        .encode())
    }

    pub fn pools(&self) -> Vec<String> {
        self.inner.core.read(|s| s.pools.keys().cloned().collect())
    }

    // ---- runs --------------------------------------------------------------------

    /// Schedules a run; returns its ULID. It is offered to a free worker at once, or
    /// queued until one frees up.
    pub fn schedule_run(&self, req: ScheduleRun) -> Result<String> {
        self.inner.core.schedule_run(req)
    }

    /// Cancels a run; returns its state after the request (`canceled` at once when it was
    /// not claimed yet; otherwise the worker gets `run.cancel` and reports the outcome).
    pub fn cancel_run(&self, run: &str) -> Result<RunState> {
        self.inner.core.cancel_run(run, None)
    }

    /// [`BackendHandle::cancel_run`] with a reason passed on in `run.cancel`.
    pub fn cancel_run_with_reason(&self, run: &str, reason: &str) -> Result<RunState> {
        self.inner.core.cancel_run(run, Some(reason.to_string()))
    }

    pub fn run_state(&self, run: &str) -> Option<RunState> {
        self.inner.core.read(|s| s.runs.get(run).map(|r| r.state))
    }

    pub fn run(&self, run: &str) -> Option<RunView> {
        self.inner.core.run_view(run)
    }

    pub fn runs(&self) -> Vec<RunView> {
        self.inner
            .core
            .read(|s| s.runs.values().map(RunView::from).collect())
    }

    // ---- workers -----------------------------------------------------------------

    pub fn worker(&self, worker: &str) -> Option<WorkerView> {
        self.inner.core.worker_view(worker)
    }

    pub fn workers(&self) -> Vec<WorkerView> {
        self.inner
            .core
            .read(|s| s.workers.values().map(WorkerView::from).collect())
    }

    pub fn drain(&self, worker: &str) -> Result<()> {
        self.inner.core.worker_command(worker, WorkerCommand::Drain)
    }
    pub fn undrain(&self, worker: &str) -> Result<()> {
        self.inner
            .core
            .worker_command(worker, WorkerCommand::Undrain)
    }
    pub fn cycle(&self, worker: &str) -> Result<()> {
        self.inner.core.worker_command(worker, WorkerCommand::Cycle)
    }

    // ---- binaries ----------------------------------------------------------------

    /// Publishes a worker binary (version auto-numbered `0.1.N` when None) and announces
    /// it on every online worker's topic.
    pub fn publish_version(
        &self,
        arch: Arch,
        version: Option<&str>,
        content: BinaryContent,
    ) -> Result<WorkerBinary> {
        self.inner
            .core
            .publish_binary(arch, version.map(str::to_string), content)
    }

    pub fn versions(&self) -> Vec<WorkerBinary> {
        self.inner.core.read(|s| {
            s.binaries
                .iter()
                .map(|b| WorkerBinary {
                    version: b.version.clone(),
                    arch: b.arch,
                    size: b.size,
                    sha256: b.sha256.clone(),
                })
                .collect()
        })
    }

    // ---- faults ------------------------------------------------------------------

    /// Injects a fault (see [`Fault`]). Connection faults need the embedded broker.
    pub fn inject(&self, fault: Fault) -> Result<()> {
        let core = &self.inner.core;
        let embedded = || {
            self.inner.broker.as_ref().ok_or_else(|| {
                BackendError::Unsupported(format!("{fault:?} needs the embedded broker"))
            })
        };
        match &fault {
            Fault::DropConnection { worker, fire_will } => {
                let b = embedded()?;
                if !b.kick(worker, *fire_will, "connection dropped (fault)") {
                    return Err(BackendError::NotFound(format!(
                        "an MQTT connection for worker {worker}"
                    )));
                }
            }
            Fault::BrokerDown { for_ms } => embedded()?.down(for_ms.map(Duration::from_millis)),
            Fault::BrokerUp => embedded()?.up(),
            _ => core.faults.arm(&fault),
        }
        core.record(NewEvent::new(kinds::FAULT_INJECTED).data(json!({ "fault": fault })));
        Ok(())
    }

    pub fn clear_faults(&self) {
        self.inner.core.faults.clear();
        self.inner
            .core
            .record(NewEvent::new(kinds::FAULT_CLEARED).data(json!({ "fault": "all" })));
    }

    pub fn drop_connection(&self, worker: &str) -> Result<()> {
        self.inject(Fault::DropConnection {
            worker: worker.into(),
            fire_will: true,
        })
    }
    pub fn broker_down(&self, for_: Option<Duration>) -> Result<()> {
        self.inject(Fault::BrokerDown {
            for_ms: for_.map(|d| d.as_millis() as u64),
        })
    }
    pub fn broker_up(&self) -> Result<()> {
        self.inject(Fault::BrokerUp)
    }
    /// Whether `worker` has an MQTT connection to the embedded broker now.
    pub fn is_connected(&self, worker: &str) -> bool {
        self.inner
            .broker
            .as_ref()
            .is_some_and(|b| b.connected_pool(worker).is_some())
    }

    // ---- events ------------------------------------------------------------------

    pub fn events(&self) -> Vec<Event> {
        self.inner.core.events.since(0)
    }
    pub fn events_since(&self, seq: u64) -> Vec<Event> {
        self.inner.core.events.since(seq)
    }
    pub fn last_seq(&self) -> u64 {
        self.inner.core.events.last_seq()
    }
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.core.events.subscribe()
    }
    /// The first event (from the beginning) matching `pred`, waiting if needed.
    pub async fn wait_for(&self, pred: impl FnMut(&Event) -> bool) -> Event {
        self.inner.core.events.wait_for_since(0, pred).await
    }
    /// The first event after `seq` matching `pred`, waiting if needed.
    pub async fn wait_for_since(&self, seq: u64, pred: impl FnMut(&Event) -> bool) -> Event {
        self.inner.core.events.wait_for_since(seq, pred).await
    }

    // ---- PKI helpers for external brokers -----------------------------------------

    /// A server certificate for loopback (plus `names`), signed by the backend CA: for an
    /// external broker's TLS listener.
    pub fn issue_server_cert(&self, names: &[String]) -> Result<CertifiedKey> {
        self.inner.core.pki.generate_server(names)
    }

    /// Stops every listener and task; the data dir keeps everything for a restart.
    pub async fn shutdown(self) {
        self.inner
            .core
            .record(NewEvent::new(kinds::BACKEND_STOPPED));
        self.inner.shutdown.cancel();
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

pub(crate) fn make_token(endpoints: &Endpoints, pool: &str, cert: String, ca: &str) -> Token {
    Token {
        broker: BrokerConfig {
            endpoint: endpoints.broker.clone(),
        },
        api: ApiConfig {
            endpoint: endpoints.api.clone(),
        },
        pool_ulid: pool.to_string(),
        certificate: cert,
        ca_certificate: Some(ca.to_string()),
        topic_namespace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::reuse_port;

    #[test]
    fn any_port_takes_the_recorded_one_on_the_same_ip() {
        let any = "127.0.0.1:0".parse().unwrap();
        let fixed = "127.0.0.1:9000".parse().unwrap();
        let rec = Some("https://127.0.0.1:8443");
        assert_eq!(reuse_port(any, rec), "127.0.0.1:8443".parse().unwrap());
        assert_eq!(reuse_port(fixed, rec), fixed);
        assert_eq!(reuse_port(any, Some("mqtts://10.0.0.1:1984")), any);
        assert_eq!(reuse_port(any, None), any);
    }
}
