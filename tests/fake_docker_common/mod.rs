//! Helpers shared by the fake-docker conformance tests.
#![allow(dead_code)]

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use fake_docker::{Config, FakeDocker, FakeDockerHandle};
use futures_util::{StreamExt, TryStreamExt};

/// The real dockerd of `TEST_DOCKER_HOST` (its address and its unix socket's path), or
/// `None` when the test must skip (outside CI; under `CI=true` a missing daemon panics).
pub fn real_dockerd() -> Option<(String, std::path::PathBuf)> {
    use protocol::test_support::{require_component, START_DOCKERD};
    let host = std::env::var("TEST_DOCKER_HOST").ok();
    if !require_component(
        host.is_some(),
        "a real dockerd (TEST_DOCKER_HOST)",
        START_DOCKERD,
    ) {
        return None;
    }
    let host = host.unwrap_or_default();
    let socket = std::path::PathBuf::from(host.strip_prefix("unix://").unwrap_or(&host));
    Some((host, socket))
}

pub async fn fake(config: Config) -> (FakeDockerHandle, Docker) {
    let fd = FakeDocker::start(config).await.expect("start fake-docker");
    let docker = connect(&fd.docker_host(), bollard::API_DEFAULT_VERSION);
    (fd, docker)
}

pub fn connect(host: &str, version: &bollard::ClientVersion) -> Docker {
    let path = host.strip_prefix("unix://").unwrap_or(host);
    Docker::connect_with_unix(path, 120, version).expect("connect")
}

/// Pulls and returns every status line, or the stream error.
pub async fn pull(
    docker: &Docker,
    image: &str,
    platform: &str,
) -> Result<Vec<String>, bollard::errors::Error> {
    let opts = CreateImageOptionsBuilder::default()
        .from_image(image)
        .platform(platform)
        .build();
    let infos = docker
        .create_image(Some(opts), None, None)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(infos.into_iter().filter_map(|i| i.status).collect())
}

pub fn body(image: &str, cmd: &[&str]) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn with_labels(mut b: ContainerCreateBody, labels: &[(&str, &str)]) -> ContainerCreateBody {
    b.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    );
    b
}

pub async fn create(
    docker: &Docker,
    name: Option<&str>,
    b: ContainerCreateBody,
) -> Result<String, bollard::errors::Error> {
    let opts = name.map(|n| CreateContainerOptionsBuilder::default().name(n).build());
    Ok(docker.create_container(opts, b).await?.id)
}

/// Waits with the given condition; returns the exit code (bollard reports >0 as an error).
pub async fn wait(
    docker: &Docker,
    id: &str,
    condition: &str,
) -> Result<i64, bollard::errors::Error> {
    let opts = WaitContainerOptionsBuilder::default()
        .condition(condition)
        .build();
    match docker.wait_container(id, Some(opts)).next().await {
        Some(Ok(r)) => Ok(r.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(e),
        None => panic!("wait stream ended without a result"),
    }
}

/// Non-following logs as `(stream, text)` pairs.
pub async fn logs(
    docker: &Docker,
    id: &str,
    timestamps: bool,
    tail: &str,
) -> Vec<(&'static str, String)> {
    let opts = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .timestamps(timestamps)
        .tail(tail)
        .build();
    docker
        .logs(id, Some(opts))
        .map(|r| r.expect("log frame"))
        .map(frame)
        .collect()
        .await
}

pub fn frame(o: bollard::container::LogOutput) -> (&'static str, String) {
    use bollard::container::LogOutput::*;
    match o {
        StdOut { message } => ("stdout", String::from_utf8_lossy(&message).into_owned()),
        StdErr { message } => ("stderr", String::from_utf8_lossy(&message).into_owned()),
        StdIn { message } => ("stdin", String::from_utf8_lossy(&message).into_owned()),
        Console { message } => ("console", String::from_utf8_lossy(&message).into_owned()),
    }
}

pub async fn force_remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let opts = RemoveContainerOptionsBuilder::default().force(true).build();
    docker.remove_container(id, Some(opts)).await
}

