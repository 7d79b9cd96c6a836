//! The core, end to end, against in-memory adapters on paused tokio time.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::api::reason_codes;
use protocol::messages::{ServerMessage, WorkerState};
use protocol::RunState::{self, *};
use tokio::time::Instant;

use crate::container_spec::labels;
use crate::error::Error;
use crate::lifecycle::ExitOutcome;
use crate::ports::{BackendEvent, ContainerSpec};
use crate::testing::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A container printing `n` lines, one every `every`, then exiting with `code`.
fn steady(n: usize, every: Duration, code: i64) -> Behaviour {
    Behaviour {
        lines: (0..n).map(|i| (every, format!("line {i}"))).collect(),
        exit_code: code,
        ..Default::default()
    }
}

async fn until_no_containers(h: &Harness) {
    let rt = h.runtime.clone();
    h.changes
        .until("every container removed", || rt.live_containers() == 0)
        .await;
}

fn reason(h: &Harness, run: &str) -> (RunState, String, String, Option<i64>) {
    let t = h.backend.last(run).expect("a transition");
    let r = t.reason.expect("a reason");
    (t.state, r.code, r.message, t.exit_code)
}

/// Asserts `run` ended in `state` with reason `code`; its reason message.
fn ended_with(h: &Harness, run: &str, state: RunState, code: &str) -> String {
    let (got_state, got_code, msg, _) = reason(h, run);
    assert_eq!(
        (got_state, got_code.as_str()),
        (state, code),
        "{run}: {msg}"
    );
    msg
}

