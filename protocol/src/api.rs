//! HTTPS API bodies and paths. Every call authenticates with the pool's client certificate
//! (mutual TLS); worker-scoped calls also name the worker ULID from registration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::run_state::RunState;

/// Request paths, relative to the token's `.api.endpoint`.
pub mod paths {
    pub const REGISTER: &str = "/v1/workers/register";
    /// Where worker binaries live: [`binary`] and [`LATEST_BINARY`] are under it.
    pub const BINARIES: &str = "/v1/worker-binaries";
    pub const LATEST_BINARY: &str = "/v1/worker-binaries/latest";

    pub fn claim(run: &str) -> String {
        format!("/v1/runs/{run}/claim")
    }
    pub fn lease(run: &str) -> String {
        format!("/v1/runs/{run}/lease")
    }
    pub fn state(run: &str) -> String {
        format!("/v1/runs/{run}/state")
    }
    pub fn logs(run: &str) -> String {
        format!("/v1/runs/{run}/logs")
    }
    /// `POST` [`super::PolicySample`] -> [`super::PolicySampleAck`].
    pub fn policy_samples(run: &str) -> String {
        format!("/v1/runs/{run}/policy-samples")
    }
    /// `GET ?arch=amd64` answers [`super::WorkerBinary`].
    pub fn latest_binary(arch: super::Arch) -> String {
        format!("{LATEST_BINARY}?arch={arch}")
    }
    pub fn binary(version: &str, arch: super::Arch) -> String {
        format!("{BINARIES}/{version}/{arch}")
    }
}

/// `POST /v1/workers/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub protocol_version: u32,
    /// The Docker daemon's architecture (not the launcher host's).
    pub arch: Arch,
    pub launcher_version: String,
    /// Runs this worker takes at once.
    pub capacity: u32,
    /// From `SPACELIFT_METADATA_<key>=<value>`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The worker ULID this launcher had before a restart, so its leftovers can be
    /// attributed; the backend reuses it when it belongs to this pool and is not online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_worker_ulid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub worker_ulid: String,
    pub pool_ulid: String,
    /// How often to publish [`crate::messages::Heartbeat`].
    pub heartbeat_interval_ms: u64,
    /// Runs this worker holds that the backend still thinks are live (after a restart the
    /// launcher reconciles them against the containers it finds).
    #[serde(default)]
    pub held_runs: Vec<String>,
}

/// `POST /v1/runs/{run}/claim`. 200 with [`ClaimResponse`]; 409 when another worker (or
/// an earlier claim) has it or it is no longer schedulable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub worker_ulid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimResponse {
    pub run: RunSpec,
    pub lease: Lease,
    /// The current worker binary for the claiming worker's architecture, so the launcher
    /// needs no separate `GET /v1/worker-binaries/latest`. Absent from older backends and
    /// when none is published for that architecture: the launcher then asks as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_binary: Option<WorkerBinary>,
}

/// What a run needs to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub run_ulid: String,
    pub stack_id: String,
    pub run_type: RunType,
    /// The stack's runner image; the launcher's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment for the worker inside the container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The stack's vendor (one of [`vendors`]; unknown ones must be tolerated). Absent
    /// from older backends, and for Terraform and anything without a default image of
    /// its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
}

impl RunSpec {
    /// Whether the stack is Ansible (its runs default to the Ansible runner image).
    pub fn is_ansible(&self) -> bool {
        self.vendor.as_deref() == Some(vendors::ANSIBLE)
    }
}

/// The `vendor` values of a [`RunSpec`] this version acts on.
pub mod vendors {
    pub const ANSIBLE: &str = "ansible";
}

/// Spacelift run types. Proposed runs are read-only; the rest may change infrastructure
/// (this picks the `RO_`/`WO_` variants of mounts and env allow-lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunType {
    Proposed,
    Tracked,
    Task,
    Destroy,
    Module,
}

impl RunType {
    pub const ALL: [RunType; 5] = [
        RunType::Proposed,
        RunType::Tracked,
        RunType::Task,
        RunType::Destroy,
        RunType::Module,
    ];

