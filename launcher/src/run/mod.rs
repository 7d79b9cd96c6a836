//! One run, from claim to removed container.
//!
//! claim -> (lease kept alive) -> `preparing` -> worker binary (the one the claim named,
//! else asked for; pinned) -> initialization policy (if configured; a deny fails the run)
//! -> image (pulled, platform checked), all within the prepare deadline -> container
//! created and started -> `running` -> output streamed while the logs-silence and run
//! timeouts, cancel and lease loss are watched ->
//! exit status -> terminal report -> container removed -> binary unpinned.
//!
//! Every report goes through the run's outbox, so the run never waits for the backend.
//!
//! By phase: `claim.rs`, `prepare.rs` (binary, policy, image, platform), `container.rs`
//! (output, timeouts, stop), `finish.rs` (verdict, terminal report, removal); this file
//! holds the run's types and its course from claim to removal.

mod claim;
mod container;
mod finish;
pub mod lease;
pub mod log;
mod prepare;
#[cfg(test)]
mod workspace_tests;

use std::sync::Arc;
use std::time::Duration;

use protocol::api::{reason_codes, RunSpec, WorkerBinary};
use protocol::{Arch, RunState};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::container_spec::{self, Ids};
use crate::masking::Masker;
use crate::metrics::Metrics;
use crate::outbox::{FatalTx, OutboxHandle};
use crate::ports::{Backend, BinaryStore, ContainerRuntime, ContainerSpec};
use crate::settings::Settings;
use crate::workspace::WorkspaceGuard;

use self::claim::claim;
use self::finish::{
    arch_mismatch_after_start, docker_failure, mentions_exec_format, remove_container,
};
use self::log::RunLog;
pub use self::log::{LineSink, StdoutLogs, WallClock};
use self::prepare::prepare;

/// Why the supervisor wants a run to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopRequest {
    /// `run.cancel` from the backend, with its reason.
    Cancel(Option<String>),
    /// The operator's second signal.
    Shutdown,
    /// The launcher is exiting on a fatal error (credentials refused, MQTT stopped).
    Fatal,
    /// The machine is being reclaimed at `deadline` (RFC 3339) and the run is still going
    /// a stop grace before it (`crate::interruption`): reported failed.
    Interruption { deadline: String },
}

/// How a run task ended, for the supervisor and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The claim was refused: nothing was started, and the run never will be here.
    NotClaimed,
    /// The claim was refused while the run stayed `scheduled` (this worker drained or at
    /// capacity, as the backend counts): nothing was started; a redelivered
    /// `run.scheduled` may claim it.
    NotClaimedYet,
    /// The claim could not be made (the backend unreachable, or stopped while retrying):
    /// nothing was started; a redelivered `run.scheduled` may try again.
    ClaimAbandoned,
    /// The terminal state that was queued for the backend.
    Reported(RunState),
    /// The lease was lost: the container was stopped and nothing more reported.
    LeaseLost,
    /// The backend refused our credentials; the process is exiting.
    Fatal,
}

impl RunEnd {
    pub fn outcome(&self) -> &'static str {
        match self {
            RunEnd::NotClaimed | RunEnd::NotClaimedYet => "not_claimed",
            RunEnd::ClaimAbandoned => "claim_abandoned",
            RunEnd::Reported(s) => s.as_str(),
            RunEnd::LeaseLost => "lease_lost",
            RunEnd::Fatal => "fatal",
        }
    }
}

/// What every run shares.
pub(crate) struct RunContext {
    pub settings: Settings,
    pub ids: Ids,
    pub arch: Arch,
    pub backend: Arc<dyn Backend>,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub store: Arc<dyn BinaryStore>,
    pub workspaces: Arc<dyn crate::workspace::Workspaces>,
    pub masker: Masker,
    pub stdout: Option<StdoutLogs>,
    pub metrics: Metrics,
    pub fatal: FatalTx,
}

impl RunContext {
    /// A per-run, per-purpose seed: replays with the launcher's seed, independent of the
    /// order in which runs arrive.
    pub fn seed(&self, run_ulid: &str, purpose: u64) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in run_ulid.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.settings.seed ^ h ^ purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// A failure that ends the run with a reported state and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    state: RunState,
    code: &'static str,
    message: String,
    exit_code: Option<i64>,
}

impl Failure {
    fn failed(code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            state: RunState::Failed,
            code,
            message: message.into(),
            exit_code: None,
        }
    }
}

enum Abort {
    Fail(Failure),
    Stopped(StopRequest),
    LeaseLost(String),
    Fatal,
}

impl From<Failure> for Abort {
    fn from(f: Failure) -> Abort {
        Abort::Fail(f)
    }
}

/// Called with the run ULID once the claim is granted (the run is then "held").
pub(crate) type OnClaimed = Box<dyn FnOnce() + Send>;

pub(crate) async fn execute(
    ctx: Arc<RunContext>,
    run_ulid: String,
    mut stop: watch::Receiver<Option<StopRequest>>,
    outbox: OutboxHandle,
    on_claimed: OnClaimed,
) -> RunEnd {
    let span = tracing::info_span!("run", run_ulid = %run_ulid);
    async move {
        let claim = match claim(&ctx, &run_ulid, &mut stop).await {
            Ok(c) => c,
            Err(end) => return end,
        };
        on_claimed();
        let granted_at = Instant::now();
        tracing::info!(stack_id = %claim.run.stack_id, run_type = ?claim.run.run_type,
            lease_ttl_ms = claim.lease.ttl_ms, "claim granted");
        let (lost_tx, lost_rx) = watch::channel(None);
        let keeper = tokio::spawn(lease::keep(
            ctx.backend.clone(),
            run_ulid.clone(),
            Duration::from_millis(claim.lease.ttl_ms),
            lost_tx,
            ctx.fatal.clone(),
            ctx.seed(&run_ulid, 1),
        ));
        let _keeper = AbortOnDrop(keeper);
        let mut run = Run {
            log: RunLog::new(
                &run_ulid,
                &claim.run.stack_id,
                outbox.clone(),
                ctx.masker.clone(),
                ctx.stdout.clone(),
            ),
            ctx: ctx.clone(),
            spec: claim.run,
            claimed_binary: claim.worker_binary,
            image: String::new(),
            outbox,
            worker_version: None,
            stop,
            lost: lost_rx,
            granted_at,
        };
        run.go().await
    }
    .instrument(span)
    .await
}

