//! The HTTPS API without HTTP: each call runs the same steps as a request (injected HTTP
//! faults, the caller's pool from its certificate fingerprint, the rule, refusals as
//! [`ApiError`]), so a simulation can talk to the backend with no socket or TLS.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use protocol::api::{
    error_codes, paths, ClaimRequest, ClaimResponse, Lease, LeaseRequest, LogAck, LogBatch,
    PolicySample, PolicySampleAck, RegisterRequest, RegisterResponse, TransitionRequest,
    TransitionResponse, WorkerBinary,
};
use protocol::Arch;
use serde_json::json;

use super::download::{self, Served};
use super::{caller, ApiError, Peer};
use crate::events::{kinds, NewEvent};
use crate::rules::Core;

pub(crate) fn register(
    core: &Core,
    peer: &Peer,
    req: RegisterRequest,
) -> Result<RegisterResponse, ApiError> {
    let c = caller(core, peer, paths::REGISTER)?;
    core.register(&c.pool, req).map_err(ApiError::from)
}

pub(crate) fn claim(
    core: &Core,
    peer: &Peer,
    run: &str,
    req: ClaimRequest,
) -> Result<ClaimResponse, ApiError> {
    let c = caller(core, peer, &paths::claim(run))?;
    core.claim(&c.pool, run, &req.worker_ulid)
        .map_err(ApiError::from)
}

pub(crate) fn lease(
    core: &Core,
    peer: &Peer,
    run: &str,
    req: LeaseRequest,
) -> Result<Lease, ApiError> {
    let c = caller(core, peer, &paths::lease(run))?;
    core.renew(&c.pool, run, &req.worker_ulid)
        .map_err(ApiError::from)
}

pub(crate) fn transition(
    core: &Core,
    peer: &Peer,
    run: &str,
    req: TransitionRequest,
) -> Result<TransitionResponse, ApiError> {
    let c = caller(core, peer, &paths::state(run))?;
    core.transition(&c.pool, run, req).map_err(ApiError::from)
}

pub(crate) fn logs(
    core: &Core,
    peer: &Peer,
    run: &str,
    batch: LogBatch,
) -> Result<LogAck, ApiError> {
    let c = caller(core, peer, &paths::logs(run))?;
    core.logs(&c.pool, run, batch).map_err(ApiError::from)
}

pub(crate) fn policy_sample(
    core: &Core,
    peer: &Peer,
    run: &str,
    sample: PolicySample,
) -> Result<PolicySampleAck, ApiError> {
    let c = caller(core, peer, &paths::policy_samples(run))?;
    core.policy_sample(&c.pool, run, sample)
        .map_err(ApiError::from)
}

pub(crate) fn latest_binary(
    core: &Core,
    peer: &Peer,
    arch: Arch,
) -> Result<WorkerBinary, ApiError> {
    caller(core, peer, paths::LATEST_BINARY)?;
    core.latest_binary(arch)
        .map(|b| WorkerBinary {
            version: b.version,
            arch: b.arch,
            size: b.size,
            sha256: b.sha256,
        })
        .ok_or_else(|| {
            ApiError::new(
                404,
                error_codes::NOT_FOUND,
                format!("no worker binary for {arch}"),
            )
        })
}

/// The injected HTTP fault for `path`, if one is armed: what the HTTPS middleware answers.
pub(crate) fn http_fault(core: &Core, path: &str) -> Option<ApiError> {
    let f = core.faults.take_http(path)?;
    core.record(NewEvent::new(kinds::FAULT_TRIGGERED).data(json!({
        "fault": "http_error", "path": path, "status": f.status, "retry_after_s": f.retry_after_s,
    })));
    let code = match f.status {
        429 => error_codes::RATE_LIMITED,
        503 => error_codes::UNAVAILABLE,
        _ => error_codes::INTERNAL,
    };
    let mut e = ApiError::new(f.status, code, format!("injected fault: {}", f.status));
    e.retry_after_s = f.retry_after_s;
    Some(e)
}