    pub fn is_read_only(self) -> bool {
        matches!(self, RunType::Proposed | RunType::Module)
    }
}

/// A claim's lease. The holder renews it (`POST /v1/runs/{run}/lease`) well before it
/// expires; an expired lease fails the run as "worker lost" and it is never rescheduled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub worker_ulid: String,
}

/// `POST /v1/runs/{run}/state`. Repeating the current state is accepted (200); an illegal
/// transition is 409 with the run's current state in the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRequest {
    pub worker_ulid: String,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Worker binary version used (set with `preparing` and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionResponse {
    pub state: RunState,
}

/// Why a run ended other than by the worker exiting 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// One of [`reason_codes`]; unknown codes must be tolerated.
    pub code: String,
    pub message: String,
}

impl Reason {
    pub fn new(code: &str, message: impl Into<String>) -> Reason {
        Reason {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// The reason codes this version uses.
pub mod reason_codes {
    pub const NONZERO_EXIT: &str = "nonzero_exit";
    pub const ARCHITECTURE_MISMATCH: &str = "architecture_mismatch";
    pub const IMAGE_PULL_FAILED: &str = "image_pull_failed";
    pub const CONTAINER_FAILED: &str = "container_failed";
    pub const OOM_KILLED: &str = "oom_killed";
    pub const WORKER_BINARY_UNAVAILABLE: &str = "worker_binary_unavailable";
    pub const DOCKER_UNAVAILABLE: &str = "docker_unavailable";
    pub const LOGS_TIMEOUT: &str = "logs_timeout";
    pub const RUN_TIMEOUT: &str = "run_timeout";
    /// Preparing (worker binary, initialization policy, image pull) took too long.
    pub const PREPARE_TIMEOUT: &str = "prepare_timeout";
    pub const CANCELED: &str = "canceled";
    pub const LAUNCHER_SHUTDOWN: &str = "launcher_shutdown";
    pub const LAUNCHER_RESTARTED: &str = "launcher_restarted";
    /// The launcher's initialization policy denied the run (or could not be evaluated).
    pub const INITIALIZATION_POLICY_DENIED: &str = "initialization_policy_denied";
    /// The worker's machine is being reclaimed by its cloud (a spot interruption) and the
    /// run could not finish before it.
    pub const SPOT_INTERRUPTION: &str = "spot_interruption";
    /// Set by the backend when a lease expires.
    pub const WORKER_LOST: &str = "worker_lost";
}

/// `POST /v1/runs/{run}/logs`: lines numbered from 0 per run. Re-sending lines the
/// backend already has is harmless; the answer says which number it expects next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    pub worker_ulid: String,
    pub lines: Vec<LogLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    pub stream: LogStream,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines the launcher itself writes about the run (pulling, timeouts, ...).
    Launcher,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAck {
    pub next_seq: u64,
}

/// `POST /v1/runs/{run}/policy-samples`: a policy evaluation the policy asked to have
/// sampled (`sample` true), from the run's holder. One per run and policy: a repeat
/// replaces the earlier one, so a retried upload is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySample {
    pub worker_ulid: String,
    /// One of [`policy_kinds`].
    pub policy: String,
    /// Exactly the document the policy was evaluated with as `input`.
    pub input: serde_json::Value,
    /// The deny messages it produced, sorted; empty when it allowed the run.
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySampleAck {}

pub mod policy_kinds {
    /// The launcher's `SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY`.
    pub const INITIALIZATION: &str = "initialization";
}

/// A published worker binary. Bytes at `GET /v1/worker-binaries/{version}/{arch}`, with
/// `ETag: "<sha256>"` and `Range` support.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBinary {
    pub version: String,
    pub arch: Arch,
    pub size: u64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// One of [`error_codes`]; unknown codes must be tolerated.
    pub code: String,
    pub message: String,
    /// For a refused transition or claim: the run's state now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_state: Option<RunState>,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: message.into(),
                current_state: None,
            },
        }
    }
}

pub mod error_codes {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const NOT_FOUND: &str = "not_found";
    /// Claim refused, illegal transition, or lease held by someone else.
    pub const CONFLICT: &str = "conflict";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const INTERNAL: &str = "internal";
}
