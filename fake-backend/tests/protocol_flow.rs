//! Protocol v1 end to end against the embedded broker and the HTTPS API, with the test
//! acting as a worker: register, heartbeat, run.scheduled, claim, transitions, logs,
//! Last Will, scheduling order, drain, cancel.

mod common;

use common::*;
use fake_backend::ScheduleRun;
use protocol::api::{error_codes, LogBatch, LogLine, LogStream};
use protocol::messages::{ServerMessage, WorkerState};
use protocol::RunState;

#[tokio::test]
async fn a_run_goes_from_scheduled_to_finished() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let (w, mut m) = online_worker(&b, &creds, 2).await;

    let run = b
        .schedule_run(
            ScheduleRun::new(creds.pool())
                .image("busybox:latest")
                .env("SPACELIFT_TEST_EXIT_CODE", "0"),
        )
        .unwrap();
    let msg = m.next_message().await;
    assert_eq!(run_scheduled(&msg), Some(run.as_str()), "{msg:?}");

    let claim = api.claim(&run, &w).await.unwrap();
    assert_eq!(claim.run.run_ulid, run);
    assert_eq!(claim.run.image.as_deref(), Some("busybox:latest"));
    assert_eq!(claim.run.env["SPACELIFT_TEST_EXIT_CODE"], "0");
    assert_eq!(claim.lease.ttl_ms, 30_000);
    // A retried claim by the holder is accepted; nobody else gets it.
    api.claim(&run, &w).await.unwrap();
    let other = api.register(1, None).await.worker_ulid;
    let refused = api.claim(&run, &other).await.unwrap_err();
    assert_eq!(refused.status, 409);
    let body = refused.body.unwrap();
    assert_eq!(body.error.code, error_codes::CONFLICT);
    assert_eq!(body.error.current_state, Some(RunState::Claimed));

    api.transition(&run, &w, RunState::Preparing, None)
        .await
        .unwrap();
    api.renew(&run, &w).await.unwrap();
    api.transition(&run, &w, RunState::Running, None)
        .await
        .unwrap();
    // Repeats are idempotent; going backwards is 409 with the current state.
    assert_eq!(
        api.transition(&run, &w, RunState::Running, None)
            .await
            .unwrap()
            .state,
        RunState::Running
    );
    let back = api
        .transition(&run, &w, RunState::Preparing, None)
        .await
        .unwrap_err();
    assert_eq!(back.status, 409);
    assert_eq!(
        back.body.unwrap().error.current_state,
        Some(RunState::Running)
    );
    // Only the holder reports.
    assert_eq!(
        api.transition(&run, &other, RunState::Finished, None)
            .await
            .unwrap_err()
            .status,
        409
    );

    let line = |seq: u64, text: &str| LogLine {
        seq,
        stream: LogStream::Stdout,
        text: text.into(),
    };
    let ack: protocol::api::LogAck = api
        .post(
            &protocol::api::paths::logs(&run),
            &LogBatch {
                worker_ulid: w.clone(),
                lines: vec![line(0, "a"), line(1, "b")],
            },
        )
        .await
        .unwrap();
    assert_eq!(ack.next_seq, 2);
    // Re-sent lines are ignored; a gap is not accepted.
    let ack: protocol::api::LogAck = api
        .post(
            &protocol::api::paths::logs(&run),
            &LogBatch {
                worker_ulid: w.clone(),
                lines: vec![line(1, "b"), line(2, "c"), line(4, "e")],
            },
        )
        .await
        .unwrap();
    assert_eq!(ack.next_seq, 3);

    api.transition(&run, &w, RunState::Finished, Some(0))
        .await
        .unwrap();
    assert_eq!(b.run_state(&run), Some(RunState::Finished));
    let view = b.run(&run).unwrap();
    assert_eq!(
        view.history,
        vec![
            RunState::Scheduled,
            RunState::Claimed,
            RunState::Preparing,
            RunState::Running,
            RunState::Finished
        ]
    );
    assert_eq!(
        view.log_lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(view.exit_code, Some(0));
    assert_eq!(
        api.transition(&run, &w, RunState::Failed, None)
            .await
            .unwrap_err()
            .status,
        409
    );
    // The lease of a finished run is gone.
    assert_eq!(api.renew(&run, &w).await.unwrap_err().status, 409);

    let kinds: Vec<String> = b
        .events()
        .iter()
        .filter(|e| e.run.as_deref() == Some(run.as_str()))
        .map(|e| e.kind.clone())
        .collect();
    for k in [
        "run.created",
        "run.offered",
        "message.sent",
        "claim.granted",
        "claim.refused",
        "run.transition",
        "logs.received",
        "transition.refused",
    ] {
        assert!(kinds.iter().any(|x| x == k), "missing {k} in {kinds:?}");
    }
    m.stop().await;
    let gone = within("graceful gone", b.wait_for(|e| e.kind == "worker.gone")).await;
    assert_eq!(gone.data["crashed"], false);
    b.shutdown().await;
}

