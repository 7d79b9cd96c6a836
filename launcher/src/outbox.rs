//! Delivers one run's reports (state transitions, log batches, policy samples) to the
//! backend in the order they were made, retrying transient failures for as long as the process lives.
//!
//! Each run gets its own outbox task, so a slow or failing run cannot hold up another's
//! reports while order within a run is kept (a `finished` never overtakes its last logs).
//! Reports are kept in memory while the backend is unreachable; the runs themselves go on.
//! A `BackendEvent::Connected` (a counter bump on the `connected` watch) cuts the current
//! backoff short so results flow as soon as the connection is back.
//!
//! Log lines are numbered here, on the wire, from 0 per run: uploads are cut by their
//! JSON-encoded size (escaping can make a line six times its text), a 413 lowers that size
//! for the rest of the run, and a line too large for any upload is sent as several lines
//! (each numbered) rather than dropped. The backend's `next_seq` answer is followed: lines
//! it already has are dropped, and sending resumes from what it expects.
//!
//! Queued output is bounded ([`OutboxHandle::has_room`]): the run stops reading its
//! container's output while its outbox holds more than the bound, so a long outage leaves
//! the data in Docker rather than in the launcher's memory. Transitions are never held back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use protocol::api::{LogLine, PolicySample, TransitionRequest};
use tokio::sync::{mpsc, watch, Notify};

use crate::backoff::Backoff;
use crate::error::Fatal;
use crate::metrics::Metrics;
use crate::ports::{Backend, BackendError};

/// Log lines merged into one upload when several batches are waiting.
const MAX_MERGED_LINES: usize = 500;
/// Uploads are cut at this encoded size: half the backend's 1 MiB body limit, which also
/// holds a whole line of the longest kind the run log makes (64 KiB, six-fold escaped).
pub const MAX_UPLOAD_BYTES: usize = 512 * 1024;
/// Upper bound of everything in an upload body but its lines (`worker_ulid`, brackets).
const ENVELOPE_BYTES: usize = 256;
/// Below this, a backend refusing uploads as too large is not going to take any.
const MIN_UPLOAD_BYTES: usize = 2 * 1024;
/// Default bound of a run's queued output (`SPACELIFT_LAUNCHER_RUN_OUTPUT_BUFFER_MIB`).
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 << 20;

/// The most output one run's outbox may hold with `max_queued_bytes` as its bound: output
/// is read only while the outbox is under it, one container line (split at
/// [`crate::docker::MAX_LINE`]) at a time, into a batch of up to
/// [`crate::run::log::BATCH_BYTES`] queued whole.
pub fn run_queued_limit(max_queued_bytes: usize) -> usize {
    max_queued_bytes + crate::run::log::BATCH_BYTES + crate::docker::MAX_LINE
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Transition(TransitionRequest),
    /// Lines in output order; their `seq` is assigned by the outbox.
    Logs(Vec<LogLine>),
    /// What the initialization policy saw and decided, when it asked for a sample.
    PolicySample(PolicySample),
}

/// Where fatal backend answers (Unauthorized) go: the supervisor stops the process.
#[derive(Debug, Clone)]
pub struct FatalTx(mpsc::UnboundedSender<Fatal>);

impl FatalTx {
    pub fn channel() -> (FatalTx, mpsc::UnboundedReceiver<Fatal>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (FatalTx(tx), rx)
    }

    pub fn send(&self, fatal: Fatal) {
        let _ = self.0.send(fatal);
    }
}

/// Bytes of log text queued in one outbox (its queue and the upload in flight).
#[derive(Debug)]
struct Budget {
    queued: AtomicUsize,
    max: usize,
    /// Set when the outbox stops early: nobody would free room any more.
    closed: AtomicBool,
    freed: Notify,
    metrics: Metrics,
}

impl Budget {
    fn add(&self, bytes: usize) {
        let now = self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.metrics.outbox_queued(bytes as i64);
        self.metrics.outbox_run_queued(now);
    }

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
        self.metrics.outbox_queued(-(bytes as i64));
        self.freed.notify_waiters();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    fn has_room(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.queued.load(Ordering::Relaxed) < self.max
    }
}

fn text_bytes(lines: &[LogLine]) -> usize {
    lines.iter().map(|l| l.text.len()).sum()
}

/// The sending side of a run's outbox. Dropping it lets the outbox finish once everything
/// queued is delivered.
#[derive(Debug, Clone)]
pub struct OutboxHandle {
    tx: mpsc::UnboundedSender<Report>,
    budget: Arc<Budget>,
}

