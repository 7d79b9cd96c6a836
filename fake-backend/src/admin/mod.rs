//! The admin API: plain HTTP on loopback (address in `DIR/admin.addr`), JSON in and out.
//! The CLI and the scenario engine use it to schedule runs, publish versions, drain
//! workers, inject faults and read events. Routes are listed in the README.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use protocol::Arch;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::binaries::BinaryContent;
use crate::error::BackendError;
use crate::faults::Fault;
use crate::{BackendHandle, ScheduleRun};

struct AdminError(StatusCode, String);

impl From<BackendError> for AdminError {
    fn from(e: BackendError) -> Self {
        let status = match &e {
            BackendError::NotFound(_) => StatusCode::NOT_FOUND,
            BackendError::Invalid(_) | BackendError::Csr(_) | BackendError::Unsupported(_) => {
                StatusCode::BAD_REQUEST
            }
            BackendError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        AdminError(status, e.to_string())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type AResult<T> = Result<Json<T>, AdminError>;

/// JSON body or a 400 naming what is wrong (instead of axum's plain-text rejection).
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = AdminError;
    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, AdminError> {
        let bytes = axum::body::to_bytes(req.into_body(), 64 << 20)
            .await
            .map_err(|e| AdminError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))?;
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes)
            .map(Body)
            .map_err(|e| AdminError(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
    }
}

pub(crate) async fn serve(
    handle: BackendHandle,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let app = router(handle);
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(crate::net::set_nodelay);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

pub(crate) fn router(handle: BackendHandle) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({ "ok": true })) }))
        .route("/endpoints", get(endpoints))
        .route("/pools", get(pools).post(create_pool))
        .route("/pools/{pool}/reset", post(reset_pool))
        .route("/pools/{pool}/token", get(pool_token))
        .route("/runs", get(runs).post(schedule_run))
        .route("/runs/{run}", get(run))
        .route("/runs/{run}/cancel", post(cancel_run))
        .route("/workers", get(workers))
        .route("/workers/{worker}", get(worker))
        .route("/workers/{worker}/{command}", post(worker_command))
        .route("/versions", get(versions).post(publish_version))
        .route("/faults", post(inject).delete(clear_faults))
        .route("/events", get(events))
        .fallback(|| async { AdminError(StatusCode::NOT_FOUND, "no such admin route".into()) })
        .with_state(handle)
}

async fn endpoints(State(h): State<BackendHandle>) -> Json<Value> {
    Json(json!({
        "broker": h.broker_endpoint(),
        "api": h.api_endpoint(),
        "mqtt_addr": h.mqtt_addr().map(|a| a.to_string()),
        "https_addr": h.https_addr().to_string(),
        "admin_addr": h.admin_addr().map(|a| a.to_string()),
        "ca_certificate": h.ca_cert_pem(),
    }))
}

#[derive(Deserialize, Default)]
struct PoolRequest {
    /// PEM CSR; the backend generates a key when absent.
    #[serde(default)]
    csr_pem: Option<String>,
}

async fn pools(State(h): State<BackendHandle>) -> Json<Vec<String>> {
    Json(h.pools())
}

async fn create_pool(
    State(h): State<BackendHandle>,
    Body(req): Body<PoolRequest>,
) -> AResult<crate::PoolCredentials> {
    // Key generation and signing take a moment: keep them off the async workers.
    let creds = tokio::task::spawn_blocking(move || match req.csr_pem {
        Some(csr) => h.create_pool_from_csr(&csr),
        None => h.create_pool(),
    })
    .await
    .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(creds))
}

async fn reset_pool(
    State(h): State<BackendHandle>,
    Path(pool): Path<String>,
    Body(req): Body<PoolRequest>,
) -> AResult<crate::PoolCredentials> {
    let creds = tokio::task::spawn_blocking(move || h.reset_pool(&pool, req.csr_pem.as_deref()))
        .await
        .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(creds))
}

async fn pool_token(State(h): State<BackendHandle>, Path(pool): Path<String>) -> AResult<Value> {
    Ok(Json(
        json!({ "pool_ulid": pool, "token": h.token_for(&pool)? }),
    ))
}

async fn runs(State(h): State<BackendHandle>) -> Json<Vec<crate::RunView>> {
    Json(h.runs())
}

