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
                Err(BackendError::Conflict { message, .. }) => {
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

/// Lease keeping on paused time against the in-memory backend: when renewals go out and
/// exactly when a lease whose renewals fail counts as lost.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;
    use tokio::time::Instant;

    use super::{keep, renew_interval};
    use crate::outbox::FatalTx;
    use crate::ports::Backend;
    use crate::testing::Harness;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Keeps R1's lease (granted now for `ttl`) until it is lost; how long that took and why.
    async fn keep_until_lost(h: &Harness, ttl: Duration) -> (Duration, String) {
        let (lost_tx, lost_rx) = watch::channel(None);
        let (fatal, _fatal_rx) = FatalTx::channel();
        let backend: Arc<dyn Backend> = h.backend.clone();
        let t0 = Instant::now();
        keep(backend, "R1".into(), ttl, lost_tx, fatal, 7).await;
        let why = lost_rx
            .borrow()
            .clone()
            .expect("keep returns once the lease is lost");
        (t0.elapsed(), why)
    }

    #[test]
    fn renewals_go_out_at_a_third_of_the_ttl_never_more_often_than_100ms() {
        assert_eq!(renew_interval(secs(30)), secs(10));
        assert_eq!(
            renew_interval(Duration::from_millis(90)),
            Duration::from_millis(100)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_never_renewed_is_lost_exactly_a_ttl_after_the_grant() {
        let h = Harness::new();
        h.backend.with(|s| s.lease_transient = true);
        let (took, why) = keep_until_lost(&h, secs(3)).await;
        assert_eq!(took, secs(3), "lost at {took:?}: {why}");
        assert!(why.starts_with("the lease expired"), "{why}");
        assert!(
            h.backend.peek(|s| s.renewals.len()) > 1,
            "failures are retried"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_extends_the_lease_by_the_ttl_it_returns_from_when_it_was_asked() {
        let h = Harness::new();
        // Granted for 3 s; the renewal at 1 s answers 6 s, so the lease holds until 7 s.
        h.backend.with(|s| s.ttl_ms = 6_000);
        let b = h.backend.clone();
        let changes = h.changes.clone();
        let fail_after_first = async move {
            changes
                .until("first renewal", || b.peek(|s| s.renewals.len()) == 1)
                .await;
            b.with(|s| s.lease_transient = true);
        };
        let ((took, why), ()) = tokio::join!(keep_until_lost(&h, secs(3)), fail_after_first);
        assert_eq!(took, secs(7), "lost at {took:?}: {why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_is_retried_after_the_backends_retry_after() {
        let h = Harness::new();
        h.backend.with(|s| {
            s.lease_transient = true;
            s.retry_after = Some(secs(4));
        });
        let b = h.backend.clone();
        let changes = h.changes.clone();
        let t0 = Instant::now();
        let second_try = async move {
            changes
                .until("a retried renewal", || b.peek(|s| s.renewals.len()) == 2)
                .await;
            t0.elapsed()
        };
        let (_, retried_at) = tokio::join!(keep_until_lost(&h, secs(30)), second_try);
        // First renewal at 10 s (a third of the ttl), the retry 4 s later.
        assert_eq!(retried_at, secs(14));
    }
}
