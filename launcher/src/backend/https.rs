//! The backend's HTTPS API (protocol v1, `protocol::api`) over reqwest + rustls with the
//! pool certificate as client certificate.
//!
//! Error mapping (see [`BackendError`]):
//! - connection refused/reset, DNS, timeouts, 5xx, 408, 429 -> `Transient` (with the
//!   server's `Retry-After`: delta-seconds, or an HTTP date measured against the response's
//!   own `Date` header — never against the local wall clock; without `Date` it is ignored);
//! - 401/403, and TLS alerts from the server about our certificate -> `Unauthorized`;
//! - 409 -> `Conflict` with the run's `current_state` (a refused claim is
//!   `Ok(ClaimOutcome::Refused)` instead, or `NotNow` while the run is still `scheduled`);
//! - 413 -> `TooLarge` (the outbox sends smaller log uploads);
//! - any other 4xx, a malformed 2xx answer, or a server certificate we do not trust ->
//!   `Rejected` (retrying cannot help).
//!
//! Bodies are read with a cap: a JSON answer larger than [`JSON_BODY_LIMIT`] is `Rejected`
//! (checked against `Content-Length` before reading, and while reading); of an error body
//! at most [`ERROR_BODY_LIMIT`] is read, and a short excerpt without control characters
//! goes into the error.
//!
//! Retries: `HttpsBackend` never retries by itself; the core's outbox and claim logic own
//! retry policy (they know what is idempotent and when to give up). [`retry_transient`] is
//! a helper for the simple cases (registration at startup).