#[tokio::test]
async fn last_will_marks_a_crashed_worker_gone() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let (w, m) = online_worker(&b, &creds, 1).await;
    assert_eq!(b.worker(&w).unwrap().status, "IDLE");
    m.crash();
    let gone = within("will", b.wait_for(|e| e.kind == "worker.gone")).await;
    assert_eq!(gone.worker.as_deref(), Some(w.as_str()));
    assert_eq!(gone.data["crashed"], true);
    let v = b.worker(&w).unwrap();
    assert!(!v.online);
    assert_eq!(v.gone_crashed, Some(true));
    b.shutdown().await;
}

#[tokio::test]
async fn register_reuses_an_offline_identity_and_lists_held_runs() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let (w, mut m) = online_worker(&b, &creds, 1).await;
    let run = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    assert_eq!(run_scheduled(&m.next_message().await), Some(run.as_str()));
    api.claim(&run, &w).await.unwrap();
    api.transition(&run, &w, RunState::Preparing, None)
        .await
        .unwrap();

    // While it is online, its ULID is not handed out again.
    let fresh = api.register(1, Some(&w)).await;
    assert_ne!(fresh.worker_ulid, w);
    m.crash();
    within("gone", b.wait_for(|e| e.kind == "worker.gone")).await;
    let again = api.register(1, Some(&w)).await;
    assert_eq!(again.worker_ulid, w);
    assert_eq!(again.held_runs, vec![run.clone()]);
    assert_eq!(again.heartbeat_interval_ms, 5000);
    // The restarted worker can go on with its run.
    api.renew(&run, &w).await.unwrap();
    api.transition(&run, &w, RunState::Running, None)
        .await
        .unwrap();

    // Another pool's worker ULID is never reused.
    let other = new_pool(&b).await;
    let foreign = other.http().register(1, Some(&w)).await;
    assert_ne!(foreign.worker_ulid, w);
    b.shutdown().await;
}

#[tokio::test]
async fn runs_queue_until_capacity_frees_and_go_to_the_newest_idle_worker() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let (old, mut old_m) = online_worker(&b, &creds, 1).await;
    let (new, mut new_m) = online_worker(&b, &creds, 1).await;
    assert!(new > old);

    let r1 = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    assert_eq!(
        run_scheduled(&new_m.next_message().await),
        Some(r1.as_str())
    );
    let r2 = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    assert_eq!(
        run_scheduled(&old_m.next_message().await),
        Some(r2.as_str())
    );
    let r3 = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    within(
        "queued",
        b.wait_for(|e| e.kind == "run.queued" && e.run.as_deref() == Some(r3.as_str())),
    )
    .await;

    api.claim(&r1, &new).await.unwrap();
    // Capacity 1: the new worker cannot take a second run.
    assert_eq!(api.claim(&r3, &new).await.unwrap_err().status, 409);
    api.transition(&r1, &new, RunState::Failed, Some(1))
        .await
        .unwrap();
    assert_eq!(
        run_scheduled(&new_m.next_message().await),
        Some(r3.as_str())
    );
    b.shutdown().await;
}

#[tokio::test]
async fn drained_workers_get_no_runs_until_undrained() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let (w, mut m) = online_worker(&b, &creds, 1).await;
    b.drain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Drain { .. }
    ));
    assert_eq!(b.worker(&w).unwrap().status, "DRAINED");
    let run = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    within("queued", b.wait_for(|e| e.kind == "run.queued")).await;
    assert_eq!(api.claim(&run, &w).await.unwrap_err().status, 409);
    b.undrain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Undrain { .. }
    ));
    assert_eq!(run_scheduled(&m.next_message().await), Some(run.as_str()));
    b.cycle(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Cycle { .. }
    ));
    // A worker reporting DRAINED is not scheduled either.
    b.undrain(&w).unwrap();
    m.heartbeat(WorkerState::Drained, vec![], 1).await;
    within(
        "drained state",
        b.wait_for(|e| e.kind == "worker.state" && e.data["to"] == "DRAINED"),
    )
    .await;
    assert_eq!(b.worker(&w).unwrap().status, "DRAINED");
    b.shutdown().await;
}

#[tokio::test]
async fn cancel_ends_unclaimed_runs_and_asks_holders_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let queued = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    assert_eq!(b.cancel_run(&queued).unwrap(), RunState::Canceled);
    assert_eq!(b.run(&queued).unwrap().reason.unwrap().code, "canceled");

    let (w, mut m) = online_worker(&b, &creds, 1).await;
    let run = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    assert_eq!(run_scheduled(&m.next_message().await), Some(run.as_str()));
    // A canceled run cannot be claimed.
    assert_eq!(
        api.claim(&queued, &w)
            .await
            .unwrap_err()
            .body
            .unwrap()
            .error
            .current_state,
        Some(RunState::Canceled)
    );
    api.claim(&run, &w).await.unwrap();
    assert_eq!(b.cancel_run(&run).unwrap(), RunState::Claimed);
    match m.next_message().await {
        ServerMessage::RunCancel { run_ulid, .. } => assert_eq!(run_ulid, run),
        other => panic!("expected run.cancel, got {other:?}"),
    }
    api.transition(&run, &w, RunState::Canceled, None)
        .await
        .unwrap();
    assert_eq!(b.run_state(&run), Some(RunState::Canceled));
    b.shutdown().await;
}

