//! The daemon's state (containers, images, networks, rules, faults, event log) and the
//! transitions between container states. One mutex guards it all; nothing awaits while
//! holding it. Every change bumps the `changes` watch so waiters re-check their condition.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::behaviour::{Behaviour, Stream, Subject};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::events::EventLog;
use crate::faults::Faults;
use crate::ids::IdGen;
use crate::registry::{ImageConfig, Platform, Reference, Registry};

/// One line of container output as stored for logs and attach.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub stream: Stream,
    pub at: OffsetDateTime,
    pub data: bytes::Bytes,
}

/// Output buffer shared with followers, so it outlives an auto-removed container.
#[derive(Debug)]
pub struct Output {
    pub entries: Vec<LogEntry>,
    /// True once the current run has exited: followers drain and stop.
    pub closed: bool,
    /// Bumped on every change of this output: its followers wake for it alone, not for
    /// every change of the daemon (hundreds of followers woken by each were most of a
    /// large pool's cost).
    changes: watch::Sender<u64>,
}

impl Default for Output {
    fn default() -> Output {
        Output {
            entries: Vec::new(),
            closed: false,
            changes: watch::channel(0).0,
        }
    }
}

impl Output {
    /// Changes of this output from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn push(&mut self, entry: LogEntry) {
        self.entries.push(entry);
        self.touch();
    }

    pub fn set_closed(&mut self, closed: bool) {
        self.closed = closed;
        self.touch();
    }

    fn touch(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub target: String,
    pub rw: bool,
}

pub struct Runner {
    pub handle: JoinHandle<()>,
    pub ignore_signals: bool,
}

pub struct Container {
    pub id: String,
    /// With the leading `/`.
    pub name: String,
    pub seq: u64,
    pub created: OffsetDateTime,
    pub image_ref: String,
    pub image_id: String,
    pub platform: Platform,
    pub path: String,
    pub args: Vec<String>,
    pub config: Value,
    pub host_config: Value,
    pub labels: BTreeMap<String, String>,
    pub env: Vec<String>,
    pub tty: bool,
    pub mounts: Vec<MountSpec>,
    pub network_mode: String,
    pub ports: BTreeMap<String, Option<u16>>,
    pub auto_remove: bool,
    pub status: Status,
    pub exit_code: i64,
    pub oom_killed: bool,
    pub error: String,
    pub pid: u32,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub output: Arc<Mutex<Output>>,
    pub run_gen: u64,
    pub exits: u64,
    pub runner: Option<Runner>,
}

impl Container {
    pub fn running(&self) -> bool {
        self.status == Status::Running
    }
}

#[derive(Debug, Clone)]
pub struct Image {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub platform: Platform,
    pub created: OffsetDateTime,
    pub size: i64,
    pub config: ImageConfig,
}

#[derive(Debug, Clone)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub created: OffsetDateTime,
    pub subnet: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub internal: bool,
    pub predefined: bool,
}

pub struct State {
    pub ids: IdGen,
    pub next_seq: u64,
    pub next_pid: u32,
    pub next_port: u16,
    pub containers: BTreeMap<String, Container>,
    /// Exit codes of removed containers, for `wait?condition=removed` that raced removal.
    pub removed: BTreeMap<String, i64>,
    pub images: Vec<Image>,
    pub networks: Vec<Network>,
    pub registry: Registry,
    pub rules: Vec<crate::behaviour::Rule>,
    pub faults: Faults,
    pub log: EventLog,
}

pub struct Daemon {
    pub config: Config,
    pub clock: Clock,
    state: Mutex<State>,
    /// Bumped on every state change.
    pub changes: watch::Sender<u64>,
    /// Bumped to drop every connection (daemon restart or shutdown).
    pub epoch: watch::Sender<u64>,
    /// While set and in the future, new connections are dropped (the daemon is "down").
    pub down_until: Mutex<Option<tokio::time::Instant>>,
}

impl Daemon {
    pub fn new(config: Config) -> Result<Arc<Self>, crate::Error> {
        config.validate()?;
        let clock = Clock::new(config.base_time()?);
        let mut registry = Registry::default();
        for (name, img) in &config.images {
            registry
                .set(name, img.clone())
                .map_err(|e| crate::Error::Config(format!("image {name:?}: {e}")))?;
        }
        let ids = IdGen::new(config.seed);
        let now = clock.now();
        let net = |name: &str, driver: &str, subnet: Option<&str>| Network {
            id: ids.content_hash(&format!("network:{name}")),
            name: name.into(),
            driver: driver.into(),
            created: now,
            subnet: subnet.map(str::to_string),
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            internal: false,
            predefined: true,
        };
        let networks = vec![
            net("bridge", "bridge", Some("172.17.0.0/16")),
            net("host", "host", None),
            net("none", "null", None),
        ];
        let state = State {
            ids,
            next_seq: 0,
            next_pid: 1000,
            next_port: 32768,
            containers: BTreeMap::new(),
            removed: BTreeMap::new(),
            images: Vec::new(),
            networks,
            registry,
            rules: config.rules.clone(),
            faults: Faults::default(),
            log: EventLog::default(),
        };
        let daemon = Arc::new(Self {
            config: config.clone(),
            clock,
            state: Mutex::new(state),
            changes: watch::channel(0).0,
            epoch: watch::channel(0).0,
            down_until: Mutex::new(None),
        });
        for name in &config.local_images {
            let r = Reference::parse(name)
                .map_err(|e| crate::Error::Config(format!("local image {name:?}: {e}")))?;
            let mut st = daemon.lock();
            let platform = daemon
                .default_pull_platform(&st, &r, None)
                .unwrap_or_else(|_| daemon.host_platform());
            daemon.commit_image(&mut st, &r, platform);
        }
        Ok(daemon)
    }

