//! Unit tests of the timeline: drawing a known report, escaping, the time axis mapping.

use super::html::{esc, fmt_ms};
use super::*;
use crate::report::Trace;

fn mark(lane: usize, at_ms: u64, kind: MarkKind, label: &str) -> Mark {
    Mark {
        at_ms,
        lane,
        kind,
        label: label.into(),
        detail: format!("{label} at {at_ms}"),
    }
}

/// Two launchers, three runs; lanes added out of display order, marks in time order.
fn known() -> Report {
    let mut t = Timeline::default();
    let r1 = t.lane(LaneKind::Run, "r1");
    let l1 = t.lane(LaneKind::Launcher, "l1");
    let r2 = t.lane(LaneKind::Run, "r2");
    let l2 = t.lane(LaneKind::Launcher, "l2");
    let r3 = t.lane(LaneKind::Run, "r3");
    let w = t.lane(LaneKind::World, "backend");
    assert_eq!(t.lane(LaneKind::Run, "r1"), r1, "a lane is added once");
    t.marks = vec![
        mark(r1, 10, MarkKind::Step, "schedule"),
        mark(r1, 20, MarkKind::Event, "claim.granted (l1)"),
        mark(r2, 30, MarkKind::Step, "schedule"),
        mark(w, 40, MarkKind::Fault, "fault: broker down"),
        mark(l1, 50, MarkKind::Fault, "crashed"),
        mark(r3, 60, MarkKind::Event, "claim.granted (l2)"),
        mark(l2, 70, MarkKind::Exit, "exit 0"),
        mark(r1, 80, MarkKind::Failure, "wait run"),
    ];
    t.spans = vec![Span {
        lane: r1,
        from_ms: 20,
        to_ms: 50,
        state: "running".into(),
        detail: "run r1: running".into(),
        label: "l1".into(),
    }];
    t.end_ms = 100;
    Report {
        seed: 7,
        mode: crate::model::Mode::Wire,
        passed: false,
        failures: vec!["run r1 did not reach finished within 1s".into()],
        trace: Trace {
            timeline: t,
            ..Trace::default()
        },
        full: Vec::new(),
    }
}

/// The values of `attr="..."` on elements whose class starts with `class`, in order.
fn attrs(html: &str, class: &str, attr: &str) -> Vec<String> {
    html.split(&format!("class=\"{class}"))
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            let at = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
            Some(tag[at..at + tag[at..].find('"')?].to_string())
        })
        .collect()
}

#[test]
fn a_known_report_draws_a_lane_per_launcher_and_run_in_order() {
    let html = render_html(&known(), "known");
    let kinds = attrs(&html, "lane\"", "data-kind");
    let names = attrs(&html, "lane\"", "data-name");
    assert_eq!(
        kinds,
        ["world", "launcher", "launcher", "run", "run", "run"],
        "{names:?}"
    );
    assert_eq!(names, ["backend", "l1", "l2", "r1", "r2", "r3"]);
    // Every mark drawn once, and the event table lists them in time order.
    assert_eq!(attrs(&html, "mark ", "data-at").len(), 8);
    let table: Vec<&str> = html
        .split("<tr class=\"")
        .skip(1)
        .map(|row| {
            row.split("<td>")
                .nth(1)
                .unwrap_or("")
                .trim_end_matches("</td>")
        })
        .collect();
    assert_eq!(
        table,
        ["10ms", "20ms", "30ms", "40ms", "50ms", "60ms", "70ms", "80ms"]
    );
    assert_eq!(attrs(&html, "mark fault", "data-at"), ["40", "50"]);
    assert_eq!(attrs(&html, "mark failure", "data-at"), ["80"]);
    assert_eq!(attrs(&html, "span", "data-state"), ["running"]);
    // The verdict and the failure on top, before the drawing.
    let (top, _) = html.split_once("<svg").expect("an svg");
    assert!(top.contains("FAIL · seed 7"), "{top}");
    assert!(top.contains("<li>run r1 did not reach finished within 1s</li>"));
    // Self-contained: nothing is fetched, nothing runs.
    for outside in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(outside), "{outside} in the page");
    }
}

#[test]
fn marks_are_drawn_where_their_time_puts_them() {
    let html = render_html(&known(), "known");
    let xs: Vec<f64> = html
        .split("class=\"mark step\"")
        .skip(1)
        .filter_map(|g| {
            let d = g.split("d=\"M").nth(1)?;
            d.split(' ').next()?.parse().ok()
        })
        .collect();
    assert_eq!(xs.len(), 2, "two schedule steps");
    assert!(xs[0] < xs[1], "10ms is left of 30ms: {xs:?}");
}

