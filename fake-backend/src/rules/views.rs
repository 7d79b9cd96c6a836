//! Read-only views of runs and workers, as the handle, the admin API and the CLI show them.

use protocol::api::{PolicySample, Reason, RunSpec};
use protocol::messages::WorkerState;
use protocol::{Arch, RunState};

use super::Core;
use crate::store::{Run, Worker};

impl Core {
    pub(crate) fn run_view(&self, run: &str) -> Option<RunView> {
        self.read(|s| s.runs.get(run).map(RunView::from))
    }

    pub(crate) fn worker_view(&self, worker: &str) -> Option<WorkerView> {
        self.read(|s| s.workers.get(worker).map(WorkerView::from))
    }
}

/// A run as the backend sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunView {
    pub run_ulid: String,
    pub pool: String,
    pub state: RunState,
    pub worker: Option<String>,
    pub offered_to: Option<String>,
    pub exit_code: Option<i64>,
    pub reason: Option<Reason>,
    pub worker_version: Option<String>,
    pub history: Vec<RunState>,
    pub log_lines: Vec<protocol::api::LogLine>,
    pub cancel_requested: bool,
    pub spec: RunSpec,
    #[serde(default)]
    pub policy_samples: Vec<PolicySample>,
}

impl From<&Run> for RunView {
    fn from(r: &Run) -> RunView {
        RunView {
            run_ulid: r.spec.run_ulid.clone(),
            pool: r.pool.clone(),
            state: r.state,
            worker: r.worker.clone(),
            offered_to: r.offered_to.clone(),
            exit_code: r.exit_code,
            reason: r.reason.clone(),
            worker_version: r.worker_version.clone(),
            history: r.history.clone(),
            log_lines: r.logs.clone(),
            cancel_requested: r.cancel_requested,
            spec: r.spec.clone(),
            policy_samples: r.policy_samples.clone(),
        }
    }
}

/// A worker as the backend sees it. `status` is OFFLINE, IDLE, BUSY or DRAINED.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerView {
    pub worker_ulid: String,
    pub pool: String,
    pub arch: Arch,
    pub capacity: u32,
    pub launcher_version: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub online: bool,
    pub drained: bool,
    pub status: String,
    pub reported_state: Option<WorkerState>,
    pub gone_crashed: Option<bool>,
    /// The worker's spot interruption notice, if its heartbeats carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption: Option<protocol::messages::InterruptionNotice>,
}

impl From<&Worker> for WorkerView {
    fn from(w: &Worker) -> WorkerView {
        WorkerView {
            worker_ulid: w.ulid.clone(),
            pool: w.pool.clone(),
            arch: w.arch,
            capacity: w.capacity,
            launcher_version: w.launcher_version.clone(),
            metadata: w.metadata.clone(),
            online: w.online,
            drained: w.drained,
            status: worker_view_state(w).to_string(),
            reported_state: w.reported_state,
            gone_crashed: w.gone_crashed,
            interruption: w.interruption.clone(),
        }
    }
}

fn worker_view_state(w: &Worker) -> &'static str {
    if !w.online {
        "OFFLINE"
    } else if w.drained || w.reported_state == Some(WorkerState::Drained) {
        "DRAINED"
    } else if w.reported_state == Some(WorkerState::Busy) {
        "BUSY"
    } else {
        "IDLE"
    }
}
