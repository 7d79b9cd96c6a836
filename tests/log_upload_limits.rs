//! On the wire: the launcher's HTTPS adapter and outbox against the fake backend's real
//! 1 MiB body limit and log rules. Output made of control characters (6 bytes each once
//! JSON-escaped) must arrive whole and in order, never dropped as "too large".

#[path = "../fake-backend/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use common::*;
use fake_backend::ScheduleRun;
use launcher::backend::https::{HttpsBackend, HttpsOptions};
use launcher::config::ProxyConfig;
use launcher::credentials::Credentials;
use launcher::metrics::Metrics;
use launcher::outbox::{self, FatalTx, OutboxDeps, Report};
use launcher::ports::{Backend, BackendError};
use launcher::tls::{build_client_config, SystemRoots};
use protocol::api::{LogLine, LogStream};

fn line(text: String) -> LogLine {
    LogLine {
        seq: 0,
        stream: LogStream::Stdout,
        text,
    }
}

#[tokio::test]
async fn escaped_output_over_the_body_limit_arrives_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let (token, key) = b.create_pool_generated().expect("pool");
    let creds = Creds::from_env_values(&token, &key);
    let (worker, mut m) = online_worker(&b, &creds, 1).await;
    let run = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    within("run.scheduled", m.next_message()).await;
    creds.http().claim(&run, &worker).await.unwrap();

    let launcher_creds = Credentials::from_env_text(&token, &key).unwrap();
    let tls = build_client_config(&launcher_creds, &[], SystemRoots::Exclude).unwrap();
    let backend = HttpsBackend::with_options(
        b.api_endpoint(),
        Some(tls),
        &ProxyConfig::default(),
        HttpsOptions::default(),
    )
    .unwrap();
    backend.set_worker_ulid(&worker);

    // 32 lines of 64 KiB of \u{1}: 2 MiB of text, 12 MiB once encoded.
    let texts: Vec<String> = (0..32)
        .map(|i| format!("{i:02}{}", "\u{1}".repeat(64 * 1024 - 2)))
        .collect();
    // A single upload of four of them is refused as too large, not as a bad request.
    let mut four: Vec<LogLine> = texts[..4].iter().cloned().map(line).collect();
    for (i, l) in four.iter_mut().enumerate() {
        l.seq = i as u64;
    }
    let e = backend.upload_logs(&run, &four).await.unwrap_err();
    assert!(matches!(e, BackendError::TooLarge { .. }), "{e:?}");

    // Through the outbox, in batches of four lines as the run log made them before.
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let (_connected_tx, connected) = tokio::sync::watch::channel(0);
    let (fatal, mut fatal_rx) = FatalTx::channel();
    let (handle, deliver) = outbox::new(
        run.clone(),
        OutboxDeps {
            backend,
            connected,
            fatal,
            seed: 1,
            metrics: Metrics::new(),
            max_queued_bytes: outbox::DEFAULT_MAX_QUEUED_BYTES,
        },
    );
    for chunk in texts.chunks(4) {
        handle.push(Report::Logs(chunk.iter().cloned().map(line).collect()));
    }
    drop(handle);
    within("the outbox delivers everything", deliver).await;
    assert!(fatal_rx.try_recv().is_err());

    let stored = b.run(&run).unwrap().log_lines;
    let seqs: Vec<u64> = stored.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (0..stored.len() as u64).collect::<Vec<_>>());
    let got: String = stored.iter().map(|l| l.text.as_str()).collect();
    assert!(
        got == texts.concat(),
        "the output arrived altered or incomplete"
    );
}
