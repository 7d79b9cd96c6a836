//! Container create, list, inspect, start, kill, stop, delete.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::decode::{string_map, strings};
use super::Ctx;
use crate::clock::{human_duration, rfc3339_nano, ZERO_TIME};
use crate::error::{ApiError, ApiResult};
use crate::http::{json, status_only, Reply};
use crate::registry::{Platform, Reference};
use crate::state::{Container, Daemon, MountSpec, Status};

fn is_valid_name(name: &str) -> bool {
    let n = name.strip_prefix('/').unwrap_or(name);
    let mut chars = n.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    n.len() >= 2 && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// dockerd refuses a malformed image reference before looking it up.
fn check_reference(image_ref: &str) -> ApiResult<()> {
    let hex = image_ref.strip_prefix("sha256:").unwrap_or(image_ref);
    if Reference::parse(image_ref).is_ok() || hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(());
    }
    let lower_ok = Reference::parse(&image_ref.to_ascii_lowercase()).is_ok();
    Err(ApiError::bad_request(if lower_ok {
        "invalid reference format: repository name must be lowercase"
    } else {
        "invalid reference format"
    }))
}

fn flag(v: &Value, field: &str) -> bool {
    v.get(field).and_then(Value::as_bool).unwrap_or(false)
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

pub fn create(ctx: &Ctx, body: &[u8]) -> ApiResult<Reply> {
    let d = &ctx.daemon;
    let v = super::decode::create_body(ctx, body)?;
    let empty = Value::Object(Map::new());
    let hc = v
        .get("HostConfig")
        .filter(|h| h.is_object())
        .unwrap_or(&empty);

    let name = ctx.query.str("name").to_string();
    if !name.is_empty() && !is_valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    let requested_platform = Platform::parse(ctx.query.str("platform"), &d.config.arch)
        .map_err(ApiError::bad_request)?;
    let image_ref = text(&v, "Image").to_string();
    if image_ref.is_empty() {
        return Err(ApiError::bad_request("no command specified"));
    }
    check_reference(&image_ref)?;
    let mut cmd = strings(&v, "Cmd")?;
    let entrypoint = strings(&v, "Entrypoint")?;
    let env = strings(&v, "Env")?;
    let labels = string_map(&v, "Labels")?;
    let binds = strings(hc, "Binds")?;

    let runtime = text(hc, "Runtime");
    if !runtime.is_empty() && runtime != "runc" {
        return Err(ApiError::bad_request(format!(
            "unknown or invalid runtime name: {runtime}"
        )));
    }
    let mut mounts = Vec::new();
    for b in &binds {
        let parts: Vec<&str> = b.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [s, t] => (*s, *t, ""),
            [s, t, m] => (*s, *t, *m),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid volume specification: '{b}'"
                )))
            }
        };
        mounts.push(MountSpec {
            kind: if source.starts_with('/') {
                "bind".into()
            } else {
                "volume".into()
            },
            source: source.into(),
            target: target.into(),
            rw: !mode.split(',').any(|m| m == "ro"),
        });
    }
    if let Some(Value::Array(ms)) = hc.get("Mounts") {
        for m in ms {
            let kind = text(m, "Type");
            let source = text(m, "Source");
            if kind == "bind" && !std::path::Path::new(source).exists() {
                return Err(ApiError::bad_request(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {source}"
                )));
            }
            mounts.push(MountSpec {
                kind: if kind.is_empty() {
                    "volume".into()
                } else {
                    kind.into()
                },
                source: source.into(),
                target: text(m, "Target").into(),
                rw: !flag(m, "ReadOnly"),
            });
        }
    }

    let mut st = d.lock();
    let Some(img) = Daemon::find_image(&st, &image_ref).cloned() else {
        let shown = Reference::parse(&image_ref)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| image_ref.clone());
        return Err(ApiError::not_found(format!("No such image: {shown}")));
    };
    let mut warnings: Vec<String> = Vec::new();
    match &requested_platform {
        Some(p) if !p.matches(&img.platform) && ctx.legacy() => {
            return Err(ApiError::not_found(format!(
                "image with reference {image_ref} was found but does not match the specified platform: wanted {}, actual: {}",
                p.normalized(),
                img.platform.normalized()
            )));
        }
        Some(p) if !p.matches(&img.platform) => {
            return Err(ApiError::not_found(format!(
                "image with reference {image_ref} was found but its platform ({}) does not match the specified platform ({p})",
                img.platform
            )));
        }
        None if !img.platform.matches(&d.host_platform()) => warnings.push(format!(
            "The requested image's platform ({}) does not match the detected host platform ({}) and no specific platform was requested",
            img.platform,
            d.host_platform()
        )),
        _ => {}
    }
    let name = if name.is_empty() {
        loop {
            let n = format!("/{}", st.ids.container_name());
            if !st.containers.values().any(|c| c.name == n) {
                break n;
            }
        }
    } else {
        format!("/{}", name.trim_start_matches('/'))
    };
    if let Some(other) = st.containers.values().find(|c| c.name == name) {
        return Err(ApiError::conflict(format!(
            "Conflict. The container name \"{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
            other.id
        )));
    }

    // A given Entrypoint drops the image's Cmd; Path/Args come from Entrypoint + Cmd.
    let entry = if entrypoint.is_empty() {
        img.config.entrypoint.clone()
    } else {
        entrypoint.clone()
    };
    if cmd.is_empty() && entrypoint.is_empty() {
        cmd = if img.config.cmd.is_empty() && img.config.entrypoint.is_empty() {
            vec!["sh".into()]
        } else {
            img.config.cmd.clone()
        };
    }
    let mut argv = entry.clone();
    argv.extend(cmd.iter().cloned());
    let Some((path, args)) = argv.split_first() else {
        return Err(ApiError::bad_request("no command specified"));
    };
    let mut merged_env = img.config.env.clone();
    if merged_env.is_empty() {
        merged_env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    for e in &env {
        let key = e.split('=').next().unwrap_or("");
        merged_env.retain(|x| x.split('=').next() != Some(key));
        merged_env.push(e.clone());
    }
    let mut merged_labels = img.config.labels.clone();
    merged_labels.extend(labels);

    let publish_all = flag(hc, "PublishAllPorts");
    let mut ports = BTreeMap::new();
    if let Some(Value::Object(exposed)) = v.get("ExposedPorts") {
        for p in exposed.keys() {
            let key = if p.contains('/') {
                p.clone()
            } else {
                format!("{p}/tcp")
            };
            let host = if publish_all || hc.get("PortBindings").and_then(|b| b.get(&key)).is_some()
            {
                st.next_port += 1;
                Some(st.next_port - 1)
            } else {
                None
            };
            ports.insert(key, host);
        }
    }
    let network_mode = match text(hc, "NetworkMode") {
        "" => "default".to_string(),
        m => m.to_string(),
    };

    let id = st.ids.container_id();
    let seq = st.next_seq;
    st.next_seq += 1;
    let now = d.clock.now();
    let mut host_config = hc.clone();
    if let Value::Object(m) = &mut host_config {
        m.insert("NetworkMode".into(), json!(network_mode));
        m.entry("Binds").or_insert(Value::Null);
        m.entry("AutoRemove").or_insert(json!(false));
        m.entry("RestartPolicy")
            .or_insert(json!({"Name": "no", "MaximumRetryCount": 0}));
        m.entry("LogConfig")
            .or_insert(json!({"Type": "json-file", "Config": {}}));
    }
    let config = json!({
        "Hostname": id[..12],
        "Domainname": "",
        "User": text(&v, "User"),
        "AttachStdin": flag(&v, "AttachStdin"),
        "AttachStdout": flag(&v, "AttachStdout"),
        "AttachStderr": flag(&v, "AttachStderr"),
        "ExposedPorts": v.get("ExposedPorts").cloned().unwrap_or(Value::Null),
        "Tty": flag(&v, "Tty"),
        "OpenStdin": flag(&v, "OpenStdin"),
        "StdinOnce": flag(&v, "StdinOnce"),
        "Env": merged_env,
        "Cmd": if cmd.is_empty() { Value::Null } else { json!(cmd) },
        "Image": image_ref,
        "Volumes": null,
        "WorkingDir": if text(&v, "WorkingDir").is_empty() { img.config.working_dir.clone() } else { text(&v, "WorkingDir").to_string() },
        "Entrypoint": if entry.is_empty() { Value::Null } else { json!(entry) },
        "OnBuild": null,
        "Labels": merged_labels,
    });
    let c = Container {
        id: id.clone(),
        name,
        seq,
        created: now,
        image_ref: image_ref.clone(),
        image_id: img.id.clone(),
        platform: img.platform.clone(),
        path: path.clone(),
        args: args.to_vec(),
        config,
        host_config,
        labels: merged_labels,
        env: merged_env,
        tty: flag(&v, "Tty"),
        mounts,
        network_mode,
        ports,
        auto_remove: flag(hc, "AutoRemove"),
        status: Status::Created,
        exit_code: 0,
        oom_killed: false,
        error: String::new(),
        pid: 0,
        started_at: None,
        finished_at: None,
        output: Daemon::new_output(),
        run_gen: 0,
        exits: 0,
        runner: None,
    };
    st.containers.insert(id.clone(), c);
    d.container_event(&mut st, &id, "create", &[]);
    Ok(json(
        StatusCode::CREATED,
        &json!({"Id": id, "Warnings": warnings}),
    ))
}

