//! The in-memory `Backend`: scripted claims, leases, transitions, logs and binaries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use protocol::api::{
    ClaimResponse, Lease, LogLine, PolicySample, RunSpec, RunType, TransitionRequest, WorkerBinary,
};
use protocol::{Arch, RunState};

use crate::ports::*;

use super::{ids, lock, ChangeCounter};

/// The fake backend's request body limit (`fake_backend::MAX_BODY`).
pub const MAX_BODY: usize = 1 << 20;

#[derive(Default)]
pub struct BackendState {
    pub claims: Vec<String>,
    pub granted: HashSet<String>,
    /// Delivered transitions, in arrival order.
    pub transitions: Vec<(String, TransitionRequest)>,
    /// Delivered log lines per run, in arrival order.
    pub logs: BTreeMap<String, Vec<LogLine>>,
    /// Delivered policy samples per run, in arrival order (repeats kept, to see them).
    pub policy_samples: BTreeMap<String, Vec<PolicySample>>,
    pub renewals: Vec<String>,
    /// Report calls (transitions + logs) that failed.
    pub failed_reports: u32,
    /// Successful log uploads.
    pub uploads: u32,
    /// Log uploads refused as too large (413).
    pub refused_uploads: u32,
    /// The largest accepted log upload body, in bytes.
    pub largest_upload: usize,
    /// Log upload bodies larger than this are refused (413); [`MAX_BODY`] by default.
    pub body_limit: usize,
    /// Store at most this many lines of each upload (a backend acknowledging part of a
    /// batch); the answer's next expected seq says so.
    pub max_lines_per_upload: Option<usize>,

    pub refuse: HashSet<String>,
    /// Claims of these runs are refused while the run stays `scheduled` (as a backend
    /// that has this worker drained answers).
    pub not_now: HashSet<String>,
    pub claim_transient: u32,
    /// Fail this many report calls with Transient + `retry_after`.
    pub report_transient: u32,
    pub retry_after: Option<Duration>,
    /// While down, every report call fails with Transient.
    pub down: bool,
    /// Every call answers Unauthorized (the pool's credentials were revoked).
    pub unauthorized: bool,
    pub lease_conflict: HashSet<String>,
    pub lease_transient: bool,
    pub specs: HashMap<String, RunSpec>,
    pub ttl_ms: u64,
    /// The binary `latest_binary` announces and `download_binary` serves (else
    /// [`binary()`], which cannot be downloaded).
    pub served_binary: Option<(WorkerBinary, Vec<u8>)>,
    /// The claim's answer carries that binary (a backend that knows the field); else it
    /// omits it, as an older backend does.
    pub claim_carries_binary: bool,
    /// `latest_binary` calls made.
    pub latest_binary_calls: u32,
    /// Each transition call takes this long (tokio time) before it is answered.
    pub transition_delay: Duration,
}

pub struct MemBackend {
    pub state: Mutex<BackendState>,
    changes: ChangeCounter,
}

impl MemBackend {
    pub(super) fn new(changes: ChangeCounter) -> MemBackend {
        MemBackend {
            state: Mutex::new(BackendState {
                ttl_ms: 60_000,
                body_limit: MAX_BODY,
                ..Default::default()
            }),
            changes,
        }
    }

    /// Changes (or reads) the state and wakes every waiter.
    pub fn with<R>(&self, f: impl FnOnce(&mut BackendState) -> R) -> R {
        let r = f(&mut lock(&self.state));
        self.changes.bump();
        r
    }

    /// Reads the state without waking anyone (for `ChangeCounter::until` conditions).
    pub fn peek<R>(&self, f: impl FnOnce(&BackendState) -> R) -> R {
        f(&lock(&self.state))
    }

    pub fn states(&self, run: &str) -> Vec<RunState> {
        lock(&self.state)
            .transitions
            .iter()
            .filter(|(r, _)| r == run)
            .map(|(_, t)| t.state)
            .collect()
    }

