//! Timelines of real executions: lanes and events as recorded by the engine, no secret in
//! the page, and `scenario run --timeline OUT` writing it.

use std::path::{Path, PathBuf};
use std::process::Command;

use scenarios::timeline::{render_html, LaneKind, MarkKind, Timeline};
use scenarios::Report;

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cases")
        .join(name)
}

fn run(name: &str) -> Report {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = rt
        .block_on(scenarios::run_file(&case(name), None, 1))
        .unwrap_or_else(|e| panic!("{e}"));
    let report = outcome.reports.into_iter().next().expect("one report");
    assert!(report.passed, "{report}");
    report
}

fn lanes(t: &Timeline, kind: LaneKind) -> Vec<&str> {
    t.lanes
        .iter()
        .filter(|l| l.kind == kind)
        .map(|l| l.name.as_str())
        .collect()
}

/// The first mark on `lane` whose label starts with `label`, as (time, kind).
fn first(t: &Timeline, kind: LaneKind, lane: &str, label: &str) -> (u64, MarkKind) {
    t.marks
        .iter()
        .find(|m| {
            let l = &t.lanes[m.lane];
            l.kind == kind && l.name == lane && m.label.starts_with(label)
        })
        .map(|m| (m.at_ms, m.kind))
        .unwrap_or_else(|| panic!("no {label:?} on {kind:?} {lane}: {:#?}", t.marks))
}

