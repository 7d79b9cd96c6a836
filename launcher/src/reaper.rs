//! At start, finds what an earlier launcher process of this worker left behind: containers
//! labelled with our worker ULID (the backend hands the same ULID back when registration
//! names it as `previous_worker_ulid`) and runs the backend still counts as ours. The
//! containers are removed; the runs can never be finished by this process, so the
//! supervisor reports them failed with `launcher_restarted`.

use std::collections::{BTreeMap, BTreeSet};

use crate::backoff::Backoff;
use crate::container_spec::{labels, Ids};
use crate::ports::{ContainerRuntime, ContainerSummary, RuntimeError};

/// Listing attempts at start. A daemon that fails them all leaves the containers to the
/// next start; one failed answer must not (the backoff spans about half a minute).
const LIST_ATTEMPTS: u32 = 6;

/// Removes leftover containers and returns every run to report as `launcher_restarted`.
pub async fn reap(
    runtime: &dyn ContainerRuntime,
    worker_ulid: &str,
    held_runs: &[String],
) -> BTreeSet<String> {
    let mut runs: BTreeSet<String> = held_runs.iter().cloned().collect();
    let filter = BTreeMap::from([(labels::WORKER.to_string(), worker_ulid.to_string())]);
    let leftovers = match list_with_retries(runtime, &filter).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, attempts = LIST_ATTEMPTS,
                "cannot look for containers left by an earlier launcher; the next start will try again");
            return runs;
        }
    };
    for c in leftovers {
        let run = c.labels.get(labels::RUN_ID).cloned();
        tracing::warn!(container = %c.id, name = %c.name, run_ulid = ?run, running = c.running,
            "removing a container left by an earlier launcher of this worker");
        if let Err(e) = runtime.remove(&c.id).await {
            tracing::error!(container = %c.id, error = %e, "could not remove a leftover container");
        }
        runs.extend(run);
    }
    runs
}

/// Listing is read-only, so any failed answer is worth another try.
async fn list_with_retries(
    runtime: &dyn ContainerRuntime,
    filter: &BTreeMap<String, String>,
) -> Result<Vec<ContainerSummary>, RuntimeError> {
    let mut backoff = Backoff::standard(0);
    loop {
        match runtime.list_by_labels(filter).await {
            Ok(list) => return Ok(list),
            Err(e) if backoff.attempts() + 1 < LIST_ATTEMPTS => {
                let delay = backoff.next_delay(None);
                tracing::warn!(error = %e, ?delay, "listing leftover containers failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Removes (forcibly) every container this launcher process created. For a fatal exit,
/// once the runs had their chance to stop gracefully.
pub async fn remove_launcher_containers(runtime: &dyn ContainerRuntime, ids: &Ids) {
    let filter = BTreeMap::from([
        (labels::WORKER.to_string(), ids.worker_ulid.clone()),
        (labels::LAUNCHER.to_string(), ids.launcher_id.clone()),
    ]);
    let list = match runtime.list_by_labels(&filter).await {
        Ok(list) => list,
        Err(e) => {
            tracing::error!(error = %e, "cannot list this launcher's containers; the next start removes them");
            return;
        }
    };
    for c in list {
        tracing::warn!(container = %c.id, name = %c.name, "removing a run's container before exiting");
        if let Err(e) = runtime.remove(&c.id).await {
            tracing::error!(container = %c.id, error = %e, "could not remove a run's container; the next start removes it");
        }
    }
}
