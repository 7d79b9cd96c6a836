//! The Docker Engine API router: version prefix, faults, headers, dispatch.
//!
//! Hand-rolled rather than axum's router because image names contain `/` in the middle
//! of paths (`/images/docker.io/library/alpine:latest/json`), every route exists with and
//! without `/vX.YY`, and attach needs the raw hyper request for its 101 upgrade.

mod containers;
mod decode;
mod images;
mod networks;
mod streams;
mod system;

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use crate::config::parse_version;
use crate::error::{ApiError, ApiResult};
use crate::http::{error, read_body, Query, Reply};
use crate::state::Daemon;

/// Declares [`Route`], its [`Route::key`] and [`ROUTE_KEYS`] from one list, so a route
/// cannot have a key that fault validation does not know (or the reverse).
macro_rules! routes {
    ($($variant:ident $(($arg:ty))? => $key:literal,)*) => {
        /// A matched route. `key()` names it for fault injection and the request log.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Route {
            $($variant $(($arg))?,)*
        }

        impl Route {
            pub fn key(&self) -> &'static str {
                match self {
                    $(Route::$variant { .. } => $key,)*
                }
            }
        }

        /// Every route key, for documentation and validation of fault requests.
        pub const ROUTE_KEYS: &[&str] = &[$($key,)*];
    };
}

routes! {
    Ping => "ping",
    Version => "version",
    Info => "info",
    Events => "events",
    ImagesCreate => "images.create",
    ImagesList => "images.list",
    ImageInspect(String) => "images.inspect",
    ImageDelete(String) => "images.delete",
    ContainersCreate => "containers.create",
    ContainersList => "containers.list",
    ContainerInspect(String) => "containers.inspect",
    ContainerStart(String) => "containers.start",
    ContainerWait(String) => "containers.wait",
    ContainerLogs(String) => "containers.logs",
    ContainerAttach(String) => "containers.attach",
    ContainerKill(String) => "containers.kill",
    ContainerStop(String) => "containers.stop",
    ContainerDelete(String) => "containers.delete",
    NetworksList => "networks.list",
    NetworkInspect(String) => "networks.inspect",
    NetworkCreate => "networks.create",
    NetworkDelete(String) => "networks.delete",
}

fn decode(s: &str) -> String {
    percent_decode(s)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `/v1.41/containers/json` into `(Some("1.41"), "/containers/json")`.
pub fn split_version(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix("/v") {
        let end = rest.find('/').unwrap_or(rest.len());
        let v = &rest[..end];
        if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return (Some(v), &rest[end..]);
        }
    }
    (None, path)
}

pub fn route(method: &Method, path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = method.as_str();
    let one = |s: &str| decode(s);
    Some(match (m, segs.as_slice()) {
        ("GET" | "HEAD", ["_ping"]) => Route::Ping,
        ("GET", ["version"]) => Route::Version,
        ("GET", ["info"]) => Route::Info,
        ("GET", ["events"]) => Route::Events,
        ("POST", ["images", "create"]) => Route::ImagesCreate,
        ("GET", ["images", "json"]) => Route::ImagesList,
        ("GET", ["images", name @ .., "json"]) if !name.is_empty() => {
            Route::ImageInspect(name.iter().map(|s| one(s)).collect::<Vec<_>>().join("/"))
        }
        ("DELETE", ["images", name @ ..]) if !name.is_empty() => {
            Route::ImageDelete(name.iter().map(|s| one(s)).collect::<Vec<_>>().join("/"))
        }
        ("POST", ["containers", "create"]) => Route::ContainersCreate,
        ("GET", ["containers", "json"]) => Route::ContainersList,
        ("GET", ["containers", id, "json"]) => Route::ContainerInspect(one(id)),
        ("POST", ["containers", id, "start"]) => Route::ContainerStart(one(id)),
        ("POST", ["containers", id, "wait"]) => Route::ContainerWait(one(id)),
        ("GET", ["containers", id, "logs"]) => Route::ContainerLogs(one(id)),
        ("POST", ["containers", id, "attach"]) => Route::ContainerAttach(one(id)),
        ("POST", ["containers", id, "kill"]) => Route::ContainerKill(one(id)),
        ("POST", ["containers", id, "stop"]) => Route::ContainerStop(one(id)),
        ("DELETE", ["containers", id]) => Route::ContainerDelete(one(id)),
        ("GET", ["networks"]) => Route::NetworksList,
        ("GET", ["networks", id]) => Route::NetworkInspect(one(id)),
        ("POST", ["networks", "create"]) => Route::NetworkCreate,
        ("DELETE", ["networks", id]) => Route::NetworkDelete(one(id)),
        _ => return None,
    })
}

