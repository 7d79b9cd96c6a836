//! `/_fake/...`: the test-instrument API over HTTP, a thin face on the in-process [`Admin`].
//! Apart from `admin.rs` so the state changes know nothing of HTTP; the server routes here
//! before the Docker API, which never sees these paths.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::admin::{Admin, RestartOptions};
use crate::error::{ApiError, Error};
use crate::http::{error, json, read_body, Query, Reply};
use crate::state::Daemon;

/// True for the paths this module serves (`/_fake` and below).
pub fn is_admin_path(path: &str) -> bool {
    path.starts_with("/_fake/") || path == "/_fake"
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

fn ok() -> Reply {
    json(StatusCode::OK, &json!({"ok": true}))
}

fn cfg_err(e: Error) -> ApiError {
    match e {
        Error::Api(a) => a,
        other => ApiError::bad_request(other.to_string()),
    }
}

/// `/_fake/...` over HTTP. See the README for the route list.
pub async fn handle(daemon: Arc<Daemon>, req: Request<Incoming>) -> Reply {
    let admin = Admin {
        daemon: daemon.clone(),
    };
    let method = req.method().clone();
    let path = req.uri().path().trim_start_matches("/_fake").to_string();
    let query = Query::parse(req.uri().query());
    let body = match read_body(daemon.config.max_body_bytes, req.into_body()).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result: Result<Reply, ApiError> = (|| {
        Ok(match (&method, segs.as_slice()) {
            (&Method::GET, ["events"]) => {
                let since = query.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
                json(
                    StatusCode::OK,
                    &serde_json::to_value(admin.events_since(since)).unwrap_or(Value::Null),
                )
            }
            (&Method::GET, ["containers"]) => json(
                StatusCode::OK,
                &serde_json::to_value(admin.containers()).unwrap_or(Value::Null),
            ),
            (&Method::GET, ["rules"]) => json(
                StatusCode::OK,
                &serde_json::to_value(admin.rules()).unwrap_or(Value::Null),
            ),
            (&Method::POST, ["rules"]) => {
                admin.add_rule(parse(&body)?);
                ok()
            }
            (&Method::PUT, ["rules"]) => {
                admin.set_rules(parse(&body)?);
                ok()
            }
            (&Method::DELETE, ["rules"]) => {
                admin.set_rules(Vec::new());
                ok()
            }
            (&Method::PUT, ["registry", name @ ..]) if !name.is_empty() => {
                admin
                    .set_image(&name.join("/"), parse(&body)?)
                    .map_err(cfg_err)?;
                ok()
            }
            (&Method::POST, ["images", "load"]) => {
                let v: Value = parse(&body)?;
                let name = v.get("name").and_then(Value::as_str).unwrap_or("");
                let id = admin.load_image(name).map_err(cfg_err)?;
                json(StatusCode::OK, &json!({"Id": id}))
            }
            (&Method::POST, ["faults", "route"]) => {
                admin.fail_next(parse(&body)?).map_err(cfg_err)?;
                ok()
            }
            (&Method::POST, ["faults", "latency"]) => {
                let v: Value = parse(&body)?;
                let route = v.get("route").and_then(Value::as_str).unwrap_or("*");
                let ms = v.get("ms").and_then(Value::as_u64).unwrap_or(0);
                admin.set_latency(route, Duration::from_millis(ms));
                ok()
            }
            (&Method::POST, ["faults", "pull"]) => {
                admin.pull_fault(parse(&body)?);
                ok()
            }
            (&Method::DELETE, ["faults"]) => {
                admin.clear_faults();
                ok()
            }
            (&Method::POST, ["containers", id, "kill"]) => {
                let sig = crate::runner::parse_signal(query.str("signal"))
                    .ok_or_else(|| ApiError::bad_request("invalid signal"))?;
                admin.kill_container(id, sig).map_err(cfg_err)?;
                ok()
            }
            (&Method::POST, ["containers", id, "oom"]) => {
                admin.oom_kill(id).map_err(cfg_err)?;
                ok()
            }
            (&Method::POST, ["restart"]) => {
                let opts: RestartOptions = if body.is_empty() {
                    RestartOptions::default()
                } else {
                    parse(&body)?
                };
                // Restarting drops this very connection: reply first, restart just after.
                let a = admin.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    a.restart(opts);
                });
                ok()
            }
            _ => return Err(ApiError::not_found("page not found")),
        })
    })();
    result.unwrap_or_else(|e| error(&e))
}
