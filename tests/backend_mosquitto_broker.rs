//! Interop (b): the fake backend with MOSQUITTO as its broker (`BrokerMode::External`).
//! Mosquitto gets a TLS listener on loopback requiring client certificates from the
//! backend CA, `use_identity_as_username` (a pool certificate's CN is its pool ULID) and
//! an ACL with `%u/%c` patterns; a test worker (rumqttc + reqwest with the pool
//! certificate) registers, is scheduled a run, claims it, reports transitions, and its
//! Last Will marks it crashed. Skipped when Mosquitto is not installed (fails under CI=true).

#[path = "../fake-backend/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use fake_backend::{BrokerMode, FakeBackend, ScheduleRun};
use protocol::messages::{ServerMessage, WorkerState};
use protocol::RunState;

struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_backend_works_through_mosquitto() {
    use protocol::test_support::{require_component, INSTALL_DEPS};
    if !require_component(
        Path::new("/usr/sbin/mosquitto").exists(),
        "mosquitto",
        INSTALL_DEPS,
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The broker's certificate comes from the backend's CA (created here, reused by start).
    let pki = fake_backend::pki::Pki::load_or_create(&data).unwrap();
    let files =
        fake_backend::mosquitto::write_config(&pki, &dir.path().join("mosquitto"), free_port())
            .unwrap();
    let _broker = Mosquitto(
        Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&files.config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mosquitto starts"),
    );
    let mut cfg = config(&data);
    cfg.broker = BrokerMode::External(files.url.clone());
    // start() retries until Mosquitto listens and waits for its SUBACK.
    let b = match FakeBackend::start(cfg).await {
        Ok(b) => b,
        Err(e) => panic!(
            "{e}; mosquitto log:\n{}",
            std::fs::read_to_string(&files.log).unwrap_or_default()
        ),
    };
    assert_eq!(b.broker_endpoint(), files.url);
    assert!(b.mqtt_addr().is_none());

    let creds = new_pool(&b).await;
    assert_eq!(creds.token.broker.endpoint, files.url);
    let api = creds.http();
    let reg = api.register(1, None).await;
    let w = reg.worker_ulid.clone();
    let mut m = Mqtt::connect(&creds, &w).await;
    m.heartbeat(WorkerState::Idle, vec![], 1).await;
    within(
        "online via mosquitto",
        b.wait_for(|e| e.kind == "worker.online" && e.worker.as_deref() == Some(w.as_str())),
    )
    .await;

    let run = b
        .schedule_run(ScheduleRun::new(creds.pool()).env("SPACELIFT_TEST_EXIT_CODE", "1"))
        .unwrap();
    assert_eq!(run_scheduled(&m.next_message().await), Some(run.as_str()));
    let claim = api.claim(&run, &w).await.unwrap();
    assert_eq!(claim.run.env["SPACELIFT_TEST_EXIT_CODE"], "1");
    api.transition(&run, &w, RunState::Preparing, None)
        .await
        .unwrap();
    api.transition(&run, &w, RunState::Running, None)
        .await
        .unwrap();
    assert_eq!(
        api.transition(&run, &w, RunState::Claimed, None)
            .await
            .unwrap_err()
            .status,
        409
    );
    api.transition(&run, &w, RunState::Failed, Some(1))
        .await
        .unwrap();
    assert_eq!(b.run_state(&run), Some(RunState::Failed));
    b.drain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Drain { .. }
    ));

    // Mosquitto's ACL keeps a worker out of another worker's topic: nothing it publishes
    // there reaches the backend, and its own topic keeps working.
    let since = b.last_seq();
    m.client
        .publish(
            protocol::topics::writeonly("spacelift", creds.pool(), "01OTHERWORKER000000000000"),
            rumqttc::QoS::AtLeastOnce,
            false,
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    m.heartbeat(WorkerState::Drained, vec![], 1).await;
    let ev = within(
        "own heartbeat",
        b.wait_for_since(since, |e| e.kind == "message.received"),
    )
    .await;
    assert_eq!(
        ev.worker.as_deref(),
        Some(w.as_str()),
        "the first message through is the worker's own heartbeat"
    );

    // A crash: Mosquitto publishes the Last Will, the backend marks the worker gone.
    m.crash();
    let gone = within(
        "last will via mosquitto",
        b.wait_for(|e| e.kind == "worker.gone"),
    )
    .await;
    assert_eq!(gone.worker.as_deref(), Some(w.as_str()));
    assert_eq!(gone.data["crashed"], true);
    assert_eq!(b.worker(&w).unwrap().gone_crashed, Some(true));

    // A client without a pool certificate from this CA does not get in.
    let mut foreign = creds.clone();
    let other_ca = fake_backend::pki::Pki::load_or_create(&dir.path().join("other-ca")).unwrap();
    foreign.identity = other_ca.generate_ecdsa_client(creds.pool()).unwrap();
    let mut intruder = Mqtt::spawn(
        mqtt_options(&foreign, "01INTRUDER000000000000000", false),
        "x",
        creds.pool(),
    );
    intruder.disconnected().await;
    b.shutdown().await;
}
