//! The in-memory `ContainerRuntime`: containers whose behaviour a test scripts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use protocol::api::LogStream;
use protocol::Arch;
use tokio::sync::watch;

use crate::ports::*;

use super::{lock, ChangeCounter};

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
    /// The next this many `list_by_labels` fail with an API error (a daemon answering 500).
    pub list_errors: u32,
    pub running_now: usize,
    pub max_running: usize,
    /// Bytes of container output the launcher has read (the rest waits, as in Docker).
    pub read_bytes: usize,
    next_id: u64,
}

pub struct MemRuntime {
    pub state: Arc<Mutex<RuntimeState>>,
    changes: ChangeCounter,
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
    pub(super) fn new(changes: ChangeCounter) -> MemRuntime {
        let mut state = RuntimeState::default();
        state
            .images
            .insert(crate::DEFAULT_RUNNER_IMAGE.into(), image("amd64"));
        MemRuntime {
            state: Arc::new(Mutex::new(state)),
            changes,
            arch: Arch::Amd64,
        }
    }

    /// Changes (or reads) the state and wakes every waiter.
    pub fn with<R>(&self, f: impl FnOnce(&mut RuntimeState) -> R) -> R {
        let r = f(&mut lock(&self.state));
        self.changes.bump();
        r
    }

    /// Reads the state without waking anyone (for `ChangeCounter::until` conditions).
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
    fn finish(state: &Mutex<RuntimeState>, changes: &ChangeCounter, id: &str, code: i64) {
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
        changes.bump();
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
            self.changes.bump();
            // Until the test takes it out of `pull_hangs`.
            let mut tick = self.changes.tick.subscribe();
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
        self.changes.bump();
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
        self.changes.bump();
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
        self.changes.bump();
        let state = self.state.clone();
        let changes = self.changes.clone();
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
                        changes.bump();
                    }
                    code = signalled(&mut signal_rx) => {
                        MemRuntime::finish(&state, &changes, &id, code);
                        return;
                    }
                }
            }
            let code = if behaviour.hang {
                signalled(&mut signal_rx).await
            } else {
                behaviour.exit_code
            };
            MemRuntime::finish(&state, &changes, &id, code);
        });
        Ok(())
    }

    async fn logs(&self, id: &str) -> Result<OutputStream, RuntimeError> {
        if self.check(format!("logs {id}"))?.logs_error {
            return Err(RuntimeError::Api("cannot attach".into()));
        }
        let state = self.state.clone();
        let rx = self.changes.tick.subscribe();
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
        let mut rx = self.changes.tick.subscribe();
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
                return Err(RuntimeError::Api("change counter gone".into()));
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
        self.changes.bump();
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
        self.changes.bump();
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
        self.changes.bump();
        Ok(())
    }

    async fn list_by_labels(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.maybe_hang().await;
        let mut s = self.check("list".into())?;
        if s.list_errors > 0 {
            s.list_errors -= 1;
            return Err(RuntimeError::Api("500 Internal Server Error".into()));
        }
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
