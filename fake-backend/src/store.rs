//! Persistent state, so a restarted backend keeps pools, workers, runs, logs and published
//! binaries. Each file is rewritten atomically (temp file + rename): `state.json` holds
//! everything but the runs, `runs/<ulid>.json` one run with its logs (rewritten only when
//! that run changes, so the cost of a change does not grow with the number of runs),
//! `binaries/<sha256>` the binary bytes; events go to `events.jsonl`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use protocol::api::{LogLine, PolicySample, Reason, RunSpec};
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// A cycle was sent to this process: a heartbeat not DRAINED, or DRAINED with no runs
    /// (a cycled worker exits once idle), gets the cycle again (the first may have been
    /// lost in a broker outage). Cleared by a re-registration, not by an undrain.
    #[serde(default)]
    pub cycle_pending: bool,
    /// The last drain command was an undrain: a DRAINED heartbeat gets it again (a delayed
    /// drain may have overtaken it, even after it was obeyed). Cleared by a drain or a
    /// cycle. Only then: a worker also drains for its own reasons (a signal, an
    /// interruption notice), which no undrain should be sent for unasked.
    #[serde(default)]
    pub undrain_pending: bool,
    /// What the worker last reported (IDLE / BUSY / DRAINED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_state: Option<WorkerState>,
    #[serde(default)]
    pub last_heartbeat_seq: Option<u64>,
    /// Set by the last `worker.gone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_crashed: Option<bool>,
    /// The spot interruption notice the worker's heartbeats carry, once one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption: Option<protocol::messages::InterruptionNotice>,
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
    /// Policy samples the holder sent, one per policy kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_samples: Vec<PolicySample>,
}

impl Run {
    /// A new run, queued.
    pub fn scheduled(spec: RunSpec, pool: String) -> Run {
        Run {
            spec,
            pool,
            state: RunState::Scheduled,
            worker: None,
            offered_to: None,
            exit_code: None,
            reason: None,
            worker_version: None,
            history: vec![RunState::Scheduled],
            logs: Vec::new(),
            cancel_requested: false,
            policy_samples: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Keyed by run ULID; ULIDs sort by creation, which is the queue order. Stored one
    /// file per run; read from `state.json` only when an older data dir has them there.
    #[serde(default, skip_serializing)]
    pub runs: BTreeMap<String, Run>,
    /// In publish order; the last one per arch is the latest.
    #[serde(default)]
    pub binaries: Vec<BinaryRecord>,
    /// Endpoints written into tokens (set by `serve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
}

impl State {
    /// What `state.json` holds: everything but the runs.
    fn file_part(&self) -> State {
        let State {
            generation,
            pools,
            workers,
            runs: _,
            binaries,
            endpoints,
        } = self;
        State {
            generation: *generation,
            pools: pools.clone(),
            workers: workers.clone(),
            runs: BTreeMap::new(),
            binaries: binaries.clone(),
            endpoints: endpoints.clone(),
        }
    }

    /// Whether `state.json` would be the same for both (a new field must be named here,
    /// which the destructuring enforces).
    fn file_eq(&self, other: &State) -> bool {
        let State {
            generation,
            pools,
            workers,
            runs: _,
            binaries,
            endpoints,
        } = self;
        *generation == other.generation
            && *pools == other.pools
            && *workers == other.workers
            && *binaries == other.binaries
            && *endpoints == other.endpoints
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub broker: String,
    pub api: String,
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// What `state.json` last held as written here (runs left out): most changes touch
    /// runs only, and serialising and rewriting an unchanged file (a new inode each time)
    /// was half of a large pool's cost.
    last_state: Mutex<Option<State>>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        for sub in ["binaries", "runs"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| BackendError::io("creating", dir, e))?;
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            last_state: Mutex::new(None),
        })
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn runs_dir(&self) -> PathBuf {
        self.dir.join("runs")
    }

    fn run_path(&self, ulid: &str) -> PathBuf {
        self.runs_dir().join(format!("{ulid}.json"))
    }

    pub fn load(&self) -> Result<State> {
        let path = self.state_path();
        let mut state: State = if path.exists() {
            let bytes = std::fs::read(&path).map_err(|e| BackendError::io("reading", &path, e))?;
            serde_json::from_slice(&bytes).map_err(|e| BackendError::Store {
                path,
                message: e.to_string(),
            })?
        } else {
            State::default()
        };
        // Runs an older version kept inside state.json move to their own files.
        let legacy: Vec<String> = state.runs.keys().cloned().collect();
        let dir = self.runs_dir();
        let entries = std::fs::read_dir(&dir).map_err(|e| BackendError::io("reading", &dir, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| BackendError::io("reading", &dir, e))?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue; // a temp file left by a crash mid-write
            }
            let bytes = std::fs::read(&path).map_err(|e| BackendError::io("reading", &path, e))?;
            let run: Run = serde_json::from_slice(&bytes).map_err(|e| BackendError::Store {
                path: path.clone(),
                message: e.to_string(),
            })?;
            state.runs.insert(run.spec.run_ulid.clone(), run);
        }
        if !legacy.is_empty() {
            self.save(&state, legacy.iter())?;
        }
        Ok(state)
    }

