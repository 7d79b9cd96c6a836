//! Who may connect and what they may touch: mutual TLS on both listeners, the pool reset
//! revoking the old certificate, the topic ACL, and bad input of every kind.

mod common;

use std::time::Duration;

use common::*;
use fake_backend::{CertifiedKey, ScheduleRun};
use protocol::api::{error_codes, paths};
use rumqttc::QoS;

/// A certificate from a CA the backend never heard of.
fn foreign_identity() -> CertifiedKey {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["intruder".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[tokio::test]
async fn https_requires_a_live_pool_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let url = format!(
        "{}{}",
        creds.token.api.endpoint,
        protocol::api::paths::REGISTER
    );

    // No client certificate: the TLS handshake fails.
    let anon = Api::new(creds.ca(), None, &creds.token.api.endpoint);
    assert!(anon.client.post(&url).body("{}").send().await.is_err());
    // A certificate from another CA: refused too.
    let foreign = Api::new(
        creds.ca(),
        Some(&foreign_identity()),
        &creds.token.api.endpoint,
    );
    assert!(foreign.client.post(&url).body("{}").send().await.is_err());
    within("tls refusal event", b.wait_for(|e| e.kind == "tls.refused")).await;

    // The live certificate works; after a reset the old one gets 401, the new one works.
    let api = creds.http();
    let w = api.register(1, None).await.worker_ulid;
    let fresh = b.reset_pool(creds.pool(), None).unwrap();
    let new_creds = Creds::from_env_values(&fresh.token, fresh.private_key_b64.as_deref().unwrap());
    let old = api
        .claim("01NOTARUN0000000000000000", &w)
        .await
        .unwrap_err();
    assert_eq!(old.status, 401);
    let body = old.body.unwrap();
    assert_eq!(body.error.code, error_codes::UNAUTHORIZED);
    assert!(
        body.error.message.contains("reset"),
        "{}",
        body.error.message
    );
    assert_eq!(
        new_creds.http().register(1, None).await.pool_ulid,
        creds.pool()
    );
    b.shutdown().await;
}

#[tokio::test]
async fn mqtt_requires_a_live_pool_certificate_and_enforces_the_acl() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let (w, mut m) = online_worker(&b, &creds, 1).await;

    // Another worker's topic: SUBACK failure, recorded.
    m.client
        .subscribe(
            protocol::topics::readonly("spacelift", creds.pool(), "01OTHERWORKER000000000000"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    loop {
        match within("suback", m.rx.recv()).await.unwrap() {
            MqttIn::SubAck(codes) => {
                assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
                break;
            }
            _ => continue,
        }
    }
    within(
        "denied",
        b.wait_for(|e| e.kind == "mqtt.denied" && e.data["action"] == "subscribe"),
    )
    .await;
    // Its own topic still works.
    b.drain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        protocol::messages::ServerMessage::Drain { .. }
    ));

    // Publishing on another worker's topic closes the connection.
    m.client
        .publish(
            protocol::topics::writeonly("spacelift", creds.pool(), "01OTHERWORKER000000000000"),
            QoS::AtLeastOnce,
            false,
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    m.disconnected().await;
    within(
        "publish denied",
        b.wait_for(|e| e.kind == "mqtt.denied" && e.data["action"] == "publish"),
    )
    .await;

    // A will on someone else's topic is refused at CONNECT (for a registered worker).
    let wa = creds.http().register(1, None).await.worker_ulid;
    let mut opts = mqtt_options(&creds, &wa, false);
    opts.set_last_will(rumqttc::LastWill::new(
        "spacelift/writeonly/x/y",
        "{}",
        QoS::AtLeastOnce,
        false,
    ));
    let since = b.last_seq();
    let mut bad = Mqtt::spawn(opts, &wa, creds.pool());
    let why = connect_outcome(&b, since, &wa).await.unwrap_err();
    assert!(why.contains("last will topic"), "{why}");
    let e = bad.disconnected().await;
    assert!(e.contains("NotAuthorized") || e.contains("refused"), "{e}");

    // A foreign certificate fails the handshake.
    let mut foreign = creds.clone();
    foreign.identity = foreign_identity();
    let mut f = Mqtt::spawn(
        mqtt_options(&foreign, "01WORKERB0000000000000000", false),
        "x",
        creds.pool(),
    );
    f.disconnected().await;

    // After a reset, the old certificate's connections are closed and it is refused.
    let (w2, mut m2) = online_worker(&b, &creds, 1).await;
    let since = b.last_seq();
    b.reset_pool(creds.pool(), None).unwrap();
    m2.disconnected().await;
    let mut old = Mqtt::spawn(mqtt_options(&creds, &w2, false), &w2, creds.pool());
    let e = old.disconnected().await;
    assert!(e.contains("NotAuthorized"), "{e}");
    let refused = within(
        "refusal",
        b.wait_for_since(since, |e| e.kind == "mqtt.refused"),
    )
    .await;
    assert!(
        refused.data["reason"].as_str().unwrap().contains("reset"),
        "{refused:?}"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let base = &creds.token.api.endpoint;

    let garbage = api
        .client
        .post(format!("{base}{}", paths::REGISTER))
        .body("\x00\x01 not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let body: protocol::api::ErrorBody = garbage.json().await.unwrap();
    assert_eq!(body.error.code, error_codes::BAD_REQUEST);

    let huge = vec![b'x'; fake_backend::MAX_BODY + 10];
    let resp = api
        .client
        .post(format!("{base}{}", paths::logs("R")))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: protocol::api::ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.error.code, error_codes::PAYLOAD_TOO_LARGE);

    let resp = api
        .client
        .get(format!("{base}/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let _: protocol::api::ErrorBody = resp.json().await.unwrap();

    let bad_version = api
        .post::<_, protocol::api::RegisterResponse>(
            protocol::api::paths::REGISTER,
            &serde_json::json!({"protocol_version": 99, "arch": "amd64", "launcher_version": "x", "capacity": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(bad_version.status, 400);
    let bad_arch = api
        .post::<_, protocol::api::RegisterResponse>(
            protocol::api::paths::REGISTER,
            &serde_json::json!({"protocol_version": 1, "arch": "s390x", "launcher_version": "x", "capacity": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(bad_arch.status, 400);

    // Unknown runs and workers of other pools.
    let w = api.register(1, None).await.worker_ulid;
    assert_eq!(
        api.claim("01NOSUCHRUN00000000000000", &w)
            .await
            .unwrap_err()
            .status,
        404
    );
    let other = new_pool(&b).await;
    let run = b.schedule_run(ScheduleRun::new(other.pool())).unwrap();
    assert_eq!(api.claim(&run, &w).await.unwrap_err().status, 404);
    assert_eq!(other.http().claim(&run, &w).await.unwrap_err().status, 403);

    // MQTT: garbage, unknown types, and mismatched worker IDs are recorded and ignored.
    let (w, m) = online_worker(&b, &creds, 1).await;
    m.publish_raw(b"\xff\xfe not json").await;
    within("invalid", b.wait_for(|e| e.kind == "message.invalid")).await;
    m.publish_raw(br#"{"type":"worker.teleport","worker_ulid":"x"}"#)
        .await;
    let ev = within(
        "unknown type",
        b.wait_for(|e| e.kind == "message.unknown_type"),
    )
    .await;
    assert_eq!(ev.data["type"], "worker.teleport");
    m.publish_raw(
        br#"{"type":"worker.gone","worker_ulid":"01SOMEONEELSE000000000000","crashed":true}"#,
    )
    .await;
    within("ignored", b.wait_for(|e| e.kind == "message.ignored")).await;
    assert!(b.worker(&w).unwrap().online);

    // Raw garbage on the MQTT port after TLS: a protocol error, then the connection closes.
    let tls = fake_backend::tls::client_config_pem(creds.ca(), &creds.identity).unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let tcp = tokio::net::TcpStream::connect(b.mqtt_addr().unwrap())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&[0xF0, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed without an answer");
    within("refused", b.wait_for(|e| e.kind == "mqtt.refused")).await;
    // Still serving.
    assert!(creds.http().register(1, None).await.worker_ulid.len() == 26);
    b.shutdown().await;
}

/// The first CONNECT outcome for `worker` since `since`: `Err(reason)` when refused.
async fn connect_outcome(
    b: &fake_backend::BackendHandle,
    since: u64,
    worker: &str,
) -> Result<(), String> {
    let ev = within(
        "CONNECT outcome",
        b.wait_for_since(since, |e| {
            (e.kind == "mqtt.refused" && e.data["client_id"] == worker)
                || (e.kind == "mqtt.connected" && e.worker.as_deref() == Some(worker))
        }),
    )
    .await;
    match ev.kind.as_str() {
        "mqtt.refused" => Err(ev.data["reason"].as_str().unwrap_or_default().to_string()),
        _ => Ok(()),
    }
}

#[tokio::test]
async fn another_pools_certificate_cannot_take_over_a_worker_session() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let p = new_pool(&b).await;
    let q = new_pool(&b).await;
    let (w, mut m) = online_worker(&b, &p, 1).await;

    // Pool Q's certificate with P's worker ULID as client id, twice (a takeover loop).
    for _ in 0..2 {
        let since = b.last_seq();
        let mut intruder = Mqtt::spawn(mqtt_options(&q, &w, false), &w, q.pool());
        let outcome = connect_outcome(&b, since, &w).await;
        assert!(outcome.is_err(), "pool Q connected as P's worker {w}");
        let e = intruder.disconnected().await;
        assert!(e.contains("NotAuthorized"), "{e}");
    }

    // P's own session was never touched: still connected, still receives, no disconnect.
    assert!(b.is_connected(&w));
    assert!(!b
        .events()
        .iter()
        .any(|e| e.kind == "mqtt.disconnected" && e.worker.as_deref() == Some(w.as_str())));
    b.drain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        protocol::messages::ServerMessage::Drain { .. }
    ));
    b.shutdown().await;
}

#[tokio::test]
async fn wildcard_client_ids_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    for id in ["#", "+", "a/b", "01ABC+", "#01ABC"] {
        let since = b.last_seq();
        let mut m = Mqtt::spawn(mqtt_options(&creds, id, false), id, creds.pool());
        let outcome = connect_outcome(&b, since, id).await;
        assert!(outcome.is_err(), "client id {id:?} was accepted");
        let e = m.disconnected().await;
        assert!(e.contains("BadClientId"), "{id:?}: {e}");
    }
    b.shutdown().await;
}

#[tokio::test]
async fn unregistered_client_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let id = "01NEVERREGISTERED00000000";
    let since = b.last_seq();
    let mut m = Mqtt::spawn(mqtt_options(&creds, id, false), id, creds.pool());
    let why = connect_outcome(&b, since, id).await.unwrap_err();
    assert!(why.contains("not a registered worker"), "{why}");
    let e = m.disconnected().await;
    assert!(e.contains("NotAuthorized"), "{e}");
    // Once registered, the same pool's certificate connects.
    let (w, _m) = online_worker(&b, &creds, 1).await;
    assert!(b.is_connected(&w));
    b.shutdown().await;
}
