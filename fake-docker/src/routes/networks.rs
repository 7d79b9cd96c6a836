//! Networks: list, inspect, create, delete. Predefined: bridge, host, none.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{json, Value};

use super::{parse_json, Ctx};
use crate::clock::rfc3339_nano;
use crate::error::{ApiError, ApiResult};
use crate::http::{json, status_only, Reply};
use crate::state::{Daemon, Network, State};

fn network_json(st: &State, n: &Network) -> Value {
    // No Gateway: testcontainers would use it as the host for mapped ports (we want localhost).
    let ipam_config: Vec<Value> = n.subnet.iter().map(|s| json!({"Subnet": s})).collect();
    let mut containers = serde_json::Map::new();
    for c in st.containers.values().filter(|c| c.running()) {
        let mode = if c.network_mode == "default" {
            "bridge"
        } else {
            c.network_mode.as_str()
        };
        if mode == n.name || mode == n.id {
            containers.insert(
                c.id.clone(),
                json!({"Name": c.name.trim_start_matches('/'), "EndpointID": c.id, "MacAddress": "", "IPv4Address": "", "IPv6Address": ""}),
            );
        }
    }
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": rfc3339_nano(n.created),
        "Scope": "local",
        "Driver": n.driver,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": ipam_config},
        "Internal": n.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": n.options,
        "Labels": n.labels,
    })
}

pub fn list(ctx: &Ctx) -> ApiResult<Reply> {
    let filters = ctx.query.filters()?;
    let st = ctx.daemon.lock();
    let out: Vec<Value> = st
        .networks
        .iter()
        .filter(|n| filters.labels_match(&n.labels))
        .filter(|n| filters.any("name", |x| n.name.contains(x)))
        .filter(|n| filters.any("id", |x| n.id.starts_with(x)))
        .filter(|n| filters.any("driver", |x| n.driver == x))
        .map(|n| network_json(&st, n))
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(out)))
}

fn not_found(given: &str) -> ApiError {
    ApiError::not_found(format!("network {given} not found"))
}

pub fn inspect(ctx: &Ctx, given: &str) -> ApiResult<Reply> {
    let st = ctx.daemon.lock();
    let n = Daemon::find_network(&st, given).ok_or_else(|| not_found(given))?;
    Ok(json(StatusCode::OK, &network_json(&st, n)))
}

pub fn create(ctx: &Ctx, body: &[u8]) -> ApiResult<Reply> {
    let v = parse_json(ctx, body)?;
    let name = v
        .get("Name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        return Err(ApiError::bad_request("network name must not be empty"));
    }
    let driver = match v.get("Driver").and_then(Value::as_str).unwrap_or("") {
        "" => "bridge".to_string(),
        "bridge" | "null" | "host" | "macvlan" | "ipvlan" | "overlay" => {
            v["Driver"].as_str().unwrap_or("bridge").to_string()
        }
        other => return Err(ApiError::not_found(format!("plugin \"{other}\" not found"))),
    };
    let str_map = |f: &str| -> BTreeMap<String, String> {
        v.get(f)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, x)| (k.clone(), x.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let d = &ctx.daemon;
    let mut st = d.lock();
    if st.networks.iter().any(|n| n.name == name) {
        return Err(ApiError::conflict(format!(
            "network with name {name} already exists"
        )));
    }
    let id = st.ids.network_id();
    let octet = 18 + st.networks.len() % 200;
    let subnet = v
        .pointer("/IPAM/Config/0/Subnet")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("172.{octet}.0.0/16"));
    st.networks.push(Network {
        id: id.clone(),
        name: name.clone(),
        driver,
        created: d.clock.now(),
        subnet: Some(subnet),
        labels: str_map("Labels"),
        options: str_map("Options"),
        internal: v.get("Internal").and_then(Value::as_bool).unwrap_or(false),
        predefined: false,
    });
    let attrs = [
        ("name".to_string(), name),
        ("type".to_string(), "bridge".to_string()),
    ]
    .into_iter()
    .collect();
    d.record(&mut st, "network", "create", &id, attrs);
    Ok(json(StatusCode::CREATED, &json!({"Id": id, "Warning": ""})))
}

pub fn delete(ctx: &Ctx, given: &str) -> ApiResult<Reply> {
    let d = &ctx.daemon;
    let mut st = d.lock();
    let n = Daemon::find_network(&st, given)
        .ok_or_else(|| not_found(given))?
        .clone();
    if n.predefined {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{} is a pre-defined network and cannot be removed", n.name),
        ));
    }
    let in_use = st
        .containers
        .values()
        .any(|c| c.running() && (c.network_mode == n.name || c.network_mode == n.id));
    if in_use {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "error while removing network: network {} id {} has active endpoints",
                n.name, n.id
            ),
        ));
    }
    st.networks.retain(|x| x.id != n.id);
    let attrs = [
        ("name".to_string(), n.name.clone()),
        ("type".to_string(), n.driver.clone()),
    ]
    .into_iter()
    .collect();
    d.record(&mut st, "network", "destroy", &n.id, attrs);
    Ok(status_only(StatusCode::NO_CONTENT))
}
