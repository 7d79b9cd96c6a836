//! Delivers one run's reports (state transitions and log batches) to the backend in the
//! order they were made, retrying transient failures for as long as the process lives.
//!
//! Each run gets its own outbox task, so a slow or failing run cannot hold up another's
//! reports while order within a run is kept (a `finished` never overtakes its last logs).
//! Reports are kept in memory while the backend is unreachable; the runs themselves go on.
//! A `BackendEvent::Connected` (a counter bump on the `connected` watch) cuts the current
//! backoff short so results flow as soon as the connection is back.

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::api::{LogLine, TransitionRequest};
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::ports::{Backend, BackendError};

/// Log batches merged into one upload when several are waiting (after a disconnect).
const MAX_MERGED_LINES: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Transition(TransitionRequest),
    Logs(Vec<LogLine>),
}

/// Where fatal backend answers (Unauthorized) go: the supervisor stops the process.
#[derive(Debug, Clone)]
pub struct FatalTx(mpsc::UnboundedSender<String>);

impl FatalTx {
    pub fn channel() -> (FatalTx, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (FatalTx(tx), rx)
    }

    pub fn send(&self, message: impl Into<String>) {
        let _ = self.0.send(message.into());
    }
}

/// The sending side of a run's outbox. Dropping it lets the outbox finish once everything
/// queued is delivered.
#[derive(Debug, Clone)]
pub struct OutboxHandle {
    tx: mpsc::UnboundedSender<Report>,
}

impl OutboxHandle {
    pub fn push(&self, report: Report) {
        // The outbox only stops early on a fatal error, when the process is exiting anyway.
        let _ = self.tx.send(report);
    }
}

pub struct OutboxDeps {
    pub backend: Arc<dyn Backend>,
    pub connected: watch::Receiver<u64>,
    pub fatal: FatalTx,
    pub seed: u64,
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
    (OutboxHandle { tx }, deliver(run_ulid, deps, rx))
}

async fn deliver(
    run_ulid: String,
    mut deps: OutboxDeps,
    mut rx: mpsc::UnboundedReceiver<Report>,
) -> String {
    let mut queue: VecDeque<Report> = VecDeque::new();
    let mut backoff = Backoff::standard(deps.seed);
    // Reports queued before the first `changed()` must not count as a nudge.
    deps.connected.mark_unchanged();
    loop {
        while let Ok(r) = rx.try_recv() {
            queue.push_back(r);
        }
        let item = match next_item(&mut queue) {
            Some(item) => item,
            None => match rx.recv().await {
                Some(r) => {
                    queue.push_back(r);
                    continue;
                }
                None => return run_ulid,
            },
        };
        loop {
            match send(deps.backend.as_ref(), &run_ulid, &item).await {
                Ok(()) => {
                    backoff.reset();
                    break;
                }
                Err(BackendError::Transient {
                    message,
                    retry_after,
                }) => {
                    let delay = backoff.next_delay(retry_after);
                    tracing::debug!(
                        run_ulid = %run_ulid, attempt = backoff.attempts(), ?delay, %message,
                        "report not delivered; will retry"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = reconnected(&mut deps.connected) => {
                            tracing::debug!(run_ulid = %run_ulid, "backend reconnected; retrying now");
                        }
                    }
                }
                Err(BackendError::Unauthorized { message }) => {
                    deps.fatal.send(message);
                    return run_ulid;
                }
                Err(BackendError::Conflict { message }) => {
                    // A repeated transition the backend already has answers 200; a 409
                    // means it has moved on (e.g. it failed the run as worker_lost).
                    // Retrying cannot change its mind.
                    tracing::warn!(run_ulid = %run_ulid, report = item.kind(), %message,
                        "backend refused a report as conflicting; dropping it");
                    break;
                }
                Err(BackendError::Rejected { message }) => {
                    tracing::error!(run_ulid = %run_ulid, report = item.kind(), %message,
                        "backend rejected a report; dropping it");
                    break;
                }
            }
        }
    }
}

/// The next report to send, merging consecutive log batches (bounded) into one upload.
fn next_item(queue: &mut VecDeque<Report>) -> Option<Report> {
    let first = queue.pop_front()?;
    let Report::Logs(mut lines) = first else {
        return Some(first);
    };
    while let Some(Report::Logs(more)) = queue.front() {
        if lines.len() + more.len() > MAX_MERGED_LINES {
            break;
        }
        if let Some(Report::Logs(more)) = queue.pop_front() {
            lines.extend(more);
        }
    }
    Some(Report::Logs(lines))
}

async fn send(backend: &dyn Backend, run_ulid: &str, item: &Report) -> Result<(), BackendError> {
    match item {
        Report::Transition(req) => backend.transition(run_ulid, req).await,
        Report::Logs(lines) => backend.upload_logs(run_ulid, lines).await.map(|_| ()),
    }
}

/// Resolves on the next reconnection; never, if nobody can announce one any more.
pub(crate) async fn reconnected(connected: &mut watch::Receiver<u64>) {
    if connected.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Report {
    fn kind(&self) -> &'static str {
        match self {
            Report::Transition(t) => t.state.as_str(),
            Report::Logs(_) => "logs",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::LogStream;

    fn logs(seqs: std::ops::Range<u64>) -> Report {
        Report::Logs(
            seqs.map(|seq| LogLine {
                seq,
                stream: LogStream::Stdout,
                text: String::new(),
            })
            .collect(),
        )
    }

    #[test]
    fn merges_consecutive_log_batches_but_not_across_transitions() {
        let t = Report::Transition(TransitionRequest {
            worker_ulid: "w".into(),
            state: protocol::RunState::Running,
            exit_code: None,
            reason: None,
            worker_version: None,
        });
        let mut q = VecDeque::from([logs(0..2), logs(2..4), t.clone(), logs(4..5)]);
        assert_eq!(next_item(&mut q), Some(logs(0..4)));
        assert_eq!(next_item(&mut q), Some(t));
        assert_eq!(next_item(&mut q), Some(logs(4..5)));
        assert_eq!(next_item(&mut q), None);
    }

    #[test]
    fn merging_is_bounded() {
        let mut q = VecDeque::from([logs(0..400), logs(400..800)]);
        assert_eq!(next_item(&mut q), Some(logs(0..400)));
        assert_eq!(next_item(&mut q), Some(logs(400..800)));
    }
}
