//! Runs: scheduling and canceling them (admin), and the worker's side of a run over the
//! API (claim, lease renewal, state transitions, logs), with the run state machine.

use protocol::api::{
    reason_codes, ClaimResponse, Lease, LogAck, LogBatch, Reason, RunSpec, TransitionRequest,
    TransitionResponse,
};
use protocol::messages::ServerMessage;
use protocol::RunState;
use serde_json::json;
use tokio::time::Instant;

use super::{Core, RuleError, Tx};
use crate::error::{BackendError, Result};
use crate::events::{kinds, NewEvent};
use crate::store::{Run, State};
use crate::ScheduleRun;

pub(super) fn check_worker(
    s: &State,
    pool: &str,
    worker: &str,
) -> std::result::Result<(), RuleError> {
    match s.workers.get(worker) {
        Some(w) if w.pool == pool => Ok(()),
        _ => Err(RuleError::NotRegistered(format!(
            "worker {worker} is not registered in pool {pool}"
        ))),
    }
}

pub(super) fn check_run(s: &State, pool: &str, run: &str) -> std::result::Result<(), RuleError> {
    match s.runs.get(run) {
        Some(r) if r.pool == pool => Ok(()),
        _ => Err(RuleError::NotFound(format!(
            "run {run} not found in pool {pool}"
        ))),
    }
}

/// The run `worker` holds, to change: refused unless both are known in `pool` and the
/// worker is the run's holder (409 with the run's state).
pub(super) fn held_run_mut<'t>(
    tx: &'t mut Tx<'_>,
    pool: &str,
    run_id: &str,
    worker: &str,
) -> std::result::Result<&'t mut Run, RuleError> {
    check_worker(&tx.st.state, pool, worker)?;
    check_run(&tx.st.state, pool, run_id)?;
    let run = tx.run_mut(run_id).expect("checked");
    if run.worker.as_deref() != Some(worker) {
        return Err(RuleError::conflict(
            format!("run {run_id} is not claimed by worker {worker}"),
            run.state,
        ));
    }
    Ok(run)
}

