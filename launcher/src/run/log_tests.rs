//! Masking of a run's output end to end (in-memory adapters, paused time): values that
//! span lines, and values cut by the Docker adapter's 64 KiB line split.

use std::time::Duration;

use crate::docker::MAX_LINE;
use crate::masking::MASK;
use crate::testing::*;

async fn run_printing(h: &Harness, lines: &[String]) -> Vec<String> {
    h.runtime.with(|s| {
        s.default_behaviour = Behaviour {
            lines: lines
                .iter()
                .map(|l| (Duration::from_millis(1), l.clone()))
                .collect(),
            ..Default::default()
        }
    });
    let mut r = h.start();
    r.schedule("R1").await;
    let b = h.backend.clone();
    h.changes.until("R1 ended", || b.is_terminal("R1")).await;
    h.backend.log_texts("R1")
}

#[tokio::test(start_paused = true)]
async fn a_secret_cut_by_the_line_split_is_masked() {
    let secret = "s3cr3t-token-0123456789";
    let mut h = Harness::new();
    h.settings.masked_values = vec![secret.into()];
    h.settings.run_logs_on_stdout = true;
    // Each 64 KiB cut falls inside a secret.
    let line = format!("{}{secret}{}", "a".repeat(MAX_LINE - 7), "b".repeat(10));
    let twice = format!(
        "{}{secret}{secret}{}",
        "c".repeat(2 * MAX_LINE - 30),
        "d".repeat(3)
    );
    let texts = run_printing(&h, &[line, "clean".into(), twice]).await;
    let all = texts.concat();
    assert!(!all.contains(secret), "the secret reached the backend");
    assert_eq!(
        all,
        format!(
            "{}{MASK}{}clean{}{MASK}{MASK}{}",
            "a".repeat(MAX_LINE - 7),
            "b".repeat(10),
            "c".repeat(2 * MAX_LINE - 30),
            "d".repeat(3)
        )
    );
    let stdout = h.stdout.lines.lock().unwrap().concat();
    assert!(!stdout.contains(secret), "the secret reached stdout");
}

#[tokio::test(start_paused = true)]
async fn every_line_of_a_multi_line_secret_is_masked() {
    let pem = "-----BEGIN PRIVATE KEY-----\n\
               MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n\
               BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n\
               -----END PRIVATE KEY-----";
    let mut h = Harness::new();
    h.settings.masked_values = vec![pem.into()];
    let mut lines: Vec<String> = vec!["cat key.pem".into()];
    lines.extend(pem.lines().map(String::from));
    lines.push("{".into());
    let texts = run_printing(&h, &lines).await;
    assert_eq!(texts, ["cat key.pem", MASK, MASK, MASK, MASK, "{"]);
}
