//! The supervisor's fatal exit: how the error arrives from outside, and how every run is
//! stopped and its container removed, within bounds, before the error is returned.

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{Error, Fatal};
use crate::run::StopRequest;

use super::{Loop, CANCEL_SLACK, SWEEP_LIMIT};

impl Loop {
    /// Before a fatal exit, stops every run (SIGTERM, SIGKILL after the stop grace) and
    /// removes its container, waiting at most the grace plus [`CANCEL_SLACK`] (also for the
    /// runs' last reports, which a backend that still answers can take); what is still
    /// there then is removed by label, for at most [`SWEEP_LIMIT`]. Dropping the run tasks instead would leave their
    /// containers running, with no timeout, until some later start reaps them.
    pub(super) async fn stop_runs_before_exit(&mut self, error: Error) -> Error {
        self.exiting_on_error = true;
        self.deferred.clear();
        self.publish();
        for stop in self.active.values() {
            stop.send_replace(Some(StopRequest::Fatal));
        }
        let deadline = Instant::now() + self.ctx.settings.stop_grace + CANCEL_SLACK;
        while !(self.active.is_empty() && self.outboxes.is_empty()) {
            tokio::select! {
                Some(ended) = self.runs.join_next_with_id() => self.on_run_end(ended),
                Some(ended) = self.outboxes.join_next_with_id() => self.on_outbox_end(ended),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if !self.active.is_empty() {
            tracing::error!(runs = ?self.active.keys().collect::<Vec<_>>(),
                "runs not stopped in time; removing their containers");
            self.runs.abort_all();
        }
        // Always: a run that ended may still have failed to remove its container.
        let sweep =
            crate::reaper::remove_launcher_containers(self.ctx.runtime.as_ref(), &self.ctx.ids);
        if tokio::time::timeout(SWEEP_LIMIT, sweep).await.is_err() {
            tracing::error!(
                "the Docker daemon did not answer; the next start removes what is left"
            );
        }
        self.prefetch.abort();
        error
    }
}

/// The error, once; pending forever if there is no channel or its sender went away.
pub(super) async fn recv_opt(rx: &mut Option<oneshot::Receiver<Fatal>>) -> Option<Fatal> {
    let got = match rx {
        Some(r) => r.await.ok(),
        None => None,
    };
    *rx = None;
    match got {
        Some(e) => Some(e),
        None => std::future::pending().await,
    }
}