/// Per-request context handed to handlers.
pub struct Ctx {
    pub daemon: Arc<Daemon>,
    pub query: Query,
    /// The API version in effect (from the path, else the daemon's maximum).
    pub version: (u32, u32),
}

impl Ctx {
    pub fn legacy(&self) -> bool {
        self.daemon.config.legacy_messages()
    }
}

/// Parses a JSON body the way dockerd reports failures (20.10: 500; later: 400 "invalid JSON").
pub fn parse_json(ctx: &Ctx, body: &[u8]) -> ApiResult<Value> {
    decode::first_value(body).map_err(|m| decode::decode_error(ctx, m))
}

fn add_headers(daemon: &Daemon, r: &mut Reply) {
    let h = r.headers_mut();
    let v = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert("Api-Version", v(&daemon.config.api_version));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert(
        "Server",
        v(&format!("Docker/{} (linux)", daemon.config.server_version)),
    );
}

pub async fn handle(daemon: Arc<Daemon>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let method = req.method().clone();
    let full_path = req.uri().path().to_string();
    // The request's arrival and its reply, for timelines (benches/timeline.rs).
    tracing::debug!(%method, path = %full_path, "request received");
    let (version, path) = split_version(&full_path);
    let max = parse_version(&daemon.config.api_version).unwrap_or((1, 41));
    let min = parse_version(&daemon.config.min_api_version).unwrap_or((1, 12));
    let mut reply = dispatch(&daemon, req, version, path, max, min).await;
    add_headers(&daemon, &mut reply);
    let status = reply.status().as_u16().to_string();
    tracing::debug!(path = %full_path, %status, "reply ready");
    let mut st = daemon.lock();
    let attrs = [
        ("method".to_string(), method.to_string()),
        ("path".to_string(), full_path),
        ("status".to_string(), status),
    ]
    .into_iter()
    .collect();
    daemon.record(&mut st, "request", "http", "", attrs);
    Ok(reply)
}

