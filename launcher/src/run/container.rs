//! A started container followed to its end: output streamed, the silence and run
//! timeouts, cancel and lease loss watched, the container stopped when they fire.

use std::time::Duration;

use futures_util::StreamExt;
use protocol::api::reason_codes;
use protocol::RunState;
use tokio::time::Instant;

use crate::clock::sleep_until_opt;
use crate::ports::{ContainerRuntime, RuntimeError};

use super::finish::{docker_failure, judge_exit, mentions_exec_format, unreachable_exit};
use super::{human, lease_lost, stop_requested, Abort, Failure, Run, RunEnd, StopRequest};

/// Extra time, beyond the stop grace, for the daemon to confirm a stop.
const STOP_SLACK: Duration = Duration::from_secs(5);
/// How long to read the last output of a stopped container.
const DRAIN_OUTPUT: Duration = Duration::from_secs(2);
/// How long to wait for an exit status once output has ended.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// What ended a started container.
pub(super) enum Ended {
    Exited,
    Stopped(StopRequest),
    TimedOut(&'static str, String),
    LeaseLost(String),
    Docker(RuntimeError),
}

impl Run {
    /// Follows a started container to its end and reports it.
    pub(super) async fn supervise(&mut self, id: &str) -> RunEnd {
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
}

pub(super) async fn next_line(
    output: &mut Option<crate::ports::OutputStream>,
) -> Option<Result<crate::ports::OutputLine, RuntimeError>> {
    match output {
        Some(o) => o.next().await,
        None => std::future::pending().await,
    }
}

/// SIGTERM, SIGKILL after the grace (Docker's stop does both); kill if the daemon does not
/// confirm in time.
pub(super) async fn stop_container(rt: &dyn ContainerRuntime, id: &str, grace: Duration) {
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