    /// Poison-tolerant: a panicking task must not wedge the daemon.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn host_platform(&self) -> Platform {
        Platform::linux(&self.config.arch)
    }

    pub fn record(
        &self,
        st: &mut State,
        kind: &str,
        action: &str,
        id: &str,
        attrs: BTreeMap<String, String>,
    ) {
        let now = self.clock.now();
        st.log.push(now, kind, action, id, attrs);
        self.notify();
    }

    fn container_attrs(c: &Container) -> BTreeMap<String, String> {
        let mut a = c.labels.clone();
        a.insert("image".into(), c.image_ref.clone());
        a.insert("name".into(), c.name.trim_start_matches('/').to_string());
        a
    }

    pub fn container_event(
        &self,
        st: &mut State,
        id: &str,
        action: &str,
        extra: &[(&str, String)],
    ) {
        let Some(c) = st.containers.get(id) else {
            return;
        };
        let mut attrs = Self::container_attrs(c);
        for (k, v) in extra {
            attrs.insert((*k).to_string(), v.clone());
        }
        self.record(st, "container", action, id, attrs);
    }

    // ---- lookups ----

    /// Full ID, then name (leading `/` optional), then unique ID prefix.
    pub fn resolve_container(st: &State, given: &str) -> ApiResult<String> {
        if given.is_empty() {
            return Err(ApiError::no_such_container(given));
        }
        if st.containers.contains_key(given) {
            return Ok(given.to_string());
        }
        let want = format!("/{}", given.trim_start_matches('/'));
        if let Some(c) = st.containers.values().find(|c| c.name == want) {
            return Ok(c.id.clone());
        }
        let mut hits = st.containers.keys().filter(|id| id.starts_with(given));
        match (hits.next(), hits.next()) {
            (Some(id), None) => Ok(id.clone()),
            (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
                "multiple IDs found with provided prefix: {given}"
            ))),
            _ => Err(ApiError::no_such_container(given)),
        }
    }

    pub fn find_image<'a>(st: &'a State, given: &str) -> Option<&'a Image> {
        let g = given.trim();
        if g.is_empty() {
            return None;
        }
        let hexpart = g.strip_prefix("sha256:").unwrap_or(g);
        if hexpart.len() >= 4 && hexpart.chars().all(|c| c.is_ascii_hexdigit()) {
            let hits: Vec<&Image> = st
                .images
                .iter()
                .filter(|i| i.id.trim_start_matches("sha256:").starts_with(hexpart))
                .collect();
            if hits.len() == 1 {
                return hits.first().copied();
            }
        }
        let r = Reference::parse(g).ok()?;
        let key = r.to_string();
        st.images
            .iter()
            .find(|i| i.repo_tags.contains(&key) || i.repo_digests.contains(&key))
    }

    pub fn find_network<'a>(st: &'a State, given: &str) -> Option<&'a Network> {
        st.networks
            .iter()
            .find(|n| n.id == given)
            .or_else(|| st.networks.iter().find(|n| n.name == given))
            .or_else(|| {
                let hits: Vec<&Network> = st
                    .networks
                    .iter()
                    .filter(|n| !given.is_empty() && n.id.starts_with(given))
                    .collect();
                (hits.len() == 1).then(|| hits[0])
            })
    }

    // ---- images ----

    /// The platform a pull resolves to, or the in-stream error dockerd would give.
    pub fn default_pull_platform(
        &self,
        st: &State,
        r: &Reference,
        requested: Option<&Platform>,
    ) -> Result<Platform, String> {
        let remote = st.registry.lookup(r);
        let host = self.host_platform();
        let platforms = if remote.platforms.is_empty() {
            vec![host.clone()]
        } else {
            remote.platforms.clone()
        };
        let want = requested.cloned().unwrap_or_else(|| host.clone());
        if let Some(p) = platforms.iter().find(|p| p.matches(&want)) {
            return Ok(p.clone());
        }
        // A single-platform image (no manifest list) pulls whatever it is when no platform is asked for.
        if requested.is_none() && platforms.len() == 1 {
            return Ok(platforms[0].clone());
        }
        Err(format!(
            "no matching manifest for {want} in the manifest list entries"
        ))
    }

    /// Adds (or re-points) the tag `r` to the image for `platform`. Returns the image ID.
    pub fn commit_image(&self, st: &mut State, r: &Reference, platform: Platform) -> String {
        let remote = st.registry.lookup(r);
        let id = format!(
            "sha256:{}",
            st.ids
                .content_hash(&format!("image:{}:{}", r.repo, platform))
        );
        let digest = format!(
            "{}@sha256:{}",
            r.repo,
            st.ids.content_hash(&format!("digest:{}", r.repo))
        );
        let tag = r.to_string();
        for img in st.images.iter_mut() {
            if img.id != id {
                img.repo_tags.retain(|t| *t != tag);
            }
        }
        st.images.retain(|i| !i.repo_tags.is_empty() || i.id == id);
        let now = self.clock.now();
        if let Some(img) = st.images.iter_mut().find(|i| i.id == id) {
            if !r.is_digest() && !img.repo_tags.contains(&tag) {
                img.repo_tags.push(tag);
            }
            if !img.repo_digests.contains(&digest) {
                img.repo_digests.push(digest);
            }
        } else {
            st.images.push(Image {
                id: id.clone(),
                repo_tags: if r.is_digest() { vec![] } else { vec![tag] },
                repo_digests: vec![digest],
                platform,
                created: now,
                size: 4_404_000,
                config: remote.config,
            });
        }
        id
    }

    // ---- containers ----

    pub fn new_output() -> Arc<Mutex<Output>> {
        Arc::new(Mutex::new(Output::default()))
    }

    pub fn append_output(&self, id: &str, gen: u64, stream: Stream, data: bytes::Bytes) {
        let st = self.lock();
        let Some(c) = st.containers.get(id) else {
            return;
        };
        if c.run_gen != gen || !c.running() {
            return;
        }
        let mut out = c.output.lock().unwrap_or_else(|e| e.into_inner());
        out.push(LogEntry {
            stream,
            at: self.clock.now(),
            data,
        });
        drop(out);
        drop(st);
        self.notify();
    }

    /// The process of run `gen` exited with `code`.
    pub fn exit(&self, id: &str, gen: u64, code: i64, oom: bool) {
        let mut st = self.lock();
        self.exit_locked(&mut st, id, gen, code, oom);
    }

    pub fn remove_locked(&self, st: &mut State, id: &str) {
        self.container_event(st, id, "destroy", &[]);
        if let Some(mut c) = st.containers.remove(id) {
            if let Some(r) = c.runner.take() {
                r.handle.abort();
            }
            c.output
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_closed(true);
            st.removed.insert(c.id.clone(), c.exit_code);
        }
        self.notify();
    }

    /// Delivers `signal` to a running container: SIGKILL always ends it; other signals
    /// end it with 128+signal unless its behaviour ignores them.
    pub fn signal_locked(&self, st: &mut State, id: &str, signal: i64) {
        let Some(c) = st.containers.get(id) else {
            return;
        };
        if !c.running() {
            return;
        }
        let ignores = c.runner.as_ref().is_some_and(|r| r.ignore_signals);
        let gen = c.run_gen;
        self.container_event(st, id, "kill", &[("signal", signal.to_string())]);
        if signal == 9 || !ignores {
            self.exit_locked(st, id, gen, 128 + signal, false);
        }
    }

    /// Ends a running container as the OOM killer would.
    pub fn oom_kill_locked(&self, st: &mut State, id: &str) {
        let gen = st.containers.get(id).map(|c| c.run_gen).unwrap_or_default();
        self.exit_locked(st, id, gen, 137, true);
    }

    pub fn subject_behaviour(st: &State, c: &Container) -> Behaviour {
        let subject = Subject {
            labels: &c.labels,
            image: &c.image_ref,
            env: &c.env,
        };
        crate::behaviour::choose(&st.rules, &subject, &c.path, &c.args)
    }

    /// Kills everything and forgets all containers (a daemon restart without live-restore).
    pub fn lose_containers(&self) {
        let mut st = self.lock();
        let ids: Vec<String> = st.containers.keys().cloned().collect();
        for id in ids {
            if let Some(mut c) = st.containers.remove(&id) {
                if let Some(r) = c.runner.take() {
                    r.handle.abort();
                }
                c.output
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_closed(true);
                st.removed.insert(id, 137);
            }
        }
        self.notify();
    }
    /// `exit` for callers that already hold the lock.
    pub fn exit_locked(&self, st: &mut State, id: &str, gen: u64, code: i64, oom: bool) {
        let now = self.clock.now();
        let Some(c) = st.containers.get_mut(id) else {
            return;
        };
        if c.run_gen != gen || !c.running() {
            return;
        }
        if let Some(r) = c.runner.take() {
            r.handle.abort();
        }
        c.status = Status::Exited;
        c.exit_code = code;
        c.oom_killed = oom;
        c.pid = 0;
        c.finished_at = Some(now);
        c.exits += 1;
        c.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_closed(true);
        let auto_remove = c.auto_remove;
        if oom {
            self.container_event(st, id, "oom", &[]);
        }
        self.container_event(st, id, "die", &[("exitCode", code.to_string())]);
        if auto_remove {
            self.remove_locked(st, id);
        }
        self.notify();
    }
}
