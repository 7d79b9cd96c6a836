//! Worker binaries (listing, ETag, Range) and every injected fault.

mod common;

use std::time::Duration;

use common::*;
use fake_backend::{BinaryContent, Fault, ScheduleRun};
use protocol::api::{paths, WorkerBinary};
use protocol::messages::ServerMessage;
use protocol::Arch;

#[tokio::test]
async fn binaries_are_listed_per_arch_and_served_with_etag_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let (_w, mut m) = online_worker(&b, &creds, 1).await;

    let none = api
        .get_json::<WorkerBinary>(&paths::latest_binary(Arch::Arm64))
        .await
        .unwrap_err();
    assert_eq!(none.status, 404);

    let amd1 = b
        .publish_version(Arch::Amd64, Some("1.0.0"), BinaryContent::ElfStub)
        .unwrap();
    let arm = b
        .publish_version(Arch::Arm64, None, BinaryContent::ElfStub)
        .unwrap();
    let amd2 = b
        .publish_version(Arch::Amd64, Some("1.1.0"), BinaryContent::ShellWorker)
        .unwrap();
    for expected in [&amd1, &arm, &amd2] {
        match m.next_message().await {
            ServerMessage::BinaryPublished { binary, .. } => assert_eq!(&binary, expected),
            other => panic!("expected worker_binary.published, got {other:?}"),
        }
    }
    let latest: WorkerBinary = api
        .get_json(&paths::latest_binary(Arch::Amd64))
        .await
        .unwrap();
    assert_eq!(latest, amd2);
    let latest_arm: WorkerBinary = api
        .get_json(&paths::latest_binary(Arch::Arm64))
        .await
        .unwrap();
    assert_eq!(latest_arm.version, "0.1.1");

    let url = format!(
        "{}{}",
        creds.token.api.endpoint,
        paths::binary("1.0.0", Arch::Amd64)
    );
    let full = api.client.get(&url).send().await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["etag"], format!("\"{}\"", amd1.sha256));
    let bytes = full.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, amd1.size);
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 0x3E);
    assert_eq!(fake_backend::binaries::sha256_hex(&bytes), amd1.sha256);

    let part = api
        .client
        .get(&url)
        .header("range", "bytes=16-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 16-19/{}", amd1.size)
    );
    assert_eq!(&part.bytes().await.unwrap()[..], &bytes[16..20]);
    let tail = api
        .client
        .get(&url)
        .header("range", format!("bytes={}-", amd1.size - 3))
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(&tail.bytes().await.unwrap()[..], &bytes[bytes.len() - 3..]);
    let out = api
        .client
        .get(&url)
        .header("range", format!("bytes={}-", amd1.size))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 416);
    assert_eq!(
        out.headers()["content-range"],
        format!("bytes */{}", amd1.size)
    );
    let cached = api
        .client
        .get(&url)
        .header("if-none-match", format!("\"{}\"", amd1.sha256))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    let missing = api
        .client
        .get(format!(
            "{}{}",
            creds.token.api.endpoint,
            paths::binary("9.9.9", Arch::Amd64)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let shell = api
        .client
        .get(format!(
            "{}{}",
            creds.token.api.endpoint,
            paths::binary("1.1.0", Arch::Amd64)
        ))
        .send()
        .await
        .unwrap();
    let text = shell.text().await.unwrap();
    assert!(text.starts_with("#!/bin/sh\n"));
    assert!(text.contains("SPACELIFT_TEST_EXIT_CODE"));
    within(
        "download events",
        b.wait_for(|e| e.kind == "binary.download" && e.data["status"] == 416),
    )
    .await;
    b.shutdown().await;
}

#[tokio::test]
async fn download_faults_corrupt_and_slow_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let bin = b
        .publish_version(
            Arch::Amd64,
            Some("2.0.0"),
            BinaryContent::Bytes(vec![7u8; 5000]),
        )
        .unwrap();
    let url = format!(
        "{}{}",
        creds.token.api.endpoint,
        paths::binary("2.0.0", Arch::Amd64)
    );

    b.inject(Fault::CorruptDownload { count: 1 }).unwrap();
    let bad = api.client.get(&url).send().await.unwrap();
    assert_eq!(
        bad.headers()["etag"],
        format!("\"{}\"", bin.sha256),
        "the ETag keeps the true hash"
    );
    let bad = bad.bytes().await.unwrap();
    assert_eq!(bad.len(), 5000);
    assert_ne!(fake_backend::binaries::sha256_hex(&bad), bin.sha256);
    let good = api
        .client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(fake_backend::binaries::sha256_hex(&good), bin.sha256);

    b.inject(Fault::SlowDownload {
        count: 1,
        chunk_bytes: 1000,
        chunk_delay_ms: 20,
    })
    .unwrap();
    let slow = api
        .client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(fake_backend::binaries::sha256_hex(&slow), bin.sha256);
    let ev = within(
        "slow fault",
        b.wait_for(|e| {
            e.kind == "fault.triggered" && e.str("fault").is_some_and(|f| f.starts_with("slow"))
        }),
    )
    .await;
    assert_eq!(ev.data["version"], "2.0.0");
    b.shutdown().await;
}

