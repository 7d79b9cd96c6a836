//! `preparing` and `running` are queued on the run's outbox: the container's start never
//! waits for the backend to acknowledge them, and the backend still sees every transition,
//! in order, before the terminal one.

use super::*;

fn started(h: &Harness) -> bool {
    h.runtime.calls().iter().any(|c| c.starts_with("start "))
}

#[tokio::test(start_paused = true)]
async fn the_container_starts_before_a_slow_backend_acknowledges_preparing() {
    let h = Harness::new();
    h.backend.with(|s| s.transition_delay = secs(30));
    h.runtime
        .with(|s| s.default_behaviour = steady(2, secs(1), 0));
    let t0 = Instant::now();
    let mut r = h.start();
    r.schedule("R1").await;
    h.changes.until("container started", || started(&h)).await;
    assert!(t0.elapsed() < secs(30), "started after {:?}", t0.elapsed());
    assert_eq!(h.backend.states("R1"), [], "nothing acknowledged yet");
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
}

#[tokio::test(start_paused = true)]
async fn a_backend_refusing_reports_delays_them_but_loses_none() {
    let h = Harness::new();
    h.backend.with(|s| s.down = true);
    h.runtime
        .with(|s| s.default_behaviour = steady(3, secs(1), 0));
    let mut r = h.start();
    r.schedule("R1").await;
    h.changes.until("container started", || started(&h)).await;
    let b = h.backend.clone();
    h.changes
        .until("reports failing", || b.peek(|s| s.failed_reports >= 2))
        .await;
    assert_eq!(h.backend.states("R1"), []);
    h.backend.with(|s| s.down = false);
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    // Every log line arrived once, numbered without a gap.
    let seqs = h.backend.log_seqs("R1");
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(h.backend.log_texts("R1").iter().any(|l| l == "line 2"));
}

#[tokio::test(start_paused = true)]
async fn a_few_transient_failures_keep_the_order() {
    let h = Harness::new();
    h.backend.with(|s| s.report_transient = 3);
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.peek(|s| s.failed_reports), 3);
}