    pub fn last(&self, run: &str) -> Option<TransitionRequest> {
        lock(&self.state)
            .transitions
            .iter()
            .rev()
            .find(|(r, _)| r == run)
            .map(|(_, t)| t.clone())
    }

    pub fn is_terminal(&self, run: &str) -> bool {
        self.states(run).iter().any(|s| s.is_terminal())
    }

    pub fn log_texts(&self, run: &str) -> Vec<String> {
        lock(&self.state)
            .logs
            .get(run)
            .map(|l| l.iter().map(|l| l.text.clone()).collect())
            .unwrap_or_default()
    }

    pub fn log_seqs(&self, run: &str) -> Vec<u64> {
        lock(&self.state)
            .logs
            .get(run)
            .map(|l| l.iter().map(|l| l.seq).collect())
            .unwrap_or_default()
    }

    pub fn claims(&self) -> Vec<String> {
        lock(&self.state).claims.clone()
    }

    pub fn policy_samples(&self, run: &str) -> Vec<PolicySample> {
        self.peek(|s| s.policy_samples.get(run).cloned().unwrap_or_default())
    }

    fn report_fault(&self) -> Result<(), BackendError> {
        let mut s = lock(&self.state);
        if s.unauthorized {
            return Err(BackendError::Unauthorized {
                message: "401 certificate not recognised".into(),
            });
        }
        if s.down || s.report_transient > 0 {
            s.report_transient = s.report_transient.saturating_sub(1);
            s.failed_reports += 1;
            return Err(BackendError::Transient {
                message: "503".into(),
                retry_after: s.retry_after,
            });
        }
        Ok(())
    }
}

pub fn spec(run: &str) -> RunSpec {
    RunSpec {
        run_ulid: run.to_string(),
        stack_id: format!("stack-{run}"),
        run_type: RunType::Tracked,
        image: None,
        env: BTreeMap::new(),
        vendor: None,
    }
}

pub fn binary() -> WorkerBinary {
    WorkerBinary {
        version: "1.0.0".into(),
        arch: Arch::Amd64,
        size: 3,
        sha256: "aa".repeat(32),
    }
}

#[async_trait]
impl Backend for MemBackend {
    async fn claim(&self, run_ulid: &str) -> Result<ClaimOutcome, BackendError> {
        let r = {
            let mut s = lock(&self.state);
            s.claims.push(run_ulid.to_string());
            if s.unauthorized {
                Err(BackendError::Unauthorized {
                    message: "401".into(),
                })
            } else if s.claim_transient > 0 {
                s.claim_transient -= 1;
                Err(BackendError::Transient {
                    message: "502".into(),
                    retry_after: s.retry_after,
                })
            } else if s.not_now.contains(run_ulid) {
                Ok(ClaimOutcome::refused(
                    "409 worker drained".into(),
                    Some(RunState::Scheduled),
                ))
            } else if s.refuse.contains(run_ulid) || !s.granted.insert(run_ulid.to_string()) {
                Ok(ClaimOutcome::Refused("409 already claimed".into()))
            } else {
                Ok(ClaimOutcome::Granted(ClaimResponse {
                    run: s
                        .specs
                        .get(run_ulid)
                        .cloned()
                        .unwrap_or_else(|| spec(run_ulid)),
                    lease: Lease { ttl_ms: s.ttl_ms },
                    worker_binary: s.claim_carries_binary.then(|| {
                        s.served_binary
                            .as_ref()
                            .map_or_else(binary, |(b, _)| b.clone())
                    }),
                }))
            }
        };
        self.changes.bump();
        r
    }

    async fn renew_lease(&self, run_ulid: &str) -> Result<Lease, BackendError> {
        let r = {
            let mut s = lock(&self.state);
            s.renewals.push(run_ulid.to_string());
            if s.unauthorized {
                Err(BackendError::Unauthorized {
                    message: "401".into(),
                })
            } else if s.lease_conflict.contains(run_ulid) {
                Err(BackendError::Conflict {
                    message: "lease held by another worker".into(),
                    run_state: Some(RunState::Running),
                })
            } else if s.lease_transient {
                Err(BackendError::Transient {
                    message: "503".into(),
                    retry_after: s.retry_after,
                })
            } else {
                Ok(Lease { ttl_ms: s.ttl_ms })
            }
        };
        self.changes.bump();
        r
    }

