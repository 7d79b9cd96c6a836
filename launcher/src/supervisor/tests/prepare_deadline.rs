//! The preparing phase (worker binary, initialization policy, image pull) has a deadline:
//! a download that trickles forever must not hold a slot while the lease is renewed.

use super::*;

fn slow_image_run(h: &Harness, run: &str, image: &str) {
    h.runtime.with(|s| {
        s.pull_hangs.insert(image.into());
    });
    h.backend.with(|s| {
        let mut spec = spec(run);
        spec.image = Some(image.into());
        s.specs.insert(run.into(), spec);
    });
}

#[tokio::test(start_paused = true)]
async fn a_pull_that_never_ends_times_the_run_out_and_frees_the_slot() {
    let h = Harness::new();
    slow_image_run(&h, "R1", "registry.example.com/slow:1");
    let mut r = h.start();
    let t0 = Instant::now();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let waited = t0.elapsed();
    let msg = ended_with(&h, "R1", TimedOut, reason_codes::PREPARE_TIMEOUT);
    assert!(
        msg.contains("preparing took longer than 15m")
            && msg.contains("pulling image registry.example.com/slow:1")
            && msg.contains("SPACELIFT_LAUNCHER_PREPARE_TIMEOUT"),
        "{msg}"
    );
    assert!(
        waited >= secs(15 * 60) && waited < secs(15 * 60 + 1),
        "{waited:?}"
    );
    assert!(!h.runtime.calls().iter().any(|c| c.starts_with("create")));
    assert_eq!(h.store.pinned_now(), 0);
    // The slot is free: the next run starts and finishes.
    r.schedule("R2").await;
    h.until_terminal("R2").await;
    assert_eq!(h.backend.states("R2"), [Preparing, Running, Finished]);
}

#[tokio::test(start_paused = true)]
async fn a_trickling_binary_download_times_the_run_out_after_the_configured_deadline() {
    let mut h = Harness::new();
    h.settings.prepare_timeout = secs(90);
    h.store.state.lock().unwrap().delay = Some(secs(24 * 3600));
    let mut r = h.start();
    let t0 = Instant::now();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let msg = ended_with(&h, "R1", TimedOut, reason_codes::PREPARE_TIMEOUT);
    assert!(
        msg.contains("preparing took longer than 90s")
            && msg.contains("fetching worker binary 1.0.0"),
        "{msg}"
    );
    let waited = t0.elapsed();
    assert!(waited >= secs(90) && waited < secs(91), "{waited:?}");
    assert!(!h.runtime.calls().iter().any(|c| c.starts_with("create")));
    // The abandoned download no longer counts as in flight.
    let store = h.store.clone();
    h.changes
        .until("download dropped", || {
            store.state.lock().unwrap().in_flight == 0
        })
        .await;
}
