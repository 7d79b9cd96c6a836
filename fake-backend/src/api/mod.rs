//! The HTTPS API workers call (paths and bodies: `protocol::api`). Mutual TLS: the client
//! certificate must chain to the backend CA (else the handshake fails) and be a live
//! pool's certificate (else 401). Injected HTTP faults answer before any handler runs.

mod body;
mod direct;
mod download;
mod error;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use protocol::api::{
    error_codes, paths, ClaimRequest, LeaseRequest, LogBatch, PolicySample, RegisterRequest,
    TransitionRequest, WorkerBinary,
};
use protocol::Arch;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use body::ApiJson;
pub use body::MAX_BODY;
pub use direct::{DirectApi, Download};
pub use error::ApiError;

use crate::events::{kinds, NewEvent};
use crate::rules::Core;

/// Who is calling: from the TLS session.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub fingerprint: String,
    pub addr: String,
}

pub(crate) struct Caller {
    pub pool: String,
}

fn caller(core: &Core, peer: &Peer, path: &str) -> Result<Caller, ApiError> {
    core.pool_for_fingerprint(&peer.fingerprint)
        .map(|pool| Caller { pool })
        .map_err(|why| {
            core.record(NewEvent::new(kinds::HTTP_REFUSED).data(json!({
                "peer": peer.addr, "path": path, "status": 401, "reason": why,
            })));
            ApiError::new(401, error_codes::UNAUTHORIZED, why)
        })
}

/// An axum route pattern from a protocol path function: `{run}` becomes a path parameter.
fn run_route(path: fn(&str) -> String) -> String {
    path("{run}")
}

pub(crate) fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route(paths::REGISTER, post(register))
        .route(&run_route(paths::claim), post(claim))
        .route(&run_route(paths::lease), post(lease))
        .route(&run_route(paths::state), post(transition))
        .route(&run_route(paths::logs), post(logs))
        .route(&run_route(paths::policy_samples), post(policy_sample))
        .route(paths::LATEST_BINARY, get(latest_binary))
        .route(
            &format!("{}/{{version}}/{{arch}}", paths::BINARIES),
            get(download::download),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(core.clone(), http_faults))
        .with_state(core)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        404,
        error_codes::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        405,
        error_codes::BAD_REQUEST,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn http_faults(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    // The request's arrival and its answer, for timelines (benches/timeline.rs).
    tracing::debug!(method = %req.method(), %path, "request received");
    if let Some(e) = direct::http_fault(&core, &path) {
        return e.into_response();
    }
    let resp = next.run(req).await;
    tracing::debug!(%path, status = resp.status().as_u16(), "response ready");
    resp
}

async fn register(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<Peer>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Json<protocol::api::RegisterResponse>, ApiError> {
    direct::register(&core, &peer, req).map(Json)
}

async fn claim(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<Peer>,
    Path(run): Path<String>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<Json<protocol::api::ClaimResponse>, ApiError> {
    direct::claim(&core, &peer, &run, req).map(Json)
}

async fn lease(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<Peer>,
    Path(run): Path<String>,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> Result<Json<protocol::api::Lease>, ApiError> {
    direct::lease(&core, &peer, &run, req).map(Json)
}

async fn transition(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<Peer>,
    Path(run): Path<String>,
    ApiJson(req): ApiJson<TransitionRequest>,
) -> Result<Json<protocol::api::TransitionResponse>, ApiError> {
    direct::transition(&core, &peer, &run, req).map(Json)
}

async fn logs(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<Peer>,
    Path(run): Path<String>,
    ApiJson(batch): ApiJson<LogBatch>,
) -> Result<Json<protocol::api::LogAck>, ApiError> {
    direct::logs(&core, &peer, &run, batch).map(Json)
}

async fn policy_sample(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<Peer>,
    Path(run): Path<String>,
    ApiJson(sample): ApiJson<PolicySample>,
) -> Result<Json<protocol::api::PolicySampleAck>, ApiError> {
    direct::policy_sample(&core, &peer, &run, sample).map(Json)
}

pub(crate) fn parse_arch(s: &str) -> Result<Arch, ApiError> {
    match s {
        "amd64" => Ok(Arch::Amd64),
        "arm64" => Ok(Arch::Arm64),
        other => Err(ApiError::new(
            400,
            error_codes::BAD_REQUEST,
            format!("unknown arch {other:?} (expected amd64 or arm64)"),
        )),
    }
}

async fn latest_binary(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<Peer>,
    RawQuery(query): RawQuery,
) -> Result<Json<WorkerBinary>, ApiError> {
    caller(&core, &peer, paths::LATEST_BINARY)?;
    let query = query.unwrap_or_default();
    let arch = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("arch="))
        .ok_or_else(|| ApiError::new(400, error_codes::BAD_REQUEST, "missing ?arch=amd64|arm64"))?;
    let arch = parse_arch(arch)?;
    direct::latest_binary(&core, &peer, arch).map(Json)
}

/// Serves the API on `listener` until `shutdown`; each connection gets its peer identity.
pub(crate) async fn serve(
    core: Arc<Core>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) {
    let app = router(core.clone());
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = crate::net::accept(&listener) => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!("https accept: {e}"); continue; }
            },
        };
        let (core, app, acceptor) = (core.clone(), app.clone(), acceptor.clone());
        conns.spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        core.record(NewEvent::new(kinds::TLS_REFUSED).data(json!({
                            "listener": "https", "peer": addr.to_string(), "error": e.to_string(),
                        })));
                        return;
                    }
                    Err(_) => return,
                };
            let fingerprint = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| crate::pki::fingerprint(c.as_ref()))
                .unwrap_or_default();
            let peer = Peer {
                fingerprint,
                addr: addr.to_string(),
            };
            let svc = TowerToHyperService::new(app.layer(Extension(peer)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
    conns.shutdown().await;
}