fn status_text(d: &Daemon, c: &Container) -> String {
    let now = d.clock.now();
    match c.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}", human_duration(now - c.started_at.unwrap_or(now))),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            c.exit_code,
            human_duration(now - c.finished_at.unwrap_or(now))
        ),
        Status::Dead => "Dead".into(),
    }
}

fn command_line(c: &Container) -> String {
    let mut parts = vec![c.path.clone()];
    parts.extend(c.args.iter().cloned());
    parts.join(" ")
}

fn mounts_json(c: &Container) -> Vec<Value> {
    c.mounts
        .iter()
        .map(|m| {
            json!({
                "Type": m.kind,
                "Source": m.source,
                "Destination": m.target,
                "Mode": if m.rw { "" } else { "ro" },
                "RW": m.rw,
                "Propagation": if m.kind == "bind" { "rprivate" } else { "" },
            })
        })
        .collect()
}

fn networks_json(st: &crate::state::State, c: &Container) -> Value {
    let mode = if c.network_mode == "default" {
        "bridge"
    } else {
        c.network_mode.as_str()
    };
    let net_id = Daemon::find_network(st, mode)
        .map(|n| n.id.clone())
        .unwrap_or_default();
    let running = c.running();
    let mut nets = Map::new();
    if !mode.starts_with("container:") {
        let bridged = mode != "host" && mode != "none";
        let ip = if running && bridged {
            format!("172.17.0.{}", 2 + c.seq % 250)
        } else {
            String::new()
        };
        nets.insert(
            mode.to_string(),
            json!({
                "IPAMConfig": null, "Links": null, "Aliases": null,
                "NetworkID": net_id,
                "EndpointID": if running { c.id.clone() } else { String::new() },
                "Gateway": "", "IPAddress": ip, "IPPrefixLen": if ip.is_empty() { 0 } else { 16 },
                "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                "MacAddress": "", "DriverOpts": null,
            }),
        );
    }
    Value::Object(nets)
}

