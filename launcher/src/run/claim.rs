//! Claiming a run: retried on transient errors, abandoned when stopped meanwhile.

use protocol::api::ClaimResponse;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::error::Fatal;
use crate::ports::{BackendError, ClaimOutcome};

use super::{stop_requested, RunContext, RunEnd, StopRequest};

/// Claims retried on transient errors before the run is left to the backend.
const CLAIM_ATTEMPTS: u32 = 8;

pub(super) async fn claim(
    ctx: &RunContext,
    run_ulid: &str,
    stop: &mut watch::Receiver<Option<StopRequest>>,
) -> Result<ClaimResponse, RunEnd> {
    let mut backoff = Backoff::standard(ctx.seed(run_ulid, 0));
    loop {
        match ctx.backend.claim(run_ulid).await {
            Ok(ClaimOutcome::Granted(c)) => return Ok(c),
            Ok(ClaimOutcome::Refused(why)) => {
                tracing::info!(reason = %why, "claim refused; not starting the run");
                return Err(RunEnd::NotClaimed);
            }
            Ok(ClaimOutcome::NotNow(why)) => {
                tracing::info!(reason = %why, "claim refused while the run is still scheduled; a later offer may claim it");
                return Err(RunEnd::NotClaimedYet);
            }
            Err(BackendError::Unauthorized { message }) => {
                ctx.fatal.send(Fatal::Unauthorized(message));
                return Err(RunEnd::Fatal);
            }
            Err(BackendError::Transient {
                message,
                retry_after,
            }) if backoff.attempts() + 1 < CLAIM_ATTEMPTS => {
                let delay = backoff.next_delay(retry_after);
                tracing::warn!(%message, ?delay, "claim failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(stop) => {
                        tracing::info!("run stopped before it could be claimed");
                        return Err(RunEnd::ClaimAbandoned);
                    }
                }
            }
            Err(e @ BackendError::Transient { .. }) => {
                tracing::warn!(error = %e, "claim failed repeatedly; leaving the run to the backend");
                return Err(RunEnd::ClaimAbandoned);
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; leaving the run to the backend");
                return Err(RunEnd::NotClaimed);
            }
        }
    }
}
