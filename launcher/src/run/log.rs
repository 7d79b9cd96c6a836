//! A run's output on its way out: masked, numbered from 0, batched for the backend (up to
//! [`BATCH_LINES`] lines or [`BATCH_DELAY`], whichever comes first) and optionally echoed
//! to the launcher's stdout as JSON lines.

use std::sync::Arc;
use std::time::Duration;

use protocol::api::{LogLine, LogStream};
use tokio::time::Instant;

use crate::masking::Masker;
use crate::outbox::{OutboxHandle, Report};

pub const BATCH_LINES: usize = 100;
pub const BATCH_DELAY: Duration = Duration::from_millis(200);

/// Wall-clock time for the stdout `ts` field only (never for timing decisions).
pub trait WallClock: Send + Sync {
    /// RFC 3339, UTC.
    fn now(&self) -> String;
}

pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> String {
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }
}

/// Where stdout JSON lines go (the process's stdout in production, a buffer in tests).
pub trait LineSink: Send + Sync {
    fn write_line(&self, line: &str);
}

pub struct ProcessStdout;

impl LineSink for ProcessStdout {
    fn write_line(&self, line: &str) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

/// `SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED`: run logs as JSON lines with
/// `run_ulid`, `stack_id`, `ts`, `msg`, for log shippers on the host.
#[derive(Clone)]
pub struct StdoutLogs {
    pub clock: Arc<dyn WallClock>,
    pub sink: Arc<dyn LineSink>,
}

impl StdoutLogs {
    pub fn process() -> StdoutLogs {
        StdoutLogs {
            clock: Arc::new(SystemClock),
            sink: Arc::new(ProcessStdout),
        }
    }
}

pub(crate) struct RunLog {
    run_ulid: String,
    stack_id: String,
    next_seq: u64,
    batch: Vec<LogLine>,
    flush_at: Option<Instant>,
    outbox: OutboxHandle,
    masker: Masker,
    stdout: Option<StdoutLogs>,
}

impl RunLog {
    pub fn new(
        run_ulid: &str,
        stack_id: &str,
        outbox: OutboxHandle,
        masker: Masker,
        stdout: Option<StdoutLogs>,
    ) -> RunLog {
        RunLog {
            run_ulid: run_ulid.to_string(),
            stack_id: stack_id.to_string(),
            next_seq: 0,
            batch: Vec::new(),
            flush_at: None,
            outbox,
            masker,
            stdout,
        }
    }

    /// A line the launcher itself writes about the run (pulls, timeouts, failures).
    pub fn launcher(&mut self, text: &str) {
        self.push(LogStream::Launcher, text);
    }

    pub fn push(&mut self, stream: LogStream, text: &str) {
        let text = text.trim_end_matches(['\n', '\r']);
        let masked = self.masker.mask(text);
        if let Some(out) = &self.stdout {
            let line = serde_json::json!({
                "run_ulid": self.run_ulid,
                "stack_id": self.stack_id,
                "ts": out.clock.now(),
                "msg": masked,
            });
            out.sink.write_line(&line.to_string());
        }
        self.batch.push(LogLine {
            seq: self.next_seq,
            stream,
            text: masked.into_owned(),
        });
        self.next_seq += 1;
        if self.batch.len() >= BATCH_LINES {
            self.flush();
        } else if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + BATCH_DELAY);
        }
    }

    pub fn flush(&mut self) {
        self.flush_at = None;
        if !self.batch.is_empty() {
            self.outbox
                .push(Report::Logs(std::mem::take(&mut self.batch)));
        }
    }

    /// Resolves when the pending batch is due; never while nothing is pending.
    pub async fn flush_due(&self) {
        match self.flush_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}