/// A worker binary's bytes from an offset, as they arrive (slow-download faults trickle
/// them on tokio's clock).
pub struct Download {
    /// The whole binary's SHA-256 (the HTTPS API's `ETag`).
    pub etag: String,
    pub bytes: BoxStream<'static, Bytes>,
}

/// The backend's API for one caller (a pool certificate), in-process. Cheap to clone.
#[derive(Clone)]
pub struct DirectApi {
    core: Arc<Core>,
    peer: Peer,
}

impl DirectApi {
    pub(crate) fn new(core: Arc<Core>, fingerprint: String, name: &str) -> DirectApi {
        DirectApi {
            core,
            peer: Peer {
                fingerprint,
                addr: format!("in-memory:{name}"),
            },
        }
    }

    fn call<T>(
        &self,
        path: &str,
        f: impl FnOnce(&Core, &Peer) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match http_fault(&self.core, path) {
            Some(e) => Err(e),
            None => f(&self.core, &self.peer),
        }
    }

    pub fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, ApiError> {
        self.call(paths::REGISTER, |c, p| register(c, p, req))
    }
    pub fn claim(&self, run: &str, req: ClaimRequest) -> Result<ClaimResponse, ApiError> {
        self.call(&paths::claim(run), |c, p| claim(c, p, run, req))
    }
    pub fn lease(&self, run: &str, req: LeaseRequest) -> Result<Lease, ApiError> {
        self.call(&paths::lease(run), |c, p| lease(c, p, run, req))
    }
    pub fn transition(
        &self,
        run: &str,
        req: TransitionRequest,
    ) -> Result<TransitionResponse, ApiError> {
        self.call(&paths::state(run), |c, p| transition(c, p, run, req))
    }
    pub fn logs(&self, run: &str, batch: LogBatch) -> Result<LogAck, ApiError> {
        self.call(&paths::logs(run), |c, p| {
            // The body limit, as the HTTPS API's JSON extractor applies it.
            let size = serde_json::to_vec(&batch).map(|b| b.len()).unwrap_or(0);
            if size > super::MAX_BODY {
                return Err(ApiError::new(
                    413,
                    error_codes::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than {} bytes", super::MAX_BODY),
                ));
            }
            logs(c, p, run, batch)
        })
    }
    pub fn policy_sample(
        &self,
        run: &str,
        sample: PolicySample,
    ) -> Result<PolicySampleAck, ApiError> {
        self.call(&paths::policy_samples(run), |c, p| {
            policy_sample(c, p, run, sample)
        })
    }
    pub fn latest_binary(&self, arch: Arch) -> Result<WorkerBinary, ApiError> {
        self.call(paths::LATEST_BINARY, |c, p| latest_binary(c, p, arch))
    }
    /// `GET` of a binary from `offset` (a `Range: bytes=offset-` when not 0).
    pub fn download(&self, version: &str, arch: Arch, offset: u64) -> Result<Download, ApiError> {
        let path = paths::binary(version, arch);
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        let served = self.call(&path, |c, p| {
            download::serve(c, p, version, &arch.to_string(), range.as_deref(), None)
        })?;
        match served {
            Served::Bytes {
                etag, body, slow, ..
            } => Ok(Download {
                etag: etag.trim_matches('"').to_string(),
                bytes: match slow {
                    None => futures_util::stream::iter([Bytes::from(body)]).boxed(),
                    Some((chunk, delay)) => download::trickle(body, chunk, delay).boxed(),
                },
            }),
            Served::NotModified { .. } => {
                Err(ApiError::new(304, error_codes::BAD_REQUEST, "not modified"))
            }
            Served::Unsatisfiable { range, len } => Err(ApiError::new(
                416,
                error_codes::BAD_REQUEST,
                format!("range {range:?} is outside the {len} bytes"),
            )),
        }
    }
}
