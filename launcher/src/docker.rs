//! [`ContainerRuntime`] on the Docker Engine API via bollard 0.21.
//!
//! API version: Debian's dockerd 20.10 speaks API 1.41 and answers a `/v1.53/...` request
//! with 400 `client version 1.53 is too new. Maximum supported API version is 1.41`.
//! bollard 0.21.1 builds `<base>/v1.53` and then `Url::join`s the absolute route path onto
//! it, which drops the prefix: its requests actually go out unversioned, and the daemon
//! serves them at its own API version. We do not rely on that accident:
//! [`BollardRuntime::connect`] asks `/version`; on success it lowers the client version to
//! the daemon's `ApiVersion` (when older than 1.53); on a "too new" refusal it reconnects at
//! the maximum the daemon names (1.41 when the message names none) and asks again. Tests
//! prove both paths against a stub daemon on a unix socket.
//!
//! Registry credentials: the core may pass them to `pull_image`; when it passes `None` and
//! the runtime knows `SPACELIFT_DOCKER_CONFIG_DIR`, that dir's `config.json` gives them for
//! the image's registry: from its credential helper (`credHelpers`, `credsStore`) or its
//! `auths` entry ([`crate::registry_auth`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, KillContainerOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use bollard::{ClientVersion, Docker};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use protocol::api::LogStream;
use protocol::Arch;

use crate::cred_helper::HelperPath;
use crate::ports::{
    ContainerRuntime, ContainerSpec, ContainerSummary, ExitStatus, ImageInfo, OutputLine,
    OutputStream, RegistryAuth, RuntimeError,
};
use crate::secret::ExposeSecret;

/// The daemon every Docker CLI assumes.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// Per-request timeout until response headers (bollard's semantics); streams are not cut.
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// What bollard 0.21 speaks natively.
const NEWEST: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 53,
};
/// Debian's dockerd 20.10: the oldest daemon we promise to work with.
const FALLBACK: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// A line longer than this without a newline is emitted in pieces (bounded memory).
pub const MAX_LINE: usize = 64 * 1024;

/// The production [`ContainerRuntime`].
#[derive(Debug, Clone)]
pub struct BollardRuntime {
    docker: Docker,
    host: String,
    api_version: String,
    docker_config_dir: Option<PathBuf>,
    cred_helpers: HelperPath,
}

impl BollardRuntime {
    /// Connects to `docker_host` (`unix:///path`, `tcp://host:port`, `http://host:port`;
    /// None = `/var/run/docker.sock`) and negotiates the API version (see module docs).
    /// Fails with `Unavailable` when the daemon cannot be reached.
    pub async fn connect(docker_host: Option<&str>) -> Result<BollardRuntime, RuntimeError> {
        let host = docker_host.unwrap_or(DEFAULT_DOCKER_HOST).to_string();
        let docker = client(&host, &NEWEST)?;
        let (docker, version) = match docker.version().await {
            Ok(v) => {
                let server = v.api_version.as_deref().and_then(parse_version);
                match server {
                    Some(s) if (s.0, s.1) < (NEWEST.major_version, NEWEST.minor_version) => {
                        let cv = ClientVersion {
                            major_version: s.0,
                            minor_version: s.1,
                        };
                        (client(&host, &cv)?, cv)
                    }
                    _ => (docker, NEWEST),
                }
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 400,
                message,
            }) if message.contains("too new") => {
                let cv = message
                    .split("Maximum supported API version is ")
                    .nth(1)
                    .and_then(parse_version)
                    .map(|(major_version, minor_version)| ClientVersion {
                        major_version,
                        minor_version,
                    })
                    .unwrap_or(FALLBACK);
                let docker = client(&host, &cv)?;
                docker.version().await.map_err(|e| {
                    map_err(
                        e,
                        &format!("GET /v{}.{}/version", cv.major_version, cv.minor_version),
                    )
                })?;
                (docker, cv)
            }
            Err(e) => return Err(map_err(e, "GET /version")),
        };
        let api_version = format!("{}.{}", version.major_version, version.minor_version);
        tracing::debug!(%host, %api_version, "connected to the Docker daemon");
        Ok(BollardRuntime {
            docker,
            host,
            api_version,
            docker_config_dir: None,
            cred_helpers: HelperPath::default(),
        })
    }

    /// Registry credentials for pulls that come without any (`SPACELIFT_DOCKER_CONFIG_DIR`).
    pub fn with_docker_config_dir(mut self, dir: Option<PathBuf>) -> BollardRuntime {
        self.docker_config_dir = dir;
        self
    }

    /// Where `credsStore`/`credHelpers` helpers are found (default: the launcher's `PATH`).
    pub fn with_credential_helpers(mut self, helpers: HelperPath) -> BollardRuntime {
        self.cred_helpers = helpers;
        self
    }

    /// The negotiated API version, e.g. `1.41`.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The bollard client, for callers that need an endpoint the trait lacks.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }
}

fn client(host: &str, version: &ClientVersion) -> Result<Docker, RuntimeError> {
    let result = if host.starts_with("unix://") {
        Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, version)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        crate::net::docker_over_tcp(host, REQUEST_TIMEOUT_SECS, version)
    } else {
        return Err(RuntimeError::Unavailable(format!(
            "DOCKER_HOST {host:?}: unsupported scheme (expected unix:// or tcp://)"
        )));
    };
    result.map_err(|e| RuntimeError::Unavailable(format!("{host}: {e}")))
}

