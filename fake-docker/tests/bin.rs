//! The `fake-docker` binary: flags, config file, unix + TCP listeners, clean SIGTERM exit.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn binary_serves_unix_and_tcp_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"api_version": "1.41", "local_images": ["busybox"]}"#,
    )
    .expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-docker"))
        .arg("--socket")
        .arg(&socket)
        .args([
            "--tcp",
            "127.0.0.1:0",
            "--arch",
            "arm64",
            "--seed",
            "9",
            "--config",
        ])
        .arg(&config)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fake-docker");
    // Wait for the announcement line rather than for time to pass.
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let announce = lines
        .next_line()
        .await
        .expect("read")
        .expect("announcement");
    let tcp = announce
        .rsplit("tcp://")
        .next()
        .expect("tcp address")
        .to_string();
    assert!(announce.starts_with(&format!(
        "fake-docker listening on unix://{}",
        socket.display()
    )));

    let unix = bollard::Docker::connect_with_unix(
        socket.to_str().expect("utf-8"),
        30,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("unix client");
    let v = unix.version().await.expect("version over unix");
    assert_eq!(
        (v.api_version.as_deref(), v.arch.as_deref()),
        (Some("1.41"), Some("arm64"))
    );
    let http = bollard::Docker::connect_with_http(
        &format!("http://{tcp}"),
        30,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("tcp client");
    let images = http
        .list_images(None::<bollard::query_parameters::ListImagesOptions>)
        .await
        .expect("images over tcp");
    assert_eq!(images[0].repo_tags, ["busybox:latest"]);

    let pid = child.id().expect("pid");
    let status = tokio::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .await
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().await.expect("wait");
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
    assert!(!socket.exists(), "socket removed on exit");
}