async fn dispatch(
    daemon: &Arc<Daemon>,
    req: Request<Incoming>,
    version: Option<&str>,
    path: &str,
    max: (u32, u32),
    min: (u32, u32),
) -> Reply {
    let effective = match version {
        None => max,
        Some(v) => match parse_version(v) {
            None => return error(&ApiError::not_found("page not found")),
            Some(pv) if pv > max => {
                return error(&ApiError::bad_request(format!(
                    "client version {v} is too new. Maximum supported API version is {}",
                    daemon.config.api_version
                )))
            }
            Some(pv) if pv < min => {
                return error(&ApiError::bad_request(format!(
                    "client version {v} is too old. Minimum supported API version is {}, please upgrade your client to a newer version",
                    daemon.config.min_api_version
                )))
            }
            Some(pv) => pv,
        },
    };
    let Some(route) = route(req.method(), path) else {
        return error(&ApiError::not_found("page not found"));
    };
    let key = route.key();
    let (latency, fault) = {
        let mut st = daemon.lock();
        let latency = st.faults.latency_for(key);
        let fault = st.faults.take_route_fault(key);
        if let Some(f) = &fault {
            let attrs = [
                ("route".to_string(), key.to_string()),
                ("status".to_string(), f.status.to_string()),
            ]
            .into_iter()
            .collect();
            daemon.record(&mut st, "fault", "route", "", attrs);
        }
        (latency, fault)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(f) = fault {
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(&ApiError::new(status, f.message));
    }
    let ctx = Ctx {
        daemon: daemon.clone(),
        query: Query::parse(req.uri().query()),
        version: effective,
    };
    let result = match route {
        Route::Ping => Ok(system::ping(&ctx, req.method() == Method::HEAD)),
        Route::Version => Ok(system::version(&ctx)),
        Route::Info => Ok(system::info(&ctx)),
        Route::Events => streams::events(&ctx),
        Route::ImagesCreate => images::pull(&ctx),
        Route::ImagesList => images::list(&ctx),
        Route::ImageInspect(name) => images::inspect(&ctx, &name),
        Route::ImageDelete(name) => images::delete(&ctx, &name),
        Route::ContainersCreate => {
            match read_body(daemon.config.max_body_bytes, req.into_body()).await {
                Ok(body) => containers::create(&ctx, &body),
                Err(e) => Err(e),
            }
        }
        Route::ContainersList => containers::list(&ctx),
        Route::ContainerInspect(id) => containers::inspect(&ctx, &id),
        Route::ContainerStart(id) => {
            match read_body(daemon.config.max_body_bytes, req.into_body()).await {
                Ok(body) => containers::start(&ctx, &id, &body).await,
                Err(e) => Err(e),
            }
        }
        Route::ContainerWait(id) => streams::wait(&ctx, &id),
        Route::ContainerLogs(id) => streams::logs(&ctx, &id),
        Route::ContainerAttach(id) => streams::attach(&ctx, &id, req),
        Route::ContainerKill(id) => containers::kill(&ctx, &id),
        Route::ContainerStop(id) => containers::stop(&ctx, &id).await,
        Route::ContainerDelete(id) => containers::delete(&ctx, &id),
        Route::NetworksList => networks::list(&ctx),
        Route::NetworkInspect(id) => networks::inspect(&ctx, &id),
        Route::NetworkCreate => {
            match read_body(daemon.config.max_body_bytes, req.into_body()).await {
                Ok(body) => networks::create(&ctx, &body),
                Err(e) => Err(e),
            }
        }
        Route::NetworkDelete(id) => networks::delete(&ctx, &id),
    };
    result.unwrap_or_else(|e| error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_with_and_without_version() {
        assert_eq!(split_version("/v1.41/info"), (Some("1.41"), "/info"));
        assert_eq!(split_version("/info"), (None, "/info"));
        assert_eq!(split_version("/volumes"), (None, "/volumes"));
        assert_eq!(
            route(&Method::GET, "/images/docker.io/library/alpine:latest/json"),
            Some(Route::ImageInspect(
                "docker.io/library/alpine:latest".into()
            ))
        );
        assert_eq!(route(&Method::HEAD, "/_ping"), Some(Route::Ping));
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}

/// Behaviours play on tokio's clock: with paused time, a 30 s run and a 10 s stop grace
/// period take no wall-clock time and land on exact, deterministic timestamps.
#[cfg(test)]
mod paused_time_tests {
    use std::time::Duration;

    use super::*;
    use crate::admin::Admin;
    use crate::behaviour::{Behaviour, Match, Rule};
    use crate::config::Config;

    fn daemon() -> Arc<Daemon> {
        let rule = |label: &str, behaviour| Rule {
            matches: Match {
                labels: [("job".to_string(), label.to_string())].into(),
                ..Match::default()
            },
            behaviour,
        };
        let config = Config {
            local_images: vec!["busybox".into()],
            rules: vec![
                rule(
                    "run",
                    Behaviour {
                        stdout: vec!["x".into()],
                        duration_ms: 30_000,
                        exit_code: 2,
                        ..Behaviour::default()
                    },
                ),
                rule(
                    "stubborn",
                    Behaviour {
                        hang: true,
                        ignore_sigterm: true,
                        ..Behaviour::default()
                    },
                ),
            ],
            ..Config::default()
        };
        Daemon::new(config).expect("daemon")
    }

    fn create(d: &Arc<Daemon>, name: &str, job: &str) {
        let ctx = Ctx {
            daemon: d.clone(),
            query: Query::parse(Some(&format!("name={name}"))),
            version: (1, 53),
        };
        let body = format!(r#"{{"Image":"busybox","Cmd":["x"],"Labels":{{"job":"{job}"}}}}"#);
        containers::create(&ctx, body.as_bytes()).expect("create");
    }

    #[tokio::test(start_paused = true)]
    async fn duration_and_stop_grace_use_tokio_time() {
        let d = daemon();
        let admin = Admin { daemon: d.clone() };
        let t0 = tokio::time::Instant::now();

        create(&d, "runner", "run");
        assert!(crate::runner::start(&d, "runner").await.expect("start"));
        let die = admin.wait_for_event(|e| e.action == "die").await;
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        assert_eq!(
            die.attributes.get("exitCode").map(String::as_str),
            Some("2")
        );
        assert_eq!(die.time, "2024-01-01T00:00:30Z");

        create(&d, "stubborn", "stubborn");
        assert!(crate::runner::start(&d, "stubborn").await.expect("start"));
        assert!(crate::runner::stop(&d, "stubborn", Some(10))
            .await
            .expect("stop"));
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(40),
            "SIGTERM ignored, SIGKILL after t=10"
        );
        let info = admin.containers();
        assert_eq!(info[1].exit_code, 137);
        let actions: Vec<String> = admin
            .events()
            .into_iter()
            .filter(|e| e.kind == "container")
            .map(|e| {
                format!(
                    "{}:{}",
                    e.attributes.get("name").cloned().unwrap_or_default(),
                    e.action
                )
            })
            .collect();
        assert_eq!(
            actions,
            [
                "runner:create",
                "runner:start",
                "runner:die",
                "stubborn:create",
                "stubborn:start",
                "stubborn:kill",
                "stubborn:kill",
                "stubborn:die",
            ]
        );
    }
}