#[tokio::test]
async fn http_faults_answer_5xx_and_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let w = api.register(1, None).await.worker_ulid;
    b.inject(Fault::HttpError {
        status: 503,
        count: 2,
        path_prefix: Some("/v1/runs/".into()),
        retry_after_s: Some(3),
    })
    .unwrap();
    b.inject(Fault::HttpError {
        status: 429,
        count: 1,
        path_prefix: None,
        retry_after_s: Some(1),
    })
    .unwrap();
    // The register path does not match the first fault; it takes the 429.
    let r: Result<protocol::api::RegisterResponse, _> = api
        .post(paths::REGISTER, &serde_json::json!({"protocol_version": 1, "arch": "amd64", "launcher_version": "x", "capacity": 1}))
        .await;
    let e = r.unwrap_err();
    assert_eq!((e.status, e.retry_after.as_deref()), (429, Some("1")));
    assert_eq!(e.body.unwrap().error.code, "rate_limited");
    for _ in 0..2 {
        let e = api.claim("R", &w).await.unwrap_err();
        assert_eq!((e.status, e.retry_after.as_deref()), (503, Some("3")));
        assert_eq!(e.body.unwrap().error.code, "unavailable");
    }
    // Used up: the real answer again.
    assert_eq!(api.claim("R", &w).await.unwrap_err().status, 404);
    b.shutdown().await;
}

#[tokio::test]
async fn message_faults_duplicate_delay_and_reorder() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let (w, mut m) = online_worker(&b, &creds, 4).await;

    b.inject(Fault::DuplicateMessage {
        worker: w.clone(),
        count: 1,
    })
    .unwrap();
    let run = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    assert_eq!(run_scheduled(&m.next_message().await), Some(run.as_str()));
    assert_eq!(run_scheduled(&m.next_message().await), Some(run.as_str()));
    // Claimed, so draining and undraining below do not re-offer it.
    creds.http().claim(&run, &w).await.unwrap();

    // Reorder: the drain is held and arrives after the undrain that followed it.
    b.inject(Fault::ReorderMessage {
        worker: w.clone(),
        hold_ms: 60_000,
    })
    .unwrap();
    b.drain(&w).unwrap();
    b.undrain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Undrain { .. }
    ));
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Drain { .. }
    ));

    // Delay: a message sent later overtakes the delayed one.
    b.inject(Fault::DelayMessage {
        worker: w.clone(),
        delay_ms: 300,
        count: 1,
    })
    .unwrap();
    b.cycle(&w).unwrap();
    b.undrain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Undrain { .. }
    ));
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Cycle { .. }
    ));
    let ev = within(
        "delayed send",
        b.wait_for(|e| e.kind == "message.sent" && e.data["fault"] == "delayed"),
    )
    .await;
    assert_eq!(ev.data["type"], "worker.cycle");
    b.shutdown().await;
}

