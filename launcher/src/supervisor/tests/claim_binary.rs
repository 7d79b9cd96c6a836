//! The claim's answer may carry the worker binary: then no separate latest-binary call is
//! made; from a backend that omits it, the launcher asks as before.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_binary_on_the_claim_saves_the_latest_binary_call() {
    let h = Harness::new();
    h.backend.with(|s| s.claim_carries_binary = true);
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.peek(|s| s.latest_binary_calls), 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_binary_on_the_claim_the_launcher_asks_for_it() {
    let h = Harness::new();
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.peek(|s| s.latest_binary_calls), 1);
}