impl Core {
    pub(crate) fn claim(
        &self,
        pool: &str,
        run_id: &str,
        worker: &str,
    ) -> std::result::Result<ClaimResponse, RuleError> {
        let ttl = self.timing.lease_ttl;
        self.mutate(|tx| {
            check_worker(&tx.st.state, pool, worker)?;
            check_run(&tx.st.state, pool, run_id)?;
            let refuse = |tx: &mut Tx<'_>, reason: String, state: RunState| {
                tx.event(
                    NewEvent::new(kinds::CLAIM_REFUSED)
                        .pool(pool)
                        .worker(worker)
                        .run(run_id)
                        .data(json!({ "reason": reason, "state": state })),
                );
                Err(RuleError::conflict(reason, state))
            };
            let run = &tx.st.state.runs[run_id];
            let (state, holder) = (run.state, run.worker.clone());
            if state == RunState::Scheduled {
                let w = &tx.st.state.workers[worker];
                let (drained, capacity) = (w.drained, w.capacity as usize);
                if drained {
                    return refuse(tx, format!("worker {worker} is drained"), state);
                }
                if tx.held(worker) >= capacity {
                    return refuse(tx, format!("worker {worker} is at capacity"), state);
                }
            } else if holder.as_deref() != Some(worker) || state.is_terminal() {
                let why = match holder {
                    Some(h) if h != worker => format!("run {run_id} is claimed by another worker"),
                    _ => format!("run {run_id} is {state} and cannot be claimed"),
                };
                return refuse(tx, why, state);
            }
            let repeat = state != RunState::Scheduled;
            tx.st
                .leases
                .insert(run_id.to_string(), Instant::now() + ttl);
            let run = tx.run_mut(run_id).expect("checked");
            run.worker = Some(worker.to_string());
            run.offered_to = None;
            let spec = run.spec.clone();
            // The current binary rides on the answer: no separate round trip per run.
            let arch = tx.st.state.workers[worker].arch;
            let worker_binary = super::binaries::latest_for(&tx.st.state, arch);
            tx.st.offers.remove(run_id);
            tx.event(
                NewEvent::new(kinds::CLAIM_GRANTED)
                    .pool(pool)
                    .worker(worker)
                    .run(run_id)
                    .data(json!({ "repeat": repeat, "lease_ttl_ms": ttl.as_millis() as u64 })),
            );
            if !repeat {
                tx.set_state(run_id, RunState::Claimed, "worker");
            }
            Ok(ClaimResponse {
                run: spec,
                lease: Lease {
                    ttl_ms: ttl.as_millis() as u64,
                },
                worker_binary,
            })
        })
    }

    pub(crate) fn renew(
        &self,
        pool: &str,
        run_id: &str,
        worker: &str,
    ) -> std::result::Result<Lease, RuleError> {
        let ttl = self.timing.lease_ttl;
        self.mutate(|tx| {
            check_worker(&tx.st.state, pool, worker)?;
            check_run(&tx.st.state, pool, run_id)?;
            let run = &tx.st.state.runs[run_id];
            let why = if run.worker.as_deref() != Some(worker) {
                Some(format!("run {run_id} is not held by worker {worker}"))
            } else if run.state.is_terminal() {
                Some(format!("run {run_id} is {}; its lease is gone", run.state))
            } else {
                None
            };
            if let Some(why) = why {
                let state = run.state;
                tx.dirty = false;
                tx.event(
                    NewEvent::new(kinds::LEASE_REFUSED)
                        .pool(pool)
                        .worker(worker)
                        .run(run_id)
                        .data(json!({ "reason": why, "state": state })),
                );
                return Err(RuleError::conflict(why, state));
            }
            tx.st
                .leases
                .insert(run_id.to_string(), Instant::now() + ttl);
            tx.dirty = false;
            tx.event(
                NewEvent::new(kinds::LEASE_RENEWED)
                    .pool(pool)
                    .worker(worker)
                    .run(run_id),
            );
            Ok(Lease {
                ttl_ms: ttl.as_millis() as u64,
            })
        })
    }

    pub(crate) fn transition(
        &self,
        pool: &str,
        run_id: &str,
        req: TransitionRequest,
    ) -> std::result::Result<TransitionResponse, RuleError> {
        self.mutate(|tx| {
            let worker = req.worker_ulid.as_str();
            check_worker(&tx.st.state, pool, worker)?;
            check_run(&tx.st.state, pool, run_id)?;
            let run = &tx.st.state.runs[run_id];
            let current = run.state;
            let refuse = |tx: &mut Tx<'_>, why: String| {
                tx.event(
                    NewEvent::new(kinds::TRANSITION_REFUSED)
                        .pool(pool)
                        .worker(worker)
                        .run(run_id)
                        .data(json!({ "reason": why, "from": current, "to": req.state })),
                );
                Err(RuleError::conflict(why, current))
            };
            if run.worker.as_deref() != Some(worker) {
                return refuse(
                    tx,
                    format!("run {run_id} is not claimed by worker {worker}"),
                );
            }
            match current.transition(req.state) {
                Err(e) => refuse(tx, e.to_string()),
                Ok(protocol::run_state::Transition::Repeated) => {
                    tx.dirty = false;
                    tx.event(
                        NewEvent::new(kinds::TRANSITION_REPEATED)
                            .pool(pool)
                            .worker(worker)
                            .run(run_id)
                            .data(json!({ "state": current })),
                    );
                    Ok(TransitionResponse { state: current })
                }
                Ok(protocol::run_state::Transition::Changed) => {
                    let run = tx.run_mut(run_id).expect("checked");
                    if req.exit_code.is_some() {
                        run.exit_code = req.exit_code;
                    }
                    if req.reason.is_some() {
                        run.reason = req.reason.clone();
                    }
                    if req.worker_version.is_some() {
                        run.worker_version = req.worker_version.clone();
                    }
                    tx.set_state(run_id, req.state, "worker");
                    if req.state.is_terminal() {
                        tx.dispatch();
                    }
                    Ok(TransitionResponse { state: req.state })
                }
            }
        })
    }

    pub(crate) fn logs(
        &self,
        pool: &str,
        run_id: &str,
        mut batch: LogBatch,
    ) -> std::result::Result<LogAck, RuleError> {
        self.mutate(|tx| {
            let worker = batch.worker_ulid.clone();
            let run = held_run_mut(tx, pool, run_id, &worker)?;
            batch.lines.sort_by_key(|l| l.seq);
            let mut accepted = Vec::new();
            let mut duplicates = 0;
            for line in batch.lines {
                let next = run.logs.len() as u64;
                if line.seq < next {
                    duplicates += 1;
                } else if line.seq == next {
                    accepted.push(line.clone());
                    run.logs.push(line);
                } else {
                    break; // a gap: the client re-sends from next_seq
                }
            }
            let next_seq = run.logs.len() as u64;
            tx.dirty = !accepted.is_empty();
            tx.event(
                NewEvent::new(kinds::LOGS_RECEIVED)
                    .pool(pool)
                    .worker(&worker)
                    .run(run_id)
                    .data(json!({
                        "accepted": accepted.len(),
                        "duplicates": duplicates,
                        "next_seq": next_seq,
                        "lines": accepted,
                    })),
            );
            Ok(LogAck { next_seq })
        })
    }

    pub(crate) fn schedule_run(&self, req: ScheduleRun) -> Result<String> {
        if !self.read(|s| s.pools.contains_key(&req.pool)) {
            return Err(BackendError::NotFound(format!("pool {}", req.pool)));
        }
        Ok(self.mutate(|tx| {
            let id = tx.new_id();
            let spec = RunSpec {
                run_ulid: id.clone(),
                stack_id: req.stack_id.clone(),
                run_type: req.run_type,
                image: req.image.clone(),
                env: req.env.clone(),
                vendor: req.vendor.clone(),
            };
            tx.touched.insert(id.clone());
            tx.st
                .state
                .runs
                .insert(id.clone(), Run::scheduled(spec, req.pool.clone()));
            tx.event(
                NewEvent::new(kinds::RUN_CREATED)
                    .pool(&req.pool)
                    .run(&id)
                    .data(json!({
                        "stack_id": req.stack_id,
                        "run_type": req.run_type,
                        "image": req.image,
                        "env": req.env,
                        "vendor": req.vendor,
                    })),
            );
            tx.dispatch();
            if tx.st.state.runs[&id].offered_to.is_none() {
                tx.event(NewEvent::new(kinds::RUN_QUEUED).pool(&req.pool).run(&id));
            }
            id
        }))
    }

    /// Cancels a run: an unclaimed one goes straight to `canceled`; a held one gets
    /// `run.cancel` sent to its worker, which reports the outcome. Returns the state now.
    pub(crate) fn cancel_run(&self, run_id: &str, reason: Option<String>) -> Result<RunState> {
        self.mutate(|tx| {
            let (pool, state) = tx
                .st
                .state
                .runs
                .get(run_id)
                .map(|r| (r.pool.clone(), r.state))
                .ok_or_else(|| BackendError::NotFound(format!("run {run_id}")))?;
            tx.event(
                NewEvent::new(kinds::RUN_CANCEL_REQUESTED)
                    .pool(&pool)
                    .run(run_id)
                    .data(json!({ "state": state, "reason": reason })),
            );
            let run = tx.run_mut(run_id).expect("checked");
            match state {
                RunState::Scheduled => {
                    run.offered_to = None;
                    run.reason = Some(Reason::new(
                        reason_codes::CANCELED,
                        reason
                            .clone()
                            .unwrap_or_else(|| "canceled before it was claimed".into()),
                    ));
                    tx.set_state(run_id, RunState::Canceled, "backend");
                    Ok(RunState::Canceled)
                }
                s if s.is_terminal() => Ok(s),
                s => {
                    run.cancel_requested = true;
                    let worker = run.worker.clone().unwrap_or_default();
                    let message_id = tx.message_id();
                    tx.send(
                        &pool,
                        &worker,
                        ServerMessage::RunCancel {
                            message_id,
                            run_ulid: run_id.to_string(),
                            reason,
                        },
                    );
                    Ok(s)
                }
            }
        })
    }
}
