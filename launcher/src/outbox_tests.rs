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
    // One run: its own peak is the process's.
    assert_eq!(metrics.outbox_run_peak() as i64, peak);
    assert!(metrics.outbox_run_peak() <= crate::outbox::run_queued_limit(bound));
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

/// R1's outbox delivering to `h`'s backend as the supervisor wires one; keep the sender
/// of reconnections alive for as long as the outbox runs.
fn outbox_of(
    h: &Harness,
) -> (
    super::OutboxHandle,
    impl std::future::Future<Output = String>,
    tokio::sync::watch::Sender<u64>,
) {
    let (connected_tx, connected) = tokio::sync::watch::channel(0u64);
    let (fatal, _) = super::FatalTx::channel();
    let (handle, deliver) = super::new(
        "R1".into(),
        super::OutboxDeps {
            backend: h.backend.clone(),
            connected,
            fatal,
            seed: 1,
            metrics: Metrics::new(),
            max_queued_bytes: super::DEFAULT_MAX_QUEUED_BYTES,
        },
    );
    (handle, deliver, connected_tx)
}

#[tokio::test(start_paused = true)]
async fn batches_waiting_behind_each_other_go_out_in_one_upload() {
    let h = Harness::new();
    let (outbox, deliver, _connected) = outbox_of(&h);
    let lines: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
    for text in &lines {
        outbox.push(super::Report::Logs(vec![protocol::api::LogLine {
            seq: 0,
            stream: protocol::api::LogStream::Stdout,
            text: text.clone(),
        }]));
    }
    drop(outbox);
    assert_eq!(deliver.await, "R1");
    assert_all_arrived(&h, "R1", &lines);
    assert_eq!(
        h.backend.peek(|s| s.uploads),
        1,
        "ten small batches, one upload"
    );
}

fn batch(texts: &[&str]) -> super::Report {
    super::Report::Logs(
        texts
            .iter()
            .map(|t| protocol::api::LogLine {
                seq: 0,
                stream: protocol::api::LogStream::Stdout,
                text: (*t).to_string(),
            })
            .collect(),
    )
}

#[tokio::test(start_paused = true)]
async fn lines_queued_after_a_split_line_are_numbered_after_its_pieces() {
    let h = Harness::new();
    let (outbox, deliver, _connected) = outbox_of(&h);
    // Over the launcher's own upload size on its own, so nothing is merged with it and
    // the next batch is numbered only once it has been split.
    let huge = "x".repeat(super::MAX_UPLOAD_BYTES + 100_000);
    outbox.push(batch(&[&huge]));
    outbox.push(batch(&["after"]));
    drop(outbox);
    deliver.await;
    assert_all_arrived(&h, "R1", &[huge, "after".to_string()]);
    assert!(
        h.backend.log_seqs("R1").len() > 2,
        "the long line went in pieces"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upload_the_backend_took_none_of_is_sent_again() {
    let h = Harness::new();
    h.backend.with(|s| s.max_lines_per_upload = Some(0));
    let (outbox, deliver, _connected) = outbox_of(&h);
    outbox.push(batch(&["one", "two"]));
    drop(outbox);
    let b = h.backend.clone();
    let changes = h.changes.clone();
    let recover = async move {
        changes
            .until("an upload taken in none", || b.peek(|s| s.uploads) >= 1)
            .await;
        b.with(|s| s.max_lines_per_upload = None);
    };
    tokio::join!(deliver, recover);
    assert_all_arrived(&h, "R1", &["one".to_string(), "two".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn lines_the_backend_can_no_longer_take_are_given_up_not_retried_forever() {
    let h = Harness::new();
    let (outbox, deliver, _connected) = outbox_of(&h);
    outbox.push(batch(&["first"]));
    let b = h.backend.clone();
    let changes = h.changes.clone();
    let lose_then_push = async move {
        changes
            .until("the first line delivered", || b.log_texts("R1").len() == 1)
            .await;
        // The backend lost what it acknowledged: it now expects seq 0 again, and the
        // next upload starts at 1.
        b.with(|s| s.logs.clear());
        outbox.push(batch(&["second"]));
    };
    let delivered = tokio::time::timeout(Duration::from_secs(3600), async {
        tokio::join!(deliver, lose_then_push)
    })
    .await;
    assert!(
        delivered.is_ok(),
        "the outbox kept retrying lines that can never be taken"
    );
    assert!(h.backend.log_texts("R1").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_backend_refusing_even_small_uploads_as_too_large_gets_them_dropped_at_once() {
    let h = Harness::new();
    // Smaller than any upload body: every upload is refused (413).
    h.backend.with(|s| s.body_limit = 10);
    let (outbox, deliver, _connected) = outbox_of(&h);
    outbox.push(batch(&["some output"]));
    drop(outbox);
    tokio::time::timeout(Duration::from_secs(3600), deliver)
        .await
        .expect("the outbox gives up on uploads no backend limit lets through");
    assert_eq!(
        h.backend.peek(|s| s.refused_uploads),
        1,
        "no halving down to nothing"
    );
    assert!(h.backend.log_texts("R1").is_empty());
}
