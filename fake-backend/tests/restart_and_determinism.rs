//! A restarted backend keeps pools, workers, runs, logs, binaries and events; the same
//! seed and the same calls give the same IDs and the same trace.

mod common;

use common::*;
use fake_backend::{BinaryContent, FakeBackend, ScheduleRun};
use protocol::api::{paths, LogBatch, LogLine, LogStream, WorkerBinary};
use protocol::{Arch, RunState};

#[tokio::test]
async fn a_restarted_backend_keeps_what_it_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let (w, mut m) = online_worker(&b, &creds, 2).await;
    let done = b
        .schedule_run(ScheduleRun::new(creds.pool()).env("K", "V"))
        .unwrap();
    assert_eq!(run_scheduled(&m.next_message().await), Some(done.as_str()));
    api.claim(&done, &w).await.unwrap();
    let _: protocol::api::LogAck = api
        .post(
            &paths::logs(&done),
            &LogBatch {
                worker_ulid: w.clone(),
                lines: vec![LogLine {
                    seq: 0,
                    stream: LogStream::Stderr,
                    text: "kept".into(),
                }],
            },
        )
        .await
        .unwrap();
    api.transition(&done, &w, RunState::Preparing, None)
        .await
        .unwrap();
    let held = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    assert_eq!(run_scheduled(&m.next_message().await), Some(held.as_str()));
    api.claim(&held, &w).await.unwrap();
    let bin = b
        .publish_version(Arch::Arm64, Some("3.0.0"), BinaryContent::ElfStub)
        .unwrap();
    let last_seq = b.last_seq();
    let mut cfg = config(dir.path());
    cfg.mqtt_bind = b.mqtt_addr().unwrap();
    cfg.https_bind = b.https_addr();
    m.crash();
    b.shutdown().await;

    let b = FakeBackend::start(cfg).await.unwrap();
    // Same endpoints and pool certificate: the old credentials still work.
    assert_eq!(b.pools(), vec![creds.pool().to_string()]);
    let view = b.run(&done).unwrap();
    assert_eq!(view.state, RunState::Preparing);
    assert_eq!(view.spec.env["K"], "V");
    assert_eq!(view.log_lines[0].text, "kept");
    let worker = b.worker(&w).unwrap();
    assert!(!worker.online, "offline until it speaks again");
    let latest: WorkerBinary = api
        .get_json(&paths::latest_binary(Arch::Arm64))
        .await
        .unwrap();
    assert_eq!(latest, bin);
    // Events continue where they stopped, and the old ones are still there.
    let started = b
        .wait_for_since(last_seq, |e| e.kind == "backend.started")
        .await;
    assert!(started.seq > last_seq);
    assert!(b
        .events()
        .iter()
        .any(|e| e.kind == "claim.granted" && e.run.as_deref() == Some(done.as_str())));
    // The restarted launcher keeps its identity and learns what it holds.
    let reg = api.register(2, Some(&w)).await;
    assert_eq!(reg.worker_ulid, w);
    assert_eq!(reg.held_runs, vec![done.clone(), held.clone()]);
    let mut m = Mqtt::connect(&creds, &w).await;
    m.heartbeat(
        protocol::messages::WorkerState::Busy,
        reg.held_runs.clone(),
        2,
    )
    .await;
    within(
        "online again",
        b.wait_for_since(last_seq, |e| e.kind == "worker.online"),
    )
    .await;
    api.renew(&held, &w).await.unwrap();
    api.transition(&done, &w, RunState::Running, None)
        .await
        .unwrap();
    api.transition(&done, &w, RunState::Finished, Some(0))
        .await
        .unwrap();
    b.shutdown().await;
    // A third start reads the finished state back.
    let b = FakeBackend::start(config(dir.path())).await.unwrap();
    assert_eq!(b.run_state(&done), Some(RunState::Finished));
    b.shutdown().await;
}

async fn trace(seed: u64) -> Vec<(String, Option<String>, Option<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.seed = seed;
    let b = FakeBackend::start(cfg).await.unwrap();
    let creds = b.create_pool().unwrap();
    for i in 0..3 {
        b.schedule_run(ScheduleRun::new(&creds.pool_ulid).stack(format!("s{i}")))
            .unwrap();
    }
    let run = b.runs()[1].run_ulid.clone();
    b.cancel_run(&run).unwrap();
    let out = b
        .events()
        .into_iter()
        .filter(|e| e.kind != "backend.started" && e.kind != "pool.created")
        .map(|e| (format!("{}@{}", e.kind, e.at_ms), e.pool, e.run))
        .collect();
    b.shutdown().await;
    out
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_trace() {
    let a = trace(7).await;
    assert_eq!(a, trace(7).await);
    assert_ne!(a, trace(8).await);
    assert!(a.len() >= 7, "{a:?}");
}