impl OutboxHandle {
    /// Queues a report; never waits (the bound is applied by the reader, see [`room`]).
    ///
    /// [`room`]: OutboxHandle::room
    pub fn push(&self, report: Report) {
        let bytes = match &report {
            Report::Logs(lines) => text_bytes(lines),
            Report::Transition(_) | Report::PolicySample(_) => 0,
        };
        self.budget.add(bytes);
        // The outbox only stops early on a fatal error, when the process is exiting anyway.
        if self.tx.send(report).is_err() {
            self.budget.release(bytes);
        }
    }

    /// Whether more output may be queued (the queued log text is under the bound).
    pub fn has_room(&self) -> bool {
        self.budget.has_room()
    }

    /// Resolves once more output may be queued.
    pub async fn room(&self) {
        if !self.has_room() {
            self.budget.metrics.output_paused();
        }
        loop {
            let freed = self.budget.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.has_room() {
                return;
            }
            freed.await;
        }
    }
}

pub struct OutboxDeps {
    pub backend: Arc<dyn Backend>,
    pub connected: watch::Receiver<u64>,
    pub fatal: FatalTx,
    pub seed: u64,
    pub metrics: Metrics,
    /// Bound of the queued log text, in bytes ([`DEFAULT_MAX_QUEUED_BYTES`]).
    pub max_queued_bytes: usize,
}

/// A run's outbox: the handle to queue reports, and the delivery loop to spawn. The loop
/// returns the run ULID when everything queued has been delivered (or refused for good)
/// and every handle has been dropped.
pub fn new(
    run_ulid: String,
    deps: OutboxDeps,
) -> (
    OutboxHandle,
    impl std::future::Future<Output = String> + Send,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Budget {
        queued: AtomicUsize::new(0),
        max: deps.max_queued_bytes.max(1),
        closed: AtomicBool::new(false),
        freed: Notify::new(),
        metrics: deps.metrics.clone(),
    });
    let outbox = Outbox {
        backoff: Backoff::standard(deps.seed),
        run_ulid,
        deps,
        budget: budget.clone(),
        queue: VecDeque::new(),
        pending: VecDeque::new(),
        next_seq: 0,
        expected: 0,
        upload_limit: MAX_UPLOAD_BYTES,
    };
    (OutboxHandle { tx, budget }, outbox.deliver(rx))
}

struct Outbox {
    run_ulid: String,
    deps: OutboxDeps,
    budget: Arc<Budget>,
    backoff: Backoff,
    queue: VecDeque<Report>,
    /// Numbered lines not yet accepted by the backend, in order.
    pending: VecDeque<LogLine>,
    /// The seq the next line taken from the queue gets.
    next_seq: u64,
    /// The backend's last `next_seq`: it has every line below.
    expected: u64,
    /// Encoded size an upload is cut at; lowered by 413s.
    upload_limit: usize,
}

/// Whether the delivery loop goes on.
enum Flow {
    Continue,
    Stop,
}

/// What one attempt at a report came to.
enum Attempt<T> {
    Done(T),
    /// Delivered nothing, for good (already logged).
    Dropped,
    /// A fatal answer: the process is stopping.
    Fatal,
    TooLarge,
}

impl Outbox {
    async fn deliver(mut self, mut rx: mpsc::UnboundedReceiver<Report>) -> String {
        // Reports queued before the first `changed()` must not count as a nudge.
        self.deps.connected.mark_unchanged();
        loop {
            while let Ok(r) = rx.try_recv() {
                self.queue.push_back(r);
            }
            let flow = if !self.pending.is_empty() {
                self.take_logs();
                self.send_logs().await
            } else {
                match self.queue.pop_front() {
                    Some(Report::Transition(t)) => self.send_transition(t).await,
                    Some(Report::PolicySample(s)) => self.send_sample(s).await,
                    Some(Report::Logs(lines)) => {
                        self.number(lines);
                        Flow::Continue
                    }
                    None => match rx.recv().await {
                        Some(r) => {
                            self.queue.push_back(r);
                            Flow::Continue
                        }
                        None => return self.run_ulid.clone(),
                    },
                }
            };
            if let Flow::Stop = flow {
                return self.run_ulid.clone();
            }
        }
    }

    /// Numbers `lines` into `pending`, dropping those the backend already has.
    fn number(&mut self, lines: Vec<LogLine>) {
        for mut line in lines {
            line.seq = self.next_seq;
            self.next_seq += 1;
            if line.seq < self.expected {
                self.budget.release(line.text.len());
            } else {
                self.pending.push_back(line);
            }
        }
    }

