//! Wiring: from a validated configuration to a serving launcher. Order matters: the
//! data directory's lock first (so no second launcher reaps this one's containers), then
//! Docker (the architecture we register comes from the daemon, not the host), then the
//! leftovers of the worker named in worker.json are removed, then registration (which
//! names that worker via `previous_worker_ulid`), then the push channel, then the
//! supervisor, which reports the leftovers' runs before taking runs.
//!
//! The scenario engine's launchers come through here too (over real sockets, against the
//! fakes); the core's unit tests build a [`Supervisor`] over in-memory adapters directly.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use protocol::api::{RegisterRequest, RegisterResponse};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::backend::https::{retry_transient, HttpsBackend};
use crate::backend::mqtt::{MqttError, MqttSession};
use crate::backoff::Backoff;
use crate::binaries::FsBinaryStore;
use crate::config::LauncherConfig;
use crate::container_spec::Ids;
use crate::data_dir::{DataDirError, DataDirLock};
use crate::docker::BollardRuntime;
use crate::error::{Error, Fatal};
use crate::lifecycle::{ExitOutcome, Signal};
use crate::metrics::Metrics;
use crate::ports::{ContainerRuntime, RuntimeError};
use crate::supervisor::{status_channel, Ports, Supervisor};
use crate::workspace::DirWorkspaces;

/// Attempts at reaching the Docker daemon at start (a DinD sidecar may still be booting).
const DOCKER_CONNECT_ATTEMPTS: u32 = 10;
/// Attempts at registering (Buildkite's agent tries 30 times).
const REGISTER_ATTEMPTS: u32 = 30;
/// The least heartbeat interval we accept from the backend.
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

/// What `<data_dir>/worker.json` remembers across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerFile {
    pub worker_ulid: String,
    pub pool_ulid: String,
}

/// Runs the launcher until it drains, cycles, is signalled out, or fails.
pub async fn run(
    config: LauncherConfig,
    signals: mpsc::Receiver<Signal>,
) -> Result<ExitOutcome, Error> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let settings = config.settings.clone();
    // Held until this function returns: one launcher per data directory.
    let _data_dir_lock = DataDirLock::acquire(&settings.data_dir).map_err(data_dir_error)?;
    if let Some(p) = &settings.init_policy {
        tracing::info!(policy = %p.path().display(), deny_rule = p.can_deny(), sample_rule = p.can_sample(),
            "initialization policy loaded; evaluated before every run");
        if !p.can_deny() {
            tracing::info!("the initialization policy has no deny rule: it allows every run");
        }
    }
    // Before anything else: a launcher that cannot give workspaces to the run user says so.
    let workspaces = DirWorkspaces::open(settings.data_dir.join("workspaces"), settings.run_user)
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);

    let runtime = connect_docker(config.docker_host.as_deref(), settings.seed).await?;
    let runtime = runtime.with_docker_config_dir(settings.docker_config_dir.clone());
    let arch = runtime.architecture().await?;
    tracing::info!(%arch, docker_api = runtime.api_version(), "Docker daemon ready");

    let tls = crate::tls::client_config(&config).map_err(|e| Error::Config(e.to_string()))?;
    let backend = Arc::new(HttpsBackend::new(&config, tls)?);
    let worker_file = settings.data_dir.join("worker.json");
    let previous = read_worker_file(&worker_file).await;
    let request = register_request(arch, &settings, previous.as_ref());
    let mut backoff = Backoff::standard(rng.random());
    let register = retry_transient(&mut backoff, REGISTER_ATTEMPTS, || {
        backend.register(&request)
    });
    let (reg, reaped) = reap_then_register(&runtime, previous.as_ref(), || async move {
        register.await.map_err(Error::from)
    })
    .await?;
    backend.set_worker_ulid(&reg.worker_ulid);
    // The previous process's containers are gone: so can their workspaces be.
    let reaped_workspaces = workspaces.reap();
    if reaped_workspaces > 0 {
        tracing::warn!(
            count = reaped_workspaces,
            "removed run workspaces left by an earlier launcher"
        );
    }
    tracing::info!(worker_ulid = %reg.worker_ulid, pool_ulid = %reg.pool_ulid,
        held_runs = reg.held_runs.len(), capacity = settings.capacity, "registered");
    write_worker_file(
        &worker_file,
        &WorkerFile {
            worker_ulid: reg.worker_ulid.clone(),
            pool_ulid: reg.pool_ulid.clone(),
        },
    )
    .await?;

    let ids = Ids {
        worker_ulid: reg.worker_ulid.clone(),
        pool_ulid: reg.pool_ulid.clone(),
        launcher_id: ulid::Ulid(rng.random()).to_string(),
    };
    let store = FsBinaryStore::new(
        settings.data_dir.join("binaries"),
        backend.clone(),
        settings.binary_cache_keep,
    );
    let metrics = Metrics::new();
    metrics.attach_binary_cache(store.counters());

    let (status_tx, status_rx) = status_channel(settings.capacity);
    let metrics_server = match settings.metrics_addr {
        Some(addr) => {
            let (bound, task) =
                crate::metrics::serve(addr, metrics.clone(), status_rx.clone()).await?;
            tracing::info!(%bound, "serving /metrics and /healthz");
            Some(task)
        }
        None => None,
    };

    let heartbeat = Duration::from_millis(reg.heartbeat_interval_ms).max(MIN_HEARTBEAT);
    let (mqtt, events) = MqttSession::start(
        &config,
        &reg.pool_ulid,
        &reg.worker_ulid,
        heartbeat,
        status_rx,
        rng.random(),
    )
    .map_err(mqtt_error)?;
    let mut mqtt_fatal = mqtt.fatal();

    let supervisor = Supervisor::new(
        settings,
        ids,
        arch,
        Ports {
            backend,
            runtime: Arc::new(runtime),
            store: Arc::new(store),
            workspaces: Arc::new(workspaces),
        },
        events,
        status_tx,
    )
    .with_held_runs(reg.held_runs.into_iter().chain(reaped).collect())
    .with_metrics(metrics);
    let (supervisor, watcher) = match &config.interruption {
        Some(watch) => {
            let (notices, task) = crate::interruption::spawn(watch)
                .map_err(|e| Error::Config(format!("interruption watch: {e}")))?;
            (supervisor.with_interruptions(notices), Some(task))
        }
        None => (supervisor, None),
    };

    // The MQTT session's fatal error goes to the supervisor rather than ending it here, so
    // that it stops and removes the runs' containers before returning the error.
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel();
    let serving = supervisor.with_fatal(fatal_rx).run(signals);
    tokio::pin!(serving);
    let result = tokio::select! {
        r = &mut serving => r,
        e = mqtt_fatal.wait_for(Option::is_some) => {
            let e = e.ok().and_then(|e| e.clone());
            let _ = fatal_tx.send(e.map(Fatal::from).unwrap_or(Fatal::EventsClosed));
            serving.await
        }
    };
    match &result {
        Ok(outcome) if outcome.graceful() => mqtt.shutdown().await,
        _ => mqtt.abort().await,
    }
    if let Some(task) = metrics_server {
        task.abort();
    }
    if let Some(task) = watcher {
        task.abort();
    }
    result
}

