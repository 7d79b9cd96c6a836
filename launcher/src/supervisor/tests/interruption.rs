//! A cloud's interruption notice: idle, the worker exits; busy, it stops taking runs,
//! finishes what can finish and stops what cannot, a stop grace before the deadline.

use protocol::messages::InterruptionNotice;

use super::*;
use crate::interruption::Notice;
use crate::supervisor::interruption::INTERRUPTION_SLACK;

const DEADLINE: &str = "2026-11-29T10:02:00Z";

fn notice(remaining: Duration) -> Notice {
    Notice {
        notice: InterruptionNotice {
            cloud: "aws".into(),
            action: "terminate".into(),
            deadline: DEADLINE.into(),
        },
        remaining,
    }
}

#[tokio::test(start_paused = true)]
async fn idle_worker_exits_drained_and_reports_the_notice() {
    let h = Harness::new();
    let r = h.start();
    let status = r.status.clone();
    let t0 = Instant::now();
    r.interruptions.send(notice(secs(120))).await.unwrap();
    assert_eq!(r.exit().await.unwrap(), ExitOutcome::Drained);
    assert!(t0.elapsed() < secs(1), "{:?}", t0.elapsed());
    let last = status.borrow().clone();
    assert_eq!(last.state, WorkerState::Drained);
    assert_eq!(
        last.interruption.map(|n| n.deadline).as_deref(),
        Some(DEADLINE)
    );
}

#[tokio::test(start_paused = true)]
async fn busy_worker_finishes_a_run_that_ends_in_time_and_takes_no_new_one() {
    let h = Harness::new();
    h.runtime
        .with(|s| s.default_behaviour = steady(3, secs(10), 0));
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    r.interruptions.send(notice(secs(120))).await.unwrap();
    r.status_until("drained, holding R1, with the notice", |s| {
        s.state == WorkerState::Drained && s.runs == ["R1"] && s.interruption.is_some()
    })
    .await;
    r.schedule("R2").await;
    assert_eq!(r.exit().await.unwrap(), ExitOutcome::Drained);
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.claims(), ["R1"], "no run taken after the notice");
    assert_eq!(h.runtime.live_containers(), 0);
}

#[tokio::test(start_paused = true)]
async fn run_still_going_before_the_deadline_is_stopped_with_the_reason() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    let t0 = Instant::now();
    r.interruptions.send(notice(secs(120))).await.unwrap();
    h.until_terminal("R1").await;
    let stopped_after = t0.elapsed();
    let margin = h.settings.stop_grace + INTERRUPTION_SLACK;
    assert!(
        stopped_after >= secs(120) - margin && stopped_after < secs(120),
        "{stopped_after:?}"
    );
    let msg = ended_with(&h, "R1", Failed, reason_codes::SPOT_INTERRUPTION);
    assert!(
        msg.contains(&format!("spot interruption at {DEADLINE}")),
        "{msg}"
    );
    assert_eq!(r.exit().await.unwrap(), ExitOutcome::Drained);
    assert_eq!(h.runtime.live_containers(), 0);
}

#[tokio::test(start_paused = true)]
async fn notice_shorter_than_the_margin_stops_runs_at_once() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    let t0 = Instant::now();
    r.interruptions.send(notice(secs(5))).await.unwrap();
    h.until_terminal("R1").await;
    // The container took SIGTERM at once (the in-memory runtime ends on it).
    assert!(t0.elapsed() < secs(1), "{:?}", t0.elapsed());
    ended_with(&h, "R1", Failed, reason_codes::SPOT_INTERRUPTION);
    assert_eq!(r.exit().await.unwrap(), ExitOutcome::Drained);
}
