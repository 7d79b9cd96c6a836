//! One run, from claim to removed container.
//!
//! claim -> (lease kept alive) -> `preparing` -> worker binary (pinned) -> initialization
//! policy (if configured; a deny fails the run) -> image (pulled, platform checked), all
//! within the prepare deadline -> container created and started -> `running` -> output
//! streamed while the logs-silence and run timeouts, cancel and lease loss are watched ->
//! exit status -> terminal report -> container removed -> binary unpinned.
//!
//! Every report goes through the run's outbox, so the run never waits for the backend.

pub mod lease;
pub mod log;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use protocol::api::{reason_codes, ClaimResponse, Reason, RunSpec, TransitionRequest};
use protocol::{Arch, RunState};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::container_spec::{self, Ids};
use crate::init_policy::{Decision, InitPolicy, PolicyInput};
use crate::masking::Masker;
use crate::metrics::Metrics;
use crate::outbox::{FatalTx, OutboxHandle, Report};
use crate::ports::{
    Backend, BackendError, BinaryError, BinaryPin, BinaryStore, CachedBinary, ClaimOutcome,
    ContainerRuntime, ExitStatus, RuntimeError,
};
use crate::settings::Settings;

use self::log::RunLog;
pub use self::log::{LineSink, StdoutLogs, WallClock};

/// Claims retried on transient errors before the run is left to the backend.
const CLAIM_ATTEMPTS: u32 = 8;
/// Attempts at a verified worker binary (a corrupt download is retried, never executed).
const BINARY_ATTEMPTS: u32 = 3;
/// Pulls that fail for a reason that may pass are tried this many times in all.
const PULL_ATTEMPTS: u32 = 3;
const PULL_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Extra time, beyond the stop grace, for the daemon to confirm a stop.
const STOP_SLACK: Duration = Duration::from_secs(5);
/// How long to read the last output of a stopped container.
const DRAIN_OUTPUT: Duration = Duration::from_secs(2);
/// How long to wait for an exit status once output has ended.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
/// How long removal is retried while the daemon is unavailable. The run keeps its slot
/// meanwhile, which costs nothing: no run could start without the daemon anyway.
const REMOVE_PATIENCE: Duration = Duration::from_secs(300);

/// Why the supervisor wants a run to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopRequest {
    /// `run.cancel` from the backend, with its reason.
    Cancel(Option<String>),
    /// The operator's second signal.
    Shutdown,
    /// The launcher is exiting on a fatal error (credentials refused, MQTT stopped).
    Fatal,
}

/// How a run task ended, for the supervisor and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The claim was refused: nothing was started, and the run never will be here.
    NotClaimed,
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
            RunEnd::NotClaimed => "not_claimed",
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

async fn claim(
    ctx: &RunContext,
    run_ulid: &str,
    stop: &mut watch::Receiver<Option<StopRequest>>,
) -> Result<ClaimResponse, RunEnd> {
    let mut backoff = Backoff::standard(ctx.seed(run_ulid, 0));
    loop {
        match ctx.backend.claim(run_ulid).await {
            Ok(ClaimOutcome::Granted(c)) => return Ok(c),
            Ok(ClaimOutcome::Refused(why)) => {
                tracing::info!(reason = %why, "claim refused; not starting the run");
                return Err(RunEnd::NotClaimed);
            }
            Err(BackendError::Unauthorized { message }) => {
                ctx.fatal.send(message);
                return Err(RunEnd::Fatal);
            }
            Err(BackendError::Transient {
                message,
                retry_after,
            }) if backoff.attempts() + 1 < CLAIM_ATTEMPTS => {
                let delay = backoff.next_delay(retry_after);
                tracing::warn!(%message, ?delay, "claim failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(stop) => {
                        tracing::info!("run stopped before it could be claimed");
                        return Err(RunEnd::ClaimAbandoned);
                    }
                }
            }
            Err(e @ BackendError::Transient { .. }) => {
                tracing::warn!(error = %e, "claim failed repeatedly; leaving the run to the backend");
                return Err(RunEnd::ClaimAbandoned);
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; leaving the run to the backend");
                return Err(RunEnd::NotClaimed);
            }
        }
    }
}