fn ports_json(c: &Container) -> Value {
    let mut m = Map::new();
    for (k, host) in &c.ports {
        let v = match host {
            Some(p) if c.running() => json!([{"HostIp": "0.0.0.0", "HostPort": p.to_string()}]),
            _ => Value::Null,
        };
        m.insert(k.clone(), v);
    }
    Value::Object(m)
}

pub fn list(ctx: &Ctx) -> ApiResult<Reply> {
    let filters = ctx.query.filters()?;
    let all = ctx.query.bool("all");
    let limit: Option<usize> = ctx
        .query
        .get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .and_then(|l| usize::try_from(l).ok())
        .filter(|l| *l > 0);
    let d = &ctx.daemon;
    let st = d.lock();
    let mut cs: Vec<&Container> = st
        .containers
        .values()
        .filter(|c| all || c.running() || !filters.get("status").is_empty())
        .filter(|c| filters.labels_match(&c.labels))
        .filter(|c| {
            filters.any("name", |n| {
                c.name.contains(n.trim_start_matches('/')) || c.name.contains(n)
            })
        })
        .filter(|c| filters.any("id", |p| c.id.starts_with(p)))
        .filter(|c| filters.any("status", |s| s == c.status.as_str()))
        .filter(|c| {
            filters.any("ancestor", |a| {
                Daemon::find_image(&st, a).is_some_and(|i| i.id == c.image_id) || a == c.image_ref
            })
        })
        .collect();
    cs.sort_by_key(|c| std::cmp::Reverse(c.seq));
    if let Some(l) = limit {
        cs.truncate(l);
    }
    let out: Vec<Value> = cs
        .iter()
        .map(|c| {
            let ports: Vec<Value> = c
                .ports
                .iter()
                .map(|(k, host)| {
                    let (port, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
                    let private: u16 = port.parse().unwrap_or(0);
                    match host {
                        Some(h) if c.running() => json!({"IP": "0.0.0.0", "PrivatePort": private, "PublicPort": h, "Type": proto}),
                        _ => json!({"PrivatePort": private, "Type": proto}),
                    }
                })
                .collect();
            json!({
                "Id": c.id,
                "Names": [c.name],
                "Image": c.image_ref,
                "ImageID": c.image_id,
                "Command": command_line(c),
                "Created": c.created.unix_timestamp(),
                "Ports": ports,
                "Labels": c.labels,
                "State": c.status.as_str(),
                "Status": status_text(d, c),
                "HostConfig": {"NetworkMode": c.network_mode},
                "NetworkSettings": {"Networks": networks_json(&st, c)},
                "Mounts": mounts_json(c),
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(out)))
}

pub fn inspect(ctx: &Ctx, given: &str) -> ApiResult<Reply> {
    let d = &ctx.daemon;
    let st = d.lock();
    let id = Daemon::resolve_container(&st, given)?;
    let Some(c) = st.containers.get(&id) else {
        return Err(ApiError::no_such_container(given));
    };
    let t = |x: Option<time::OffsetDateTime>| {
        x.map(rfc3339_nano).unwrap_or_else(|| ZERO_TIME.to_string())
    };
    let v = json!({
        "Id": c.id,
        "Created": rfc3339_nano(c.created),
        "Path": c.path,
        "Args": c.args,
        "State": {
            "Status": c.status.as_str(),
            "Running": c.running(),
            "Paused": false,
            "Restarting": false,
            "OOMKilled": c.oom_killed,
            "Dead": c.status == Status::Dead,
            "Pid": c.pid,
            "ExitCode": c.exit_code,
            "Error": c.error,
            "StartedAt": t(c.started_at),
            "FinishedAt": t(c.finished_at),
        },
        "Image": c.image_id,
        "ResolvConfPath": format!("/var/lib/docker/containers/{}/resolv.conf", c.id),
        "HostnamePath": format!("/var/lib/docker/containers/{}/hostname", c.id),
        "HostsPath": format!("/var/lib/docker/containers/{}/hosts", c.id),
        "LogPath": format!("/var/lib/docker/containers/{0}/{0}-json.log", c.id),
        "Name": c.name,
        "RestartCount": 0,
        "Driver": "overlay2",
        "Platform": c.platform.os,
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": c.host_config,
        "GraphDriver": {"Name": "overlay2", "Data": {}},
        "Mounts": mounts_json(c),
        "Config": c.config,
        "NetworkSettings": {
            "Bridge": "", "SandboxID": "", "HairpinMode": false,
            "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
            "Ports": ports_json(c),
            "SandboxKey": "", "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
            "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
            "Networks": networks_json(&st, c),
        },
    });
    Ok(json(StatusCode::OK, &v))
}

pub async fn start(ctx: &Ctx, given: &str, body: &[u8]) -> ApiResult<Reply> {
    if body.len() > 7
        && !body.iter().all(u8::is_ascii_whitespace)
        && body != b"null"
        && body != b"{}"
    {
        return Err(ApiError::bad_request(
            "starting container with non-empty request body was deprecated since API v1.22 and removed in v1.24",
        ));
    }
    match crate::runner::start(&ctx.daemon, given).await? {
        true => Ok(status_only(StatusCode::NO_CONTENT)),
        false => Ok(status_only(StatusCode::NOT_MODIFIED)),
    }
}

pub fn kill(ctx: &Ctx, given: &str) -> ApiResult<Reply> {
    let d = &ctx.daemon;
    let prefix = if ctx.legacy() {
        "Cannot kill container"
    } else {
        "cannot kill container"
    };
    let sig_text = ctx.query.str("signal");
    let Some(sig) = crate::runner::parse_signal(sig_text) else {
        return Err(ApiError::bad_request(format!("Invalid signal: {sig_text}")));
    };
    let mut st = d.lock();
    let id = Daemon::resolve_container(&st, given)
        .map_err(|e| ApiError::new(e.status, format!("{prefix}: {given}: {}", e.message)))?;
    if !crate::runner::linux_signal(sig) {
        return Err(ApiError::internal(format!(
            "{prefix}: {given}: The linux daemon does not support signal {sig}"
        )));
    }
    let running = st.containers.get(&id).is_some_and(Container::running);
    if !running {
        let who = if ctx.legacy() {
            "Container"
        } else {
            "container"
        };
        return Err(ApiError::conflict(format!(
            "{prefix}: {given}: {who} {id} is not running"
        )));
    }
    d.signal_locked(&mut st, &id, sig);
    Ok(status_only(StatusCode::NO_CONTENT))
}

pub async fn stop(ctx: &Ctx, given: &str) -> ApiResult<Reply> {
    // Go's strconv.Atoi; dockerd returns its error unwrapped, hence 500, before any lookup.
    let t = match ctx.query.get("t").or_else(|| ctx.query.get("timeout")) {
        None | Some("") => None,
        Some(t) => Some(t.parse::<i64>().map_err(|e| {
            let why = match e.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "value out of range"
                }
                _ => "invalid syntax",
            };
            ApiError::internal(format!("strconv.Atoi: parsing \"{t}\": {why}"))
        })?),
    };
    match crate::runner::stop(&ctx.daemon, given, t).await? {
        true => Ok(status_only(StatusCode::NO_CONTENT)),
        false => Ok(status_only(StatusCode::NOT_MODIFIED)),
    }
}

pub fn delete(ctx: &Ctx, given: &str) -> ApiResult<Reply> {
    let d = &ctx.daemon;
    let force = ctx.query.bool("force");
    let mut st = d.lock();
    let id = Daemon::resolve_container(&st, given)?;
    let Some(c) = st.containers.get(&id) else {
        return Err(ApiError::no_such_container(given));
    };
    if ctx.query.bool("link") {
        // `link=1` removes a legacy link `/parent/name`; a plain name is nobody's link.
        return Err(ApiError::internal(
            "Conflict, cannot remove the default link name of the container",
        ));
    }
    if c.running() {
        if !force {
            return Err(ApiError::conflict(if ctx.legacy() {
                format!("You cannot remove a running container {id}. Stop the container before attempting removal or force remove")
            } else {
                format!("cannot remove container \"{}\": container is running: stop the container before removing or force remove", c.name)
            }));
        }
        d.signal_locked(&mut st, &id, 9);
    }
    if st.containers.contains_key(&id) {
        d.remove_locked(&mut st, &id);
    }
    Ok(status_only(StatusCode::NO_CONTENT))
}
