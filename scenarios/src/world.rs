//! The simulated world of one scenario execution: the fake backend, the Docker daemons and
//! the launchers, all in this process, all seeded from the scenario's seed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_backend::{BackendConfig, BackendHandle, BinaryContent, FakeBackend};
use fake_docker::{FakeDocker, FakeDockerHandle};
use launcher::config::MapEnv;

use std::sync::Arc;

use crate::error::ScenarioError;
use crate::launcher_node::{Captured, LauncherNode, NodeExit};
use crate::model::{
    BinaryKind, DockerKind, DockerTopology, LauncherTopology, Mode, Scenario, WorkerVersion,
};
use crate::sim;

/// Images the real test daemon has (scripts/dockerd.sh builds them).
pub const REAL_AMD64_IMAGE: &str = "busybox:latest";

/// Placeholder in launcher env for a valid key that belongs to another pool.
pub const OTHER_POOL_KEY: &str = "${OTHER_POOL_KEY}";

pub struct Docker {
    pub topology: DockerTopology,
    /// The in-process fake, or None for the real daemon.
    pub fake: Option<Arc<FakeDockerHandle>>,
    pub host: String,
}

/// A running launcher: on its own thread (wire) or a task of the sim runtime (sim).
pub enum Node {
    Wire(LauncherNode),
    Sim(sim::node::SimNode),
}

impl Node {
    pub async fn signal(&self) {
        match self {
            Node::Wire(n) => n.signal().await,
            Node::Sim(n) => n.signal().await,
        }
    }
    pub async fn crash(&mut self) -> NodeExit {
        match self {
            Node::Wire(n) => n.crash().await,
            Node::Sim(n) => n.crash().await,
        }
    }
    pub async fn wait(&mut self) -> NodeExit {
        match self {
            Node::Wire(n) => n.wait().await,
            Node::Sim(n) => n.wait().await,
        }
    }
    pub fn exited(&self) -> Option<&NodeExit> {
        match self {
            Node::Wire(n) => n.exited(),
            Node::Sim(n) => n.exited(),
        }
    }
}

pub struct Launcher {
    pub topology: LauncherTopology,
    pub node: Option<Node>,
    pub worker_ulid: Option<String>,
    pub data_dir: PathBuf,
    /// Every exit this launcher had, in order.
    pub exits: Vec<NodeExit>,
    /// What it logged, over all its starts (in sim mode, what every launcher logged:
    /// one thread runs them all).
    pub output: Captured,
    /// Sim mode: its worker.json and workspaces across restarts.
    pub disk: sim::node::Disk,
}

impl Launcher {
    /// Reads the worker ULID this launcher last recorded (its worker.json, written after
    /// registering and before connecting to the broker).
    fn recorded_worker(&self, mode: Mode) -> impl Fn() -> Option<String> {
        let file = self.disk.worker_file.clone();
        let path = self.data_dir.join("worker.json");
        move || match mode {
            Mode::Sim => file
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|f| f.worker_ulid.clone()),
            Mode::Wire => std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<launcher::app::WorkerFile>(&b).ok())
                .map(|f| f.worker_ulid),
        }
    }
}

pub struct World {
    pub mode: Mode,
    /// Sim mode: where launchers find the backend.
    pub net: sim::Net,
    pub seed: u64,
    pub dir: tempfile::TempDir,
    pub backend: Option<BackendHandle>,
    pub backend_config: BackendConfig,
    pub pool: String,
    pub token: String,
    pub key: String,
    pub dockers: BTreeMap<String, Docker>,
    pub launchers: BTreeMap<String, Launcher>,
    /// Scenario run name -> run ULID, in schedule order. Add with [`World::add_run`].
    pub runs: Vec<(String, String)>,
    /// Run name -> its position in `runs` (a scale run looks up thousands).
    run_names: HashMap<String, usize>,
    /// Keys of other pools handed to launchers (`${OTHER_POOL_KEY}`): secrets too.
    other_keys: std::sync::Mutex<Vec<String>>,
    /// This pool's (key, token) pairs before `revoke_credentials`: still secrets.
    pub revoked: Vec<(String, String)>,
}

fn harness(what: &str, e: impl std::fmt::Display) -> ScenarioError {
    ScenarioError::Harness(format!("{what}: {e}"))
}

/// A sim world's files (the backend's state, run files and event log, rewritten on every
/// change) go to memory when Linux offers it (`/dev/shm`): on a disk, replacing files by
/// rename waits for their blocks to be written, which made a 10,000-run pool wait on the
/// disk for most of its time. Wire mode keeps the usual temp dir.
fn temp_dir(mode: Mode) -> std::io::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix("scenario");
    let shm = Path::new("/dev/shm");
    if mode == Mode::Sim && shm.is_dir() {
        if let Ok(dir) = b.tempdir_in(shm) {
            return Ok(dir);
        }
    }
    b.tempdir()
}

