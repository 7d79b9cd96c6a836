//! A fatal exit (credentials refused, the MQTT session stopped for good) leaves no run
//! container behind, and takes a bounded time.

use super::*;
use crate::error::Fatal;
use crate::supervisor::{CANCEL_SLACK, SWEEP_LIMIT};

#[tokio::test(start_paused = true)]
async fn revoked_credentials_stop_every_run_and_remove_its_container() {
    let mut h = Harness::new();
    h.settings.capacity = 3;
    h.settings.stop_grace = secs(20);
    h.runtime.with(|s| {
        s.default_behaviour = Behaviour {
            hang: true,
            // Only the kill after the grace ends it.
            ignore_term: true,
            ..Default::default()
        }
    });
    let mut r = h.start();
    for run in ["R1", "R2", "R3"] {
        r.schedule(run).await;
        h.until_running(run).await;
    }
    h.backend.with(|s| s.unauthorized = true);
    let t0 = Instant::now();
    match r.exit().await {
        Err(Error::Unauthorized(_)) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    let calls = h.runtime.calls();
    assert_eq!(h.runtime.live_containers(), 0, "{calls:?}");
    let removed = h.runtime.peek(|s| s.removed.clone());
    assert_eq!(removed.len(), 3, "{calls:?}");
    for id in ["c1", "c2", "c3"] {
        assert!(calls.contains(&format!("stop {id} 20s")), "{calls:?}");
    }
    // A renewal (every ttl/3 = 20s) meets the refusal; then the grace, then the kill.
    let waited = t0.elapsed();
    assert!(waited <= secs(20) + secs(20) + CANCEL_SLACK, "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_fatal_exit_is_bounded_when_the_daemon_does_not_answer() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    h.runtime.with(|s| s.unavailable = true);
    let t0 = Instant::now();
    r.fatal(Fatal::Unauthorized("401".into()));
    match r.exit().await {
        Err(Error::Unauthorized(_)) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    let waited = t0.elapsed();
    assert!(waited <= h.settings.stop_grace + CANCEL_SLACK, "{waited:?}");
}

/// The MQTT session's fatal errors (an untrusted broker, a refused subscription) come from
/// outside the supervisor; they stop and remove the runs' containers all the same.
#[tokio::test(start_paused = true)]
async fn an_outside_fatal_error_stops_and_removes_the_containers() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    r.fatal(Fatal::Mqtt(
        "the broker's certificate is not trusted".into(),
    ));
    match r.exit().await {
        Err(Error::Mqtt(m)) => assert!(m.contains("not trusted"), "{m}"),
        other => panic!("expected the MQTT error, got {other:?}"),
    }
    let calls = h.runtime.calls();
    assert_eq!(h.runtime.live_containers(), 0, "{calls:?}");
    assert!(calls.contains(&"stop c1 10s".to_string()), "{calls:?}");
    // The run is told why, as far as the backend can still hear it.
    ended_with(&h, "R1", Canceled, reason_codes::LAUNCHER_SHUTDOWN);
}

/// A run still preparing when the fatal error comes never creates its container.
#[tokio::test(start_paused = true)]
async fn a_fatal_error_while_preparing_creates_no_container() {
    let h = Harness::new();
    h.runtime.with(|s| {
        s.pull_hangs.insert("slow/image:1".into());
    });
    h.backend.with(|s| {
        let mut spec = spec("R1");
        spec.image = Some("slow/image:1".into());
        s.specs.insert("R1".into(), spec);
    });
    let mut r = h.start();
    r.schedule("R1").await;
    let rt = h.runtime.clone();
    h.changes
        .until("pulling", || {
            rt.calls()
                .iter()
                .any(|c| c.starts_with("pull slow/image:1"))
        })
        .await;
    r.fatal(Fatal::Unauthorized("401".into()));
    assert!(matches!(r.exit().await, Err(Error::Unauthorized(_))));
    assert!(!h.runtime.calls().iter().any(|c| c.starts_with("create")));
}

/// Every run ended, but the daemon refused its container's removal: the sweep by label
/// still runs and removes it.
#[tokio::test(start_paused = true)]
async fn a_container_whose_removal_failed_is_swept_before_a_fatal_exit() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    h.runtime.with(|s| s.remove_errors = 1);
    r.fatal(Fatal::Unauthorized("401".into()));
    assert!(matches!(r.exit().await, Err(Error::Unauthorized(_))));
    let calls = h.runtime.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "remove c1").count(),
        2,
        "{calls:?}"
    );
    assert_eq!(h.runtime.live_containers(), 0, "{calls:?}");
}

/// A daemon that takes calls and never answers: the exit still comes within the stop
/// grace, the slack for the last reports and the sweep's own limit.
#[tokio::test(start_paused = true)]
async fn a_fatal_exit_is_bounded_when_the_daemon_hangs() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    h.runtime.with(|s| s.calls_hang = true);
    let t0 = Instant::now();
    r.fatal(Fatal::Unauthorized("401".into()));
    assert!(matches!(r.exit().await, Err(Error::Unauthorized(_))));
    let waited = t0.elapsed();
    let bound = h.settings.stop_grace + CANCEL_SLACK + SWEEP_LIMIT;
    assert!(waited <= bound, "{waited:?} > {bound:?}");
    assert!(waited >= h.settings.stop_grace + CANCEL_SLACK, "{waited:?}");
}
