//! The core's reaction to a cloud's interruption notice (`crate::interruption`).
//!
//! A notice drains the worker at once (no new runs, as the first SIGTERM does) and rides
//! on every heartbeat from then on, so the backend learns of it even across a reconnect.
//! Runs that end on their own before the deadline finish normally. A run's own length
//! is unknown (only its timeout is, and that is usually far longer than the notice), so
//! the launcher does not guess: whatever is still going at the deadline less the stop
//! grace and [`INTERRUPTION_SLACK`] is stopped and reported failed (`spot_interruption`),
//! which leaves time for the container's SIGTERM, the last report and the removal before
//! the machine goes. Idle (or once the last run is reported), the launcher exits drained.

use std::time::Duration;

use protocol::messages::InterruptionNotice;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Loop;
use crate::interruption::Notice;
use crate::run::StopRequest;

/// After a notice, runs still going this much (plus the stop grace) before the deadline
/// are stopped: time for the stop, the last report and the removal.
pub const INTERRUPTION_SLACK: Duration = Duration::from_secs(10);

/// The loop's interruption state.
pub(super) struct Interruption {
    pub(super) rx: Option<mpsc::Receiver<Notice>>,
    /// The cloud's notice, once one came: drains the worker, rides on every heartbeat.
    pub(super) notice: Option<InterruptionNotice>,
    /// When the runs still going are stopped (the deadline less the stop grace and slack).
    pub(super) stop_at: Option<Instant>,
}

impl Interruption {
    pub(super) fn new(rx: Option<mpsc::Receiver<Notice>>) -> Interruption {
        Interruption {
            rx,
            notice: None,
            stop_at: None,
        }
    }
}

impl Loop {
    pub(super) fn on_interruption(&mut self, n: Notice) {
        if self.interruption.notice.is_some() {
            return;
        }
        let margin = self.ctx.settings.stop_grace + INTERRUPTION_SLACK;
        let left = n.remaining.saturating_sub(margin);
        tracing::warn!(cloud = %n.notice.cloud, action = %n.notice.action,
            deadline = %n.notice.deadline, runs = self.active.len(), stop_in_s = left.as_secs(),
            "interruption notice: draining; runs still going a stop grace before the deadline are stopped");
        self.interruption.notice = Some(n.notice);
        self.interruption.stop_at = Some(Instant::now() + left);
        self.deferred.clear();
        self.publish();
    }

    pub(super) fn stop_for_interruption(&mut self) {
        self.interruption.stop_at = None;
        let Some(deadline) = self
            .interruption
            .notice
            .as_ref()
            .map(|n| n.deadline.clone())
        else {
            return;
        };
        for (run_ulid, stop) in &self.active {
            tracing::warn!(%run_ulid, %deadline, "stopping the run: it cannot finish before the interruption");
            stop.send_if_modified(|s| {
                if s.is_none() {
                    *s = Some(StopRequest::Interruption {
                        deadline: deadline.clone(),
                    });
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// The next notice; pending forever without a watcher or once it is gone.
pub(super) async fn recv(rx: &mut Option<mpsc::Receiver<Notice>>) -> Option<Notice> {
    let got = match rx {
        Some(r) => r.recv().await,
        None => None,
    };
    if got.is_none() {
        *rx = None;
        return std::future::pending().await;
    }
    got
}
