//! A test double of a worker: it speaks protocol v1 to the fake backend with a pool's
//! certificate (reqwest for HTTPS, rumqttc for MQTT), so backend tests need no launcher.
//! Shared with the root package's `tests/backend_*.rs` via `#[path]`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use fake_backend::{BackendConfig, BackendHandle, CertifiedKey, FakeBackend};
use protocol::api::{self, ErrorBody, RegisterRequest, RegisterResponse};
use protocol::messages::{Heartbeat, ServerMessage, WorkerMessage, WorkerState};
use protocol::token::Token;
use protocol::Arch;
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

/// Generous bound on waits for things that must happen (never a sleep).
pub const WAIT: Duration = Duration::from_secs(20);

pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub fn config(dir: &std::path::Path) -> BackendConfig {
    let mut c = BackendConfig::new(dir);
    c.pool_key_bits = 2048;
    c
}

pub async fn start(dir: &std::path::Path) -> BackendHandle {
    FakeBackend::start(config(dir))
        .await
        .expect("backend starts")
}

/// A pool's credentials as a launcher would hold them.
#[derive(Clone)]
pub struct Creds {
    pub token: Token,
    pub identity: CertifiedKey,
}

impl Creds {
    pub fn from_env_values(token_b64: &str, key_b64: &str) -> Creds {
        let token = Token::decode("SPACELIFT_TOKEN", token_b64).expect("token decodes");
        let key_pem =
            protocol::token::decode_private_key_pem("SPACELIFT_POOL_PRIVATE_KEY", key_b64)
                .expect("key decodes");
        Creds {
            identity: CertifiedKey {
                cert_pem: token.certificate.clone(),
                key_pem,
            },
            token,
        }
    }

    pub fn pool(&self) -> &str {
        &self.token.pool_ulid
    }

    pub fn ca(&self) -> &str {
        self.token
            .ca_certificate
            .as_deref()
            .expect("token has a CA")
    }

    pub fn http(&self) -> Api {
        Api::new(self.ca(), Some(&self.identity), &self.token.api.endpoint)
    }
}

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub async fn new_pool(b: &BackendHandle) -> Creds {
    let (t, k) = b.create_pool_generated().expect("pool");
    Creds::from_env_values(&t, &k)
}

#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
}

/// A non-2xx answer: status, protocol error body (if it parsed) and headers.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Option<ErrorBody>,
    pub retry_after: Option<String>,
}

