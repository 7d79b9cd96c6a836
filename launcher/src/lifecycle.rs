//! How the launcher process ends: operator signals as a small state machine and the
//! outcome the process exits with (its error type is [`crate::error::Error`]).
//!
//! Signals follow Buildkite's agent, which is what operators of CI agents expect (and what
//! systemd's `TimeoutStopSec` and Kubernetes' grace periods are sized for):
//! 1st SIGTERM/SIGINT drains (no new runs, runs in flight finish, heartbeats go on),
//! 2nd cancels the runs in flight and reports them `canceled` (`launcher_shutdown`),
//! 3rd exits at once. Tests feed [`Signal`]s through a channel instead of real signals.

/// An operator's request to stop, as `main.rs` maps it from SIGTERM / SIGINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
}

/// Where the operator's signals have taken the process so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Serving,
    /// 1st signal: take no new runs; exit when the runs in flight are done and reported.
    Draining,
    /// 2nd signal: cancel the runs in flight, report them, exit.
    Canceling,
    /// 3rd signal: exit now.
    Exiting,
}

/// SIGTERM and SIGINT count alike: an operator pressing Ctrl-C twice means the same as
/// systemd sending SIGTERM and then the operator insisting.
#[derive(Debug, Clone, Default)]
pub struct SignalStages {
    received: u32,
}

impl SignalStages {
    pub fn stage(&self) -> Stage {
        match self.received {
            0 => Stage::Serving,
            1 => Stage::Draining,
            2 => Stage::Canceling,
            _ => Stage::Exiting,
        }
    }

    /// Records a signal and returns the stage it moves the process to.
    pub fn on_signal(&mut self, _signal: Signal) -> Stage {
        self.received = self.received.saturating_add(1);
        self.stage()
    }
}

/// How the supervisor ended, when it ended on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitOutcome {
    /// 1st signal: every run finished and was reported.
    Drained,
    /// The backend asked this worker to cycle (self-destruct) and it is idle.
    Cycled,
    /// 2nd signal: runs in flight were canceled and reported (as far as the backend could
    /// be reached within the grace period).
    Canceled,
    /// 3rd signal: exited without waiting.
    Immediate,
}

impl ExitOutcome {
    /// Drained and cycled workers exit 0 (the host replaces them); a forced stop exits 1
    /// so the service manager records that runs were cut short.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitOutcome::Drained | ExitOutcome::Cycled => 0,
            ExitOutcome::Canceled | ExitOutcome::Immediate => 1,
        }
    }

    /// Whether to say goodbye on MQTT (`worker.gone` with `crashed: false`) rather than
    /// just dropping the connection.
    pub fn graceful(self) -> bool {
        !matches!(self, ExitOutcome::Immediate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_signals_walk_drain_cancel_exit() {
        let mut s = SignalStages::default();
        assert_eq!(s.stage(), Stage::Serving);
        assert_eq!(s.on_signal(Signal::Terminate), Stage::Draining);
        assert_eq!(s.on_signal(Signal::Interrupt), Stage::Canceling);
        assert_eq!(s.on_signal(Signal::Terminate), Stage::Exiting);
        assert_eq!(s.on_signal(Signal::Terminate), Stage::Exiting);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitOutcome::Drained.exit_code(), 0);
        assert_eq!(ExitOutcome::Cycled.exit_code(), 0);
        assert_eq!(ExitOutcome::Canceled.exit_code(), 1);
        assert!(!ExitOutcome::Immediate.graceful());
    }
}
