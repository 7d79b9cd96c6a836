//! The run state machine. The backend enforces it; the launcher only proposes transitions.
//!
//! ```text
//! scheduled -> claimed -> preparing -> running -> finished
//!     |           |           |           +-----> failed | canceled | timed_out
//!     |           |           +-----------------> failed | canceled | timed_out
//!     |           +-----------------------------> failed | canceled
//!     +-----------------------------------------> canceled | failed
//! ```
//! Repeating the current state is idempotent; anything else is illegal (HTTP 409).

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Scheduled,
    Claimed,
    Preparing,
    Running,
    Finished,
    Failed,
    Canceled,
    TimedOut,
}

/// What applying a transition does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The state changes.
    Changed,
    /// The run is already in that state: a retried request, accepted without effect.
    Repeated,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("illegal run transition {from} -> {to}")]
pub struct TransitionError {
    pub from: RunState,
    pub to: RunState,
}

impl RunState {
    pub const ALL: [RunState; 8] = [
        RunState::Scheduled,
        RunState::Claimed,
        RunState::Preparing,
        RunState::Running,
        RunState::Finished,
        RunState::Failed,
        RunState::Canceled,
        RunState::TimedOut,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Finished | RunState::Failed | RunState::Canceled | RunState::TimedOut
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Scheduled => "scheduled",
            RunState::Claimed => "claimed",
            RunState::Preparing => "preparing",
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
            RunState::TimedOut => "timed_out",
        }
    }

    /// Whether `self -> to` is a legal change of state (repeats excluded).
    pub fn can_move_to(self, to: RunState) -> bool {
        use RunState::*;
        match self {
            Scheduled => matches!(to, Claimed | Canceled | Failed),
            Claimed => matches!(to, Preparing | Failed | Canceled),
            Preparing => matches!(to, Running | Failed | Canceled | TimedOut),
            Running => matches!(to, Finished | Failed | Canceled | TimedOut),
            Finished | Failed | Canceled | TimedOut => false,
        }
    }

    /// Checks `self -> to`, treating a repeat of the current state as idempotent.
    pub fn transition(self, to: RunState) -> Result<Transition, TransitionError> {
        if self == to {
            Ok(Transition::Repeated)
        } else if self.can_move_to(to) {
            Ok(Transition::Changed)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn happy_path_is_legal() {
        use RunState::*;
        let path = [Scheduled, Claimed, Preparing, Running, Finished];
        for w in path.windows(2) {
            assert_eq!(w[0].transition(w[1]), Ok(Transition::Changed));
        }
    }

    #[test]
    fn terminal_states_are_final_but_repeatable() {
        for t in RunState::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert_eq!(t.transition(t), Ok(Transition::Repeated));
            for to in RunState::ALL.into_iter().filter(|s| *s != t) {
                assert!(t.transition(to).is_err(), "{t} -> {to}");
            }
        }
    }

    #[test]
    fn no_way_back_to_scheduled() {
        for from in RunState::ALL {
            assert!(!from.can_move_to(RunState::Scheduled));
        }
    }

    fn state() -> impl Strategy<Value = RunState> {
        proptest::sample::select(RunState::ALL.to_vec())
    }

    proptest! {
        // Any walk of accepted transitions only moves forward and never leaves a
        // terminal state: a run ends in exactly one terminal state.
        #[test]
        fn walks_end_in_one_terminal_state(steps in proptest::collection::vec(state(), 0..20)) {
            let mut cur = RunState::Scheduled;
            let mut terminal_seen = None;
            for to in steps {
                if let Ok(Transition::Changed) = cur.transition(to) {
                    prop_assert!(to > cur || to.is_terminal());
                    cur = to;
                }
                if cur.is_terminal() {
                    if let Some(t) = terminal_seen { prop_assert_eq!(t, cur); }
                    terminal_seen = Some(cur);
                }
            }
        }

        #[test]
        fn serde_round_trips(s in state()) {
            let json = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(json.trim_matches('"'), s.as_str());
            prop_assert_eq!(serde_json::from_str::<RunState>(&json).unwrap(), s);
        }
    }
}