struct Run {
    ctx: Arc<RunContext>,
    spec: RunSpec,
    /// The worker binary the claim's answer named (taken by `prepare`).
    claimed_binary: Option<WorkerBinary>,
    /// The image the run uses (known once prepared).
    image: String,
    log: RunLog,
    outbox: OutboxHandle,
    worker_version: Option<String>,
    stop: watch::Receiver<Option<StopRequest>>,
    lost: watch::Receiver<Option<String>>,
    granted_at: Instant,
}

impl Run {
    async fn go(&mut self) -> RunEnd {
        // A cancel that arrived while claiming: the run is ours now, so say so and stop.
        let stopped = self.stop.borrow().clone();
        if let Some(s) = stopped {
            return self.conclude(Abort::Stopped(s));
        }
        self.report(RunState::Preparing, None, None);
        // What preparing is doing, for the reason if it takes too long.
        let mut phase = String::from("starting");
        let limit = self.ctx.settings.prepare_timeout;
        let claimed_binary = self.claimed_binary.take();
        let prepared = tokio::select! {
            r = prepare(&self.ctx, &self.spec, claimed_binary, &mut self.log, &mut phase) => r,
            _ = tokio::time::sleep(limit) => Err(Abort::Fail(Failure {
                state: RunState::TimedOut,
                code: reason_codes::PREPARE_TIMEOUT,
                message: format!(
                    "preparing took longer than {} ({phase}); no container was created \
                     (SPACELIFT_LAUNCHER_PREPARE_TIMEOUT)",
                    human(limit)
                ),
                exit_code: None,
            })),
            s = stop_requested(&mut self.stop) => Err(Abort::Stopped(s)),
            m = lease_lost(&mut self.lost) => Err(Abort::LeaseLost(m)),
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(abort) => return self.conclude(abort),
        };
        self.worker_version = Some(prepared.binary.version.clone());
        self.image = prepared.image.clone();

        // The pull may have taken minutes: the file must still be the one verified.
        if let Err(e) = self.ctx.store.still_verified(&prepared.binary).await {
            self.ctx.metrics.binary_failure();
            return self.conclude(
                Failure::failed(
                    reason_codes::WORKER_BINARY_UNAVAILABLE,
                    format!("the worker binary is no longer the one verified: {e}"),
                )
                .into(),
            );
        }
        // Two mkdirs and chowns: quick enough to do in place.
        let workspace = match self.ctx.workspaces.create(&self.spec.run_ulid) {
            Ok(path) => path,
            Err(e) => {
                let why = format!("creating the run's workspace: {e}");
                return self.conclude(Failure::failed(reason_codes::CONTAINER_FAILED, why).into());
            }
        };
        // Removed on every way out from here, after the container (or, if this task is
        // aborted, when dropped).
        let workspace_guard = WorkspaceGuard::new(self.ctx.workspaces.clone(), &self.spec.run_ulid);
        let spec = container_spec::build(
            &self.ctx.settings,
            &self.spec,
            &prepared.image,
            &prepared.binary,
            &workspace,
            &self.ctx.ids,
        );
        let end = self.run_container(&spec, &prepared.image).await;
        workspace_guard.remove().await;
        drop(prepared);
        end
    }

    /// Creates, starts and supervises the container, and removes it.
    async fn run_container(&mut self, spec: &ContainerSpec, image: &str) -> RunEnd {
        let runtime = self.ctx.runtime.clone();
        let id = match runtime.create(spec).await {
            Ok(id) => id,
            Err(e) => {
                return self.conclude(
                    docker_failure(&e, reason_codes::CONTAINER_FAILED, "creating the container")
                        .into(),
                )
            }
        };
        tracing::info!(container = %id, image = %image, "container created");
        let end = match runtime.start(&id).await {
            Ok(()) => {
                self.ctx.metrics.spawn_latency(self.granted_at.elapsed());
                self.report(RunState::Running, None, None);
                self.supervise(&id).await
            }
            Err(e) => {
                let f = if mentions_exec_format(&e.to_string()) {
                    arch_mismatch_after_start(image, self.ctx.arch, &e.to_string())
                } else {
                    docker_failure(&e, reason_codes::CONTAINER_FAILED, "starting the container")
                };
                self.conclude(f.into())
            }
        };
        remove_container(runtime.as_ref(), &id, self.ctx.seed(&self.spec.run_ulid, 2)).await;
        end
    }
}

pub(crate) async fn stop_requested(stop: &mut watch::Receiver<Option<StopRequest>>) -> StopRequest {
    let got = stop.wait_for(Option::is_some).await.map(|v| v.clone());
    match got {
        Ok(Some(s)) => s,
        _ => std::future::pending().await,
    }
}

async fn lease_lost(lost: &mut watch::Receiver<Option<String>>) -> String {
    let got = lost.wait_for(Option::is_some).await.map(|v| v.clone());
    match got {
        Ok(Some(m)) => m,
        _ => std::future::pending().await,
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.checked_rem(60) == Some(0) {
        format!("{}m", s / 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