struct Run {
    ctx: Arc<RunContext>,
    spec: RunSpec,
    /// The image the run uses (known once prepared).
    image: String,
    log: RunLog,
    outbox: OutboxHandle,
    worker_version: Option<String>,
    stop: watch::Receiver<Option<StopRequest>>,
    lost: watch::Receiver<Option<String>>,
    granted_at: Instant,
}

struct Prepared {
    binary: CachedBinary,
    _pin: BinaryPin,
    image: String,
}

/// What ended a started container.
enum Ended {
    Exited,
    Stopped(StopRequest),
    TimedOut(&'static str, String),
    LeaseLost(String),
    Docker(RuntimeError),
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
        let prepared = tokio::select! {
            r = prepare(&self.ctx, &self.spec, &mut self.log, &mut phase) => r,
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

        let spec = container_spec::build(
            &self.ctx.settings,
            &self.spec,
            &prepared.image,
            &prepared.binary,
            &self.ctx.ids,
        );
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
        let runtime = self.ctx.runtime.clone();
        let id = match runtime.create(&spec).await {
            Ok(id) => id,
            Err(e) => {
                return self.conclude(
                    docker_failure(&e, reason_codes::CONTAINER_FAILED, "creating the container")
                        .into(),
                )
            }
        };
        tracing::info!(container = %id, image = %prepared.image, "container created");
        let end = match runtime.start(&id).await {
            Ok(()) => {
                self.ctx.metrics.spawn_latency(self.granted_at.elapsed());
                self.report(RunState::Running, None, None);
                self.supervise(&id).await
            }
            Err(e) => {
                let f = if mentions_exec_format(&e.to_string()) {
                    arch_mismatch_after_start(&prepared.image, self.ctx.arch, &e.to_string())
                } else {
                    docker_failure(&e, reason_codes::CONTAINER_FAILED, "starting the container")
                };
                self.conclude(f.into())
            }
        };
        remove_container(runtime.as_ref(), &id, self.ctx.seed(&self.spec.run_ulid, 2)).await;
        drop(prepared);
        end
    }

    /// Follows a started container to its end and reports it.
    async fn supervise(&mut self, id: &str) -> RunEnd {
        let rt = self.ctx.runtime.clone();
        let settings = &self.ctx.settings;
        let mut output = match rt.logs(id).await {
            Ok(o) => Some(o),
            Err(e) => {
                // Without output we cannot enforce the silence timeout, but the run itself
                // may be fine: wait for it rather than kill it.
                tracing::warn!(error = %e, "cannot follow the container's output");
                None
            }
        };
        let started = Instant::now();
        let run_deadline = started + settings.run_timeout;
        // Silence can only be judged while the output can be read.
        let mut silence_deadline = output.as_ref().map(|_| started + settings.logs_timeout);
        let mut exec_format = false;
        let ended = loop {
            // While the outbox is full the output is left unread (in Docker), and silence
            // is not judged: it would be ours.
            let room = self.log.has_room();
            tokio::select! {
                _ = self.log.room(), if !room => {
                    silence_deadline = silence_deadline.map(|_| Instant::now() + settings.logs_timeout);
                }
                line = next_line(&mut output), if room => match line {
                    Some(Ok(l)) => {
                        silence_deadline = Some(Instant::now() + settings.logs_timeout);
                        exec_format |= mentions_exec_format(&l.text);
                        self.log.output(&l);
                    }
                    Some(Err(RuntimeError::Api(e))) => {
                        tracing::warn!(error = %e, "container output broke off; waiting for the exit");
                        output = None;
                        silence_deadline = None;
                    }
                    Some(Err(e)) => break Ended::Docker(e),
                    None => break Ended::Exited,
                },
                // Without output, the exit is noticed by waiting for it instead.
                _ = rt.wait(id), if output.is_none() => break Ended::Exited,
                _ = self.log.flush_due() => self.log.flush(),
                _ = sleep_until_opt(silence_deadline), if room => break Ended::TimedOut(
                    reason_codes::LOGS_TIMEOUT,
                    format!("no output for {}; stopping the run (SPACELIFT_LAUNCHER_LOGS_TIMEOUT)",
                        human(settings.logs_timeout)),
                ),
                _ = tokio::time::sleep_until(run_deadline) => break Ended::TimedOut(
                    reason_codes::RUN_TIMEOUT,
                    format!("the run exceeded {}; stopping it (SPACELIFT_LAUNCHER_RUN_TIMEOUT)",
                        human(settings.run_timeout)),
                ),
                s = stop_requested(&mut self.stop) => break Ended::Stopped(s),
                m = lease_lost(&mut self.lost) => break Ended::LeaseLost(m),
            }
        };

        if !matches!(ended, Ended::Exited | Ended::Docker(_)) {
            stop_container(rt.as_ref(), id, settings.stop_grace).await;
            // Keep the last words of a stopped container.
            let _ = tokio::time::timeout(DRAIN_OUTPUT, async {
                while let Some(Ok(l)) = async {
                    self.log.room().await;
                    next_line(&mut output).await
                }
                .await
                {
                    self.log.output(&l);
                }
            })
            .await;
        }
        self.log.end_output();

        let status = match &ended {
            Ended::Docker(_) => None,
            _ => match tokio::time::timeout(WAIT_LIMIT, rt.wait(id)).await {
                Ok(r) => Some(r),
                Err(_) => Some(Err(RuntimeError::Api(format!(
                    "the container's output ended but no exit status came within {}",
                    human(WAIT_LIMIT)
                )))),
            },
        };

        let abort = match ended {
            Ended::Stopped(s) => Abort::Stopped(s),
            Ended::LeaseLost(m) => Abort::LeaseLost(m),
            Ended::TimedOut(code, message) => Abort::Fail(Failure {
                state: RunState::TimedOut,
                code,
                message,
                exit_code: status.and_then(|s| s.ok()).map(|s| s.code),
            }),
            Ended::Docker(e) => Abort::Fail(docker_failure(
                &e,
                reason_codes::CONTAINER_FAILED,
                "following the container",
            )),
            Ended::Exited => match status {
                Some(Ok(status)) => {
                    match judge_exit(&status, exec_format, &self.image, self.ctx.arch) {
                        None => return self.conclude_finished(),
                        Some(f) => Abort::Fail(f),
                    }
                }
                Some(Err(RuntimeError::ContainerNotFound(_))) => Abort::Fail(Failure::failed(
                    reason_codes::CONTAINER_FAILED,
                    "the run's container vanished (removed outside the launcher, or the Docker \
                     daemon restarted without it)",
                )),
                Some(Err(e)) => Abort::Fail(docker_failure(
                    &e,
                    reason_codes::CONTAINER_FAILED,
                    "waiting for the container",
                )),
                None => unreachable_exit(),
            },
        };
        self.conclude(abort)
    }

    fn conclude_finished(&mut self) -> RunEnd {
        self.log.flush();
        self.report(RunState::Finished, Some(0), None);
        RunEnd::Reported(RunState::Finished)
    }

    /// Reports how the run ended (except when the lease is lost) and returns it.
    fn conclude(&mut self, abort: Abort) -> RunEnd {
        match abort {
            Abort::Fatal => RunEnd::Fatal,
            Abort::LeaseLost(m) => {
                tracing::error!(reason = %m, "lease lost: the run was stopped and will not be reported further");
                self.log.flush();
                RunEnd::LeaseLost
            }
            Abort::Stopped(s) => {
                let reason = match s {
                    StopRequest::Cancel(why) => Reason::new(
                        reason_codes::CANCELED,
                        why.unwrap_or_else(|| "canceled by the backend".into()),
                    ),
                    StopRequest::Shutdown => Reason::new(
                        reason_codes::LAUNCHER_SHUTDOWN,
                        "the launcher was told to stop (second SIGTERM/SIGINT) and canceled the run",
                    ),
                    StopRequest::Fatal => Reason::new(
                        reason_codes::LAUNCHER_SHUTDOWN,
                        "the launcher hit a fatal error (see its log) and canceled the run before exiting",
                    ),
                };
                tracing::info!(reason = %reason.message, "run canceled");
                self.log
                    .launcher(&format!("Run canceled: {}", reason.message));
                self.log.flush();
                self.report(RunState::Canceled, None, Some(reason));
                RunEnd::Reported(RunState::Canceled)
            }
            Abort::Fail(f) => {
                tracing::warn!(state = %f.state, reason = f.code, message = %f.message, exit_code = ?f.exit_code, "run did not finish");
                self.log
                    .launcher(&format!("Run {}: {}", f.state, f.message));
                self.log.flush();
                self.report(f.state, f.exit_code, Some(Reason::new(f.code, f.message)));
                RunEnd::Reported(f.state)
            }
        }
    }

    fn report(&self, state: RunState, exit_code: Option<i64>, reason: Option<Reason>) {
        self.outbox.push(Report::Transition(TransitionRequest {
            worker_ulid: self.ctx.ids.worker_ulid.clone(),
            state,
            exit_code,
            reason,
            worker_version: self.worker_version.clone(),
        }));
    }
}

fn unreachable_exit() -> Abort {
    // `status` is only None for Ended::Docker, handled above.
    Abort::Fail(Failure::failed(
        reason_codes::CONTAINER_FAILED,
        "no exit status",
    ))
}

/// Binary, policy, image. `phase` says what is under way, for a deadline's reason.
async fn prepare(
    ctx: &RunContext,
    spec: &RunSpec,
    log: &mut RunLog,
    phase: &mut String,
) -> Result<Prepared, Abort> {
    let (binary, pin) = fetch_binary(ctx, &spec.run_ulid, phase).await?;
    let image = ctx.settings.runner_image(spec);
    // The policy needs the worker version, so it runs once the binary is ready; and it
    // runs before the pull, so a denied image is never downloaded.
    if let Some(policy) = &ctx.settings.init_policy {
        *phase = "evaluating the initialization policy".into();
        let worker = &ctx.ids.worker_ulid;
        check_init_policy(policy, spec, &image, &binary.version, worker, log).await?;
    }
    ensure_image(ctx, &image, log, phase).await?;
    Ok(Prepared {
        binary,
        _pin: pin,
        image,
    })
}

/// Evaluates the initialization policy (off the async threads: it is CPU work, bounded by
/// [`crate::init_policy::EVAL_LIMIT`]). A deny or an evaluation error fails the run; a
/// sample the policy asks for is queued for the backend first.
async fn check_init_policy(
    policy: &Arc<InitPolicy>,
    spec: &RunSpec,
    image: &str,
    worker_version: &str,
    worker_ulid: &str,
    log: &mut RunLog,
) -> Result<(), Abort> {
    let input = PolicyInput::new(
        &spec.run_ulid,
        spec.run_type,
        &spec.stack_id,
        image,
        worker_version,
    );
    let p = policy.clone();
    let verdict = tokio::task::spawn_blocking(move || p.evaluate(&input))
        .await
        .unwrap_or_else(|e| Err(format!("the evaluation did not complete: {e}")));
    let path = policy.path().display();
    if let Some(sample) = verdict.as_ref().ok().and_then(|e| e.sample(worker_ulid)) {
        tracing::info!(policy = %path, "initialization policy asked for a sample; sending it");
        log.report(Report::PolicySample(sample));
    }
    match verdict.map(|e| e.decision) {
        Ok(Decision::Allow) => {
            tracing::info!(policy = %path, "initialization policy allows the run");
            Ok(())
        }
        Ok(Decision::Deny(messages)) => {
            for m in &messages {
                log.launcher(&format!("Initialization policy: deny: {m}"));
            }
            Err(Failure::failed(
                reason_codes::INITIALIZATION_POLICY_DENIED,
                format!(
                    "denied by the initialization policy {path}: {}",
                    messages.join("; ")
                ),
            )
            .into())
        }
        Err(e) => Err(Failure::failed(
            reason_codes::INITIALIZATION_POLICY_DENIED,
            format!("the initialization policy {path} could not be evaluated: {e}"),
        )
        .into()),
    }
}

async fn fetch_binary(
    ctx: &RunContext,
    run_ulid: &str,
    phase: &mut String,
) -> Result<(CachedBinary, BinaryPin), Abort> {
    let mut backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(8),
        ctx.seed(run_ulid, 3),
    );
    let mut last = String::new();
    for attempt in 1..=BINARY_ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(backoff.next_delay(None)).await;
        }
        *phase = "asking the backend for the worker binary".into();
        let wanted = match ctx.backend.latest_binary(ctx.arch).await {
            Ok(b) => b,
            Err(BackendError::Unauthorized { message }) => {
                ctx.fatal.send(message);
                return Err(Abort::Fatal);
            }
            Err(e) => {
                ctx.metrics.binary_failure();
                last = format!("asking for the latest version: {e}");
                continue;
            }
        };
        *phase = format!(
            "fetching worker binary {} for linux/{}",
            wanted.version, ctx.arch
        );
        match ctx.store.get(&wanted).await {
            Ok(cached) => {
                let pin = ctx.store.pin(&cached.sha256);
                tracing::info!(version = %cached.version, sha256 = %cached.sha256, "worker binary ready");
                return Ok((cached, pin));
            }
            Err(BinaryError::Download(BackendError::Unauthorized { message })) => {
                ctx.fatal.send(message);
                return Err(Abort::Fatal);
            }
            Err(e) => {
                ctx.metrics.binary_failure();
                tracing::warn!(attempt, error = %e, "worker binary not usable");
                last = e.to_string();
            }
        }
    }
    Err(Failure::failed(
        reason_codes::WORKER_BINARY_UNAVAILABLE,
        format!(
            "could not get a verified worker binary for linux/{} after {BINARY_ATTEMPTS} attempts; last error: {last}",
            ctx.arch
        ),
    )
    .into())
}

