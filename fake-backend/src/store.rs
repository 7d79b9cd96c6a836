//! Persistent state: `state.json` in the data dir, rewritten atomically (temp file +
//! rename) after every change, so a restarted backend keeps pools, workers, runs, logs and
//! published binaries. Binary bytes live in `binaries/<sha256>`; events in `events.jsonl`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use protocol::api::{LogLine, Reason, RunSpec};
use protocol::messages::WorkerState;
use protocol::{Arch, RunState};
use serde::{Deserialize, Serialize};

use crate::error::{BackendError, Result};

/// Writes `bytes` to `path` via a temp file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| BackendError::io("creating", &tmp, e))?;
    // No fsync: rename is atomic against a process crash, which is what tests simulate.
    f.write_all(bytes)
        .map_err(|e| BackendError::io("writing", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| BackendError::io("renaming", path, e))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    pub ulid: String,
    pub cert_pem: String,
    /// SHA-256 of the live certificate's DER; the only one accepted.
    pub fingerprint: String,
    /// Certificates replaced by `pool reset`: refused with a clear error.
    #[serde(default)]
    pub retired_fingerprints: Vec<String>,
    #[serde(default)]
    pub resets: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Worker {
    pub ulid: String,
    pub pool: String,
    pub arch: Arch,
    pub capacity: u32,
    pub launcher_version: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub registered_at_ms: u64,
    /// Heartbeats received and no `worker.gone` / timeout since. Not persisted as true:
    /// after a backend restart every worker is offline until its next heartbeat.
    #[serde(default)]
    pub online: bool,
    /// Set by drain/cycle from the backend; the scheduler's authority.
    #[serde(default)]
    pub drained: bool,
    /// What the worker last reported (IDLE / BUSY / DRAINED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_state: Option<WorkerState>,
    #[serde(default)]
    pub last_heartbeat_seq: Option<u64>,
    /// Set by the last `worker.gone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_crashed: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub spec: RunSpec,
    pub pool: String,
    pub state: RunState,
    /// The claim holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The worker a `run.scheduled` was last sent to, while unclaimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_version: Option<String>,
    /// Every state the run went through, in order.
    #[serde(default)]
    pub history: Vec<RunState>,
    #[serde(default)]
    pub logs: Vec<LogLine>,
    #[serde(default)]
    pub cancel_requested: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BinaryRecord {
    pub version: String,
    pub arch: Arch,
    pub size: u64,
    pub sha256: String,
    /// `elf`, `shell` or `bytes`.
    pub kind: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Incremented at every start; mixed into the ID seed so a restart never repeats IDs.
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    #[serde(default)]
    pub workers: BTreeMap<String, Worker>,
    /// Keyed by run ULID; ULIDs sort by creation, which is the queue order.
    #[serde(default)]
    pub runs: BTreeMap<String, Run>,
    /// In publish order; the last one per arch is the latest.
    #[serde(default)]
    pub binaries: Vec<BinaryRecord>,
    /// Endpoints written into tokens (set by `serve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub broker: String,
    pub api: String,
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir.join("binaries"))
            .map_err(|e| BackendError::io("creating", dir, e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn load(&self) -> Result<State> {
        let path = self.state_path();
        if !path.exists() {
            return Ok(State::default());
        }
        let bytes = std::fs::read(&path).map_err(|e| BackendError::io("reading", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| BackendError::Store {
            path,
            message: e.to_string(),
        })
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let bytes = serde_json::to_vec(state).map_err(|e| BackendError::Store {
            path: self.state_path(),
            message: e.to_string(),
        })?;
        write_atomic(&self.state_path(), &bytes)
    }

    pub fn binary_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("binaries").join(sha256)
    }

    pub fn write_binary(&self, sha256: &str, bytes: &[u8]) -> Result<()> {
        let path = self.binary_path(sha256);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    pub fn read_binary(&self, sha256: &str) -> Result<Vec<u8>> {
        let path = self.binary_path(sha256);
        std::fs::read(&path).map_err(|e| BackendError::io("reading", &path, e))
    }
}
