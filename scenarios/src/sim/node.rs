//! One launcher in sim mode: `launcher::app::run`'s wiring (Docker, reap, register,
//! push channel, supervisor) over the in-memory adapters, as a task on the sim runtime.
//! A crash aborts the task: every future of the launcher is dropped at once (its runs'
//! tasks with the supervisor's join sets, its MQTT session without a goodbye, so the
//! Last Will fires; containers stay behind).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_docker::FakeDockerHandle;
use launcher::app::{reap_then_register, register_request, WorkerFile};
use launcher::backend::https::retry_transient;
use launcher::backoff::Backoff;
use launcher::config::LauncherConfig;
use launcher::container_spec::Ids;
use launcher::error::{Error, Fatal};
use launcher::lifecycle::{ExitOutcome, Signal};
use launcher::metrics::Metrics;
use launcher::ports::{ContainerRuntime, RuntimeError};
use launcher::supervisor::{status_channel, Ports, Supervisor};
use tokio::sync::mpsc;

use super::backend::SimBackend;
use super::broker::{PushChannel, PushConfig};
use super::store::{DiskFull, MemoryBinaryStore, MemoryWorkspaces};
use super::Net;
use crate::launcher_node::NodeExit;

/// As `app::run`: attempts at registering, at reaching Docker; the least heartbeat.
const REGISTER_ATTEMPTS: u32 = 30;
const DOCKER_CONNECT_ATTEMPTS: u32 = 10;
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

/// What survives a launcher's restart (its "disk"): worker.json, the workspaces, and
/// whether it is full; also each start's metrics, for the oracles.
#[derive(Clone, Default)]
pub struct Disk {
    pub worker_file: Arc<Mutex<Option<WorkerFile>>>,
    pub workspaces: MemoryWorkspaces,
    pub full: DiskFull,
    pub starts: Arc<Mutex<Vec<StartMetrics>>>,
}

/// One start's metrics and the most output one of its runs' outboxes may hold.
#[derive(Clone)]
pub struct StartMetrics {
    pub metrics: Metrics,
    pub run_queued_limit: usize,
}

/// Everything a sim launcher is wired to.
pub struct Wiring {
    pub name: String,
    pub net: Net,
    pub docker_name: String,
    pub docker: Arc<FakeDockerHandle>,
    pub disk: Disk,
}

pub struct SimNode {
    signals: mpsc::Sender<Signal>,
    task: Option<tokio::task::JoinHandle<NodeExit>>,
    exit: Option<NodeExit>,
}

impl SimNode {
    pub fn start(config: LauncherConfig, wiring: Wiring) -> SimNode {
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(async move {
            match run(config, wiring, rx).await {
                Ok(outcome) => NodeExit::Exited {
                    code: outcome.exit_code(),
                    error: None,
                },
                Err(e) => NodeExit::Exited {
                    code: 1,
                    error: Some(e.to_string()),
                },
            }
        });
        SimNode {
            signals: tx,
            task: Some(task),
            exit: None,
        }
    }

    pub async fn signal(&self) {
        let _ = self.signals.send(Signal::Terminate).await;
    }

    pub async fn crash(&mut self) -> NodeExit {
        if let Some(t) = self.task.take() {
            t.abort();
            let exit = match t.await {
                Ok(exit) => exit,
                Err(_) => NodeExit::Crashed,
            };
            self.exit = Some(exit);
        }
        self.exit.clone().unwrap_or(NodeExit::Crashed)
    }

    /// Waits for the launcher to end (idempotent; safe to drop half-way).
    pub async fn wait(&mut self) -> NodeExit {
        if let Some(exit) = &self.exit {
            return exit.clone();
        }
        let exit = match self.task.as_mut() {
            Some(t) => t.await.unwrap_or(NodeExit::Exited {
                code: 101,
                error: Some("the launcher task panicked".into()),
            }),
            None => NodeExit::Crashed,
        };
        self.task = None;
        self.exit = Some(exit.clone());
        exit
    }

    pub fn exited(&self) -> Option<&NodeExit> {
        self.exit.as_ref()
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn connect_docker(w: &Wiring, seed: u64) -> Result<launcher::docker::BollardRuntime, Error> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(16), seed);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match super::docker::connect(&w.docker_name, w.docker.clone()).await {
            Ok(rt) => return Ok(rt),
            Err(RuntimeError::Unavailable(m)) if attempt < DOCKER_CONNECT_ATTEMPTS => {
                let delay = backoff.next_delay(None);
                tracing::warn!(attempt, error = %m, ?delay, "Docker daemon not reachable yet");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(Error::Docker(e)),
        }
    }
}