async fn ensure_image(
    ctx: &RunContext,
    image: &str,
    log: &mut RunLog,
    phase: &mut String,
) -> Result<(), Abort> {
    *phase = format!("inspecting image {image}");
    let rt = &ctx.runtime;
    let platform = format!("linux/{}", ctx.arch);
    let pull_failure = |e: &RuntimeError| docker_failure(e, reason_codes::IMAGE_PULL_FAILED, "");
    let info = match rt
        .inspect_image(image)
        .await
        .map_err(|e| pull_failure(&e))?
    {
        Some(info) => info,
        None => {
            log.launcher(&format!("Pulling image {image} for {platform}"));
            *phase = format!("pulling image {image}");
            // No credentials from the core: the Docker adapter looks them up in
            // SPACELIFT_DOCKER_CONFIG_DIR for the image's registry.
            pull(ctx, image, &platform, log).await?;
            rt.inspect_image(image)
                .await
                .map_err(|e| pull_failure(&e))?
                .ok_or_else(|| {
                    Failure::failed(
                        reason_codes::IMAGE_PULL_FAILED,
                        format!("image {image} is not present after pulling it for {platform}"),
                    )
                })?
        }
    };
    if let Some(image_arch) = info.architecture.as_deref().filter(|a| !a.is_empty()) {
        if Arch::from_docker(image_arch) != Some(ctx.arch) {
            let os = if info.os.is_empty() {
                "linux"
            } else {
                &info.os
            };
            return Err(Failure::failed(
                reason_codes::ARCHITECTURE_MISMATCH,
                format!(
                    "image {image} is {os}/{image_arch} but the Docker daemon is linux/{}; use an \
                     image built for linux/{} or a multi-arch one",
                    ctx.arch, ctx.arch
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Pulls, retrying failures that may pass (a registry hiccup, an error mid-stream) but not
/// those that cannot: an image without our platform, or one that does not exist.
async fn pull(
    ctx: &RunContext,
    image: &str,
    platform: &str,
    log: &mut RunLog,
) -> Result<(), Abort> {
    let mut delay = PULL_RETRY_DELAY;
    let mut attempt = 1;
    loop {
        let err = match ctx.runtime.pull_image(image, platform, None).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let text = err.to_string().to_ascii_lowercase();
        if text.contains("no matching manifest") {
            return Err(Failure::failed(
                reason_codes::ARCHITECTURE_MISMATCH,
                format!(
                    "image {image} has no {platform} variant, the Docker daemon's platform ({err}); \
                     use an image built for linux/{} or a multi-arch one",
                    ctx.arch
                ),
            )
            .into());
        }
        let permanent = [
            "not found",
            "does not exist",
            "manifest unknown",
            "access denied",
            "unauthorized",
        ]
        .iter()
        .any(|m| text.contains(m));
        if permanent || matches!(err, RuntimeError::Unavailable(_)) || attempt >= PULL_ATTEMPTS {
            return Err(docker_failure(&err, reason_codes::IMAGE_PULL_FAILED, "").into());
        }
        log.launcher(&format!(
            "Pulling {image} failed ({err}); retrying in {}s",
            delay.as_secs()
        ));
        tokio::time::sleep(delay).await;
        delay *= 2;
        attempt += 1;
    }
}

/// None: finished. Otherwise why it failed.
fn judge_exit(status: &ExitStatus, exec_format: bool, image: &str, arch: Arch) -> Option<Failure> {
    let exec_format = exec_format || status.error.as_deref().is_some_and(mentions_exec_format);
    if status.code == 0 && !status.oom_killed {
        return None;
    }
    let mut f = if status.oom_killed {
        Failure::failed(
            reason_codes::OOM_KILLED,
            format!(
                "the run's container ran out of memory and was killed (exit code {})",
                status.code
            ),
        )
    } else if exec_format && matches!(status.code, 255 | 1 | 127 | 126) {
        arch_mismatch_after_start(image, arch, "exec format error")
    } else {
        Failure::failed(
            reason_codes::NONZERO_EXIT,
            format!("the worker exited with code {}", status.code),
        )
    };
    f.exit_code = Some(status.code);
    Some(f)
}

fn arch_mismatch_after_start(image: &str, arch: Arch, detail: &str) -> Failure {
    Failure::failed(
        reason_codes::ARCHITECTURE_MISMATCH,
        format!(
            "the run's container could not execute a program ({detail}): image {image} is \
             probably not built for linux/{arch}, the Docker daemon's platform; use an image \
             built for linux/{arch} or a multi-arch one"
        ),
    )
}

fn mentions_exec_format(text: &str) -> bool {
    text.to_ascii_lowercase().contains("exec format error")
}

fn docker_failure(e: &RuntimeError, code: &'static str, doing: &str) -> Failure {
    let doing = if doing.is_empty() {
        String::new()
    } else {
        format!("{doing}: ")
    };
    match e {
        RuntimeError::Unavailable(_) => {
            Failure::failed(reason_codes::DOCKER_UNAVAILABLE, format!("{doing}{e}"))
        }
        _ => Failure::failed(code, format!("{doing}{e}")),
    }
}

async fn next_line(
    output: &mut Option<crate::ports::OutputStream>,
) -> Option<Result<crate::ports::OutputLine, RuntimeError>> {
    match output {
        Some(o) => o.next().await,
        None => std::future::pending().await,
    }
}

/// SIGTERM, SIGKILL after the grace (Docker's stop does both); kill if the daemon does not
/// confirm in time.
async fn stop_container(rt: &dyn ContainerRuntime, id: &str, grace: Duration) {
    match tokio::time::timeout(grace + STOP_SLACK, rt.stop(id, grace)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(container = %id, error = %e, "stop failed; killing");
            let _ = rt.kill(id).await;
        }
        Err(_) => {
            tracing::warn!(container = %id, "stop not confirmed in time; killing");
            let _ = rt.kill(id).await;
        }
    }
}

/// Removal is retried while the daemon is away so a restarted daemon that kept the
/// container does not keep it forever; the reaper at the next start catches the rest.
async fn remove_container(rt: &dyn ContainerRuntime, id: &str, seed: u64) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(16), seed);
    let give_up = Instant::now() + REMOVE_PATIENCE;
    loop {
        match rt.remove(id).await {
            Ok(()) => {
                tracing::debug!(container = %id, "container removed");
                return;
            }
            Err(RuntimeError::Unavailable(e)) if Instant::now() < give_up => {
                tracing::warn!(container = %id, error = %e, "cannot remove the container yet");
                tokio::time::sleep(backoff.next_delay(None)).await;
            }
            Err(e) => {
                tracing::error!(container = %id, error = %e, "could not remove the container; the next launcher start reaps it");
                return;
            }
        }
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

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
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