async fn schedule_run(
    State(h): State<BackendHandle>,
    Body(req): Body<ScheduleRun>,
) -> AResult<Value> {
    let run = h.schedule_run(req)?;
    Ok(Json(json!({ "run_ulid": run })))
}

async fn run(State(h): State<BackendHandle>, Path(run): Path<String>) -> AResult<crate::RunView> {
    h.run(&run)
        .map(Json)
        .ok_or_else(|| AdminError(StatusCode::NOT_FOUND, format!("run {run} not found")))
}

#[derive(Deserialize, Default)]
struct CancelRequest {
    #[serde(default)]
    reason: Option<String>,
}

async fn cancel_run(
    State(h): State<BackendHandle>,
    Path(run): Path<String>,
    Body(req): Body<CancelRequest>,
) -> AResult<Value> {
    let state = h.inner.core.cancel_run(&run, req.reason)?;
    Ok(Json(json!({ "run_ulid": run, "state": state })))
}

async fn workers(State(h): State<BackendHandle>) -> Json<Vec<crate::WorkerView>> {
    Json(h.workers())
}

async fn worker(
    State(h): State<BackendHandle>,
    Path(w): Path<String>,
) -> AResult<crate::WorkerView> {
    h.worker(&w)
        .map(Json)
        .ok_or_else(|| AdminError(StatusCode::NOT_FOUND, format!("worker {w} not found")))
}

async fn worker_command(
    State(h): State<BackendHandle>,
    Path((w, command)): Path<(String, String)>,
) -> AResult<Value> {
    match command.as_str() {
        "drain" => h.drain(&w)?,
        "undrain" => h.undrain(&w)?,
        "cycle" => h.cycle(&w)?,
        other => {
            return Err(AdminError(
                StatusCode::NOT_FOUND,
                format!("unknown worker command {other:?} (drain, undrain, cycle)"),
            ))
        }
    }
    Ok(Json(json!({ "worker_ulid": w, "command": command })))
}

#[derive(Deserialize)]
struct VersionRequest {
    arch: Arch,
    #[serde(default)]
    version: Option<String>,
    /// `elf` (default), `shell`, or `bytes` with `content_b64`.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    content_b64: Option<String>,
}

async fn publish_version(
    State(h): State<BackendHandle>,
    Body(req): Body<VersionRequest>,
) -> AResult<protocol::api::WorkerBinary> {
    let content = match (req.kind.as_deref().unwrap_or("elf"), req.content_b64) {
        ("elf", _) => BinaryContent::ElfStub,
        ("shell", _) => BinaryContent::ShellWorker,
        ("bytes", Some(b)) => BinaryContent::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| AdminError(StatusCode::BAD_REQUEST, format!("content_b64: {e}")))?,
        ),
        (k, _) => {
            return Err(AdminError(
                StatusCode::BAD_REQUEST,
                format!("kind {k:?}: expected elf, shell, or bytes with content_b64"),
            ))
        }
    };
    Ok(Json(h.publish_version(
        req.arch,
        req.version.as_deref(),
        content,
    )?))
}

async fn versions(State(h): State<BackendHandle>) -> Json<Vec<protocol::api::WorkerBinary>> {
    Json(h.versions())
}

async fn inject(State(h): State<BackendHandle>, Body(fault): Body<Fault>) -> AResult<Value> {
    h.inject(fault.clone())?;
    Ok(Json(json!({ "injected": fault })))
}

async fn clear_faults(State(h): State<BackendHandle>) -> Json<Value> {
    h.clear_faults();
    Json(json!({ "cleared": true }))
}

async fn events(
    State(h): State<BackendHandle>,
    Query(q): Query<BTreeMap<String, String>>,
) -> AResult<Vec<crate::Event>> {
    let since = match q.get("since") {
        Some(s) => s.parse().map_err(|_| {
            AdminError(
                StatusCode::BAD_REQUEST,
                format!("since={s:?} is not a number"),
            )
        })?,
        None => 0,
    };
    let mut evs = h.events_since(since);
    if let Some(kind) = q.get("kind") {
        evs.retain(|e| e.kind.starts_with(kind.as_str()));
    }
    Ok(Json(evs))
}