#[tokio::test(start_paused = true)]
async fn happy_path_reports_in_order_streams_logs_and_cleans_up() {
    let h = Harness::new();
    h.runtime
        .with(|s| s.default_behaviour = steady(3, secs(1), 0));
    let mut r = h.start();
    r.schedule("R1").await;

    // While the container runs, the binary is pinned and the heartbeat holds the run.
    let rt = h.runtime.clone();
    h.changes
        .until("first line printed", || {
            rt.peek(|s| s.containers.values().any(|c| !c.output.is_empty()))
        })
        .await;
    assert_eq!(h.store.pinned_now(), 1);
    r.status_until("busy with R1", |s| {
        s.state == WorkerState::Busy && s.runs == ["R1"]
    })
    .await;

    h.until_terminal("R1").await;
    assert_eq!(h.backend.claims(), ["R1"]);
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    let fin = h.backend.last("R1").unwrap();
    assert_eq!(fin.exit_code, Some(0));
    assert_eq!(fin.reason, None);
    assert_eq!(fin.worker_version.as_deref(), Some("1.0.0"));
    assert_eq!(fin.worker_ulid, "WORKER1");
    assert_eq!(h.backend.log_texts("R1"), ["line 0", "line 1", "line 2"]);
    assert_eq!(h.backend.log_seqs("R1"), [0, 1, 2]);

    until_no_containers(&h).await;
    let store = h.store.clone();
    h.changes
        .until("binary unpinned", || store.pinned_now() == 0)
        .await;
    let calls = h.runtime.calls();
    assert!(
        calls.contains(&"create spacelift-r1".to_string()),
        "{calls:?}"
    );
    assert!(calls.contains(&"remove c1".to_string()), "{calls:?}");
    r.status_until("idle again", |s| {
        s.state == WorkerState::Idle && s.runs.is_empty()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn container_carries_labels_entrypoint_and_env() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    let rt = h.runtime.clone();
    h.changes
        .until("container running", || {
            rt.peek(|s| s.containers.values().any(|c| c.running))
        })
        .await;
    let spec = h
        .runtime
        .with(|s| s.containers.values().next().unwrap().spec.clone());
    assert_eq!(spec.name, "spacelift-r1");
    assert_eq!(
        spec.entrypoint,
        ["/opt/spacelift/binaries/spacelift-worker"]
    );
    assert_eq!(spec.working_dir, "/mnt/workspace");
    assert_eq!(
        spec.binds[0],
        format!(
            "/cache/{}/spacelift-worker:/opt/spacelift/binaries/spacelift-worker:ro",
            "aa".repeat(32)
        )
    );
    assert_eq!(spec.labels[labels::RUN_ID], "R1");
    assert_eq!(spec.labels[labels::WORKER], "WORKER1");
    assert_eq!(spec.labels[labels::POOL], "POOL1");
    assert_eq!(spec.labels[labels::LAUNCHER], "LAUNCHER1");
    assert!(spec.env.contains(&"SPACELIFT_RUN_ULID=R1".to_string()));
    r.cancel("R1").await;
    h.until_terminal("R1").await;
}

#[tokio::test(start_paused = true)]
async fn duplicate_and_late_run_scheduled_are_ignored() {
    let h = Harness::new();
    h.runtime
        .with(|s| s.default_behaviour = steady(2, secs(1), 0));
    let mut r = h.start();
    r.schedule("R1").await;
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    until_no_containers(&h).await;
    // Late redelivery after the run ended, and after a reconnect.
    r.event(BackendEvent::Connected).await;
    r.schedule("R1").await;
    r.schedule("R2").await;
    h.until_terminal("R2").await;
    assert_eq!(h.backend.claims(), ["R1", "R2"]);
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(
        h.runtime
            .calls()
            .iter()
            .filter(|c| c.starts_with("create"))
            .count(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_claim_starts_nothing() {
    let h = Harness::new();
    h.backend.with(|s| {
        s.refuse.insert("R1".into());
    });
    let mut r = h.start();
    r.schedule("R1").await;
    let b = h.backend.clone();
    h.changes
        .until("claim attempted", || !b.claims().is_empty())
        .await;
    r.status_until("slot free again", |s| {
        s.runs.is_empty() && s.state == WorkerState::Idle
    })
    .await;
    // Then a run that is granted goes through; the refused one never touched Docker.
    r.schedule("R2").await;
    h.until_terminal("R2").await;
    assert!(h.backend.states("R1").is_empty());
    assert_eq!(h.store.state.lock().unwrap().gets, 1);
    let calls = h.runtime.calls();
    assert!(
        !calls.iter().any(|c| c.contains("spacelift-r1")),
        "{calls:?}"
    );
}

/// Found by `scenario explore` (schedule seed 16138025737496128740): a run offered just
/// before the worker was drained had its claim refused while it stayed `scheduled`; the
/// launcher remembered it as seen and ignored every later offer of it, so after the
/// undrain the backend offered it to this worker again and again, in vain.
#[tokio::test(start_paused = true)]
async fn a_claim_refused_while_the_run_is_still_scheduled_is_claimed_on_a_later_offer() {
    let h = Harness::new();
    h.backend.with(|s| {
        s.not_now.insert("R1".into());
    });
    let mut r = h.start();
    r.schedule("R1").await;
    let b = h.backend.clone();
    h.changes
        .until("claim attempted", || !b.claims().is_empty())
        .await;
    r.status_until("slot free again", |s| s.state == WorkerState::Idle)
        .await;
    h.backend.with(|s| s.not_now.clear());
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.claims(), ["R1", "R1"]);
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
}

#[tokio::test(start_paused = true)]
async fn transient_claim_failures_are_retried() {
    let h = Harness::new();
    h.backend.with(|s| s.claim_transient = 2);
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.claims(), ["R1", "R1", "R1"]);
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
}

#[tokio::test(start_paused = true)]
async fn capacity_is_never_exceeded_and_overflow_waits_for_a_slot() {
    let mut h = Harness::new();
    h.settings.capacity = 2;
    h.runtime
        .with(|s| s.default_behaviour = steady(1, secs(30), 0));
    let mut r = h.start();
    for run in ["R1", "R2", "R3", "R4"] {
        r.schedule(run).await;
    }
    // R3 and R4 arrive while both slots are busy: they are claimed, in order, as slots free.
    for run in ["R1", "R2", "R3", "R4"] {
        h.until_terminal(run).await;
    }
    assert_eq!(h.backend.claims(), ["R1", "R2", "R3", "R4"]);
    assert_eq!(h.runtime.with(|s| s.max_running), 2);
    until_no_containers(&h).await;
    // A late re-offer of a run already taken is not claimed again.
    r.schedule("R3").await;
    r.status_until("idle", |s| s.runs.is_empty()).await;
    assert_eq!(h.backend.claims(), ["R1", "R2", "R3", "R4"]);
}

#[tokio::test(start_paused = true)]
async fn transient_storm_honours_retry_after_and_keeps_order() {
    let h = Harness::new();
    h.backend.with(|s| {
        s.report_transient = 5;
        s.retry_after = Some(secs(20));
    });
    h.runtime
        .with(|s| s.default_behaviour = steady(3, Duration::ZERO, 0));
    let mut r = h.start();
    let t0 = Instant::now();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    // 5 failures x Retry-After 20 s; jitter alone would total at most 1+2+4+8+16 s.
    assert!(t0.elapsed() >= secs(100), "{:?}", t0.elapsed());
    assert_eq!(h.backend.with(|s| s.failed_reports), 5);
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.log_texts("R1"), ["line 0", "line 1", "line 2"]);
    assert_eq!(h.backend.log_seqs("R1"), [0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn results_are_kept_while_disconnected_and_sent_on_reconnect() {
    let h = Harness::new();
    h.runtime
        .with(|s| s.default_behaviour = steady(2, secs(1), 0));
    let mut r = h.start();
    r.event(BackendEvent::Connected).await;
    h.backend.with(|s| s.down = true);
    r.event(BackendEvent::Disconnected("broker gone".into()))
        .await;
    r.schedule("R1").await;
    // The run goes on while the backend is unreachable.
    let rt = h.runtime.clone();
    h.changes
        .until("container removed", || rt.peek(|s| s.removed.len() == 1))
        .await;
    tokio::time::sleep(secs(600)).await;
    assert!(h.backend.states("R1").is_empty());
    assert_eq!(
        *r.status.borrow().runs,
        ["R1"],
        "undelivered runs stay held"
    );

    h.backend.with(|s| s.down = false);
    let back = Instant::now();
    r.event(BackendEvent::Connected).await;
    h.until_terminal("R1").await;
    // Delivered because of the reconnect, not at the end of a (up to 64 s) backoff.
    assert!(back.elapsed() < secs(1), "{:?}", back.elapsed());
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.log_texts("R1"), ["line 0", "line 1"]);
    r.status_until("nothing held", |s| s.runs.is_empty()).await;
}

#[tokio::test(start_paused = true)]
async fn silence_beyond_the_logs_timeout_times_the_run_out() {
    let mut h = Harness::new();
    h.settings.logs_timeout = secs(60);
    h.runtime.with(|s| {
        s.default_behaviour = Behaviour {
            lines: vec![(secs(1), "starting".into())],
            hang: true,
            ..Default::default()
        }
    });
    let mut r = h.start();
    let t0 = Instant::now();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let msg = ended_with(&h, "R1", TimedOut, reason_codes::LOGS_TIMEOUT);
    assert!(msg.contains("no output for 1m"), "{msg}");
    assert!(
        t0.elapsed() >= secs(61) && t0.elapsed() < secs(70),
        "{:?}",
        t0.elapsed()
    );
    assert!(h.runtime.calls().contains(&"stop c1 10s".to_string()));
    assert_eq!(h.backend.states("R1"), [Preparing, Running, TimedOut]);
    until_no_containers(&h).await;
}

#[tokio::test(start_paused = true)]
async fn a_chatty_run_is_stopped_by_the_run_timeout() {
    let mut h = Harness::new();
    h.settings.logs_timeout = secs(60);
    h.settings.run_timeout = secs(300);
    // A line every 29 s never trips the 60 s silence timeout.
    h.runtime
        .with(|s| s.default_behaviour = steady(1000, secs(29), 0));
    let mut r = h.start();
    let t0 = Instant::now();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    ended_with(&h, "R1", TimedOut, reason_codes::RUN_TIMEOUT);
    assert!(
        t0.elapsed() >= secs(300) && t0.elapsed() < secs(310),
        "{:?}",
        t0.elapsed()
    );
    let texts = h.backend.log_texts("R1");
    assert_eq!(texts.len(), 10 + 1, "{texts:?}");
    assert!(texts[10].contains("exceeded 5m"), "{texts:?}");
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_with_grace_then_kills() {
    let h = Harness::new();
    h.runtime.with(|s| {
        s.default_behaviour = Behaviour {
            hang: true,
            ignore_term: true,
            ..Default::default()
        }
    });
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    let t0 = Instant::now();
    r.cancel("R1").await;
    h.until_terminal("R1").await;
    assert!(
        t0.elapsed() >= secs(10),
        "the grace was not given: {:?}",
        t0.elapsed()
    );
    let msg = ended_with(&h, "R1", Canceled, reason_codes::CANCELED);
    assert_eq!(msg, "canceled by user");
    assert!(h.runtime.calls().contains(&"stop c1 10s".to_string()));
    until_no_containers(&h).await;
}

#[tokio::test(start_paused = true)]
async fn a_foreign_architecture_image_fails_before_any_container() {
    let h = Harness::new();
    h.backend.with(|s| {
        let mut spec = spec("R1");
        spec.image = Some("arm-img".into());
        s.specs.insert("R1".into(), spec);
    });
    h.runtime.with(|s| {
        s.registry.insert("arm-img".into(), image("arm64"));
    });
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let msg = ended_with(&h, "R1", Failed, reason_codes::ARCHITECTURE_MISMATCH);
    assert!(
        msg.contains("image arm-img is linux/arm64 but the Docker daemon is linux/amd64"),
        "{msg}"
    );
    let calls = h.runtime.calls();
    assert!(
        calls.contains(&"pull arm-img linux/amd64".to_string()),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("create")), "{calls:?}");
    assert_eq!(h.backend.states("R1"), [Preparing, Failed]);
}

#[tokio::test(start_paused = true)]
async fn exec_format_error_after_start_is_an_architecture_mismatch() {
    let h = Harness::new();
    h.runtime.with(|s| {
        s.default_behaviour = Behaviour::prints(&["exec /bin/sh: exec format error"]).exit(255);
        s.behaviours.insert(
            "plain-fail".into(),
            Behaviour::prints(&["terraform: error"]).exit(1),
        );
        s.images.insert("plain-fail".into(), image("amd64"));
    });
    h.backend.with(|s| {
        let mut spec = spec("R2");
        spec.image = Some("plain-fail".into());
        s.specs.insert("R2".into(), spec);
    });
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let (state, code, _, exit) = reason(&h, "R1");
    assert_eq!(
        (state, code.as_str(), exit),
        (Failed, reason_codes::ARCHITECTURE_MISMATCH, Some(255))
    );
    // The same exit without the tell-tale line is an ordinary failure.
    until_no_containers(&h).await;
    r.schedule("R2").await;
    h.until_terminal("R2").await;
    let (state, code, _, exit) = reason(&h, "R2");
    assert_eq!(
        (state, code.as_str(), exit),
        (Failed, reason_codes::NONZERO_EXIT, Some(1))
    );
}

fn init_policy(src: &str) -> Option<std::sync::Arc<crate::init_policy::InitPolicy>> {
    let p =
        crate::init_policy::InitPolicy::from_source(std::path::Path::new("/etc/init.rego"), src)
            .expect("a valid policy");
    Some(std::sync::Arc::new(p))
}

#[tokio::test(start_paused = true)]
async fn an_initialization_policy_deny_fails_the_run_without_a_container() {
    let mut h = Harness::new();
    // Every input field the launcher provides is checked, so a wrong shape would allow R2.
    h.settings.init_policy = init_policy(
        r#"package spacelift

deny[sprintf("image %s is not allowed", [input.docker_image])] {
  not startswith(input.docker_image, "public.ecr.aws/spacelift/")
}

deny["no tasks on stack-R2 with worker 1.0.0"] {
  input.run.id == "R2"
  input.run.type == "TASK"
  input.static_run_environment.run_ulid == "R2"
  input.static_run_environment.run_type == "TASK"
  input.static_run_environment.stack_slug == "stack-R2"
  input.worker_version == "1.0.0"
}
"#,
    );
    h.backend.with(|s| {
        let mut r1 = spec("R1");
        r1.image = Some("evil/image:1".into());
        s.specs.insert("R1".into(), r1);
        let mut r2 = spec("R2");
        r2.run_type = protocol::api::RunType::Task;
        s.specs.insert("R2".into(), r2);
    });
    h.runtime.with(|s| {
        s.registry.insert("evil/image:1".into(), image("amd64"));
        s.default_behaviour = steady(1, secs(1), 0);
    });
    let mut r = h.start();

    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let (state, code, msg, exit) = reason(&h, "R1");
    assert_eq!(
        (state, code.as_str(), exit),
        (Failed, reason_codes::INITIALIZATION_POLICY_DENIED, None)
    );
    assert_eq!(
        msg,
        "denied by the initialization policy /etc/init.rego: image evil/image:1 is not allowed"
    );
    assert_eq!(h.backend.states("R1"), [Preparing, Failed]);
    assert!(h
        .backend
        .log_texts("R1")
        .contains(&"Initialization policy: deny: image evil/image:1 is not allowed".to_string()));

    r.schedule("R2").await;
    h.until_terminal("R2").await;
    let msg = ended_with(&h, "R2", Failed, reason_codes::INITIALIZATION_POLICY_DENIED);
    assert!(
        msg.ends_with(": no tasks on stack-R2 with worker 1.0.0"),
        "{msg}"
    );

    // Denied runs pull nothing and create nothing.
    let calls = h.runtime.calls();
    assert!(!calls.iter().any(|c| c.starts_with("pull")), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("create")), "{calls:?}");

    // An allowed run (the default image, a tracked run) runs normally.
    r.schedule("R3").await;
    h.until_terminal("R3").await;
    assert_eq!(h.backend.states("R3"), [Preparing, Running, Finished]);
    assert!(h
        .runtime
        .calls()
        .contains(&"create spacelift-r3".to_string()));
    until_no_containers(&h).await;
}

#[tokio::test(start_paused = true)]
async fn an_initialization_policy_that_allows_runs_normally() {
    let mut h = Harness::new();
    h.settings.init_policy = init_policy(
        "package spacelift\n\ndeny contains \"never\" if { input.run.type == \"DESTROY\" }\n",
    );
    h.runtime
        .with(|s| s.default_behaviour = steady(2, secs(1), 0));
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.log_texts("R1"), ["line 0", "line 1"]);
    until_no_containers(&h).await;
}

#[tokio::test(start_paused = true)]
async fn an_initialization_policy_error_fails_the_run() {
    let mut h = Harness::new();
    // Two complete definitions of `v` that disagree for this input: an evaluation error.
    h.settings.init_policy = init_policy(
        r#"package spacelift
deny[m] { m := sprintf("v=%v", [v]) }
v = 1 { input.static_run_environment.stack_slug == "stack-R1" }
v = 2 { input.static_run_environment.stack_slug == "stack-R1" }
"#,
    );
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let msg = ended_with(&h, "R1", Failed, reason_codes::INITIALIZATION_POLICY_DENIED);
    assert!(
        msg.starts_with("the initialization policy /etc/init.rego could not be evaluated: "),
        "{msg}"
    );
    assert!(!h.runtime.calls().iter().any(|c| c.starts_with("create")));
}

#[tokio::test(start_paused = true)]
async fn out_of_memory_is_reported_as_such() {
    let h = Harness::new();
    h.runtime.with(|s| {
        s.default_behaviour = Behaviour {
            oom: true,
            exit_code: 137,
            ..Default::default()
        }
    });
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let (state, code, _, exit) = reason(&h, "R1");
    assert_eq!(
        (state, code.as_str(), exit),
        (Failed, reason_codes::OOM_KILLED, Some(137))
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_that_cannot_be_pulled_fails_the_run() {
    let h = Harness::new();
    h.backend.with(|s| {
        let mut spec = spec("R1");
        spec.image = Some("nowhere:1".into());
        s.specs.insert("R1".into(), spec);
    });
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let msg = ended_with(&h, "R1", Failed, reason_codes::IMAGE_PULL_FAILED);
    assert!(msg.contains("nowhere:1"), "{msg}");
}

#[tokio::test(start_paused = true)]
async fn daemon_loss_fails_the_run_and_the_next_run_succeeds() {
    let h = Harness::new();
    h.runtime
        .with(|s| s.default_behaviour = Behaviour::prints(&["working"]));
    h.runtime.with(|s| s.default_behaviour.hang = true);
    let mut r = h.start();
    r.schedule("R1").await;
    let rt = h.runtime.clone();
    h.changes
        .until("output seen", || {
            rt.peek(|s| s.containers.values().any(|c| !c.output.is_empty()))
        })
        .await;
    h.runtime.with(|s| s.unavailable = true);
    h.until_terminal("R1").await;
    let msg = ended_with(&h, "R1", Failed, reason_codes::DOCKER_UNAVAILABLE);
    assert!(msg.contains("connection"), "{msg}");

    // The daemon comes back (keeping its containers): the leftover is removed by the
    // retried removal, and the launcher serves the next run.
    h.runtime.with(|s| s.unavailable = false);
    until_no_containers(&h).await;
    h.runtime
        .with(|s| s.default_behaviour = steady(1, secs(1), 0));
    r.schedule("R2").await;
    h.until_terminal("R2").await;
    assert_eq!(h.backend.states("R2"), [Preparing, Running, Finished]);
}

#[tokio::test(start_paused = true)]
async fn a_vanished_container_fails_the_run_with_container_failed() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    // Someone runs `docker rm -f` behind the launcher's back.
    h.runtime.with(|s| {
        if let Some(c) = s.containers.remove("c1") {
            if c.running {
                s.running_now -= 1;
            }
        }
    });
    h.until_terminal("R1").await;
    let msg = ended_with(&h, "R1", Failed, reason_codes::CONTAINER_FAILED);
    assert!(msg.contains("vanished"), "{msg}");
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_binary_is_retried_and_never_executed() {
    let h = Harness::new();
    h.store.state.lock().unwrap().corrupt = 1;
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.store.state.lock().unwrap().gets, 2);

    h.store.state.lock().unwrap().corrupt = 10;
    r.schedule("R2").await;
    h.until_terminal("R2").await;
    let msg = ended_with(&h, "R2", Failed, reason_codes::WORKER_BINARY_UNAVAILABLE);
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(!h
        .runtime
        .calls()
        .contains(&"create spacelift-r2".to_string()));
    assert_eq!(h.store.pinned_now(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_and_its_loss_stops_the_run_silently() {
    let h = Harness::new();
    h.backend.with(|s| s.ttl_ms = 30_000);
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    let b = h.backend.clone();
    h.until_running("R1").await;
    let t0 = Instant::now();
    // Every 10 s (ttl / 3).
    h.changes
        .until("three renewals", || b.peek(|s| s.renewals.len()) >= 3)
        .await;
    assert!(t0.elapsed() <= secs(31), "{:?}", t0.elapsed());

    h.backend.with(|s| {
        s.lease_conflict.insert("R1".into());
    });
    until_no_containers(&h).await;
    assert!(h.runtime.calls().contains(&"stop c1 10s".to_string()));
    r.status_until("run released", |s| s.runs.is_empty()).await;
    assert_eq!(
        h.backend.states("R1"),
        [Preparing, Running],
        "nothing reported after the loss"
    );
}

#[tokio::test(start_paused = true)]
async fn lease_renewals_failing_for_a_whole_ttl_lose_the_lease() {
    let h = Harness::new();
    h.backend.with(|s| s.ttl_ms = 30_000);
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    h.backend.with(|s| s.lease_transient = true);
    let t0 = Instant::now();
    until_no_containers(&h).await;
    // Not before the ttl since the last good renewal ran out.
    assert!(t0.elapsed() >= secs(20), "{:?}", t0.elapsed());
    assert!(
        h.backend.with(|s| s.renewals.len()) > 2,
        "transient failures were retried"
    );
    assert_eq!(h.backend.states("R1"), [Preparing, Running]);
    r.status_until("run released", |s| s.runs.is_empty()).await;
}

#[tokio::test(start_paused = true)]
async fn drain_takes_no_new_runs_lets_running_ones_finish_and_undrain_resumes() {
    let h = Harness::new();
    h.runtime
        .with(|s| s.default_behaviour = steady(1, secs(30), 0));
    let mut r = h.start();
    r.schedule("R1").await;
    let b = h.backend.clone();
    h.changes
        .until("R1 claimed", || !b.claims().is_empty())
        .await;
    r.send(ServerMessage::Drain {
        message_id: "d".into(),
    })
    .await;
    r.status_until("drained", |s| s.state == WorkerState::Drained)
        .await;
    r.schedule("R2").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.claims(), ["R1"]);
    r.status_until("drained and empty", |s| {
        s.state == WorkerState::Drained && s.runs.is_empty()
    })
    .await;

    r.send(ServerMessage::Undrain {
        message_id: "u".into(),
    })
    .await;
    r.status_until("idle", |s| s.state == WorkerState::Idle)
        .await;
    r.schedule("R2").await;
    h.until_terminal("R2").await;
    assert_eq!(h.backend.claims(), ["R1", "R2"]);
}

#[tokio::test(start_paused = true)]
async fn cycle_drains_then_exits_zero() {
    let h = Harness::new();
    h.runtime
        .with(|s| s.default_behaviour = steady(1, secs(30), 0));
    let mut r = h.start();
    r.schedule("R1").await;
    let b = h.backend.clone();
    h.changes
        .until("R1 claimed", || !b.claims().is_empty())
        .await;
    r.send(ServerMessage::Cycle {
        message_id: "c".into(),
    })
    .await;
    r.schedule("R2").await;
    let outcome = r.exit().await.unwrap();
    assert_eq!(outcome, ExitOutcome::Cycled);
    assert_eq!(outcome.exit_code(), 0);
    assert_eq!(h.backend.claims(), ["R1"]);
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.runtime.live_containers(), 0);
}

#[tokio::test(start_paused = true)]
async fn first_signal_drains_and_exits_when_runs_are_done() {
    let h = Harness::new();
    h.runtime
        .with(|s| s.default_behaviour = steady(1, secs(30), 0));
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    r.signal().await;
    r.status_until("drained", |s| s.state == WorkerState::Drained)
        .await;
    r.schedule("R2").await;
    let outcome = r.exit().await.unwrap();
    assert_eq!(outcome, ExitOutcome::Drained);
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.claims(), ["R1"]);
    assert_eq!(h.runtime.live_containers(), 0);
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_undelivered_results() {
    let h = Harness::new();
    h.runtime
        .with(|s| s.default_behaviour = steady(1, secs(1), 0));
    h.backend.with(|s| s.down = true);
    let mut r = h.start();
    r.schedule("R1").await;
    let rt = h.runtime.clone();
    h.changes
        .until("container removed", || rt.peek(|s| s.removed.len() == 1))
        .await;
    r.signal().await;
    tokio::time::sleep(secs(300)).await;
    assert!(!r.task.is_finished(), "exited with an undelivered result");
    h.backend.with(|s| s.down = false);
    r.event(BackendEvent::Connected).await;
    assert_eq!(r.exit().await.unwrap(), ExitOutcome::Drained);
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
}

#[tokio::test(start_paused = true)]
async fn second_signal_cancels_runs_in_flight() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    r.signal().await;
    r.signal().await;
    let outcome = r.exit().await.unwrap();
    assert_eq!(outcome, ExitOutcome::Canceled);
    ended_with(&h, "R1", Canceled, reason_codes::LAUNCHER_SHUTDOWN);
    assert_eq!(h.runtime.live_containers(), 0);
}

#[tokio::test(start_paused = true)]
async fn third_signal_exits_at_once() {
    let mut h = Harness::new();
    h.settings.stop_grace = secs(3600);
    h.runtime.with(|s| {
        s.default_behaviour = Behaviour {
            hang: true,
            ignore_term: true,
            ..Default::default()
        }
    });
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    let t0 = Instant::now();
    r.signal().await;
    r.signal().await;
    r.signal().await;
    assert_eq!(r.exit().await.unwrap(), ExitOutcome::Immediate);
    assert!(t0.elapsed() < secs(1), "{:?}", t0.elapsed());
}

#[tokio::test(start_paused = true)]
async fn leftovers_of_an_earlier_launcher_are_reaped_and_reported() {
    let h = with_leftovers().await;
    let mut r = h.start();
    reaped_and_reported(&h).await;
    // A redelivered run.scheduled for a reaped run is not claimed.
    r.schedule("R0").await;
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.claims(), ["R1"]);
}

/// Found by `scenario explore`: one failed listing at start left the earlier launcher's
/// containers running until the next restart.
#[tokio::test(start_paused = true)]
async fn leftovers_are_reaped_although_the_daemon_fails_the_first_listings() {
    let h = with_leftovers().await;
    h.runtime.with(|s| s.list_errors = 2);
    let _r = h.start();
    reaped_and_reported(&h).await;
}

/// A harness whose daemon holds two containers of this worker's earlier process (runs R0
/// and R7) and one of another worker; the backend says R0 and R9 were held.
async fn with_leftovers() -> Harness {
    let mut h = Harness::new();
    h.held_runs = vec!["R0".into(), "R9".into()];
    let labels_for = |worker: &str, run: &str| {
        BTreeMap::from([
            (labels::RUN_ID.to_string(), run.to_string()),
            (labels::WORKER.to_string(), worker.to_string()),
        ])
    };
    for (worker, run) in [("WORKER1", "R0"), ("WORKER1", "R7"), ("OTHER", "X1")] {
        let spec = ContainerSpec {
            name: format!("spacelift-{run}"),
            image: "img".into(),
            entrypoint: vec![],
            env: vec![],
            labels: labels_for(worker, run),
            binds: vec![],
            network: "none".into(),
            runtime: None,
            working_dir: "/".into(),
            user: String::new(),
            init: false,
        };
        use crate::ports::ContainerRuntime;
        let id = h.runtime.create(&spec).await.unwrap();
        h.runtime.start(&id).await.unwrap();
    }
    h
}

async fn reaped_and_reported(h: &Harness) {
    for run in ["R0", "R7", "R9"] {
        h.until_terminal(run).await;
        ended_with(h, run, Failed, reason_codes::LAUNCHER_RESTARTED);
    }
    let left: Vec<String> = h
        .runtime
        .with(|s| s.containers.values().map(|c| c.spec.name.clone()).collect());
    assert_eq!(left, ["spacelift-X1"]);
}

#[tokio::test(start_paused = true)]
async fn masked_values_never_leave_the_launcher() {
    let mut h = Harness::new();
    h.settings.masked_values = vec!["hunter2".into(), "hunter22".into()];
    h.settings.run_logs_on_stdout = true;
    h.runtime.with(|s| {
        s.default_behaviour = Behaviour::prints(&["token=hunter22 again hunter2", "clean"])
    });
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(
        h.backend.log_texts("R1"),
        ["token=***** again *****", "clean"]
    );
    let out = h.stdout.lines.lock().unwrap().clone();
    assert_eq!(out.len(), 2);
    let first: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(
        first,
        serde_json::json!({
            "run_ulid": "R1",
            "stack_id": "stack-R1",
            "ts": "2026-01-01T00:00:00Z",
            "msg": "token=***** again *****",
        })
    );
}

#[tokio::test(start_paused = true)]
async fn many_lines_arrive_complete_and_in_order() {
    let h = Harness::new();
    h.runtime
        .with(|s| s.default_behaviour = steady(250, Duration::from_millis(1), 0));
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.log_seqs("R1"), (0..250).collect::<Vec<u64>>());
    let texts = h.backend.log_texts("R1");
    assert_eq!(texts[249], "line 249");
    // Batched: far fewer uploads than lines.
    let uploads = h.backend.with(|s| s.uploads);
    assert!(uploads <= 10, "{uploads} uploads for 250 lines");
}

/// Credentials revoked while a run's container runs: the launcher exits with the fatal
/// error, and only once that container is stopped and removed.
#[tokio::test(start_paused = true)]
async fn unauthorized_is_fatal() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    h.backend.with(|s| s.unauthorized = true);
    match r.exit().await {
        Err(Error::Unauthorized(_)) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    let calls = h.runtime.calls();
    assert_eq!(h.runtime.live_containers(), 0, "{calls:?}");
    assert!(calls.contains(&"stop c1 10s".to_string()), "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn unauthorized_at_the_claim_is_fatal() {
    let h = Harness::new();
    h.backend.with(|s| s.unauthorized = true);
    let mut r = h.start();
    r.schedule("R1").await;
    match r.exit().await {
        Err(Error::Unauthorized(_)) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert!(!h.runtime.calls().iter().any(|c| c.starts_with("create")));
}

#[tokio::test(start_paused = true)]
async fn metrics_count_outcomes_spawn_latency_and_reconnects() {
    let h = Harness::new();
    let metrics = crate::metrics::Metrics::new();
    let mut r = h.start_with_metrics(metrics.clone());
    r.event(BackendEvent::Connected).await;
    r.event(BackendEvent::Connected).await;
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    r.status_until("idle", |s| s.runs.is_empty()).await;
    let text = metrics.encode();
    assert!(
        text.contains("spacelift_launcher_runs_total{outcome=\"finished\"} 1"),
        "{text}"
    );
    assert!(text.contains("spacelift_launcher_spawn_latency_seconds_count 1"));
    assert!(text.contains("spacelift_launcher_backend_reconnects_total 1"));
}

#[tokio::test(start_paused = true)]
async fn a_published_binary_for_our_arch_is_prefetched() {
    let h = Harness::new();
    let mut r = h.start();
    let mut other = binary();
    other.arch = protocol::Arch::Arm64;
    r.send(ServerMessage::BinaryPublished {
        message_id: "b1".into(),
        binary: other,
    })
    .await;
    r.send(ServerMessage::BinaryPublished {
        message_id: "b2".into(),
        binary: binary(),
    })
    .await;
    let store = h.store.clone();
    h.changes
        .until("prefetched", || store.state.lock().unwrap().gets == 1)
        .await;
    // Only ours: a second prefetch would have counted too.
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.store.state.lock().unwrap().gets, 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_during_claim_retries_starts_and_reports_nothing() {
    let h = Harness::new();
    h.backend.with(|s| {
        s.claim_transient = 1;
        s.retry_after = Some(secs(30));
    });
    let mut r = h.start();
    r.schedule("R1").await;
    let b = h.backend.clone();
    h.changes
        .until("first claim", || !b.claims().is_empty())
        .await;
    r.cancel("R1").await;
    r.status_until("released", |s| {
        s.runs.is_empty() && s.state == WorkerState::Idle
    })
    .await;
    // Canceled during the retry wait: never claimed, nothing started.
    assert_eq!(h.backend.claims(), ["R1"]);
    assert!(h.backend.states("R1").is_empty());
    assert!(!h.runtime.calls().iter().any(|c| c.starts_with("create")));
}

#[tokio::test(start_paused = true)]
async fn second_signal_gives_up_on_an_unreachable_backend_after_the_grace() {
    let h = Harness::new();
    h.runtime.with(|s| s.default_behaviour = Behaviour::hang());
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_running("R1").await;
    h.backend.with(|s| s.down = true);
    let t0 = Instant::now();
    r.signal().await;
    r.signal().await;
    assert_eq!(r.exit().await.unwrap(), ExitOutcome::Canceled);
    let waited = t0.elapsed();
    assert!(waited >= secs(40) && waited < secs(41), "{waited:?}");
    assert_eq!(h.runtime.live_containers(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_output_cannot_be_followed_still_ends_with_its_exit() {
    let mut h = Harness::new();
    h.settings.logs_timeout = secs(60);
    h.runtime.with(|s| {
        s.logs_error = true;
        s.default_behaviour = steady(1, secs(600), 3);
    });
    let mut r = h.start();
    let t0 = Instant::now();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    // Not timed out for silence (nothing could be read), not stuck until the run timeout.
    let (state, code, _, exit) = reason(&h, "R1");
    assert_eq!(
        (state, code.as_str(), exit),
        (Failed, reason_codes::NONZERO_EXIT, Some(3))
    );
    assert!(t0.elapsed() < secs(601 + 5), "{:?}", t0.elapsed());
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_claim_can_be_retried_on_redelivery() {
    let h = Harness::new();
    h.backend.with(|s| s.claim_transient = 100);
    let mut r = h.start();
    r.schedule("R1").await;
    let b = h.backend.clone();
    h.changes
        .until("claims given up", || b.claims().len() == 8)
        .await;
    r.status_until("slot free", |s| s.state == WorkerState::Idle)
        .await;
    h.backend.with(|s| s.claim_transient = 0);
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.claims().len(), 9);
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
}

mod random_faults {
    //! Random schedules of runs, duplicates, cancels, backend outages and Docker blips,
    //! checked against the invariants the scenario suite also checks.

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Schedule(u8),
        Cancel(u8),
        BackendDown,
        BackendUp,
        DockerBlip(u8),
        Wait(u8),
        RefuseClaim(u8),
        Storm(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6).prop_map(Op::Schedule),
            1 => (0u8..6).prop_map(Op::Cancel),
            1 => Just(Op::BackendDown),
            1 => Just(Op::BackendUp),
            1 => (1u8..20).prop_map(Op::DockerBlip),
            3 => (1u8..60).prop_map(Op::Wait),
            1 => (0u8..6).prop_map(Op::RefuseClaim),
            1 => (1u8..10).prop_map(Op::Storm),
        ]
    }

    async fn play(capacity: u32, ops: Vec<Op>, seed: u64) {
        let mut h = Harness::new();
        h.settings.capacity = capacity;
        h.settings.seed = seed;
        h.settings.stop_grace = secs(5);
        h.runtime
            .with(|s| s.default_behaviour = steady(3, secs(7), 0));
        let mut r = h.start();
        r.event(BackendEvent::Connected).await;
        for op in ops {
            match op {
                Op::Schedule(i) => r.schedule(&format!("R{i}")).await,
                Op::Cancel(i) => r.cancel(&format!("R{i}")).await,
                Op::BackendDown => {
                    h.backend.with(|s| s.down = true);
                    r.event(BackendEvent::Disconnected("blip".into())).await;
                }
                Op::BackendUp => {
                    h.backend.with(|s| s.down = false);
                    r.event(BackendEvent::Connected).await;
                }
                Op::DockerBlip(s) => {
                    h.runtime.with(|st| st.unavailable = true);
                    tokio::time::sleep(secs(u64::from(s))).await;
                    h.runtime.with(|st| st.unavailable = false);
                }
                Op::Wait(s) => tokio::time::sleep(secs(u64::from(s))).await,
                Op::RefuseClaim(i) => h.backend.with(|s| {
                    s.refuse.insert(format!("R{i}"));
                }),
                Op::Storm(n) => h.backend.with(|s| s.report_transient += u32::from(n)),
            }
        }
        h.backend.with(|s| s.down = false);
        r.event(BackendEvent::Connected).await;
        r.signal().await;
        assert_eq!(r.exit().await.unwrap(), ExitOutcome::Drained);

        // Every granted run ended in exactly one terminal state, by a legal path.
        let granted = h.backend.peek(|s| s.granted.clone());
        for run in &granted {
            let states = h.backend.states(run);
            let terminal = states.iter().filter(|s| s.is_terminal()).count();
            assert_eq!(terminal, 1, "{run}: {states:?}");
            let mut cur = Claimed;
            for s in &states {
                assert!(cur.transition(*s).is_ok(), "{run}: {states:?}");
                cur = *s;
            }
            let seqs = h.backend.log_seqs(run);
            assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "{run}");
        }
        // No run started twice, capacity never exceeded, nothing left behind.
        let mut creates: BTreeMap<String, usize> = BTreeMap::new();
        for c in h.runtime.calls() {
            if let Some(name) = c.strip_prefix("create ") {
                *creates.entry(name.to_string()).or_default() += 1;
            }
        }
        assert!(creates.values().all(|n| *n == 1), "{creates:?}");
        assert!(h.runtime.peek(|s| s.max_running) <= capacity as usize);
        assert_eq!(h.runtime.live_containers(), 0, "{:?}", h.runtime.calls());
        assert_eq!(h.store.pinned_now(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn invariants_hold_under_random_faults(
            capacity in 1u32..4,
            ops in proptest::collection::vec(op(), 1..30),
            seed in any::<u64>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(play(capacity, ops, seed));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn huge_output_lines_arrive_whole_in_batches_the_backend_accepts() {
    let h = Harness::new();
    let huge = "x".repeat(3 * crate::run::log::MAX_LINE_BYTES + 10);
    h.runtime.with(|s| {
        s.default_behaviour = Behaviour {
            lines: vec![(Duration::ZERO, huge.clone()); 5],
            exit_code: 0,
            ..Default::default()
        }
    });
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    let texts = h.backend.log_texts("R1");
    // 5 lines of 3 pieces and a bit: 20 pieces, in order, nothing lost.
    assert_eq!(texts.len(), 20);
    assert_eq!(texts.concat(), huge.repeat(5));
    assert!(texts
        .iter()
        .all(|t| t.len() <= crate::run::log::MAX_LINE_BYTES));
    assert_eq!(h.backend.log_seqs("R1"), (0..20).collect::<Vec<u64>>());
}

mod binary_swap;
mod claim_binary;
mod fatal_exit;
mod interruption;
mod prefetch;
mod prepare_deadline;
mod report_order;
