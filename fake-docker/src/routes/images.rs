//! `POST /images/create` (pull from the fake registry), image list, inspect, delete.

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use super::Ctx;
use crate::clock::rfc3339_nano;
use crate::error::{ApiError, ApiResult};
use crate::http::{channel, json, Reply};
use crate::registry::{Platform, Reference};
use crate::state::{Daemon, Image};

pub fn pull(ctx: &Ctx) -> ApiResult<Reply> {
    let d = &ctx.daemon;
    let from = ctx.query.str("fromImage");
    if from.is_empty() {
        return Err(ApiError::bad_request("invalid reference format"));
    }
    let r = Reference::parse_with_tag(from, ctx.query.str("tag")).map_err(ApiError::bad_request)?;
    let requested = Platform::parse(ctx.query.str("platform"), &d.config.arch)
        .map_err(ApiError::bad_request)?;

    let mut st = d.lock();
    let remote = st.registry.lookup(&r);
    if !remote.exists {
        return Err(ApiError::not_found(format!(
            "pull access denied for {}, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
            r.repo
        )));
    }
    let resolved = d.default_pull_platform(&st, &r, requested.as_ref());
    let fault = st.faults.take_pull_fault(&r.to_string());
    let up_to_date = match &resolved {
        Ok(p) => Daemon::find_image(&st, &r.to_string()).is_some_and(|i| i.platform == *p),
        Err(_) => false,
    };
    let layer = st.ids.content_hash(&format!("layer:{}", r.repo))[..12].to_string();
    let digest = st.ids.content_hash(&format!("digest:{}", r.repo));
    drop(st);

    let (tx, reply) = channel("application/json");
    let daemon = d.clone();
    tokio::spawn(async move {
        let step = Duration::from_millis(fault.as_ref().map(|f| f.step_delay_ms).unwrap_or(0));
        let mut lines: Vec<Value> =
            vec![json!({"status": format!("Pulling from {}", r.remote_path()), "id": r.tag})];
        if !up_to_date && resolved.is_ok() {
            let total = 2_228_224u64;
            lines.push(json!({"status": "Pulling fs layer", "progressDetail": {}, "id": layer}));
            for current in [total / 2, total] {
                lines.push(json!({"status": "Downloading", "progressDetail": {"current": current, "total": total}, "progress": "", "id": layer}));
            }
            lines.push(json!({"status": "Download complete", "progressDetail": {}, "id": layer}));
            lines.push(json!({"status": "Extracting", "progressDetail": {"current": total, "total": total}, "id": layer}));
            lines.push(json!({"status": "Pull complete", "progressDetail": {}, "id": layer}));
        }
        for line in lines {
            if !step.is_zero() {
                tokio::time::sleep(step).await;
            }
            if send_line(&tx, &line).await.is_err() {
                return;
            }
        }
        let err = match (&resolved, fault.as_ref().and_then(|f| f.error.clone())) {
            (_, Some(e)) => Some(e),
            (Err(e), None) => Some(e.clone()),
            (Ok(_), None) => None,
        };
        if let Some(msg) = err {
            {
                let mut st = daemon.lock();
                let attrs = [
                    ("name".to_string(), r.to_string()),
                    ("error".to_string(), msg.clone()),
                ]
                .into_iter()
                .collect();
                daemon.record(&mut st, "fault", "pull", "", attrs);
            }
            let _ = send_line(&tx, &json!({"errorDetail": {"message": msg}, "error": msg})).await;
            return;
        }
        let Ok(platform) = resolved else { return };
        {
            let mut st = daemon.lock();
            let id = daemon.commit_image(&mut st, &r, platform);
            let attrs = [("name".to_string(), r.to_string())].into_iter().collect();
            daemon.record(&mut st, "image", "pull", &id, attrs);
        }
        let _ = send_line(&tx, &json!({"status": format!("Digest: sha256:{digest}")})).await;
        let status = if up_to_date {
            format!("Status: Image is up to date for {r}")
        } else {
            format!("Status: Downloaded newer image for {r}")
        };
        let _ = send_line(&tx, &json!({"status": status})).await;
    });
    Ok(reply)
}

async fn send_line(tx: &tokio::sync::mpsc::Sender<bytes::Bytes>, v: &Value) -> Result<(), ()> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.extend_from_slice(b"\r\n");
    tx.send(b.into()).await.map_err(|_| ())
}

fn summary(img: &Image, containers: i64) -> Value {
    json!({
        "Id": img.id,
        "ParentId": "",
        "RepoTags": img.repo_tags,
        "RepoDigests": img.repo_digests,
        "Created": img.created.unix_timestamp(),
        "Size": img.size,
        "SharedSize": -1,
        "VirtualSize": img.size,
        "Labels": img.config.labels,
        "Containers": containers,
    })
}

