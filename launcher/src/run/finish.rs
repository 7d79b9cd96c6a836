//! How a run ends: the verdict on its exit or failure, the terminal report, the
//! container's removal.

use std::time::Duration;

use protocol::api::{reason_codes, Reason, TransitionRequest};
use protocol::{Arch, RunState};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::outbox::Report;
use crate::ports::{ContainerRuntime, ExitStatus, RuntimeError};

use super::{Abort, Failure, Run, RunEnd, StopRequest};

/// How long removal is retried while the daemon is unavailable. The run keeps its slot
/// meanwhile, which costs nothing: no run could start without the daemon anyway.
const REMOVE_PATIENCE: Duration = Duration::from_secs(300);

impl Run {
    pub(super) fn conclude_finished(&mut self) -> RunEnd {
        self.log.flush();
        self.report(RunState::Finished, Some(0), None);
        RunEnd::Reported(RunState::Finished)
    }

    /// Reports how the run ended (except when the lease is lost) and returns it.
    pub(super) fn conclude(&mut self, abort: Abort) -> RunEnd {
        match abort {
            Abort::Fatal => RunEnd::Fatal,
            Abort::LeaseLost(m) => {
                tracing::error!(reason = %m, "lease lost: the run was stopped and will not be reported further");
                self.log.flush();
                RunEnd::LeaseLost
            }
            Abort::Stopped(s) => {
                let (state, reason) = match s {
                    StopRequest::Cancel(why) => (RunState::Canceled, Reason::new(
                        reason_codes::CANCELED,
                        why.unwrap_or_else(|| "canceled by the backend".into()),
                    )),
                    StopRequest::Shutdown => (RunState::Canceled, Reason::new(
                        reason_codes::LAUNCHER_SHUTDOWN,
                        "the launcher was told to stop (second SIGTERM/SIGINT) and canceled the run",
                    )),
                    StopRequest::Fatal => (RunState::Canceled, Reason::new(
                        reason_codes::LAUNCHER_SHUTDOWN,
                        "the launcher hit a fatal error (see its log) and canceled the run before exiting",
                    )),
                    StopRequest::Interruption { deadline } => (RunState::Failed, Reason::new(
                        reason_codes::SPOT_INTERRUPTION,
                        format!("spot interruption at {deadline}: the machine is being reclaimed \
                            and the run could not finish before it"),
                    )),
                };
                tracing::info!(%state, reason = %reason.message, "run stopped");
                self.log
                    .launcher(&format!("Run {state}: {}", reason.message));
                self.log.flush();
                self.report(state, None, Some(reason));
                RunEnd::Reported(state)
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

    pub(super) fn report(&self, state: RunState, exit_code: Option<i64>, reason: Option<Reason>) {
        self.outbox.push(Report::Transition(TransitionRequest {
            worker_ulid: self.ctx.ids.worker_ulid.clone(),
            state,
            exit_code,
            reason,
            worker_version: self.worker_version.clone(),
        }));
    }
}

pub(super) fn unreachable_exit() -> Abort {
    // `status` is only None for Ended::Docker, handled above.
    Abort::Fail(Failure::failed(
        reason_codes::CONTAINER_FAILED,
        "no exit status",
    ))
}

/// None: finished. Otherwise why it failed.
pub(super) fn judge_exit(
    status: &ExitStatus,
    exec_format: bool,
    image: &str,
    arch: Arch,
) -> Option<Failure> {
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

pub(super) fn arch_mismatch_after_start(image: &str, arch: Arch, detail: &str) -> Failure {
    Failure::failed(
        reason_codes::ARCHITECTURE_MISMATCH,
        format!(
            "the run's container could not execute a program ({detail}): image {image} is \
             probably not built for linux/{arch}, the Docker daemon's platform; use an image \
             built for linux/{arch} or a multi-arch one"
        ),
    )
}

pub(super) fn mentions_exec_format(text: &str) -> bool {
    text.to_ascii_lowercase().contains("exec format error")
}

pub(super) fn docker_failure(e: &RuntimeError, code: &'static str, doing: &str) -> Failure {
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

/// Removal is retried while the daemon is away so a restarted daemon that kept the
/// container does not keep it forever; the reaper at the next start catches the rest.
pub(super) async fn remove_container(rt: &dyn ContainerRuntime, id: &str, seed: u64) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{remove_container, REMOVE_PATIENCE};
    use crate::testing::Harness;

    #[tokio::test(start_paused = true)]
    async fn removal_is_retried_while_the_daemon_is_away_but_not_beyond_the_patience() {
        let h = Harness::new();
        h.runtime.with(|s| s.unavailable = true);
        let t0 = Instant::now();
        tokio::time::timeout(
            REMOVE_PATIENCE * 10,
            remove_container(h.runtime.as_ref(), "c1", 3),
        )
        .await
        .expect("removal gives up once the daemon has been away for the patience");
        let took = t0.elapsed();
        // The last retry starts before the patience runs out, a backoff (16 s at most) after
        // the one before.
        assert!(
            took >= REMOVE_PATIENCE && took <= REMOVE_PATIENCE + Duration::from_secs(16),
            "{took:?}"
        );
        let attempts = h
            .runtime
            .calls()
            .iter()
            .filter(|c| *c == "remove c1")
            .count();
        assert!(attempts > 2, "retried: {attempts}");
    }
}
