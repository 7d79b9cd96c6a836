//! The backend reached in memory (no listener): the HTTPS API's calls through `DirectApi`
//! (identity, faults, refusals as status codes) and MQTT sessions through `MemorySession`
//! (CONNECT checks, ACL, outages, the Last Will when a session is dropped).

use std::collections::BTreeMap;

use bytes::Bytes;
use fake_backend::{kinds, BackendConfig, Delivery, FakeBackend, Fault, ScheduleRun};
use protocol::api::RegisterRequest;
use protocol::messages::{ServerMessage, WorkerMessage};
use protocol::{topics, Arch};

fn register_req() -> RegisterRequest {
    RegisterRequest {
        protocol_version: protocol::PROTOCOL_VERSION,
        arch: Arch::Amd64,
        launcher_version: "test".into(),
        capacity: 1,
        metadata: BTreeMap::new(),
        previous_worker_ulid: None,
    }
}

#[tokio::test(start_paused = true)]
async fn api_and_sessions_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BackendConfig::new(dir.path());
    config.pool_key_bits = 2048;
    config.admin = false;
    let b = FakeBackend::start_in_memory(config).await.unwrap();
    assert!(b.mqtt_addr().is_none());
    let creds = b.create_pool().unwrap();
    let der = fake_backend::pki::first_cert_der(&creds.certificate_pem).unwrap();
    let fp = fake_backend::pki::fingerprint(&der);

    // A certificate the backend does not know: 401, as over HTTPS.
    let stranger = b.direct_api("00ff", "stranger");
    assert_eq!(stranger.register(register_req()).unwrap_err().status, 401);

    let api = b.direct_api(&fp, "l1");
    // Injected HTTP faults answer first, with their Retry-After.
    b.inject(Fault::HttpError {
        status: 503,
        count: 1,
        path_prefix: None,
        retry_after_s: Some(2),
    })
    .unwrap();
    let e = api.register(register_req()).unwrap_err();
    assert_eq!((e.status, e.retry_after_s), (503, Some(2)));
    let reg = api.register(register_req()).unwrap();
    let (pool, worker) = (reg.pool_ulid.clone(), reg.worker_ulid.clone());
    let ns = topics::DEFAULT_NAMESPACE;
    let (readonly, writeonly) = (
        topics::readonly(ns, &pool, &worker),
        topics::writeonly(ns, &pool, &worker),
    );

    // CONNECT checks: the certificate's pool, a registered worker id.
    assert_eq!(
        b.mqtt_connect("00ff", &worker, None).err().unwrap().code,
        "NotAuthorized"
    );
    assert_eq!(
        b.mqtt_connect(&fp, "nobody", None).err().unwrap().code,
        "NotAuthorized"
    );

    let will = WorkerMessage::Gone {
        worker_ulid: worker.clone(),
        crashed: true,
    };
    let mut s = b
        .mqtt_connect(
            &fp,
            &worker,
            Some((writeonly.clone(), Bytes::from(will.to_json()))),
        )
        .unwrap();
    assert!(b.is_connected(&worker));
    assert!(!s.subscribe(&topics::readonly(ns, &pool, "other")), "ACL");
    assert!(s.subscribe(&readonly));

    // A run goes to the subscribed worker as run.scheduled.
    let run = b.schedule_run(ScheduleRun::new(pool.clone())).unwrap();
    let heartbeat = protocol::messages::Heartbeat {
        worker_ulid: worker.clone(),
        seq: 0,
        state: protocol::messages::WorkerState::Idle,
        runs: vec![],
        capacity: 1,
        interruption: None,
    };
    assert!(s.publish(
        &writeonly,
        Bytes::from(WorkerMessage::Heartbeat(heartbeat).to_json())
    ));
    let got = loop {
        match s.recv().await {
            Delivery::Message { topic, payload } => {
                assert_eq!(topic, readonly);
                if let Ok(protocol::messages::Incoming::Message(m)) = ServerMessage::parse(&payload)
                {
                    break m;
                }
            }
            Delivery::Closed(why) => panic!("closed: {why}"),
        }
    };
    assert!(
        matches!(&got, ServerMessage::RunScheduled { run_ulid, .. } if *run_ulid == run),
        "{got:?}"
    );

    // Dropped without DISCONNECT: the Last Will reaches the rules.
    drop(s);
    let gone = b.wait_for(|e| e.kind == kinds::WORKER_GONE).await;
    assert_eq!(gone.worker.as_deref(), Some(worker.as_str()));
    assert!(!b.is_connected(&worker));

    // An outage refuses new sessions until it ends.
    b.broker_down(None).unwrap();
    let refused = b.mqtt_connect(&fp, &worker, None).err().unwrap();
    assert_eq!(refused.code, "ServiceUnavailable");
    b.broker_up().unwrap();
    let s = b.mqtt_connect(&fp, &worker, None).unwrap();
    s.disconnect();
    let clean = b
        .events()
        .into_iter()
        .rev()
        .find(|e| e.kind == kinds::MQTT_DISCONNECTED)
        .unwrap();
    assert_eq!(clean.data["clean"], true);
    b.shutdown().await;
}
