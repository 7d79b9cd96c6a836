//! The run's workspace is created just before its container and removed after it, on
//! every way a run ends; none is made for a run that fails while preparing.

use std::sync::atomic::Ordering;

use protocol::api::reason_codes;
use protocol::RunState::{self, *};

use crate::testing::*;

/// Waits until the run's workspace is gone (it goes after the terminal report and the
/// container), then checks what was done to it.
async fn workspace_went(h: &Harness, run: &str, want: &[&str]) {
    let ws = h.workspaces.clone();
    let run_ = run.to_string();
    h.changes
        .until("workspace removed", || {
            ws.calls.lock().unwrap().contains(&format!("remove {run_}"))
        })
        .await;
    let want: Vec<String> = want.iter().map(|w| format!("{w} {run}")).collect();
    assert_eq!(*h.workspaces.calls.lock().unwrap(), want);
    assert!(!lock_live(&h.workspaces).contains(run));
}

fn lock_live(ws: &MemWorkspaces) -> std::collections::BTreeSet<String> {
    ws.live.lock().unwrap().clone()
}

async fn ends(behaviour: Behaviour, state: RunState) {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = behaviour);
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.last("R1").unwrap().state, state);
    workspace_went(&h, "R1", &["create", "remove"]).await;
    // The container it was mounted in went first.
    assert_eq!(h.runtime.live_containers(), 0);
}

#[tokio::test(start_paused = true)]
async fn finished_run_loses_its_workspace() {
    ends(Behaviour::prints(&["ok"]), Finished).await;
}

#[tokio::test(start_paused = true)]
async fn failed_run_loses_its_workspace() {
    ends(Behaviour::prints(&["no"]).exit(3), Failed).await;
}

#[tokio::test(start_paused = true)]
async fn canceled_run_loses_its_workspace() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    assert!(lock_live(&h.workspaces).contains("R1"));
    let binds = h.runtime.peek(|s| {
        let c = s.containers.values().next().expect("the run's container");
        c.spec.binds.clone()
    });
    assert!(
        binds.contains(&"/data/workspaces/spacelift-r1:/mnt/workspace".to_string()),
        "{binds:?}"
    );
    r.cancel("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.last("R1").unwrap().state, Canceled);
    workspace_went(&h, "R1", &["create", "remove"]).await;
}

#[tokio::test(start_paused = true)]
async fn a_run_failing_to_prepare_gets_no_workspace() {
    let h = Harness::new();
    let mut r = h.start();
    h.backend.with(|s| {
        let mut spec = spec("R1");
        spec.image = Some("missing/image:1".into());
        s.specs.insert("R1".into(), spec);
    });
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.last("R1").unwrap().state, Failed);
    assert!(h.workspaces.calls.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_workspace_that_cannot_be_made_fails_the_run_before_its_container() {
    let h = Harness::new();
    h.workspaces.fail_create.store(true, Ordering::SeqCst);
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let t = h.backend.last("R1").unwrap();
    let reason = t.reason.unwrap();
    assert_eq!(
        (t.state, reason.code.as_str()),
        (Failed, reason_codes::CONTAINER_FAILED)
    );
    assert!(
        reason.message.contains("creating the run's workspace")
            && reason.message.contains("no space left on device"),
        "{}",
        reason.message
    );
    assert!(!h.runtime.calls().iter().any(|c| c.starts_with("create")));
}

/// A fatal exit stops the run, which removes its container and then its workspace.
#[tokio::test(start_paused = true)]
async fn a_fatal_exit_removes_the_workspace() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    r.fatal(crate::error::Fatal::Mqtt("the broker went away".into()));
    assert!(r.exit().await.is_err());
    assert_eq!(h.runtime.live_containers(), 0);
    workspace_went(&h, "R1", &["create", "remove"]).await;
}

/// When the daemon does not answer, the fatal exit aborts the run task mid-removal: the
/// workspace still goes (the task's guard, on drop).
#[tokio::test(start_paused = true)]
async fn an_aborted_run_task_still_removes_the_workspace() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    h.runtime.with(|s| s.unavailable = true);
    r.fatal(crate::error::Fatal::Mqtt("the broker went away".into()));
    assert!(r.exit().await.is_err());
    workspace_went(&h, "R1", &["create", "remove"]).await;
}
