//! In-memory adapters of the ports, with scriptable faults, for tests of the core on
//! paused tokio time. Each adapter bumps a shared "something happened" counter so tests
//! wait on events ([`World::until`]) instead of sleeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use protocol::api::{
    ClaimResponse, Lease, LogLine, LogStream, PolicySample, RunSpec, RunType, TransitionRequest,
    WorkerBinary,
};
use protocol::messages::ServerMessage;
use protocol::{Arch, RunState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::container_spec::Ids;
use crate::lifecycle::{Error, ExitOutcome, Signal};
use crate::ports::*;
use crate::run::{LineSink, StdoutLogs, WallClock};
use crate::settings::Settings;
use crate::supervisor::{status_channel, Ports, Supervisor};

/// A counter every adapter bumps on every change, so tests can wait for conditions.
#[derive(Clone)]
pub struct World {
    tick: Arc<watch::Sender<u64>>,
}

impl World {
    fn new() -> World {
        World {
            tick: Arc::new(watch::channel(0).0),
        }
    }

    fn bump(&self) {
        self.tick.send_modify(|n| *n += 1);
    }

    /// Waits (on paused time, so "an hour" costs nothing) until `cond` holds.
    pub async fn until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let mut rx = self.tick.subscribe();
        let wait = async {
            loop {
                if cond() {
                    return;
                }
                rx.changed().await.expect("world alive");
            }
        };
        if tokio::time::timeout(Duration::from_secs(6 * 3600), wait)
            .await
            .is_err()
        {
            panic!("timed out waiting for: {what}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Backend

/// The fake backend's request body limit (`fake_backend::MAX_BODY`).
pub const MAX_BODY: usize = 1 << 20;

#[derive(Default)]
pub struct BackendState {
    pub claims: Vec<String>,
    pub granted: HashSet<String>,
    /// Delivered transitions, in arrival order.
    pub transitions: Vec<(String, TransitionRequest)>,
    /// Delivered log lines per run, in arrival order.
    pub logs: BTreeMap<String, Vec<LogLine>>,
    /// Delivered policy samples per run, in arrival order (repeats kept, to see them).
    pub policy_samples: BTreeMap<String, Vec<PolicySample>>,
    pub renewals: Vec<String>,
    /// Report calls (transitions + logs) that failed.
    pub failed_reports: u32,
    /// Successful log uploads.
    pub uploads: u32,
    /// Log uploads refused as too large (413).
    pub refused_uploads: u32,
    /// The largest accepted log upload body, in bytes.
    pub largest_upload: usize,
    /// Log upload bodies larger than this are refused (413); [`MAX_BODY`] by default.
    pub body_limit: usize,
    /// Store at most this many lines of each upload (a backend acknowledging part of a
    /// batch); the answer's next expected seq says so.
    pub max_lines_per_upload: Option<usize>,

    pub refuse: HashSet<String>,
    pub claim_transient: u32,
    /// Fail this many report calls with Transient + `retry_after`.
    pub report_transient: u32,
    pub retry_after: Option<Duration>,
    /// While down, every report call fails with Transient.
    pub down: bool,
    /// Every call answers Unauthorized (the pool's credentials were revoked).
    pub unauthorized: bool,
    pub lease_conflict: HashSet<String>,
    pub lease_transient: bool,
    pub specs: HashMap<String, RunSpec>,
    pub ttl_ms: u64,
    /// The binary `latest_binary` announces and `download_binary` serves (else
    /// [`binary()`], which cannot be downloaded).
    pub served_binary: Option<(WorkerBinary, Vec<u8>)>,
}

pub struct MemBackend {
    pub state: Mutex<BackendState>,
    world: World,
}

impl MemBackend {
    fn new(world: World) -> MemBackend {
        MemBackend {
            state: Mutex::new(BackendState {
                ttl_ms: 60_000,
                body_limit: MAX_BODY,
                ..Default::default()
            }),
            world,
        }
    }

    /// Changes (or reads) the state and wakes every waiter.
    pub fn with<R>(&self, f: impl FnOnce(&mut BackendState) -> R) -> R {
        let r = f(&mut lock(&self.state));
        self.world.bump();
        r
    }

    /// Reads the state without waking anyone (for `World::until` conditions).
    pub fn peek<R>(&self, f: impl FnOnce(&BackendState) -> R) -> R {
        f(&lock(&self.state))
    }

    pub fn states(&self, run: &str) -> Vec<RunState> {
        lock(&self.state)
            .transitions
            .iter()
            .filter(|(r, _)| r == run)
            .map(|(_, t)| t.state)
            .collect()
    }

    pub fn last(&self, run: &str) -> Option<TransitionRequest> {
        lock(&self.state)
            .transitions
            .iter()
            .rev()
            .find(|(r, _)| r == run)
            .map(|(_, t)| t.clone())
    }

    pub fn is_terminal(&self, run: &str) -> bool {
        self.states(run).iter().any(|s| s.is_terminal())
    }

    pub fn log_texts(&self, run: &str) -> Vec<String> {
        lock(&self.state)
            .logs
            .get(run)
            .map(|l| l.iter().map(|l| l.text.clone()).collect())
            .unwrap_or_default()
    }

    pub fn log_seqs(&self, run: &str) -> Vec<u64> {
        lock(&self.state)
            .logs
            .get(run)
            .map(|l| l.iter().map(|l| l.seq).collect())
            .unwrap_or_default()
    }

    pub fn claims(&self) -> Vec<String> {
        lock(&self.state).claims.clone()
    }

    pub fn policy_samples(&self, run: &str) -> Vec<PolicySample> {
        self.peek(|s| s.policy_samples.get(run).cloned().unwrap_or_default())
    }

    fn report_fault(&self) -> Result<(), BackendError> {
        let mut s = lock(&self.state);
        if s.unauthorized {
            return Err(BackendError::Unauthorized {
                message: "401 certificate not recognised".into(),
            });
        }
        if s.down || s.report_transient > 0 {
            s.report_transient = s.report_transient.saturating_sub(1);
            s.failed_reports += 1;
            return Err(BackendError::Transient {
                message: "503".into(),
                retry_after: s.retry_after,
            });
        }
        Ok(())
    }
}

pub fn spec(run: &str) -> RunSpec {
    RunSpec {
        run_ulid: run.to_string(),
        stack_id: format!("stack-{run}"),
        run_type: RunType::Tracked,
        image: None,
        env: BTreeMap::new(),
        vendor: None,
    }
}

pub fn binary() -> WorkerBinary {
    WorkerBinary {
        version: "1.0.0".into(),
        arch: Arch::Amd64,
        size: 3,
        sha256: "aa".repeat(32),
    }
}

#[async_trait]
impl Backend for MemBackend {
    async fn claim(&self, run_ulid: &str) -> Result<ClaimOutcome, BackendError> {
        let r = {
            let mut s = lock(&self.state);
            s.claims.push(run_ulid.to_string());
            if s.unauthorized {
                Err(BackendError::Unauthorized {
                    message: "401".into(),
                })
            } else if s.claim_transient > 0 {
                s.claim_transient -= 1;
                Err(BackendError::Transient {
                    message: "502".into(),
                    retry_after: s.retry_after,
                })
            } else if s.refuse.contains(run_ulid) || !s.granted.insert(run_ulid.to_string()) {
                Ok(ClaimOutcome::Refused("409 already claimed".into()))
            } else {
                Ok(ClaimOutcome::Granted(ClaimResponse {
                    run: s
                        .specs
                        .get(run_ulid)
                        .cloned()
                        .unwrap_or_else(|| spec(run_ulid)),
                    lease: Lease { ttl_ms: s.ttl_ms },
                }))
            }
        };
        self.world.bump();
        r
    }

    async fn renew_lease(&self, run_ulid: &str) -> Result<Lease, BackendError> {
        let r = {
            let mut s = lock(&self.state);
            s.renewals.push(run_ulid.to_string());
            if s.unauthorized {
                Err(BackendError::Unauthorized {
                    message: "401".into(),
                })
            } else if s.lease_conflict.contains(run_ulid) {
                Err(BackendError::Conflict {
                    message: "lease held by another worker".into(),
                })
            } else if s.lease_transient {
                Err(BackendError::Transient {
                    message: "503".into(),
                    retry_after: None,
                })
            } else {
                Ok(Lease { ttl_ms: s.ttl_ms })
            }
        };
        self.world.bump();
        r
    }

    async fn transition(
        &self,
        run_ulid: &str,
        req: &TransitionRequest,
    ) -> Result<(), BackendError> {
        let r = self.report_fault().map(|()| {
            lock(&self.state)
                .transitions
                .push((run_ulid.to_string(), req.clone()));
        });
        self.world.bump();
        r
    }

    /// Like the fake backend: a body over [`MAX_BODY`] is refused (413, mapped as the HTTPS
    /// adapter maps it); lines are stored in `seq` order from 0, lines below the next
    /// expected one are ignored, a gap stops the batch; the answer is the next expected.
    async fn upload_logs(&self, run_ulid: &str, lines: &[LogLine]) -> Result<u64, BackendError> {
        let body = serde_json::to_vec(&protocol::api::LogBatch {
            worker_ulid: ids().worker_ulid,
            lines: lines.to_vec(),
        })
        .expect("a LogBatch serialises");
        let r = self.report_fault().and_then(|()| {
            let mut s = lock(&self.state);
            if body.len() > s.body_limit {
                s.refused_uploads += 1;
                return Err(BackendError::TooLarge {
                    message: format!(
                        "POST /v1/runs/{run_ulid}/logs: HTTP 413: request body is larger \
                         than {} bytes",
                        s.body_limit
                    ),
                });
            }
            s.uploads += 1;
            s.largest_upload = s.largest_upload.max(body.len());
            let take = s.max_lines_per_upload.unwrap_or(usize::MAX);
            let l = s.logs.entry(run_ulid.to_string()).or_default();
            for line in lines.iter().take(take) {
                let next = l.len() as u64;
                if line.seq == next {
                    l.push(line.clone());
                } else if line.seq > next {
                    break;
                }
            }
            Ok(l.len() as u64)
        });
        self.world.bump();
        r
    }

    /// Like the fake backend: a body over the limit is refused (413).
    async fn policy_sample(
        &self,
        run_ulid: &str,
        sample: &PolicySample,
    ) -> Result<(), BackendError> {
        let body = serde_json::to_vec(sample).expect("a PolicySample serialises");
        let r = self.report_fault().and_then(|()| {
            let mut s = lock(&self.state);
            if body.len() > s.body_limit {
                return Err(BackendError::TooLarge {
                    message: format!("POST /v1/runs/{run_ulid}/policy-samples: HTTP 413"),
                });
            }
            s.policy_samples
                .entry(run_ulid.to_string())
                .or_default()
                .push(sample.clone());
            Ok(())
        });
        self.world.bump();
        r
    }

    async fn latest_binary(&self, _arch: Arch) -> Result<WorkerBinary, BackendError> {
        if lock(&self.state).unauthorized {
            return Err(BackendError::Unauthorized {
                message: "401".into(),
            });
        }
        Ok(lock(&self.state)
            .served_binary
            .as_ref()
            .map_or_else(binary, |(b, _)| b.clone()))
    }

    async fn download_binary(
        &self,
        binary: &WorkerBinary,
        offset: u64,
    ) -> Result<ByteStream, BackendError> {
        let data = match &lock(&self.state).served_binary {
            Some((b, data)) if b.sha256 == binary.sha256 => {
                bytes::Bytes::copy_from_slice(&data[offset as usize..])
            }
            _ => {
                return Err(BackendError::Rejected {
                    message: "the in-memory backend serves no such binary".into(),
                })
            }
        };
        Ok(Box::pin(futures_util::stream::iter([Ok(data)])))
    }
}

// ---------------------------------------------------------------------------------------
// Container runtime

/// What a container does once started.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Each line comes after its delay.
    pub lines: Vec<(Duration, String)>,
    pub exit_code: i64,
    pub oom: bool,
    /// After its lines, run silently until stopped.
    pub hang: bool,
    /// Ignore SIGTERM: only the kill after the grace ends it.
    pub ignore_term: bool,
    pub start_error: Option<String>,
}

impl Behaviour {
    pub fn prints(lines: &[&str]) -> Behaviour {
        Behaviour {
            lines: lines
                .iter()
                .map(|l| (Duration::from_millis(10), l.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    pub fn exit(mut self, code: i64) -> Behaviour {
        self.exit_code = code;
        self
    }

    pub fn hang() -> Behaviour {
        Behaviour {
            hang: true,
            ..Default::default()
        }
    }
}

/// A printed line as the Docker adapter delivers it: over 64 KiB, in partial pieces.
fn as_docker_delivers(text: &str) -> Vec<OutputLine> {
    let mut lines = Vec::new();
    let mut rest = text;
    while rest.len() > crate::docker::MAX_LINE {
        let mut cut = crate::docker::MAX_LINE;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        lines.push(OutputLine {
            stream: LogStream::Stdout,
            text: rest[..cut].to_string(),
            partial: true,
        });
        rest = &rest[cut..];
    }
    lines.push(OutputLine {
        stream: LogStream::Stdout,
        text: rest.to_string(),
        partial: false,
    });
    lines
}

pub struct MemContainer {
    pub id: String,
    pub spec: ContainerSpec,
    pub behaviour: Behaviour,
    pub started: bool,
    pub running: bool,
    pub output: Vec<OutputLine>,
    pub exit: Option<ExitStatus>,
    signal: Option<watch::Sender<Option<i64>>>,
}

#[derive(Default)]
pub struct RuntimeState {
    pub images: HashMap<String, ImageInfo>,
    /// What a pull of the image brings (absent: the pull fails).
    pub registry: HashMap<String, ImageInfo>,
    /// Pulls of these images never complete (a registry trickling bytes).
    pub pull_hangs: HashSet<String>,
    pub behaviours: HashMap<String, Behaviour>,
    pub default_behaviour: Behaviour,
    pub containers: BTreeMap<String, MemContainer>,
    pub removed: Vec<String>,
    pub calls: Vec<String>,
    pub unavailable: bool,
    /// `logs` answers an API error (the output cannot be followed).
    pub logs_error: bool,
    /// `stop`, `remove` and `list_by_labels` never answer (a daemon that hangs).
    pub calls_hang: bool,
    /// The next this many `remove`s fail with an API error (which is not retried).
    pub remove_errors: u32,
    pub running_now: usize,
    pub max_running: usize,
    /// Bytes of container output the launcher has read (the rest waits, as in Docker).
    pub read_bytes: usize,
    next_id: u64,
}

pub struct MemRuntime {
    pub state: Arc<Mutex<RuntimeState>>,
    world: World,
    arch: Arch,
}

pub fn image(arch: &str) -> ImageInfo {
    ImageInfo {
        id: format!("sha256:{arch}"),
        os: "linux".into(),
        architecture: Some(arch.into()),
    }
}

impl MemRuntime {
    fn new(world: World) -> MemRuntime {
        let mut state = RuntimeState::default();
        state
            .images
            .insert(crate::DEFAULT_RUNNER_IMAGE.into(), image("amd64"));
        MemRuntime {
            state: Arc::new(Mutex::new(state)),
            world,
            arch: Arch::Amd64,
        }
    }

    /// Changes (or reads) the state and wakes every waiter.
    pub fn with<R>(&self, f: impl FnOnce(&mut RuntimeState) -> R) -> R {
        let r = f(&mut lock(&self.state));
        self.world.bump();
        r
    }

    /// Reads the state without waking anyone (for `World::until` conditions).
    pub fn peek<R>(&self, f: impl FnOnce(&RuntimeState) -> R) -> R {
        f(&lock(&self.state))
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    pub fn live_containers(&self) -> usize {
        lock(&self.state).containers.len()
    }

    /// Never returns while `calls_hang` is set.
    async fn maybe_hang(&self) {
        if lock(&self.state).calls_hang {
            std::future::pending::<()>().await;
        }
    }

    fn check(&self, call: String) -> Result<MutexGuard<'_, RuntimeState>, RuntimeError> {
        let mut s = lock(&self.state);
        s.calls.push(call);
        if s.unavailable {
            return Err(RuntimeError::Unavailable("connection refused".into()));
        }
        Ok(s)
    }

    /// Ends a container with `code` (a signal from stop/kill, or its natural end).
    fn finish(state: &Mutex<RuntimeState>, world: &World, id: &str, code: i64) {
        let mut s = lock(state);
        let mut ended = false;
        if let Some(c) = s.containers.get_mut(id) {
            if c.running {
                c.running = false;
                c.exit = Some(ExitStatus {
                    code,
                    oom_killed: c.behaviour.oom,
                    error: None,
                });
                ended = true;
            }
        }
        if ended {
            s.running_now -= 1;
        }
        drop(s);
        world.bump();
    }
}

#[async_trait]
impl ContainerRuntime for MemRuntime {
    async fn architecture(&self) -> Result<Arch, RuntimeError> {
        drop(self.check("info".into())?);
        Ok(self.arch)
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        let s = self.check(format!("inspect {image}"))?;
        Ok(s.images.get(image).cloned())
    }

    async fn pull_image(
        &self,
        image: &str,
        platform: &str,
        _auth: Option<RegistryAuth>,
    ) -> Result<(), RuntimeError> {
        if self
            .check(format!("pull {image} {platform}"))?
            .pull_hangs
            .contains(image)
        {
            self.world.bump();
            // Until the test takes it out of `pull_hangs`.
            let mut tick = self.world.tick.subscribe();
            while lock(&self.state).pull_hangs.contains(image) {
                let _ = tick.changed().await;
            }
        }
        let r = {
            let mut s = lock(&self.state);
            match s.registry.get(image).cloned() {
                Some(info) => {
                    s.images.insert(image.to_string(), info);
                    Ok(())
                }
                None => Err(RuntimeError::PullFailed {
                    image: image.into(),
                    message: "manifest unknown".into(),
                }),
            }
        };
        self.world.bump();
        r
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let r = {
            let mut s = self.check(format!("create {}", spec.name))?;
            if s.containers.values().any(|c| c.spec.name == spec.name) {
                return Err(RuntimeError::Api(format!(
                    "Conflict. The container name \"/{}\" is already in use",
                    spec.name
                )));
            }
            s.next_id += 1;
            let id = format!("c{}", s.next_id);
            let behaviour = s
                .behaviours
                .get(&spec.image)
                .cloned()
                .unwrap_or_else(|| s.default_behaviour.clone());
            s.containers.insert(
                id.clone(),
                MemContainer {
                    id: id.clone(),
                    spec: spec.clone(),
                    behaviour,
                    started: false,
                    running: false,
                    output: Vec::new(),
                    exit: None,
                    signal: None,
                },
            );
            Ok(id)
        };
        self.world.bump();
        r
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let (behaviour, signal_rx) = {
            let mut s = self.check(format!("start {id}"))?;
            let c = s
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::ContainerNotFound(id.into()))?;
            if let Some(e) = c.behaviour.start_error.clone() {
                return Err(RuntimeError::Api(e));
            }
            let (tx, rx) = watch::channel(None);
            c.signal = Some(tx);
            c.started = true;
            c.running = true;
            let b = c.behaviour.clone();
            s.running_now += 1;
            s.max_running = s.max_running.max(s.running_now);
            (b, rx)
        };
        self.world.bump();
        let state = self.state.clone();
        let world = self.world.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let mut signal_rx = signal_rx;
            let signalled = |rx: &mut watch::Receiver<Option<i64>>| {
                let mut rx = rx.clone();
                async move {
                    let got = rx.wait_for(Option::is_some).await.map(|v| *v);
                    match got {
                        Ok(v) => v.unwrap_or(137),
                        Err(_) => std::future::pending().await,
                    }
                }
            };
            for (delay, text) in behaviour.lines {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {
                        if let Some(c) = lock(&state).containers.get_mut(&id) {
                            c.output.extend(as_docker_delivers(&text));
                        }
                        world.bump();
                    }
                    code = signalled(&mut signal_rx) => {
                        MemRuntime::finish(&state, &world, &id, code);
                        return;
                    }
                }
            }
            let code = if behaviour.hang {
                signalled(&mut signal_rx).await
            } else {
                behaviour.exit_code
            };
            MemRuntime::finish(&state, &world, &id, code);
        });
        Ok(())
    }

    async fn logs(&self, id: &str) -> Result<OutputStream, RuntimeError> {
        if self.check(format!("logs {id}"))?.logs_error {
            return Err(RuntimeError::Api("cannot attach".into()));
        }
        let state = self.state.clone();
        let rx = self.world.tick.subscribe();
        let id = id.to_string();
        let stream =
            futures_util::stream::unfold((0usize, rx, false), move |(next, mut rx, failed)| {
                let state = state.clone();
                let id = id.clone();
                async move {
                    if failed {
                        return None;
                    }
                    loop {
                        {
                            let mut s = lock(&state);
                            if s.unavailable {
                                return Some((
                                    Err(RuntimeError::Unavailable("connection reset".into())),
                                    (next, rx, true),
                                ));
                            }
                            let c = s.containers.get(&id)?;
                            if let Some(line) = c.output.get(next).cloned() {
                                s.read_bytes += line.text.len();
                                return Some((Ok(line), (next + 1, rx, false)));
                            }
                            if !c.running {
                                return None;
                            }
                        }
                        rx.changed().await.ok()?;
                    }
                }
            });
        Ok(Box::pin(stream))
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let mut rx = self.world.tick.subscribe();
        loop {
            {
                let s = self.check(format!("wait {id}"))?;
                match s.containers.get(id) {
                    None => return Err(RuntimeError::ContainerNotFound(id.into())),
                    Some(c) => {
                        if let Some(e) = &c.exit {
                            return Ok(e.clone());
                        }
                    }
                }
            }
            if rx.changed().await.is_err() {
                return Err(RuntimeError::Api("world gone".into()));
            }
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.maybe_hang().await;
        let (signal, ignore_term) = {
            let s = self.check(format!("stop {id} {}s", grace.as_secs()))?;
            let c = s
                .containers
                .get(id)
                .ok_or_else(|| RuntimeError::ContainerNotFound(id.into()))?;
            if !c.running {
                return Ok(());
            }
            (c.signal.clone(), c.behaviour.ignore_term)
        };
        self.world.bump();
        if ignore_term {
            tokio::time::sleep(grace).await;
            if let Some(s) = signal {
                let _ = s.send(Some(137));
            }
        } else if let Some(s) = signal {
            let _ = s.send(Some(143));
        }
        Ok(())
    }

    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        let signal = {
            let s = self.check(format!("kill {id}"))?;
            s.containers.get(id).and_then(|c| c.signal.clone())
        };
        if let Some(s) = signal {
            let _ = s.send(Some(137));
        }
        self.world.bump();
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.maybe_hang().await;
        {
            let mut s = self.check(format!("remove {id}"))?;
            if s.remove_errors > 0 {
                s.remove_errors -= 1;
                return Err(RuntimeError::Api(format!(
                    "removal of container {id} is already in progress"
                )));
            }
            if let Some(c) = s.containers.remove(id) {
                if c.running {
                    s.running_now -= 1;
                }
                if let Some(sig) = c.signal {
                    let _ = sig.send(Some(137));
                }
                s.removed.push(id.to_string());
            }
        }
        self.world.bump();
        Ok(())
    }

    async fn list_by_labels(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.maybe_hang().await;
        let s = self.check("list".into())?;
        Ok(s.containers
            .values()
            .filter(|c| labels.iter().all(|(k, v)| c.spec.labels.get(k) == Some(v)))
            .map(|c| ContainerSummary {
                id: c.id.clone(),
                name: c.spec.name.clone(),
                labels: c.spec.labels.clone(),
                running: c.running,
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------
// Binary store

#[derive(Default)]
pub struct StoreState {
    pub gets: u32,
    /// Each get takes this long (a slow or trickling download).
    pub delay: Option<Duration>,
    pub in_flight: u32,
    pub max_in_flight: u32,
    /// Versions whose get completed, in order.
    pub fetched: Vec<String>,
    /// The next this many gets fail verification.
    pub corrupt: u32,
    pub pins: HashMap<String, i64>,
    pub pinned_ever: u32,
}

pub struct MemBinaryStore {
    pub state: Arc<Mutex<StoreState>>,
    world: World,
}

impl MemBinaryStore {
    pub fn pinned_now(&self) -> i64 {
        lock(&self.state).pins.values().sum()
    }
}

struct InFlight(Arc<Mutex<StoreState>>, World);

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
        self.1.bump();
    }
}

#[async_trait]
impl BinaryStore for MemBinaryStore {
    async fn get(&self, binary: &WorkerBinary) -> Result<CachedBinary, BinaryError> {
        let delay = {
            let mut s = lock(&self.state);
            s.gets += 1;
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.delay
        };
        self.world.bump();
        // Counted out even when the get is dropped half-way (a deadline, an abort).
        let _done = InFlight(self.state.clone(), self.world.clone());
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let r = {
            let mut s = lock(&self.state);
            if s.corrupt > 0 {
                s.corrupt -= 1;
                Err(BinaryError::Corrupt {
                    version: binary.version.clone(),
                    arch: binary.arch,
                    expected: binary.sha256.clone(),
                    actual: "00".repeat(32),
                })
            } else {
                s.fetched.push(binary.version.clone());
                Ok(CachedBinary {
                    version: binary.version.clone(),
                    sha256: binary.sha256.clone(),
                    path: PathBuf::from(format!("/cache/{}/spacelift-worker", binary.sha256)),
                })
            }
        };
        self.world.bump();
        r
    }

    fn pin(&self, sha256: &str) -> BinaryPin {
        {
            let mut s = lock(&self.state);
            *s.pins.entry(sha256.to_string()).or_default() += 1;
            s.pinned_ever += 1;
        }
        let state = self.state.clone();
        let world = self.world.clone();
        let sha = sha256.to_string();
        BinaryPin::new(move || {
            *lock(&state).pins.entry(sha).or_default() -= 1;
            world.bump();
        })
    }
}

// ---------------------------------------------------------------------------------------
// Stdout capture

pub struct FixedClock;

impl WallClock for FixedClock {
    fn now(&self) -> String {
        "2026-01-01T00:00:00Z".into()
    }
}

#[derive(Default)]
pub struct MemSink {
    pub lines: Mutex<Vec<String>>,
}

impl LineSink for MemSink {
    fn write_line(&self, line: &str) {
        lock(&self.lines).push(line.to_string());
    }
}

// ---------------------------------------------------------------------------------------
// Harness

pub struct Harness {
    pub world: World,
    pub settings: Settings,
    pub backend: Arc<MemBackend>,
    pub runtime: Arc<MemRuntime>,
    pub store: Arc<MemBinaryStore>,
    /// Used instead of `store` when set (a real on-disk cache).
    pub binary_store: Option<Arc<dyn BinaryStore>>,
    pub stdout: Arc<MemSink>,
    pub held_runs: Vec<String>,
    pub ids: Ids,
}

pub struct Running {
    pub events: mpsc::Sender<BackendEvent>,
    pub signals: mpsc::Sender<Signal>,
    pub status: watch::Receiver<WorkerStatus>,
    pub task: JoinHandle<Result<ExitOutcome, Error>>,
    fatal: Option<oneshot::Sender<Error>>,
    msg: u64,
}

pub fn ids() -> Ids {
    Ids {
        worker_ulid: "WORKER1".into(),
        pool_ulid: "POOL1".into(),
        launcher_id: "LAUNCHER1".into(),
    }
}

impl Harness {
    pub fn new() -> Harness {
        let world = World::new();
        Harness {
            settings: Settings::isolated(PathBuf::from("/data")),
            backend: Arc::new(MemBackend::new(world.clone())),
            runtime: Arc::new(MemRuntime::new(world.clone())),
            store: Arc::new(MemBinaryStore {
                state: Arc::default(),
                world: world.clone(),
            }),
            binary_store: None,
            stdout: Arc::default(),
            held_runs: Vec::new(),
            ids: ids(),
            world,
        }
    }

    pub fn start(&self) -> Running {
        self.start_with_metrics(crate::metrics::Metrics::new())
    }

    pub fn start_with_metrics(&self, metrics: crate::metrics::Metrics) -> Running {
        let (events_tx, events_rx) = mpsc::channel(64);
        let (signals_tx, signals_rx) = mpsc::channel(8);
        let (status_tx, status_rx) = status_channel(self.settings.capacity);
        let (fatal_tx, fatal_rx) = oneshot::channel();
        let sup = Supervisor::new(
            self.settings.clone(),
            self.ids.clone(),
            Arch::Amd64,
            Ports {
                backend: self.backend.clone(),
                runtime: self.runtime.clone(),
                store: self
                    .binary_store
                    .clone()
                    .unwrap_or_else(|| self.store.clone()),
            },
            events_rx,
            status_tx,
        )
        .with_held_runs(self.held_runs.clone())
        .with_metrics(metrics)
        .with_fatal(fatal_rx)
        .with_stdout_logs(StdoutLogs {
            clock: Arc::new(FixedClock),
            sink: self.stdout.clone(),
        });
        let task = tokio::spawn(sup.run(signals_rx));
        Running {
            events: events_tx,
            signals: signals_tx,
            status: status_rx,
            task,
            fatal: Some(fatal_tx),
            msg: 0,
        }
    }
}

impl Running {
    pub async fn send(&mut self, m: ServerMessage) {
        self.events
            .send(BackendEvent::Message(m))
            .await
            .expect("supervisor alive");
    }

    fn id(&mut self) -> String {
        self.msg += 1;
        format!("m{}", self.msg)
    }

    pub async fn schedule(&mut self, run: &str) {
        let message_id = self.id();
        self.send(ServerMessage::RunScheduled {
            message_id,
            run_ulid: run.into(),
        })
        .await;
    }

    pub async fn cancel(&mut self, run: &str) {
        let message_id = self.id();
        self.send(ServerMessage::RunCancel {
            message_id,
            run_ulid: run.into(),
            reason: Some("canceled by user".into()),
        })
        .await;
    }

    pub async fn event(&self, e: BackendEvent) {
        self.events.send(e).await.expect("supervisor alive");
    }

    /// A fatal error from outside the supervisor (as the MQTT session reports one).
    pub fn fatal(&mut self, e: Error) {
        if let Some(tx) = self.fatal.take() {
            let _ = tx.send(e);
        }
    }

    pub async fn signal(&self) {
        self.signals
            .send(Signal::Terminate)
            .await
            .expect("supervisor alive");
    }

    /// Waits for the supervisor's status to satisfy `cond`.
    pub async fn status_until(&mut self, what: &str, cond: impl Fn(&WorkerStatus) -> bool) {
        let wait = self.status.wait_for(|s| cond(s));
        match tokio::time::timeout(Duration::from_secs(6 * 3600), wait).await {
            Ok(Ok(_)) => {}
            _ => panic!("timed out waiting for status: {what}"),
        }
    }

    /// Waits for the supervisor to return.
    pub async fn exit(self) -> Result<ExitOutcome, Error> {
        tokio::time::timeout(Duration::from_secs(6 * 3600), self.task)
            .await
            .expect("supervisor exits")
            .expect("supervisor did not panic")
    }
}