use std::error::Error as StdError;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use protocol::api::{
    paths, ClaimRequest, ClaimResponse, ErrorBody, Lease, LeaseRequest, LogAck, LogBatch, LogLine,
    PolicySample, PolicySampleAck, RegisterRequest, RegisterResponse, TransitionRequest,
    TransitionResponse, WorkerBinary,
};
use protocol::Arch;
use reqwest::header::{HeaderMap, DATE, ETAG, RANGE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backoff::Backoff;
use crate::config::{LauncherConfig, ProxyConfig};
use crate::ports::{Backend, BackendError, ByteStream, ClaimOutcome};
use crate::tls::find_rustls_error;

/// The largest JSON answer read (a claim's run spec with its env is the largest expected).
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;
/// How much of an error body is read; the rest is never downloaded.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// How many characters of an error body an error message quotes.
const ERROR_EXCERPT_CHARS: usize = 200;

/// Timeouts of the HTTPS client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpsOptions {
    /// Whole-request limit for JSON calls; idle-read limit for binary downloads (which may
    /// legitimately take longer than this in total).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for HttpsOptions {
    fn default() -> Self {
        HttpsOptions {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The production [`Backend`].
pub struct HttpsBackend {
    client: reqwest::Client,
    base: String,
    opts: HttpsOptions,
    worker_ulid: RwLock<Option<String>>,
}

impl std::fmt::Debug for HttpsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsBackend")
            .field("base", &self.base)
            .field("worker_ulid", &self.worker_ulid())
            .finish_non_exhaustive()
    }
}

impl HttpsBackend {
    /// The client for `cfg`'s token endpoint, with `tls` (from [`crate::tls::client_config`])
    /// and `cfg`'s proxies.
    pub fn new(
        cfg: &LauncherConfig,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<HttpsBackend, BackendError> {
        HttpsBackend::with_options(
            &cfg.credentials.token.api.endpoint,
            Some(tls),
            &cfg.proxy,
            HttpsOptions::default(),
        )
    }

    /// `base` is the API endpoint (`https://host:port[/prefix]`). `tls` None uses reqwest's
    /// defaults (tests against plain-HTTP mocks).
    pub fn with_options(
        base: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        proxy: &ProxyConfig,
        opts: HttpsOptions,
    ) -> Result<HttpsBackend, BackendError> {
        let url = reqwest::Url::parse(base).map_err(|e| BackendError::Rejected {
            message: format!("SPACELIFT_TOKEN .api.endpoint {base:?} is not a URL: {e}"),
        })?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(BackendError::Rejected {
                message: format!("SPACELIFT_TOKEN .api.endpoint {base:?} is not https://"),
            });
        }
        let mut builder = crate::net::http_client_builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.request_timeout)
            .user_agent(concat!("spacelift-launcher/", env!("CARGO_PKG_VERSION")))
            // Proxies come from our validated config only, never from the process env.
            .no_proxy();
        if let Some(tls) = tls {
            builder = builder.tls_backend_preconfigured((*tls).clone());
        }
        let no_proxy = proxy
            .no_proxy
            .as_deref()
            .and_then(reqwest::NoProxy::from_string);
        let bad_proxy = |var: &str| BackendError::Rejected {
            message: format!("{var}: not a usable proxy URL"),
        };
        if let Some(p) = &proxy.http {
            builder = builder.proxy(
                reqwest::Proxy::http(p)
                    .map_err(|_| bad_proxy("HTTP_PROXY"))?
                    .no_proxy(no_proxy.clone()),
            );
        }
        if let Some(p) = &proxy.https {
            builder = builder.proxy(
                reqwest::Proxy::https(p)
                    .map_err(|_| bad_proxy("HTTPS_PROXY"))?
                    .no_proxy(no_proxy.clone()),
            );
        }
        let client = builder.build().map_err(|e| BackendError::Rejected {
            message: format!("cannot build the HTTPS client: {}", chain(&e)),
        })?;
        Ok(HttpsBackend {
            client,
            base: base.trim_end_matches('/').to_string(),
            opts,
            worker_ulid: RwLock::new(None),
        })
    }

    /// `POST /v1/workers/register`. Does not need (or set) the worker ULID: call
    /// [`HttpsBackend::set_worker_ulid`] with the answer's.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, BackendError> {
        self.json(Method::POST, paths::REGISTER, Some(req)).await
    }

    /// The worker ULID that worker-scoped calls send (from registration).
    pub fn set_worker_ulid(&self, ulid: impl Into<String>) {
        *self.worker_ulid.write().unwrap_or_else(|p| p.into_inner()) = Some(ulid.into());
    }

    pub fn worker_ulid(&self) -> Option<String> {
        self.worker_ulid
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn worker(&self) -> Result<String, BackendError> {
        self.worker_ulid().ok_or_else(|| BackendError::Rejected {
            message: "not registered yet (no worker ULID)".into(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<reqwest::Response, BackendError> {
        let mut req = self
            .client
            .request(method.clone(), self.url(path))
            .timeout(self.opts.request_timeout);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| map_reqwest(&e))?;
        check_status(resp, &method, path).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<T, BackendError> {
        let resp = self.send(method.clone(), path, body).await?;
        let too_large = || BackendError::Rejected {
            message: format!(
                "answer to {method} {path} is larger than {} MiB, the limit",
                JSON_BODY_LIMIT >> 20
            ),
        };
        if resp
            .content_length()
            .is_some_and(|n| n > JSON_BODY_LIMIT as u64)
        {
            return Err(too_large());
        }
        let (bytes, complete) = read_capped(resp, JSON_BODY_LIMIT)
            .await
            .map_err(|e| map_reqwest(&e))?;
        if !complete {
            return Err(too_large());
        }
        serde_json::from_slice(&bytes).map_err(|e| BackendError::Rejected {
            message: format!("malformed answer to {method} {path}: {e}"),
        })
    }
}

#[async_trait]
impl Backend for HttpsBackend {
    async fn claim(&self, run_ulid: &str) -> Result<ClaimOutcome, BackendError> {
        let req = ClaimRequest {
            worker_ulid: self.worker()?,
        };
        ClaimOutcome::from_answer(
            self.json::<ClaimResponse>(Method::POST, &paths::claim(run_ulid), Some(&req))
                .await,
        )
    }

    async fn renew_lease(&self, run_ulid: &str) -> Result<Lease, BackendError> {
        let req = LeaseRequest {
            worker_ulid: self.worker()?,
        };
        self.json(Method::POST, &paths::lease(run_ulid), Some(&req))
            .await
    }

    async fn transition(
        &self,
        run_ulid: &str,
        req: &TransitionRequest,
    ) -> Result<(), BackendError> {
        let _: TransitionResponse = self
            .json(Method::POST, &paths::state(run_ulid), Some(req))
            .await?;
        Ok(())
    }

    async fn upload_logs(&self, run_ulid: &str, lines: &[LogLine]) -> Result<u64, BackendError> {
        let batch = LogBatch {
            worker_ulid: self.worker()?,
            lines: lines.to_vec(),
        };
        let ack: LogAck = self
            .json(Method::POST, &paths::logs(run_ulid), Some(&batch))
            .await?;
        Ok(ack.next_seq)
    }

    async fn policy_sample(
        &self,
        run_ulid: &str,
        sample: &PolicySample,
    ) -> Result<(), BackendError> {
        let _: PolicySampleAck = self
            .json(Method::POST, &paths::policy_samples(run_ulid), Some(sample))
            .await?;
        Ok(())
    }

    async fn latest_binary(&self, arch: Arch) -> Result<WorkerBinary, BackendError> {
        self.json(Method::GET, &paths::latest_binary(arch), None::<&()>)
            .await
    }

    async fn download_binary(
        &self,
        binary: &WorkerBinary,
        offset: u64,
    ) -> Result<ByteStream, BackendError> {
        let path = paths::binary(&binary.version, binary.arch);
        // No whole-request timeout: a large binary may take long; the client's read
        // timeout still catches a stalled transfer.
        let mut req = self.client.get(self.url(&path));
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().await.map_err(|e| map_reqwest(&e))?;
        let resp = check_status(resp, &Method::GET, &path).await?;
        if let Some(etag) = resp.headers().get(ETAG).and_then(|v| v.to_str().ok()) {
            let etag = etag.trim_start_matches("W/").trim_matches('"');
            if !etag.is_empty() && !etag.eq_ignore_ascii_case(&binary.sha256) {
                return Err(BackendError::Rejected {
                    message: format!(
                        "GET {path} serves ETag {etag:?}, not the expected sha256 {}",
                        binary.sha256
                    ),
                });
            }
        }
        // A server that ignores Range answers 200 with the whole body: skip what we have.
        let mut skip = if resp.status() == StatusCode::PARTIAL_CONTENT {
            0
        } else {
            offset
        };
        let stream = resp
            .bytes_stream()
            .map(move |chunk| match chunk {
                Ok(mut b) => {
                    if skip > 0 {
                        let n = (skip.min(b.len() as u64)) as usize;
                        b = b.slice(n..);
                        skip -= n as u64;
                    }
                    Ok(b)
                }
                Err(e) => Err(map_reqwest(&e)),
            })
            .filter(|r| std::future::ready(!matches!(r, Ok(b) if b.is_empty())));
        Ok(Box::pin(stream))
    }
}

/// Retries `f` while it fails with [`BackendError::Transient`], sleeping (tokio time) the
/// backoff's delay (the server's `Retry-After` wins), at most `max_attempts` attempts in
/// all. Other errors and the last transient one are returned as they are.
pub async fn retry_transient<T, F, Fut>(
    backoff: &mut Backoff,
    max_attempts: u32,
    mut f: F,
) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackendError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Ok(v) => {
                backoff.reset();
                return Ok(v);
            }
            Err(BackendError::Transient {
                message,
                retry_after,
            }) if attempt < max_attempts => {
                let delay = backoff.next_delay(retry_after);
                tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, %message, "backend unavailable; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn check_status(
    resp: reqwest::Response,
    method: &Method,
    path: &str,
) -> Result<reqwest::Response, BackendError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_after(resp.headers());
    // What arrived before a failure (a connection cut mid-body) is still worth quoting.
    let mut body = Vec::new();
    let _ = read_capped_into(resp, ERROR_BODY_LIMIT, &mut body).await;
    let detail = error_detail(&body);
    let message = format!("{method} {path}: HTTP {}: {detail}", status.as_u16());
    Err(match status.as_u16() {
        401 | 403 => BackendError::Unauthorized {
            message: format!(
                "{message} (check that SPACELIFT_TOKEN and SPACELIFT_POOL_PRIVATE_KEY are the \
                 pool's current ones; a pool reset invalidates the old token)"
            ),
        },
        409 => BackendError::Conflict {
            message,
            run_state: serde_json::from_slice::<ErrorBody>(&body)
                .ok()
                .and_then(|e| e.error.current_state),
        },
        413 => BackendError::TooLarge { message },
        408 | 429 | 500..=599 => BackendError::Transient {
            message,
            retry_after,
        },
        _ => BackendError::Rejected { message },
    })
}

/// Up to `limit` bytes of the body, and whether that was all of it. Stops reading at the
/// limit, so a huge or endless body costs at most `limit` bytes.
async fn read_capped(
    resp: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut buf = Vec::new();
    let complete = read_capped_into(resp, limit, &mut buf).await?;
    Ok((buf, complete))
}

/// As [`read_capped`], into `buf`, which keeps what arrived when reading fails.
async fn read_capped_into(
    mut resp: reqwest::Response,
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<bool, reqwest::Error> {
    while let Some(chunk) = resp.chunk().await? {
        let room = limit - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok(false);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(true)
}

/// The error body's message (protocol `ErrorBody`), else its start: at most
/// [`ERROR_EXCERPT_CHARS`] characters, control characters (terminal escapes, line breaks)
/// replaced by spaces, whatever the server sent.
#[doc(hidden)] // pub for the fuzz target (fuzz/); not an API
pub fn error_detail(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => {
            let mut s = format!("{}: {}", e.error.code, e.error.message);
            if let Some(state) = e.error.current_state {
                s.push_str(&format!(" (run is {state:?})"));
            }
            s
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text = text.trim();
    if text.is_empty() {
        return "(no body)".into();
    }
    let mut chars = text.chars();
    let mut excerpt: String = chars
        .by_ref()
        .take(ERROR_EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if chars.next().is_some() {
        excerpt.push_str("...");
    }
    excerpt
}

/// `Retry-After` as delta-seconds, or as an HTTP date relative to the response's `Date`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    let now = httpdate::parse_http_date(headers.get(DATE)?.to_str().ok()?.trim()).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Maps a transport-level failure.
fn map_reqwest(e: &reqwest::Error) -> BackendError {
    if let Some(tls) = find_rustls_error(e) {
        return map_tls(tls);
    }
    let message = chain(e);
    if e.is_decode() {
        return BackendError::Rejected { message };
    }
    if e.is_builder() {
        return BackendError::Rejected { message };
    }
    // Timeouts, connect failures, resets, truncated bodies.
    BackendError::Transient {
        message,
        retry_after: None,
    }
}

fn map_tls(e: &rustls::Error) -> BackendError {
    match e {
        rustls::Error::AlertReceived(alert) if crate::tls::rejects_client_certificate(*alert) => {
            BackendError::Unauthorized {
                message: format!(
                    "the server refused the pool certificate (TLS alert {alert:?}); check that \
                     SPACELIFT_TOKEN is the pool's current token (a reset revokes the old one)"
                ),
            }
        }
        rustls::Error::InvalidCertificate(why) => BackendError::Rejected {
            message: format!(
                "the backend's server certificate is not trusted ({why:?}); check the token's \
                 ca_certificate and ADDITIONAL_ROOT_CAS"
            ),
        },
        other => BackendError::Transient {
            message: format!("TLS: {other}"),
            retry_after: None,
        },
    }
}

/// "outer: inner: innermost", for messages.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::{ErrorBody, LogStream, Reason, RunSpec, RunType};
    use protocol::RunState;
    use wiremock::matchers::{body_json, header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn backend(server: &MockServer) -> HttpsBackend {
        let b = HttpsBackend::with_options(
            &server.uri(),
            None,
            &ProxyConfig::default(),
            HttpsOptions {
                request_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(5),
            },
        )
        .unwrap();
        b.set_worker_ulid("W1");
        b
    }

    fn register_req() -> RegisterRequest {
        RegisterRequest {
            protocol_version: 1,
            arch: Arch::Amd64,
            launcher_version: "0.1.0".into(),
            capacity: 2,
            metadata: Default::default(),
            previous_worker_ulid: None,
        }
    }

    fn claim_response() -> ClaimResponse {
        ClaimResponse {
            run: RunSpec {
                run_ulid: "R1".into(),
                stack_id: "s".into(),
                run_type: RunType::Tracked,
                image: None,
                env: Default::default(),
                vendor: None,
            },
            lease: Lease { ttl_ms: 30_000 },
            worker_binary: None,
        }
    }

    #[tokio::test]
    async fn happy_paths_send_the_protocol_bodies() {
        let server = MockServer::start().await;
        let reg = RegisterResponse {
            worker_ulid: "W9".into(),
            pool_ulid: "P".into(),
            heartbeat_interval_ms: 5000,
            held_runs: vec![],
        };
        Mock::given(method("POST"))
            .and(path("/v1/workers/register"))
            .and(body_json(register_req()))
            .respond_with(ResponseTemplate::new(200).set_body_json(&reg))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/runs/R1/claim"))
            .and(body_json(ClaimRequest {
                worker_ulid: "W1".into(),
            }))
            .respond_with(ResponseTemplate::new(200).set_body_json(claim_response()))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/runs/R1/lease"))
            .respond_with(ResponseTemplate::new(200).set_body_json(Lease { ttl_ms: 9 }))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/runs/R1/state"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(TransitionResponse {
                    state: RunState::Failed,
                }),
            )
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/runs/R1/logs"))
            .respond_with(ResponseTemplate::new(200).set_body_json(LogAck { next_seq: 2 }))
            .mount(&server)
            .await;
        let wb = WorkerBinary {
            version: "1.2.3".into(),
            arch: Arch::Arm64,
            size: 3,
            sha256: "ab".into(),
        };
        Mock::given(method("GET"))
            .and(path("/v1/worker-binaries/latest"))
            .and(query_param("arch", "arm64"))
            .respond_with(ResponseTemplate::new(200).set_body_json(&wb))
            .mount(&server)
            .await;
        let sample = PolicySample {
            worker_ulid: "W1".into(),
            policy: "initialization".into(),
            input: serde_json::json!({"docker_image": "img"}),
            deny: vec!["no".into()],
        };
        Mock::given(method("POST"))
            .and(path("/v1/runs/R1/policy-samples"))
            .and(body_json(&sample))
            .respond_with(ResponseTemplate::new(200).set_body_json(PolicySampleAck {}))
            .mount(&server)
            .await;

        let b = backend(&server);
        assert_eq!(b.register(&register_req()).await.unwrap(), reg);
        assert_eq!(
            b.claim("R1").await.unwrap(),
            ClaimOutcome::Granted(claim_response())
        );
        assert_eq!(b.renew_lease("R1").await.unwrap(), Lease { ttl_ms: 9 });
        b.transition(
            "R1",
            &TransitionRequest {
                worker_ulid: "W1".into(),
                state: RunState::Failed,
                exit_code: Some(1),
                reason: Some(Reason::new("nonzero_exit", "exit 1")),
                worker_version: None,
            },
        )
        .await
        .unwrap();
        let lines = [LogLine {
            seq: 0,
            stream: LogStream::Stdout,
            text: "hi".into(),
        }];
        assert_eq!(b.upload_logs("R1", &lines).await.unwrap(), 2);
        assert_eq!(b.latest_binary(Arch::Arm64).await.unwrap(), wb);
        b.policy_sample("R1", &sample).await.unwrap();
    }

    #[tokio::test]
    async fn worker_calls_need_registration() {
        let server = MockServer::start().await;
        let b = HttpsBackend::with_options(
            &server.uri(),
            None,
            &ProxyConfig::default(),
            HttpsOptions::default(),
        )
        .unwrap();
        let e = b.claim("R").await.unwrap_err();
        assert!(matches!(e, BackendError::Rejected { .. }), "{e:?}");
    }

    async fn status_error(template: ResponseTemplate) -> BackendError {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/runs/R1/lease"))
            .respond_with(template)
            .mount(&server)
            .await;
        backend(&server).renew_lease("R1").await.unwrap_err()
    }

    #[tokio::test]
    async fn statuses_map_to_error_kinds() {
        let e = status_error(
            ResponseTemplate::new(503)
                .insert_header("Retry-After", "7")
                .set_body_json(ErrorBody::new("unavailable", "try later")),
        )
        .await;
        assert_eq!(
            e,
            BackendError::Transient {
                message: "POST /v1/runs/R1/lease: HTTP 503: unavailable: try later".into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        let e = status_error(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "Wed, 21 Oct 2015 07:28:30 GMT")
                .insert_header("Date", "Wed, 21 Oct 2015 07:28:00 GMT"),
        )
        .await;
        assert!(
            matches!(e, BackendError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(30)),
            "{e:?}"
        );
        let e = status_error(ResponseTemplate::new(500).set_body_string("boom")).await;
        assert_eq!(
            e,
            BackendError::Transient {
                message: "POST /v1/runs/R1/lease: HTTP 500: boom".into(),
                retry_after: None,
            }
        );
        let e = status_error(
            ResponseTemplate::new(401).set_body_json(ErrorBody::new("unauthorized", "bad cert")),
        )
        .await;
        assert!(
            matches!(&e, BackendError::Unauthorized { message } if message.contains("HTTP 401: unauthorized: bad cert")),
            "{e:?}"
        );
        let e = status_error(ResponseTemplate::new(403)).await;
        assert!(matches!(e, BackendError::Unauthorized { .. }), "{e:?}");
        let mut body = ErrorBody::new("conflict", "lease held by W2");
        body.error.current_state = Some(RunState::Running);
        let e = status_error(ResponseTemplate::new(409).set_body_json(body)).await;
        assert_eq!(
            e,
            BackendError::Conflict {
                message:
                    "POST /v1/runs/R1/lease: HTTP 409: conflict: lease held by W2 (run is Running)"
                        .into(),
                run_state: Some(RunState::Running),
            }
        );
        let e = status_error(
            ResponseTemplate::new(400).set_body_json(ErrorBody::new("bad_request", "nope")),
        )
        .await;
        assert!(matches!(e, BackendError::Rejected { .. }), "{e:?}");
        let e = status_error(ResponseTemplate::new(404)).await;
        assert!(matches!(e, BackendError::Rejected { .. }), "{e:?}");
        // Too large is not a final refusal: a smaller request may pass.
        let e = status_error(ResponseTemplate::new(413).set_body_json(ErrorBody::new(
            "payload_too_large",
            "request body is larger than 1048576 bytes",
        )))
        .await;
        assert!(matches!(e, BackendError::TooLarge { .. }), "{e:?}");
        // A malformed 200 is a rejection, not a panic.
        let e = status_error(ResponseTemplate::new(200).set_body_string("{not json")).await;
        assert!(
            matches!(&e, BackendError::Rejected { message } if message.starts_with("malformed answer to POST /v1/runs/R1/lease")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn oversized_json_answer_is_rejected() {
        let pad = "x".repeat(2 * 1024 * 1024);
        let e = status_error(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"ttl_ms": 1, "pad": pad})),
        )
        .await;
        assert!(
            matches!(&e, BackendError::Rejected { message }
                if message.starts_with("answer to POST /v1/runs/R1/lease is larger than 1 MiB")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn error_body_excerpt_is_short_and_sanitized() {
        let body = format!("\x1b[31mboom\r\n{}", "y".repeat(200 * 1024));
        let e = status_error(ResponseTemplate::new(400).set_body_string(body)).await;
        let BackendError::Rejected { message } = &e else {
            panic!("{e:?}")
        };
        assert!(message.len() < 1024, "{} bytes", message.len());
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(message.contains("boom"), "{message}");
    }

    /// An error answer whose body is cut short (the connection drops mid-body) is still
    /// quoted as far as it arrived.
    #[tokio::test]
    async fn a_cut_error_body_is_quoted_as_far_as_it_arrived() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 1000\r\n\r\n\
                          upstream exploded",
                    )
                    .await;
                let _ = sock.flush().await;
                // Dropped: the body ends 983 bytes short.
            }
        });
        let b = HttpsBackend::with_options(
            &format!("http://{addr}"),
            None,
            &ProxyConfig::default(),
            HttpsOptions {
                request_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(5),
            },
        )
        .unwrap();
        b.set_worker_ulid("W1");
        let got = tokio::time::timeout(Duration::from_secs(20), b.renew_lease("R1"))
            .await
            .expect("answered");
        assert!(
            matches!(&got, Err(BackendError::Transient { message, .. }) if message.contains("HTTP 503: upstream exploded")),
            "{got:?}"
        );
    }

    /// A server announcing a huge body and then trickling is not waited for: the cap is
    /// checked before reading (a JSON answer) or reading stops at it (an error body).
    #[tokio::test]
    async fn announced_huge_bodies_are_not_read_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        /// Answers `status` with a body that never ends: announced as 1 TiB, or chunked.
        async fn serve(status: &'static str, chunked: bool) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let _ = sock.read(&mut buf).await;
                let framing = if chunked {
                    "transfer-encoding: chunked".to_string()
                } else {
                    format!("content-length: {}", 1u64 << 40)
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let piece = vec![b'z'; 64 * 1024];
                for _ in 0..20 {
                    let sent = if chunked {
                        let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
                        c.extend_from_slice(&piece);
                        c.extend_from_slice(b"\r\n");
                        sock.write_all(&c).await
                    } else {
                        sock.write_all(&piece).await
                    };
                    if sent.is_err() {
                        return; // the client stopped reading and hung up
                    }
                }
                // Never finish the body; hold the connection open.
                std::future::pending::<()>().await;
            });
            format!("http://{addr}")
        }
        let client = |base: String| {
            let b = HttpsBackend::with_options(
                &base,
                None,
                &ProxyConfig::default(),
                HttpsOptions {
                    request_timeout: Duration::from_secs(60),
                    connect_timeout: Duration::from_secs(5),
                },
            )
            .unwrap();
            b.set_worker_ulid("W1");
            b
        };
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            let ok = client(serve("200 OK", false).await).renew_lease("R1").await;
            let ok_chunked = client(serve("200 OK", true).await).renew_lease("R1").await;
            let err = client(serve("500 Internal Server Error", false).await)
                .renew_lease("R1")
                .await;
            (ok, ok_chunked, err)
        })
        .await
        .expect("waited for a body that never ends");
        assert!(
            matches!(&outcome.0, Err(BackendError::Rejected { message }) if message.contains("larger than 1 MiB")),
            "{:?}",
            outcome.0
        );
        assert!(
            matches!(&outcome.1, Err(BackendError::Rejected { message }) if message.contains("larger than 1 MiB")),
            "{:?}",
            outcome.1
        );
        assert!(
            matches!(&outcome.2, Err(BackendError::Transient { message, .. }) if message.contains("HTTP 500: zzzz")),
            "{:?}",
            outcome.2
        );
    }

    #[tokio::test]
    async fn refused_claim_is_an_outcome_not_an_error() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/runs/R1/claim"))
            .respond_with(
                ResponseTemplate::new(409)
                    .set_body_json(ErrorBody::new("conflict", "claimed by another worker")),
            )
            .mount(&server)
            .await;
        match backend(&server).claim("R1").await.unwrap() {
            ClaimOutcome::Refused(m) => assert!(m.contains("claimed by another worker"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn connection_refused_and_timeouts_are_transient() {
        // A port nobody listens on: bind, learn it, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let b = HttpsBackend::with_options(
            &format!("http://127.0.0.1:{port}"),
            None,
            &ProxyConfig::default(),
            HttpsOptions::default(),
        )
        .unwrap();
        let e = b.latest_binary(Arch::Amd64).await.unwrap_err();
        assert!(e.is_transient(), "{e:?}");

        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
            .mount(&server)
            .await;
        let b = HttpsBackend::with_options(
            &server.uri(),
            None,
            &ProxyConfig::default(),
            HttpsOptions {
                request_timeout: Duration::from_millis(200),
                connect_timeout: Duration::from_secs(5),
            },
        )
        .unwrap();
        let e = b.latest_binary(Arch::Amd64).await.unwrap_err();
        assert!(e.is_transient(), "{e:?}");
    }

    #[tokio::test]
    async fn download_streams_with_range_and_checks_etag() {
        let server = MockServer::start().await;
        let wb = WorkerBinary {
            version: "1".into(),
            arch: Arch::Amd64,
            size: 10,
            sha256: "abc".into(),
        };
        Mock::given(method("GET"))
            .and(path("/v1/worker-binaries/1/amd64"))
            .and(header("range", "bytes=4-"))
            .respond_with(
                ResponseTemplate::new(206)
                    .insert_header("ETag", "\"abc\"")
                    .set_body_bytes(&b"456789"[..]),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/worker-binaries/1/amd64"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("ETag", "\"abc\"")
                    .set_body_bytes(&b"0123456789"[..]),
            )
            .mount(&server)
            .await;
        let b = backend(&server);
        let collect = |s: ByteStream| async move {
            let parts: Vec<_> = s.collect().await;
            parts
                .into_iter()
                .flat_map(|p| p.unwrap().to_vec())
                .collect::<Vec<u8>>()
        };
        assert_eq!(
            collect(b.download_binary(&wb, 0).await.unwrap()).await,
            b"0123456789"
        );
        assert_eq!(
            collect(b.download_binary(&wb, 4).await.unwrap()).await,
            b"456789"
        );
        let mut other = wb.clone();
        other.sha256 = "def".into();
        let e = b.download_binary(&other, 0).await.err().unwrap();
        assert!(matches!(e, BackendError::Rejected { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn download_skips_when_server_ignores_range() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(&b"0123456789"[..]))
            .mount(&server)
            .await;
        let wb = WorkerBinary {
            version: "1".into(),
            arch: Arch::Amd64,
            size: 10,
            sha256: "abc".into(),
        };
        let s = backend(&server).download_binary(&wb, 7).await.unwrap();
        let got: Vec<u8> = s
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flat_map(|p| p.unwrap().to_vec())
            .collect();
        assert_eq!(got, b"789");
    }

    #[tokio::test]
    async fn http_proxy_is_used_and_no_proxy_respected() {
        // The "proxy" is a mock that answers for any absolute-form request it receives.
        let proxy = MockServer::start().await;
        let wb = WorkerBinary {
            version: "9".into(),
            arch: Arch::Amd64,
            size: 1,
            sha256: "ab".into(),
        };
        Mock::given(method("GET"))
            .and(path("/v1/worker-binaries/latest"))
            .respond_with(ResponseTemplate::new(200).set_body_json(&wb))
            .mount(&proxy)
            .await;
        let via = |no_proxy: Option<&str>| {
            HttpsBackend::with_options(
                "http://backend.invalid:8080",
                None,
                &ProxyConfig {
                    http: Some(proxy.uri()),
                    https: None,
                    no_proxy: no_proxy.map(str::to_string),
                },
                HttpsOptions::default(),
            )
            .unwrap()
        };
        assert_eq!(via(None).latest_binary(Arch::Amd64).await.unwrap(), wb);
        let reqs = proxy.received_requests().await.unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].url.host_str(), Some("backend.invalid"));
        // NO_PROXY: goes direct, and backend.invalid does not resolve.
        let e = via(Some("backend.invalid"))
            .latest_binary(Arch::Amd64)
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert_eq!(proxy.received_requests().await.unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_transient_retries_then_gives_up_or_succeeds() {
        let mut backoff = Backoff::standard(1);
        let mut calls = 0;
        let start = tokio::time::Instant::now();
        let r: Result<u32, _> = retry_transient(&mut backoff, 3, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(BackendError::Transient {
                        message: "x".into(),
                        retry_after: Some(Duration::from_secs(2)),
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r, Ok(3));
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        let mut calls = 0;
        let r: Result<(), _> = retry_transient(&mut backoff, 5, || {
            calls += 1;
            async {
                Err(BackendError::Conflict {
                    message: "no".into(),
                    run_state: None,
                })
            }
        })
        .await;
        assert!(matches!(r, Err(BackendError::Conflict { .. })));
        assert_eq!(calls, 1);
    }

    // -----------------------------------------------------------------------------------
    // A real mutual-TLS server (tokio-rustls + hyper) with rcgen certificates.

    mod mtls {
        use super::*;
        use crate::credentials::testing::TestPool;
        use crate::tls::{build_client_config, SystemRoots};
        use http_body_util::Full;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        use rustls::server::WebPkiClientVerifier;
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::sync::mpsc;

        /// Serves register answers over mTLS; reports each client's leaf certificate.
        async fn serve(
            server_pool: &TestPool,
            client_ca_pem: &str,
        ) -> (u16, mpsc::UnboundedReceiver<Option<Vec<u8>>>) {
            let (cert_pem, key_pem) = server_pool.pki.server_cert();
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .unwrap();
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let peer = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.as_ref().to_vec());
                        let _ = tx.send(peer);
                        let svc = service_fn(|_req| async {
                            let body = serde_json::to_vec(&RegisterResponse {
                                worker_ulid: "WTLS".into(),
                                pool_ulid: "P".into(),
                                heartbeat_interval_ms: 1000,
                                held_runs: vec![],
                            })
                            .unwrap();
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(body),
                            )))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
            (port, rx)
        }

        #[tokio::test]
        async fn client_certificate_is_presented() {
            let pool = TestPool::new();
            let (port, mut seen) = serve(&pool, &pool.pki.ca_cert_pem).await;
            let api = format!("https://127.0.0.1:{port}");
            let creds = pool.credentials("mqtts://127.0.0.1:1", &api);
            let tls = build_client_config(&creds, &[], SystemRoots::Exclude).unwrap();
            let b = HttpsBackend::with_options(
                &api,
                Some(tls),
                &ProxyConfig::default(),
                HttpsOptions::default(),
            )
            .unwrap();
            let resp = b.register(&register_req()).await.unwrap();
            assert_eq!(resp.worker_ulid, "WTLS");
            let peer = seen
                .recv()
                .await
                .unwrap()
                .expect("client presented a certificate");
            assert_eq!(peer, creds.certificate_chain[0].as_ref());
        }

        #[tokio::test]
        async fn foreign_certificate_is_unauthorized() {
            let pool = TestPool::new();
            let stranger = TestPool::new();
            // The server trusts only `pool`'s CA; the client presents `stranger`'s cert,
            // and trusts the server through `pool`'s CA as an additional root.
            let (port, _seen) = serve(&pool, &pool.pki.ca_cert_pem).await;
            let api = format!("https://127.0.0.1:{port}");
            let creds = stranger.credentials("mqtts://127.0.0.1:1", &api);
            let server_ca: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pool.pki.ca_cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let tls = build_client_config(&creds, &server_ca, SystemRoots::Exclude).unwrap();
            let b = HttpsBackend::with_options(
                &api,
                Some(tls),
                &ProxyConfig::default(),
                HttpsOptions::default(),
            )
            .unwrap();
            let e = b.register(&register_req()).await.unwrap_err();
            assert!(
                matches!(&e, BackendError::Unauthorized { message } if message.contains("TLS alert")),
                "{e:?}"
            );
        }

        #[tokio::test]
        async fn untrusted_server_is_rejected_not_retried() {
            let pool = TestPool::new();
            let other = TestPool::new();
            let (port, _seen) = serve(&other, &pool.pki.ca_cert_pem).await;
            let api = format!("https://127.0.0.1:{port}");
            let creds = pool.credentials("mqtts://127.0.0.1:1", &api);
            let tls = build_client_config(&creds, &[], SystemRoots::Exclude).unwrap();
            let b = HttpsBackend::with_options(
                &api,
                Some(tls),
                &ProxyConfig::default(),
                HttpsOptions::default(),
            )
            .unwrap();
            let e = b.register(&register_req()).await.unwrap_err();
            assert!(
                matches!(&e, BackendError::Rejected { message } if message.contains("not trusted")),
                "{e:?}"
            );
        }
    }
}