    /// Merges the log batches waiting right behind `pending` into it, up to an upload.
    fn take_logs(&mut self) {
        let mut bytes: usize = self.pending.iter().map(encoded_len).sum();
        while self.pending.len() < MAX_MERGED_LINES && bytes < self.upload_limit {
            let Some(Report::Logs(_)) = self.queue.front() else {
                break;
            };
            let Some(Report::Logs(lines)) = self.queue.pop_front() else {
                break;
            };
            bytes += lines.iter().map(encoded_len).sum::<usize>();
            self.number(lines);
        }
    }

    /// The next upload: the longest prefix of `pending` under the limits, splitting its
    /// first line when that alone is over.
    fn next_upload(&mut self) -> Vec<LogLine> {
        while let Some(first) = self.pending.front() {
            if ENVELOPE_BYTES + encoded_len(first) <= self.upload_limit || !self.split_first() {
                break;
            }
        }
        let mut bytes = ENVELOPE_BYTES;
        let mut upload = Vec::new();
        for line in &self.pending {
            let size = encoded_len(line);
            if !upload.is_empty()
                && (bytes + size > self.upload_limit || upload.len() >= MAX_MERGED_LINES)
            {
                break;
            }
            bytes += size;
            upload.push(line.clone());
        }
        upload
    }

    /// Sends the first pending line as two, renumbering what follows. False when it
    /// cannot be split (a single character).
    fn split_first(&mut self) -> bool {
        let Some(first) = self.pending.front_mut() else {
            return false;
        };
        let Some(mid) = split_point(&first.text) else {
            return false;
        };
        let tail = LogLine {
            seq: first.seq + 1,
            stream: first.stream,
            text: first.text.split_off(mid),
        };
        for line in self.pending.iter_mut().skip(1) {
            line.seq += 1;
        }
        self.pending.insert(1, tail);
        self.next_seq += 1;
        true
    }

    async fn send_logs(&mut self) -> Flow {
        let upload = self.next_upload();
        let (Some(first), Some(last)) = (upload.first(), upload.last()) else {
            return Flow::Continue;
        };
        let (start, end) = (first.seq, last.seq + 1);
        let backend = self.deps.backend.clone();
        let run_ulid = self.run_ulid.clone();
        let attempt = self
            .attempt("logs", || backend.upload_logs(&run_ulid, &upload))
            .await;
        match attempt {
            Attempt::Done(next) if next > start => {
                // What the backend has is done with; anything past `next` in this upload
                // (it stopped early) is sent again.
                self.expected = self.expected.max(next);
                self.drop_pending(|l| l.seq < next);
                if next > end {
                    tracing::debug!(run_ulid = %self.run_ulid, next, "the backend already had later lines");
                }
            }
            Attempt::Done(next) if next < start => {
                tracing::error!(run_ulid = %self.run_ulid, expected = next, sent_from = start,
                    "the backend lacks log lines it acknowledged or that were refused earlier; \
                     they cannot be sent again");
                self.expected = self.expected.max(end);
                self.drop_pending(|l| l.seq < end);
            }
            Attempt::Done(_) => {
                // Nothing taken and nothing refused: try again later rather than spin.
                let delay = self.backoff.next_delay(None);
                tracing::warn!(run_ulid = %self.run_ulid, ?delay, "the backend took none of an upload; will retry");
                tokio::time::sleep(delay).await;
            }
            Attempt::TooLarge => {
                let size = ENVELOPE_BYTES + upload.iter().map(encoded_len).sum::<usize>();
                let limit = (size / 2).min(self.upload_limit);
                if limit < MIN_UPLOAD_BYTES {
                    tracing::error!(run_ulid = %self.run_ulid, size,
                        "the backend refuses even small log uploads as too large; dropping them");
                    self.drop_pending(|l| l.seq < end);
                } else {
                    tracing::warn!(run_ulid = %self.run_ulid, size, limit,
                        "the backend refused a log upload as too large; sending smaller ones");
                    self.upload_limit = limit;
                }
            }
            Attempt::Dropped => self.drop_pending(|l| l.seq < end),
            Attempt::Fatal => return Flow::Stop,
        }
        Flow::Continue
    }

    fn drop_pending(&mut self, done: impl Fn(&LogLine) -> bool) {
        while self.pending.front().is_some_and(&done) {
            if let Some(line) = self.pending.pop_front() {
                self.budget.release(line.text.len());
            }
        }
    }

    async fn send_transition(&mut self, req: TransitionRequest) -> Flow {
        let backend = self.deps.backend.clone();
        let run_ulid = self.run_ulid.clone();
        match self
            .attempt(req.state.as_str(), || backend.transition(&run_ulid, &req))
            .await
        {
            Attempt::Fatal => Flow::Stop,
            Attempt::TooLarge => {
                tracing::error!(run_ulid = %self.run_ulid, report = req.state.as_str(),
                    "backend refused a transition as too large; dropping it");
                Flow::Continue
            }
            Attempt::Done(()) | Attempt::Dropped => Flow::Continue,
        }
    }

