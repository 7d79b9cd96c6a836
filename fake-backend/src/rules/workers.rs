//! Workers: registration, admin commands (drain, undrain, cycle), and what their MQTT
//! messages (heartbeats, `worker.gone`) change.

use protocol::api::{RegisterRequest, RegisterResponse};
use protocol::messages::{ServerMessage, WorkerMessage, WorkerState};
use protocol::PROTOCOL_VERSION;
use serde_json::json;
use tokio::time::Instant;

use super::{Core, RuleError, Tx};
use crate::error::{BackendError, Result};
use crate::events::{kinds, NewEvent};
use crate::store::Worker;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCommand {
    Drain,
    Undrain,
    Cycle,
}

impl Core {
    pub(crate) fn register(
        &self,
        pool: &str,
        req: RegisterRequest,
    ) -> std::result::Result<RegisterResponse, RuleError> {
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(RuleError::Invalid(format!(
                "protocol_version {} is not supported (this backend speaks {PROTOCOL_VERSION})",
                req.protocol_version
            )));
        }
        if req.capacity == 0 || req.capacity > 1024 {
            return Err(RuleError::Invalid(format!(
                "capacity {} is out of range (1..=1024)",
                req.capacity
            )));
        }
        let interval_ms = self.timing.heartbeat_interval.as_millis() as u64;
        Ok(self.mutate(|tx| {
            let reuse = req.previous_worker_ulid.as_ref().filter(|id| {
                tx.st
                    .state
                    .workers
                    .get(*id)
                    .is_some_and(|w| w.pool == pool && !w.online)
            });
            let reused = reuse.is_some();
            let id = match reuse {
                Some(id) => id.clone(),
                None => tx.new_id(),
            };
            let now_ms = tx.now_ms();
            let previous = tx.st.state.workers.get(&id);
            let drained = previous.is_some_and(|w| w.drained);
            // The backend's last word on the drain outlives the process (a cycle does not:
            // it was for the process that exited).
            let undrain_pending = previous.is_some_and(|w| w.undrain_pending);
            tx.st.state.workers.insert(
                id.clone(),
                Worker {
                    ulid: id.clone(),
                    pool: pool.to_string(),
                    arch: req.arch,
                    capacity: req.capacity,
                    launcher_version: req.launcher_version.clone(),
                    metadata: req.metadata.clone(),
                    registered_at_ms: now_ms,
                    online: false,
                    drained,
                    cycle_pending: false,
                    undrain_pending,
                    reported_state: None,
                    last_heartbeat_seq: None,
                    gone_crashed: None,
                    interruption: None,
                },
            );
            let held_runs = tx.held_runs(&id);
            tx.event(
                NewEvent::new(kinds::WORKER_REGISTERED)
                    .pool(pool)
                    .worker(&id)
                    .data(json!({
                        "reused": reused,
                        "previous_worker_ulid": req.previous_worker_ulid,
                        "arch": req.arch,
                        "capacity": req.capacity,
                        "launcher_version": req.launcher_version,
                        "metadata": req.metadata,
                        "held_runs": held_runs,
                    })),
            );
            RegisterResponse {
                worker_ulid: id,
                pool_ulid: pool.to_string(),
                heartbeat_interval_ms: interval_ms,
                held_runs,
            }
        }))
    }

    pub(crate) fn worker_command(&self, worker: &str, command: WorkerCommand) -> Result<()> {
        self.mutate(|tx| {
            let w = tx
                .st
                .state
                .workers
                .get_mut(worker)
                .ok_or_else(|| BackendError::NotFound(format!("worker {worker}")))?;
            let pool = w.pool.clone();
            let (kind, drained) = match command {
                WorkerCommand::Drain => (kinds::WORKER_DRAIN, true),
                WorkerCommand::Undrain => (kinds::WORKER_UNDRAIN, false),
                WorkerCommand::Cycle => (kinds::WORKER_CYCLE, true),
            };
            w.drained = drained;
            // An undrain does not call off a cycle: a launcher that got it exits anyway.
            w.cycle_pending |= matches!(command, WorkerCommand::Cycle);
            w.undrain_pending = matches!(command, WorkerCommand::Undrain);
            let message_id = tx.message_id();
            let msg = match command {
                WorkerCommand::Drain => ServerMessage::Drain { message_id },
                WorkerCommand::Undrain => ServerMessage::Undrain { message_id },
                WorkerCommand::Cycle => ServerMessage::Cycle { message_id },
            };
            tx.event(NewEvent::new(kind).pool(&pool).worker(worker));
            if drained {
                tx.withdraw_offers(worker);
            }
            tx.send(&pool, worker, msg);
            tx.dispatch();
            Ok(())
        })
    }

    /// A parsed message a worker published on its writeonly topic (or its Last Will);
    /// `topic` is only recorded. Messages that do not fit the worker's state are recorded
    /// as ignored, never fatal.
    pub(crate) fn on_worker_message(
        &self,
        pool: String,
        worker: String,
        topic: &str,
        msg: WorkerMessage,
    ) {
        let (kind, claimed_worker) = match &msg {
            WorkerMessage::Heartbeat(h) => ("worker.heartbeat", h.worker_ulid.clone()),
            WorkerMessage::Gone { worker_ulid, .. } => ("worker.gone", worker_ulid.clone()),
        };
        let interval = self.timing.heartbeat_interval;
        self.mutate(|tx| {
            tx.dirty = false;
            tx.event(
                NewEvent::new(kinds::MESSAGE_RECEIVED)
                    .pool(&pool)
                    .worker(&worker)
                    .data(json!({ "topic": topic, "type": kind, "message": msg })),
            );
            let ignore = |tx: &mut Tx<'_>, reason: &str| {
                tx.event(
                    NewEvent::new(kinds::MESSAGE_IGNORED)
                        .pool(&pool)
                        .worker(&worker)
                        .data(json!({ "topic": topic, "type": kind, "reason": reason })),
                );
            };
            if claimed_worker != worker {
                return ignore(tx, "worker_ulid differs from the topic's worker");
            }
            let Some(w) = tx
                .st
                .state
                .workers
                .get_mut(&worker)
                .filter(|w| w.pool == pool)
            else {
                return ignore(tx, "unknown worker");
            };
            match msg {
                WorkerMessage::Heartbeat(hb) => {
                    if w.last_heartbeat_seq.is_some_and(|last| hb.seq <= last) {
                        return ignore(tx, "stale or repeated heartbeat seq");
                    }
                    w.last_heartbeat_seq = Some(hb.seq);
                    // Drain and cycle are commands over MQTT, which an outage can lose;
                    // the backend's drain is the authority, so a worker reporting otherwise
                    // is told again (once per heartbeat; obeying twice is harmless).
                    // DRAINED does not say a cycle was obeyed (the worker may have been
                    // drained before), but a cycled worker exits once idle: one still
                    // reporting DRAINED with no runs has not got the cycle.
                    let cycle_unseen = hb.state != WorkerState::Drained || hb.runs.is_empty();
                    let resend = match (w.drained, hb.state) {
                        _ if w.cycle_pending && cycle_unseen => Some(WorkerCommand::Cycle),
                        (true, WorkerState::Drained) => None,
                        (true, _) => Some(WorkerCommand::Drain),
                        // An undrain lost, or overtaken by a delayed drain (even one that
                        // arrives after the undrain was obeyed). Not for a worker that says
                        // why it drains itself (an interruption notice) or is cycling.
                        (false, WorkerState::Drained)
                            if w.undrain_pending
                                && !w.cycle_pending
                                && hb.interruption.is_none() =>
                        {
                            Some(WorkerCommand::Undrain)
                        }
                        (false, _) => None,
                    };
                    let was_online = w.online;
                    let old_state = w.reported_state;
                    w.online = true;
                    w.gone_crashed = None;
                    w.reported_state = Some(hb.state);
                    let new_notice = hb.interruption.is_some() && w.interruption != hb.interruption;
                    if new_notice {
                        w.interruption = hb.interruption.clone();
                    }
                    tx.st
                        .heartbeats
                        .insert(worker.clone(), Instant::now() + interval * 3);
                    if !was_online {
                        tx.dirty = true;
                        tx.event(
                            NewEvent::new(kinds::WORKER_ONLINE)
                                .pool(&pool)
                                .worker(&worker),
                        );
                    }
                    if old_state != Some(hb.state) {
                        tx.dirty = true;
                        tx.event(
                            NewEvent::new(kinds::WORKER_STATE)
                                .pool(&pool)
                                .worker(&worker)
                                .data(json!({ "from": old_state, "to": hb.state })),
                        );
                    }
                    if new_notice {
                        tx.dirty = true;
                        tx.event(
                            NewEvent::new(kinds::WORKER_INTERRUPTION)
                                .pool(&pool)
                                .worker(&worker)
                                .data(json!({ "notice": hb.interruption })),
                        );
                    }
                    if let Some(command) = resend {
                        tx.resend_command(&pool, &worker, command);
                    }
                    tx.dispatch();
                }
                WorkerMessage::Gone { crashed, .. } => {
                    w.online = false;
                    w.gone_crashed = Some(crashed);
                    tx.st.heartbeats.remove(&worker);
                    tx.dirty = true;
                    tx.event(
                        NewEvent::new(kinds::WORKER_GONE)
                            .pool(&pool)
                            .worker(&worker)
                            .data(json!({ "crashed": crashed })),
                    );
                    tx.withdraw_offers(&worker);
                    tx.dispatch();
                }
            }
        });
    }
}

impl Tx<'_> {
    /// Sends `command` again to a worker whose heartbeat disagrees with it (recorded with
    /// `resent`).
    fn resend_command(&mut self, pool: &str, worker: &str, command: WorkerCommand) {
        let message_id = self.message_id();
        let (kind, msg) = match command {
            WorkerCommand::Cycle => (kinds::WORKER_CYCLE, ServerMessage::Cycle { message_id }),
            WorkerCommand::Drain => (kinds::WORKER_DRAIN, ServerMessage::Drain { message_id }),
            WorkerCommand::Undrain => {
                (kinds::WORKER_UNDRAIN, ServerMessage::Undrain { message_id })
            }
        };
        self.event(
            NewEvent::new(kind)
                .pool(pool)
                .worker(worker)
                .data(json!({ "resent": true })),
        );
        self.send(pool, worker, msg);
    }
}
