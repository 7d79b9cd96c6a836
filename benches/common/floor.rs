//! The floor (docs/performance.md): the protocol's irreducible work for one run, made
//! directly with the launcher's own clients and nothing else: the offer's delivery over
//! the broker, one claim round trip, then inspect, create and start; for throughput also
//! the reports the state machine requires and the final one.

use std::path::Path;
use std::sync::Arc;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use fake_backend::{kinds, BackendHandle};
use fake_docker::FakeDockerHandle;
use launcher::backend::https::HttpsBackend;
use launcher::backend::mqtt::MqttSession;
use launcher::config::MapEnv;
use launcher::ports::{Backend, BackendEvent, ClaimOutcome, WorkerStatus};
use protocol::api::{RegisterRequest, TransitionRequest};
use protocol::messages::ServerMessage;
use protocol::{Arch, RunState};
use tokio::sync::{mpsc, watch};

/// The launcher's default runner image; present in fake-docker after a warm-up run.
pub const IMAGE: &str = "public.ecr.aws/spacelift/runner-terraform:latest";
/// Every container exits at once with 0.
pub const QUICK: &str = r#"{"duration_ms":0,"exit_code":0}"#;

/// A worker of its own pool, registered and subscribed: the launcher's HTTPS client and
/// MQTT session, and a bollard client of fake-docker.
pub struct FloorWorker {
    pub pool: String,
    pub api: Arc<HttpsBackend>,
    pub offers: mpsc::Receiver<BackendEvent>,
    pub docker: bollard::Docker,
    _session: MqttSession,
    _status: watch::Sender<WorkerStatus>,
}

impl FloorWorker {
    /// A new pool and a worker of `capacity` in it, online once this returns.
    pub async fn start(
        backend: &BackendHandle,
        docker: &FakeDockerHandle,
        dir: &Path,
        name: &str,
        capacity: u32,
    ) -> FloorWorker {
        let creds = backend.create_pool().expect("pool");
        let mut env = MapEnv::default();
        for (k, v) in
            crate::common::launcher_env(&creds, docker.docker_host(), &dir.join(name), capacity)
        {
            env.set(k, v);
        }
        let config = launcher::config::load(&env).expect("floor worker config");
        let tls = launcher::tls::client_config(&config).expect("client TLS");
        let api = HttpsBackend::new(&config, tls).expect("HTTPS client");
        let reg = api
            .register(&RegisterRequest {
                protocol_version: protocol::PROTOCOL_VERSION,
                arch: Arch::Amd64,
                launcher_version: "floor".to_string(),
                capacity,
                metadata: Default::default(),
                previous_worker_ulid: None,
            })
            .await
            .expect("register");
        api.set_worker_ulid(&reg.worker_ulid);
        let (status, status_rx) = launcher::status_channel(capacity);
        let since = backend.last_seq();
        let (session, offers) = MqttSession::start(
            &config,
            &reg.pool_ulid,
            &reg.worker_ulid,
            std::time::Duration::from_millis(reg.heartbeat_interval_ms),
            status_rx,
            0,
        )
        .expect("MQTT session");
        backend
            .wait_for_since(since, |e| {
                e.kind == kinds::WORKER_ONLINE && e.worker.as_deref() == Some(&reg.worker_ulid)
            })
            .await;
        let docker = bollard::Docker::connect_with_unix(
            docker.socket_path().to_str().expect("utf-8 socket path"),
            120,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("bollard");
        FloorWorker {
            pool: creds.pool_ulid,
            api: Arc::new(api),
            offers,
            docker,
            _session: session,
            _status: status,
        }
    }

    /// The next `run.scheduled` delivered over the broker: the run's ULID.
    pub async fn next_offer(&mut self) -> String {
        loop {
            match self.offers.recv().await.expect("MQTT session ended") {
                BackendEvent::Message(ServerMessage::RunScheduled { run_ulid, .. }) => {
                    return run_ulid
                }
                BackendEvent::Disconnected(why) => panic!("floor worker disconnected: {why}"),
                _ => {}
            }
        }
    }
}

/// The worker's handles a run needs, cheap to clone into concurrent tasks.
#[derive(Clone)]
pub struct FloorRun {
    pub api: Arc<HttpsBackend>,
    pub docker: bollard::Docker,
}

impl From<&FloorWorker> for FloorRun {
    fn from(w: &FloorWorker) -> FloorRun {
        FloorRun {
            api: w.api.clone(),
            docker: w.docker.clone(),
        }
    }
}

impl FloorRun {
    /// One claim round trip; the run must be granted.
    pub async fn claim(&self, run: &str) {
        match self.api.claim(run).await.expect("claim") {
            ClaimOutcome::Granted(_) => {}
            ClaimOutcome::Refused(why) | ClaimOutcome::NotNow(why) => {
                panic!("floor claim of {run} refused: {why}")
            }
        }
    }

    /// Inspect the image, create and start the container: its id.
    pub async fn start_container(&self, name: &str) -> String {
        self.docker
            .inspect_image(IMAGE)
            .await
            .expect("inspect image");
        let body = ContainerCreateBody {
            image: Some(IMAGE.to_string()),
            cmd: Some(vec!["true".to_string()]),
            env: Some(vec![format!("{}={QUICK}", fake_docker::BEHAVIOUR_ENV)]),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .expect("create");
        self.docker
            .start_container(&created.id, None)
            .await
            .expect("start");
        created.id
    }

    /// One state report, which the backend must accept.
    pub async fn report(&self, run: &str, state: RunState) {
        let req = TransitionRequest {
            worker_ulid: self.api.worker_ulid().expect("registered"),
            state,
            exit_code: (state == RunState::Finished).then_some(0),
            reason: None,
            worker_version: None,
        };
        self.api.transition(run, &req).await.expect("report");
    }

    /// The reports the state machine requires before the final one (`preparing`,
    /// `running`); they need not precede the start, so the floor sends them beside it.
    pub async fn report_started(&self, run: &str) {
        self.report(run, RunState::Preparing).await;
        self.report(run, RunState::Running).await;
    }

    /// Waits for the container to exit, sends the final report, removes the container.
    pub async fn finish(&self, run: &str, id: &str) {
        use futures_util::StreamExt;
        let mut wait = self.docker.wait_container(id, None);
        while let Some(r) = wait.next().await {
            r.expect("wait");
        }
        self.report(run, RunState::Finished).await;
        self.remove(id).await;
    }

    pub async fn remove(&self, id: &str) {
        let rm = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = self.docker.remove_container(id, Some(rm)).await;
    }
}
