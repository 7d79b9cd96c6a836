//! The seams between the launcher's core (supervisor, runs, drain, cache policy) and the
//! outside world. Production adapters: MQTT + HTTPS (`backend`), bollard (`docker`), the
//! filesystem (`binaries`). Tests plug in in-memory versions and run on paused tokio time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::Stream;
use protocol::api::{ClaimResponse, Lease, LogLine, PolicySample, TransitionRequest, WorkerBinary};
use protocol::messages::ServerMessage;
use protocol::{Arch, RunState};
use thiserror::Error;

use crate::secret::{ExposeSecret, SecretString};

// ---------------------------------------------------------------------------------------
// Backend

/// Failure talking to the backend.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BackendError {
    /// Worth retrying: connection refused or reset, timeout, 5xx, 429. `retry_after` is the
    /// server's `Retry-After`, when it gave one.
    #[error("backend unavailable: {message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The backend refused our credentials (401/403, TLS alert, MQTT not authorized).
    /// Fatal: retrying cannot help.
    #[error("backend refused the pool's credentials: {message}")]
    Unauthorized { message: String },
    /// 409: claim refused, illegal transition, lease held by another worker. `run_state`
    /// is the run's state the answer names (`current_state`), when it names one.
    #[error("conflict: {message}")]
    Conflict {
        message: String,
        run_state: Option<RunState>,
    },
    /// 413: the request body is over the backend's limit. Smaller requests may pass (the
    /// outbox splits log uploads); the same one never will.
    #[error("backend refused the request as too large: {message}")]
    TooLarge { message: String },
    /// Any other 4xx or a malformed answer: a bug on one side; not retried.
    #[error("backend rejected the request: {message}")]
    Rejected { message: String },
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient { .. })
    }
}

/// What happened to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Granted(ClaimResponse),
    /// Someone else has it, or it is no longer schedulable: never start it.
    Refused(String),
    /// The run is still `scheduled` but this worker may not take it now (the backend has
    /// it drained, or at capacity as it counts): nothing starts, and a later offer of the
    /// same run may be claimed.
    NotNow(String),
}

impl ClaimOutcome {
    /// A 409 to a claim: `NotNow` while the run is still `scheduled`, else `Refused`.
    pub fn refused(message: String, run_state: Option<RunState>) -> ClaimOutcome {
        if run_state == Some(RunState::Scheduled) {
            ClaimOutcome::NotNow(message)
        } else {
            ClaimOutcome::Refused(message)
        }
    }

    /// The backend's answer to a claim, whatever carried it: a grant, a 409 (refused, or
    /// not now), or an error.
    pub fn from_answer(
        answer: Result<ClaimResponse, BackendError>,
    ) -> Result<ClaimOutcome, BackendError> {
        match answer {
            Ok(granted) => Ok(ClaimOutcome::Granted(granted)),
            Err(BackendError::Conflict { message, run_state }) => {
                Ok(ClaimOutcome::refused(message, run_state))
            }
            Err(e) => Err(e),
        }
    }
}

/// Events from the backend's push channel (MQTT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// (Re)connected and subscribed. Undelivered reports may be retried now.
    Connected,
    Disconnected(String),
    Message(ServerMessage),
}

/// Synchronous calls to the backend (HTTPS in production). All calls are idempotent on
/// the server side, so callers may retry transient failures.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn claim(&self, run_ulid: &str) -> Result<ClaimOutcome, BackendError>;
    /// Renews a run's lease. `Conflict` means the lease is lost: stop the run.
    async fn renew_lease(&self, run_ulid: &str) -> Result<Lease, BackendError>;
    async fn transition(&self, run_ulid: &str, req: &TransitionRequest)
        -> Result<(), BackendError>;
    /// Uploads log lines; returns the next sequence number the backend expects.
    async fn upload_logs(&self, run_ulid: &str, lines: &[LogLine]) -> Result<u64, BackendError>;
    /// Sends a policy sample (a repeat replaces the backend's earlier one).
    async fn policy_sample(
        &self,
        run_ulid: &str,
        sample: &PolicySample,
    ) -> Result<(), BackendError>;
    async fn latest_binary(&self, arch: Arch) -> Result<WorkerBinary, BackendError>;
    /// Streams the binary's bytes, starting at `offset` (for resumed downloads).
    async fn download_binary(
        &self,
        binary: &WorkerBinary,
        offset: u64,
    ) -> Result<ByteStream, BackendError>;
}

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, BackendError>> + Send>>;

// ---------------------------------------------------------------------------------------
// Container runtime

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RuntimeError {
    /// The daemon cannot be reached (socket gone, connection refused, daemon restarting).
    #[error("docker daemon unavailable: {0}")]
    Unavailable(String),
    #[error("no such image: {0}")]
    ImageNotFound(String),
    #[error("pulling {image} failed: {message}")]
    PullFailed { image: String, message: String },
    #[error("no such container: {0}")]
    ContainerNotFound(String),
    /// Any other error answer from the daemon, with its message.
    #[error("docker: {0}")]
    Api(String),
}

/// A locally available image's platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub os: String,
    /// As the image says it (`amd64`, `arm64`, ...); None when the image doesn't say.
    pub architecture: Option<String>,
}

/// Everything needed to create a run's container. `Debug` shows the env's names, never
/// its values (whitelisted secrets, the stack's own variables).
#[derive(Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// The worker binary: PID 1, replacing the image's ENTRYPOINT and CMD.
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `host:container[:ro]`.
    pub binds: Vec<String>,
    pub network: String,
    pub runtime: Option<String>,
    pub working_dir: String,
    /// `uid:gid` the worker runs as.
    pub user: String,
    /// Docker's init (`docker-init`) as PID 1, the worker its child: zombies are reaped
    /// and signals forwarded.
    pub init: bool,
}

