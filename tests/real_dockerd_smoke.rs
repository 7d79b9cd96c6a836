//! Smoke test against the *real* dockerd started by `scripts/dockerd.sh`
//! (Debian docker.io 20.10, API 1.41, `--bridge=none`, private socket).
//!
//! It checks the facts the rest of the suite builds on:
//! - bollard 0.21 (which speaks /v1.53 by default) talks to dockerd 20.10 once it
//!   negotiates the version down;
//! - `/info` reports `Architecture: x86_64` on the CI machine;
//! - `busybox:latest` (amd64) runs with network `none` and its output shows in the logs;
//! - `busybox-arm64:latest` fails with `exec format error` (exit code 1 with runc 1.1,
//!   255 elsewhere, or an error from the start call itself).
//!
//! Without `TEST_DOCKER_HOST` (e.g. a developer without root) the test prints a
//! skip notice and passes, except under `CI=true`, where it fails. Logs are read with a raw HTTP/1.0 request on the socket
//! because the root package has no `futures` dependency to drive bollard's streams.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::{Docker, API_DEFAULT_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_dockerd_smoke() -> Result<()> {
    let host = match std::env::var("TEST_DOCKER_HOST") {
        Ok(h) if !h.trim().is_empty() => h,
        _ => {
            use protocol::test_support::{require_component, START_DOCKERD};
            require_component(false, "a real dockerd (TEST_DOCKER_HOST)", START_DOCKERD);
            return Ok(());
        }
    };
    let socket = host
        .strip_prefix("unix://")
        .with_context(|| {
            format!("TEST_DOCKER_HOST={host:?}: expected unix:///path/to/docker.sock")
        })?
        .to_owned();

    // bollard's default (/v1.53) is rejected by dockerd 20.10: negotiate down to 1.41.
    let docker = Docker::connect_with_unix(&socket, 120, API_DEFAULT_VERSION)
        .with_context(|| format!("connect to {socket}"))?
        .negotiate_version()
        .await
        .context("negotiate API version")?;
    println!("negotiated API version {}", docker.client_version());

    let info = docker.info().await.context("GET /info")?;
    ensure!(
        info.architecture.as_deref() == Some("x86_64"),
        "daemon Architecture {:?}, want x86_64 (the test images assume an amd64 host)",
        info.architecture
    );

    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let native = format!("smoke-native-{}-{stamp}", std::process::id());
    let foreign = format!("smoke-arm64-{}-{stamp}", std::process::id());

    let result = async {
        check_native(&docker, &socket, &native).await?;
        check_foreign(&docker, &socket, &foreign).await
    }
    .await;

    // Always clean up, whatever happened above.
    let mut leftovers = Vec::new();
    for name in [&native, &foreign] {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match docker.remove_container(name, Some(opts)).await {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => leftovers.push(format!("{name}: {e}")),
        }
    }
    result?;
    ensure!(
        leftovers.is_empty(),
        "could not remove containers: {leftovers:?}"
    );
    Ok(())
}

/// busybox:latest runs `echo hi` in network mode none: exit 0, "hi" on stdout.
async fn check_native(docker: &Docker, socket: &str, name: &str) -> Result<()> {
    create(docker, name, "busybox:latest", &["echo", "hi"]).await?;
    docker
        .start_container(name, None)
        .await
        .with_context(|| format!("start {name}"))?;
    let (code, _) = wait_exit(docker, name).await?;
    let (stdout, stderr) = logs(socket, name).await?;
    ensure!(
        stdout.lines().any(|l| l.trim() == "hi"),
        "busybox:latest stdout {stdout:?} (stderr {stderr:?}) lacks \"hi\""
    );
    ensure!(
        code == 0,
        "busybox:latest exit code {code}, want 0 (stderr {stderr:?})"
    );
    Ok(())
}

/// busybox-arm64:latest on an amd64 daemon: `exec format error`, exit 255 or 1
/// (or the start call itself fails with that message, depending on the runc).
async fn check_foreign(docker: &Docker, socket: &str, name: &str) -> Result<()> {
    create(docker, name, "busybox-arm64:latest", &["/bin/echo", "hi"]).await?;
    if let Err(e) = docker.start_container(name, None).await {
        let msg = e.to_string();
        ensure!(
            msg.contains("exec format error"),
            "start of busybox-arm64:latest failed without 'exec format error': {msg}"
        );
        return Ok(());
    }
    let (code, state_error) = wait_exit(docker, name).await?;
    let (stdout, stderr) = logs(socket, name).await?;
    ensure!(
        code == 255 || code == 1,
        "busybox-arm64:latest exit code {code}, want 255 or 1 (stdout {stdout:?}, stderr {stderr:?})"
    );
    ensure!(
        stderr.contains("exec format error") || state_error.contains("exec format error"),
        "busybox-arm64:latest: no 'exec format error' (stderr {stderr:?}, State.Error {state_error:?})"
    );
    ensure!(
        !stdout.contains("hi"),
        "busybox-arm64:latest ran: stdout {stdout:?}"
    );
    Ok(())
}

async fn create(docker: &Docker, name: &str, image: &str, cmd: &[&str]) -> Result<()> {
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        labels: Some([("spacelift-test".to_owned(), "real_dockerd_smoke".to_owned())].into()),
        host_config: Some(HostConfig {
            // The test daemon has no bridge; never use one anyway.
            network_mode: Some("none".to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    docker
        .create_container(Some(opts), body)
        .await
        .with_context(|| format!("create {name} from {image}"))?;
    Ok(())
}

/// Polls inspect until the container has exited; returns (ExitCode, State.Error).
async fn wait_exit(docker: &Docker, name: &str) -> Result<(i64, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let inspect = docker
            .inspect_container(name, None)
            .await
            .with_context(|| format!("inspect {name}"))?;
        let state = inspect.state.unwrap_or_default();
        if matches!(
            state.status,
            Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD)
        ) {
            return Ok((
                state.exit_code.unwrap_or(-1),
                state.error.unwrap_or_default(),
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{name} did not exit within 60s (state {:?})", state.status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET /containers/{name}/logs over HTTP/1.0 (so no chunked encoding; the daemon
/// closes the connection at the end) and demultiplex the non-TTY stream frames:
/// [stream type: 1 stdout / 2 stderr, 0, 0, 0, length: u32 big-endian, payload].
async fn logs(socket: &str, name: &str) -> Result<(String, String)> {
    let mut conn = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connect {socket}"))?;
    let req =
        format!("GET /containers/{name}/logs?stdout=1&stderr=1 HTTP/1.0\r\nHost: docker\r\n\r\n");
    conn.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut raw))
        .await
        .context("logs: timed out")??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("logs: no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.lines().next().unwrap_or_default();
    ensure!(status.contains(" 200 "), "logs of {name}: {status}");
    let mut body = &raw[split + 4..];
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while body.len() >= 8 {
        let len = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
        ensure!(body.len() >= 8 + len, "logs of {name}: truncated frame");
        let payload = &body[8..8 + len];
        match body[0] {
            1 => stdout.extend_from_slice(payload),
            2 => stderr.extend_from_slice(payload),
            _ => {}
        }
        body = &body[8 + len..];
    }
    Ok((
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    ))
}