/// A delayed message is late on the connection it was sent on: if that connection is gone
/// by then, it is lost with it, never handed to the worker's next connection (found by
/// explore: a restarted launcher took its predecessor's late `cycle` and exited).
#[tokio::test]
async fn a_delayed_message_is_lost_with_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let (w, m) = online_worker(&b, &creds, 1).await;
    b.inject(Fault::DelayMessage {
        worker: w.clone(),
        delay_ms: 1500,
        count: 1,
    })
    .unwrap();
    b.cycle(&w).unwrap();
    m.stop().await;
    let mut next = Mqtt::connect(&creds, &w).await;
    let dropped = within(
        "the delayed message's fate",
        b.wait_for(|e| e.kind == "message.sent" && e.data["type"] == "worker.cycle"),
    )
    .await;
    assert_eq!(dropped.data["delivered"], 0, "{dropped:?}");
    assert!(
        dropped.data["fault"]
            .as_str()
            .is_some_and(|f| f.contains("connection closed")),
        "{dropped:?}"
    );
    b.undrain(&w).unwrap();
    assert!(
        matches!(next.next_message().await, ServerMessage::Undrain { .. }),
        "the next connection never sees the late cycle"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn connection_faults_drop_a_worker_and_take_the_broker_down() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let (w, mut m) = online_worker(&b, &creds, 1).await;
    assert!(b.is_connected(&w));
    b.drop_connection(&w).unwrap();
    m.disconnected().await;
    let gone = within("will after drop", b.wait_for(|e| e.kind == "worker.gone")).await;
    assert_eq!(gone.data["crashed"], true);
    assert!(b.drop_connection(&w).is_err(), "not connected any more");

    let (w2, mut m2) = online_worker(&b, &creds, 1).await;
    let since = b.last_seq();
    b.broker_down(None).unwrap();
    m2.disconnected().await;
    let mut refused = Mqtt::spawn(mqtt_options(&creds, &w2, true), &w2, creds.pool());
    refused.disconnected().await;
    within(
        "refused while down",
        b.wait_for_since(since, |e| e.kind == "mqtt.refused"),
    )
    .await;
    // The broker going down is not a worker crash: no will.
    assert!(!b
        .events_since(since)
        .iter()
        .any(|e| e.kind == "worker.gone"));
    b.broker_up().unwrap();
    let _m3 = Mqtt::connect(&creds, &w2).await;

    // A timed outage ends by itself.
    let since = b.last_seq();
    b.broker_down(Some(Duration::from_millis(200))).unwrap();
    within(
        "outage over",
        b.wait_for_since(since, |e| {
            e.kind == "fault.cleared" && e.data["fault"] == "broker_down"
        }),
    )
    .await;
    let _m4 = Mqtt::connect(&creds, &w2).await;
    b.shutdown().await;
}

/// The claim's answer carries the latest binary for the claiming worker's architecture
/// (registered as amd64 here), and none while that architecture has none published.
#[tokio::test]
async fn the_claim_carries_the_binary_for_the_workers_arch() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let (w, _m) = online_worker(&b, &creds, 1).await;
    let run = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();

    assert_eq!(api.claim(&run, &w).await.unwrap().worker_binary, None);
    b.publish_version(Arch::Arm64, None, BinaryContent::ElfStub)
        .unwrap();
    // The holder's repeated claim is granted again, with the current binary.
    assert_eq!(api.claim(&run, &w).await.unwrap().worker_binary, None);
    let amd = b
        .publish_version(Arch::Amd64, Some("2.0.0"), BinaryContent::ElfStub)
        .unwrap();
    assert_eq!(api.claim(&run, &w).await.unwrap().worker_binary, Some(amd));
}
