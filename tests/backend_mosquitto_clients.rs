//! Interop (a): Mosquitto's own clients, `mosquitto_sub` / `mosquitto_pub`, with a pool's
//! certificate and key talk to the fake backend's EMBEDDED broker: they receive and send
//! on their own topics and are refused on another worker's topic and without a
//! certificate. Skipped when the Mosquitto clients are not installed (fails under CI=true).

#[path = "../fake-backend/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use protocol::messages::{Heartbeat, WorkerMessage, WorkerState};

fn installed() -> bool {
    ["/usr/bin/mosquitto_sub", "/usr/bin/mosquitto_pub"]
        .iter()
        .all(|p| Path::new(p).exists())
}

struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn tls_args(cmd: &mut Command, port: u16, files: &Files, with_cert: bool) {
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-V",
        "mqttv311",
        "-q",
        "1",
    ]);
    cmd.arg("--cafile").arg(&files.ca);
    if with_cert {
        cmd.arg("--cert")
            .arg(&files.cert)
            .arg("--key")
            .arg(&files.key);
    }
}

/// Runs a Mosquitto client to completion on a blocking thread. `-W` bounds its own run
/// time, so a refusal that goes unnoticed cannot hang the test.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || {
        cmd.stdin(Stdio::null())
            .output()
            .expect("mosquitto client runs")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn mosquitto_clients_use_the_embedded_broker_with_a_pool_certificate() {
    use protocol::test_support::{require_component, INSTALL_DEPS};
    if !require_component(
        installed(),
        "mosquitto-clients (mosquitto_pub, mosquitto_sub)",
        INSTALL_DEPS,
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = start(&dir.path().join("data")).await;
    let creds = new_pool(&b).await;
    let files = Files {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("pool.crt"),
        key: dir.path().join("pool.key"),
    };
    std::fs::write(&files.ca, creds.ca()).unwrap();
    std::fs::write(&files.cert, &creds.identity.cert_pem).unwrap();
    std::fs::write(&files.key, &creds.identity.key_pem).unwrap();
    let port = b.mqtt_addr().unwrap().port();
    let pool = creds.pool().to_string();
    let w = creds.http().register(1, None).await.worker_ulid;

    // mosquitto_sub on its own readonly topic receives what the backend sends.
    let since = b.last_seq();
    let mut sub = Command::new("mosquitto_sub");
    tls_args(&mut sub, port, &files, true);
    sub.args([
        "-i",
        &w,
        "-t",
        &protocol::topics::readonly("spacelift", &pool, &w),
        "-C",
        "1",
        "-W",
        "30",
    ]);
    let sub = tokio::spawn(run(sub));
    within(
        "mosquitto_sub subscribed",
        b.wait_for_since(since, |e| {
            e.kind == "mqtt.subscribed" && e.worker.as_deref() == Some(w.as_str())
        }),
    )
    .await;
    b.drain(&w).unwrap();
    let out = within("mosquitto_sub output", sub).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(msg["type"], "worker.drain");

    // mosquitto_pub on its own writeonly topic reaches the backend.
    let hb = WorkerMessage::Heartbeat(Heartbeat {
        worker_ulid: w.clone(),
        seq: 1,
        state: WorkerState::Idle,
        runs: vec![],
        capacity: 1,
        interruption: None,
    });
    let mut publ = Command::new("mosquitto_pub");
    tls_args(&mut publ, port, &files, true);
    publ.args([
        "-i",
        &w,
        "-t",
        &protocol::topics::writeonly("spacelift", &pool, &w),
    ]);
    publ.arg("-m").arg(String::from_utf8(hb.to_json()).unwrap());
    let out = run(publ).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    within(
        "heartbeat",
        b.wait_for(|e| e.kind == "worker.online" && e.worker.as_deref() == Some(w.as_str())),
    )
    .await;

    // Another worker's readonly topic: the subscription is refused.
    let other = "01OTHERWORKER000000000000";
    let since = b.last_seq();
    let mut sub = Command::new("mosquitto_sub");
    tls_args(&mut sub, port, &files, true);
    sub.args([
        "-i",
        &w,
        "-t",
        &protocol::topics::readonly("spacelift", &pool, other),
        "-C",
        "1",
        "-W",
        "5",
    ]);
    let out = run(sub).await;
    // mosquitto_sub reports a refused SUBACK on stderr (and exits 0 with nothing read).
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("subscription requests were denied"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());
    let denied = within(
        "denied",
        b.wait_for_since(since, |e| e.kind == "mqtt.denied"),
    )
    .await;
    assert_eq!(denied.data["action"], "subscribe");

    // Another worker's writeonly topic: the connection is closed, nothing reaches the backend.
    let since = b.last_seq();
    let mut publ = Command::new("mosquitto_pub");
    tls_args(&mut publ, port, &files, true);
    publ.args([
        "-i",
        &w,
        "-t",
        &protocol::topics::writeonly("spacelift", &pool, other),
        "-m",
        "{}",
    ]);
    let _ = run(publ).await;
    let denied = within(
        "publish denied",
        b.wait_for_since(since, |e| e.kind == "mqtt.denied"),
    )
    .await;
    assert_eq!(denied.data["action"], "publish");
    assert!(!b
        .events_since(since)
        .iter()
        .any(|e| e.kind == "message.received"));

    // No client certificate: the TLS handshake fails.
    let since = b.last_seq();
    let mut sub = Command::new("mosquitto_sub");
    tls_args(&mut sub, port, &files, false);
    sub.args([
        "-i",
        &w,
        "-t",
        &protocol::topics::readonly("spacelift", &pool, &w),
        "-C",
        "1",
        "-W",
        "5",
    ]);
    let out = run(sub).await;
    assert!(!out.status.success());
    within(
        "tls refused",
        b.wait_for_since(since, |e| e.kind == "tls.refused"),
    )
    .await;
    b.shutdown().await;
}
