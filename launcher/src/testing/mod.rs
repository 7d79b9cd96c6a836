//! In-memory adapters of the ports, with scriptable faults, for tests of the core on
//! paused tokio time. Each adapter bumps a shared "something happened" counter so tests
//! wait on events ([`ChangeCounter::until`]) instead of sleeping.
//!
//! One file per adapter (`backend.rs`, `runtime.rs`, `store.rs`); this one holds the
//! change counter, the stdout capture and the [`Harness`] that wires them to a supervisor.

mod backend;
mod runtime;
mod store;

pub use backend::*;
pub use runtime::*;
pub use store::*;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::messages::ServerMessage;
use protocol::Arch;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::container_spec::Ids;
use crate::error::{Error, Fatal};
use crate::lifecycle::{ExitOutcome, Signal};
use crate::ports::*;
use crate::run::{LineSink, StdoutLogs, WallClock};
use crate::settings::Settings;
use crate::supervisor::{status_channel, Ports, Supervisor};

/// A counter every adapter bumps on every change, so tests can wait for conditions.
#[derive(Clone)]
pub struct ChangeCounter {
    tick: Arc<watch::Sender<u64>>,
}

impl ChangeCounter {
    fn new() -> ChangeCounter {
        ChangeCounter {
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
                rx.changed().await.expect("change counter alive");
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
// Workspaces

/// Records workspaces instead of creating them: `/data/workspaces/<container name>`.
pub struct MemWorkspaces {
    /// Run ULIDs whose workspace exists.
    pub live: Mutex<std::collections::BTreeSet<String>>,
    /// Every `create` and `remove`, in order (`create R1`, `remove R1`).
    pub calls: Mutex<Vec<String>>,
    /// Makes `create` fail (as a full disk would).
    pub fail_create: std::sync::atomic::AtomicBool,
    changes: ChangeCounter,
}

impl MemWorkspaces {
    fn new(changes: ChangeCounter) -> MemWorkspaces {
        MemWorkspaces {
            live: Mutex::default(),
            calls: Mutex::default(),
            fail_create: Default::default(),
            changes,
        }
    }
}

impl crate::workspace::Workspaces for MemWorkspaces {
    fn create(&self, run_ulid: &str) -> Result<PathBuf, crate::workspace::WorkspaceError> {
        lock(&self.calls).push(format!("create {run_ulid}"));
        self.changes.bump();
        if self.fail_create.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::workspace::WorkspaceError::Io {
                what: "creating",
                path: "/data/workspaces".into(),
                source: std::io::Error::other("no space left on device"),
            });
        }
        lock(&self.live).insert(run_ulid.to_string());
        Ok(PathBuf::from("/data/workspaces").join(crate::container_spec::container_name(run_ulid)))
    }

    fn remove(&self, run_ulid: &str) -> Result<(), crate::workspace::WorkspaceError> {
        lock(&self.calls).push(format!("remove {run_ulid}"));
        lock(&self.live).remove(run_ulid);
        self.changes.bump();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Harness

pub struct Harness {
    pub changes: ChangeCounter,
    pub settings: Settings,
    pub backend: Arc<MemBackend>,
    pub runtime: Arc<MemRuntime>,
    pub store: Arc<MemBinaryStore>,
    pub workspaces: Arc<MemWorkspaces>,
    /// Used instead of `store` when set (a real on-disk cache).
    pub binary_store: Option<Arc<dyn BinaryStore>>,
    pub stdout: Arc<MemSink>,
    pub held_runs: Vec<String>,
    pub ids: Ids,
}

pub struct Running {
    pub events: mpsc::Sender<BackendEvent>,
    pub signals: mpsc::Sender<Signal>,
    pub interruptions: mpsc::Sender<crate::interruption::Notice>,
    pub status: watch::Receiver<WorkerStatus>,
    pub task: JoinHandle<Result<ExitOutcome, Error>>,
    fatal: Option<oneshot::Sender<Fatal>>,
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
        let changes = ChangeCounter::new();
        Harness {
            settings: Settings::isolated(PathBuf::from("/data")),
            backend: Arc::new(MemBackend::new(changes.clone())),
            runtime: Arc::new(MemRuntime::new(changes.clone())),
            store: Arc::new(MemBinaryStore {
                state: Arc::default(),
                changes: changes.clone(),
            }),
            workspaces: Arc::new(MemWorkspaces::new(changes.clone())),
            binary_store: None,
            stdout: Arc::default(),
            held_runs: Vec::new(),
            ids: ids(),
            changes,
        }
    }

    /// Waits until the backend holds a terminal report for `run`.
    pub async fn until_terminal(&self, run: &str) {
        let b = self.backend.clone();
        self.changes
            .until(&format!("{run} reported terminal"), || b.is_terminal(run))
            .await;
    }

    /// Waits until the backend has seen `run` running.
    pub async fn until_running(&self, run: &str) {
        let b = self.backend.clone();
        self.changes
            .until(&format!("{run} running"), || {
                b.states(run).contains(&protocol::RunState::Running)
            })
            .await;
    }

    pub fn start(&self) -> Running {
        self.start_with_metrics(crate::metrics::Metrics::new())
    }

    pub fn start_with_metrics(&self, metrics: crate::metrics::Metrics) -> Running {
        let (events_tx, events_rx) = mpsc::channel(64);
        let (signals_tx, signals_rx) = mpsc::channel(8);
        let (status_tx, status_rx) = status_channel(self.settings.capacity);
        let (fatal_tx, fatal_rx) = oneshot::channel();
        let (notices_tx, notices_rx) = mpsc::channel(4);
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
                workspaces: self.workspaces.clone(),
            },
            events_rx,
            status_tx,
        )
        .with_held_runs(self.held_runs.clone())
        .with_metrics(metrics)
        .with_fatal(fatal_rx)
        .with_interruptions(notices_rx)
        .with_stdout_logs(StdoutLogs {
            clock: Arc::new(FixedClock),
            sink: self.stdout.clone(),
        });
        let task = tokio::spawn(sup.run(signals_rx));
        Running {
            events: events_tx,
            signals: signals_tx,
            interruptions: notices_tx,
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
    pub fn fatal(&mut self, e: Fatal) {
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
