//! Keeps a claimed run's lease alive. Renewals go out at a third of the ttl, so two can
//! fail before the lease is in danger. Transient failures are retried (full jitter) until
//! the ttl since the last successful renewal is used up; by then the backend has failed
//! the run as `worker_lost`, so the lease counts as lost. A 409 means the backend gave the
//! lease up already (it failed or canceled the run): lost at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::Fatal;
use crate::outbox::FatalTx;
use crate::ports::{Backend, BackendError};

/// Never renew more often than this, whatever ttl the backend hands out.
const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(100);

pub(crate) fn renew_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(MIN_RENEW_INTERVAL)
}

/// Runs until the lease is lost (then `lost` says why) or the task is aborted.
pub(crate) async fn keep(
    backend: Arc<dyn Backend>,
    run_ulid: String,
    ttl: Duration,
    lost: watch::Sender<Option<String>>,
    fatal: FatalTx,
    seed: u64,
) {
    let mut ttl = ttl;
    let mut valid_until = Instant::now() + ttl;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8), seed);
    loop {
        tokio::time::sleep(renew_interval(ttl)).await;
        loop {
            let sent_at = Instant::now();
            match backend.renew_lease(&run_ulid).await {
                Ok(lease) => {
                    ttl = Duration::from_millis(lease.ttl_ms);
                    // Counted from when we asked: the backend's clock started no later.
                    valid_until = sent_at + ttl;
                    backoff.reset();
                    break;
                }
                Err(BackendError::Conflict { message }) => {
                    let _ = lost.send(Some(format!(
                        "the backend refused to renew the lease: {message}"
                    )));
                    return;
                }
                Err(BackendError::Unauthorized { message }) => {
                    fatal.send(Fatal::Unauthorized(message));
                    return;
                }
                Err(e) => {
                    let now = Instant::now();
                    if now >= valid_until {
                        let _ = lost.send(Some(format!(
                            "the lease expired: renewals failed for {:?} (last error: {e})",
                            ttl
                        )));
                        return;
                    }
                    let retry_after = match &e {
                        BackendError::Transient { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let delay = backoff.next_delay(retry_after).min(valid_until - now);
                    tracing::warn!(run_ulid = %run_ulid, error = %e, ?delay, "lease renewal failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
