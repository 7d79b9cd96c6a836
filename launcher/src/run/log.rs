//! A run's output on its way out: masked, batched for the backend (up to [`BATCH_LINES`]
//! lines, [`BATCH_BYTES`] encoded or [`BATCH_DELAY`], whichever comes first; the outbox
//! numbers the lines) and optionally echoed to the launcher's stdout as JSON lines.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use protocol::api::{LogLine, LogStream};
use tokio::time::Instant;

use crate::masking::Masker;
use crate::outbox::{encoded_len, OutboxHandle, Report};
use crate::ports::OutputLine;

pub const BATCH_LINES: usize = 100;
pub const BATCH_DELAY: Duration = Duration::from_millis(200);
/// Longer lines are sent as several lines, in order, so no batch can outgrow what the
/// backend accepts (1 MiB for the fake) and nothing is cut off.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// A batch is sent before its JSON encoding (what the backend's body limit counts; a
/// control character is 6 bytes there) would pass this size, whatever its line count.
pub const BATCH_BYTES: usize = 256 * 1024;

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
    batch: Vec<LogLine>,
    batch_bytes: usize,
    flush_at: Option<Instant>,
    outbox: OutboxHandle,
    masker: Masker,
    stdout: Option<StdoutLogs>,
    /// Per stream, the end of a partial line held back until the rest comes: it may
    /// begin a masked value.
    held: Vec<(LogStream, String)>,
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
            batch: Vec::new(),
            batch_bytes: 0,
            flush_at: None,
            outbox,
            masker,
            stdout,
            held: Vec::new(),
        }
    }

    /// Queues a report other than output (a policy sample) on the run's outbox, behind
    /// the output queued so far.
    pub fn report(&mut self, report: Report) {
        self.flush();
        self.outbox.push(report);
    }

    /// A line (or a piece of one) of the container's output.
    pub fn output(&mut self, line: &OutputLine) {
        let held = self
            .held
            .iter()
            .position(|(s, _)| *s == line.stream)
            .map(|i| self.held.swap_remove(i).1);
        let text = match held {
            Some(mut held) => {
                held.push_str(&line.text);
                Cow::Owned(held)
            }
            None => Cow::Borrowed(line.text.as_str()),
        };
        if !line.partial {
            self.push(line.stream, &text);
            return;
        }
        let cut = self.masker.safe_cut(&text);
        if cut > 0 {
            self.push(line.stream, &text[..cut]);
        }
        if cut < text.len() {
            self.held.push((line.stream, text[cut..].to_string()));
        }
    }

    /// The output ended: what was held back of a partial line goes out as it is.
    pub fn end_output(&mut self) {
        for (stream, text) in std::mem::take(&mut self.held) {
            self.push(stream, &text);
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
        for piece in split_line(&masked, MAX_LINE_BYTES) {
            let line = LogLine {
                seq: 0, // numbered by the outbox
                stream,
                text: piece.to_string(),
            };
            let size = encoded_len(&line);
            if self.batch_bytes + size > BATCH_BYTES {
                self.flush();
            }
            self.batch_bytes += size;
            self.batch.push(line);
        }
        if self.batch.len() >= BATCH_LINES || self.batch_bytes >= BATCH_BYTES {
            self.flush();
        } else if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + BATCH_DELAY);
        }
    }

    pub fn flush(&mut self) {
        self.flush_at = None;
        self.batch_bytes = 0;
        if !self.batch.is_empty() {
            self.outbox
                .push(Report::Logs(std::mem::take(&mut self.batch)));
        }
    }

    /// Whether more output may be read (the run's outbox is under its bound).
    pub fn has_room(&self) -> bool {
        self.outbox.has_room()
    }

    /// Resolves once more output may be read.
    pub async fn room(&self) {
        self.outbox.room().await
    }

    /// Resolves when the pending batch is due; never while nothing is pending.
    pub async fn flush_due(&self) {
        match self.flush_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// Splits `text` into pieces of at most `max` bytes, on character boundaries.
fn split_line(text: &str, max: usize) -> Vec<&str> {
    if text.len() <= max {
        return vec![text];
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(&rest[..end]);
        rest = &rest[end..];
    }
    pieces
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn long_lines_split_in_order_on_char_boundaries() {
        let line = "é".repeat(100_000); // 200,000 bytes
        let pieces = split_line(&line, MAX_LINE_BYTES);
        assert_eq!(pieces.len(), 4);
        assert!(pieces.iter().all(|p| p.len() <= MAX_LINE_BYTES));
        assert_eq!(pieces.concat(), line);
        assert_eq!(split_line("short", MAX_LINE_BYTES), ["short"]);
        assert_eq!(split_line("", MAX_LINE_BYTES), [""]);
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod masking_tests;