    /// Writes the runs named in `touched`, then `state.json`.
    pub fn save<'a>(
        &self,
        state: &State,
        touched: impl IntoIterator<Item = &'a String>,
    ) -> Result<()> {
        for ulid in touched {
            let Some(run) = state.runs.get(ulid) else {
                continue;
            };
            let path = self.run_path(ulid);
            let bytes = serde_json::to_vec(run).map_err(|e| BackendError::Store {
                path: path.clone(),
                message: e.to_string(),
            })?;
            write_atomic(&path, &bytes)?;
        }
        let mut last = self.last_state.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref().is_some_and(|l| l.file_eq(state)) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(state).map_err(|e| BackendError::Store {
            path: self.state_path(),
            message: e.to_string(),
        })?;
        // Forgotten first: a failed write must not be taken for the file's content.
        *last = None;
        write_atomic(&self.state_path(), &bytes)?;
        *last = Some(state.file_part());
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::{LogStream, RunType};

    fn run(ulid: &str) -> Run {
        let spec = RunSpec {
            run_ulid: ulid.to_string(),
            stack_id: "stack".to_string(),
            run_type: RunType::Tracked,
            image: None,
            env: BTreeMap::new(),
            vendor: None,
        };
        Run::scheduled(spec, "pool".to_string())
    }

    #[test]
    fn only_touched_runs_are_rewritten_and_all_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut state = State::default();
        let (a, b) = ("01A".to_string(), "01B".to_string());
        state.runs.insert(a.clone(), run(&a));
        state.runs.insert(b.clone(), run(&b));
        store.save(&state, [&a, &b]).unwrap();

        // Change both in memory, save only `a`: `b` on disk keeps its last saved form.
        for r in state.runs.values_mut() {
            r.logs.push(LogLine {
                seq: 0,
                stream: LogStream::Stdout,
                text: "hi".to_string(),
            });
        }
        store.save(&state, [&a]).unwrap();
        let state_json = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(!state_json.contains("\"runs\""), "{state_json}");

        let loaded = store.load().unwrap();
        assert_eq!(loaded.runs.len(), 2);
        assert_eq!(loaded.runs[&a].logs.len(), 1);
        assert_eq!(loaded.runs[&b].logs.len(), 0);
    }

    #[test]
    fn runs_kept_in_an_older_state_json_move_to_their_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let legacy = serde_json::json!({ "generation": 3, "runs": { "01A": run("01A") } });
        std::fs::write(dir.path().join("state.json"), legacy.to_string()).unwrap();

        let loaded = store.load().unwrap();
        assert_eq!(loaded.generation, 3);
        assert!(loaded.runs.contains_key("01A"));
        assert!(dir.path().join("runs/01A.json").exists());
        let again = store.load().unwrap();
        assert!(again.runs.contains_key("01A"));
    }

    #[test]
    fn an_unchanged_state_json_is_not_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut state = State::default();
        let inode = || {
            std::fs::metadata(dir.path().join("state.json"))
                .unwrap()
                .ino()
        };
        store.save(&state, []).unwrap();
        let first = inode();
        store.save(&state, []).unwrap();
        assert_eq!(inode(), first, "rewritten though unchanged");
        state.generation += 1;
        store.save(&state, []).unwrap();
        assert_ne!(inode(), first);
        assert_eq!(store.load().unwrap().generation, 1);
    }

    #[test]
    fn a_corrupt_run_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("runs/01BAD.json"), b"{not json").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("01BAD.json"), "{err}");
    }
}