#[doc(hidden)] // pub for the fuzz target (fuzz/); not an API
pub fn parse_version(s: &str) -> Option<(usize, usize)> {
    let s = s.trim().trim_end_matches('.');
    let (major, rest) = s.split_once('.')?;
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((major.trim().parse().ok()?, minor.parse().ok()?))
}

/// Maps a bollard error; `what` names the call for messages.
fn map_err(e: DockerError, what: &str) -> RuntimeError {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Api(format!("{what}: {status_code}: {message}")),
        DockerError::IOError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::HyperLegacyError { .. }
        | DockerError::SocketNotFoundError(_)
        | DockerError::RequestTimeoutError => RuntimeError::Unavailable(format!("{what}: {e}")),
        other => RuntimeError::Api(format!("{what}: {other}")),
    }
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn server_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[async_trait]
impl ContainerRuntime for BollardRuntime {
    async fn architecture(&self) -> Result<Arch, RuntimeError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| map_err(e, "GET /info"))?;
        let name = info.architecture.unwrap_or_default();
        Arch::from_docker(&name).ok_or_else(|| {
            RuntimeError::Api(format!(
                "the Docker daemon reports architecture {name:?}, which has no worker binary \
                 (expected x86_64 or aarch64)"
            ))
        })
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(Some(ImageInfo {
                id: i.id.unwrap_or_default(),
                os: i.os.unwrap_or_else(|| "linux".into()),
                architecture: i.architecture.filter(|a| !a.is_empty()),
            })),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_err(e, &format!("inspect image {image}"))),
        }
    }

    async fn pull_image(
        &self,
        image: &str,
        platform: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<(), RuntimeError> {
        let auth = match auth {
            Some(a) => Some(a),
            None => match &self.docker_config_dir {
                Some(dir) => {
                    crate::registry_auth::registry_auth_for(dir, image, &self.cred_helpers).await?
                }
                None => None,
            },
        };
        // The one place registry credentials leave their wrapper: bollard's auth header.
        let credentials = auth.map(|a| bollard::auth::DockerCredentials {
            username: a.username,
            password: a.password.map(|p| p.expose_secret().to_string()),
            identitytoken: a.identity_token.map(|t| t.expose_secret().to_string()),
            serveraddress: a.server,
            ..Default::default()
        });
        let options = CreateImageOptions {
            from_image: Some(with_default_tag(image)),
            platform: platform.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        let pull_failed = |message: String| RuntimeError::PullFailed {
            image: image.to_string(),
            message,
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(_progress) => {}
                Err(DockerError::DockerStreamError { error }) => return Err(pull_failed(error)),
                Err(e) => {
                    return Err(match map_err(e, &format!("pull {image}")) {
                        RuntimeError::Unavailable(m) => RuntimeError::Unavailable(m),
                        RuntimeError::Api(m) => pull_failed(m),
                        other => other,
                    })
                }
            }
        }
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(spec.entrypoint.clone()),
            // An explicit empty Cmd: the image's CMD must not become the worker's arguments.
            cmd: Some(Vec::new()),
            env: Some(spec.env.clone()),
            labels: Some(
                spec.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            ),
            working_dir: Some(spec.working_dir.clone()),
            // Empty: the image's USER.
            user: (!spec.user.is_empty()).then(|| spec.user.clone()),
            tty: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            host_config: Some(HostConfig {
                binds: Some(spec.binds.clone()),
                network_mode: Some(spec.network.clone()),
                runtime: spec.runtime.clone(),
                init: Some(spec.init),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        match self.docker.create_container(Some(options), body).await {
            Ok(r) => {
                for w in r.warnings.iter().filter(|w| !w.is_empty()) {
                    tracing::warn!(container = %spec.name, warning = %w, "docker create warning");
                }
                Ok(r.id)
            }
            Err(e) if status_of(&e) == Some(404) && server_message(&e).contains("image") => {
                Err(RuntimeError::ImageNotFound(spec.image.clone()))
            }
            Err(e) => Err(map_err(e, &format!("create container {}", spec.name))),
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => {
                Err(RuntimeError::ContainerNotFound(id.to_string()))
            }
            Err(e) => Err(map_err(e, &format!("start container {id}"))),
        }
    }

    async fn logs(&self, id: &str) -> Result<OutputStream, RuntimeError> {
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            tail: "all".into(),
            ..Default::default()
        };
        let frames = self.docker.logs(id, Some(options));
        let id = id.to_string();
        let frames = frames.map(move |r| match r {
            Ok(frame) => Ok(frame),
            Err(e) if status_of(&e) == Some(404) => {
                Err(RuntimeError::ContainerNotFound(id.clone()))
            }
            Err(e) => Err(map_err(e, &format!("logs of {id}"))),
        });
        Ok(Box::pin(split_lines(frames)))
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let options = WaitContainerOptions {
            condition: "not-running".into(),
        };
        let mut stream = self.docker.wait_container(id, Some(options));
        let (code, wait_error) = match stream.next().await {
            Some(Ok(r)) => (
                r.status_code,
                r.error.and_then(|e| e.message).filter(|m| !m.is_empty()),
            ),
            // bollard turns a non-zero StatusCode into an error; for us it is an outcome.
            Some(Err(DockerError::DockerContainerWaitError { error, code })) => {
                (code, Some(error).filter(|m| !m.is_empty()))
            }
            Some(Err(e)) if status_of(&e) == Some(404) => {
                return Err(RuntimeError::ContainerNotFound(id.to_string()))
            }
            Some(Err(e)) => return Err(map_err(e, &format!("wait for {id}"))),
            None => {
                return Err(RuntimeError::Unavailable(format!(
                    "wait for {id}: the daemon closed the stream without a status"
                )))
            }
        };
        // OOMKilled and State.Error only come with inspect.
        let (oom_killed, state_error) = match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                (
                    state.oom_killed.unwrap_or(false),
                    state.error.filter(|e| !e.is_empty()),
                )
            }
            // Removed meanwhile (auto-remove, a reaper): the wait's answer is all we have.
            Err(_) => (false, None),
        };
        Ok(ExitStatus {
            code,
            oom_killed,
            error: state_error.or(wait_error),
        })
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let t = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptions {
            t: Some(t.min(i32::MAX as u64) as i32),
            signal: None,
        };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => {
                Err(RuntimeError::ContainerNotFound(id.to_string()))
            }
            Err(e) => Err(map_err(e, &format!("stop container {id}"))),
        }
    }

    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptions {
            signal: "SIGKILL".into(),
        };
        match self.docker.kill_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // "is not running": it is already where kill would put it.
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => {
                Err(RuntimeError::ContainerNotFound(id.to_string()))
            }
            Err(e) => Err(map_err(e, &format!("kill container {id}"))),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            // Removal already in progress.
            Err(e)
                if status_of(&e) == Some(409)
                    && server_message(&e).contains("already in progress") =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(e, &format!("remove container {id}"))),
        }
    }

    async fn list_by_labels(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([(
            "label".to_string(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| map_err(e, "list containers"))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
            })
            // The daemon filters, but a sloppy one might not: never hand back strangers.
            .filter(|c| labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
            .collect())
    }
}