#[test]
fn every_string_from_the_report_is_escaped() {
    let mut r = known();
    let evil = "<script>alert('x')</script> & \"q\" \u{1b}[31m\u{0}";
    r.failures.push(evil.into());
    r.trace.notes.push(evil.into());
    r.trace.canonical.push(evil.into());
    let t = &mut r.trace.timeline;
    let lane = t.lane(LaneKind::Run, evil);
    t.marks.push(Mark {
        at_ms: 90,
        lane,
        kind: MarkKind::Fault,
        label: evil.into(),
        detail: format!("last output:\n  | {evil}"),
    });
    t.spans.push(Span {
        lane,
        from_ms: 0,
        to_ms: 90,
        state: evil.into(),
        detail: evil.into(),
        label: evil.into(),
    });
    let html = render_html(&r, evil);
    assert!(!html.contains("<script"), "raw markup in the page");
    assert!(!html.contains("alert('x')"), "raw quote in the page");
    assert!(!html.contains('\u{1b}') && !html.contains('\u{0}'));
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"));
    assert_eq!(esc("a\nb\tc"), "a\nb\tc", "newlines and tabs kept");
}

#[test]
fn times_read_as_a_person_writes_them() {
    assert_eq!(fmt_ms(0), "0ms");
    assert_eq!(fmt_ms(850), "850ms");
    assert_eq!(fmt_ms(1_250), "1.25s");
    assert_eq!(fmt_ms(2_000), "2s");
    assert_eq!(fmt_ms(123_000), "2m03s");
}

#[test]
fn output_paths_are_the_file_for_one_case_and_a_directory_for_several() {
    let out = Path::new("/tmp/tl");
    let case = Path::new("cases/cancel.yaml");
    assert_eq!(output_path(out, case, 1), Path::new("/tmp/tl"));
    assert_eq!(output_path(out, case, 2), Path::new("/tmp/tl/cancel.html"));
}

fn event(seq: u64, at_ms: u64, kind: &str) -> fake_backend::Event {
    fake_backend::Event {
        seq,
        at_ms,
        kind: kind.into(),
        pool: None,
        worker: None,
        run: None,
        data: serde_json::Value::Null,
    }
}

#[test]
fn each_backend_lifetime_is_placed_by_its_own_anchor() {
    use fake_backend::kinds::BACKEND_STARTED;
    // The first backend's clock read 1_000 when ours read 300; it logged until 1_500. Down
    // for 2s of ours, the second came up with its clock at 1_501 (it goes on from its last
    // event): our 2_900 read its 1_601.
    let events = [
        event(1, 1_000, BACKEND_STARTED),
        event(2, 1_200, "run.created"),
        event(3, 1_500, "backend.stopped"),
        event(4, 1_501, BACKEND_STARTED),
        event(5, 1_551, "claim.granted"),
        event(6, 1_800, BACKEND_STARTED),
        event(7, 1_900, "run.transition"),
    ];
    let anchors = [(300, 1_000, 1), (700, 1_400, 3), (2_900, 1_601, 5)];
    let times = record::backend_times(&events, &anchors);
    // The third lifetime has no anchor: it goes on from the second's clock. Each offset
    // is taken 1 ms low (see the next test).
    assert_eq!(times, [299, 499, 799, 2_799, 2_849, 3_098, 3_198]);
}

/// Both clocks are read in whole milliseconds: ours read 300 at 300.05, the backend's
/// 1_000 at its 1_000.95, and an event it logged at 1_001.0 (our 300.1) was seen by a
/// step marked at our 300.2, so at 300. The event must not land after that step.
#[test]
fn a_backend_event_is_never_placed_after_a_step_that_saw_it() {
    use fake_backend::kinds::BACKEND_STARTED;
    let events = [
        event(1, 900, BACKEND_STARTED),
        event(2, 1_001, "run.transition"),
    ];
    let times = record::backend_times(&events, &[(300, 1_000, 1)]);
    assert!(times[1] <= 300, "placed at {}", times[1]);
}

#[test]
fn redaction_masks_every_spelling_longest_first_and_leaves_the_rest() {
    let mut secrets = crate::secrets::Secrets::default();
    secrets.add_masked("a masked value", "k1-9b7e0c2a\nk2-5a8c1f0e");
    let mut a = r#"{"stdout":["k1-9b7e0c2a\nk2-5a8c1f0e"]}"#.to_string();
    let mut b = "  | k2-5a8c1f0e".to_string();
    let mut c = "nothing here".to_string();
    secrets.redact_all(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(a, r#"{"stdout":["*****"]}"#, "the JSON spelling, whole");
    assert_eq!(b, "  | *****");
    assert_eq!(c, "nothing here");
}

#[test]
fn a_recorded_timeline_s_redacted_text_is_what_the_page_shows() {
    let mut r = known();
    r.failures = vec!["launcher l1: exit 1: bad key s3cr3t-value".into()];
    r.trace.canonical = vec!["launcher l1: exit 1: bad key s3cr3t-value".into()];
    r.trace.timeline.text = Some(ReportText {
        failures: vec!["launcher l1: exit 1: bad key *****".into()],
        notes: vec![],
        canonical: vec!["launcher l1: exit 1: bad key *****".into()],
    });
    let html = render_html(&r, "redacted");
    assert!(!html.contains("s3cr3t-value"));
    assert_eq!(
        html.matches("bad key *****").count(),
        2,
        "failure and trace"
    );
}