#[test]
fn three_launchers_and_nine_runs_give_twelve_lanes_and_the_page_draws_them() {
    let report = run("concurrent_three_launchers.yaml");
    let t = &report.trace.timeline;
    assert_eq!(lanes(t, LaneKind::Launcher), ["l1", "l2", "l3"]);
    let mut runs = lanes(t, LaneKind::Run);
    runs.sort();
    assert_eq!(runs, ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"]);
    assert!(
        t.marks.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
        "time order"
    );
    // Each run: scheduled, claimed, ran and finished, in that order, on its own lane.
    for r in runs {
        let scheduled = first(t, LaneKind::Run, r, "schedule").0;
        let claimed = first(t, LaneKind::Run, r, "claim.granted").0;
        let started = first(t, LaneKind::Run, r, "container start").0;
        let (finished, kind) = first(t, LaneKind::Run, r, "finished");
        assert!(
            scheduled <= claimed && claimed <= started && started <= finished,
            "{r}"
        );
        assert_eq!(kind, MarkKind::Event);
        let states: Vec<&str> = t
            .spans
            .iter()
            .filter(|s| t.lanes[s.lane].name == r && s.state != "wait")
            .map(|s| s.state.as_str())
            .collect();
        assert_eq!(
            states,
            ["scheduled", "claimed", "preparing", "running", "finished"],
            "{r}"
        );
    }
    let html = render_html(&report, "three");
    assert_eq!(html.matches("<g class=\"lane\"").count(), t.lanes.len());
    assert_eq!(html.matches("<g class=\"mark ").count(), t.marks.len());
    assert!(html.contains("PASS · seed 2"));
}

#[test]
fn a_crash_and_restart_shows_the_crash_the_lost_run_and_the_new_start_in_order() {
    let report = run("crash_and_restart.yaml");
    let t = &report.trace.timeline;
    let (crash_step, kind) = first(t, LaneKind::Launcher, "l1", "crash launcher");
    assert_eq!(kind, MarkKind::Fault);
    let (crashed, kind) = first(t, LaneKind::Launcher, "l1", "crashed");
    assert_eq!(kind, MarkKind::Fault);
    let running = t
        .spans
        .iter()
        .find(|s| t.lanes[s.lane].name == "r1" && s.state == "running")
        .expect("r1 ran")
        .from_ms;
    let restart = first(t, LaneKind::Launcher, "l1", "start launcher").0;
    let failed = first(t, LaneKind::Run, "r1", "failed").0;
    assert!(running <= crash_step && crash_step <= crashed, "{t:#?}");
    assert!(crashed <= restart && restart <= failed, "{t:#?}");
    // The launcher was up twice: before the crash and after the restart.
    let ups = t
        .spans
        .iter()
        .filter(|s| t.lanes[s.lane].name == "l1" && s.state == "up")
        .count();
    assert_eq!(ups, 2);
}

#[test]
fn a_masked_secret_printed_by_a_run_is_nowhere_in_its_timeline() {
    for (file, secrets) in [
        ("masked_secret_in_output.yaml", &["dtok-7f3a9c1e5b2d44"][..]),
        (
            "masked_multiline_secret_in_output.yaml",
            &["k1-9b7e0c2a64f1d3", "k2-5a8c1f0e7d2b96"][..],
        ),
    ] {
        let report = run(file);
        assert!(
            report.trace.timeline.text.is_some(),
            "the page shows the recorder's redacted copy of the report's text"
        );
        let html = render_html(&report, file);
        for s in secrets {
            assert!(!html.contains(s), "{file}: the secret is in the timeline");
        }
        // Not hidden by omission: the run's output and its schedule step are there, masked.
        assert!(html.contains("*****"), "{file}");
        assert!(html.contains("last output:"), "{file}");
        assert!(html.contains("done"), "{file}");
    }
}

#[test]
fn scenario_run_timeline_writes_one_file_or_one_per_case() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = env!("CARGO_BIN_EXE_scenario");
    let one = dir.path().join("happy.html");
    let out = Command::new(bin)
        .arg("run")
        .arg(case("happy_path.yaml"))
        .arg("--timeline")
        .arg(&one)
        .output()
        .expect("scenario runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let html = std::fs::read_to_string(&one).expect("the timeline is written");
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg"));
    assert!(html.contains("data-kind=\"run\" data-name=\"r1\""));

    let several = dir.path().join("all");
    let out = Command::new(bin)
        .arg("run")
        .args([case("happy_path.yaml"), case("cancel.yaml")])
        .arg("--timeline")
        .arg(&several)
        .output()
        .expect("scenario runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for name in ["happy_path.html", "cancel.html"] {
        let html = std::fs::read_to_string(several.join(name)).expect(name);
        assert!(html.contains("class=\"lane\""), "{name}");
    }
}

#[test]
fn a_failing_step_is_marked_where_it_gave_up_and_run_output_is_escaped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("late.yaml");
    std::fs::write(
        &file,
        r#"
description: A run slower than the wait; its output is markup.
seed: 5
topology:
  dockers: [{ name: d1 }]
  launchers: [{ name: l1, docker: d1 }]
  worker_versions: [{ version: v1, arch: amd64 }]
phases:
  - name: slow
    steps:
      - schedule: { run: r1, behaviour: { stdout: ["<script>alert(1)</script>"], duration: 2s } }
      - wait_run: { run: r1, state: running }
      - wait_run: { run: r1, state: finished, within: 1s }
"#,
    )
    .expect("write");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = rt
        .block_on(scenarios::run_file(&file, None, 1))
        .unwrap_or_else(|e| panic!("{e}"));
    let report = &outcome.reports[0];
    assert!(!report.passed);
    let t = &report.trace.timeline;
    let failure = t
        .marks
        .iter()
        .find(|m| m.kind == MarkKind::Failure)
        .expect("a failure mark");
    assert_eq!(t.lanes[failure.lane].name, "r1");
    assert!(failure.detail.contains("did not reach finished within 1s"));
    let wait = t
        .spans
        .iter()
        .find(|s| s.state == "wait" && s.to_ms == failure.at_ms)
        .expect("the wait ends where the step failed");
    assert!(failure.at_ms - wait.from_ms >= 1_000, "waited 1s: {wait:?}");

    let html = render_html(report, "late");
    assert!(html.contains("<p class=\"verdict fail\">FAIL"));
    assert!(!html.contains("<script>"), "the run's output is escaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
}