/// Splits multiplexed log frames into lines per stream; partial lines are buffered across
/// frames and flushed at the end; `\r\n` is treated as `\n`.
#[doc(hidden)] // pub for the fuzz target (fuzz/); not an API
pub fn split_lines(
    frames: impl Stream<Item = Result<LogOutput, RuntimeError>> + Send + 'static,
) -> impl Stream<Item = Result<OutputLine, RuntimeError>> + Send + 'static {
    struct State<S> {
        frames: S,
        out: Vec<u8>,
        err: Vec<u8>,
        ready: VecDeque<Result<OutputLine, RuntimeError>>,
        done: bool,
    }
    let state = State {
        frames: Box::pin(frames),
        out: Vec::new(),
        err: Vec::new(),
        ready: VecDeque::new(),
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.ready.pop_front() {
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            match st.frames.next().await {
                Some(Ok(frame)) => {
                    let (stream, bytes): (LogStream, Bytes) = match frame {
                        LogOutput::StdOut { message } | LogOutput::Console { message } => {
                            (LogStream::Stdout, message)
                        }
                        LogOutput::StdErr { message } => (LogStream::Stderr, message),
                        LogOutput::StdIn { .. } => continue,
                    };
                    let buf = match stream {
                        LogStream::Stderr => &mut st.err,
                        _ => &mut st.out,
                    };
                    buf.extend_from_slice(&bytes);
                    drain_lines(buf, stream, &mut st.ready, false);
                }
                Some(Err(e)) => {
                    st.ready.push_back(Err(e));
                    st.done = true;
                }
                None => {
                    drain_lines(&mut st.out, LogStream::Stdout, &mut st.ready, true);
                    drain_lines(&mut st.err, LogStream::Stderr, &mut st.ready, true);
                    st.done = true;
                }
            }
        }
    })
}

fn drain_lines(
    buf: &mut Vec<u8>,
    stream: LogStream,
    ready: &mut VecDeque<Result<OutputLine, RuntimeError>>,
    flush: bool,
) {
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
        let end = start + pos;
        let mut line = buf[start..end]
            .strip_suffix(b"\r")
            .unwrap_or(&buf[start..end]);
        // A frame may bring a whole line longer than MAX_LINE: cut it as below.
        loop {
            let cut = if line.len() > MAX_LINE {
                char_cut(line)
            } else {
                line.len()
            };
            ready.push_back(Ok(OutputLine {
                stream,
                text: String::from_utf8_lossy(&line[..cut]).into_owned(),
                partial: cut < line.len(),
            }));
            line = &line[cut..];
            if line.is_empty() {
                break;
            }
        }
        start = end + 1;
    }
    buf.drain(..start);
    while buf.len() >= MAX_LINE {
        let cut = char_cut(buf);
        let piece: Vec<u8> = buf.drain(..cut).collect();
        ready.push_back(Ok(OutputLine {
            stream,
            text: String::from_utf8_lossy(&piece).into_owned(),
            partial: true,
        }));
    }
    if flush && !buf.is_empty() {
        let line = buf.strip_suffix(b"\r").unwrap_or(buf);
        ready.push_back(Ok(OutputLine {
            stream,
            text: String::from_utf8_lossy(line).into_owned(),
            partial: false,
        }));
        buf.clear();
    }
}

