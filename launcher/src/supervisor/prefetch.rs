//! Worker-binary prefetches on `worker_binary.published`: one at a time, and of what is
//! announced meanwhile only the newest waits (replacing older ones), so a backend repeating
//! the message cannot make the launcher download, or spawn tasks, without bound.

use std::sync::Arc;

use protocol::api::WorkerBinary;
use tokio::task::JoinSet;

use crate::ports::BinaryStore;

pub(super) struct Prefetcher {
    store: Arc<dyn BinaryStore>,
    /// Holds at most one task.
    task: JoinSet<()>,
    current: Option<WorkerBinary>,
    next: Option<WorkerBinary>,
}

impl Prefetcher {
    pub(super) fn new(store: Arc<dyn BinaryStore>) -> Prefetcher {
        Prefetcher {
            store,
            task: JoinSet::new(),
            current: None,
            next: None,
        }
    }

    /// Fetches `binary` now if nothing is being fetched, else once the fetch in flight ends.
    pub(super) fn offer(&mut self, binary: WorkerBinary) {
        match &self.current {
            None => self.spawn(binary),
            Some(c) if c.sha256 == binary.sha256 => {}
            Some(_) => self.next = Some(binary),
        }
    }

    /// Waits for the fetch in flight to end (forever if there is none); cancel-safe.
    pub(super) async fn ended(&mut self) {
        if self.task.join_next().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// After [`Prefetcher::ended`]: starts the newest binary announced meanwhile.
    pub(super) fn start_next(&mut self) {
        let done = self.current.take();
        if let Some(next) = self.next.take() {
            if done.is_none_or(|d| d.sha256 != next.sha256) {
                self.spawn(next);
            }
        }
    }

    pub(super) fn abort(&mut self) {
        self.task.abort_all();
        self.current = None;
        self.next = None;
    }

    fn spawn(&mut self, binary: WorkerBinary) {
        tracing::info!(version = %binary.version, "prefetching the worker binary");
        let store = self.store.clone();
        let b = binary.clone();
        self.task.spawn(async move {
            if let Err(e) = store.get(&b).await {
                tracing::warn!(version = %b.version, error = %e,
                    "prefetching the worker binary failed; runs will fetch it");
            }
        });
        self.current = Some(binary);
    }
}
