//! The run supervisor: the launcher's event loop. It takes backend messages, operator
//! signals and the ends of run and outbox tasks, decides which runs start, and publishes
//! the worker's status for heartbeats.
//!
//! # Capacity model
//! One launcher process is ONE worker registration with N slots (`--capacity`, default 1),
//! not N registrations. One MQTT identity means one connection, one Last Will and one set
//! of heartbeats carrying `capacity` and the held runs, so the backend sees the truth in a
//! single message (free slots = capacity - runs.len()), a crash fails every run of the
//! process at once instead of leaving N half-dead workers, and drain/cycle act on the
//! process as a whole. Buildkite's `--spawn N` registers N agents instead; that doubles
//! the connections and makes "which agent owns which container" a per-slot question.
//!
//! Slots are taken when a `run.scheduled` is accepted (before the claim) and given back
//! when the run's container is removed, so no more than N containers ever exist.
//! A `run.scheduled` arriving when full is deferred: claimed, in order, when a slot frees.
//! The backend frees a slot as soon as it records a run's terminal state, so it can offer
//! the next run a moment before this side has removed the finished container; if the
//! backend gives the run to another worker meanwhile, the claim here is refused (409).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use protocol::api::{reason_codes, Reason, TransitionRequest};
use protocol::messages::{ServerMessage, WorkerState};
use protocol::{Arch, RunState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

use crate::clock::sleep_until_opt;
use crate::container_spec::Ids;
use crate::error::{Error, Fatal};
use crate::interruption::Notice;
use crate::lifecycle::{ExitOutcome, Signal, SignalStages, Stage};
use crate::masking::Masker;
use crate::metrics::Metrics;
use crate::outbox::{self, FatalTx, OutboxDeps, OutboxHandle, Report};
use crate::ports::{Backend, BackendEvent, BinaryStore, ContainerRuntime, WorkerStatus};
use crate::run::{self, RunContext, RunEnd, StdoutLogs, StopRequest};
use crate::settings::Settings;

mod fatal_exit;
mod interruption;
mod prefetch;
mod seen_runs;
use fatal_exit::recv_opt;
use prefetch::Prefetcher;
use seen_runs::SeenRuns;

/// Offers kept while every slot is busy (beyond this, offers are turned down).
const MAX_DEFERRED: usize = 64;

/// Run ULIDs remembered for dedupe. A run.scheduled older than this many runs is far past
/// any redelivery window, and its claim would be refused anyway.
pub const SEEN_RUNS: usize = 16_384;
/// After the second signal: how long, beyond the stop grace, to wait for canceled runs to
/// be reported before exiting anyway. Also how long, beyond the grace, a fatal exit waits
/// for the runs' containers to be stopped and removed.
pub const CANCEL_SLACK: Duration = Duration::from_secs(30);
/// After that wait: how long to try removing what is still there.
pub(crate) const SWEEP_LIMIT: Duration = Duration::from_secs(10);

/// The adapters the core talks to.
#[derive(Clone)]
pub struct Ports {
    pub backend: Arc<dyn Backend>,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub store: Arc<dyn BinaryStore>,
    pub workspaces: Arc<dyn crate::workspace::Workspaces>,
}

pub struct Supervisor {
    settings: Settings,
    ids: Ids,
    arch: Arch,
    ports: Ports,
    events: mpsc::Receiver<BackendEvent>,
    status: watch::Sender<WorkerStatus>,
    held_at_start: Vec<String>,
    metrics: Metrics,
    stdout: Option<StdoutLogs>,
    outside_fatal: Option<oneshot::Receiver<Fatal>>,
    interruptions: Option<mpsc::Receiver<Notice>>,
}

impl Supervisor {
    /// `arch` is the Docker daemon's; `status` feeds heartbeats (see [`status_channel`]).
    ///
    /// Running a launcher in-process (tests, simulations) with any adapters:
    /// ```ignore
    /// let (status_tx, status_rx) = status_channel(settings.capacity);
    /// let (events_tx, events_rx) = tokio::sync::mpsc::channel(64); // BackendEvent in
    /// let (signals_tx, signals_rx) = tokio::sync::mpsc::channel(8); // Signal in
    /// let sup = Supervisor::new(settings, ids, Arch::Amd64,
    ///     Ports { backend, runtime, store, workspaces },
    ///     events_rx, status_tx).with_held_runs(held);
    /// let outcome = tokio::spawn(sup.run(signals_rx)); // Result<ExitOutcome, Error>
    /// signals_tx.send(Signal::Terminate).await?;      // 1st: drain
    /// ```
    pub fn new(
        settings: Settings,
        ids: Ids,
        arch: Arch,
        ports: Ports,
        events: mpsc::Receiver<BackendEvent>,
        status: watch::Sender<WorkerStatus>,
    ) -> Supervisor {
        let stdout = settings.run_logs_on_stdout.then(StdoutLogs::process);
        Supervisor {
            settings,
            ids,
            arch,
            ports,
            events,
            status,
            held_at_start: Vec::new(),
            metrics: Metrics::new(),
            stdout,
            outside_fatal: None,
            interruptions: None,
        }
    }

    /// Runs the backend says this worker held before a restart (`RegisterResponse.held_runs`).
    pub fn with_held_runs(mut self, runs: Vec<String>) -> Supervisor {
        self.held_at_start = runs;
        self
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> Supervisor {
        self.metrics = metrics;
        self
    }

    /// A fatal error found outside the supervisor (the MQTT session stopping for good). The
    /// supervisor stops and removes its runs' containers, then returns that error.
    pub fn with_fatal(mut self, fatal: oneshot::Receiver<Fatal>) -> Supervisor {
        self.outside_fatal = Some(fatal);
        self
    }

    /// Interruption notices (`crate::interruption::spawn`; see `interruption.rs`).
    pub fn with_interruptions(mut self, notices: mpsc::Receiver<Notice>) -> Supervisor {
        self.interruptions = Some(notices);
        self
    }

    /// Where run logs go when `settings.run_logs_on_stdout` is set (tests capture them).
    pub fn with_stdout_logs(mut self, stdout: StdoutLogs) -> Supervisor {
        if self.settings.run_logs_on_stdout {
            self.stdout = Some(stdout);
        }
        self
    }

    /// Serves until drained, cycled, signalled out, or a fatal error.
    pub async fn run(self, signals: mpsc::Receiver<Signal>) -> Result<ExitOutcome, Error> {
        let (fatal, fatal_rx) = FatalTx::channel();
        let (connected, _) = watch::channel(0u64);
        let (claim_notices_tx, claim_notices_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(RunContext {
            masker: Masker::new(
                self.settings
                    .masked_values
                    .iter()
                    .map(crate::secret::ExposeSecret::expose_secret),
            ),
            settings: self.settings,
            ids: self.ids,
            arch: self.arch,
            backend: self.ports.backend,
            runtime: self.ports.runtime,
            store: self.ports.store,
            workspaces: self.ports.workspaces,
            stdout: self.stdout,
            metrics: self.metrics,
            fatal,
        });
        let mut lp = Loop {
            capacity: ctx.settings.capacity.max(1) as usize,
            prefetch: Prefetcher::new(ctx.store.clone()),
            ctx,
            status: self.status,
            connected,
            connected_once: false,
            claim_notices_tx,
            seen: SeenRuns::new(SEEN_RUNS),
            deferred: VecDeque::new(),
            active: HashMap::new(),
            run_ids: HashMap::new(),
            runs: JoinSet::new(),
            outbox_ids: HashMap::new(),
            outboxes: JoinSet::new(),
            held: BTreeSet::new(),
            stages: SignalStages::default(),
            backend_drained: false,
            exiting_on_error: false,
            cycling: false,
            events_closed: false,
            cancel_deadline: None,
            interruption: interruption::Interruption::new(self.interruptions),
        };
        lp.reap(&self.held_at_start).await;
        lp.publish();
        lp.serve(
            self.events,
            signals,
            fatal_rx,
            claim_notices_rx,
            self.outside_fatal,
        )
        .await
    }
}

/// A fresh status channel for [`Supervisor::new`]; hand the receiver to the heartbeat
/// publisher.
pub fn status_channel(
    capacity: u32,
) -> (watch::Sender<WorkerStatus>, watch::Receiver<WorkerStatus>) {
    watch::channel(WorkerStatus {
        state: WorkerState::Idle,
        runs: Vec::new(),
        capacity,
        interruption: None,
    })
}

struct Loop {
    ctx: Arc<RunContext>,
    capacity: usize,
    status: watch::Sender<WorkerStatus>,
    /// Bumped on every (re)connection; outboxes retry at once when it moves.
    connected: watch::Sender<u64>,
    connected_once: bool,
    /// The ULID of each run whose claim the backend granted (it is then held).
    claim_notices_tx: mpsc::UnboundedSender<String>,
    seen: SeenRuns,
    /// Runs offered while every slot was busy, claimed in order as slots free. The backend
    /// frees a slot when it records a terminal state and may offer the next run before this
    /// side has removed the finished run's container; turning such offers down would leave
    /// the run waiting a whole offer period for nothing.
    deferred: VecDeque<String>,
    /// Runs holding a slot, with the way to stop them.
    active: HashMap<String, watch::Sender<Option<StopRequest>>>,
    run_ids: HashMap<Id, String>,
    runs: JoinSet<RunEnd>,
    outbox_ids: HashMap<Id, String>,
    outboxes: JoinSet<String>,
    /// Claimed and not yet reported terminal (what heartbeats carry).
    held: BTreeSet<String>,
    /// Worker-binary prefetches; aborted when the supervisor ends.
    prefetch: Prefetcher,
    stages: SignalStages,
    backend_drained: bool,
    /// A fatal error came: the runs are being stopped before exiting.
    exiting_on_error: bool,
    cycling: bool,
    events_closed: bool,
    cancel_deadline: Option<Instant>,
    interruption: interruption::Interruption,
}

impl Loop {
    async fn serve(
        &mut self,
        mut events: mpsc::Receiver<BackendEvent>,
        mut signals: mpsc::Receiver<Signal>,
        mut fatal: mpsc::UnboundedReceiver<Fatal>,
        mut claim_notices: mpsc::UnboundedReceiver<String>,
        mut outside_fatal: Option<oneshot::Receiver<Fatal>>,
    ) -> Result<ExitOutcome, Error> {
        let mut signals_open = true;
        loop {
            if let Some(done) = self.finished() {
                self.prefetch.abort();
                return done;
            }
            tokio::select! {
                // Order matters: a claim notice is always handled before its run's end.
                biased;
                Some(fatal) = fatal.recv() => {
                    let e = Error::from(fatal);
                    match &e {
                        Error::Unauthorized(message) => tracing::error!(%message,
                            "the backend refused this worker's credentials; \
                            stopping the runs in flight, then exiting"),
                        other => tracing::error!(error = %other, "stopping the runs in flight, then exiting"),
                    }
                    return Err(self.stop_runs_before_exit(e).await);
                }
                Some(e) = recv_opt(&mut outside_fatal) => {
                    let e = Error::from(e);
                    tracing::error!(error = %e, "stopping the runs in flight, then exiting");
                    return Err(self.stop_runs_before_exit(e).await);
                }
                Some(run) = claim_notices.recv() => {
                    if self.active.contains_key(&run) {
                        self.held.insert(run);
                        self.publish();
                    }
                }
                Some(ended) = self.runs.join_next_with_id() => self.on_run_end(ended),
                Some(ended) = self.outboxes.join_next_with_id() => self.on_outbox_end(ended),
                () = self.prefetch.ended() => self.prefetch.start_next(),
                _ = sleep_until_opt(self.cancel_deadline) => {
                    tracing::warn!(undelivered = ?self.held, "runs canceled but not all reported in time; exiting");
                    return Ok(ExitOutcome::Canceled);
                }
                _ = sleep_until_opt(self.interruption.stop_at) => self.stop_for_interruption(),
                Some(n) = interruption::recv(&mut self.interruption.rx) => self.on_interruption(n),
                signal = signals.recv(), if signals_open => match signal {
                    Some(s) => self.on_signal(s),
                    None => signals_open = false,
                },
                event = events.recv(), if !self.events_closed => match event {
                    Some(e) => self.on_event(e),
                    None => {
                        tracing::error!("the backend's message channel closed; finishing the runs in flight, then exiting");
                        self.events_closed = true;
                        self.publish();
                    }
                },
            }
        }
    }

    /// Whether the loop is done, and how.
    fn finished(&self) -> Option<Result<ExitOutcome, Error>> {
        let stage = self.stages.stage();
        if stage == Stage::Exiting {
            return Some(Ok(ExitOutcome::Immediate));
        }
        let idle = self.active.is_empty() && self.outboxes.is_empty();
        if !idle {
            return None;
        }
        match stage {
            Stage::Canceling => Some(Ok(ExitOutcome::Canceled)),
            Stage::Draining => Some(Ok(ExitOutcome::Drained)),
            _ if self.cycling => Some(Ok(ExitOutcome::Cycled)),
            _ if self.interruption.notice.is_some() => Some(Ok(ExitOutcome::Drained)),
            _ if self.events_closed => Some(Err(Error::EventsClosed)),
            _ => None,
        }
    }

    fn draining(&self) -> bool {
        self.backend_drained
            || self.exiting_on_error
            || self.cycling
            || self.events_closed
            || self.interruption.notice.is_some()
            || self.stages.stage() >= Stage::Draining
    }

    fn publish(&self) {
        let state = if self.draining() {
            WorkerState::Drained
        } else if self.held.is_empty() && self.active.is_empty() {
            WorkerState::Idle
        } else {
            WorkerState::Busy
        };
        let next = WorkerStatus {
            state,
            runs: self.held.iter().cloned().collect(),
            capacity: self.capacity as u32,
            interruption: self.interruption.notice.clone(),
        };
        self.status.send_if_modified(|s| {
            if *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
    }

    fn outbox(&mut self, run_ulid: &str) -> OutboxHandle {
        let (handle, deliver) = outbox::new(
            run_ulid.to_string(),
            OutboxDeps {
                backend: self.ctx.backend.clone(),
                connected: self.connected.subscribe(),
                fatal: self.ctx.fatal.clone(),
                seed: self.ctx.seed(run_ulid, 4),
                metrics: self.ctx.metrics.clone(),
                max_queued_bytes: self.ctx.settings.output_buffer_bytes,
            },
        );
        let id = self.outboxes.spawn(deliver).id();
        self.outbox_ids.insert(id, run_ulid.to_string());
        handle
    }

    async fn reap(&mut self, held_at_start: &[String]) {
        let worker = self.ctx.ids.worker_ulid.clone();
        let runs = crate::reaper::reap(self.ctx.runtime.as_ref(), &worker, held_at_start).await;
        for run in runs {
            tracing::warn!(run_ulid = %run, "run held by an earlier launcher of this worker; reporting it failed");
            self.seen.insert(&run);
            self.held.insert(run.clone());
            let outbox = self.outbox(&run);
            outbox.push(Report::Transition(TransitionRequest {
                worker_ulid: worker.clone(),
                state: RunState::Failed,
                exit_code: None,
                reason: Some(Reason::new(
                    reason_codes::LAUNCHER_RESTARTED,
                    "the launcher running this run restarted; the run's container was removed",
                )),
                worker_version: None,
            }));
        }
    }

    fn on_event(&mut self, event: BackendEvent) {
        match event {
            BackendEvent::Connected => {
                if self.connected_once {
                    self.ctx.metrics.reconnected();
                    tracing::info!("reconnected to the backend; retrying undelivered reports");
                } else {
                    tracing::info!("connected to the backend");
                }
                self.connected_once = true;
                self.connected.send_modify(|n| *n = n.wrapping_add(1));
            }
            BackendEvent::Disconnected(why) => {
                tracing::warn!(reason = %why, "lost the backend's message channel; runs go on and reports are kept");
            }
            BackendEvent::Message(m) => self.on_message(m),
        }
    }

    fn on_message(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::RunScheduled {
                run_ulid,
                message_id,
            } => {
                if self.seen.contains(&run_ulid) {
                    tracing::debug!(%run_ulid, %message_id, "duplicate run.scheduled ignored");
                } else if self.draining() {
                    tracing::info!(%run_ulid, "draining: not taking the run");
                } else if self.active.len() >= self.capacity {
                    if !self.deferred.contains(&run_ulid) && self.deferred.len() < MAX_DEFERRED {
                        tracing::info!(%run_ulid, capacity = self.capacity,
                            "run.scheduled while every slot is busy: claiming it when one frees");
                        self.deferred.push_back(run_ulid);
                    } else {
                        tracing::warn!(%run_ulid, "run.scheduled while every slot is busy and the deferred queue is full: not claiming it");
                    }
                } else {
                    self.seen.insert(&run_ulid);
                    self.start_run(run_ulid);
                }
            }
            ServerMessage::RunCancel {
                run_ulid, reason, ..
            } => match self.active.get(&run_ulid) {
                Some(stop) => {
                    tracing::info!(%run_ulid, reason = ?reason, "cancel requested");
                    stop.send_if_modified(|s| {
                        if s.is_none() {
                            *s = Some(StopRequest::Cancel(reason));
                            true
                        } else {
                            false
                        }
                    });
                }
                None => tracing::debug!(%run_ulid, "cancel for a run not running here; ignored"),
            },
            // Idempotent: the backend repeats a command a heartbeat shows was not obeyed.
            ServerMessage::Drain { .. } if self.backend_drained => {
                tracing::debug!("drain requested again; already drained");
            }
            ServerMessage::Drain { .. } => {
                tracing::info!("drain requested by the backend: taking no new runs");
                self.backend_drained = true;
                self.publish();
            }
            ServerMessage::Undrain { .. } if !self.backend_drained => {
                tracing::debug!("undrain requested; not drained by the backend");
            }
            ServerMessage::Undrain { .. } => {
                tracing::info!("undrain requested by the backend");
                self.backend_drained = false;
                self.publish();
            }
            ServerMessage::Cycle { .. } => {
                tracing::info!("cycle requested by the backend: draining, then exiting");
                self.cycling = true;
                self.publish();
            }
            ServerMessage::BinaryPublished { binary, .. } => {
                if binary.arch == self.ctx.arch {
                    tracing::info!(version = %binary.version, "new worker binary published");
                    self.prefetch.offer(binary);
                }
            }
        }
    }

    fn start_run(&mut self, run_ulid: String) {
        tracing::info!(%run_ulid, "run scheduled; claiming it");
        let (stop_tx, stop_rx) = watch::channel(None);
        let outbox = self.outbox(&run_ulid);
        let claim_notices = self.claim_notices_tx.clone();
        let claimed = run_ulid.clone();
        let on_claimed: run::OnClaimed = Box::new(move || {
            let _ = claim_notices.send(claimed);
        });
        let id = self
            .runs
            .spawn(run::execute(
                self.ctx.clone(),
                run_ulid.clone(),
                stop_rx,
                outbox,
                on_claimed,
            ))
            .id();
        self.run_ids.insert(id, run_ulid.clone());
        self.active.insert(run_ulid, stop_tx);
        self.publish();
    }

    fn on_run_end(&mut self, ended: Result<(Id, RunEnd), tokio::task::JoinError>) {
        let (id, end) = match ended {
            Ok((id, end)) => (id, end),
            Err(e) => {
                tracing::error!(error = %e, "a run task died; its container is reaped at the next start");
                (e.id(), RunEnd::Fatal)
            }
        };
        let Some(run_ulid) = self.run_ids.remove(&id) else {
            return;
        };
        tracing::info!(%run_ulid, outcome = end.outcome(), "run ended");
        if matches!(end, RunEnd::ClaimAbandoned | RunEnd::NotClaimedYet) {
            // Never claimed, so never started: a redelivery may try again (the backend's
            // one granted claim is what keeps a run to one start).
            self.seen.forget(&run_ulid);
        }
        self.ctx.metrics.run_ended(end.outcome());
        self.active.remove(&run_ulid);
        self.start_deferred();
        if !self.outbox_ids.values().any(|r| *r == run_ulid) {
            self.held.remove(&run_ulid);
        }
        self.publish();
    }

    /// Claims deferred offers while slots are free. A run the backend has meanwhile given
    /// to another worker is refused at the claim (409) and never started.
    fn start_deferred(&mut self) {
        if self.draining() {
            self.deferred.clear();
            return;
        }
        while self.active.len() < self.capacity {
            let Some(run_ulid) = self.deferred.pop_front() else {
                break;
            };
            if self.seen.contains(&run_ulid) {
                continue;
            }
            self.seen.insert(&run_ulid);
            self.start_run(run_ulid);
        }
    }

    fn on_outbox_end(&mut self, ended: Result<(Id, String), tokio::task::JoinError>) {
        let id = match &ended {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let Some(run_ulid) = self.outbox_ids.remove(&id) else {
            return;
        };
        tracing::debug!(%run_ulid, "every report of the run delivered");
        if !self.active.contains_key(&run_ulid) {
            self.held.remove(&run_ulid);
        }
        self.publish();
    }

    fn on_signal(&mut self, signal: Signal) {
        match self.stages.on_signal(signal) {
            Stage::Serving => {}
            Stage::Draining => {
                tracing::info!(?signal, runs = self.active.len(),
                    "draining: no new runs; exiting when the runs in flight are done (signal again to cancel them)");
            }
            Stage::Canceling => {
                tracing::warn!(
                    ?signal,
                    runs = self.active.len(),
                    "canceling the runs in flight (signal again to exit at once)"
                );
                for stop in self.active.values() {
                    stop.send_replace(Some(StopRequest::Shutdown));
                }
                self.cancel_deadline =
                    Some(Instant::now() + self.ctx.settings.stop_grace + CANCEL_SLACK);
            }
            Stage::Exiting => tracing::warn!(?signal, "exiting at once"),
        }
        self.publish();
    }
}

#[cfg(test)]
mod tests;
