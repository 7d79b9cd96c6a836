//! Starting, using and stopping a fake backend in-process: [`FakeBackend::start`] gives a
//! [`BackendHandle`] that tests and the scenario engine drive directly (the admin API and
//! CLI call the same methods).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use protocol::token::{ApiConfig, BrokerConfig, Token};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::clock::{Clock, BASE_MS};
use crate::error::{BackendError, Result};
use crate::events::{kinds, EventLog, NewEvent};
use crate::external;
use crate::outbox::{self, Bus};
use crate::pki::Pki;
use crate::rules::{Core, Parts, Timing};
use crate::store::{Endpoints, Store};

mod handle;
mod in_memory;
mod offline;

pub use handle::BackendHandle;
pub use offline::{create_pool_offline, reset_pool_offline, DEFAULT_HTTPS_BIND, DEFAULT_MQTT_BIND};

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
        let (core, out_rx) = open_core(&config)?;
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

        let (in_tx, in_rx) = mpsc::unbounded_channel::<(String, Bytes)>();
        let (bus, broker, mqtt_addr, broker_endpoint) = match &config.broker {
            BrokerMode::Embedded => {
                let listener = bind("MQTT broker", mqtt_bind).await?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| BackendError::io("local address of", dir, e))?;
                let acceptor =
                    TlsAcceptor::from(crate::tls::server_config(&core.pki, &server, &[])?);
                let broker = Broker::new(core.clone(), Some(acceptor), in_tx);
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

        spawn_rules_tasks(&core, bus, in_rx, out_rx, &shutdown, &mut tasks);

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

/// The rules over the data dir (state, events, PKI), and the receiver of their outgoing
/// messages.
fn open_core(
    config: &BackendConfig,
) -> Result<(Arc<Core>, mpsc::UnboundedReceiver<crate::rules::Outbound>)> {
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
    Ok((Arc::new(Core::new(parts, state, out_tx)), out_rx))
}

/// The tasks around the rules, whatever the transport: worker publishes (and wills) in,
/// the outbox out, and the timers (leases, offers, heartbeats).
fn spawn_rules_tasks(
    core: &Arc<Core>,
    bus: Bus,
    mut in_rx: mpsc::UnboundedReceiver<(String, Bytes)>,
    out_rx: mpsc::UnboundedReceiver<crate::rules::Outbound>,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) {
    {
        let core = core.clone();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    m = in_rx.recv() => match m {
                        Some((topic, payload)) => crate::broker::on_worker_publish(&core, &topic, &payload),
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
    tasks.push(tokio::spawn(crate::rules::run_timers(
        core.clone(),
        shutdown.clone(),
    )));
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