pub fn list(ctx: &Ctx) -> ApiResult<Reply> {
    let filters = ctx.query.filters()?;
    let st = ctx.daemon.lock();
    let mut out: Vec<Value> = st
        .images
        .iter()
        .filter(|i| filters.labels_match(&i.config.labels))
        .filter(|i| {
            filters.any("reference", |r| {
                Reference::parse(r).is_ok_and(|r| i.repo_tags.contains(&r.to_string()))
                    || i.repo_tags.iter().any(|t| t.split(':').next() == Some(r))
            })
        })
        .map(|i| summary(i, -1))
        .collect();
    out.reverse();
    Ok(json(StatusCode::OK, &Value::Array(out)))
}

pub fn inspect(ctx: &Ctx, name: &str) -> ApiResult<Reply> {
    let st = ctx.daemon.lock();
    let Some(img) = Daemon::find_image(&st, name) else {
        return Err(no_such_image(ctx, name));
    };
    let cfg = &img.config;
    let null_if_empty = |v: &Vec<String>| if v.is_empty() { Value::Null } else { json!(v) };
    let mut env = cfg.env.clone();
    if env.is_empty() {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let cmd = if cfg.cmd.is_empty() && cfg.entrypoint.is_empty() {
        json!(["sh"])
    } else {
        null_if_empty(&cfg.cmd)
    };
    let mut v = json!({
        "Id": img.id,
        "RepoTags": img.repo_tags,
        "RepoDigests": img.repo_digests,
        "Parent": "",
        "Comment": "",
        "Created": rfc3339_nano(img.created),
        "DockerVersion": "",
        "Author": "",
        "Config": {
            "Hostname": "", "Domainname": "", "User": "",
            "AttachStdin": false, "AttachStdout": false, "AttachStderr": false,
            "Tty": false, "OpenStdin": false, "StdinOnce": false,
            "Env": env, "Cmd": cmd, "Image": "", "Volumes": null,
            "WorkingDir": cfg.working_dir, "Entrypoint": null_if_empty(&cfg.entrypoint),
            "OnBuild": null, "Labels": cfg.labels,
        },
        "Architecture": img.platform.architecture,
        "Os": img.platform.os,
        "Size": img.size,
        "VirtualSize": img.size,
        "GraphDriver": {"Name": "overlay2", "Data": {}},
        "RootFS": {"Type": "layers", "Layers": [format!("sha256:{}", st.ids.content_hash(&format!("rootfs:{}", img.id)))]},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    });
    if let Some(variant) = &img.platform.variant {
        v["Variant"] = json!(variant);
    }
    Ok(json(StatusCode::OK, &v))
}

fn no_such_image(ctx: &Ctx, name: &str) -> ApiError {
    let shown = Reference::parse(name)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| name.to_string());
    if ctx.legacy() {
        ApiError::not_found(format!("no such image: {name}: No such image: {shown}"))
    } else {
        ApiError::not_found(format!("No such image: {shown}"))
    }
}

pub fn delete(ctx: &Ctx, name: &str) -> ApiResult<Reply> {
    let d = &ctx.daemon;
    let mut st = d.lock();
    let Some(img) = Daemon::find_image(&st, name).cloned() else {
        return Err(no_such_image(ctx, name));
    };
    let force = ctx.query.bool("force");
    if let Some(c) = st.containers.values().find(|c| c.image_id == img.id) {
        if !force {
            return Err(ApiError::conflict(format!(
                "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
                &c.id[..12],
                &img.id.trim_start_matches("sha256:")[..12]
            )));
        }
    }
    let r = Reference::parse(name).ok().map(|r| r.to_string());
    let mut out = Vec::new();
    let untag_only =
        r.as_ref().is_some_and(|t| img.repo_tags.contains(t)) && img.repo_tags.len() > 1;
    if let (true, Some(t)) = (untag_only, r) {
        if let Some(i) = st.images.iter_mut().find(|i| i.id == img.id) {
            i.repo_tags.retain(|x| *x != t);
        }
        out.push(json!({"Untagged": t}));
    } else {
        for t in &img.repo_tags {
            out.push(json!({"Untagged": t}));
        }
        out.push(json!({"Deleted": img.id}));
        st.images.retain(|i| i.id != img.id);
        let attrs = [("name".to_string(), name.to_string())]
            .into_iter()
            .collect();
        d.record(&mut st, "image", "delete", &img.id, attrs);
    }
    Ok(json(StatusCode::OK, &Value::Array(out)))
}
