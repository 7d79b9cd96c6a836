//! The launcher's [`Backend`] port over the fake backend's rules, in memory: each call is
//! the HTTPS API's call ([`DirectApi`]), its refusals mapped to [`BackendError`] as the
//! production HTTPS adapter maps status codes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fake_backend::{ApiError, DirectApi};

use super::Net;
use futures_util::StreamExt;
use launcher::ports::{Backend, BackendError, ByteStream, ClaimOutcome};
use protocol::api::{
    ClaimRequest, Lease, LeaseRequest, LogBatch, LogLine, PolicySample, RegisterRequest,
    RegisterResponse, TransitionRequest, WorkerBinary,
};
use protocol::Arch;

/// One launcher's calls; the worker ULID is set once registered.
pub struct SimBackend {
    net: Net,
    fingerprint: String,
    name: String,
    worker: Mutex<Option<String>>,
}

impl SimBackend {
    pub fn new(net: Net, fingerprint: String, name: &str) -> Arc<SimBackend> {
        Arc::new(SimBackend {
            net,
            fingerprint,
            name: name.to_string(),
            worker: Mutex::new(None),
        })
    }

    /// The backend now (a restart replaces it); down, a call is refused like a connection.
    fn api(&self) -> Result<DirectApi, BackendError> {
        match self.net.backend() {
            Some(b) => Ok(b.direct_api(&self.fingerprint, &self.name)),
            None => Err(BackendError::Transient {
                message: "connection refused (the backend is down)".into(),
                retry_after: None,
            }),
        }
    }

    pub fn set_worker_ulid(&self, ulid: &str) {
        *self.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(ulid.to_string());
    }

    fn worker(&self) -> Result<String, BackendError> {
        self.worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| BackendError::Rejected {
                message: "not registered yet (no worker ULID)".into(),
            })
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, BackendError> {
        self.api()?
            .register(req.clone())
            .map_err(|e| map(e, "POST /v1/workers/register"))
    }
}

/// A status code as the HTTPS adapter classifies it (`launcher::backend::https`).
fn map(e: ApiError, what: &str) -> BackendError {
    let message = format!("{what}: HTTP {}: {}", e.status, e.body.error.message);
    match e.status {
        401 | 403 => BackendError::Unauthorized { message },
        409 => BackendError::Conflict {
            message,
            run_state: e.body.error.current_state,
        },
        413 => BackendError::TooLarge { message },
        408 | 429 | 500..=599 => BackendError::Transient {
            message,
            retry_after: e.retry_after_s.map(Duration::from_secs),
        },
        _ => BackendError::Rejected { message },
    }
}

#[async_trait]
impl Backend for SimBackend {
    async fn claim(&self, run_ulid: &str) -> Result<ClaimOutcome, BackendError> {
        let req = ClaimRequest {
            worker_ulid: self.worker()?,
        };
        ClaimOutcome::from_answer(
            self.api()?
                .claim(run_ulid, req)
                .map_err(|e| map(e, "claim")),
        )
    }

    async fn renew_lease(&self, run_ulid: &str) -> Result<Lease, BackendError> {
        let req = LeaseRequest {
            worker_ulid: self.worker()?,
        };
        self.api()?
            .lease(run_ulid, req)
            .map_err(|e| map(e, "lease"))
    }

    async fn transition(
        &self,
        run_ulid: &str,
        req: &TransitionRequest,
    ) -> Result<(), BackendError> {
        self.api()?
            .transition(run_ulid, req.clone())
            .map(|_| ())
            .map_err(|e| map(e, "state"))
    }

    async fn upload_logs(&self, run_ulid: &str, lines: &[LogLine]) -> Result<u64, BackendError> {
        let batch = LogBatch {
            worker_ulid: self.worker()?,
            lines: lines.to_vec(),
        };
        self.api()?
            .logs(run_ulid, batch)
            .map(|ack| ack.next_seq)
            .map_err(|e| map(e, "logs"))
    }

    async fn policy_sample(
        &self,
        run_ulid: &str,
        sample: &PolicySample,
    ) -> Result<(), BackendError> {
        self.api()?
            .policy_sample(run_ulid, sample.clone())
            .map(|_| ())
            .map_err(|e| map(e, "policy sample"))
    }

    async fn latest_binary(&self, arch: Arch) -> Result<WorkerBinary, BackendError> {
        self.api()?
            .latest_binary(arch)
            .map_err(|e| map(e, "latest binary"))
    }

    async fn download_binary(
        &self,
        binary: &WorkerBinary,
        offset: u64,
    ) -> Result<ByteStream, BackendError> {
        let d = self
            .api()?
            .download(&binary.version, binary.arch, offset)
            .map_err(|e| map(e, "download"))?;
        if !d.etag.eq_ignore_ascii_case(&binary.sha256) {
            return Err(BackendError::Rejected {
                message: format!(
                    "the download serves ETag {:?}, not the expected sha256 {}",
                    d.etag, binary.sha256
                ),
            });
        }
        Ok(Box::pin(d.bytes.map(Ok)))
    }
}