fn data_dir_error(e: DataDirError) -> Error {
    match e {
        DataDirError::Io { what, path, source } => Error::Io {
            what: format!("{what} {path}"),
            source,
        },
        in_use @ DataDirError::InUse { .. } => Error::Config(in_use.to_string()),
    }
}

/// What a launcher registers as: its daemon's arch, its capacity and metadata, and the
/// worker it was before a restart (whose identity and runs the backend may give back).
pub fn register_request(
    arch: protocol::Arch,
    settings: &crate::settings::Settings,
    previous: Option<&WorkerFile>,
) -> RegisterRequest {
    RegisterRequest {
        protocol_version: protocol::PROTOCOL_VERSION,
        arch,
        launcher_version: crate::VERSION.to_string(),
        capacity: settings.capacity,
        metadata: settings.metadata.clone(),
        previous_worker_ulid: previous.map(|p| p.worker_ulid.clone()),
    }
}

/// Removes what an earlier process of this worker left behind, then registers. The
/// earlier worker ULID is in worker.json, so its containers are found and removed before
/// the backend is asked anything: a registration that fails for good (credentials
/// refused) must not leave them running with nothing to ever remove them. Their runs can
/// only be reported once registered: they are returned, to be reported `launcher_restarted`
/// with the held runs (the supervisor reaps again under the registered ULID).
pub async fn reap_then_register<F, Fut>(
    runtime: &dyn ContainerRuntime,
    previous: Option<&WorkerFile>,
    register: F,
) -> Result<(RegisterResponse, Vec<String>), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<RegisterResponse, Error>>,
{
    let mut reaped = Vec::new();
    if let Some(p) = previous {
        reaped.extend(crate::reaper::reap(runtime, &p.worker_ulid, &[]).await);
    }
    let reg = register().await?;
    Ok((reg, reaped))
}