impl World {
    /// Builds the world of `mode`; in sim mode every launcher's log goes to `capture`.
    pub async fn build(
        scenario: &Scenario,
        seed: u64,
        mode: Mode,
        capture: Captured,
    ) -> Result<World, ScenarioError> {
        let dir = temp_dir(mode).map_err(|e| harness("temp dir", e))?;
        let mut backend_config = BackendConfig::new(dir.path().join("backend"));
        backend_config.seed = seed;
        backend_config.lease_ttl = scenario.topology.backend.lease_ttl;
        backend_config.heartbeat_interval = scenario.topology.backend.heartbeat_interval;
        backend_config.pool_key_bits = 2048;
        backend_config.admin = false;
        let backend = start_backend(mode, backend_config.clone())
            .await
            .map_err(|e| harness("starting the fake backend", e))?;
        let net = sim::Net::default();
        if mode == Mode::Sim {
            net.set(Some(backend.clone()));
        }
        let creds = crate::pool_keys::create_pool(&backend, 0)?;
        let key = creds
            .private_key_b64
            .clone()
            .ok_or_else(|| harness("creating a pool", "no private key"))?;

        let mut world = World {
            mode,
            net,
            seed,
            dir,
            pool: creds.pool_ulid.clone(),
            token: creds.token.clone(),
            key,
            backend: Some(backend),
            backend_config,
            dockers: BTreeMap::new(),
            launchers: BTreeMap::new(),
            runs: Vec::new(),
            run_names: HashMap::new(),
            other_keys: Default::default(),
            revoked: Vec::new(),
        };
        for v in &scenario.topology.worker_versions {
            world.publish(v)?;
        }
        for (i, d) in scenario.topology.dockers.iter().enumerate() {
            let docker = start_docker(d, seed.wrapping_add(i as u64), mode).await?;
            world.dockers.insert(d.name.clone(), docker);
        }
        for l in &scenario.topology.launchers {
            let data_dir = world.dir.path().join("launchers").join(&l.name);
            world.launchers.insert(
                l.name.clone(),
                Launcher {
                    topology: l.clone(),
                    node: None,
                    worker_ulid: None,
                    data_dir,
                    exits: Vec::new(),
                    output: match mode {
                        Mode::Sim => capture.clone(),
                        Mode::Wire => Captured::default(),
                    },
                    disk: sim::node::Disk::default(),
                },
            );
        }
        for l in &scenario.topology.launchers {
            if l.autostart {
                world.start_launcher(&l.name).await?;
            }
        }
        Ok(world)
    }

    pub fn backend(&self) -> &BackendHandle {
        self.backend.as_ref().expect("backend running")
    }

    pub fn publish(&self, v: &WorkerVersion) -> Result<(), ScenarioError> {
        let content = match v.kind {
            BinaryKind::Elf => BinaryContent::ElfStub,
            BinaryKind::Shell => BinaryContent::ShellWorker,
        };
        self.backend()
            .publish_version(v.arch, Some(&v.version), content)
            .map_err(|e| harness("publishing a worker version", e))?;
        Ok(())
    }

