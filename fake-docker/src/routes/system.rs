//! `/_ping`, `/version`, `/info`.

use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use super::Ctx;
use crate::clock::rfc3339_nano;
use crate::config::uname_arch;
use crate::http::{full, json, Reply};
use crate::state::Status;

pub fn ping(ctx: &Ctx, head: bool) -> Reply {
    let mut r = http::Response::new(if head { full("") } else { full("OK") });
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "Cache-Control",
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert("Pragma", HeaderValue::from_static("no-cache"));
    h.insert("Builder-Version", HeaderValue::from_static("2"));
    h.insert("Swarm", HeaderValue::from_static("inactive"));
    let _ = ctx;
    r
}

pub fn version(ctx: &Ctx) -> Reply {
    let c = &ctx.daemon.config;
    let details = json!({
        "ApiVersion": c.api_version,
        "Arch": c.arch,
        "BuildTime": rfc3339_nano(ctx.daemon.clock.now()),
        "Experimental": "false",
        "GitCommit": "fakedock",
        "GoVersion": "go1.24.0",
        "KernelVersion": "6.1.0-fake",
        "MinAPIVersion": c.min_api_version,
        "Os": "linux",
    });
    json(
        StatusCode::OK,
        &json!({
            "Platform": {"Name": "fake-docker"},
            "Components": [{"Name": "Engine", "Version": c.server_version, "Details": details}],
            "Version": c.server_version,
            "ApiVersion": c.api_version,
            "MinAPIVersion": c.min_api_version,
            "GitCommit": "fakedock",
            "GoVersion": "go1.24.0",
            "Os": "linux",
            "Arch": c.arch,
            "KernelVersion": "6.1.0-fake",
            "BuildTime": "2024-01-01T00:00:00.000000000+00:00",
        }),
    )
}

pub fn info(ctx: &Ctx) -> Reply {
    let d = &ctx.daemon;
    let st = d.lock();
    let count = |s: Status| st.containers.values().filter(|c| c.status == s).count();
    let running = count(Status::Running);
    let total = st.containers.len();
    let c = &d.config;
    json(
        StatusCode::OK,
        &json!({
            "ID": format!("FAKE:{}", &st.ids.content_hash("daemon")[..12]),
            "Containers": total,
            "ContainersRunning": running,
            "ContainersPaused": 0,
            "ContainersStopped": total - running,
            "Images": st.images.len(),
            "Driver": "overlay2",
            "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]],
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"], "Authorization": null, "Log": ["json-file"]},
            "MemoryLimit": true,
            "SwapLimit": false,
            "CpuCfsPeriod": true,
            "CpuCfsQuota": true,
            "CPUShares": true,
            "CPUSet": true,
            "PidsLimit": true,
            "IPv4Forwarding": true,
            "Debug": false,
            "NFd": 20,
            "OomKillDisable": false,
            "NGoroutines": 30,
            "SystemTime": rfc3339_nano(d.clock.now()),
            "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": "2",
            "NEventsListener": 0,
            "KernelVersion": "6.1.0-fake",
            "OperatingSystem": "fake-docker",
            "OSVersion": "",
            "OSType": "linux",
            "Architecture": uname_arch(&c.arch),
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}, "Mirrors": []},
            "NCPU": 2,
            "MemTotal": 4_294_967_296u64,
            "DockerRootDir": "/var/lib/docker",
            "HttpProxy": "",
            "HttpsProxy": "",
            "NoProxy": "",
            "Name": "fake-docker",
            "Labels": [],
            "ExperimentalBuild": false,
            "ServerVersion": c.server_version,
            "Runtimes": {"runc": {"path": "runc"}},
            "DefaultRuntime": "runc",
            "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
            "LiveRestoreEnabled": false,
            "Isolation": "",
            "InitBinary": "docker-init",
            "ContainerdCommit": {"ID": "fake"},
            "RuncCommit": {"ID": "fake"},
            "InitCommit": {"ID": "fake"},
            "SecurityOptions": ["name=seccomp,profile=builtin", "name=cgroupns"],
            "Warnings": [],
        }),
    )
}