impl std::fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_names: Vec<&str> = self
            .env
            .iter()
            .map(|e| e.split_once('=').map_or("<malformed>", |(name, _)| name))
            .collect();
        f.debug_struct("ContainerSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("entrypoint", &self.entrypoint)
            .field("env_names", &env_names)
            .field("labels", &self.labels)
            .field("binds", &self.binds)
            .field("network", &self.network)
            .field("runtime", &self.runtime)
            .field("working_dir", &self.working_dir)
            .field("user", &self.user)
            .field("init", &self.init)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: i64,
    pub oom_killed: bool,
    /// The daemon's `State.Error`, if any.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub stream: protocol::api::LogStream,
    pub text: String,
    /// A piece of a longer line (cut to bound memory); the rest follows on this stream.
    pub partial: bool,
}

pub type OutputStream = Pin<Box<dyn Stream<Item = Result<OutputLine, RuntimeError>> + Send>>;

/// Registry credentials for one pull (from `SPACELIFT_DOCKER_CONFIG_DIR`). The password
/// and identity token redact themselves in `Debug`.
#[derive(Debug, Clone, Default)]
pub struct RegistryAuth {
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub identity_token: Option<SecretString>,
    pub server: Option<String>,
}

impl PartialEq for RegistryAuth {
    fn eq(&self, other: &RegistryAuth) -> bool {
        let exposed = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
        self.username == other.username
            && self.server == other.server
            && exposed(&self.password) == exposed(&other.password)
            && exposed(&self.identity_token) == exposed(&other.identity_token)
    }
}

impl Eq for RegistryAuth {}

#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// The daemon's architecture, from `/info`.
    async fn architecture(&self) -> Result<Arch, RuntimeError>;
    /// The local image, if present.
    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError>;
    /// Pulls an image for `platform` (`linux/amd64`); pull-stream errors are `PullFailed`.
    async fn pull_image(
        &self,
        image: &str,
        platform: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<(), RuntimeError>;
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Follows stdout and stderr from the start until the container exits.
    async fn logs(&self, id: &str) -> Result<OutputStream, RuntimeError>;
    /// Waits for the container to stop running.
    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError>;
    /// SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    async fn kill(&self, id: &str) -> Result<(), RuntimeError>;
    /// Force-removes; a missing container is not an error.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// All containers (running or not) carrying every given label.
    async fn list_by_labels(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError>;
}

// ---------------------------------------------------------------------------------------
// Worker binaries

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BinaryError {
    #[error(
        "worker binary {version} ({arch}): checksum mismatch: expected {expected}, got {actual}"
    )]
    Corrupt {
        version: String,
        arch: Arch,
        expected: String,
        actual: String,
    },
    #[error("worker binary download failed: {0}")]
    Download(BackendError),
    #[error("worker binary cache: {0}")]
    Io(String),
    #[error(
        "worker binary {version} changed on disk after it was verified; deleted (the next \
         run downloads it again)"
    )]
    Changed { version: String },
}

/// A verified worker binary on the local filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBinary {
    pub version: String,
    pub sha256: String,
    pub path: PathBuf,
}

/// Content-addressed cache of worker binaries. Implementations stream downloads to disk,
/// verify SHA-256 before a binary is ever used, share one download between concurrent
/// callers, and prune old versions.
#[async_trait]
pub trait BinaryStore: Send + Sync + 'static {
    async fn get(&self, binary: &WorkerBinary) -> Result<CachedBinary, BinaryError>;
    /// Pins `sha256` so pruning keeps it while a run uses it; unpinned on drop.
    fn pin(&self, sha256: &str) -> BinaryPin;
    /// Checks, just before use, that `cached` still holds the verified bytes (a stat when
    /// unchanged since verified, else a re-hash); a changed file is an error.
    async fn still_verified(&self, _cached: &CachedBinary) -> Result<(), BinaryError> {
        Ok(())
    }
}

/// Keeps a cached binary from being pruned while alive.
pub struct BinaryPin {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl BinaryPin {
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> BinaryPin {
        BinaryPin {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for BinaryPin {
    fn drop(&mut self) {
        if let Some(f) = self.release.take() {
            f();
        }
    }
}

impl std::fmt::Debug for BinaryPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BinaryPin")
    }
}

// ---------------------------------------------------------------------------------------
// Worker status (what heartbeats carry)

/// The worker's state as the core sees it; the MQTT adapter publishes it as heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    pub state: protocol::messages::WorkerState,
    /// Runs held: claimed and not yet reported terminal.
    pub runs: Vec<String>,
    pub capacity: u32,
    /// The cloud's interruption notice, once one came (`crate::interruption`).
    pub interruption: Option<protocol::messages::InterruptionNotice>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_auth_debug_never_shows_credentials() {
        let auth = RegistryAuth {
            username: Some("robot".into()),
            password: Some("registry-pa55word".into()),
            identity_token: Some("registry-id-t0ken".into()),
            server: Some("https://index.docker.io/v1/".into()),
        };
        for dbg in [format!("{auth:?}"), format!("{auth:#?}")] {
            assert!(!dbg.contains("registry-pa55word"), "{dbg}");
            assert!(!dbg.contains("registry-id-t0ken"), "{dbg}");
            assert!(dbg.contains("index.docker.io"), "{dbg}");
        }
    }
}