    pub fn run_ulid(&self, name: &str) -> Option<&str> {
        match self.run_names.get(name) {
            Some(&i) => self.runs.get(i).map(|(_, u)| u.as_str()),
            None => self
                .runs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, u)| u.as_str()),
        }
    }

    /// Records a scheduled run (a name scheduled again keeps its first ULID for lookups,
    /// as the schedule-order search did).
    pub fn add_run(&mut self, name: String, ulid: String) {
        self.run_names
            .entry(name.clone())
            .or_insert(self.runs.len());
        self.runs.push((name, ulid));
    }

    pub fn launcher_env(&self, name: &str) -> Result<MapEnv, ScenarioError> {
        let l = &self.launchers[name];
        let docker = self
            .dockers
            .get(&l.topology.docker)
            .ok_or_else(|| harness("launcher", format!("no docker {}", l.topology.docker)))?;
        let index = self.launchers.keys().position(|k| k == name).unwrap_or(0) as u64;
        let mut env = MapEnv::default();
        env.set("SPACELIFT_TOKEN", self.token.clone())
            .set("SPACELIFT_POOL_PRIVATE_KEY", self.key.clone())
            .set("DOCKER_HOST", docker.host.clone())
            .set("SPACELIFT_WORKER_NETWORK", "none")
            .set(
                "SPACELIFT_LAUNCHER_DATA_DIR",
                l.data_dir.display().to_string(),
            )
            .set(
                "SPACELIFT_LAUNCHER_CAPACITY",
                l.topology.capacity.to_string(),
            )
            .set(
                "SPACELIFT_LAUNCHER_SEED",
                self.seed.wrapping_mul(31).wrapping_add(index).to_string(),
            )
            .set("SPACELIFT_LAUNCHER_STOP_GRACE", "2s");
        // Only root can give run workspaces to Spacelift's user; otherwise runs are ours.
        if let Some(u) = launcher::settings::RunUser::unprivileged_self() {
            env.set("SPACELIFT_LAUNCHER_RUN_USER", u.to_string());
        }
        if docker.fake.is_none() {
            env.set("SPACELIFT_DEFAULT_RUNNER_IMAGE", REAL_AMD64_IMAGE);
        }
        for (k, v) in &l.topology.env {
            let v = if v == OTHER_POOL_KEY {
                self.other_pool_key()?
            } else {
                v.clone()
            };
            env.set(k.clone(), v);
        }
        Ok(env)
    }

    /// Starts a launcher and waits until the backend knows its worker is subscribed, so
    /// the worker ULID can be attributed to this launcher name.
    pub async fn start_launcher(&mut self, name: &str) -> Result<(), ScenarioError> {
        std::fs::create_dir_all(&self.launchers[name].data_dir)
            .map_err(|e| harness("launcher data dir", e))?;
        let env = self.launcher_env(name)?;
        let config = match launcher::config::load(&env).and_then(|c| c.prepare()) {
            Ok(c) => c,
            Err(e) => {
                // The real binary exits 2 with this message before connecting.
                let l = self.launchers.get_mut(name).expect("known launcher");
                l.exits.push(NodeExit::Exited {
                    code: 2,
                    error: Some(e.to_string()),
                });
                return Ok(());
            }
        };
        // A launcher still running is crashed first: its data-dir lock must be free.
        if let Some(mut old) = self.launchers.get_mut(name).and_then(|l| l.node.take()) {
            let exit = old.crash().await;
            self.launchers
                .get_mut(name)
                .expect("known")
                .exits
                .push(exit);
        }
        let since = self.backend().last_seq();
        let own_worker = self.launchers[name].recorded_worker(self.mode);
        let node = match self.mode {
            Mode::Wire => {
                let l = &self.launchers[name];
                Node::Wire(
                    LauncherNode::start_captured(name, config, l.output.clone())
                        .map_err(|e| harness("launcher thread", e))?,
                )
            }
            Mode::Sim => {
                let l = &self.launchers[name];
                let docker = self
                    .dockers
                    .get(&l.topology.docker)
                    .and_then(|d| d.fake.clone())
                    .ok_or_else(|| harness("launcher", "sim mode needs a fake docker"))?;
                Node::Sim(sim::node::SimNode::start(
                    config,
                    sim::node::Wiring {
                        name: name.to_string(),
                        net: self.net.clone(),
                        docker_name: l.topology.docker.clone(),
                        docker,
                        disk: l.disk.clone(),
                    },
                ))
            }
        };
        let l = self.launchers.get_mut(name).expect("known launcher");
        l.node = Some(node);
        let backend = self.backend.as_ref().expect("backend running");
        let mut exited = None;
        let registered = tokio::select! {
            // Its own worker's subscription: another launcher resubscribing meanwhile
            // (after a backend restart, say) must not be credited to this one.
            ev = backend.wait_for_since(since, |e| {
                e.kind == fake_backend::kinds::MQTT_SUBSCRIBED
                    && e.worker.is_some()
                    && e.worker == own_worker()
            }) => Some(ev),
            exit = l.node.as_mut().expect("node").wait() => { exited = Some(exit); None }
            _ = tokio::time::sleep(Duration::from_secs(60)) => None,
        };
        match (registered, exited) {
            (Some(ev), _) => {
                l.worker_ulid = ev.worker.clone();
                // Then until it is online (first heartbeat), so a run scheduled next is
                // placed by the seed, not by how fast this launcher's heartbeat was.
                if let Some(w) = ev.worker.as_deref() {
                    let online = || backend.worker(w).is_some_and(|v| v.online);
                    let mut events = backend.subscribe();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    while !online() {
                        tokio::select! {
                            r = tokio::time::timeout_at(deadline, events.recv()) => {
                                if r.is_err() { break; }
                            }
                            _ = l.node.as_mut().expect("node").wait() => break,
                        }
                    }
                }
                Ok(())
            }
            (None, Some(exit)) => {
                // A launcher that cannot start (bad token, ...) is a legitimate outcome.
                l.exits.push(exit);
                l.node = None;
                Ok(())
            }
            (None, None) => Err(harness(
                &format!("launcher {name}"),
                "did not connect within 60s",
            )),
        }
    }

    fn other_pool_key(&self) -> Result<String, ScenarioError> {
        let creds = crate::pool_keys::create_pool(self.backend(), self.keys_made())?;
        let key = creds
            .private_key_b64
            .ok_or_else(|| harness("creating a second pool", "no private key"))?;
        self.other_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(key.clone());
        Ok(key)
    }

    /// The other pools' keys handed out so far.
    pub fn other_keys(&self) -> Vec<String> {
        self.other_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn worker_of(&self, launcher: &str) -> Result<String, ScenarioError> {
        self.launchers
            .get(launcher)
            .and_then(|l| l.worker_ulid.clone())
            .ok_or_else(|| {
                harness(
                    &format!("launcher {launcher}"),
                    "has no worker (never connected)",
                )
            })
    }

    pub fn launcher_of_worker(&self, worker: &str) -> Option<&str> {
        self.launchers
            .iter()
            .find(|(_, l)| l.worker_ulid.as_deref() == Some(worker))
            .map(|(n, _)| n.as_str())
    }

    /// Restarts the backend from its data dir, on the same ports.
    pub async fn restart_backend(&mut self) -> Result<(), ScenarioError> {
        // The backend comes back on the ports its tokens name (it reuses recorded ports).
        self.net.set(None);
        if let Some(b) = self.backend.take() {
            b.shutdown().await;
        }
        let b = start_backend(self.mode, self.backend_config.clone())
            .await
            .map_err(|e| harness("restarting the fake backend", e))?;
        if self.mode == Mode::Sim {
            self.net.set(Some(b.clone()));
        }
        self.backend = Some(b);
        Ok(())
    }

    /// Resets the pool's certificate: the backend refuses the old key from now on and
    /// closes its connections; launchers started later get the new key and token.
    pub fn revoke_credentials(&mut self) -> Result<(), ScenarioError> {
        let creds = crate::pool_keys::reset_pool(self.backend(), &self.pool, self.keys_made())?;
        let key = creds
            .private_key_b64
            .ok_or_else(|| harness("revoking the pool's credentials", "no new key"))?;
        let key = std::mem::replace(&mut self.key, key);
        let token = std::mem::replace(&mut self.token, creds.token);
        self.revoked.push((key, token));
        Ok(())
    }

    /// Pool keys this world has used (its own first): the next one's index.
    fn keys_made(&self) -> usize {
        1 + self.revoked.len()
            + self
                .other_keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len()
    }

    pub fn data_path(&self) -> &Path {
        self.dir.path()
    }
}