/// Where to cut `bytes` (at least MAX_LINE long) into a piece of at most MAX_LINE bytes:
/// on a char boundary where possible.
fn char_cut(bytes: &[u8]) -> usize {
    let mut cut = MAX_LINE;
    while cut > MAX_LINE - 4 && std::str::from_utf8(&bytes[..cut]).is_err() {
        cut -= 1;
    }
    cut
}

/// `image` with `:latest` when it names neither a tag nor a digest (a bare name would pull
/// every tag).
pub fn with_default_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

#[cfg(test)]
#[path = "docker_run_container_tests.rs"]
mod run_container_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        uri: String,
        body: String,
        auth_header: Option<String>,
    }

    type Handler = Arc<dyn Fn(&str, &str, &str) -> (u16, &'static str, Vec<u8>) + Send + Sync>;

    /// A Docker daemon stub on a unix socket: `handler(method, path_and_query, body)`
    /// returns (status, content type, body). Every request is recorded.
    struct Stub {
        _dir: tempfile::TempDir,
        host: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Stub {
        async fn start(handler: Handler) -> Stub {
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("docker.sock");
            let listener = tokio::net::UnixListener::bind(&sock).unwrap();
            let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
            let seen2 = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        return;
                    };
                    let handler = handler.clone();
                    let seen = seen2.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let handler = handler.clone();
                            let seen = seen.clone();
                            async move {
                                let method = req.method().to_string();
                                let uri = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.as_str().to_string())
                                    .unwrap_or_else(|| "/".into());
                                let auth_header = req
                                    .headers()
                                    .get("x-registry-auth")
                                    .map(|v| v.to_str().unwrap().to_string());
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let body = String::from_utf8_lossy(&body).into_owned();
                                seen.lock().unwrap().push(Seen {
                                    method: method.clone(),
                                    uri: uri.clone(),
                                    body: body.clone(),
                                    auth_header,
                                });
                                let (status, ctype, out) = handler(&method, &uri, &body);
                                let resp = hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", ctype)
                                    .header("api-version", "1.41")
                                    .body(Full::new(Bytes::from(out)))
                                    .unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(conn), svc)
                            .await;
                    });
                }
            });
            Stub {
                host: format!("unix://{}", sock.display()),
                _dir: dir,
                seen,
            }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    const JSON: &str = "application/json";

    fn json(status: u16, v: serde_json::Value) -> (u16, &'static str, Vec<u8>) {
        (status, JSON, serde_json::to_vec(&v).unwrap())
    }

    fn strip_version(uri: &str) -> &str {
        match uri.strip_prefix("/v") {
            Some(r) if r.starts_with(|c: char| c.is_ascii_digit()) => &r[r.find('/').unwrap()..],
            _ => uri,
        }
    }

    /// Behaves like dockerd 20.10: refuses anything above /v1.41.
    fn dockerd_20_10(method: &str, uri: &str, body: &str) -> (u16, &'static str, Vec<u8>) {
        let Some(rest) = uri
            .strip_prefix("/v")
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        else {
            // Unversioned: the daemon's own version.
            return route(method, uri, body);
        };
        let (version, path) = rest
            .split_once('/')
            .unwrap_or_else(|| panic!("uri {uri:?}"));
        let path = format!("/{path}");
        if parse_version(version).unwrap() > (1, 41) {
            return json(
                400,
                serde_json::json!({"message": format!("client version {version} is too new. Maximum supported API version is 1.41")}),
            );
        }
        route(method, &path, body)
    }

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![stream, 0, 0, 0];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn route(method: &str, path: &str, _body: &str) -> (u16, &'static str, Vec<u8>) {
        let p = path.split('?').next().unwrap();
        match (method, p) {
            ("GET", "/version") => json(
                200,
                serde_json::json!({"ApiVersion": "1.41", "Version": "20.10.24", "MinAPIVersion": "1.12", "Os": "linux", "Arch": "amd64"}),
            ),
            ("GET", "/info") => json(200, serde_json::json!({"Architecture": "aarch64"})),
            ("GET", "/images/present:1/json") => json(
                200,
                serde_json::json!({"Id": "sha256:abc", "Architecture": "arm64", "Os": "linux"}),
            ),
            ("GET", p) if p.starts_with("/images/") => {
                json(404, serde_json::json!({"message": "No such image: absent:latest"}))
            }
            ("POST", "/images/create") if path.contains("fromImage=bad") => (
                200,
                JSON,
                b"{\"status\":\"Pulling from library/bad\"}\n{\"errorDetail\":{\"message\":\"no matching manifest for linux/arm64/v8\"},\"error\":\"no matching manifest for linux/arm64/v8\"}\n".to_vec(),
            ),
            ("POST", "/images/create") if path.contains("fromImage=denied") => json(
                404,
                serde_json::json!({"message": "pull access denied for denied, repository does not exist or may require 'docker login'"}),
            ),
            ("POST", "/images/create") => (
                200,
                JSON,
                b"{\"status\":\"Pulling from library/alpine\",\"id\":\"latest\"}\n{\"status\":\"Status: Downloaded newer image for alpine:latest\"}\n".to_vec(),
            ),
            ("POST", "/containers/create") if path.contains("name=noimage") => {
                json(404, serde_json::json!({"message": "No such image: nope:latest"}))
            }
            ("POST", "/containers/create") => {
                json(201, serde_json::json!({"Id": "c0ffee", "Warnings": []}))
            }
            ("POST", "/containers/c0ffee/start") => (204, JSON, vec![]),
            ("POST", "/containers/c0ffee/wait") => (200, JSON, b"{\"StatusCode\":137}\n".to_vec()),
            ("POST", "/containers/ok/wait") => (200, JSON, b"{\"StatusCode\":0}\n".to_vec()),
            ("GET", "/containers/c0ffee/json") => json(
                200,
                serde_json::json!({"Id": "c0ffee", "State": {"Status": "exited", "OOMKilled": true, "ExitCode": 137, "Error": ""}}),
            ),
            ("GET", "/containers/ok/json") => json(
                200,
                serde_json::json!({"Id": "ok", "State": {"Status": "exited", "OOMKilled": false, "ExitCode": 0, "Error": ""}}),
            ),
            ("GET", "/containers/c0ffee/logs") => {
                let mut body = frame(1, b"hello wo");
                body.extend(frame(2, b"err line\r\n"));
                body.extend(frame(1, b"rld\nsecond\nunterminated"));
                body.extend(frame(1, &"caf\u{e9}".as_bytes()[..4]));
                body.extend(frame(1, &"caf\u{e9}".as_bytes()[4..]));
                (200, "application/vnd.docker.multiplexed-stream", body)
            }
            ("POST", "/containers/c0ffee/stop") => (204, JSON, vec![]),
            ("POST", "/containers/c0ffee/kill") => json(
                409,
                serde_json::json!({"message": "cannot kill container: c0ffee: container c0ffee is not running"}),
            ),
            ("POST", "/containers/gone/kill") => {
                json(404, serde_json::json!({"message": "No such container: gone"}))
            }
            ("DELETE", "/containers/gone") => {
                json(404, serde_json::json!({"message": "No such container: gone"}))
            }
            ("DELETE", "/containers/c0ffee") => (204, JSON, vec![]),
            ("GET", "/containers/json") => json(
                200,
                serde_json::json!([
                    {"Id": "c1", "Names": ["/run-1"], "Labels": {"a": "1", "b": "2"}, "State": "running"},
                    {"Id": "c2", "Names": ["/stranger"], "Labels": {"a": "9"}, "State": "exited"}
                ]),
            ),
            _ => json(404, serde_json::json!({"message": "page not found"})),
        }
    }

    async fn runtime() -> (Stub, BollardRuntime) {
        let stub = Stub::start(Arc::new(dockerd_20_10)).await;
        let rt = BollardRuntime::connect(Some(&stub.host)).await.unwrap();
        (stub, rt)
    }

    #[tokio::test]
    async fn negotiates_down_to_api_1_41_like_debian_dockerd_20_10() {
        let (stub, rt) = runtime().await;
        assert_eq!(rt.api_version(), "1.41");
        assert_eq!(rt.architecture().await.unwrap(), Arch::Arm64);
        // bollard 0.21.1 joins absolute paths onto its versioned base URL, which drops the
        // `/v1.53` prefix: requests go out unversioned (served at the daemon's own API
        // version). Whatever bollard does, nothing above 1.41 may reach this daemon
        // successfully, and the session must work.
        for s in stub.seen() {
            if let Some(r) = s.uri.strip_prefix("/v").filter(|r| r.starts_with('1')) {
                let v = parse_version(r.split('/').next().unwrap()).unwrap();
                assert!(v <= (1, 41), "{} reached the daemon", s.uri);
            }
        }
        let uris: Vec<String> = stub
            .seen()
            .into_iter()
            .map(|s| strip_version(&s.uri).to_string())
            .collect();
        assert_eq!(uris.last().unwrap(), "/info");
    }

    #[tokio::test]
    async fn lowers_to_an_older_daemon_version_it_accepts() {
        // A daemon that accepts 1.53 but speaks 1.45: use 1.45.
        let stub = Stub::start(Arc::new(|m: &str, uri: &str, _b: &str| {
            if uri.ends_with("/version") {
                json(200, serde_json::json!({"ApiVersion": "1.45"}))
            } else {
                route(m, strip_version(uri), "")
            }
        }))
        .await;
        let rt = BollardRuntime::connect(Some(&stub.host)).await.unwrap();
        assert_eq!(rt.api_version(), "1.45");
        rt.architecture().await.unwrap();
        assert_eq!(strip_version(&stub.seen().last().unwrap().uri), "/info");
    }

    #[tokio::test]
    async fn too_new_refusal_reconnects_at_the_named_maximum() {
        // A daemon (or a bollard that sends /v1.53 again) refusing the first ask.
        let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = refused.clone();
        let stub = Stub::start(Arc::new(move |m: &str, uri: &str, b: &str| {
            if uri.ends_with("/version") && !r.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return json(
                    400,
                    serde_json::json!({"message": "client version 1.53 is too new. Maximum supported API version is 1.41"}),
                );
            }
            route(m, strip_version(uri), b)
        }))
        .await;
        let rt = BollardRuntime::connect(Some(&stub.host)).await.unwrap();
        assert_eq!(rt.api_version(), "1.41");
        assert_eq!(rt.architecture().await.unwrap(), Arch::Arm64);
        let versions = stub
            .seen()
            .iter()
            .filter(|s| s.uri.ends_with("/version"))
            .count();
        assert_eq!(versions, 2);
    }

    #[tokio::test]
    async fn missing_socket_is_unavailable() {
        let e = BollardRuntime::connect(Some("unix:///nonexistent/docker.sock"))
            .await
            .unwrap_err();
        assert!(matches!(e, RuntimeError::Unavailable(_)), "{e:?}");
        // A socket path that exists but nobody serves.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let e = BollardRuntime::connect(Some(&format!("unix://{}", sock.display())))
            .await
            .unwrap_err();
        assert!(matches!(e, RuntimeError::Unavailable(_)), "{e:?}");
    }

    #[tokio::test]
    async fn images_inspect_and_pull() {
        let (stub, rt) = runtime().await;
        assert_eq!(
            rt.inspect_image("present:1").await.unwrap(),
            Some(ImageInfo {
                id: "sha256:abc".into(),
                os: "linux".into(),
                architecture: Some("arm64".into())
            })
        );
        assert_eq!(rt.inspect_image("absent").await.unwrap(), None);
        rt.pull_image("alpine", "linux/arm64", None).await.unwrap();
        let pull = stub
            .seen()
            .into_iter()
            .find(|s| s.uri.contains("/images/create"))
            .unwrap();
        assert!(
            pull.uri.contains("fromImage=alpine%3Alatest"),
            "{}",
            pull.uri
        );
        assert!(pull.uri.contains("platform=linux%2Farm64"), "{}", pull.uri);
        assert_eq!(
            rt.pull_image("bad", "linux/arm64", None).await.unwrap_err(),
            RuntimeError::PullFailed {
                image: "bad".into(),
                message: "no matching manifest for linux/arm64/v8".into()
            }
        );
        let e = rt
            .pull_image("denied", "linux/amd64", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, RuntimeError::PullFailed { message, .. } if message.contains("pull access denied")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn pull_uses_docker_config_dir_credentials() {
        let (stub, rt) = runtime().await;
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        std::fs::write(
            dir.path().join("config.json"),
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        let rt = rt.with_docker_config_dir(Some(dir.path().to_path_buf()));
        rt.pull_image("library/alpine:3", "linux/amd64", None)
            .await
            .unwrap();
        let header = stub.seen().into_iter().find_map(|s| s.auth_header).unwrap();
        let decoded = base64::engine::general_purpose::URL_SAFE
            .decode(header.trim_end_matches('='))
            .or_else(|_| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(header.trim_end_matches('='))
            })
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(v["username"], "bob");
        assert_eq!(v["password"], "s3cret");
    }

    /// The credentials a `credHelpers` helper answers reach the daemon in X-Registry-Auth;
    /// a missing helper fails the pull, naming it, before the daemon is asked.
    #[tokio::test]
    async fn pull_uses_credential_helper_credentials() {
        let (stub, rt) = runtime().await;
        let helpers = tempfile::tempdir().unwrap();
        crate::cred_helper::write_test_helper(
            helpers.path(),
            "acme",
            r#"[ "$(cat)" = registry.example.com ] || exit 3
echo '{"ServerURL":"registry.example.com","Username":"robot","Secret":"helper-s3cret"}'"#,
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"credHelpers":{"registry.example.com":"acme","ghcr.io":"absent"}}"#,
        )
        .unwrap();
        let rt = rt
            .with_docker_config_dir(Some(dir.path().to_path_buf()))
            .with_credential_helpers(HelperPath::dirs(helpers.path()));
        rt.pull_image("registry.example.com/team/app:1", "linux/amd64", None)
            .await
            .unwrap();
        let header = stub.seen().into_iter().find_map(|s| s.auth_header).unwrap();
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(v["username"], "robot");
        assert_eq!(v["password"], "helper-s3cret");
        assert_eq!(v["serveraddress"], "registry.example.com");

        let pulls = || {
            stub.seen()
                .iter()
                .filter(|s| s.uri.contains("/images/create"))
                .count()
        };
        let before = pulls();
        let e = rt
            .pull_image("ghcr.io/o/i:1", "linux/amd64", None)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-credential-absent not found on PATH (needed for ghcr.io)"),
            "{e}"
        );
        assert_eq!(pulls(), before);
    }

    #[tokio::test]
    async fn container_lifecycle() {
        let (stub, rt) = runtime().await;
        let spec = ContainerSpec {
            name: "run-1".into(),
            image: "alpine:3".into(),
            entrypoint: vec!["/opt/spacelift/worker".into(), "run".into()],
            env: vec!["A=1".into()],
            labels: BTreeMap::from([("workers.spacelift.io/run-id".into(), "R1".into())]),
            binds: vec!["/opt/spacelift/binaries:/opt/spacelift/binaries:ro".into()],
            network: "none".into(),
            runtime: Some("runsc".into()),
            working_dir: "/mnt/workspace".into(),
            user: "1983:1983".into(),
            init: true,
        };
        assert_eq!(rt.create(&spec).await.unwrap(), "c0ffee");
        let create = stub
            .seen()
            .into_iter()
            .find(|s| s.uri.contains("/containers/create"))
            .unwrap();
        assert!(create.uri.contains("name=run-1"), "{}", create.uri);
        let body: serde_json::Value = serde_json::from_str(&create.body).unwrap();
        assert_eq!(
            body["Entrypoint"],
            serde_json::json!(["/opt/spacelift/worker", "run"])
        );
        assert_eq!(body["Cmd"], serde_json::json!([]));
        assert_eq!(body["Env"], serde_json::json!(["A=1"]));
        assert_eq!(body["Labels"]["workers.spacelift.io/run-id"], "R1");
        assert_eq!(body["WorkingDir"], "/mnt/workspace");
        assert_eq!(
            body["HostConfig"]["Binds"][0],
            "/opt/spacelift/binaries:/opt/spacelift/binaries:ro"
        );
        assert_eq!(body["HostConfig"]["NetworkMode"], "none");
        assert_eq!(body["HostConfig"]["Runtime"], "runsc");
        assert_eq!(body["User"], "1983:1983");
        assert_eq!(body["HostConfig"]["Init"], true);

        let mut spec2 = spec.clone();
        spec2.name = "noimage".into();
        spec2.image = "nope".into();
        assert_eq!(
            rt.create(&spec2).await.unwrap_err(),
            RuntimeError::ImageNotFound("nope".into())
        );

        rt.start("c0ffee").await.unwrap();
        // Non-zero exit is an outcome, not an error; OOMKilled comes from inspect.
        assert_eq!(
            rt.wait("c0ffee").await.unwrap(),
            ExitStatus {
                code: 137,
                oom_killed: true,
                error: None
            }
        );
        assert_eq!(
            rt.wait("ok").await.unwrap(),
            ExitStatus {
                code: 0,
                oom_killed: false,
                error: None
            }
        );
        rt.stop("c0ffee", Duration::from_millis(1500))
            .await
            .unwrap();
        let stop = stub
            .seen()
            .into_iter()
            .find(|s| s.uri.contains("/stop"))
            .unwrap();
        assert!(stop.uri.contains("t=2"), "{}", stop.uri);
        rt.kill("c0ffee").await.unwrap(); // 409 not running: fine
        assert_eq!(
            rt.kill("gone").await.unwrap_err(),
            RuntimeError::ContainerNotFound("gone".into())
        );
        rt.remove("c0ffee").await.unwrap();
        rt.remove("gone").await.unwrap(); // 404 is fine
        let del = stub
            .seen()
            .into_iter()
            .find(|s| s.method == "DELETE")
            .unwrap();
        assert!(del.uri.contains("force=true"), "{}", del.uri);
    }

    #[test]
    fn a_long_unterminated_line_is_cut_into_partial_pieces() {
        let mut buf = vec![b'a'; MAX_LINE + 10];
        let mut ready = VecDeque::new();
        drain_lines(&mut buf, LogStream::Stdout, &mut ready, false);
        buf.extend_from_slice(b"bc\n");
        drain_lines(&mut buf, LogStream::Stdout, &mut ready, false);
        let got: Vec<(usize, bool)> = ready
            .into_iter()
            .map(|l| l.map(|l| (l.text.len(), l.partial)).unwrap())
            .collect();
        assert_eq!(got, [(MAX_LINE, true), (12, false)]);
    }

    #[tokio::test]
    async fn logs_are_split_into_lines_across_frames() {
        let (stub, rt) = runtime().await;
        let lines: Vec<(LogStream, String)> = rt
            .logs("c0ffee")
            .await
            .unwrap()
            .map(|l| {
                let l = l.unwrap();
                (l.stream, l.text)
            })
            .collect()
            .await;
        assert_eq!(
            lines,
            [
                (LogStream::Stderr, "err line".to_string()),
                (LogStream::Stdout, "hello world".to_string()),
                (LogStream::Stdout, "second".to_string()),
                (LogStream::Stdout, "unterminatedcafé".to_string()),
            ]
        );
        let req = stub
            .seen()
            .into_iter()
            .find(|s| s.uri.contains("/logs"))
            .unwrap();
        assert!(req.uri.contains("follow=true"), "{}", req.uri);
        assert!(
            req.uri.contains("stdout=true") && req.uri.contains("stderr=true"),
            "{}",
            req.uri
        );
    }

    #[tokio::test]
    async fn list_by_labels_filters() {
        let (stub, rt) = runtime().await;
        let want = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let got = rt.list_by_labels(&want).await.unwrap();
        assert_eq!(
            got,
            [ContainerSummary {
                id: "c1".into(),
                name: "run-1".into(),
                labels: BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
                running: true,
            }]
        );
        let req = stub
            .seen()
            .into_iter()
            .find(|s| s.uri.contains("/containers/json"))
            .unwrap();
        let query: String = form_decode(req.uri.split_once('?').unwrap().1);
        assert!(query.contains(r#""label":["a=1"]"#), "{query}");
        assert!(query.contains("all=true"), "{query}");
    }

    fn form_decode(q: &str) -> String {
        let mut out = Vec::new();
        let b = q.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' => {
                    out.push(
                        u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16)
                            .unwrap(),
                    );
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Against the real Debian dockerd 20.10 (API 1.41) from `scripts/dockerd.sh`, when
    /// `TEST_DOCKER_HOST` names it. Never pulls (no registry is reachable here).
    #[tokio::test]
    async fn real_dockerd_when_test_docker_host_is_set() {
        let host = std::env::var("TEST_DOCKER_HOST").ok();
        use protocol::test_support::{require_component, START_DOCKERD};
        if !require_component(
            host.is_some(),
            "a real dockerd (TEST_DOCKER_HOST)",
            START_DOCKERD,
        ) {
            return;
        }
        let host = host.unwrap_or_default();
        let rt = BollardRuntime::connect(Some(&host)).await.unwrap();
        eprintln!("negotiated API {}", rt.api_version());
        let arch = rt.architecture().await.unwrap();
        let image = rt
            .inspect_image("busybox:latest")
            .await
            .unwrap()
            .expect("busybox:latest");
        assert_eq!(image.architecture.as_deref(), Some(arch.as_str()));
        assert_eq!(rt.inspect_image("no-such-image:nope").await.unwrap(), None);
        let label = format!("adapter-test-{}", std::process::id());
        let labels = BTreeMap::from([("spacelift-launcher.test".to_string(), label.clone())]);
        let spec = ContainerSpec {
            name: label.clone(),
            image: "busybox:latest".into(),
            entrypoint: vec![
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; printf partial; exit 3".into(),
            ],
            env: vec!["A=1".into()],
            labels: labels.clone(),
            binds: vec![],
            network: "none".into(),
            runtime: None,
            working_dir: "/mnt/workspace".into(),
            user: String::new(),
            init: false,
        };
        let id = rt.create(&spec).await.unwrap();
        rt.start(&id).await.unwrap();
        let status = rt.wait(&id).await.unwrap();
        assert_eq!(
            status,
            ExitStatus {
                code: 3,
                oom_killed: false,
                error: None
            }
        );
        let mut lines: Vec<(LogStream, String)> = rt
            .logs(&id)
            .await
            .unwrap()
            .map(|l| {
                let l = l.unwrap();
                (l.stream, l.text)
            })
            .collect()
            .await;
        // Order between the two streams is not defined; within one it is.
        lines.sort_by_key(|(s, t)| (*s == LogStream::Stderr, t.clone()));
        assert_eq!(
            lines,
            [
                (LogStream::Stdout, "out".to_string()),
                (LogStream::Stdout, "partial".to_string()),
                (LogStream::Stderr, "err".to_string()),
            ]
        );
        let found = rt.list_by_labels(&labels).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, label);
        assert!(!found[0].running);
        // A foreign-architecture image: inspect says so; running it fails with exec format
        // error (exit 1 with this runc, 255 with runc >= 1.2).
        let arm = rt
            .inspect_image("busybox-arm64:latest")
            .await
            .unwrap()
            .expect("busybox-arm64:latest");
        assert_eq!(arm.architecture.as_deref(), Some("arm64"));
        let mut foreign = spec.clone();
        foreign.name = format!("{label}-arm");
        foreign.image = "busybox-arm64:latest".into();
        let arm_id = rt.create(&foreign).await.unwrap();
        rt.start(&arm_id).await.unwrap();
        let status = rt.wait(&arm_id).await.unwrap();
        assert!(matches!(status.code, 1 | 255), "{status:?}");
        let text: Vec<String> = rt
            .logs(&arm_id)
            .await
            .unwrap()
            .map(|l| l.unwrap().text)
            .collect()
            .await;
        assert!(
            text.iter().any(|l| l.contains("exec format error")),
            "{text:?}"
        );
        rt.remove(&arm_id).await.unwrap();

        rt.kill(&id).await.unwrap(); // not running: fine
        rt.remove(&id).await.unwrap();
        rt.remove(&id).await.unwrap(); // gone: fine
        assert!(rt.list_by_labels(&labels).await.unwrap().is_empty());
    }

    #[test]
    fn image_reference_helpers() {
        assert_eq!(with_default_tag("alpine"), "alpine:latest");
        assert_eq!(with_default_tag("alpine:3"), "alpine:3");
        assert_eq!(
            with_default_tag("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(with_default_tag("x@sha256:ab"), "x@sha256:ab");
    }

    /// Found by fuzz/ (docker_logs): a line longer than MAX_LINE that arrived whole, with
    /// its newline, in one frame was passed on in one piece.
    #[test]
    fn a_long_line_in_one_frame_is_cut_too() {
        let mut buf = "x".repeat(MAX_LINE + 10).into_bytes();
        buf.extend_from_slice(b"\nend\n");
        let mut ready = VecDeque::new();
        drain_lines(&mut buf, LogStream::Stdout, &mut ready, true);
        let pieces: Vec<(usize, bool)> = ready
            .into_iter()
            .map(|r| r.unwrap())
            .map(|l| (l.text.len(), l.partial))
            .collect();
        // The first piece is continued by the next, so masking keeps a window across it.
        assert_eq!(pieces, vec![(MAX_LINE, true), (10, false), (3, false)]);
        assert!(buf.is_empty());
    }
}
