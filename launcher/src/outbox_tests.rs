//! A run's output on its way to the backend, end to end against the in-memory adapters on
//! paused time: size limits, partial acknowledgements, outages and backpressure.

use std::time::Duration;

use protocol::RunState::*;

use crate::metrics::Metrics;
use crate::ports::BackendEvent;
use crate::testing::*;

/// A container printing `lines`, one every millisecond, then exiting 0.
fn printing(lines: &[String]) -> Behaviour {
    Behaviour {
        lines: lines
            .iter()
            .map(|l| (Duration::from_millis(1), l.clone()))
            .collect(),
        ..Default::default()
    }
}

/// Every line arrived, in order, numbered from 0 with no gap (pieces of a line that was
/// split on the way concatenate back to it).
fn assert_all_arrived(h: &Harness, run: &str, lines: &[String]) {
    let seqs = h.backend.log_seqs(run);
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "seqs");
    let got = h.backend.log_texts(run).concat();
    let want = lines.concat();
    assert_eq!(got.len(), want.len(), "bytes that reached the backend");
    assert!(got == want, "the output arrived out of order or altered");
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_control_characters_reaches_the_backend_whole() {
    let h = Harness::new();
    // 2 MiB of output; each \u{1} is 6 bytes once JSON-escaped.
    let lines: Vec<String> = (0..32)
        .map(|i| format!("{i:02}{}", "\u{1}".repeat(64 * 1024 - 2)))
        .collect();
    h.runtime.with(|s| s.default_behaviour = printing(&lines));
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_all_arrived(&h, "R1", &lines);
    let largest = h.backend.peek(|s| s.largest_upload);
    assert!(largest <= MAX_BODY, "{largest}");
}

#[tokio::test(start_paused = true)]
async fn a_line_larger_than_the_backend_accepts_is_split_not_dropped() {
    let h = Harness::new();
    // A backend with a smaller limit than the launcher's batches and lines assume.
    h.backend.with(|s| s.body_limit = 16 * 1024);
    let lines: Vec<String> = vec![
        "before".into(),
        format!("<{}>", "é\"\u{7}x".repeat(15_000)),
        "after".into(),
    ];
    h.runtime.with(|s| s.default_behaviour = printing(&lines));
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_all_arrived(&h, "R1", &lines);
    assert!(h.backend.peek(|s| s.largest_upload) <= 16 * 1024);
}

#[tokio::test(start_paused = true)]
async fn a_partial_acknowledgement_is_resumed_from_next_seq() {
    let h = Harness::new();
    h.backend.with(|s| s.max_lines_per_upload = Some(3));
    let lines: Vec<String> = (0..250).map(|i| format!("line {i}")).collect();
    h.runtime.with(|s| s.default_behaviour = printing(&lines));
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.log_texts("R1"), lines);
    assert_all_arrived(&h, "R1", &lines);
}

#[tokio::test(start_paused = true)]
async fn a_long_outage_bounds_queued_output_and_loses_nothing() {
    let mut h = Harness::new();
    let bound = 64 * 1024;
    h.settings.output_buffer_bytes = bound;
    // Far shorter than the outage: a run we stopped reading must not be killed as silent.
    h.settings.logs_timeout = Duration::from_secs(60);
    // 2 MiB of output, printed in about two seconds, while the backend is away for an hour.
    let lines: Vec<String> = (0..2048)
        .map(|i| format!("{i:05} {}", "x".repeat(1018)))
        .collect();
    h.runtime.with(|s| s.default_behaviour = printing(&lines));
    h.backend.with(|s| s.down = true);
    let metrics = Metrics::new();
    let mut r = h.start_with_metrics(metrics.clone());
    r.schedule("R1").await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let batch = crate::run::log::BATCH_BYTES as i64;
    // Nothing was delivered: all that was read is held by the launcher.
    let read = h.runtime.peek(|s| s.read_bytes);
    assert!(
        read <= bound + batch as usize,
        "read {read} bytes of output while the backend was away, bound {bound}"
    );
    let peak = metrics.outbox_queued_peak();
    assert!(
        peak >= bound as i64,
        "the outage should fill the buffer: {peak}"
    );
    assert!(
        peak <= bound as i64 + batch,
        "queued {peak} bytes, bound {bound}"
    );
    assert!(
        metrics
            .encode()
            .contains("spacelift_launcher_run_output_paused_total"),
        "{}",
        metrics.encode()
    );

    h.backend.with(|s| s.down = false);
    r.event(BackendEvent::Connected).await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    assert_eq!(h.backend.log_texts("R1"), lines);
    assert_all_arrived(&h, "R1", &lines);
    assert!(metrics.outbox_queued_peak() <= bound as i64 + batch);
    r.status_until("nothing held", |s| s.runs.is_empty()).await;
    assert!(metrics
        .encode()
        .contains("spacelift_launcher_outbox_queued_bytes 0\n"));
}