    async fn send_sample(&mut self, sample: PolicySample) -> Flow {
        let backend = self.deps.backend.clone();
        let run_ulid = self.run_ulid.clone();
        match self
            .attempt("policy sample", || {
                backend.policy_sample(&run_ulid, &sample)
            })
            .await
        {
            Attempt::Fatal => Flow::Stop,
            Attempt::TooLarge => {
                tracing::error!(run_ulid = %self.run_ulid, policy = %sample.policy,
                    "backend refused a policy sample as too large; dropping it");
                Flow::Continue
            }
            Attempt::Done(()) | Attempt::Dropped => Flow::Continue,
        }
    }

    /// Calls `f` until it is delivered, refused for good, or fatal; transient failures
    /// are retried after a backoff (cut short by a reconnection).
    async fn attempt<T, F, Fut>(&mut self, kind: &str, f: F) -> Attempt<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        loop {
            match f().await {
                Ok(v) => {
                    self.backoff.reset();
                    return Attempt::Done(v);
                }
                Err(BackendError::Transient {
                    message,
                    retry_after,
                }) => {
                    let delay = self.backoff.next_delay(retry_after);
                    tracing::debug!(
                        run_ulid = %self.run_ulid, attempt = self.backoff.attempts(), ?delay, %message,
                        "report not delivered; will retry"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = reconnected(&mut self.deps.connected) => {
                            tracing::debug!(run_ulid = %self.run_ulid, "backend reconnected; retrying now");
                        }
                    }
                }
                Err(BackendError::Unauthorized { message }) => {
                    self.deps.fatal.send(Fatal::Unauthorized(message));
                    return Attempt::Fatal;
                }
                Err(BackendError::TooLarge { .. }) => return Attempt::TooLarge,
                Err(BackendError::Conflict { message, .. }) => {
                    // A repeated transition the backend already has answers 200; a 409
                    // means it has moved on (e.g. it failed the run as worker_lost).
                    // Retrying cannot change its mind.
                    tracing::warn!(run_ulid = %self.run_ulid, report = kind, %message,
                        "backend refused a report as conflicting; dropping it");
                    return Attempt::Dropped;
                }
                Err(BackendError::Rejected { message }) => {
                    tracing::error!(run_ulid = %self.run_ulid, report = kind, %message,
                        "backend rejected a report; dropping it");
                    return Attempt::Dropped;
                }
            }
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Whatever was never delivered leaves the gauge with the outbox.
        let queued: usize = self
            .queue
            .iter()
            .map(|r| match r {
                Report::Logs(lines) => text_bytes(lines),
                Report::Transition(_) | Report::PolicySample(_) => 0,
            })
            .sum::<usize>()
            + self.pending.iter().map(|l| l.text.len()).sum::<usize>();
        self.budget.release(queued);
        self.budget.close();
    }
}

/// The size of `line` in an upload body: its JSON plus a separating comma.
pub(crate) fn encoded_len(line: &LogLine) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(1);
    // Writing into a counter cannot fail.
    let _ = serde_json::to_writer(&mut n, line);
    n.0
}

/// Where to cut `text` in two (about half-way, on a character boundary); None for a
/// single character.
fn split_point(text: &str) -> Option<usize> {
    let mut mid = text.len() / 2;
    while mid > 0 && !text.is_char_boundary(mid) {
        mid -= 1;
    }
    if mid == 0 {
        mid = text.char_indices().nth(1)?.0;
    }
    Some(mid)
}

/// Resolves on the next reconnection; never, if nobody can announce one any more.
pub(crate) async fn reconnected(connected: &mut watch::Receiver<u64>) {
    if connected.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::LogStream;

    #[test]
    fn encoded_len_is_the_json_size_plus_a_comma() {
        for text in ["", "plain", "\u{1}\u{1f}\"\\\n", "é€😀"] {
            let line = LogLine {
                seq: 12345,
                stream: LogStream::Stderr,
                text: text.into(),
            };
            assert_eq!(
                encoded_len(&line),
                serde_json::to_vec(&line).unwrap().len() + 1
            );
        }
    }

    #[test]
    fn split_points_are_char_boundaries_and_never_empty() {
        assert_eq!(split_point("abcd"), Some(2));
        assert_eq!(split_point("é"), None);
        assert_eq!(split_point("x"), None);
        assert_eq!(split_point(""), None);
        // Half-way is inside "€": cut before it, or after the first character.
        assert_eq!(split_point("€a"), Some(3));
        assert_eq!(split_point("a€"), Some(1));
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod run_tests;