impl Api {
    pub fn new(ca_pem: &str, identity: Option<&CertifiedKey>, base: &str) -> Api {
        fake_backend::tls::install_default_provider();
        let mut b = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
            .no_proxy();
        if let Some(id) = identity {
            let pem = format!("{}{}", id.cert_pem, id.key_pem);
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        Api {
            client: b.build().unwrap(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, Refused> {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request reaches the backend");
        Self::answer(resp).await
    }

    pub async fn get_json<R: DeserializeOwned>(&self, path: &str) -> Result<R, Refused> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        Self::answer(resp).await
    }

    async fn answer<R: DeserializeOwned>(resp: reqwest::Response) -> Result<R, Refused> {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.expect("body");
        if (200..300).contains(&status) {
            Ok(serde_json::from_slice(&bytes).expect("success body parses"))
        } else {
            Err(Refused {
                status,
                body: serde_json::from_slice(&bytes).ok(),
                retry_after,
            })
        }
    }

    pub async fn register(&self, capacity: u32, previous: Option<&str>) -> RegisterResponse {
        self.post(
            api::paths::REGISTER,
            &RegisterRequest {
                protocol_version: protocol::PROTOCOL_VERSION,
                arch: Arch::Amd64,
                launcher_version: "test-worker".into(),
                capacity,
                metadata: BTreeMap::from([("instance_id".to_string(), "i-test".to_string())]),
                previous_worker_ulid: previous.map(str::to_string),
            },
        )
        .await
        .expect("register")
    }

    pub async fn claim(&self, run: &str, worker: &str) -> Result<api::ClaimResponse, Refused> {
        self.post(
            &api::paths::claim(run),
            &api::ClaimRequest {
                worker_ulid: worker.into(),
            },
        )
        .await
    }

    pub async fn renew(&self, run: &str, worker: &str) -> Result<api::Lease, Refused> {
        self.post(
            &api::paths::lease(run),
            &api::LeaseRequest {
                worker_ulid: worker.into(),
            },
        )
        .await
    }

    pub async fn transition(
        &self,
        run: &str,
        worker: &str,
        state: protocol::RunState,
        exit_code: Option<i64>,
    ) -> Result<api::TransitionResponse, Refused> {
        self.post(
            &api::paths::state(run),
            &api::TransitionRequest {
                worker_ulid: worker.into(),
                state,
                exit_code,
                reason: None,
                worker_version: Some("0.1.1".into()),
            },
        )
        .await
    }
}

/// An MQTT connection acting as a worker: client id = worker ULID, subscribed to its
/// readonly topic, Last Will `worker.gone crashed=true` on its writeonly topic.
pub struct Mqtt {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<MqttIn>,
    pub task: tokio::task::JoinHandle<()>,
    pub worker: String,
    pub pool: String,
    hb_seq: u64,
}

#[derive(Debug, Clone)]
pub enum MqttIn {
    Message(ServerMessage),
    Raw(String, Vec<u8>),
    SubAck(Vec<rumqttc::SubscribeReasonCode>),
    Disconnected(String),
}

pub fn mqtt_options(creds: &Creds, worker: &str, will: bool) -> MqttOptions {
    let (host, port) = creds.token.broker_host_port().expect("broker endpoint");
    let mut o = MqttOptions::new(worker, host, port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(true);
    if will {
        let gone = WorkerMessage::Gone {
            worker_ulid: worker.into(),
            crashed: true,
        };
        o.set_last_will(LastWill::new(
            protocol::topics::writeonly("spacelift", creds.pool(), worker),
            gone.to_json(),
            QoS::AtLeastOnce,
            false,
        ));
    }
    let tls = fake_backend::tls::client_config_pem(creds.ca(), &creds.identity).expect("tls");
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    o
}

impl Mqtt {
    /// Connects without subscribing; the first item is ConnAck's outcome via events.
    pub fn spawn(opts: MqttOptions, worker: &str, pool: &str) -> Mqtt {
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let item = match ServerMessage::parse(&p.payload) {
                            Ok(protocol::messages::Incoming::Message(m)) => MqttIn::Message(m),
                            _ => MqttIn::Raw(p.topic.clone(), p.payload.to_vec()),
                        };
                        let _ = tx.send(item);
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = tx.send(MqttIn::SubAck(s.return_codes));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(MqttIn::Disconnected(e.to_string()));
                        return; // no reconnects: tests see each disconnect
                    }
                }
            }
        });
        Mqtt {
            client,
            rx,
            task,
            worker: worker.into(),
            pool: pool.into(),
            hb_seq: 0,
        }
    }

    /// Connects as `worker`, subscribes to its readonly topic and waits for the SubAck.
    pub async fn connect(creds: &Creds, worker: &str) -> Mqtt {
        let mut m = Mqtt::spawn(mqtt_options(creds, worker, true), worker, creds.pool());
        m.client
            .subscribe(
                protocol::topics::readonly("spacelift", creds.pool(), worker),
                QoS::AtLeastOnce,
            )
            .await
            .unwrap();
        match within("suback", m.rx.recv()).await {
            Some(MqttIn::SubAck(codes)) => {
                assert!(
                    matches!(codes[0], rumqttc::SubscribeReasonCode::Success(_)),
                    "{codes:?}"
                )
            }
            other => panic!("expected SubAck, got {other:?}"),
        }
        m
    }

    pub async fn heartbeat(&mut self, state: WorkerState, runs: Vec<String>, capacity: u32) {
        self.hb_seq += 1;
        let hb = WorkerMessage::Heartbeat(Heartbeat {
            worker_ulid: self.worker.clone(),
            seq: self.hb_seq,
            state,
            runs,
            capacity,
            interruption: None,
        });
        self.publish_raw(&hb.to_json()).await;
    }

    pub async fn publish_raw(&self, payload: &[u8]) {
        self.client
            .publish(
                protocol::topics::writeonly("spacelift", &self.pool, &self.worker),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await
            .unwrap();
    }

    /// The next server message (skipping acks).
    pub async fn next_message(&mut self) -> ServerMessage {
        loop {
            match within("an MQTT message", self.rx.recv()).await {
                Some(MqttIn::Message(m)) => return m,
                Some(MqttIn::SubAck(_)) => continue,
                other => panic!("expected a server message, got {other:?}"),
            }
        }
    }

    /// Waits until the connection ends; returns the error text.
    pub async fn disconnected(&mut self) -> String {
        loop {
            match within("a disconnect", self.rx.recv()).await {
                Some(MqttIn::Disconnected(e)) => return e,
                None => return "channel closed".into(),
                Some(_) => continue,
            }
        }
    }

    /// Kills the connection without DISCONNECT, as a crash would.
    pub fn crash(self) {
        self.task.abort();
    }

    /// Graceful stop: `worker.gone crashed=false`, then DISCONNECT (no will).
    pub async fn stop(mut self) {
        let gone = WorkerMessage::Gone {
            worker_ulid: self.worker.clone(),
            crashed: false,
        };
        self.publish_raw(&gone.to_json()).await;
        self.client.disconnect().await.unwrap();
        let _ = self.disconnected().await;
    }
}

/// A worker that is registered, connected and online (its first heartbeat seen).
pub async fn online_worker(b: &BackendHandle, creds: &Creds, capacity: u32) -> (String, Mqtt) {
    let api = creds.http();
    let reg = api.register(capacity, None).await;
    let since = b.last_seq();
    let mut m = Mqtt::connect(creds, &reg.worker_ulid).await;
    m.heartbeat(WorkerState::Idle, vec![], capacity).await;
    let w = reg.worker_ulid.clone();
    within(
        "worker online",
        b.wait_for_since(since, |e| {
            e.kind == "worker.online" && e.worker.as_deref() == Some(w.as_str())
        }),
    )
    .await;
    (reg.worker_ulid, m)
}

pub fn run_scheduled(m: &ServerMessage) -> Option<&str> {
    match m {
        ServerMessage::RunScheduled { run_ulid, .. } => Some(run_ulid),
        _ => None,
    }
}