/// `launcher::app::run` over the in-memory adapters (same order, same retries).
async fn run(
    config: LauncherConfig,
    w: Wiring,
    signals: mpsc::Receiver<Signal>,
) -> Result<ExitOutcome, Error> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let settings = config.settings.clone();
    let seed = settings.seed;
    let runtime = connect_docker(&w, seed).await?;
    let runtime = runtime.with_docker_config_dir(settings.docker_config_dir.clone());
    let arch = runtime.architecture().await?;
    tracing::info!(%arch, docker_api = runtime.api_version(), "Docker daemon ready");

    let leaf = config
        .credentials
        .certificate_chain
        .first()
        .map(|c| fake_backend::pki::fingerprint(c.as_ref()))
        .unwrap_or_default();
    let backend = SimBackend::new(w.net.clone(), leaf.clone(), &w.name);
    let previous = w
        .disk
        .worker_file
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let request = register_request(arch, &settings, previous.as_ref());
    let mut backoff = Backoff::standard(seed.wrapping_add(1));
    let register = retry_transient(&mut backoff, REGISTER_ATTEMPTS, || {
        backend.register(&request)
    });
    let (reg, reaped) = reap_then_register(&runtime, previous.as_ref(), || async move {
        register.await.map_err(Error::from)
    })
    .await?;
    backend.set_worker_ulid(&reg.worker_ulid);
    let reaped_workspaces = w.disk.workspaces.reap();
    if reaped_workspaces > 0 {
        tracing::warn!(
            count = reaped_workspaces,
            "removed run workspaces left by an earlier launcher"
        );
    }
    tracing::info!(worker_ulid = %reg.worker_ulid, pool_ulid = %reg.pool_ulid,
        held_runs = reg.held_runs.len(), capacity = settings.capacity, "registered");
    *w.disk.worker_file.lock().unwrap_or_else(|p| p.into_inner()) = Some(WorkerFile {
        worker_ulid: reg.worker_ulid.clone(),
        pool_ulid: reg.pool_ulid.clone(),
    });

    let ids = Ids {
        worker_ulid: reg.worker_ulid.clone(),
        pool_ulid: reg.pool_ulid.clone(),
        launcher_id: format!("sim-{}-{seed:x}", w.name),
    };
    let store = MemoryBinaryStore::new(backend.clone(), w.disk.full.clone());
    let (status_tx, status_rx) = status_channel(settings.capacity);
    let heartbeat = Duration::from_millis(reg.heartbeat_interval_ms).max(MIN_HEARTBEAT);
    let (push, events) = PushChannel::start(
        PushConfig {
            net: w.net.clone(),
            fingerprint: leaf,
            namespace: config.credentials.token.namespace().to_string(),
            pool_ulid: reg.pool_ulid.clone(),
            worker_ulid: reg.worker_ulid.clone(),
            heartbeat,
            seed: seed.wrapping_add(2),
        },
        status_rx,
    );
    let mut push_fatal = push.fatal();
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(runtime);
    let metrics = Metrics::new();
    w.disk
        .starts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(StartMetrics {
            metrics: metrics.clone(),
            run_queued_limit: launcher::outbox::run_queued_limit(settings.output_buffer_bytes),
        });
    let supervisor = Supervisor::new(
        settings,
        ids,
        arch,
        Ports {
            backend,
            runtime,
            store: Arc::new(store),
            workspaces: Arc::new(w.disk.workspaces.clone()),
        },
        events,
        status_tx,
    )
    .with_held_runs(reg.held_runs.into_iter().chain(reaped).collect())
    .with_metrics(metrics);

    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel();
    let serving = supervisor.with_fatal(fatal_rx).run(signals);
    tokio::pin!(serving);
    // The guard `wait_for` returns is not Send: clone the error out before any await.
    let fatal = async {
        push_fatal
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|e| e.clone())
    };
    let result = tokio::select! {
        r = &mut serving => r,
        e = fatal => {
            let _ = fatal_tx.send(e.map(Fatal::from).unwrap_or(Fatal::EventsClosed));
            serving.await
        }
    };
    match &result {
        Ok(outcome) if outcome.graceful() => push.shutdown().await,
        _ => drop(push),
    }
    result
}