async fn start_backend(
    mode: Mode,
    config: BackendConfig,
) -> Result<BackendHandle, fake_backend::BackendError> {
    match mode {
        Mode::Wire => FakeBackend::start(config).await,
        Mode::Sim => FakeBackend::start_in_memory(config).await,
    }
}

async fn start_docker(d: &DockerTopology, seed: u64, mode: Mode) -> Result<Docker, ScenarioError> {
    match d.kind {
        DockerKind::Real if mode == Mode::Sim => Err(ScenarioError::Harness(
            "a real docker daemon cannot run in sim mode".into(),
        )),
        DockerKind::Real => {
            let host = std::env::var("TEST_DOCKER_HOST").map_err(|_| {
                ScenarioError::Harness("TEST_DOCKER_HOST not set (needed by kind: real)".into())
            })?;
            Ok(Docker {
                topology: d.clone(),
                fake: None,
                host,
            })
        }
        DockerKind::Fake => {
            let mut config = fake_docker::Config {
                arch: d.arch.to_string(),
                seed,
                ..fake_docker::Config::default()
            };
            if let Some(v) = &d.api_version {
                config.api_version = v.clone();
            }
            let handle = match mode {
                Mode::Wire => FakeDocker::start(config).await,
                Mode::Sim => FakeDocker::in_memory(config),
            }
            .map_err(|e| harness("starting fake-docker", e))?;
            for img in &d.images {
                let platforms: Vec<&str> = img.platforms.iter().map(String::as_str).collect();
                let res = if platforms.is_empty() {
                    handle.admin().set_image_missing(&img.name)
                } else {
                    handle.admin().set_image_platforms(&img.name, &platforms)
                };
                res.map_err(|e| harness(&format!("image {}", img.name), e))?;
            }
            let host = match mode {
                Mode::Wire => handle.docker_host(),
                Mode::Sim => sim::docker::host(&d.name),
            };
            Ok(Docker {
                topology: d.clone(),
                fake: Some(Arc::new(handle)),
                host,
            })
        }
    }
}
