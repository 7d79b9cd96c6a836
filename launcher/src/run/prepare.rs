//! Preparing a claimed run: the worker binary (verified, pinned), the initialization
//! policy, the image (pulled for the daemon's platform).

use std::sync::Arc;
use std::time::Duration;

use protocol::api::{reason_codes, RunSpec, WorkerBinary};
use protocol::Arch;

use crate::backoff::Backoff;
use crate::error::Fatal;
use crate::init_policy::{Decision, InitPolicy, PolicyInput};
use crate::outbox::Report;
use crate::ports::{BackendError, BinaryError, BinaryPin, CachedBinary, RuntimeError};

use super::finish::docker_failure;
use super::log::RunLog;
use super::{Abort, Failure, RunContext};

/// Attempts at a verified worker binary (a corrupt download is retried, never executed).
const BINARY_ATTEMPTS: u32 = 3;
/// Pulls that fail for a reason that may pass are tried this many times in all.
const PULL_ATTEMPTS: u32 = 3;
const PULL_RETRY_DELAY: Duration = Duration::from_secs(1);

pub(super) struct Prepared {
    pub(super) binary: CachedBinary,
    pub(super) _pin: BinaryPin,
    pub(super) image: String,
}

/// Binary, policy, image. `phase` says what is under way, for a deadline's reason.
/// `claimed_binary` is the worker binary the claim's answer named, if any.
pub(super) async fn prepare(
    ctx: &RunContext,
    spec: &RunSpec,
    claimed_binary: Option<WorkerBinary>,
    log: &mut RunLog,
    phase: &mut String,
) -> Result<Prepared, Abort> {
    let (binary, pin) = fetch_binary(ctx, &spec.run_ulid, claimed_binary, phase).await?;
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
pub(super) async fn check_init_policy(
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

/// The first attempt uses the binary the claim's answer named (no round trip); a backend
/// that named none, or a retry, asks for the latest one.
pub(super) async fn fetch_binary(
    ctx: &RunContext,
    run_ulid: &str,
    claimed_binary: Option<WorkerBinary>,
    phase: &mut String,
) -> Result<(CachedBinary, BinaryPin), Abort> {
    let mut claimed = claimed_binary.filter(|b| b.arch == ctx.arch);
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
        let asked = match claimed.take() {
            Some(b) => Ok(b),
            None => ctx.backend.latest_binary(ctx.arch).await,
        };
        let wanted = match asked {
            Ok(b) => b,
            Err(BackendError::Unauthorized { message }) => {
                ctx.fatal.send(Fatal::Unauthorized(message));
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
                ctx.fatal.send(Fatal::Unauthorized(message));
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

pub(super) async fn ensure_image(
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
pub(super) async fn pull(
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