    async fn transition(
        &self,
        run_ulid: &str,
        req: &TransitionRequest,
    ) -> Result<(), BackendError> {
        let delay = self.peek(|s| s.transition_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let r = self.report_fault().map(|()| {
            lock(&self.state)
                .transitions
                .push((run_ulid.to_string(), req.clone()));
        });
        self.changes.bump();
        r
    }

    /// Like the fake backend: a body over [`MAX_BODY`] is refused (413, mapped as the HTTPS
    /// adapter maps it); lines are stored in `seq` order from 0, lines below the next
    /// expected one are ignored, a gap stops the batch; the answer is the next expected.
    async fn upload_logs(&self, run_ulid: &str, lines: &[LogLine]) -> Result<u64, BackendError> {
        let body = serde_json::to_vec(&protocol::api::LogBatch {
            worker_ulid: ids().worker_ulid,
            lines: lines.to_vec(),
        })
        .expect("a LogBatch serialises");
        let r = self.report_fault().and_then(|()| {
            let mut s = lock(&self.state);
            if body.len() > s.body_limit {
                s.refused_uploads += 1;
                return Err(BackendError::TooLarge {
                    message: format!(
                        "POST /v1/runs/{run_ulid}/logs: HTTP 413: request body is larger \
                         than {} bytes",
                        s.body_limit
                    ),
                });
            }
            s.uploads += 1;
            s.largest_upload = s.largest_upload.max(body.len());
            let take = s.max_lines_per_upload.unwrap_or(usize::MAX);
            let l = s.logs.entry(run_ulid.to_string()).or_default();
            for line in lines.iter().take(take) {
                let next = l.len() as u64;
                if line.seq == next {
                    l.push(line.clone());
                } else if line.seq > next {
                    break;
                }
            }
            Ok(l.len() as u64)
        });
        self.changes.bump();
        r
    }

    /// Like the fake backend: a body over the limit is refused (413).
    async fn policy_sample(
        &self,
        run_ulid: &str,
        sample: &PolicySample,
    ) -> Result<(), BackendError> {
        let body = serde_json::to_vec(sample).expect("a PolicySample serialises");
        let r = self.report_fault().and_then(|()| {
            let mut s = lock(&self.state);
            if body.len() > s.body_limit {
                return Err(BackendError::TooLarge {
                    message: format!("POST /v1/runs/{run_ulid}/policy-samples: HTTP 413"),
                });
            }
            s.policy_samples
                .entry(run_ulid.to_string())
                .or_default()
                .push(sample.clone());
            Ok(())
        });
        self.changes.bump();
        r
    }

    async fn latest_binary(&self, _arch: Arch) -> Result<WorkerBinary, BackendError> {
        lock(&self.state).latest_binary_calls += 1;
        if lock(&self.state).unauthorized {
            return Err(BackendError::Unauthorized {
                message: "401".into(),
            });
        }
        Ok(lock(&self.state)
            .served_binary
            .as_ref()
            .map_or_else(binary, |(b, _)| b.clone()))
    }

    async fn download_binary(
        &self,
        binary: &WorkerBinary,
        offset: u64,
    ) -> Result<ByteStream, BackendError> {
        let data = match &lock(&self.state).served_binary {
            Some((b, data)) if b.sha256 == binary.sha256 => {
                bytes::Bytes::copy_from_slice(&data[offset as usize..])
            }
            _ => {
                return Err(BackendError::Rejected {
                    message: "the in-memory backend serves no such binary".into(),
                })
            }
        };
        Ok(Box::pin(futures_util::stream::iter([Ok(data)])))
    }
}