fn mqtt_error(e: MqttError) -> Error {
    Fatal::from(e).into()
}

async fn connect_docker(host: Option<&str>, seed: u64) -> Result<BollardRuntime, Error> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(16), seed);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match BollardRuntime::connect(host).await {
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

/// The previous worker identity, if a readable one is there (anything else: start fresh).
pub async fn read_worker_file(path: &Path) -> Option<WorkerFile> {
    let bytes = tokio::fs::read(path).await.ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable worker.json");
            None
        }
    }
}

/// Written atomically and durably ([`crate::data_dir::write_atomically`]), so a crash or
/// power cut leaves the old file or the new one, never half of one.
pub async fn write_worker_file(path: &Path, file: &WorkerFile) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(file).unwrap_or_default();
    let target = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::data_dir::write_atomically(&target, &json))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn worker_file_round_trips_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/worker.json");
        assert_eq!(read_worker_file(&path).await, None);
        let f = WorkerFile {
            worker_ulid: "W".into(),
            pool_ulid: "P".into(),
        };
        write_worker_file(&path, &f).await.unwrap();
        assert_eq!(read_worker_file(&path).await, Some(f));
        tokio::fs::write(&path, b"{not json").await.unwrap();
        assert_eq!(read_worker_file(&path).await, None);
    }

    /// A unique temporary name, so a file or symlink planted at a predictable one is
    /// neither followed nor clobbered, and nothing is left behind.
    #[cfg(unix)]
    #[tokio::test]
    async fn worker_file_write_ignores_planted_temp_symlink_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let path = data.join("worker.json");
        std::os::unix::fs::symlink(&victim, data.join("worker.json.tmp")).unwrap();
        let f = WorkerFile {
            worker_ulid: "W".into(),
            pool_ulid: "P".into(),
        };
        write_worker_file(&path, &f).await.unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(read_worker_file(&path).await, Some(f.clone()));
        std::fs::remove_file(data.join("worker.json.tmp")).unwrap();
        write_worker_file(&path, &f).await.unwrap();
        let names: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["worker.json"]);
    }

    /// A running container of the previous process of worker `W-OLD`, for run `run`.
    async fn leftover(rt: &dyn ContainerRuntime, run: &str) {
        use crate::container_spec::labels;
        let spec = crate::ports::ContainerSpec {
            name: format!("spacelift-{run}"),
            image: "img".into(),
            entrypoint: vec![],
            env: vec![],
            labels: [
                (labels::RUN_ID.to_string(), run.to_string()),
                (labels::WORKER.to_string(), "W-OLD".to_string()),
            ]
            .into(),
            binds: vec![],
            network: "none".into(),
            runtime: None,
            working_dir: "/".into(),
            user: String::new(),
            init: false,
        };
        let id = rt.create(&spec).await.unwrap();
        rt.start(&id).await.unwrap();
    }

    fn previous() -> WorkerFile {
        WorkerFile {
            worker_ulid: "W-OLD".into(),
            pool_ulid: "P".into(),
        }
    }

    /// Refused credentials at registration end the process; the containers an earlier
    /// process left must be gone by then, or nothing would ever remove them.
    #[tokio::test(start_paused = true)]
    async fn leftovers_are_removed_even_when_registration_fails() {
        let h = crate::testing::Harness::new();
        leftover(h.runtime.as_ref(), "R0").await;
        let r = reap_then_register(h.runtime.as_ref(), Some(&previous()), || async {
            Err(Error::Unauthorized("401".into()))
        })
        .await;
        assert!(matches!(r, Err(Error::Unauthorized(_))), "{r:?}");
        assert_eq!(h.runtime.live_containers(), 0, "{:?}", h.runtime.calls());
    }

    #[tokio::test(start_paused = true)]
    async fn leftovers_are_reaped_before_registering_and_their_runs_returned() {
        let h = crate::testing::Harness::new();
        leftover(h.runtime.as_ref(), "R0").await;
        let rt = h.runtime.clone();
        let (reg, reaped) = reap_then_register(h.runtime.as_ref(), Some(&previous()), || async {
            // Asked only once the leftovers are gone.
            assert_eq!(rt.live_containers(), 0);
            Ok(RegisterResponse {
                worker_ulid: "W-OLD".into(),
                pool_ulid: "P".into(),
                heartbeat_interval_ms: 1000,
                held_runs: vec!["R5".into()],
            })
        })
        .await
        .unwrap();
        assert_eq!(reg.held_runs, ["R5"]);
        assert_eq!(reaped, ["R0"]);
    }
}