#[tokio::test]
async fn an_expired_lease_fails_the_run_as_worker_lost_and_never_reschedules_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.lease_ttl = std::time::Duration::from_millis(300);
    let b = fake_backend::FakeBackend::start(cfg).await.unwrap();
    let creds = new_pool(&b).await;
    let api = creds.http();
    let (w, mut m) = online_worker(&b, &creds, 1).await;
    let run = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    assert_eq!(run_scheduled(&m.next_message().await), Some(run.as_str()));
    api.claim(&run, &w).await.unwrap();
    let ev = within("lease expiry", b.wait_for(|e| e.kind == "lease.expired")).await;
    assert_eq!(ev.run.as_deref(), Some(run.as_str()));
    let view = b.run(&run).unwrap();
    assert_eq!(view.state, RunState::Failed);
    assert_eq!(view.reason.unwrap().code, "worker_lost");
    let late = api.renew(&run, &w).await.unwrap_err();
    assert_eq!(
        (late.status, late.body.unwrap().error.current_state),
        (409, Some(RunState::Failed))
    );
    assert_eq!(
        api.transition(&run, &w, RunState::Running, None)
            .await
            .unwrap_err()
            .status,
        409
    );
    // Never offered again.
    let offers = b
        .events()
        .iter()
        .filter(|e| e.kind == "run.offered" && e.run.as_deref() == Some(run.as_str()))
        .count();
    assert_eq!(offers, 1);
    b.shutdown().await;
}

/// Found by `scenario explore`: a cycle published while the broker was down never reached
/// the launcher, which kept serving. A worker whose heartbeat disagrees with the backend's
/// drain gets the command again; once it reports DRAINED the cycle is done.
#[tokio::test]
async fn drain_and_cycle_the_worker_did_not_obey_are_sent_again_on_its_next_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let (w, mut m) = online_worker(&b, &creds, 1).await;
    b.cycle(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Cycle { .. }
    ));
    // As if that message was lost: the worker still reports IDLE.
    m.heartbeat(WorkerState::Idle, vec![], 10).await;
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Cycle { .. }
    ));
    // A restarted worker (a new registration of the same ULID) reporting IDLE is drained
    // again, not cycled again: the process the cycle was for is gone.
    m.crash();
    within("gone", b.wait_for(|e| e.kind == "worker.gone")).await;
    assert_eq!(creds.http().register(1, Some(&w)).await.worker_ulid, w);
    let mut m = Mqtt::connect(&creds, &w).await;
    m.heartbeat(WorkerState::Idle, vec![], 12).await;
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Drain { .. }
    ));
    // Found by explore too: an undrain overtaken by a delayed drain leaves the worker
    // drained while the backend offers it runs. Its DRAINED heartbeat gets the undrain.
    b.undrain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Undrain { .. }
    ));
    m.heartbeat(WorkerState::Drained, vec![], 13).await;
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Undrain { .. }
    ));
    b.shutdown().await;
}

/// Found by `scenario explore` (schedule seed 6105159280964857503): a drained worker was
/// cycled while the broker was down. It already reported DRAINED, so its heartbeats said
/// nothing of the lost cycle and it never exited. A cycled worker exits once idle: one
/// that still heartbeats DRAINED with no runs has not got the cycle, and gets it again.
#[tokio::test]
async fn a_cycle_lost_while_the_worker_was_already_drained_is_sent_again_once_it_is_idle() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let (w, mut m) = online_worker(&b, &creds, 1).await;
    b.drain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Drain { .. }
    ));
    m.heartbeat(WorkerState::Drained, vec![], 1).await;
    b.cycle(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Cycle { .. }
    ));
    // As if that cycle was lost: the worker goes on reporting DRAINED, idle.
    m.heartbeat(WorkerState::Drained, vec![], 1).await;
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Cycle { .. }
    ));
    b.shutdown().await;
}

/// Found by `scenario explore` (schedule seed 7269109840088528679): a drain delayed past
/// the undrain that followed it reached the worker after the worker had already reported
/// the undrain obeyed (BUSY), so the backend no longer repeated the undrain and the
/// worker stayed drained with a run queued for it. An undrain stays the backend's word
/// until the next drain or cycle: a DRAINED heartbeat gets it again whenever it comes.
#[tokio::test]
async fn an_undrain_overtaken_by_a_delayed_drain_after_it_was_obeyed_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let (w, mut m) = online_worker(&b, &creds, 1).await;
    b.drain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Drain { .. }
    ));
    b.undrain(&w).unwrap();
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Undrain { .. }
    ));
    // The undrain obeyed first, then the delayed drain obeyed.
    m.heartbeat(WorkerState::Busy, vec![], 1).await;
    m.heartbeat(WorkerState::Drained, vec![], 1).await;
    assert!(matches!(
        m.next_message().await,
        ServerMessage::Undrain { .. }
    ));
    b.shutdown().await;
}
