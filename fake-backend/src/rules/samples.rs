//! Policy samples (`POST /v1/runs/{run}/policy-samples`): what a worker-side policy saw
//! and decided, sent when the policy's `sample` rule says so. Kept with the run, one per
//! policy kind (a repeat replaces it, so retries are harmless), and accepted from the
//! holder only, also after the run ended (the upload may trail the terminal report).

use protocol::api::{PolicySample, PolicySampleAck};
use serde_json::json;

use super::runs::held_run_mut;
use super::{Core, RuleError};
use crate::events::{kinds, NewEvent};

impl Core {
    pub(crate) fn policy_sample(
        &self,
        pool: &str,
        run_id: &str,
        sample: PolicySample,
    ) -> Result<PolicySampleAck, RuleError> {
        if sample.policy.is_empty() {
            return Err(RuleError::Invalid(
                "a policy sample must name its policy".into(),
            ));
        }
        self.mutate(|tx| {
            let worker = sample.worker_ulid.clone();
            let run = held_run_mut(tx, pool, run_id, &worker)?;
            let data = json!({
                "policy": sample.policy,
                "deny": sample.deny,
                "input": sample.input,
            });
            match run
                .policy_samples
                .iter_mut()
                .find(|s| s.policy == sample.policy)
            {
                Some(old) => *old = sample,
                None => run.policy_samples.push(sample),
            }
            tx.event(
                NewEvent::new(kinds::POLICY_SAMPLED)
                    .pool(pool)
                    .worker(&worker)
                    .run(run_id)
                    .data(data),
            );
            Ok(PolicySampleAck {})
        })
    }
}