/// `(status, message)` of a server error, for comparisons.
pub fn server_error<T: std::fmt::Debug>(r: Result<T, bollard::errors::Error>) -> (u16, String) {
    match r {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        }) => (status_code, message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// A minimal raw HTTP/1.1 exchange over a unix socket, for requests no client library makes.
pub async fn raw_request(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    let (status, body) = raw_bytes(socket, method, path, body).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A `wait` request whose 200 headers have arrived, so the daemon has registered the
/// waiter (dockerd and fake-docker both register before flushing headers). This is what
/// the docker CLI does before `start`, and what makes `next-exit`/`removed` race-free.
pub struct PendingWait {
    stream: tokio::io::BufReader<tokio::net::UnixStream>,
}

pub async fn wait_registered(socket: &std::path::Path, id: &str, condition: &str) -> PendingWait {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let head = format!(
        "POST /containers/{id}/wait?condition={condition} HTTP/1.1\r\nHost: fake\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut stream = tokio::io::BufReader::new(s);
    let mut status = String::new();
    stream.read_line(&mut status).await.expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "wait: {status}");
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    PendingWait { stream }
}

impl PendingWait {
    /// The `StatusCode` of the wait body.
    pub async fn status_code(mut self) -> i64 {
        use tokio::io::AsyncReadExt;
        let mut rest = String::new();
        self.stream.read_to_string(&mut rest).await.expect("body");
        let json = rest
            .lines()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or("{}");
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("wait JSON");
        v["StatusCode"].as_i64().expect("StatusCode")
    }
}

/// A raw HTTP/1.1 exchange, byte-exact: the body de-chunked (multiplexed log frames too).
pub async fn raw_bytes(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest = out.get(split + 4..).unwrap_or(&[]).to_vec();
    if !head.contains("transfer-encoding: chunked") {
        return (status, rest);
    }
    let (mut body, mut i) = (Vec::new(), 0);
    while let Some(nl) = rest[i..].windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[i..i + nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        i += nl + 2;
        if size == 0 || i + size > rest.len() {
            break;
        }
        body.extend_from_slice(&rest[i..i + size]);
        i += size + 2;
    }
    (status, body)
}

/// Splits a multiplexed stream into `(stream, text)` frames; a raw stream is one stdout frame.
pub fn demux(mut b: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    while b.len() >= 8 && b[0] <= 2 && b[1..4] == [0, 0, 0] {
        let n = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
        let end = (8 + n).min(b.len());
        out.push((b[0], String::from_utf8_lossy(&b[8..end]).into_owned()));
        b = &b[end..];
    }
    if !b.is_empty() {
        out.push((1, String::from_utf8_lossy(b).into_owned()));
    }
    out
}

/// Observations of one daemon: a key per request, its normalised answer.
pub type Obs = std::collections::BTreeMap<String, String>;

/// Compares what dockerd (`real`) and fake-docker answered, key by key. A key in
/// `documented` (`(key, fake's value, why)`) must show fake's documented value instead.
/// Panics listing every other difference.
pub fn assert_same_observations(real: &Obs, fake: &Obs, documented: &[(&str, &str, &str)]) {
    let mut mismatches = Vec::new();
    for (key, real_value) in real {
        let fake_value = fake.get(key).cloned().unwrap_or_else(|| "<missing>".into());
        if let Some((_, want, why)) = documented.iter().find(|(k, _, _)| k == key) {
            println!("documented difference {key}: fake {fake_value} / real {real_value} ({why})");
            assert_eq!(
                fake_value, *want,
                "fake-docker's documented value for {key}"
            );
        } else if *real_value == fake_value {
            println!("same {key}: {real_value}");
        } else {
            mismatches.push(format!(
                "{key}:\n  real: {real_value}\n  fake: {fake_value}"
            ));
        }
    }
    assert_eq!(real.len(), fake.len());
    assert!(
        mismatches.is_empty(),
        "fake-docker differs from dockerd in {} observations:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
